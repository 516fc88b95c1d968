//! Running deployments: one task per deployment walks the phases, journalling each before it
//! acts, so that a citrusd killed at any instant can take the deployment up again from the phase
//! the journal names.
//!
//! Theory of operation. Every phase is idempotent given the journal: `pulling_source` (and
//! `building`, whose half-built tree cannot be trusted) start from an empty release directory,
//! at the commit already recorded if there is one; `copying_files` links the shared paths again;
//! `creating_symlinks` records the release `current` pointed at *before* it switches (so the
//! switch itself needs no journal write to be undone) and skips a switch that already happened;
//! `restarting` and `health_check` are simply done again. `current` only ever moves to a release
//! whose build finished, so a half-written release is never live. One deployment per app at a
//! time: the in-flight map is the lock, and a journal record that is not final but has no task
//! (found at start, or left by a task that died) is resumed by [`Deployments::resume`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::journal::{Deployment, Journal, JournalError, Kind};
use super::{release, source, Phase};
use crate::config::{AppConfig, DeployConfig, DeploySource, EventKind};
use crate::control::AppState;
use crate::supervisor::oneshot::{self, Ended};
use crate::supervisor::reaper::Reaper;
use crate::supervisor::spawn::{Marker, Spec};
use crate::supervisor::{probe, EventSink, Supervisor, SupervisorError, Target};

/// A source that takes longer than this to fetch fails the deployment.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Listeners' queue of updates; a listener this far behind loses updates (logged).
const LISTENER_QUEUE: usize = 1024;
/// A non-final record with no task, untouched for this long, is taken up again by the
/// reconcile job (a task that died); records found at start are taken up at once.
pub const STUCK_AFTER: Duration = Duration::from_secs(5 * 60);

/// Why a deployment, a rollback or a listing was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(
        "app {app} has no [apps.{app}.deploy] section; add one (root and source) to deploy it"
    )]
    NotConfigured { app: String },
    #[error("a deployment of {app} is already running ({id}, {phase}); wait for it to end (`citrusctl deployments {app}`)")]
    Busy {
        app: String,
        id: String,
        phase: Phase,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NoRelease(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Why a phase did not succeed: the message, the phase's output, and whether the release was
/// already switched to (then a failure rolls back).
struct PhaseFailure {
    error: String,
    output: String,
}

impl PhaseFailure {
    fn new(error: impl Into<String>) -> Self {
        PhaseFailure {
            error: error.into(),
            output: String::new(),
        }
    }
}

type PhaseResult = Result<String, PhaseFailure>;

/// The deployments of every app of one citrusd.
pub struct Deployments {
    supervisor: Arc<Supervisor>,
    reaper: Arc<Reaper>,
    marker: Marker,
    events: Arc<dyn EventSink>,
    journal: Journal,
    /// `[fleet] ca_file`, trusted for https git sources too.
    ca_file: Option<PathBuf>,
    /// In-flight deployments by app: the per-app lock and the progress of each.
    running: Mutex<HashMap<String, watch::Sender<Deployment>>>,
    listeners: Mutex<Vec<mpsc::Sender<Deployment>>>,
    me: Weak<Deployments>,
}

impl Deployments {
    /// The deployments of `supervisor`'s apps, journalled under `state_dir`.
    pub fn new(
        supervisor: Arc<Supervisor>,
        reaper: Arc<Reaper>,
        marker: Marker,
        events: Arc<dyn EventSink>,
        state_dir: &Path,
        ca_file: Option<PathBuf>,
    ) -> Arc<Deployments> {
        Arc::new_cyclic(|me| Deployments {
            supervisor,
            reaper,
            marker,
            events,
            journal: Journal::new(state_dir),
            ca_file,
            running: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
            me: me.clone(),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Deployment>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The app's config and its `[deploy]`.
    fn config(&self, app: &str) -> Result<(Arc<AppConfig>, Arc<DeployConfig>), DeployError> {
        let (config, _, _) = self.supervisor.app_config(app)?;
        let deploy = config
            .deploy
            .clone()
            .ok_or_else(|| DeployError::NotConfigured { app: app.into() })?;
        Ok((config, deploy))
    }

    /// Every update of every deployment from now on (each phase change), for the fleet agent.
    pub fn subscribe(&self) -> mpsc::Receiver<Deployment> {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// The progress of the in-flight deployment `id` of `app`, if it is in flight.
    pub fn watch(&self, app: &str, id: &str) -> Option<watch::Receiver<Deployment>> {
        self.running()
            .get(app)
            .filter(|tx| tx.borrow().id == id)
            .map(|tx| tx.subscribe())
    }

    /// The deployments of `app`, newest first.
    pub fn list(&self, app: &str) -> Result<Vec<Deployment>, DeployError> {
        self.config(app)?;
        let mut all = self.journal.list(app);
        // The in-flight one as it is now (the journal has it too, but maybe a phase behind).
        if let Some(live) = self.running().get(app).map(|tx| tx.borrow().clone()) {
            if let Some(d) = all.iter_mut().find(|d| d.id == live.id) {
                *d = live;
            }
        }
        Ok(all)
    }

    /// The release `current` points at, for an app with `[deploy]`.
    pub fn current_release(&self, app: &AppConfig) -> Option<String> {
        let deploy = app.deploy.as_ref()?;
        release::current(deploy)
            .ok()
            .flatten()
            .filter(|id| !id.is_empty())
    }

    /// `apps` with the release each app with `[deploy]` runs from (`status --json`).
    pub fn with_releases(
        &self,
        mut apps: Vec<crate::control::AppStatus>,
    ) -> Vec<crate::control::AppStatus> {
        let config = self.supervisor.config();
        for row in &mut apps {
            if let Some(app) = config.apps.get(&row.name).filter(|a| a.deploy.is_some()) {
                row.release = self.current_release(app);
            }
        }
        apps
    }

    /// Starts a deployment of `app` at `git_ref` (git sources; the configured branch if `None`).
    /// Returns it as queued; it goes on in the background. `operation` is the engine's id.
    pub fn start(
        &self,
        app: &str,
        git_ref: Option<String>,
        operation: Option<String>,
    ) -> Result<Deployment, DeployError> {
        let (_, deploy) = self.config(app)?;
        let git_ref = match (&deploy.source, git_ref) {
            (DeploySource::Git { .. }, Some(r)) => Some(
                crate::fleet::protocol::validate_git_ref(&r).map_err(DeployError::BadRequest)?,
            ),
            (DeploySource::Git { branch, .. }, None) => Some(branch.clone()),
            (other, Some(_)) => {
                return Err(DeployError::BadRequest(format!(
                    "--ref is for git sources; {app} deploys from {}",
                    other.describe()
                )))
            }
            (_, None) => None,
        };
        let mut running = self.running();
        let existing = self.journal.list(app);
        check_idle(app, &running, &existing)?;
        let releases = deploy.releases();
        let id =
            release::new_id(|id| releases.join(id).exists() || existing.iter().any(|d| d.id == id));
        let d = Deployment::new(id, app, git_ref, operation);
        self.journal.save(&d)?;
        tracing::info!(app, id = %d.id, "deployment queued");
        let (tx, _) = watch::channel(d.clone());
        running.insert(app.to_owned(), tx);
        drop(running);
        self.publish(&d);
        tokio::spawn(self.handle().drive(d.clone()));
        Ok(d)
    }

    fn handle(&self) -> Arc<Deployments> {
        self.me
            .upgrade()
            .expect("Deployments lives in the Arc made by new")
    }

    /// Journals `d` and tells whoever watches it.
    fn save(&self, d: &Deployment) -> Result<(), JournalError> {
        self.save_with(d, &self.running())
    }

    /// As [`Deployments::save`], with the in-flight map already locked.
    fn save_with(
        &self,
        d: &Deployment,
        running: &HashMap<String, watch::Sender<Deployment>>,
    ) -> Result<(), JournalError> {
        let saved = self.journal.save(d);
        if let Some(tx) = running.get(&d.app) {
            tx.send_replace(d.clone());
        }
        self.publish(d);
        saved
    }

    /// Journals the end of `d` and lets its app be deployed again, in one step under the lock:
    /// whoever sees the end can start the next deployment at once.
    fn close(&self, d: &Deployment) {
        let mut running = self.running();
        if let Err(e) = self.save_with(d, &running) {
            tracing::error!(app = %d.app, id = %d.id, "cannot journal the end of the deployment: {e}");
        }
        running.remove(&d.app);
    }

    fn publish(&self, d: &Deployment) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|tx| match tx.try_send(d.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(app = %d.app, id = %d.id, "a deployment listener is too slow: update dropped");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Takes up every deployment the journal shows unfinished whose task is not running: at
    /// start, everything left by the previous citrusd; later (`stuck_only`), those untouched
    /// for [`STUCK_AFTER`]. Returns how many were taken up.
    pub fn resume(&self, stuck_only: bool) -> usize {
        // Only apps with a journal: one directory read, not one per app.
        let apps = self.journal.apps();
        let now = crate::sys::now_ms();
        let mut resumed = 0;
        for app in apps {
            let mut running = self.running();
            if running.contains_key(&app) {
                continue;
            }
            let unfinished: Vec<Deployment> = self
                .journal
                .list(&app)
                .into_iter()
                .filter(|d| !d.phase.is_final())
                .collect();
            let Some((newest, older)) = unfinished.split_first() else {
                continue;
            };
            if stuck_only && now.saturating_sub(newest.phase_ms) < STUCK_AFTER.as_millis() as u64 {
                continue;
            }
            for old in older {
                let mut old = old.clone();
                old.end(
                    Phase::Failed,
                    format!("superseded by the newer deployment {}", newest.id),
                    String::new(),
                );
                let _ = self.journal.save(&old);
            }
            let mut d = newest.clone();
            d.resumed += 1;
            if self.config(&app).is_err() {
                d.end(
                    Phase::Failed,
                    "cannot resume: the app no longer has a [deploy] section".into(),
                    String::new(),
                );
                let _ = self.journal.save(&d);
                continue;
            }
            tracing::warn!(app = %app, id = %d.id, phase = %d.phase, "resuming an unfinished deployment");
            let (tx, _) = watch::channel(d.clone());
            running.insert(app.clone(), tx);
            drop(running);
            let _ = self.save(&d);
            tokio::spawn(self.handle().drive(d));
            resumed += 1;
        }
        resumed
    }

    /// Walks `d` through its phases to the end, then lets the app be deployed again.
    async fn drive(self: Arc<Self>, mut d: Deployment) {
        self.phases(&mut d).await;
        let ended = d.phase;
        match ended {
            Phase::Completed => tracing::info!(app = %d.app, id = %d.id, "deployment completed"),
            _ => {
                let why = d.error.clone().unwrap_or_default();
                tracing::error!(app = %d.app, id = %d.id, phase = %ended, "deployment ended: {why}");
                self.events.emit(
                    EventKind::Deploy,
                    Some(&d.app),
                    &format!("deployment {} {ended}: {why}", d.id),
                );
            }
        }
        // Pruned while the app is still locked and this deployment still counts as in flight.
        if let Ok((_, deploy)) = self.config(&d.app) {
            let app = d.app.clone();
            let journal = self.journal.clone();
            let done = (d.phase == Phase::Completed).then(|| d.release.clone());
            let _ = tokio::task::spawn_blocking(move || prune(&deploy, &journal, &app, done)).await;
        }
        self.close(&d);
    }

    async fn phases(&self, d: &mut Deployment) {
        // Whether this task wrote the release's tree itself (not a resumed, cut-short one).
        let mut fresh_tree = false;
        while !d.phase.is_final() {
            let (app, deploy) = match self.config(&d.app) {
                Ok(c) => c,
                Err(e) => {
                    return d.end(Phase::Failed, e.to_string(), String::new());
                }
            };
            let dir = release::dir(&deploy, &d.release);
            let (result, next) = match d.phase {
                Phase::Queued => (Ok(String::new()), Phase::PullingSource),
                Phase::PullingSource => {
                    fresh_tree = true;
                    (self.pull(&deploy, &app, d, &dir).await, Phase::Building)
                }
                Phase::Building => {
                    // A build cut short left a tree that cannot be trusted: start it afresh.
                    let pulled = match fresh_tree {
                        true => Ok(()),
                        false => self.pull(&deploy, &app, d, &dir).await.map(|_| ()),
                    };
                    let built = match pulled {
                        Ok(()) => self.build(&app, &deploy, d, &dir).await,
                        Err(e) => Err(e),
                    };
                    (built, Phase::CopyingFiles)
                }
                Phase::CopyingFiles => (link_shared(&deploy, &dir).await, Phase::CreatingSymlinks),
                Phase::CreatingSymlinks => (switch(&deploy, &d.release).await, Phase::Restarting),
                Phase::Restarting => (self.restart(&app).await, Phase::HealthCheck),
                Phase::HealthCheck => (self.health_check(&app, &deploy).await, Phase::Completed),
                Phase::Completed | Phase::Failed | Phase::RolledBack => return,
            };
            match result {
                Ok(output) => {
                    if next == Phase::CreatingSymlinks {
                        // Recorded before the switch, so that the switch never needs undoing
                        // without knowing where to.
                        match release::current(&deploy) {
                            Ok(previous) => {
                                d.previous = previous.filter(|p| !p.is_empty() && *p != d.release)
                            }
                            Err(e) => {
                                return d.end(
                                    Phase::Failed,
                                    format!("cannot read {}: {e}", deploy.current().display()),
                                    output,
                                )
                            }
                        }
                    }
                    d.enter(next, output);
                    if next.is_final() {
                        return;
                    }
                    if let Err(e) = self.save(d) {
                        let error = format!("{e}; the deployment stops here");
                        if d.phase <= Phase::CreatingSymlinks {
                            let _ = release::remove(&deploy, &d.release);
                            return d.end(Phase::Failed, error, String::new());
                        }
                        return self.roll_back(d, &deploy, error, String::new()).await;
                    }
                }
                Err(failure) if d.phase >= Phase::Restarting => {
                    return self
                        .roll_back(d, &deploy, failure.error, failure.output)
                        .await;
                }
                Err(failure) => {
                    if d.phase <= Phase::CopyingFiles {
                        // Never live; its space is better given back now.
                        let _ = release::remove(&deploy, &d.release);
                    }
                    return d.end(Phase::Failed, failure.error, failure.output);
                }
            }
        }
    }

    /// The new release failed after the switch: `current` back to the previous release and the
    /// app restarted on it (`rolled_back`), or, with no previous release, `failed`.
    async fn roll_back(
        &self,
        d: &mut Deployment,
        deploy: &DeployConfig,
        error: String,
        output: String,
    ) {
        let previous = d
            .previous
            .clone()
            .filter(|p| release::dir(deploy, p).is_dir());
        let Some(previous) = previous else {
            let error = format!("{error}; there is no previous release to go back to");
            return d.end(Phase::Failed, error, output);
        };
        let back = {
            let (deploy, previous) = (deploy.clone(), previous.clone());
            blocking_io(move || release::switch(&deploy, &previous)).await
        };
        let mut error = format!("{error}; rolled back to {previous}");
        match back {
            Err(e) => {
                error = format!("{error} failed: cannot switch current back: {e}");
                return d.end(Phase::Failed, error, output);
            }
            Ok(()) => {
                if let Err(e) = self.supervisor.restart(&Target::App(d.app.clone())).await {
                    error.push_str(&format!(" (but restarting on it failed: {e})"));
                }
            }
        }
        d.end(Phase::RolledBack, error, output);
    }

    /// `pulling_source`: the source written into a fresh release directory.
    async fn pull(
        &self,
        deploy: &DeployConfig,
        app: &AppConfig,
        d: &mut Deployment,
        dir: &Path,
    ) -> PhaseResult {
        let source = deploy.source.clone();
        let (root, dir_owned) = (deploy.clone(), dir.to_path_buf());
        // A resumed deployment fetches the commit it recorded, not wherever the branch is now.
        let git_ref = d.commit.clone().or_else(|| d.git_ref.clone());
        let ca_file = self.ca_file.clone();
        let user = app.user.clone();
        let work = tokio::task::spawn_blocking(move || {
            fetch(
                &root,
                &source,
                git_ref.as_deref(),
                &dir_owned,
                ca_file.as_deref(),
                user.as_deref(),
            )
        });
        let fetched = match tokio::time::timeout(PULL_TIMEOUT, work).await {
            Err(_) => {
                return Err(PhaseFailure::new(format!(
                    "the source did not arrive within {}",
                    crate::config::format_duration(PULL_TIMEOUT)
                )))
            }
            Ok(joined) => joined.unwrap_or_else(|e| Err(format!("the fetch task failed: {e}"))),
        };
        let (commit, output) = fetched.map_err(PhaseFailure::new)?;
        if commit.is_some() {
            d.commit = commit;
        }
        Ok(output)
    }

    /// `building`: the build command in the release directory with the app's environment.
    async fn build(
        &self,
        app: &AppConfig,
        deploy: &DeployConfig,
        d: &Deployment,
        dir: &Path,
    ) -> PhaseResult {
        let Some(build) = &deploy.build else {
            return Ok("no build configured".into());
        };
        let mut command = build.clone();
        if command[0].contains('/') && !Path::new(&command[0]).is_absolute() {
            command[0] = dir.join(&command[0]).to_string_lossy().into_owned();
        }
        let mut extra = vec![self.marker.supervisor_var()];
        extra.push(("CITRUS_APP".into(), d.app.clone()));
        extra.push(("CITRUS_DEPLOY".into(), d.id.clone()));
        extra.push(("CITRUS_RELEASE".into(), d.release.clone()));
        let spec = Spec {
            command: &command,
            cwd: Some(dir),
            user: app.user.as_deref(),
            inherit_env: &app.inherit_env,
            env_file: app.env_file.as_deref(),
            env: &app.env,
            extra,
        };
        let label = format!("build of {} {}", d.app, d.id);
        let tail = super::journal::OUTPUT_TAIL;
        let done = oneshot::run(&self.reaper, &spec, deploy.build_timeout, tail, &label)
            .await
            .map_err(|e| PhaseFailure::new(format!("the build cannot start: {e}")))?;
        let failure = |error: String| PhaseFailure {
            error,
            output: done.output.clone(),
        };
        match &done.ended {
            Ended::Exited(status) if status.success() => Ok(done.output.clone()),
            Ended::Exited(status) => Err(failure(format!(
                "the build ({}) exited with {status}; current and the running app are untouched",
                build.join(" ")
            ))),
            Ended::TimedOut(msg) => Err(failure(format!("the build was {msg}"))),
        }
    }

    /// `restarting`: the app restarted on the new release, one instance at a time when it has
    /// several and a readiness check (each ready before the next stops).
    async fn restart(&self, app: &AppConfig) -> PhaseResult {
        let target = Target::App(app.name.clone());
        let rolling = app.instances >= 2 && app.ready.is_some();
        let result = match rolling {
            true => self.supervisor.reload(&target).await,
            false => self.supervisor.restart(&target).await,
        };
        result
            .map(|_| {
                let how = if rolling { "rolling reload" } else { "restart" };
                format!("{} restarted ({how})", app.name)
            })
            .map_err(|e| PhaseFailure::new(format!("the restart failed: {e}")))
    }

    /// `health_check`: every instance online and the probe passing, within its timeout.
    async fn health_check(&self, app: &AppConfig, deploy: &DeployConfig) -> PhaseResult {
        let (timeout, interval) = deploy.health.as_ref().map_or(
            (
                crate::config::DEFAULT_HEALTH_TIMEOUT,
                Duration::from_millis(200),
            ),
            |h| (h.timeout, h.interval),
        );
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            last = match self.unhealthy(app, deploy).await {
                None => {
                    let what = deploy
                        .health
                        .as_ref()
                        .map_or("every instance online".to_string(), |h| {
                            format!("every instance online, {} passed", h.target.describe())
                        });
                    return Ok(what);
                }
                Some(why) => why,
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
        }
        Err(PhaseFailure::new(format!(
            "the health check did not pass within {}: {last}",
            crate::config::format_duration(timeout)
        )))
    }

    /// What keeps the app from being healthy now, if anything.
    async fn unhealthy(&self, app: &AppConfig, deploy: &DeployConfig) -> Option<String> {
        let views = match self.supervisor.instances(Some(&app.name)) {
            Ok(v) => v,
            Err(e) => return Some(e.to_string()),
        };
        for v in &views {
            if v.status.state != AppState::Online {
                let why = v.status.last_error.as_deref().map(|e| format!(": {e}"));
                return Some(format!(
                    "instance {} is {}{}",
                    v.handle.index,
                    v.status.state.as_str(),
                    why.unwrap_or_default()
                ));
            }
        }
        let health = deploy.health.as_ref()?;
        let attempt = health
            .interval
            .clamp(Duration::from_millis(500), Duration::from_secs(5));
        match probe::check(&health.target, attempt).await {
            Ok(_) => None,
            Err(e) => Some(format!("probe {} failed: {e}", health.target.describe())),
        }
    }

    /// `citrusctl rollback APP [--to ID]`: `current` switched to the given completed release, or
    /// the newest completed one before it, atomically, then the app restarted.
    pub async fn rollback(&self, app: &str, to: Option<String>) -> Result<Deployment, DeployError> {
        let (_, deploy) = self.config(app)?;
        let current = release::current(&deploy)
            .map_err(|e| DeployError::NoRelease(e.to_string()))?
            .filter(|id| !id.is_empty());
        let records = self.journal.list(app);
        let completed: Vec<String> = records
            .iter()
            .filter(|d| d.phase == Phase::Completed)
            .map(|d| d.release.clone())
            .filter(|r| release::dir(&deploy, r).is_dir())
            .collect();
        let target = match to {
            Some(id) if !release::valid_id(&id) => {
                return Err(DeployError::BadRequest(format!("invalid release id {id:?}")))
            }
            Some(id) if completed.contains(&id) => id,
            Some(id) => {
                return Err(DeployError::NoRelease(format!(
                    "{id} is not a completed release of {app} that is still on disk; `citrusctl deployments {app}` lists them"
                )))
            }
            None => completed
                .into_iter()
                .find(|r| Some(r) != current.as_ref())
                .ok_or_else(|| {
                    DeployError::NoRelease(format!(
                        "{app} has no previous release to roll back to"
                    ))
                })?,
        };
        let mut d = {
            let mut running = self.running();
            check_idle(app, &running, &records)?;
            let id = release::new_id(|id| records.iter().any(|d| d.id == id));
            let mut d = Deployment::new(id, app, None, None);
            d.kind = Kind::Rollback;
            // What runs after it: the ref and commit the target release was deployed from.
            if let Some(made) = records.iter().find(|r| r.id == target) {
                (d.git_ref, d.commit) = (made.git_ref.clone(), made.commit.clone());
            }
            d.release = target.clone();
            d.previous = current.clone();
            d.enter(Phase::CreatingSymlinks, String::new());
            self.journal.save(&d)?;
            let (tx, _) = watch::channel(d.clone());
            running.insert(app.to_owned(), tx);
            d
        };
        let result = async {
            let out = switch(&deploy, &target).await?;
            d.enter(Phase::Restarting, out);
            self.save(&d)
                .map_err(|e| PhaseFailure::new(e.to_string()))?;
            self.supervisor
                .restart(&Target::App(app.to_owned()))
                .await
                .map(|_| format!("{app} restarted"))
                .map_err(|e| PhaseFailure::new(format!("the restart failed: {e}")))
        }
        .await;
        match result {
            Ok(out) => d.enter(Phase::Completed, out),
            Err(f) => d.end(Phase::Failed, f.error, f.output),
        }
        self.close(&d);
        Ok(d)
    }

    /// The reconcile job's pass over every app with `[deploy]` (see [`super::reconcile`]).
    pub async fn reconcile(&self) -> super::reconcile::Report {
        let resumed = self.resume(true);
        let mut report = super::reconcile::Report {
            resumed,
            ..Default::default()
        };
        let apps: Vec<Arc<AppConfig>> = self
            .supervisor
            .config()
            .apps
            .values()
            .filter(|a| a.deploy.is_some())
            .cloned()
            .collect();
        for app in apps {
            let Some(deploy) = app.deploy.clone() else {
                continue;
            };
            report.checked += 1;
            if self.running().contains_key(&app.name) {
                report.lines.push(format!(
                    "{}: a deployment is in progress; left alone",
                    app.name
                ));
                continue;
            }
            let journal = self.journal.clone();
            let name = app.name.clone();
            let found = tokio::task::spawn_blocking(move || {
                super::reconcile::check_app(&name, &deploy, &journal)
            })
            .await
            .unwrap_or_else(|e| super::reconcile::AppCheck::Error(e.to_string()));
            match found {
                super::reconcile::AppCheck::Fine => {}
                super::reconcile::AppCheck::Fixed { message, restart } => {
                    report.fixed += 1;
                    tracing::warn!(app = %app.name, "{message}");
                    self.events
                        .emit(EventKind::Deploy, Some(&app.name), &message);
                    report.lines.push(format!("{}: {message}", app.name));
                    if restart {
                        if let Err(e) = self
                            .supervisor
                            .restart(&Target::App(app.name.clone()))
                            .await
                        {
                            report.lines.push(format!(
                                "{}: restart after the repair failed: {e}",
                                app.name
                            ));
                        }
                    }
                }
                super::reconcile::AppCheck::Error(e) => {
                    report.errors += 1;
                    report.lines.push(format!("{}: {e}", app.name));
                }
            }
        }
        report
    }
}

/// Refuses while `app` has a deployment in flight (in `running`) or one waiting to be resumed
/// (in its journal `records`).
fn check_idle(
    app: &str,
    running: &HashMap<String, watch::Sender<Deployment>>,
    records: &[Deployment],
) -> Result<(), DeployError> {
    let busy = running
        .get(app)
        .map(|tx| tx.borrow().clone())
        .or_else(|| records.iter().find(|d| !d.phase.is_final()).cloned());
    match busy {
        Some(d) => Err(DeployError::Busy {
            app: app.into(),
            id: d.id,
            phase: d.phase,
        }),
        None => Ok(()),
    }
}

/// Runs blocking file-system work off the event loop.
async fn blocking_io<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

/// Fetches `source` into `dir` (emptied first); returns the commit (git) and a summary line.
fn fetch(
    deploy: &DeployConfig,
    source: &DeploySource,
    git_ref: Option<&str>,
    dir: &Path,
    ca_file: Option<&Path>,
    user: Option<&str>,
) -> Result<(Option<String>, String), String> {
    let prepare = || -> std::io::Result<()> {
        release::prepare(deploy)?;
        release::remove(
            deploy,
            dir.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
        )?;
        std::fs::create_dir(dir)
    };
    prepare().map_err(|e| format!("cannot create the release directory {}: {e}", dir.display()))?;
    let limits = source::Limits::default();
    let started = Instant::now();
    let (commit, stats) = match source {
        DeploySource::Path(src) => {
            if !src.is_dir() {
                return Err(format!("the source directory {} is missing", src.display()));
            }
            (None, source::copy_tree(src, dir, &limits))
        }
        DeploySource::Archive(file) => {
            // Not `is_file`: a pipe that an upload is still writing into is a fine source.
            if !file.exists() || file.is_dir() {
                return Err(format!("the source archive {} is missing", file.display()));
            }
            (None, source::extract_archive(file, dir, &limits))
        }
        DeploySource::Git { url, branch } => {
            let tls = match url.starts_with("https://") {
                true => Some(crate::fleet::tls::client_config(ca_file)?),
                false => None,
            };
            let cache = deploy.root.join(".cache/git");
            let git_ref = git_ref.unwrap_or(branch);
            match source::git_checkout(url, git_ref, &cache, dir, tls, &limits) {
                Ok(commit) => (Some(commit), Ok(source::Stats::default())),
                Err(e) => (None, Err(e)),
            }
        }
    };
    let stats = stats.map_err(|e| match e.is_storage_full() {
        true => format!("the disk is full (ENOSPC) while writing the release: {e}"),
        false => e.to_string(),
    })?;
    if let Some(user) = user.filter(|_| nix::unistd::geteuid().is_root()) {
        let found = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .ok_or_else(|| format!("user {user:?} does not exist"))?;
        release::chown_tree(dir, found.uid.as_raw(), found.gid.as_raw())
            .map_err(|e| format!("cannot give the release to {user}: {e}"))?;
    }
    sync_release(dir).map_err(|e| format!("cannot sync the release to disk: {e}"))?;
    let took = crate::config::format_duration(started.elapsed());
    Ok(match &commit {
        Some(c) => (
            commit.clone(),
            format!("checked out {c} from {} in {took}", source.describe()),
        ),
        None => (
            None,
            format!(
                "{} file(s), {} from {} in {took}",
                stats.files,
                crate::config::format_size(stats.bytes),
                source.describe()
            ),
        ),
    })
}

/// Flushes the file system holding `dir`, so a release is on disk before anything points at it.
fn sync_release(dir: &Path) -> std::io::Result<()> {
    let fd = std::fs::File::open(dir)?;
    nix::unistd::syncfs(&fd).map_err(std::io::Error::from)
}

/// `copying_files`: the shared paths linked into the release.
async fn link_shared(deploy: &DeployConfig, dir: &Path) -> PhaseResult {
    if deploy.shared.is_empty() {
        return Ok(String::new());
    }
    let (deploy, dir) = (deploy.clone(), dir.to_path_buf());
    blocking_io(move || release::link_shared(&deploy, &dir))
        .await
        .map_err(|e| PhaseFailure::new(format!("cannot link the shared paths: {e}")))
}

/// `creating_symlinks`: `current` switched to `id`, unless it already points there.
async fn switch(deploy: &DeployConfig, id: &str) -> PhaseResult {
    let (deploy, id) = (deploy.clone(), id.to_owned());
    blocking_io(move || {
        if release::current(&deploy)?.as_deref() == Some(id.as_str()) {
            return Ok(format!("current already -> releases/{id}"));
        }
        if !release::dir(&deploy, &id).is_dir() {
            return Err(std::io::Error::other(format!("release {id} is missing")));
        }
        release::switch(&deploy, &id).map(|()| format!("current -> releases/{id}"))
    })
    .await
    .map_err(|e| PhaseFailure::new(format!("cannot switch current: {e}")))
}

/// Retention: failed and rolled-back releases go first (never `current`), then completed ones
/// past the newest `keep`; `current` and the release before it are never deleted. Journal records
/// past [`super::journal::KEEP_RECORDS`] go too.
/// `just_completed` is the release of the deployment that is completing (not journalled as such
/// yet).
fn prune(deploy: &DeployConfig, journal: &Journal, app: &str, just_completed: Option<String>) {
    let records = journal.list(app);
    let current = release::current(deploy).ok().flatten();
    let completed: Vec<&str> = just_completed
        .as_deref()
        .into_iter()
        .chain(
            records
                .iter()
                .filter(|d| d.phase == Phase::Completed)
                .map(|d| d.release.as_str()),
        )
        .collect();
    let previous = completed
        .iter()
        .copied()
        .find(|r| Some(*r) != current.as_deref());
    let in_flight: Vec<&str> = records
        .iter()
        .filter(|d| !d.phase.is_final())
        .map(|d| d.release.as_str())
        .collect();
    let mut kept_completed = 0;
    // Newest first, so the newest `keep` completed releases are the ones kept.
    for id in release::list(deploy).iter().rev() {
        let protected = Some(id.as_str()) == current.as_deref()
            || Some(id.as_str()) == previous
            || in_flight.contains(&id.as_str());
        if protected {
            if completed.contains(&id.as_str()) {
                kept_completed += 1;
            }
            continue;
        }
        let keep = completed.contains(&id.as_str()) && kept_completed < deploy.keep;
        if keep {
            kept_completed += 1;
            continue;
        }
        match release::remove(deploy, id) {
            Ok(()) => tracing::info!(app, release = %id, "release pruned"),
            Err(e) => tracing::warn!(app, release = %id, "cannot prune release: {e}"),
        }
    }
    journal.prune(app);
}
