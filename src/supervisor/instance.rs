//! One app instance as an actor.
//!
//! Theory of operation. A single Tokio task owns the instance's child process and `select!`s over
//! the child's exit (a oneshot from the reaper), its readiness check, its sd_notify socket, its
//! control channel and its deadlines (backoff, `cron_restart`, readiness timeout, watchdog);
//! nothing else touches the child. Control messages carry a oneshot reply; `start` and `restart`
//! answer once the instance is ready (`online`), so `citrusctl restart`, `reload` and `after`
//! ordering all wait for readiness. The task publishes its status in a shared cell (a mutex the
//! handle also holds) that readers (status, metrics, the memory check) copy without messaging it;
//! nothing waits on a change, so no `watch` channel and its wakers. A liveness probe runs
//! in a task of its own per run and reports failures back through the channel. When idle the task
//! is parked on its channel: no timer runs unless a backoff, a cron restart, a readiness timeout
//! or a watchdog is pending. Stopping signals the whole process group plus any double-forked
//! escapee (see `kill`). Deadlines and a run's uptime are read from Tokio's clock, so paused time
//! drives them in tests; the published `since` is the system's.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::cgroup::{Cgroups, Leaf};
use super::kill::{GroupStop, Survived};
use super::lifecycle::{self, Counters, Decision, Policy};
use super::listen::{AppSockets, ListenError};
use super::logs::{self, LogFile, LogSettings};
use super::probe::{self, ProbeError};
use super::reaper::{ExitStatus, Reaper, Spawned};
use super::sdnotify::{NotifyListener, NotifyMessage};
use super::spawn::{self, Marker, SpawnError};
use crate::config::{format_duration, AppConfig, EventKind, HealthConfig, ReadyCheck};
use crate::control::{AppState, LastExit};
use crate::sys::{self, procfs};

/// How many exits `describe` remembers per instance.
const RECENT_EXITS: usize = 10;
/// Pipes of an app that fills them are grown to this size (from the 64 KiB default).
const BIG_PIPE: i32 = 1 << 20;
/// The longest single readiness probe attempt.
const READY_ATTEMPT: Duration = Duration::from_secs(2);

/// Where instances report what an operator should hear of: an app errored, a memory restart, a
/// failed liveness check, a log file refused. The supervisor only emits; citrusd gives it the
/// health notifier, which logs each event and sends some on (webhook, fleet).
pub trait EventSink: Send + Sync {
    /// Reports `kind` about `app` (`app#n` for one instance of several), or about the host.
    fn emit(&self, kind: EventKind, app: Option<&str>, message: &str);
}

/// What every instance actor shares: the reaper, the environment marker, where logs and sd_notify
/// sockets go, and where events are reported.
pub struct Shared {
    pub reaper: Arc<Reaper>,
    pub marker: Marker,
    pub log_dir: PathBuf,
    pub notify_dir: PathBuf,
    pub events: Arc<dyn EventSink>,
    /// Where instances get their cgroups (disabled where cgroup v2 is not usable).
    pub cgroups: Cgroups,
}

/// The published status of an instance.
#[derive(Clone, Debug)]
pub struct InstanceStatus {
    pub state: AppState,
    pub pid: Option<i32>,
    /// When the current run started.
    pub since: Option<std::time::Instant>,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub memory_restarts: u32,
    pub last_exit: Option<LastExit>,
    pub recent_exits: VecDeque<LastExit>,
    pub last_error: Option<String>,
    /// The app's own `STATUS=` line (sd_notify).
    pub status_text: Option<String>,
    /// Descriptors (duplicates) of the running child's stdout and stderr pipes, for a handoff.
    pub pipes: Option<(i32, i32)>,
}

/// A child handed over by the previous citrusd (see `handoff`), given back to its instance.
pub struct Adoption {
    pub pid: i32,
    pub out: OwnedFd,
    pub err: OwnedFd,
    pub exit: oneshot::Receiver<ExitStatus>,
    pub uptime: Duration,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub memory_restarts: u32,
}

/// An [`Adoption`] whose pipes are ready for its instance (see [`Adoption::prepare`]).
pub struct Adopted {
    child: Adoption,
    /// Duplicates of the pipes, kept for a later handoff.
    pipes: (OwnedFd, OwnedFd),
}

impl Adoption {
    /// The part of taking the child back that can fail: its pipes made close-on-exec again (the
    /// handoff cleared it, and later children must not inherit them) and duplicated.
    pub fn prepare(self) -> io::Result<Adopted> {
        for fd in [&self.out, &self.err] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
        }
        let pipes = (self.out.try_clone()?, self.err.try_clone()?);
        Ok(Adopted { child: self, pipes })
    }
}

/// The out and err log files of an instance.
#[derive(Clone)]
pub struct InstanceLogs {
    pub out: Arc<Mutex<LogFile>>,
    pub err: Arc<Mutex<LogFile>>,
}

/// A log file of an instance that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {}: {source}", .path.display())]
pub struct LogOpenError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl InstanceLogs {
    /// Opens the out and err logs of instance `index` of `app` (see [`log_paths`]). A log path
    /// that is a symlink is no error: that log starts closed, refused, and raises a `log` event.
    pub fn open(
        shared: &Shared,
        app: &AppConfig,
        index: u32,
    ) -> Result<InstanceLogs, LogOpenError> {
        let (out, err) = log_paths(&shared.log_dir, app, index);
        let settings = log_settings(app);
        let open = |path: PathBuf| match LogFile::open(path.clone(), settings.clone()) {
            Ok(log) => Ok(Arc::new(Mutex::new(log))),
            Err(source) => Err(LogOpenError { path, source }),
        };
        let logs = InstanceLogs {
            out: open(out)?,
            err: open(err)?,
        };
        for log in [&logs.out, &logs.err] {
            let log = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = log.last_error().filter(|_| log.refused()) {
                let who = event_name(app, index);
                shared.events.emit(EventKind::Log, Some(&who), &why);
            }
        }
        Ok(logs)
    }

    /// The path of the out log (the err log is beside it).
    pub fn out_path(&self) -> PathBuf {
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.path().to_path_buf()
    }
}

/// Why an instance did not start, stop or become ready. The text reaches `citrusctl` through the
/// control API (prefixed with the app's name) and the instance's `last_error`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum InstanceError {
    /// The actor has ended: citrusd is shutting down.
    #[error("the instance's task has ended (citrusd is shutting down)")]
    Closed,
    /// A stop came while a start was waiting for readiness.
    #[error("the instance was stopped")]
    Stopped,
    /// The child could not be spawned.
    #[error(transparent)]
    CannotStart(SpawnFailure),
    /// The child could not be spawned for a momentary shortage of descriptors or processes; the
    /// spawn is retried after `delay`.
    #[error("cannot start: {cause}; retrying in {}", format_duration(*.delay))]
    Retrying {
        cause: SpawnFailure,
        delay: Duration,
    },
    /// The run ended before it was ready.
    #[error("exited ({0}) before it was ready")]
    ExitedBeforeReady(ExitStatus),
    /// The readiness probe did not pass within the ready `timeout`; `error` is its last failure.
    #[error("not ready within {}: {} ({error})", format_duration(*.timeout), .target.describe())]
    ProbeNotReady {
        timeout: Duration,
        target: crate::config::ProbeTarget,
        error: Arc<ProbeError>,
    },
    /// A `notify` app sent no READY=1 within the ready timeout.
    #[error("not ready within {}: no READY=1 on NOTIFY_SOCKET", format_duration(*.0))]
    NoReadyNotify(Duration),
    /// The readiness probe's task ended without a verdict.
    #[error("the readiness check ended")]
    ReadyCheckEnded,
    /// Stopping failed: the process group outlived SIGKILL.
    #[error(transparent)]
    Survived(#[from] Survived),
    /// In a rolling reload, the instance passed its ready probe on a port it shares with its
    /// siblings only through one of them.
    #[error(
        "instance {index} passed its ready probe on port {port}, but only through another \
         instance: it was not listening on the port after {}",
        format_duration(*.timeout)
    )]
    NotListening {
        index: u32,
        port: u16,
        timeout: Duration,
    },
}

/// Why a child could not be spawned.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SpawnFailure {
    /// The sd_notify socket of a `notify` app could not be created.
    #[error("cannot create NOTIFY_SOCKET {}: {source}", .path.display())]
    NotifySocket {
        path: PathBuf,
        source: Arc<io::Error>,
    },
    /// The app's listening sockets could not be opened.
    #[error(transparent)]
    Listen(Arc<ListenError>),
    /// The command could not be prepared or executed.
    #[error(transparent)]
    Spawn(Arc<SpawnError>),
    /// The child started, but its output pipes could not be duplicated (it is killed).
    #[error("cannot duplicate the output pipes: {0}")]
    Pipes(Arc<io::Error>),
}

impl SpawnFailure {
    /// A momentary shortage of descriptors or processes, not the app's fault: worth retrying.
    fn is_resource_shortage(&self) -> bool {
        match self {
            SpawnFailure::NotifySocket { source, .. } | SpawnFailure::Pipes(source) => {
                sys::is_resource_shortage(source)
            }
            SpawnFailure::Listen(_) => false,
            SpawnFailure::Spawn(e) => e.is_resource_shortage(),
        }
    }
}

type Reply = oneshot::Sender<Result<(), InstanceError>>;

/// The published status of an instance, shared by its actor and its handle.
type StatusCell = Arc<Mutex<InstanceStatus>>;

/// The status in `cell` (a panic while it was locked left a status still worth reading).
fn lock_status(cell: &StatusCell) -> std::sync::MutexGuard<'_, InstanceStatus> {
    cell.lock().unwrap_or_else(|e| e.into_inner())
}

/// A message to the actor. The rare ones with more than a pointer of payload carry it boxed:
/// tokio's unbounded channel allocates its first block of 32 slots with the channel, each slot as
/// large as the largest message, and every instance has a channel.
enum Command {
    Start(Reply),
    Stop(Reply),
    Restart(Reply),
    Configure(Arc<AppConfig>),
    MemoryExceeded(Box<MemoryExceeded>),
    HealthFailed(Box<HealthFailed>),
    Shutdown(oneshot::Sender<()>),
}

const _: () = assert!(std::mem::size_of::<Command>() <= 16, "see Command");

/// The run of `pid` uses `rss` bytes, over the app's cap.
struct MemoryExceeded {
    pid: i32,
    rss: u64,
}

/// The liveness probe of the run of `pid` failed too many times in a row.
struct HealthFailed {
    pid: i32,
    reason: String,
}

/// The handle the supervisor keeps for one instance.
pub struct InstanceHandle {
    pub index: u32,
    tx: mpsc::UnboundedSender<Command>,
    status: StatusCell,
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

/// How events name an instance: the app, with `#index` when it has several.
fn event_name(app: &AppConfig, index: u32) -> String {
    match app.instances > 1 {
        true => format!("{}#{index}", app.name),
        false => app.name.clone(),
    }
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

impl InstanceHandle {
    /// Starts the instance's actor (idle: nothing runs until `start`, unless it takes back the
    /// child in `adopt`), writing to `logs` (switched to the app's log settings). `sockets` are
    /// the app's listening sockets, if it has `listen`. Everything that can fail (opening the
    /// logs, preparing an adoption) is done before.
    pub fn spawn(
        shared: Arc<Shared>,
        app: Arc<AppConfig>,
        index: u32,
        sockets: Option<Arc<AppSockets>>,
        logs: InstanceLogs,
        adopt: Option<Adopted>,
    ) -> InstanceHandle {
        let settings = log_settings(&app);
        for log in [&logs.out, &logs.err] {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if *log.settings() != settings {
                log.set_settings(settings.clone());
            }
        }
        let status = Arc::new(Mutex::new(InstanceStatus {
            state: AppState::Stopped,
            pid: None,
            since: None,
            restarts: 0,
            unstable_restarts: 0,
            memory_restarts: 0,
            last_exit: None,
            recent_exits: VecDeque::new(),
            last_error: None,
            status_text: None,
            pipes: None,
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let leaf = shared.cgroups.leaf(&app.name, index);
        let mut actor = Actor {
            shared,
            app,
            index,
            status: status.clone(),
            logs: logs.clone(),
            me: tx.downgrade(),
            counters: Counters::default(),
            run: None,
            backoff_until: None,
            shortage_retries: 0,
            pending: Vec::new(),
            notify: None,
            sockets,
            leaf,
        };
        if let Some(a) = adopt {
            actor.adopt(a);
        }
        tokio::spawn(actor.run(rx));
        InstanceHandle {
            index,
            tx,
            status,
            logs,
        }
    }

    async fn ask(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), InstanceError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| InstanceError::Closed)?;
        rx.await.unwrap_or(Err(InstanceError::Closed))
    }

    /// Starts the instance (a no-op when it runs) and answers once it is ready; resets the
    /// restart counters.
    pub async fn start(&self) -> Result<(), InstanceError> {
        self.ask(Command::Start).await
    }

    /// Stops the instance and everything it started.
    pub async fn stop(&self) -> Result<(), InstanceError> {
        self.ask(Command::Stop).await
    }

    /// Stops (if running) and starts again; answers once it is ready.
    pub async fn restart(&self) -> Result<(), InstanceError> {
        self.ask(Command::Restart).await
    }

    /// Uses `app` from the next spawn on (log settings at once).
    pub fn configure(&self, app: Arc<AppConfig>) {
        let _ = self.tx.send(Command::Configure(app));
    }

    /// Tells the instance its process tree uses `rss` bytes, over its cap.
    pub fn memory_exceeded(&self, pid: i32, rss: u64) {
        let _ = self
            .tx
            .send(Command::MemoryExceeded(Box::new(MemoryExceeded {
                pid,
                rss,
            })));
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
        lock_status(&self.status).clone()
    }

    /// The instance's log files.
    pub fn logs(&self) -> &InstanceLogs {
        &self.logs
    }
}

/// Aborts a helper task (readiness or liveness probing) when its run ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Run {
    pid: i32,
    started: Instant,
    exit: oneshot::Receiver<ExitStatus>,
    /// The verdict of a probe-based readiness check still running.
    ready: Option<oneshot::Receiver<Result<(), InstanceError>>>,
    /// Until when an sd_notify app may take to send READY=1.
    ready_deadline: Option<Instant>,
    /// The watchdog period and when the next WATCHDOG=1 is due.
    watchdog: Option<(Duration, Instant)>,
    /// The readiness or liveness probe task of this run.
    probe: Option<AbortOnDrop>,
    /// Duplicates of the output pipes' read ends, kept for a handoff.
    _pipes: (OwnedFd, OwnedFd),
}

enum RunEvent {
    Exited(ExitStatus),
    Ready(Result<(), InstanceError>),
}

/// What a deadline of the actor is for.
#[derive(Clone, Copy)]
enum Deadline {
    ReadyTimeout,
    WatchdogExpired,
    BackoffOver,
    CronRestart,
}

enum Event {
    Run(RunEvent),
    Notify(io::Result<NotifyMessage>),
    Deadline(Deadline),
    Command(Option<Command>),
}

struct Actor {
    shared: Arc<Shared>,
    app: Arc<AppConfig>,
    index: u32,
    /// The published status; the actor is its only writer.
    status: StatusCell,
    logs: InstanceLogs,
    /// Our own channel, for the liveness task to report back (weak: the handle owns it).
    me: mpsc::WeakUnboundedSender<Command>,
    counters: Counters,
    run: Option<Run>,
    backoff_until: Option<Instant>,
    /// Spawns in a row that failed for lack of descriptors or processes (retried, see
    /// [`lifecycle::shortage_delay`]).
    shortage_retries: u32,
    /// Replies to `start`/`restart` waiting for the instance to be ready.
    pending: Vec<Reply>,
    /// The sd_notify socket given to the app (bound at the first spawn of a `notify` app);
    /// boxed, as most apps have none.
    notify: Option<Box<NotifyListener>>,
    /// The app's listening sockets (socket activation), shared with its other instances.
    sockets: Option<Arc<AppSockets>>,
    /// The instance's cgroup, created with the actor and reused by every run.
    leaf: Option<Leaf>,
}

const UNKNOWN: ExitStatus = ExitStatus {
    code: None,
    signal: None,
};

async fn run_event(run: &mut Option<Run>) -> RunEvent {
    let Some(r) = run else {
        return std::future::pending().await;
    };
    let ready = async {
        match r.ready.as_mut() {
            Some(rx) => rx.await.unwrap_or(Err(InstanceError::ReadyCheckEnded)),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        status = &mut r.exit => RunEvent::Exited(status.unwrap_or(UNKNOWN)),
        verdict = ready => RunEvent::Ready(verdict),
    }
}

/// The next message on the sd_notify socket, if there is one. The receive is boxed: most apps
/// have no socket, and the select holds this future inline.
async fn notify_of(listener: Option<&NotifyListener>) -> io::Result<NotifyMessage> {
    match listener {
        Some(l) => Box::pin(l.recv()).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until the deadline `next`, if any, and says what it was for.
async fn deadline(next: Option<(Instant, Deadline)>) -> Deadline {
    match next {
        Some((at, what)) => {
            sleep_until(at).await;
            what
        }
        None => std::future::pending().await,
    }
}

/// Probes until the target answers or `timeout` passes; the verdict carries the last error.
async fn wait_ready(
    target: crate::config::ProbeTarget,
    timeout: Duration,
    interval: Duration,
) -> Result<(), InstanceError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match probe::check(&target, left.min(READY_ATTEMPT)).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() + interval >= deadline {
            return Err(InstanceError::ProbeNotReady {
                timeout,
                target,
                error: Arc::new(err),
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// Probes every `interval` (fixed rate; a slow probe does not push the next one back); after
/// `failures` failures in a row, tells the actor and stops.
async fn watch_health(health: HealthConfig, pid: i32, me: mpsc::WeakUnboundedSender<Command>) {
    let mut failed = 0;
    let mut every = tokio::time::interval(health.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.reset();
    loop {
        every.tick().await;
        match probe::check(&health.target, health.timeout).await {
            Ok(()) => failed = 0,
            Err(e) => {
                failed += 1;
                if failed >= health.failures {
                    let reason = format!(
                        "health probe {} failed {failed} times in a row: {e}",
                        health.target.describe()
                    );
                    if let Some(tx) = me.upgrade() {
                        let _ = tx.send(Command::HealthFailed(Box::new(HealthFailed {
                            pid,
                            reason,
                        })));
                    }
                    return;
                }
            }
        }
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let next = self.next_deadline();
            let listener = self.run.as_ref().and(self.notify.as_deref());
            let event = tokio::select! {
                e = run_event(&mut self.run) => Event::Run(e),
                m = notify_of(listener) => Event::Notify(m),
                d = deadline(next) => Event::Deadline(d),
                cmd = rx.recv() => Event::Command(cmd),
            };
            // Boxed while it runs: handling an event can await a stop, and that state would
            // otherwise sit inline in this task's future for as long as the instance lives.
            if Box::pin(self.handle(event)).await.is_break() {
                return;
            }
        }
    }

    /// The earliest pending deadline and what it is for: one timer, not one per kind.
    fn next_deadline(&self) -> Option<(Instant, Deadline)> {
        let run = self.run.as_ref();
        let cron = match (run, &self.app.cron_restart) {
            (Some(_), Some(c)) => c.until_next(SystemTime::now()).map(|d| Instant::now() + d),
            _ => None,
        };
        let watchdog = run.and_then(|r| r.watchdog.map(|(_, at)| at));
        [
            (run.and_then(|r| r.ready_deadline), Deadline::ReadyTimeout),
            (watchdog, Deadline::WatchdogExpired),
            (self.backoff_until, Deadline::BackoffOver),
            (cron, Deadline::CronRestart),
        ]
        .into_iter()
        .filter_map(|(at, what)| Some((at?, what)))
        .min_by_key(|&(at, _)| at)
    }

    /// Handles one event; `Break` when the actor ends.
    async fn handle(&mut self, event: Event) -> ControlFlow<()> {
        match event {
            Event::Run(RunEvent::Exited(status)) => self.on_exit(status).await,
            Event::Run(RunEvent::Ready(Ok(()))) => self.become_online(),
            Event::Run(RunEvent::Ready(Err(e))) => self.not_ready(e).await,
            Event::Notify(Ok(msg)) => self.on_notify(msg).await,
            Event::Notify(Err(e)) => {
                tracing::warn!(app = %self.app.name, "sd_notify socket failed: {e}");
                self.notify = None;
            }
            Event::Deadline(Deadline::ReadyTimeout) => {
                let timeout = self.ready_timeout();
                self.not_ready(InstanceError::NoReadyNotify(timeout)).await;
            }
            Event::Deadline(Deadline::WatchdogExpired) => {
                let period = self.run.as_ref().and_then(|r| r.watchdog).map(|(p, _)| p);
                let reason = format!(
                    "no WATCHDOG=1 within {}",
                    format_duration(period.unwrap_or_default())
                );
                self.unhealthy(reason).await;
            }
            Event::Deadline(Deadline::BackoffOver) => {
                self.backoff_until = None;
                let _ = self.spawn();
            }
            Event::Deadline(Deadline::CronRestart) => {
                self.event("cron_restart: restarting on schedule");
                self.replace(|s| s.restarts += 1).await;
            }
            Event::Command(None) => {
                let _ = self.terminate().await;
                return ControlFlow::Break(());
            }
            Event::Command(Some(Command::Shutdown(reply))) => {
                let _ = self.terminate().await;
                self.backoff_until = None;
                self.set(|s| s.state = AppState::Stopped);
                self.fail_pending(&InstanceError::Stopped);
                let _ = reply.send(());
                return ControlFlow::Break(());
            }
            Event::Command(Some(cmd)) => self.command(cmd).await,
        }
        ControlFlow::Continue(())
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Start(reply) => {
                let result = if self.run.is_some() {
                    Ok(())
                } else {
                    self.fresh_start()
                };
                self.answer_when_ready(reply, result);
            }
            Command::Stop(reply) => {
                self.backoff_until = None;
                let result = self.terminate().await;
                self.set(|s| s.state = AppState::Stopped);
                self.fail_pending(&InstanceError::Stopped);
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
                self.answer_when_ready(reply, result);
            }
            Command::Configure(app) => {
                for log in [&self.logs.out, &self.logs.err] {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .set_settings(log_settings(&app));
                }
                self.app = app;
            }
            Command::MemoryExceeded(exceeded) => {
                let MemoryExceeded { pid, rss } = *exceeded;
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
                self.report(EventKind::MemoryRestart, &msg);
                self.replace(|s| {
                    s.restarts += 1;
                    s.memory_restarts += 1;
                })
                .await;
            }
            Command::HealthFailed(failed) => {
                let HealthFailed { pid, reason } = *failed;
                if self.run.as_ref().map(|r| r.pid) == Some(pid) {
                    self.unhealthy(reason).await;
                }
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Answers `reply` now when `result` failed or the instance is online, else once it is.
    fn answer_when_ready(&mut self, reply: Reply, result: Result<(), InstanceError>) {
        match result {
            Ok(()) if self.state() == AppState::Starting => self.pending.push(reply),
            other => {
                let _ = reply.send(other);
            }
        }
    }

    fn fail_pending(&mut self, reason: &InstanceError) {
        for reply in self.pending.drain(..) {
            let _ = reply.send(Err(reason.clone()));
        }
    }

    /// A manual start: counters reset, no pending backoff.
    fn fresh_start(&mut self) -> Result<(), InstanceError> {
        self.counters = Counters::default();
        self.backoff_until = None;
        self.set(|s| s.unstable_restarts = 0);
        self.spawn()
    }

    /// Graceful stop then spawn, for memory, health and cron restarts.
    async fn replace(&mut self, count: impl FnOnce(&mut InstanceStatus)) {
        if self.terminate().await.is_ok() {
            self.set(count);
            let _ = self.spawn();
        }
    }

    /// A liveness failure (probe or watchdog): reported, then a graceful restart.
    async fn unhealthy(&mut self, reason: String) {
        tracing::warn!(app = %self.app.name, instance = self.index, "{reason}: restarting");
        self.event(&format!("{reason}: restarting"));
        self.report(EventKind::HealthFailed, &reason);
        self.replace(|s| s.restarts += 1).await;
    }

    fn set(&self, f: impl FnOnce(&mut InstanceStatus)) {
        f(&mut lock_status(&self.status));
    }

    /// The published state.
    fn state(&self) -> AppState {
        lock_status(&self.status).state
    }

    /// citrusd's own line in the out log.
    fn event(&self, msg: &str) {
        self.logs
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_event(&format!("[citrus] {msg}"));
    }

    /// An event for the log and the webhook.
    fn report(&self, kind: EventKind, msg: &str) {
        let who = event_name(&self.app, self.index);
        self.shared.events.emit(kind, Some(&who), msg);
    }

    fn ready_timeout(&self) -> Duration {
        self.app
            .ready
            .as_ref()
            .map(|r| r.timeout)
            .unwrap_or_default()
    }

    /// The sd_notify socket path for this instance, bound on first use.
    fn notify_socket(&mut self) -> Result<String, SpawnFailure> {
        if self.notify.is_none() {
            let path = self
                .shared
                .notify_dir
                .join(format!("{}-{}.sock", self.app.name, self.index));
            let owner = match &self.app.user {
                Some(user) => match nix::unistd::User::from_name(user) {
                    Ok(Some(u)) => Some((u.uid.as_raw(), u.gid.as_raw())),
                    _ => None,
                },
                None => None,
            };
            let listener =
                NotifyListener::bind(&path, owner).map_err(|e| SpawnFailure::NotifySocket {
                    path: path.clone(),
                    source: Arc::new(e),
                })?;
            self.notify = Some(Box::new(listener));
        }
        let listener = self.notify.as_ref().expect("bound above");
        Ok(listener.path().to_string_lossy().into_owned())
    }

    /// Takes back a child the previous citrusd handed over: online, same pid, logs continue.
    fn adopt(&mut self, Adopted { child: a, pipes }: Adopted) {
        let raw = (pipes.0.as_raw_fd(), pipes.1.as_raw_fd());
        drain(a.out, self.logs.out.clone());
        drain(a.err, self.logs.err.clone());
        let started = Instant::now()
            .checked_sub(a.uptime)
            .unwrap_or_else(Instant::now);
        self.run = Some(Run {
            pid: a.pid,
            started,
            exit: a.exit,
            ready: None,
            ready_deadline: None,
            watchdog: None,
            probe: None,
            _pipes: pipes,
        });
        self.event(&format!("citrusd re-executed: pid {} kept", a.pid));
        self.set(|s| {
            s.state = AppState::Online;
            s.pid = Some(a.pid);
            s.since = Some(started.into_std());
            s.restarts = a.restarts;
            s.unstable_restarts = a.unstable_restarts;
            s.memory_restarts = a.memory_restarts;
            s.pipes = Some(raw);
        });
        // Liveness checks and the watchdog resume as after a readiness.
        self.become_online();
    }

    fn spawn(&mut self) -> Result<(), InstanceError> {
        self.set(|s| {
            s.state = AppState::Starting;
            s.status_text = None;
        });
        let ready = self.app.ready.clone();
        let notify = match ready.as_ref().map(|r| &r.check) {
            Some(ReadyCheck::Notify { .. }) => match self.notify_socket() {
                Ok(path) => Some(path),
                Err(e) => return self.cannot_start(e),
            },
            _ => None,
        };
        let mut spec = spawn::Spec::instance(&self.app, self.index, &self.shared.marker);
        if let Some(path) = notify {
            spec.extra.push(("NOTIFY_SOCKET".into(), path));
        }
        let child = match self.spawn_child(&spec) {
            Ok(child) => child,
            Err(e) => return self.cannot_start(e),
        };
        let pipes = match (child.stdout.try_clone(), child.stderr.try_clone()) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                // The child runs with nobody keeping it: kill its group before retrying or giving up.
                let _ = sys::signal_group(child.pid, nix::sys::signal::Signal::SIGKILL);
                return self.cannot_start(SpawnFailure::Pipes(Arc::new(e)));
            }
        };
        self.shortage_retries = 0;
        if let Some(leaf) = &self.leaf {
            // Beside the child's start, not before its exec: joining a cgroup can take ~10 ms.
            // Until it is in, what it forks is still stopped through its group and marker.
            leaf.adopt_soon(
                child.pid,
                format!("{} instance {}", self.app.name, self.index),
            );
        }
        drain(child.stdout, self.logs.out.clone());
        drain(child.stderr, self.logs.err.clone());
        self.event(&format!(
            "spawned pid {} ({})",
            child.pid,
            self.app.command.join(" ")
        ));
        tracing::info!(app = %self.app.name, instance = self.index, pid = child.pid, "spawned");
        let mut run = Run {
            pid: child.pid,
            started: Instant::now(),
            exit: child.exit,
            ready: None,
            ready_deadline: None,
            watchdog: None,
            probe: None,
            _pipes: pipes,
        };
        let raw = (run._pipes.0.as_raw_fd(), run._pipes.1.as_raw_fd());
        self.set(|s| s.pipes = Some(raw));
        match ready {
            None => {}
            Some(r) => match r.check {
                ReadyCheck::Probe(target) => {
                    let (tx, rx) = oneshot::channel();
                    let task = tokio::spawn(async move {
                        let _ = tx.send(wait_ready(target, r.timeout, r.interval).await);
                    });
                    run.ready = Some(rx);
                    run.probe = Some(AbortOnDrop(task));
                }
                ReadyCheck::Notify { .. } => run.ready_deadline = Some(Instant::now() + r.timeout),
            },
        }
        let waiting = run.ready.is_some() || run.ready_deadline.is_some();
        self.run = Some(run);
        self.set(|s| {
            s.pid = Some(child.pid);
            s.since = Some(std::time::Instant::now());
            s.last_error = None;
        });
        if !waiting {
            self.become_online();
        }
        Ok(())
    }

    /// Spawning failed: `errored` with the reason, waiting callers told. A momentary shortage of
    /// descriptors or processes is not the app's fault: `backoff`, and the spawn is retried after
    /// [`lifecycle::shortage_delay`].
    fn cannot_start(&mut self, cause: SpawnFailure) -> Result<(), InstanceError> {
        let (state, error) = if cause.is_resource_shortage() {
            self.shortage_retries = self.shortage_retries.saturating_add(1);
            let delay = lifecycle::shortage_delay(self.shortage_retries);
            self.backoff_until = Some(Instant::now() + delay);
            let error = InstanceError::Retrying { cause, delay };
            tracing::warn!(app = %self.app.name, instance = self.index, "{error}");
            self.event(&error.to_string());
            (AppState::Backoff, error)
        } else {
            tracing::error!(app = %self.app.name, instance = self.index, "cannot start: {cause}");
            self.event(&format!("cannot start: {cause}"));
            self.report(EventKind::Errored, &format!("cannot start: {cause}"));
            (AppState::Errored, InstanceError::CannotStart(cause))
        };
        self.set(|s| {
            s.state = state;
            s.pid = None;
            s.since = None;
            s.last_error = Some(error.to_string());
        });
        self.fail_pending(&error);
        Err(error)
    }

    /// Ready: `online`, waiting callers answered, liveness checks and watchdog armed.
    fn become_online(&mut self) {
        let health = self.app.health.clone();
        let watchdog = match self.app.ready.as_ref().map(|r| &r.check) {
            Some(ReadyCheck::Notify { watchdog }) => *watchdog,
            _ => None,
        };
        let me = self.me.clone();
        let Some(run) = self.run.as_mut() else { return };
        run.ready = None;
        run.ready_deadline = None;
        run.watchdog = watchdog.map(|p| (p, Instant::now() + p));
        run.probe = health.map(|h| AbortOnDrop(tokio::spawn(watch_health(h, run.pid, me))));
        if self.app.ready.is_some() {
            self.event("ready");
        }
        self.set(|s| s.state = AppState::Online);
        for reply in self.pending.drain(..) {
            let _ = reply.send(Ok(()));
        }
    }

    /// The run never became ready: stopped, and counted like a crash at start.
    async fn not_ready(&mut self, reason: InstanceError) {
        tracing::warn!(app = %self.app.name, instance = self.index, "{reason}");
        self.event(&reason.to_string());
        self.fail_pending(&reason);
        self.set(|s| s.last_error = Some(reason.to_string()));
        let Some(run) = self.run.take() else { return };
        let mut exit = run.exit;
        let (_, status) = self.kill_group(run.pid, Some(&mut exit)).await;
        let status = status.unwrap_or(UNKNOWN);
        self.record_exit(status);
        self.decide(Duration::ZERO, status);
    }

    async fn on_notify(&mut self, msg: NotifyMessage) {
        let Some(run) = self.run.as_mut() else { return };
        // Only the current run's processes speak for the instance.
        if let Some(sender) = msg.sender_pid {
            let ours = sender as i32 == run.pid
                || procfs::stat(sender as i32).is_some_and(|s| s.pgrp == run.pid);
            if !ours {
                return;
            }
        }
        if let Some((period, due)) = run.watchdog.as_mut() {
            if msg.watchdog {
                *due = Instant::now() + *period;
            }
        }
        if let Some(text) = msg.status {
            self.set(|s| s.status_text = Some(text));
        }
        if msg.ready && self.state() == AppState::Starting {
            self.become_online();
        }
    }

    fn record_exit(&self, status: ExitStatus) {
        let exit = LastExit {
            code: status.code,
            signal: status.signal.map(sys::signal_name),
            at_ms: sys::now_ms(),
        };
        self.set(|s| {
            s.pid = None;
            s.since = None;
            s.pipes = None;
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
            format_duration(uptime)
        ));
        if !self.pending.is_empty() {
            self.fail_pending(&InstanceError::ExitedBeforeReady(status));
        }
        // Whatever the leader left behind in its group dies before the next spawn.
        if self.group(run.pid).remains() {
            self.set(|s| s.state = AppState::Stopping);
            if let (Err(e), _) = self.kill_group(run.pid, None).await {
                self.event(&e.to_string());
            }
        }
        self.decide(uptime, status);
    }

    /// What follows a run that ended on its own: restart now or later, errored, or stopped.
    fn decide(&mut self, uptime: Duration, status: ExitStatus) {
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
                    self.event(&format!("restarting in {}", format_duration(delay)));
                    self.backoff_until = Some(Instant::now() + delay);
                    self.set(|s| s.state = AppState::Backoff);
                }
            }
            Decision::Errored => {
                let msg = format!(
                    "exited {unstable} times in a row within min_uptime ({}); max_restarts = {} reached, not restarting until `citrusctl start` or `restart`",
                    format_duration(self.app.min_uptime),
                    self.app.max_restarts
                );
                tracing::error!(app = %self.app.name, instance = self.index, "errored: {msg}");
                self.event(&format!("errored: {msg}"));
                self.report(EventKind::Errored, &msg);
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
    async fn terminate(&mut self) -> Result<(), InstanceError> {
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
        let status = status.unwrap_or(UNKNOWN);
        self.record_exit(status);
        match &result {
            Ok(()) => self.event(&format!("stopped ({status})")),
            Err(e) => self.event(&e.to_string()),
        }
        result.map_err(InstanceError::Survived)
    }

    /// Spawns the child of `spec`, with the app's sockets when it has `listen`.
    fn spawn_child(&self, spec: &spawn::Spec<'_>) -> Result<Spawned, SpawnFailure> {
        let spawned = match &self.sockets {
            None => spawn::command(spec).and_then(|mut cmd| {
                self.shared
                    .reaper
                    .spawn(&mut cmd)
                    .map_err(|e| spawn::exec_error(&self.app.command, e))
            }),
            Some(sockets) => match sockets.bound() {
                Err(e) => return Err(SpawnFailure::Listen(Arc::new(e))),
                Ok(bound) => spawn::activated_command(spec, &bound).and_then(|(mut cmd, plugs)| {
                    let spawned = self.shared.reaper.spawn(&mut cmd);
                    drop((plugs, bound));
                    spawned.map_err(|e| spawn::exec_error(&self.app.command, e))
                }),
            },
        };
        spawned.map_err(|e| SpawnFailure::Spawn(Arc::new(e)))
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
            cgroup: self.leaf.as_ref(),
        }
    }

    /// `kill_signal` to the group, wait `kill_timeout`, then SIGKILL, with the story in the log.
    async fn kill_group(
        &self,
        pgid: i32,
        leader: Option<&mut oneshot::Receiver<ExitStatus>>,
    ) -> (Result<(), Survived>, Option<ExitStatus>) {
        self.group(pgid)
            .run(leader, || {
                tracing::warn!(app = %self.app.name, pgid, "still running after kill_timeout: SIGKILL");
                self.event(&format!(
                    "still running after kill_timeout ({}): SIGKILL",
                    format_duration(self.app.kill_timeout)
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
///
/// Back-pressure: while the log's live file is full and its previous rotation is still being
/// processed, the pipe is not read (the app blocks in `write`), for at most
/// [`logs::BACKPRESSURE_MAX`] at a time; past that the reader goes on and what does not fit is
/// dropped and counted by the log, so a stuck disk cannot hang the app.
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
        // The worker did not catch up within BACKPRESSURE_MAX: read (and drop) until it does.
        let mut overrun = false;
        loop {
            if rx.readable().await.is_err() {
                return;
            }
            let backlog = log.lock().unwrap_or_else(|e| e.into_inner()).backlog();
            match backlog {
                Some(backlog) if !overrun => {
                    // Boxed: rare, and its timer would otherwise sit in every drain's future.
                    overrun = !Box::pin(backlog.wait(logs::BACKPRESSURE_MAX)).await;
                    continue;
                }
                Some(_) => {}
                None => overrun = false,
            }
            // Up to 16 reads per wake, then yield so one flat-out writer cannot starve the rest.
            let eof = SCRATCH.with(|buf| {
                let mut buf = buf.borrow_mut();
                // One lock for the whole burst: nothing awaits in between.
                let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
                for _ in 0..16 {
                    let limit = match file.read_limit() {
                        0 if !overrun => return None,
                        0 => file.chunk_limit(),
                        n => n,
                    }
                    .min(buf.len());
                    match rx.try_read(&mut buf[..limit]) {
                        Ok(0) => return Some(true),
                        Ok(n) => {
                            file.write_output(&buf[..n]);
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

#[cfg(test)]
mod tests {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    use super::*;
    use crate::config::ProbeTarget;
    use crate::supervisor::testing;

    /// The instance of `app` in `config`, its actor started (idle).
    fn instance(config: &crate::config::Config, app: &str) -> InstanceHandle {
        let shared = testing::shared(config, Arc::new(testing::Quiet));
        let app = config.apps[app].clone();
        let logs = InstanceLogs::open(&shared, &app, 0).expect("open the logs");
        InstanceHandle::spawn(shared, app, 0, None, logs, None)
    }

    /// A child that crashes at once is restarted after the exponential backoff, each delay
    /// exactly (paused time: the clock moves only when told), doubling up to the cap; a run
    /// that lasted `min_uptime` resets it.
    #[tokio::test(start_paused = true)]
    async fn restart_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() {
        let dir = tempfile::tempdir().unwrap();
        let config = testing::config(
            dir.path(),
            r#"
[apps.crash]
command = ["sleep", "3600"]
restart = "always"
exp_backoff_restart_delay = "100ms"
min_uptime = "1s"
max_restarts = 100
"#,
        );
        let h = instance(&config, "crash");
        h.start().await.expect("started");
        // Kills the child, then checks that the next one starts after `delay`, not before.
        let crash_then_wait = |delay: u64| {
            let h = &h;
            async move {
                let pid = h.status().pid.expect("a running child");
                kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
                testing::until("the exit", || h.status().state == AppState::Backoff).await;
                tokio::time::advance(Duration::from_millis(delay - 1)).await;
                testing::settle().await;
                let early = h.status();
                assert_eq!(
                    (early.state, early.pid),
                    (AppState::Backoff, None),
                    "{delay} ms"
                );
                tokio::time::advance(Duration::from_millis(1)).await;
                testing::until("the next run", || h.status().pid.is_some()).await;
            }
        };
        for delay in [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000] {
            crash_then_wait(delay).await;
        }
        assert_eq!(h.status().unstable_restarts, 10);
        // This run lasts longer than min_uptime: stable, so the backoff starts over.
        tokio::time::advance(Duration::from_secs(2)).await;
        crash_then_wait(100).await;
        let status = h.status();
        assert_eq!((status.restarts, status.unstable_restarts), (11, 0));
        h.shutdown().await;
    }

    fn os(errno: i32) -> Arc<io::Error> {
        Arc::new(io::Error::from_raw_os_error(errno))
    }

    /// The errors read exactly as the strings they replaced: `citrusctl` and `describe` show them.
    #[test]
    fn instance_errors_keep_their_messages() {
        let tcp = ProbeTarget::Tcp {
            host: "127.0.0.1".into(),
            port: 1,
        };
        let cases = [
            (
                InstanceError::Closed,
                "the instance's task has ended (citrusd is shutting down)",
            ),
            (InstanceError::Stopped, "the instance was stopped"),
            (
                InstanceError::CannotStart(SpawnFailure::NotifySocket {
                    path: "/run/n/api-0.sock".into(),
                    source: os(libc::EACCES),
                }),
                "cannot create NOTIFY_SOCKET /run/n/api-0.sock: Permission denied (os error 13)",
            ),
            (
                InstanceError::Retrying {
                    cause: SpawnFailure::Pipes(os(libc::EMFILE)),
                    delay: Duration::from_millis(250),
                },
                "cannot start: cannot duplicate the output pipes: Too many open files (os error 24); \
                 retrying in 250ms",
            ),
            (
                InstanceError::ExitedBeforeReady(ExitStatus {
                    code: Some(3),
                    signal: None,
                }),
                "exited (code 3) before it was ready",
            ),
            (
                InstanceError::ProbeNotReady {
                    timeout: Duration::from_millis(1500),
                    target: tcp,
                    error: Arc::new(ProbeError::Timeout(Duration::from_secs(2))),
                },
                "not ready within 1500ms: tcp 127.0.0.1:1 (timed out after 2s)",
            ),
            (
                InstanceError::NoReadyNotify(Duration::from_millis(300)),
                "not ready within 300ms: no READY=1 on NOTIFY_SOCKET",
            ),
            (InstanceError::ReadyCheckEnded, "the readiness check ended"),
            (
                InstanceError::Survived(Survived { pgid: 42 }),
                "pid 42 or its group survived SIGKILL for 5s",
            ),
            (
                InstanceError::NotListening {
                    index: 1,
                    port: 8080,
                    timeout: Duration::from_secs(10),
                },
                "instance 1 passed its ready probe on port 8080, but only through another \
                 instance: it was not listening on the port after 10s",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want, "{error:?}");
        }
    }

    #[test]
    fn only_a_shortage_is_retried() {
        assert!(SpawnFailure::Pipes(os(libc::EMFILE)).is_resource_shortage());
        assert!(SpawnFailure::NotifySocket {
            path: "/x".into(),
            source: os(libc::ENFILE),
        }
        .is_resource_shortage());
        assert!(!SpawnFailure::Pipes(os(libc::EBADF)).is_resource_shortage());
        let exec = spawn::exec_error(&["app".into()], io::Error::from_raw_os_error(libc::EAGAIN));
        assert!(SpawnFailure::Spawn(Arc::new(exec)).is_resource_shortage());
        let exec = spawn::exec_error(&["app".into()], io::Error::from_raw_os_error(libc::ENOENT));
        assert!(!SpawnFailure::Spawn(Arc::new(exec)).is_resource_shortage());
    }
}
