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

use super::events::Notifier;
use super::{cleanup, disk};
use crate::config::{format_size, EventKind, JobConfig, JobKind};
use crate::control::{JobInfo, JobOutcome, JobRun};
use crate::deploy::{reconcile, Deployments};
use crate::supervisor::oneshot::{self, Ended};
use crate::supervisor::reaper::Reaper;
use crate::supervisor::spawn::{Marker, Spec};
use crate::supervisor::Supervisor;
use crate::sys::fs::write_atomic;
use crate::sys::{now_ms, unix_ms as ms};

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

/// The scheduler and runner of all jobs.
pub struct Jobs {
    supervisor: Arc<Supervisor>,
    deploys: Arc<Deployments>,
    events: Arc<Notifier>,
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
        events: Arc<Notifier>,
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
            let now = SystemTime::now();
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
        let now = SystemTime::now();
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
            trigger: if scheduled.is_some() {
                "schedule"
            } else {
                "manual"
            }
            .to_string(),
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
            let problems = sup.problems(&app).await;
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
            let problems = sup.problems(&app).await;
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
            let problems = sup.problems(&app).await;
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
        let JobKind::Command {
            command,
            env,
            cwd,
            user,
            inherit_env,
        } = &job.kind
        else {
            unreachable!("command jobs only")
        };
        let spec = Spec {
            command,
            cwd: Some(cwd),
            user: user.as_deref(),
            inherit_env,
            env_file: None,
            env,
            extra: self.marker.job_vars(&job.name),
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
