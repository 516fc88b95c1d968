//! citrusd assembled: state directory lock, orphan cleanup, supervisor, control API, signals.
//! The binary parses flags, loads the config, binds the socket and calls [`run`] with a shutdown
//! future; tests do the same with their own socket and future.

pub mod api;
pub mod orphans;
pub mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, ConfigError};
use crate::control::ReloadPlan;
use crate::deploy::Deployments;
use crate::fleet::agent::Agent;
use crate::health::events::Notifier;
use crate::health::jobs::Jobs;
use crate::health::sdnotify;
use crate::state::{DirLock, StateError, StateStore};
use crate::supervisor::cgroup::Cgroups;
use crate::supervisor::reaper::Reaper;
use crate::supervisor::spawn::Marker;
use crate::supervisor::{handoff, listen};
use crate::supervisor::{Adoption, Shared, Supervisor, SupervisorError};
use crate::sys;

/// Why citrusd could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("citrusd is already running on {socket}; stop it first, or give this one another --socket and state_dir")]
    AlreadyRunning { socket: PathBuf },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// What the control API shares: the supervisor and how to re-read the config.
pub struct Daemon {
    pub supervisor: Arc<Supervisor>,
    pub deploys: Arc<Deployments>,
    pub jobs: Arc<Jobs>,
    pub events: Arc<Notifier>,
    /// The fleet agent, when `[fleet]` is configured.
    pub agent: Option<Arc<Agent>>,
    pub config_path: PathBuf,
    pub env: Option<String>,
    pub started: Instant,
    /// Serialises config reloads (SIGHUP and `reload-config` may race).
    reload: tokio::sync::Mutex<()>,
}

/// Why a config reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}\nthe running config stays in force")]
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

impl Daemon {
    /// Re-reads the config file and applies (or with `dry_run` only plans) the difference.
    pub async fn reload_config(&self, dry_run: bool) -> Result<ReloadPlan, ReloadError> {
        let _one_at_a_time = self.reload.lock().await;
        let config = Config::load(&self.config_path, self.env.as_deref())?;
        let (jobs, notify) = (config.jobs.clone(), config.notify.clone());
        let plan = self.supervisor.reload_config(config, dry_run).await?;
        if plan.applied {
            self.jobs.reconfigure(&jobs);
            self.events.configure(&notify);
            tracing::info!(start = ?plan.start, stop = ?plan.stop, restart = ?plan.restart, "config reloaded");
        }
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        Ok(plan)
    }
}

/// The marker id for a state directory: stable across restarts, distinct per directory.
pub fn supervisor_id(state_dir: &Path) -> String {
    let canonical = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf());
    format!(
        "{:016x}",
        sys::stable_hash(canonical.as_os_str().as_encoded_bytes())
    )
}

fn create_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| DaemonError::Io {
            action: "create",
            path: path.to_path_buf(),
            source,
        })
}

/// Runs citrusd until `shutdown` resolves: then every app is stopped gracefully in reverse
/// dependency order, state is saved and the socket file removed.
pub async fn run(
    config: Config,
    env: Option<String>,
    listener: UnixListener,
    socket_path: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let daemon_cfg = config.daemon.clone();
    create_dir(&daemon_cfg.state_dir, 0o700)?;
    create_dir(&daemon_cfg.log_dir, 0o750)?;
    let _lock = DirLock::acquire(&daemon_cfg.state_dir)?;
    if let Err(e) = sys::raise_fd_limit() {
        tracing::warn!("cannot raise the open-files limit ({e}); many apps may exhaust it");
    }
    if let Err(e) = sys::set_child_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({e}); double-forked app processes may escape"
        );
    }
    let reaper = Reaper::start().map_err(|source| DaemonError::Io {
        action: "install the SIGCHLD handler for",
        path: daemon_cfg.state_dir.clone(),
        source,
    })?;
    let marker = Marker {
        supervisor_id: supervisor_id(&daemon_cfg.state_dir),
    };
    // Children handed over by a citrusd that re-executed itself: registered with the reaper
    // before anything is reaped or awaited.
    let handoff = handoff::take().unwrap_or_default();
    let mut adopt = HashMap::new();
    for inst in &handoff.instances {
        let exit = reaper.adopt(inst.pid);
        // SAFETY: the previous citrusd passed these descriptors open across exec for us alone.
        let (out, err) = unsafe {
            (
                OwnedFd::from_raw_fd(inst.out_fd),
                OwnedFd::from_raw_fd(inst.err_fd),
            )
        };
        adopt.insert(
            (inst.app.clone(), inst.index),
            Adoption {
                pid: inst.pid,
                out,
                err,
                exit,
                uptime: Duration::from_millis(inst.uptime_ms),
                restarts: inst.restarts,
                unstable_restarts: inst.unstable_restarts,
                memory_restarts: inst.memory_restarts,
            },
        );
    }
    let mut sockets: HashMap<String, Vec<listen::Handed>> = HashMap::new();
    for socket in &handoff.sockets {
        // SAFETY: as above: the previous citrusd passed this listening socket open for us alone.
        let fd = unsafe { OwnedFd::from_raw_fd(socket.fd) };
        let handed = (socket.addr.clone(), fd);
        sockets.entry(socket.app.clone()).or_default().push(handed);
    }
    let cgroups = Cgroups::probe(&marker.supervisor_id);
    let kept: Vec<i32> = handoff.instances.iter().map(|i| i.pid).collect();
    let leftovers = orphans::stop_previous_run(&marker, &config, &kept, &cgroups).await;
    if leftovers > 0 {
        tracing::warn!(
            count = leftovers,
            "stopped processes left by a previous citrusd before starting apps"
        );
    }

    let store = StateStore::new(&daemon_cfg.state_dir);
    let (persisted, warnings) = store.load()?;
    for w in warnings {
        tracing::error!("{w}");
    }
    let events = Arc::new(Notifier::new(&config.notify));
    let notify_dir = daemon_cfg.state_dir.join("notify");
    create_dir(&notify_dir, 0o711)?;
    let jobs_config = config.jobs.clone();
    let fleet_config = config.fleet.clone();
    let shared = Arc::new(Shared {
        reaper: reaper.clone(),
        marker: marker.clone(),
        log_dir: daemon_cfg.log_dir.clone(),
        notify_dir,
        events: events.clone(),
        cgroups: cgroups.clone(),
    });
    let config_path = config.path.clone();
    let supervisor = Supervisor::new(shared, config, store, &persisted, adopt, sockets).await?;
    // The file on disk stays the previous, whole one if this fails (a full or read-only state
    // dir): the apps run anyway, and each command that changes state says when it cannot.
    if let Err(e) = supervisor.save() {
        tracing::error!("{e}; running with the state as loaded");
    }
    let deploys = Deployments::new(
        supervisor.clone(),
        reaper.clone(),
        marker.clone(),
        events.clone(),
        &daemon_cfg.state_dir,
        fleet_config.as_ref().and_then(|f| f.ca_file.clone()),
    );
    let agent = fleet_config.map(|fleet| {
        Agent::start(
            fleet,
            supervisor.clone(),
            deploys.clone(),
            reaper.clone(),
            marker.clone(),
            &daemon_cfg.state_dir,
        )
    });
    if let Some(agent) = &agent {
        let agent = Arc::downgrade(agent);
        events.forward(Box::new(move |kind, app, message| {
            if let Some(agent) = agent.upgrade() {
                agent.event(kind.as_str(), app, message);
            }
        }));
    }
    let jobs = Jobs::start(
        supervisor.clone(),
        deploys.clone(),
        events.clone(),
        reaper,
        marker,
        &daemon_cfg.state_dir,
        &jobs_config,
    );
    let daemon = Arc::new(Daemon {
        supervisor: supervisor.clone(),
        deploys: deploys.clone(),
        jobs: jobs.clone(),
        events,
        agent,
        config_path,
        env,
        started: Instant::now(),
        reload: tokio::sync::Mutex::new(()),
    });

    let server = tokio::spawn(api::serve(listener, daemon.clone()));
    if let Some(addr) = daemon_cfg.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(api::serve_metrics(l, daemon.clone()));
            }
            Err(e) => tracing::error!(%addr, "cannot listen for metrics: {e}"),
        }
    }
    tokio::spawn(supervisor.clone().memory_check_loop());
    if let Some(every) = sdnotify::watchdog_interval() {
        // Pinged from the event loop itself: if the loop hangs, systemd restarts citrusd.
        tokio::spawn(async move {
            loop {
                tell_systemd("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        });
    }
    let signals = signal_loop(daemon.clone()).map_err(|source| DaemonError::Io {
        action: "install the SIGHUP/SIGUSR1 handlers for",
        path: socket_path.clone(),
        source,
    })?;
    tokio::spawn(signals);

    // A shutdown request during boot interrupts it: what was started is stopped below.
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        errors = supervisor.boot() => {
            for e in &errors {
                tracing::error!("{e}");
            }
            let resumed = deploys.resume(false);
            if resumed > 0 {
                tracing::warn!(count = resumed, "unfinished deployments taken up again");
            }
            tracing::info!(pid = std::process::id(), socket = %socket_path.display(), "citrusd ready");
            tell_systemd(&format!("READY=1\nSTATUS={} app(s) supervised", supervisor.instances(None).map(|v| v.len()).unwrap_or(0)));
            shutdown.as_mut().await;
        }
        _ = shutdown.as_mut() => tracing::info!("shutdown requested while starting apps"),
    }
    tracing::info!("shutting down: stopping every app");
    tell_systemd("STOPPING=1");
    if let Some(agent) = &daemon.agent {
        agent.stop().await;
    }
    jobs.stop();
    server.abort();
    supervisor.shutdown().await;
    cgroups.remove_all();
    let saved = supervisor.save();
    let _ = std::fs::remove_file(&socket_path);
    saved?;
    tracing::info!("all apps stopped; bye");
    Ok(())
}

/// Sends an sd_notify state to systemd when citrusd runs under it (`Type=notify`).
fn tell_systemd(state: &str) {
    if let Err(e) = sdnotify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// SIGHUP reloads the config; SIGUSR1 reopens log files. The handlers are installed before the
/// task is spawned: SIGHUP's default action would kill citrusd.
fn signal_loop(daemon: Arc<Daemon>) -> io::Result<impl Future<Output = ()>> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    if let Err(e) = daemon.reload_config(false).await {
                        tracing::error!("config reload failed: {e}");
                    }
                }
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening log files");
                    daemon.supervisor.reopen_logs();
                }
            }
        }
    })
}

/// Installs the SIGTERM and SIGINT handlers now (so neither can kill citrusd with its default
/// action while apps start) and returns the future that resolves when one arrives.
pub fn termination() -> io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
