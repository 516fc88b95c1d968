//! One app instance as an actor.
//!
//! Theory of operation. A single Tokio task owns the instance's child process and `select!`s over
//! the child's exit (a oneshot from the reaper), its control channel, the backoff deadline and the
//! `cron_restart` deadline; nothing else touches the child. Control messages carry a oneshot reply,
//! so `citrusctl restart` returns when the restart is done. The task publishes its status through
//! a `watch` channel that readers (status, metrics, the memory check) borrow without messaging it.
//! When idle the task is parked on its channel: no timers run unless a backoff or a cron restart
//! is pending. Stopping signals the whole process group plus any double-forked escapee that was
//! re-parented to us (citrusd is a subreaper) and carries this instance's environment marker.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::sleep_until;

use super::kill::GroupStop;
use super::lifecycle::{self, Counters, Decision, Policy};
use super::logs::{LogFile, LogSettings};
use super::reaper::{ExitStatus, Reaper};
use super::spawn::{self, Marker};
use crate::config::AppConfig;
use crate::control::{AppState, LastExit};
use crate::sys;

/// How many exits `describe` remembers per instance.
const RECENT_EXITS: usize = 10;
/// Pipes of an app that fills them are grown to this size (from the 64 KiB default).
const BIG_PIPE: i32 = 1 << 20;

/// What every instance actor shares: the reaper, the environment marker and where logs go.
pub struct Shared {
    pub reaper: Arc<Reaper>,
    pub marker: Marker,
    pub log_dir: PathBuf,
}

/// The published status of an instance.
#[derive(Clone, Debug)]
pub struct InstanceStatus {
    pub state: AppState,
    pub pid: Option<i32>,
    /// When the current run started.
    pub since: Option<Instant>,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub memory_restarts: u32,
    pub last_exit: Option<LastExit>,
    pub recent_exits: VecDeque<LastExit>,
    pub last_error: Option<String>,
}

/// The out and err log files of an instance.
#[derive(Clone)]
pub struct InstanceLogs {
    pub out: Arc<Mutex<LogFile>>,
    pub err: Arc<Mutex<LogFile>>,
}

type Reply = oneshot::Sender<Result<(), String>>;

enum Command {
    Start(Reply),
    Stop(Reply),
    Restart(Reply),
    Configure(Arc<AppConfig>),
    MemoryExceeded { pid: i32, rss: u64 },
    Shutdown(oneshot::Sender<()>),
}

/// The handle the supervisor keeps for one instance.
pub struct InstanceHandle {
    pub index: u32,
    tx: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<InstanceStatus>,
    logs: InstanceLogs,
}

/// `<log_dir>/<app>-out.log`, or `<app>-<n>-out.log` when the app has several instances.
pub fn log_paths(log_dir: &std::path::Path, app: &AppConfig, index: u32) -> (PathBuf, PathBuf) {
    let stem = if app.instances > 1 {
        format!("{}-{index}", app.name)
    } else {
        app.name.clone()
    };
    (
        log_dir.join(format!("{stem}-out.log")),
        log_dir.join(format!("{stem}-err.log")),
    )
}

fn log_settings(app: &AppConfig) -> LogSettings {
    LogSettings {
        max_size: app.log.max_size,
        keep: app.log.keep,
        max_age: app.log.max_age,
        compress: app.log.compress,
        timestamps: app.log.timestamps,
    }
}

fn closed() -> String {
    "the instance's task has ended (citrusd is shutting down)".to_string()
}

impl InstanceHandle {
    /// Opens the instance's logs and starts its actor (idle: nothing runs until `start`).
    pub fn spawn(
        shared: Arc<Shared>,
        app: Arc<AppConfig>,
        index: u32,
    ) -> io::Result<InstanceHandle> {
        let (out, err) = log_paths(&shared.log_dir, &app, index);
        let settings = log_settings(&app);
        let logs = InstanceLogs {
            out: Arc::new(Mutex::new(LogFile::open(out, settings.clone())?)),
            err: Arc::new(Mutex::new(LogFile::open(err, settings)?)),
        };
        let (status_tx, status) = watch::channel(InstanceStatus {
            state: AppState::Stopped,
            pid: None,
            since: None,
            restarts: 0,
            unstable_restarts: 0,
            memory_restarts: 0,
            last_exit: None,
            recent_exits: VecDeque::new(),
            last_error: None,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            shared,
            app,
            index,
            status: status_tx,
            logs: logs.clone(),
            counters: Counters::default(),
            run: None,
            backoff_until: None,
        };
        tokio::spawn(actor.run(rx));
        Ok(InstanceHandle {
            index,
            tx,
            status,
            logs,
        })
    }

    async fn ask(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| closed())?;
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Starts the instance (a no-op when it runs); resets the restart counters.
    pub async fn start(&self) -> Result<(), String> {
        self.ask(Command::Start).await
    }

    /// Stops the instance and everything it started.
    pub async fn stop(&self) -> Result<(), String> {
        self.ask(Command::Stop).await
    }

    /// Stops (if running) and starts again.
    pub async fn restart(&self) -> Result<(), String> {
        self.ask(Command::Restart).await
    }

    /// Uses `app` from the next spawn on (log settings at once).
    pub fn configure(&self, app: Arc<AppConfig>) {
        let _ = self.tx.send(Command::Configure(app));
    }

    /// Tells the instance its process tree uses `rss` bytes, over its cap.
    pub fn memory_exceeded(&self, pid: i32, rss: u64) {
        let _ = self.tx.send(Command::MemoryExceeded { pid, rss });
    }

    /// Stops the instance and ends its task.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// A snapshot of the current status.
    pub fn status(&self) -> InstanceStatus {
        self.status.borrow().clone()
    }

    /// The instance's log files.
    pub fn logs(&self) -> &InstanceLogs {
        &self.logs
    }
}

struct Run {
    pid: i32,
    started: Instant,
    exit: oneshot::Receiver<ExitStatus>,
}

enum Event {
    Exited(ExitStatus),
    BackoffOver,
    CronRestart,
    Command(Option<Command>),
}

struct Actor {
    shared: Arc<Shared>,
    app: Arc<AppConfig>,
    index: u32,
    status: watch::Sender<InstanceStatus>,
    logs: InstanceLogs,
    counters: Counters,
    run: Option<Run>,
    backoff_until: Option<Instant>,
}

async fn exit_of(run: &mut Option<Run>) -> ExitStatus {
    match run {
        Some(r) => (&mut r.exit).await.unwrap_or(ExitStatus {
            code: None,
            signal: None,
        }),
        None => std::future::pending().await,
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let cron = match (&self.run, &self.app.cron_restart) {
                (Some(_), Some(c)) => c.until_next(SystemTime::now()).map(|d| Instant::now() + d),
                _ => None,
            };
            let event = tokio::select! {
                status = exit_of(&mut self.run) => Event::Exited(status),
                _ = sleep_opt(self.backoff_until) => Event::BackoffOver,
                _ = sleep_opt(cron) => Event::CronRestart,
                cmd = rx.recv() => Event::Command(cmd),
            };
            match event {
                Event::Exited(status) => self.on_exit(status).await,
                Event::BackoffOver => {
                    self.backoff_until = None;
                    let _ = self.spawn();
                }
                Event::CronRestart => {
                    self.event("cron_restart: restarting on schedule");
                    self.replace(|s| s.restarts += 1).await;
                }
                Event::Command(None) => {
                    let _ = self.terminate().await;
                    return;
                }
                Event::Command(Some(Command::Shutdown(reply))) => {
                    let _ = self.terminate().await;
                    self.backoff_until = None;
                    self.set(|s| s.state = AppState::Stopped);
                    let _ = reply.send(());
                    return;
                }
                Event::Command(Some(cmd)) => self.command(cmd).await,
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Start(reply) => {
                let result = if self.run.is_some() {
                    Ok(())
                } else {
                    self.fresh_start()
                };
                let _ = reply.send(result);
            }
            Command::Stop(reply) => {
                self.backoff_until = None;
                let result = self.terminate().await;
                self.set(|s| s.state = AppState::Stopped);
                let _ = reply.send(result);
            }
            Command::Restart(reply) => {
                let result = if self.run.is_some() {
                    self.event("restart requested");
                    match self.terminate().await {
                        Ok(()) => {
                            self.set(|s| s.restarts += 1);
                            self.fresh_start()
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    self.fresh_start()
                };
                let _ = reply.send(result);
            }
            Command::Configure(app) => {
                for log in [&self.logs.out, &self.logs.err] {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .set_settings(log_settings(&app));
                }
                self.app = app;
            }
            Command::MemoryExceeded { pid, rss } => {
                if self.run.as_ref().map(|r| r.pid) != Some(pid) {
                    return;
                }
                let cap = self.app.max_memory_restart.unwrap_or(0);
                let msg = format!(
                    "memory {} MiB over max_memory_restart {} MiB: restarting",
                    rss >> 20,
                    cap >> 20
                );
                tracing::warn!(app = %self.app.name, instance = self.index, pid, rss, "{msg}");
                self.event(&msg);
                self.replace(|s| {
                    s.restarts += 1;
                    s.memory_restarts += 1;
                })
                .await;
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// A manual start: counters reset, no pending backoff.
    fn fresh_start(&mut self) -> Result<(), String> {
        self.counters = Counters::default();
        self.backoff_until = None;
        self.set(|s| s.unstable_restarts = 0);
        self.spawn()
    }

    /// Graceful stop then spawn, for memory and cron restarts.
    async fn replace(&mut self, count: impl FnOnce(&mut InstanceStatus)) {
        if self.terminate().await.is_ok() {
            self.set(count);
            let _ = self.spawn();
        }
    }

    fn set(&self, f: impl FnOnce(&mut InstanceStatus)) {
        self.status.send_modify(f);
    }

    /// citrusd's own line in the out log.
    fn event(&self, msg: &str) {
        self.logs
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_event(&format!("[citrus] {msg}"));
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.set(|s| s.state = AppState::Starting);
        let spec = spawn::Spec::instance(&self.app, self.index, &self.shared.marker);
        let spawned = spawn::command(&spec).and_then(|mut cmd| {
            self.shared
                .reaper
                .spawn(&mut cmd)
                .map_err(|e| spawn::exec_error(&self.app.command, e))
        });
        match spawned {
            Ok(child) => {
                drain(child.stdout, self.logs.out.clone());
                drain(child.stderr, self.logs.err.clone());
                self.event(&format!(
                    "spawned pid {} ({})",
                    child.pid,
                    self.app.command.join(" ")
                ));
                tracing::info!(app = %self.app.name, instance = self.index, pid = child.pid, "spawned");
                self.run = Some(Run {
                    pid: child.pid,
                    started: Instant::now(),
                    exit: child.exit,
                });
                self.set(|s| {
                    s.state = AppState::Online;
                    s.pid = Some(child.pid);
                    s.since = Some(Instant::now());
                    s.last_error = None;
                });
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(app = %self.app.name, instance = self.index, "cannot start: {msg}");
                self.event(&format!("cannot start: {msg}"));
                self.set(|s| {
                    s.state = AppState::Errored;
                    s.pid = None;
                    s.since = None;
                    s.last_error = Some(msg.clone());
                });
                Err(msg)
            }
        }
    }

    fn record_exit(&self, status: ExitStatus) {
        let exit = LastExit {
            code: status.code,
            signal: status.signal.map(sys::signal_name),
            at_ms: now_ms(),
        };
        self.set(|s| {
            s.pid = None;
            s.since = None;
            s.last_exit = Some(exit.clone());
            s.recent_exits.push_back(exit);
            while s.recent_exits.len() > RECENT_EXITS {
                s.recent_exits.pop_front();
            }
        });
    }

    async fn on_exit(&mut self, status: ExitStatus) {
        let Some(run) = self.run.take() else { return };
        let uptime = run.started.elapsed();
        self.record_exit(status);
        self.event(&format!(
            "pid {} exited ({status}) after {}",
            run.pid,
            human(uptime)
        ));
        // Whatever the leader left behind in its group dies before the next spawn.
        if self.group(run.pid).remains() {
            self.set(|s| s.state = AppState::Stopping);
            if let (Err(e), _) = self.kill_group(run.pid, None).await {
                self.event(&e);
            }
        }
        let decision = lifecycle::on_exit(
            &Policy::from(&*self.app),
            &mut self.counters,
            uptime,
            status,
        );
        let unstable = self.counters.unstable_restarts;
        self.set(|s| s.unstable_restarts = unstable);
        match decision {
            Decision::Restart { delay } => {
                self.set(|s| s.restarts += 1);
                if delay.is_zero() {
                    let _ = self.spawn();
                } else {
                    self.event(&format!("restarting in {}", human(delay)));
                    self.backoff_until = Some(Instant::now() + delay);
                    self.set(|s| s.state = AppState::Backoff);
                }
            }
            Decision::Errored => {
                let msg = format!(
                    "exited {unstable} times in a row within min_uptime ({}); max_restarts = {} reached, not restarting until `citrusctl start` or `restart`",
                    human(self.app.min_uptime),
                    self.app.max_restarts
                );
                tracing::error!(app = %self.app.name, instance = self.index, "errored: {msg}");
                self.event(&format!("errored: {msg}"));
                self.set(|s| {
                    s.state = AppState::Errored;
                    s.last_error = Some(msg);
                });
            }
            Decision::Stopped => {
                self.event("not restarting (restart policy)");
                self.set(|s| s.state = AppState::Stopped);
            }
        }
    }

    /// Stops the running child and everything in its group; a no-op when nothing runs.
    async fn terminate(&mut self) -> Result<(), String> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        self.set(|s| s.state = AppState::Stopping);
        self.event(&format!(
            "stopping pid {} ({})",
            run.pid,
            self.app.kill_signal.as_str()
        ));
        let mut exit = run.exit;
        let (result, status) = self.kill_group(run.pid, Some(&mut exit)).await;
        let status = status.unwrap_or(ExitStatus {
            code: None,
            signal: None,
        });
        self.record_exit(status);
        match &result {
            Ok(()) => self.event(&format!("stopped ({status})")),
            Err(e) => self.event(e),
        }
        result
    }

    /// The stop of this instance's group `pgid` with its kill settings.
    fn group(&self, pgid: i32) -> GroupStop<'_> {
        GroupStop {
            reaper: &self.shared.reaper,
            pgid,
            marker: self
                .shared
                .marker
                .instance_entries(&self.app.name, self.index),
            signal: self.app.kill_signal,
            timeout: self.app.kill_timeout,
        }
    }

    /// `kill_signal` to the group, wait `kill_timeout`, then SIGKILL, with the story in the log.
    async fn kill_group(
        &self,
        pgid: i32,
        leader: Option<&mut oneshot::Receiver<ExitStatus>>,
    ) -> (Result<(), String>, Option<ExitStatus>) {
        self.group(pgid)
            .run(leader, || {
                tracing::warn!(app = %self.app.name, pgid, "still running after kill_timeout: SIGKILL");
                self.event(&format!(
                    "still running after kill_timeout ({}): SIGKILL",
                    human(self.app.kill_timeout)
                ));
            })
            .await
    }
}

thread_local! {
    /// One read buffer per runtime thread, shared by every pipe drain: a drain copies from the
    /// pipe into it and straight to the log file without awaiting in between, so 1000 quiet
    /// instances cost no buffer memory.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
}

/// Copies a pipe into a log until every writer has closed it.
fn drain(fd: OwnedFd, log: Arc<Mutex<LogFile>>) {
    tokio::spawn(async move {
        let rx = match pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!("cannot watch an app's output pipe: {e}");
                return;
            }
        };
        let mut grown = false;
        loop {
            if rx.readable().await.is_err() {
                return;
            }
            // Up to 16 reads per wake, then yield so one flat-out writer cannot starve the rest.
            let eof = SCRATCH.with(|buf| {
                let mut buf = buf.borrow_mut();
                for _ in 0..16 {
                    match rx.try_read(&mut buf) {
                        Ok(0) => return Some(true),
                        Ok(n) => {
                            log.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .write_output(&buf[..n]);
                            if n >= 64 * 1024 && !grown {
                                spawn::grow_pipe(&rx, BIG_PIPE);
                                grown = true;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Some(true),
                    }
                }
                None
            });
            match eof {
                Some(true) => return,
                Some(false) => {}
                None => tokio::task::yield_now().await,
            }
        }
    });
}
