//! Scheduled jobs: `health`, `disk`, `log-cleanup`, `save` and `command`.
//!
//! Theory of operation. One task per job sleeps until the job's next firing, computed afresh from
//! its cron schedule in its time zone after every run (so a clock step or a DST change moves the
//! next firing, never a pile of missed ones). A per-job lock makes runs exclusive: a firing that
//! finds the previous run still going is skipped and logged, and a manual `job run` is refused.
//! Every run is bounded by the job's `timeout`; a `command` job that outlives it has its whole
//! process group stopped (SIGTERM, then SIGKILL). The last runs of every job are kept and written
//! to `<state_dir>/jobs.json` atomically. Idle jobs cost one sleeping timer each.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{cleanup, disk};
use crate::config::{format_size, EventKind, JobConfig, JobKind, ReadyCheck};
use crate::control::{AppState, JobInfo, JobOutcome, JobRun, JobTrigger};
use crate::deploy::{reconcile, Deployments};
use crate::supervisor::oneshot::{self, Ended};
use crate::supervisor::probe;
use crate::supervisor::reaper::Reaper;
use crate::supervisor::spawn::{Marker, Spec};
use crate::supervisor::{EventSink, Supervisor};
use crate::sys::fs::write_atomic;
use crate::sys::{now_ms, procfs, unix_ms as ms};

/// Runs kept per job (in memory and in jobs.json).
const HISTORY: usize = 10;
/// The output kept per run: its last bytes.
const OUTPUT_TAIL: usize = 4096;
/// After a restart, how long an app gets to show it is healthy before it is checked again.
const SETTLE: Duration = Duration::from_secs(1);

/// Why a manual run was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job named {name:?}; known jobs: {}", if .known.is_empty() { "(none)".to_string() } else { .known.join(", ") })]
    Unknown { name: String, known: Vec<String> },
    #[error("job {name} is already running (since {since}); a job never overlaps itself")]
    Busy { name: String, since: String },
}

/// What a run found, before the bookkeeping.
struct Report {
    outcome: JobOutcome,
    summary: String,
    output: String,
    level: Option<u8>,
}

impl Report {
    fn new(outcome: JobOutcome, summary: impl Into<String>) -> Report {
        Report {
            outcome,
            summary: summary.into(),
            output: String::new(),
            level: None,
        }
    }
}

struct Entry {
    config: Arc<JobConfig>,
    lock: Arc<tokio::sync::Mutex<()>>,
    history: VecDeque<JobRun>,
    running_since_ms: Option<u64>,
    task: Option<JoinHandle<()>>,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    jobs: BTreeMap<String, Vec<JobRun>>,
}

/// The wall clock the schedules follow: the system's, or in unit tests one that paused Tokio time
/// drives (from a chosen instant).
#[derive(Clone, Copy)]
enum WallClock {
    System,
    #[cfg(test)]
    Paused {
        start: SystemTime,
        at: tokio::time::Instant,
    },
}

impl WallClock {
    fn now(self) -> SystemTime {
        match self {
            WallClock::System => SystemTime::now(),
            #[cfg(test)]
            WallClock::Paused { start, at } => start + at.elapsed(),
        }
    }
}

/// The scheduler and runner of all jobs.
pub struct Jobs {
    clock: WallClock,
    supervisor: Arc<Supervisor>,
    deploys: Arc<Deployments>,
    events: Arc<dyn EventSink>,
    reaper: Arc<Reaper>,
    marker: Marker,
    store: PathBuf,
    table: Mutex<BTreeMap<String, Entry>>,
    write: Mutex<()>,
}

impl Jobs {
    /// Loads the jobs' history from `state_dir` and starts a schedule task per job.
    pub fn start(
        supervisor: Arc<Supervisor>,
        deploys: Arc<Deployments>,
        events: Arc<dyn EventSink>,
        reaper: Arc<Reaper>,
        marker: Marker,
        state_dir: &Path,
        jobs: &BTreeMap<String, JobConfig>,
    ) -> Arc<Jobs> {
        let store = state_dir.join("jobs.json");
        let stored: Stored = match std::fs::read(&store) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %store.display(), "job history unreadable ({e}); starting it afresh");
                Stored::default()
            }),
            Err(_) => Stored::default(),
        };
        let this = Arc::new(Jobs {
            clock: WallClock::System,
            supervisor,
            deploys,
            events,
            reaper,
            marker,
            store,
            table: Mutex::new(BTreeMap::new()),
            write: Mutex::new(()),
        });
        let mut history = stored.jobs;
        this.install(jobs, &mut history);
        this
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the job set (config reload): unchanged jobs keep their task, history stays by name.
    pub fn reconfigure(self: &Arc<Self>, jobs: &BTreeMap<String, JobConfig>) {
        let mut history: BTreeMap<String, Vec<JobRun>> = BTreeMap::new();
        {
            let mut table = self.table();
            table.retain(|name, entry| {
                let keep = jobs.get(name).is_some_and(|j| *j == *entry.config);
                if !keep {
                    if let Some(t) = entry.task.take() {
                        t.abort();
                    }
                    history.insert(name.clone(), entry.history.drain(..).collect());
                }
                keep
            });
        }
        let new: BTreeMap<String, JobConfig> = {
            let table = self.table();
            jobs.iter()
                .filter(|(n, _)| !table.contains_key(*n))
                .map(|(n, j)| (n.clone(), j.clone()))
                .collect()
        };
        self.install(&new, &mut history);
    }

    fn install(
        self: &Arc<Self>,
        jobs: &BTreeMap<String, JobConfig>,
        history: &mut BTreeMap<String, Vec<JobRun>>,
    ) {
        let mut table = self.table();
        for (name, job) in jobs {
            let config = Arc::new(job.clone());
            let task = tokio::spawn(self.clone().schedule_loop(name.clone(), config.clone()));
            let mut runs: VecDeque<JobRun> = history.remove(name).unwrap_or_default().into();
            while runs.len() > HISTORY {
                runs.pop_front();
            }
            table.insert(
                name.clone(),
                Entry {
                    config,
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                    history: runs,
                    running_since_ms: None,
                    task: Some(task),
                },
            );
        }
    }

    /// Stops every schedule (at shutdown).
    pub fn stop(&self) {
        for entry in self.table().values_mut() {
            if let Some(t) = entry.task.take() {
                t.abort();
            }
        }
    }

    async fn schedule_loop(self: Arc<Self>, name: String, job: Arc<JobConfig>) {
        loop {
            let now = self.clock.now();
            let Some(next) = job.schedule.next_after(now) else {
                tracing::warn!(job = %name, "schedule never fires again");
                return;
            };
            tokio::time::sleep(next.duration_since(now).unwrap_or_default()).await;
            match self.execute(&name, Some(next)).await {
                Ok(_) => {}
                Err(e @ JobError::Busy { .. }) => tracing::warn!(job = %name, "skipped: {e}"),
                Err(e) => {
                    tracing::error!(job = %name, "{e}");
                    return;
                }
            }
        }
    }

    /// Runs the job now (`citrusctl job run`).
    pub async fn run_now(&self, name: &str) -> Result<JobRun, JobError> {
        self.execute(name, None).await
    }

    /// Every job with its schedule, last run and next run.
    pub fn list(&self) -> Vec<JobInfo> {
        let now = self.clock.now();
        self.table()
            .iter()
            .map(|(name, e)| JobInfo {
                name: name.clone(),
                kind: e.config.kind.name().to_string(),
                schedule: e.config.schedule.expr().to_string(),
                timezone: match e.config.schedule.timezone() {
                    crate::config::Timezone::Local => "local".into(),
                    crate::config::Timezone::Utc => "UTC".into(),
                },
                running_since_ms: e.running_since_ms,
                next_run_ms: e.config.schedule.next_after(now).map(ms),
                last_run: e.history.back().cloned(),
                runs: e.history.iter().cloned().collect(),
            })
            .collect()
    }

    async fn execute(&self, name: &str, scheduled: Option<SystemTime>) -> Result<JobRun, JobError> {
        let (config, lock) = {
            let table = self.table();
            let entry = table.get(name).ok_or_else(|| JobError::Unknown {
                name: name.into(),
                known: table.keys().cloned().collect(),
            })?;
            (entry.config.clone(), entry.lock.clone())
        };
        let Ok(_exclusive) = lock.try_lock() else {
            let since = self
                .table()
                .get(name)
                .and_then(|e| e.running_since_ms)
                .map(|ms| {
                    crate::sys::time::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                });
            return Err(JobError::Busy {
                name: name.into(),
                since: since.unwrap_or_else(|| "just now".into()),
            });
        };
        let started_ms = now_ms();
        self.set_running(name, Some(started_ms));
        tracing::info!(job = %name, kind = config.kind.name(), "job started");
        let report = self.run_kind(&config).await;
        let run = JobRun {
            trigger: match scheduled {
                Some(_) => JobTrigger::Schedule,
                None => JobTrigger::Manual,
            },
            scheduled_ms: scheduled.map(ms),
            started_ms,
            ended_ms: now_ms(),
            outcome: report.outcome,
            summary: report.summary,
            output: report.output,
            level: report.level,
        };
        match run.outcome {
            JobOutcome::Ok => tracing::info!(job = %name, "job ok: {}", run.summary),
            JobOutcome::Warning => tracing::warn!(job = %name, "job warning: {}", run.summary),
            JobOutcome::Failed | JobOutcome::TimedOut => self.events.emit(
                EventKind::JobFailed,
                None,
                &format!("job {name}: {}", run.summary),
            ),
        }
        self.record(name, run.clone());
        Ok(run)
    }

    fn set_running(&self, name: &str, since: Option<u64>) {
        if let Some(e) = self.table().get_mut(name) {
            e.running_since_ms = since;
        }
    }

    fn record(&self, name: &str, run: JobRun) {
        let stored = {
            let mut table = self.table();
            if let Some(e) = table.get_mut(name) {
                e.running_since_ms = None;
                e.history.push_back(run);
                while e.history.len() > HISTORY {
                    e.history.pop_front();
                }
            }
            Stored {
                version: 1,
                jobs: table
                    .iter()
                    .map(|(n, e)| (n.clone(), e.history.iter().cloned().collect()))
                    .collect(),
            }
        };
        let _one_writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let json = serde_json::to_vec_pretty(&stored).expect("job history serialises");
        if let Err(e) = write_atomic(&self.store, &json, 0o600) {
            tracing::error!(path = %self.store.display(), "cannot save job history: {e}");
        }
    }

    async fn run_kind(&self, job: &JobConfig) -> Report {
        if let JobKind::Command { .. } = &job.kind {
            // Commands enforce their timeout themselves: the process group must be stopped.
            return self.command(job).await;
        }
        let work = async {
            match &job.kind {
                JobKind::Health { apps } => self.health(apps).await,
                JobKind::Disk { paths, threshold } => self.disk(paths.clone(), *threshold).await,
                JobKind::LogCleanup {
                    dirs,
                    pattern,
                    max_age,
                } => cleanup_report(dirs.clone(), pattern.clone(), *max_age).await,
                JobKind::DeployReconcile => reconcile_report(self.deploys.reconcile().await),
                JobKind::Save => match self.supervisor.save() {
                    Ok(()) => Report::new(JobOutcome::Ok, "state saved"),
                    Err(e) => Report::new(JobOutcome::Failed, format!("cannot save state: {e}")),
                },
                JobKind::Command { .. } => unreachable!("handled above"),
            }
        };
        match tokio::time::timeout(job.timeout, work).await {
            Ok(report) => report,
            Err(_) => Report::new(
                JobOutcome::TimedOut,
                format!(
                    "did not finish within timeout {}",
                    crate::config::format_duration(job.timeout)
                ),
            ),
        }
    }

    async fn disk(&self, paths: Vec<PathBuf>, threshold: u8) -> Report {
        let usages = tokio::task::spawn_blocking(move || {
            paths.iter().map(|p| disk::usage(p)).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut lines = Vec::new();
        let mut over = Vec::new();
        let mut errors = Vec::new();
        for u in usages {
            match u {
                Ok(u) => {
                    let line = format!(
                        "{}: {:.1}% used, {} free of {}",
                        u.path.display(),
                        u.percent_used,
                        format_size(u.available_bytes),
                        format_size(u.total_bytes)
                    );
                    if u.percent_used > f64::from(threshold) {
                        over.push(line.clone());
                    }
                    lines.push(line);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let output = lines
            .iter()
            .chain(&errors)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        let mut report = if !errors.is_empty() {
            Report::new(JobOutcome::Failed, errors.join("; "))
        } else if !over.is_empty() {
            let msg = format!("above {threshold}%: {}", over.join("; "));
            self.events.emit(EventKind::Disk, None, &msg);
            Report::new(JobOutcome::Warning, msg)
        } else {
            Report::new(JobOutcome::Ok, format!("all under {threshold}%"))
        };
        report.output = output;
        report
    }

    /// The health check with escalation: restart the bad instances (level 1), then stop and
    /// respawn the whole app from the config (level 2), then notify (level 3).
    async fn health(&self, only: &[String]) -> Report {
        let sup = &self.supervisor;
        let mut lines = Vec::new();
        let mut level = 0u8;
        let mut failed = Vec::new();
        for app in sup.running_apps(only) {
            let problems = app_problems(sup, &app).await;
            if problems.is_empty() {
                lines.push(format!("{app}: healthy"));
                continue;
            }
            let what = describe(&problems);
            lines.push(format!(
                "{app}: {what}; restarting the instance(s) (level 1)"
            ));
            level = level.max(1);
            for (index, _) in &problems {
                if let Err(e) = sup.restart_instance(&app, *index).await {
                    lines.push(format!("{app}: restart of instance {index} failed: {e}"));
                }
            }
            tokio::time::sleep(SETTLE).await;
            let problems = app_problems(sup, &app).await;
            if problems.is_empty() {
                lines.push(format!("{app}: healthy again after level 1"));
                continue;
            }
            lines.push(format!(
                "{app}: {}; respawning the app from its config (level 2)",
                describe(&problems)
            ));
            level = level.max(2);
            if let Err(e) = sup.respawn(&app).await {
                lines.push(format!("{app}: respawn failed: {e}"));
            }
            tokio::time::sleep(SETTLE).await;
            let problems = app_problems(sup, &app).await;
            if problems.is_empty() {
                lines.push(format!("{app}: healthy again after level 2"));
                continue;
            }
            let msg = format!(
                "still unhealthy after restart and respawn: {}",
                describe(&problems)
            );
            lines.push(format!("{app}: {msg}; notifying (level 3)"));
            level = 3;
            self.events.emit(EventKind::HealthFailed, Some(&app), &msg);
            failed.push(app);
        }
        let (outcome, summary) = match level {
            0 => (JobOutcome::Ok, format!("{} app(s) healthy", lines.len())),
            3 => (
                JobOutcome::Failed,
                format!("unhealthy: {} (level 3 reached)", failed.join(", ")),
            ),
            n => (
                JobOutcome::Warning,
                format!("recovered (level {n} reached)"),
            ),
        };
        Report {
            outcome,
            summary,
            output: lines.join("\n"),
            level: Some(level),
        }
    }

    async fn command(&self, job: &JobConfig) -> Report {
        let Some(spec) = Spec::job(&job.kind) else {
            unreachable!("command jobs only")
        };
        let spec = Spec {
            extra: self.marker.job_vars(&job.name),
            ..spec
        };
        let label = format!("job {}", job.name);
        match oneshot::run(&self.reaper, &spec, job.timeout, OUTPUT_TAIL, &label).await {
            Err(e) => Report::new(JobOutcome::Failed, format!("cannot start: {e}")),
            Ok(done) => {
                let mut report = match &done.ended {
                    Ended::Exited(status) if status.success() => {
                        Report::new(JobOutcome::Ok, "exit code 0")
                    }
                    Ended::Exited(status) => {
                        Report::new(JobOutcome::Failed, format!("exited with {status}"))
                    }
                    Ended::TimedOut(msg) => Report::new(JobOutcome::TimedOut, msg.clone()),
                };
                report.output = done.output;
                report
            }
        }
    }
}

/// What is wrong with each instance of `app`: not online, its probe failing (the `health` probe,
/// else an http/tcp `ready` probe), or its process tree over `max_memory_restart`.
async fn app_problems(sup: &Supervisor, app: &str) -> Vec<(u32, String)> {
    let Ok((config, _, _)) = sup.app_config(app) else {
        return Vec::new();
    };
    let probe = match (&config.health, &config.ready) {
        (Some(h), _) => Some((h.target.clone(), h.timeout)),
        (None, Some(r)) => match &r.check {
            ReadyCheck::Probe(t) => Some((t.clone(), r.timeout.min(Duration::from_secs(5)))),
            ReadyCheck::Notify { .. } => None,
        },
        (None, None) => None,
    };
    let mut problems = Vec::new();
    for v in sup.instances(Some(app)).unwrap_or_default() {
        let i = v.handle.index;
        let s = &v.status;
        let Some(pid) = s.pid.filter(|_| s.state == AppState::Online) else {
            let why = s
                .last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            problems.push((i, format!("instance {i} is {}{why}", s.state.as_str())));
            continue;
        };
        if let Some((target, timeout)) = &probe {
            if let Err(e) = probe::check(target, *timeout).await {
                problems.push((
                    i,
                    format!("instance {i}: probe {} failed: {e}", target.describe()),
                ));
                continue;
            }
        }
        if let Some(cap) = config.max_memory_restart {
            let (rss, _) = procfs::tree_usage(pid);
            if rss > cap {
                problems.push((
                    i,
                    format!(
                        "instance {i} uses {} MiB, over max_memory_restart {} MiB",
                        rss >> 20,
                        cap >> 20
                    ),
                ));
            }
        }
    }
    problems
}

fn describe(problems: &[(u32, String)]) -> String {
    problems
        .iter()
        .map(|(_, p)| p.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `deploy-reconcile` job's result: ok, a warning when something was repaired, failed on
/// errors.
fn reconcile_report(r: reconcile::Report) -> Report {
    let mut summary = format!(
        "checked {}, fixed {}, errors {}",
        r.checked, r.fixed, r.errors
    );
    if r.resumed > 0 {
        summary.push_str(&format!(", resumed {} stuck deployment(s)", r.resumed));
    }
    let outcome = match (r.errors, r.fixed + r.resumed as u32) {
        (0, 0) => JobOutcome::Ok,
        (0, _) => JobOutcome::Warning,
        _ => JobOutcome::Failed,
    };
    let mut report = Report::new(outcome, summary);
    report.output = r.lines.join("\n");
    report
}

async fn cleanup_report(dirs: Vec<PathBuf>, pattern: String, max_age: Duration) -> Report {
    let report = tokio::task::spawn_blocking(move || {
        cleanup::clean(&dirs, &pattern, max_age, SystemTime::now())
    })
    .await
    .unwrap_or_default();
    let summary = format!(
        "deleted {} file(s), freed {}",
        report.files_deleted,
        format_size(report.bytes_freed)
    );
    let mut output: Vec<String> = report
        .deleted
        .iter()
        .map(|p| format!("deleted {}", p.display()))
        .collect();
    output.extend(report.errors.iter().cloned());
    let mut r = if report.errors.is_empty() {
        Report::new(JobOutcome::Ok, summary)
    } else {
        Report::new(
            JobOutcome::Failed,
            format!("{summary}; {}", report.errors.join("; ")),
        )
    };
    r.output = output.join("\n");
    r
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::supervisor::testing;

    /// The jobs of the config `toml` (in `dir`), its apps on a test supervisor, scheduled on a
    /// wall clock that reads `start` now and moves with paused Tokio time.
    async fn paused_jobs(dir: &Path, toml: &str, start: SystemTime) -> Arc<Jobs> {
        let config = testing::config(dir, toml);
        let shared = testing::shared(&config, Arc::new(testing::Quiet));
        let supervisor = testing::supervisor(shared.clone(), config.clone()).await;
        let state_dir = &config.daemon.state_dir;
        let (reaper, marker, events) = (&shared.reaper, &shared.marker, &shared.events);
        let deploys = Deployments::new(
            supervisor.clone(),
            reaper.clone(),
            marker.clone(),
            events.clone(),
            state_dir,
            None,
        );
        let none = BTreeMap::new();
        let mut jobs = Jobs::start(
            supervisor,
            deploys,
            events.clone(),
            reaper.clone(),
            marker.clone(),
            state_dir,
            &none,
        );
        // No schedule task holds it yet: set the clock, then schedule the jobs.
        let at = tokio::time::Instant::now();
        Arc::get_mut(&mut jobs).expect("no task yet").clock = WallClock::Paused { start, at };
        jobs.install(&config.jobs, &mut BTreeMap::new());
        testing::settle().await;
        jobs
    }

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// A `*/10` seconds schedule started 3 s past a mark fires 7 s later, not a millisecond
    /// before, then every 10 s.
    #[tokio::test(start_paused = true)]
    async fn a_scheduled_job_fires_at_its_next_time_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let toml =
            "[jobs.flush]\nschedule = \"*/10 * * * * *\"\nkind = \"save\"\ntimezone = \"UTC\"\n";
        let jobs = paused_jobs(dir.path(), toml, at_ms(1_700_000_003_000)).await;
        let runs = || jobs.list()[0].runs.clone();
        assert_eq!(jobs.list()[0].next_run_ms, Some(1_700_000_010_000));
        tokio::time::advance(Duration::from_millis(6_999)).await;
        testing::settle().await;
        assert!(runs().is_empty(), "fired early: {:?}", runs());
        tokio::time::advance(Duration::from_millis(1)).await;
        testing::until("the first run", || runs().len() == 1).await;
        let run = &runs()[0];
        assert_eq!(run.trigger, JobTrigger::Schedule);
        assert_eq!(run.scheduled_ms, Some(1_700_000_010_000));
        assert_eq!(
            (run.outcome, run.summary.as_str()),
            (JobOutcome::Ok, "state saved")
        );
        assert_eq!(jobs.list()[0].next_run_ms, Some(1_700_000_020_000));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        testing::settle().await;
        assert_eq!(runs().len(), 1, "fired early");
        tokio::time::advance(Duration::from_millis(1)).await;
        testing::until("the second run", || runs().len() == 2).await;
        assert_eq!(runs()[1].scheduled_ms, Some(1_700_000_020_000));
        jobs.stop();
    }

    /// A run longer than the interval (the health check of an app that cannot start waits two
    /// settle times: 2 s) is not overlapped: the firings it covers are skipped, the next comes at
    /// the first mark after it ended, and a manual run meanwhile is refused.
    #[tokio::test(start_paused = true)]
    async fn a_run_that_outlasts_its_interval_skips_the_firings_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let toml = r#"
[apps.broken]
command = ["/nonexistent/citrus-test-app"]

[jobs.check]
schedule = "* * * * * *"
kind = "health"
timezone = "UTC"
"#;
        let t0 = tokio::time::Instant::now();
        let jobs = paused_jobs(dir.path(), toml, at_ms(1_700_000_000_500)).await;
        // It fires at …01.000 (0.5 s in) and is still running at 0.75 s.
        tokio::time::sleep_until(t0 + Duration::from_millis(750)).await;
        assert!(jobs.list()[0].running_since_ms.is_some());
        assert!(jobs.list()[0].runs.is_empty());
        match jobs.run_now("check").await {
            Err(JobError::Busy { name, .. }) => assert_eq!(name, "check"),
            other => panic!("a manual run during a run: {other:?}"),
        }
        // It ended at 2.5 s (…03.000): …02 and …03 were skipped, the next firing is …04.
        tokio::time::sleep_until(t0 + Duration::from_millis(2_750)).await;
        let info = &jobs.list()[0];
        assert_eq!(info.running_since_ms, None);
        assert_eq!(info.runs.len(), 1);
        assert_eq!(info.runs[0].scheduled_ms, Some(1_700_000_001_000));
        assert_eq!(info.runs[0].level, Some(3));
        assert_eq!(info.next_run_ms, Some(1_700_000_004_000));
        // The second run (…04 to …06) covers …05 in turn.
        tokio::time::sleep_until(t0 + Duration::from_millis(5_750)).await;
        let runs = jobs.list()[0].runs.clone();
        let scheduled: Vec<_> = runs.iter().map(|r| r.scheduled_ms).collect();
        assert_eq!(
            scheduled,
            [Some(1_700_000_001_000), Some(1_700_000_004_000)]
        );
        jobs.stop();
    }
}
