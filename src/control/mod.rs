//! The control API between `citrusd` and `citrusctl`: HTTP+JSON on a Unix socket, versioned under
//! `/v1/`. This module owns the wire types both sides use, the socket-path rule both apply, and the
//! client; the daemon's router lives in `daemon::api`.

pub mod client;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of this API; shown by `ping`. Bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// The socket path when neither `--socket` nor the config names one: `$CITRUS_SOCKET`, else
/// `/run/citrus/citrusd.sock` for root, else `$XDG_RUNTIME_DIR/citrus/citrusd.sock`, else
/// `$HOME/.citrus/citrusd.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CITRUS_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/run/citrus/citrusd.sock");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("citrus/citrusd.sock");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".citrus/citrusd.sock")
}

/// The lifecycle state of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    Starting,
    Online,
    Stopping,
    Stopped,
    Backoff,
    Errored,
}

impl AppState {
    /// The lowercase name used on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Starting => "starting",
            AppState::Online => "online",
            AppState::Stopping => "stopping",
            AppState::Stopped => "stopped",
            AppState::Backoff => "backoff",
            AppState::Errored => "errored",
        }
    }
}

/// `GET /v1/ping`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub pid: u32,
    pub version: String,
    pub protocol: u32,
    pub uptime_ms: u64,
}

/// `GET /v1/status` (also `GET /v1/apps`): `citrusctl status --json` prints it as is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub daemon: DaemonInfo,
    pub apps: Vec<AppStatus>,
}

/// The daemon part of [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub version: String,
    pub uptime_ms: u64,
}

/// One instance of one app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub instance: u32,
    pub pid: Option<u32>,
    pub state: AppState,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub memory_restarts: u32,
    pub uptime_ms: u64,
    pub memory_bytes: u64,
    pub cpu_percent: f64,
    pub last_exit: Option<LastExit>,
    /// The release `current` points at, for an app with `[deploy]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

/// How the previous run of an instance ended. `signal` is a name such as `"SIGKILL"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub at_ms: u64,
}

/// Every error body: `{"error": {"code", "message", "hint"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// An error a person can act on: what failed, and (when there is one) what to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable kind, see [`ErrorCode`].
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The kinds of API error; each maps to one HTTP status and one `citrusctl` exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No app by that name (404, exit 1).
    UnknownApp,
    /// The request itself is malformed (400, exit 2).
    BadRequest,
    /// The config file is invalid (422, exit 2).
    InvalidConfig,
    /// The request conflicts with what exists, e.g. a duplicate name (409, exit 1).
    Conflict,
    /// The operation was attempted and failed (500, exit 1).
    Failed,
    /// No job by that name (404, exit 1).
    UnknownJob,
}

/// `POST /v1/apps`: add an app at run time (`citrusctl start --name NAME -- CMD…`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddApp {
    pub name: String,
    pub command: Vec<String>,
    #[serde(default = "one")]
    pub instances: u32,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

fn one() -> u32 {
    1
}

/// The reply to start/stop/restart/reload/add/delete: the affected instances afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionReply {
    pub apps: Vec<AppStatus>,
}

/// `GET /v1/apps/{name}`: what `citrusctl describe` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Describe {
    pub name: String,
    /// `"config"` or `"runtime"` (added with `citrusctl start --name`).
    pub source: String,
    /// `"running"` or `"stopped"`: what citrusd keeps the app at.
    pub desired: String,
    /// The effective config, durations and sizes as strings.
    pub config: BTreeMap<String, serde_json::Value>,
    /// Environment names set from the config, with masked values.
    pub env: BTreeMap<String, String>,
    pub instances: Vec<InstanceDescribe>,
}

/// One instance in [`Describe`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceDescribe {
    pub status: AppStatus,
    pub last_error: Option<String>,
    /// The most recent exits, newest last.
    pub recent_exits: Vec<LastExit>,
    pub out_log: LogInfo,
    pub err_log: LogInfo,
    /// The app's own `STATUS=` line, for apps with `ready = { notify = true }`.
    #[serde(default)]
    pub status_text: Option<String>,
}

/// A log file's path and counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogInfo {
    pub path: PathBuf,
    pub bytes_written: u64,
    /// Bytes the app wrote that could not be stored (disk full, write error).
    pub bytes_dropped: u64,
    pub last_error: Option<String>,
}

/// `POST /v1/reload-config` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadRequest {
    #[serde(default)]
    pub dry_run: bool,
}

/// What a config reload does (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadPlan {
    pub start: Vec<String>,
    pub stop: Vec<String>,
    pub restart: Vec<String>,
    pub unchanged: Vec<String>,
    /// Changes that need a citrusd restart to take effect (e.g. `log_dir`).
    pub warnings: Vec<String>,
    pub applied: bool,
}

/// Which stream(s) `logs` reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    #[default]
    All,
    Out,
    Err,
}

/// Query of `GET /v1/apps/{name}/logs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogsQuery {
    #[serde(default = "default_lines")]
    pub lines: usize,
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub stream: LogStream,
    /// Only lines stamped at or after this RFC 3339 time (lines without a stamp are left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only lines matching this regular expression (`regex-lite` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
    /// One [`LogLine`] JSON object per line instead of the text.
    #[serde(default)]
    pub json: bool,
}

/// One line of `GET /v1/apps/{name}/logs?json=true` (and `citrusctl logs --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub app: String,
    pub instance: u32,
    /// `"out"` or `"err"`.
    pub stream: String,
    /// The line's stamp (RFC 3339 UTC), from `log_timestamps` or a `[citrus]` line; for a
    /// followed line without one, when citrusd passed it on; `null` for an unstamped line read
    /// from the file.
    pub time: Option<String>,
    /// The line without its stamp and newline (invalid UTF-8 replaced).
    pub line: String,
}

fn default_lines() -> usize {
    20
}

/// How a job run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    Ok,
    /// It ran and found something to report (a full disk, an app it had to recover).
    Warning,
    Failed,
    TimedOut,
}

impl JobOutcome {
    /// The snake_case name used on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Ok => "ok",
            JobOutcome::Warning => "warning",
            JobOutcome::Failed => "failed",
            JobOutcome::TimedOut => "timed_out",
        }
    }
}

/// What started a job run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobTrigger {
    /// Its schedule (`"schedule"`).
    Schedule,
    /// `citrusctl job run` (`"manual"`).
    Manual,
}

/// One run of a job (kept for the last runs, persisted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    pub trigger: JobTrigger,
    /// When the schedule wanted it to start (scheduled runs).
    pub scheduled_ms: Option<u64>,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub outcome: JobOutcome,
    pub summary: String,
    /// The last 4 KiB of output (commands) or the job's report.
    pub output: String,
    /// For `health` jobs: the recovery level reached (0 healthy, 1 restart, 2 respawn, 3 notify).
    pub level: Option<u8>,
}

/// A job in `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub name: String,
    pub kind: String,
    pub schedule: String,
    /// `"local"` or `"UTC"`.
    pub timezone: String,
    pub running_since_ms: Option<u64>,
    pub next_run_ms: Option<u64>,
    pub last_run: Option<JobRun>,
    /// The most recent runs, oldest first.
    pub runs: Vec<JobRun>,
}

/// `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobsReply {
    pub jobs: Vec<JobInfo>,
}

/// `POST /v1/apps/{name}/deploy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

/// `POST /v1/apps/{name}/rollback`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// A completed release id; the previous release when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// One deployment (deploy, rollback, `deployments/{id}`; a line each with `?follow=true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentReply {
    pub deployment: crate::deploy::Deployment,
}

/// `GET /v1/apps/{name}/deployments`: newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentsReply {
    pub deployments: Vec<crate::deploy::Deployment>,
}

/// SPEC 2.3's `status --json` literal, for the tests of the types and of the router.
#[cfg(test)]
pub(crate) const SPEC_STATUS: &str = r#"{"daemon": {"pid": 1, "version": "0.1.0", "uptime_ms": 5000},
 "apps": [{"name": "api", "instance": 0, "pid": 4242, "state": "online", "restarts": 2,
           "unstable_restarts": 0, "memory_restarts": 0, "uptime_ms": 1200, "memory_bytes": 10485760,
           "cpu_percent": 0.4, "last_exit": {"code": 1, "signal": null, "at_ms": 1700000000000}}]}"#;

/// Where the fleet agent's connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetState {
    Connecting,
    Connected,
    /// Exchanging the enrolment token for a key.
    Enrolling,
    /// In the backoff before the next connection attempt.
    Waiting,
    Stopped,
}

impl FleetState {
    /// The lowercase name used on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetState::Connecting => "connecting",
            FleetState::Connected => "connected",
            FleetState::Enrolling => "enrolling",
            FleetState::Waiting => "waiting",
            FleetState::Stopped => "stopped",
        }
    }
}

/// `GET /v1/fleet`: the fleet agent's connection, what `citrusctl fleet` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub state: FleetState,
    pub engine_url: String,
    pub agent_id: String,
    pub connected_since_ms: Option<u64>,
    pub last_error: Option<String>,
    pub queued_reports: usize,
    pub dropped_reports: u64,
    pub protocol: u32,
}

/// Asserts that `value` serialises to exactly `literal` and that `literal` reads back as `value`:
/// the test of a JSON format (the API's, the fleet wire's, a state file's) against its text.
#[cfg(test)]
pub(crate) fn assert_json_literal<T>(value: &T, literal: &str)
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    assert_eq!(serde_json::to_string(value).unwrap(), literal);
    assert_eq!(&serde_json::from_str::<T>(literal).unwrap(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The literal from SPEC 2.3 deserialises into our types and serialises back to the same JSON.
    #[test]
    fn status_json_matches_spec_literal() {
        let spec = SPEC_STATUS;
        let parsed: Status = serde_json::from_str(spec).unwrap();
        assert_eq!(parsed.apps[0].state, AppState::Online);
        let back = serde_json::to_value(&parsed).unwrap();
        let want: serde_json::Value = serde_json::from_str(spec).unwrap();
        assert_eq!(back, want);
    }

    /// A run as README's control API table and `jobs.json` have it.
    #[test]
    fn job_run_json_matches_the_literal() {
        let literal = r#"{"trigger":"schedule","scheduled_ms":1700000000000,"started_ms":1700000000003,"ended_ms":1700000000250,"outcome":"timed_out","summary":"did not finish within timeout 1s","output":"","level":null}"#;
        let run: JobRun = serde_json::from_str(literal).unwrap();
        assert_eq!(run.trigger, JobTrigger::Schedule);
        assert_eq!(run.outcome, JobOutcome::TimedOut);
        assert_eq!(serde_json::to_string(&run).unwrap(), literal);
        let manual = JobRun {
            trigger: JobTrigger::Manual,
            scheduled_ms: None,
            level: Some(1),
            ..run
        };
        let json = serde_json::to_value(&manual).unwrap();
        assert_eq!(json["trigger"], "manual");
        assert_eq!(json["scheduled_ms"], serde_json::Value::Null);
        assert_eq!(json["level"], 1);
        assert!(serde_json::from_str::<JobTrigger>(r#""cron""#).is_err());
    }

    #[test]
    fn fleet_status_json_literal() {
        let literal = r#"{"state":"waiting","engine_url":"wss://engine.example.com/agent","agent_id":"a1","connected_since_ms":null,"last_error":"connection refused","queued_reports":3,"dropped_reports":1,"protocol":1}"#;
        let status = FleetStatus {
            state: FleetState::Waiting,
            engine_url: "wss://engine.example.com/agent".into(),
            agent_id: "a1".into(),
            connected_since_ms: None,
            last_error: Some("connection refused".into()),
            queued_reports: 3,
            dropped_reports: 1,
            protocol: 1,
        };
        assert_json_literal(&status, literal);
        for (state, name) in [
            (FleetState::Connecting, "connecting"),
            (FleetState::Connected, "connected"),
            (FleetState::Enrolling, "enrolling"),
            (FleetState::Waiting, "waiting"),
            (FleetState::Stopped, "stopped"),
        ] {
            assert_json_literal(&state, &format!("\"{name}\""));
            assert_eq!(state.as_str(), name);
        }
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody {
            error: ApiError {
                code: ErrorCode::UnknownApp,
                message: "no app named x".into(),
                hint: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"unknown_app","message":"no app named x"}}"#
        );
    }
}
