//! citrusd assembled: state directory lock, orphan cleanup, supervisor, control API, signals.
//! The binary parses flags, loads the config, binds the socket and calls [`run`] with a shutdown
//! future; tests do the same with their own socket and future.

pub mod api;
pub mod check;
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
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError, DaemonConfig};
use crate::control::ReloadPlan;
use crate::deploy::Deployments;
use crate::fleet::agent::Agent;
use crate::health::events::Notifier;
use crate::health::jobs::Jobs;
use crate::state::{DirLock, StateError, StateStore};
use crate::supervisor::cgroup::Cgroups;
use crate::supervisor::reaper::Reaper;
use crate::supervisor::spawn::Marker;
use crate::supervisor::{handoff, listen, sdnotify};
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
    let host = Host::take(&config.daemon)?;
    let handed = HandedOver::take(&host.reaper);
    host.stop_leftovers(&config, &handed.pids).await;
    let daemon = Daemon::assemble(config, env, &host, handed).await?;
    let server = start_services(&daemon, listener, &socket_path).await?;
    boot_then_wait(&daemon, &socket_path, shutdown).await;
    daemon.shut_down(server, &host.cgroups, &socket_path).await
}

/// What citrusd holds of the host before any app is made: its directories (the state directory
/// locked against a second citrusd), the reaper, the marker its processes carry and the cgroup
/// tree.
struct Host {
    state_dir: PathBuf,
    log_dir: PathBuf,
    reaper: Arc<Reaper>,
    marker: Marker,
    cgroups: Cgroups,
    _lock: DirLock,
}

impl Host {
    /// Creates and locks the directories, raises the open-files limit, becomes the child
    /// subreaper and starts the reaper.
    fn take(config: &DaemonConfig) -> Result<Host, DaemonError> {
        create_dir(&config.state_dir, 0o700)?;
        create_dir(&config.log_dir, 0o750)?;
        let lock = DirLock::acquire(&config.state_dir)?;
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
            path: config.state_dir.clone(),
            source,
        })?;
        let marker = Marker {
            supervisor_id: supervisor_id(&config.state_dir),
        };
        let cgroups = Cgroups::probe(&marker.supervisor_id);
        Ok(Host {
            state_dir: config.state_dir.clone(),
            log_dir: config.log_dir.clone(),
            reaper,
            marker,
            cgroups,
            _lock: lock,
        })
    }

    /// The host of a daemon in a unit test: its directories (locked), a reaper that collects only
    /// its own children, no cgroups, and neither the subreaper flag nor the open-files limit
    /// touched, since the test process is shared.
    #[cfg(test)]
    fn for_tests(config: &DaemonConfig) -> Host {
        create_dir(&config.state_dir, 0o700).expect("the test state dir");
        create_dir(&config.log_dir, 0o750).expect("the test log dir");
        Host {
            state_dir: config.state_dir.clone(),
            log_dir: config.log_dir.clone(),
            reaper: Reaper::for_tests(),
            marker: Marker {
                supervisor_id: supervisor_id(&config.state_dir),
            },
            cgroups: Cgroups::disabled(),
            _lock: DirLock::acquire(&config.state_dir).expect("the test state dir's lock"),
        }
    }

    /// Stops what a previous citrusd on this state directory left running (it crashed), but for
    /// the groups of the children in `kept`, handed over to this one.
    async fn stop_leftovers(&self, config: &Config, kept: &[i32]) {
        let leftovers = orphans::stop_previous_run(&self.marker, config, kept, &self.cgroups).await;
        if leftovers > 0 {
            tracing::warn!(
                count = leftovers,
                "stopped processes left by a previous citrusd before starting apps"
            );
        }
    }
}

/// What a citrusd that re-executed itself handed over: its running children and the apps'
/// listening sockets (empty after an ordinary start).
#[derive(Default)]
struct HandedOver {
    adopt: HashMap<(String, u32), Adoption>,
    sockets: HashMap<String, Vec<listen::Handed>>,
    /// The children's pids.
    pids: Vec<i32>,
}

impl HandedOver {
    /// Takes the handoff; each child is registered with `reaper` at once, before anything is
    /// reaped or awaited.
    fn take(reaper: &Reaper) -> HandedOver {
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
        let pids = handoff.instances.iter().map(|i| i.pid).collect();
        HandedOver {
            adopt,
            sockets,
            pids,
        }
    }
}

impl Daemon {
    /// Makes the parts from `config`: the notifier, the supervisor with the persisted apps (and
    /// the children `handed` over), deployments, the fleet agent when configured, and the jobs.
    /// No app is started yet.
    async fn assemble(
        config: Config,
        env: Option<String>,
        host: &Host,
        handed: HandedOver,
    ) -> Result<Arc<Daemon>, DaemonError> {
        let store = StateStore::new(&host.state_dir);
        let (persisted, warnings) = store.load()?;
        for w in warnings {
            tracing::error!("{w}");
        }
        let events = Arc::new(Notifier::new(&config.notify));
        let notify_dir = host.state_dir.join("notify");
        create_dir(&notify_dir, 0o711)?;
        let jobs_config = config.jobs.clone();
        let fleet_config = config.fleet.clone();
        let config_path = config.path.clone();
        let shared = Arc::new(Shared {
            reaper: host.reaper.clone(),
            marker: host.marker.clone(),
            log_dir: host.log_dir.clone(),
            notify_dir,
            events: events.clone(),
            cgroups: host.cgroups.clone(),
        });
        let (adopt, sockets) = (handed.adopt, handed.sockets);
        let supervisor = Supervisor::new(shared, config, store, &persisted, adopt, sockets).await?;
        // The file on disk stays the previous, whole one if this fails (a full or read-only state
        // dir): the apps run anyway, and each command that changes state says when it cannot.
        if let Err(e) = supervisor.save() {
            tracing::error!("{e}; running with the state as loaded");
        }
        let deploys = Deployments::new(
            supervisor.clone(),
            host.reaper.clone(),
            host.marker.clone(),
            events.clone(),
            &host.state_dir,
            fleet_config.as_ref().and_then(|f| f.ca_file.clone()),
        );
        let agent = fleet_config.map(|fleet| {
            let agent = Agent::start(
                fleet,
                supervisor.clone(),
                deploys.clone(),
                host.reaper.clone(),
                host.marker.clone(),
                &host.state_dir,
            );
            let weak = Arc::downgrade(&agent);
            events.forward(Box::new(move |kind, app, message| {
                if let Some(agent) = weak.upgrade() {
                    agent.event(kind.as_str(), app, message);
                }
            }));
            agent
        });
        let jobs = Jobs::start(
            supervisor.clone(),
            deploys.clone(),
            events.clone(),
            host.reaper.clone(),
            host.marker.clone(),
            &host.state_dir,
            &jobs_config,
        );
        Ok(Arc::new(Daemon {
            supervisor,
            deploys,
            jobs,
            events,
            agent,
            config_path,
            env,
            started: Instant::now(),
            reload: tokio::sync::Mutex::new(()),
        }))
    }

    /// Stops everything in the reverse order of its start: the fleet agent, the jobs, the control
    /// API (`server`), then every app; removes the cgroups and the socket file, and saves the
    /// state a last time.
    async fn shut_down(
        &self,
        server: JoinHandle<()>,
        cgroups: &Cgroups,
        socket_path: &Path,
    ) -> Result<(), DaemonError> {
        tracing::info!("shutting down: stopping every app");
        tell_systemd("STOPPING=1");
        if let Some(agent) = &self.agent {
            agent.stop().await;
        }
        self.jobs.stop();
        server.abort();
        self.supervisor.shutdown().await;
        cgroups.remove_all();
        let saved = self.supervisor.save();
        let _ = std::fs::remove_file(socket_path);
        saved?;
        tracing::info!("all apps stopped; bye");
        Ok(())
    }
}

/// Starts what runs beside the apps: the control API on `listener` (its task is returned), the
/// metrics listener, the memory check, the systemd watchdog and the signal handlers.
async fn start_services(
    daemon: &Arc<Daemon>,
    listener: UnixListener,
    socket_path: &Path,
) -> Result<JoinHandle<()>, DaemonError> {
    let metrics = daemon.supervisor.config().daemon.metrics_listen;
    let server = tokio::spawn(api::serve(listener, daemon.clone()));
    if let Some(addr) = metrics {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(api::serve_metrics(l, daemon.clone()));
            }
            Err(e) => tracing::error!(%addr, "cannot listen for metrics: {e}"),
        }
    }
    tokio::spawn(daemon.supervisor.clone().memory_check_loop());
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
        path: socket_path.to_path_buf(),
        source,
    })?;
    tokio::spawn(signals);
    Ok(server)
}

/// Starts the apps, tells systemd citrusd is ready, and waits for `shutdown`; a shutdown request
/// while apps start interrupts the start (what was started is stopped by the shutdown).
async fn boot_then_wait(daemon: &Daemon, socket_path: &Path, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        errors = daemon.supervisor.boot() => {
            announce_ready(daemon, socket_path, &errors);
            shutdown.as_mut().await;
        }
        _ = shutdown.as_mut() => tracing::info!("shutdown requested while starting apps"),
    }
}

/// After the apps' start: the apps that failed to start logged, unfinished deployments taken up
/// again, and citrusd's readiness told to the log and to systemd.
fn announce_ready(daemon: &Daemon, socket_path: &Path, errors: &[String]) {
    for e in errors {
        tracing::error!("{e}");
    }
    let resumed = daemon.deploys.resume(false);
    if resumed > 0 {
        tracing::warn!(count = resumed, "unfinished deployments taken up again");
    }
    tracing::info!(pid = std::process::id(), socket = %socket_path.display(), "citrusd ready");
    let apps = daemon.supervisor.instances(None).map_or(0, |v| v.len());
    tell_systemd(&format!("READY=1\nSTATUS={apps} app(s) supervised"));
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
