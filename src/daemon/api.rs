//! The control API router (axum on the Unix socket): `/v1/...` JSON routes and `/metrics`.
//! Every mutating request is logged with the caller's uid (SO_PEERCRED).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc};

use super::{Daemon, ReloadError};
use crate::config::{format_duration, format_size, AppConfig};
use crate::control::{
    ActionReply, AddApp, ApiError, DaemonInfo, Describe, ErrorBody, ErrorCode, InstanceDescribe,
    JobRun, JobsReply, LogInfo, LogLine, LogStream, LogsQuery, Ping, ReloadPlan, ReloadRequest,
    Status, PROTOCOL_VERSION,
};
use crate::control::{DeployRequest, DeploymentReply, DeploymentsReply, RollbackRequest};
use crate::deploy::DeployError;
use crate::health::jobs::JobError;
use crate::supervisor::logs::{
    split_stamp, tail_lines, LineBuffer, LineFilter, LogFile, MAX_SCAN_LINES,
};
use crate::supervisor::{SupervisorError, Target};
use crate::sys::serve::Limits;
use crate::sys::{self, procfs};

/// The connecting process's credentials.
#[derive(Clone, Copy, Debug)]
pub struct PeerCred {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

/// The error of every handler: a status per code and a JSON body a person can act on.
pub struct HttpError(ApiError);

impl HttpError {
    fn new(code: ErrorCode, message: impl Into<String>, hint: Option<&str>) -> HttpError {
        HttpError(ApiError {
            code,
            message: message.into(),
            hint: hint.map(str::to_string),
        })
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            ErrorCode::UnknownApp | ErrorCode::UnknownJob => StatusCode::NOT_FOUND,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidConfig => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ErrorBody { error: self.0 })).into_response()
    }
}

impl From<SupervisorError> for HttpError {
    fn from(e: SupervisorError) -> HttpError {
        let message = e.to_string();
        HttpError::from_supervisor(&e, message)
    }
}

impl HttpError {
    /// The status and hint of a supervisor error, with `message`.
    fn from_supervisor(e: &SupervisorError, message: String) -> HttpError {
        let code = match e {
            SupervisorError::UnknownApp { .. } => ErrorCode::UnknownApp,
            SupervisorError::BadRequest(_) => ErrorCode::BadRequest,
            SupervisorError::Conflict(_) => ErrorCode::Conflict,
            SupervisorError::Failed(_)
            | SupervisorError::State(_)
            | SupervisorError::NotDone { .. } => ErrorCode::Failed,
        };
        let hint = matches!(e, SupervisorError::UnknownApp { .. })
            .then_some("`citrusctl status` lists the apps");
        HttpError::new(code, message, hint)
    }
}

impl From<DeployError> for HttpError {
    fn from(e: DeployError) -> HttpError {
        let code = match &e {
            DeployError::Supervisor(s) => return HttpError::from_supervisor(s, e.to_string()),
            DeployError::NotConfigured { .. } | DeployError::BadRequest(_) => ErrorCode::BadRequest,
            DeployError::Busy { .. } => ErrorCode::Conflict,
            DeployError::NoRelease(_) | DeployError::Journal(_) => ErrorCode::Failed,
        };
        HttpError::new(code, e.to_string(), None)
    }
}

impl From<ReloadError> for HttpError {
    fn from(e: ReloadError) -> HttpError {
        match e {
            ReloadError::Invalid(_) => {
                HttpError::new(ErrorCode::InvalidConfig, e.to_string(), None)
            }
            ReloadError::Supervisor(s) => s.into(),
        }
    }
}

type ApiResult<T> = Result<Json<T>, HttpError>;
type Shared = State<Arc<Daemon>>;

/// The router of the control socket.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/status", get(status))
        .route("/v1/apps", get(status).post(add_app))
        .route("/v1/apps/{name}", get(describe).delete(delete_app))
        .route("/v1/apps/{name}/logs", get(logs))
        .route("/v1/apps/{name}/deploy", post(deploy))
        .route("/v1/apps/{name}/deployments", get(deployments))
        .route("/v1/apps/{name}/deployments/{id}", get(deployment))
        .route("/v1/apps/{name}/rollback", post(rollback))
        .route("/v1/apps/{name}/{action}", post(action))
        .route("/v1/fleet", get(fleet))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{name}/run", post(run_job))
        .route("/v1/reload-config", post(reload_config))
        .route("/v1/save", post(save))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            HttpError::new(
                ErrorCode::BadRequest,
                "no such route",
                Some("the API lives under /v1/ (see the README)"),
            )
        })
        .layer(middleware::from_fn(log_mutations))
        .layer(middleware::from_fn(|req, next| {
            sys::serve::json_errors(req, next, control_error)
        }))
        .with_state(daemon)
}

/// The control API's shape for an error axum answered itself (a query, path or body it cannot
/// decode, a wrong method): `bad_request`, or `failed` for a 5xx; 422 (a body of the wrong
/// types) becomes 400, since 422 is `invalid_config` here.
fn control_error(status: StatusCode, message: String) -> Response {
    let (code, hint) = match status {
        s if s.is_server_error() => (ErrorCode::Failed, None),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::BadRequest,
            Some("the README lists each route with its method"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            ErrorCode::BadRequest,
            Some("send the body as JSON with `Content-Type: application/json`"),
        ),
        _ => (
            ErrorCode::BadRequest,
            Some("the README lists each route and its parameters"),
        ),
    };
    let status = match status {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        s => s,
    };
    let body = ErrorBody {
        error: ApiError {
            code,
            message,
            hint: hint.map(str::to_string),
        },
    };
    (status, Json(body)).into_response()
}

/// Connections the control socket serves at once (lowered to a quarter of the open-files limit,
/// see [`sys::connection_cap`]); more are accepted and closed at once.
pub const CONTROL_MAX_CONNECTIONS: usize = 256;
/// Connections the metrics listener serves at once.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// The bounds of the control socket and the metrics listener: a local client sends its whole
/// request at once, so a request head gets 5 s (also the keep-alive idle timeout).
pub fn control_limits(max_connections: usize) -> Limits {
    Limits {
        max_connections: sys::connection_cap(max_connections),
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
    }
}

/// Serves the control API on `listener` until the task is aborted.
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let limits = control_limits(CONTROL_MAX_CONNECTIONS);
    tracing::debug!(?limits, "control socket limits");
    let peer = |stream: &tokio::net::UnixStream, _| {
        let cred = stream.peer_cred().ok();
        PeerCred {
            uid: cred.map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        }
    };
    sys::serve::serve(
        listener,
        router(daemon),
        limits,
        peer,
        std::future::pending(),
    )
    .await;
}

/// Serves only `/metrics` on a TCP listener (`metrics_listen`).
pub async fn serve_metrics(listener: tokio::net::TcpListener, daemon: Arc<Daemon>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn(|req, next| {
            sys::serve::json_errors(req, next, control_error)
        }))
        .with_state(daemon);
    let limits = control_limits(METRICS_MAX_CONNECTIONS);
    sys::serve::serve(
        listener,
        app,
        limits,
        |_, addr| addr,
        std::future::pending(),
    )
    .await;
}

async fn log_mutations(req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::GET {
        let peer = req.extensions().get::<ConnectInfo<PeerCred>>().map(|c| c.0);
        tracing::info!(
            method = %req.method(),
            path = %req.uri().path(),
            uid = ?peer.and_then(|p| p.uid),
            pid = ?peer.and_then(|p| p.pid),
            "control request"
        );
    }
    next.run(req).await
}

async fn ping(State(d): Shared) -> Json<Ping> {
    Json(Ping {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        uptime_ms: d.started.elapsed().as_millis() as u64,
    })
}

#[derive(Deserialize)]
struct StatusQuery {
    app: Option<String>,
}

fn daemon_info(d: &Daemon) -> DaemonInfo {
    DaemonInfo {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: d.started.elapsed().as_millis() as u64,
    }
}

async fn status(State(d): Shared, Query(q): Query<StatusQuery>) -> ApiResult<Status> {
    let apps = d
        .deploys
        .with_releases(d.supervisor.status(q.app.as_deref())?);
    Ok(Json(Status {
        daemon: daemon_info(&d),
        apps,
    }))
}

fn reply(d: &Daemon, names: &[String]) -> ApiResult<ActionReply> {
    let mut apps = Vec::new();
    for n in names {
        apps.extend(d.supervisor.status(Some(n))?);
    }
    Ok(Json(ActionReply { apps }))
}

async fn action(
    State(d): Shared,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<ActionReply> {
    let target = Target::parse(&name);
    let sup = &d.supervisor;
    let names = match action.as_str() {
        "start" => sup.start(&target).await?,
        "stop" => sup.stop(&target).await?,
        "restart" => sup.restart(&target).await?,
        "reload" => sup.reload(&target).await?,
        other => {
            return Err(HttpError::new(
                ErrorCode::BadRequest,
                format!("unknown action {other:?}"),
                Some("use start, stop, restart or reload"),
            ))
        }
    };
    reply(&d, &names)
}

async fn add_app(State(d): Shared, body: Bytes) -> ApiResult<ActionReply> {
    let req: AddApp = decode_body(&body)?;
    let names = d.supervisor.add(req).await?;
    reply(&d, &names)
}

async fn delete_app(State(d): Shared, Path(name): Path<String>) -> ApiResult<ActionReply> {
    d.supervisor.delete(&name).await?;
    Ok(Json(ActionReply { apps: Vec::new() }))
}

/// Every request body: one JSON object, an empty body being `{}` (see
/// [`sys::serve::json_object`]).
fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    sys::serve::json_object(body).map_err(|message| {
        let hint = Some("the README lists each route and its body");
        HttpError::new(ErrorCode::BadRequest, message, hint)
    })
}

async fn deploy(
    State(d): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let req: DeployRequest = decode_body(&body)?;
    let deployment = d.deploys.start(&name, req.git_ref, None)?;
    Ok((StatusCode::ACCEPTED, Json(DeploymentReply { deployment })).into_response())
}

async fn deployments(State(d): Shared, Path(name): Path<String>) -> ApiResult<DeploymentsReply> {
    Ok(Json(DeploymentsReply {
        deployments: d.deploys.list(&name)?,
    }))
}

#[derive(Deserialize)]
struct FollowQuery {
    #[serde(default)]
    follow: bool,
}

/// One deployment; with `?follow=true`, its record as NDJSON at every phase change until it ends.
async fn deployment(
    State(d): Shared,
    Path((name, id)): Path<(String, String)>,
    Query(q): Query<FollowQuery>,
) -> Result<Response, HttpError> {
    let found = d.deploys.list(&name)?.into_iter().find(|x| x.id == id);
    let Some(found) = found else {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("{name} has no deployment {id:?}"),
            Some("`citrusctl deployments APP` lists them"),
        ));
    };
    if !q.follow {
        return Ok(Json(DeploymentReply { deployment: found }).into_response());
    }
    let Some(mut watch) = d.deploys.watch(&name, &id) else {
        // Already over: its one line.
        let line =
            serde_json::to_string(&DeploymentReply { deployment: found }).unwrap_or_default();
        return Ok((line + "\n").into_response());
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        loop {
            let now = watch.borrow_and_update().clone();
            let line = serde_json::to_string(&DeploymentReply {
                deployment: now.clone(),
            })
            .unwrap_or_default();
            if tx.send(Bytes::from(line + "\n")).await.is_err() || now.phase.is_final() {
                return;
            }
            if watch.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Body::from_stream(ChannelBody(rx)).into_response())
}

async fn rollback(
    State(d): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<DeploymentReply> {
    let req: RollbackRequest = decode_body(&body)?;
    let deployment = d.deploys.rollback(&name, req.to).await?;
    Ok(Json(DeploymentReply { deployment }))
}

async fn fleet(State(d): Shared) -> ApiResult<crate::control::FleetStatus> {
    match &d.agent {
        Some(agent) => Ok(Json(agent.status())),
        None => Err(HttpError::new(
            ErrorCode::Failed,
            "this citrusd has no fleet agent",
            Some("add a [fleet] section (engine_url, agent_id, key_file) to the config and restart citrusd"),
        )),
    }
}

async fn jobs(State(d): Shared) -> Json<JobsReply> {
    Json(JobsReply {
        jobs: d.jobs.list(),
    })
}

async fn run_job(State(d): Shared, Path(name): Path<String>) -> ApiResult<JobRun> {
    d.jobs.run_now(&name).await.map(Json).map_err(|e| match e {
        JobError::Unknown { .. } => HttpError::new(
            ErrorCode::UnknownJob,
            e.to_string(),
            Some("`citrusctl jobs` lists the jobs"),
        ),
        JobError::Busy { .. } => HttpError::new(ErrorCode::Conflict, e.to_string(), None),
    })
}

async fn save(State(d): Shared) -> ApiResult<serde_json::Value> {
    d.supervisor.save()?;
    Ok(Json(json!({ "saved": true })))
}

async fn reload_config(State(d): Shared, body: Bytes) -> ApiResult<ReloadPlan> {
    let req: ReloadRequest = decode_body(&body)?;
    Ok(Json(d.reload_config(req.dry_run).await?))
}

fn dur(d: Duration) -> serde_json::Value {
    json!(format_duration(d))
}

fn size(bytes: Option<u64>) -> serde_json::Value {
    json!(bytes.map(format_size))
}

fn config_view(app: &AppConfig) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    m.insert("command".into(), json!(app.command));
    m.insert("cwd".into(), json!(app.cwd));
    m.insert("instances".into(), json!(app.instances));
    m.insert("user".into(), json!(app.user));
    m.insert("restart".into(), json!(app.restart));
    m.insert("max_restarts".into(), json!(app.max_restarts));
    m.insert("min_uptime".into(), dur(app.min_uptime));
    m.insert("restart_delay".into(), dur(app.restart_delay));
    m.insert(
        "exp_backoff_restart_delay".into(),
        dur(app.exp_backoff_restart_delay),
    );
    m.insert("kill_signal".into(), json!(app.kill_signal.as_str()));
    m.insert("kill_timeout".into(), dur(app.kill_timeout));
    m.insert("max_memory_restart".into(), size(app.max_memory_restart));
    m.insert("autostart".into(), json!(app.autostart));
    m.insert("after".into(), json!(app.after));
    m.insert(
        "cron_restart".into(),
        json!(app.cron_restart.as_ref().map(|c| c.expr())),
    );
    m.insert("env_file".into(), json!(app.env_file));
    m.insert("inherit_env".into(), json!(app.inherit_env));
    m.insert("log_max_size".into(), size(app.log.max_size));
    m.insert("log_keep".into(), json!(app.log.keep));
    m.insert(
        "log_max_age".into(),
        app.log.max_age.map(dur).unwrap_or(serde_json::Value::Null),
    );
    m.insert("log_compress".into(), json!(app.log.compress));
    m.insert("log_timestamps".into(), json!(app.log.timestamps));
    let listen: Vec<String> = app.listen.iter().map(ToString::to_string).collect();
    m.insert("listen".into(), json!(listen));
    if let Some(r) = &app.ready {
        let check = match &r.check {
            crate::config::ReadyCheck::Probe(t) => t.describe(),
            crate::config::ReadyCheck::Notify { watchdog: None } => "notify".to_string(),
            crate::config::ReadyCheck::Notify { watchdog: Some(w) } => {
                format!("notify, watchdog {}", format_duration(*w))
            }
        };
        m.insert(
            "ready".into(),
            json!(format!(
                "{check} (timeout {}, every {})",
                format_duration(r.timeout),
                format_duration(r.interval)
            )),
        );
    }
    if let Some(h) = &app.health {
        m.insert(
            "health".into(),
            json!(format!(
                "{} every {}, timeout {}, {} failure(s)",
                h.target.describe(),
                format_duration(h.interval),
                format_duration(h.timeout),
                h.failures
            )),
        );
    }
    m
}

fn log_info(log: &std::sync::Mutex<LogFile>) -> LogInfo {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    LogInfo {
        path: log.path().to_path_buf(),
        bytes_written: log.bytes_written(),
        bytes_dropped: log.bytes_dropped(),
        last_error: log.last_error(),
    }
}

async fn describe(State(d): Shared, Path(name): Path<String>) -> ApiResult<Describe> {
    let (app, runtime, desired) = d.supervisor.app_config(&name)?;
    let statuses = d.supervisor.status(Some(&name))?;
    let views = d.supervisor.instances(Some(&name))?;
    let mut env: BTreeMap<String, String> = app
        .env
        .keys()
        .map(|k| (k.clone(), "*****".to_string()))
        .collect();
    if let Some(path) = &app.env_file {
        match crate::config::read_env_file(path) {
            Ok(vars) => env.extend(
                vars.into_iter()
                    .map(|(k, _)| (k, "***** (env_file)".to_string())),
            ),
            Err(e) => {
                env.insert("(env_file)".into(), e.to_string());
            }
        }
    }
    let instances = views
        .into_iter()
        .zip(statuses)
        .map(|(v, status)| InstanceDescribe {
            status,
            last_error: v.status.last_error.clone(),
            recent_exits: v.status.recent_exits.iter().cloned().collect(),
            out_log: log_info(&v.handle.logs().out),
            err_log: log_info(&v.handle.logs().err),
            status_text: v.status.status_text.clone(),
        })
        .collect();
    Ok(Json(Describe {
        name: name.clone(),
        source: if runtime { "runtime" } else { "config" }.into(),
        desired: match desired {
            crate::state::Desired::Running => "running",
            crate::state::Desired::Stopped => "stopped",
        }
        .into(),
        config: config_view(&app),
        env,
        instances,
    }))
}

/// A response body fed from a channel (for `logs -f`).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(Ok))
    }
}

/// The most lines `GET /v1/apps/{name}/logs` answers per file.
pub const MAX_LOG_LINES: usize = 100_000;

/// Whose lines a log file holds, for `json`.
struct LogSource {
    app: String,
    instance: u32,
    stream: &'static str,
    file: Arc<std::sync::Mutex<LogFile>>,
}

/// How the lines of a filtered or JSON read are written out.
struct LineOutput {
    filter: LineFilter,
    json: bool,
}

impl LineOutput {
    /// Appends `line` (without its newline) if the filter keeps it: as it is, or as a
    /// [`LogLine`]. `arrival`: the time of a followed line that has no stamp.
    fn line(
        &self,
        out: &mut Vec<u8>,
        source: &LogSource,
        line: &[u8],
        arrival: Option<SystemTime>,
    ) {
        let (stamp, text) = split_stamp(line);
        let time = stamp.or(arrival);
        if !self.filter.keeps(time, &String::from_utf8_lossy(text)) {
            return;
        }
        self.emit(out, source, line, time);
    }

    /// Appends `line` whatever the filter says.
    fn emit(&self, out: &mut Vec<u8>, source: &LogSource, line: &[u8], time: Option<SystemTime>) {
        if !self.json {
            out.extend_from_slice(line);
            out.push(b'\n');
            return;
        }
        let (stamp, text) = split_stamp(line);
        let record = LogLine {
            app: source.app.clone(),
            instance: source.instance,
            stream: source.stream.to_owned(),
            time: stamp.or(time).map(sys::time::rfc3339),
            line: String::from_utf8_lossy(text).into_owned(),
        };
        if serde_json::to_writer(&mut *out, &record).is_ok() {
            out.push(b'\n');
        }
    }
}

async fn logs(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, HttpError> {
    if q.lines > MAX_LOG_LINES {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("lines={} is too many: at most {MAX_LOG_LINES}", q.lines),
            Some("ask for fewer lines, or read the log file itself (`citrusctl describe` shows its path)"),
        ));
    }
    let since = q
        .since
        .as_deref()
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(SystemTime::from)
                .map_err(|e| {
                    HttpError::new(
                        ErrorCode::BadRequest,
                        format!("since={text:?} is not an RFC 3339 time: {e}"),
                        Some("e.g. since=2026-12-06T10:00:00Z"),
                    )
                })
        })
        .transpose()?;
    let filter = LineFilter::new(since, q.grep.as_deref())
        .map_err(|message| HttpError::new(ErrorCode::BadRequest, message, None))?;
    let plain = filter.is_empty() && !q.json;
    let output = Arc::new(LineOutput {
        filter,
        json: q.json,
    });
    let views = d.supervisor.instances(Some(&name))?;
    let mut files = Vec::new();
    for v in &views {
        let logs = v.handle.logs();
        let source = |stream, file: &Arc<std::sync::Mutex<LogFile>>| LogSource {
            app: v.name.clone(),
            instance: v.handle.index,
            stream,
            file: file.clone(),
        };
        if q.stream != LogStream::Err {
            files.push(source("out", &logs.out));
        }
        if q.stream != LogStream::Out {
            files.push(source("err", &logs.err));
        }
    }
    // Subscribe before reading the tails, so nothing written in between is lost.
    let receivers: Vec<broadcast::Receiver<Bytes>> = if q.follow {
        files
            .iter()
            .map(|f| f.file.lock().unwrap_or_else(|e| e.into_inner()).subscribe())
            .collect()
    } else {
        Vec::new()
    };
    // A filtered read scans up to MAX_SCAN_LINES back and keeps the last `lines` it matches.
    let scan = match output.filter.is_empty() {
        true => q.lines,
        false => MAX_SCAN_LINES,
    };
    let mut head = Vec::new();
    for f in &files {
        let path = f
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .path()
            .to_path_buf();
        let tail = tail_lines(&path, scan).map_err(|e| {
            HttpError::new(
                ErrorCode::Failed,
                format!("cannot read {}: {e}", path.display()),
                None,
            )
        })?;
        if files.len() > 1 && !q.json {
            head.extend_from_slice(format!("==> {} <==\n", path.display()).as_bytes());
        }
        if plain {
            head.extend_from_slice(&tail);
            continue;
        }
        // Each kept line rendered into `kept`, its range in `ranges`; the last `lines` go out.
        let (mut kept, mut ranges) = (Vec::new(), Vec::new());
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        for line in body.split(|&b| b == b'\n').filter(|_| !tail.is_empty()) {
            let before = kept.len();
            output.line(&mut kept, f, line, None);
            if kept.len() > before {
                ranges.push(before..kept.len());
            }
        }
        let skip = ranges.len().saturating_sub(q.lines);
        let from = ranges.get(skip).map_or(kept.len(), |range| range.start);
        head.extend_from_slice(&kept[from..]);
    }
    if !q.follow {
        return Ok(head.into_response());
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let _ = tx.try_send(Bytes::from(head));
    for (mut r, source) in receivers.into_iter().zip(files) {
        let tx = tx.clone();
        let output = output.clone();
        tokio::spawn(async move {
            let mut buffer = LineBuffer::default();
            loop {
                let chunk = match r.recv().await {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = format!("[citrus] follower too slow: {n} chunks skipped");
                        match plain {
                            true => Bytes::from(format!("\n{note}\n")),
                            false => {
                                let mut out = Vec::new();
                                output.emit(
                                    &mut out,
                                    &source,
                                    note.as_bytes(),
                                    Some(SystemTime::now()),
                                );
                                Bytes::from(out)
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let chunk = match plain {
                    true => chunk,
                    false => {
                        let mut out = Vec::new();
                        let now = SystemTime::now();
                        buffer.push(&chunk, |line| {
                            output.line(&mut out, &source, line, Some(now))
                        });
                        if out.is_empty() {
                            continue;
                        }
                        Bytes::from(out)
                    }
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    Ok(Body::from_stream(ChannelBody(rx)).into_response())
}

async fn metrics(State(d): Shared) -> Response {
    let mut out = String::new();
    let rows = d.supervisor.status(None).unwrap_or_default();
    let states = [
        "starting", "online", "stopping", "stopped", "backoff", "errored",
    ];
    out.push_str("# HELP citrus_app_state Current state of an app instance (1 for the state it is in).\n# TYPE citrus_app_state gauge\n");
    for r in &rows {
        for s in states {
            let v = u8::from(r.state.as_str() == s);
            let _ = writeln!(
                out,
                "citrus_app_state{{app=\"{}\",instance=\"{}\",state=\"{s}\"}} {v}",
                r.name, r.instance
            );
        }
    }
    type Gauge = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::control::AppStatus) -> f64,
    );
    let gauges: [Gauge; 5] = [
        (
            "citrus_app_restarts_total",
            "counter",
            "Restarts of the instance.",
            |r| f64::from(r.restarts),
        ),
        (
            "citrus_app_memory_restarts_total",
            "counter",
            "Restarts caused by max_memory_restart.",
            |r| f64::from(r.memory_restarts),
        ),
        (
            "citrus_app_memory_bytes",
            "gauge",
            "Resident memory of the instance's process tree.",
            |r| r.memory_bytes as f64,
        ),
        (
            "citrus_app_cpu_percent",
            "gauge",
            "CPU use of the process tree since the previous sample.",
            |r| r.cpu_percent,
        ),
        (
            "citrus_app_uptime_seconds",
            "gauge",
            "Time since the instance started.",
            |r| r.uptime_ms as f64 / 1000.0,
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in &rows {
            let _ = writeln!(
                out,
                "{name}{{app=\"{}\",instance=\"{}\"}} {}",
                r.name,
                r.instance,
                value(r)
            );
        }
    }
    out.push_str("# HELP citrus_job_last_success 1 when the job's last run was ok, 0 otherwise.\n# TYPE citrus_job_last_success gauge\n# HELP citrus_job_last_run_timestamp_seconds When the job's last run ended.\n# TYPE citrus_job_last_run_timestamp_seconds gauge\n");
    for job in d.jobs.list() {
        if let Some(run) = &job.last_run {
            let ok = u8::from(run.outcome == crate::control::JobOutcome::Ok);
            let _ = writeln!(out, "citrus_job_last_success{{job=\"{}\"}} {ok}", job.name);
            let _ = writeln!(
                out,
                "citrus_job_last_run_timestamp_seconds{{job=\"{}\"}} {}",
                job.name,
                run.ended_ms as f64 / 1000.0
            );
        }
    }
    if let Some(w) = d.events.stats() {
        let _ = writeln!(
            out,
            "# HELP citrus_webhook_events_total Events by what became of them.\n# TYPE citrus_webhook_events_total counter\ncitrus_webhook_events_total{{result=\"sent\"}} {}\ncitrus_webhook_events_total{{result=\"failed\"}} {}\ncitrus_webhook_events_total{{result=\"dropped\"}} {}",
            w.sent, w.failed, w.dropped
        );
    }
    if let Ok((rss, ticks)) = procfs::self_usage() {
        let _ = writeln!(
            out,
            "# HELP citrusd_resident_memory_bytes citrusd's own RSS.\n# TYPE citrusd_resident_memory_bytes gauge\ncitrusd_resident_memory_bytes {rss}\n# HELP citrusd_cpu_seconds_total citrusd's own CPU time.\n# TYPE citrusd_cpu_seconds_total counter\ncitrusd_cpu_seconds_total {}",
            ticks as f64 / procfs::clock_ticks() as f64
        );
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::header::{ALLOW, CONTENT_TYPE};
    use axum::http::{HeaderMap, Method};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::control::SPEC_STATUS;
    use crate::daemon::{HandedOver, Host};
    use crate::supervisor::testing;

    const APPS: &str = r#"
[apps.api]
command = ["sleep", "3600"]
env = { TOKEN = "secret" }

[apps.web]
command = ["sleep", "3600"]
autostart = false

[apps.broken]
command = ["/nonexistent/citrus-test-app"]

[jobs.flush]
schedule = "0 3 * * *"
kind = "save"
"#;

    /// The control API of a daemon assembled on a temp dir as `citrusd` assembles it (no app
    /// started), called through the router without a socket.
    struct Api {
        dir: tempfile::TempDir,
        daemon: Arc<Daemon>,
        _host: Host,
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Value,
    }

    impl Api {
        async fn new() -> Api {
            let dir = tempfile::tempdir().unwrap();
            let config = testing::config(dir.path(), APPS);
            let host = Host::for_tests(&config.daemon);
            let daemon = Daemon::assemble(config, None, &host, HandedOver::default())
                .await
                .expect("assembled");
            Api {
                dir,
                daemon,
                _host: host,
            }
        }

        /// `method path` with `body`; the body JSON when it parses, else a string.
        async fn call(&self, method: Method, path: &str, body: &str) -> Reply {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = router(self.daemon.clone()).oneshot(request).await.unwrap();
            let (status, headers) = (response.status(), response.headers().clone());
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Reply {
                status,
                headers,
                body,
            }
        }

        async fn get(&self, path: &str) -> Reply {
            self.call(Method::GET, path, "").await
        }

        async fn post(&self, path: &str, body: &str) -> Reply {
            self.call(Method::POST, path, body).await
        }

        /// The apps' names in display order (as "known apps" lists them).
        async fn names(&self) -> Vec<String> {
            let rows = self.get("/v1/status").await.body["apps"].clone();
            let rows = rows.as_array().unwrap().iter();
            rows.map(|r| r["name"].as_str().unwrap().to_string())
                .collect()
        }
    }

    /// The field names of a JSON object, sorted.
    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        k.sort();
        k
    }

    /// `{"error": {"code", "message", "hint"?}}` with these values.
    #[track_caller]
    fn assert_error(
        reply: &Reply,
        status: StatusCode,
        code: &str,
        message: &str,
        hint: Option<&str>,
    ) {
        assert_eq!(reply.status, status, "{}", reply.body);
        let mut want = json!({"error": {"code": code, "message": message}});
        if let Some(hint) = hint {
            want["error"]["hint"] = json!(hint);
        }
        assert_eq!(reply.body, want);
    }

    #[tokio::test]
    async fn ping_and_status_have_the_spec_fields() {
        let api = Api::new().await;
        let ping = api.get("/v1/ping").await;
        assert_eq!(ping.status, StatusCode::OK);
        assert_eq!(
            keys(&ping.body),
            ["pid", "protocol", "uptime_ms", "version"]
        );
        assert_eq!(ping.body["protocol"], PROTOCOL_VERSION);
        assert_eq!(ping.body["pid"], std::process::id());

        let spec: Value = serde_json::from_str(SPEC_STATUS).unwrap();
        for path in ["/v1/status", "/v1/apps"] {
            let status = api.get(path).await;
            assert_eq!(status.status, StatusCode::OK, "{path}");
            assert_eq!(keys(&status.body), keys(&spec));
            assert_eq!(keys(&status.body["daemon"]), keys(&spec["daemon"]));
            let rows = status.body["apps"].as_array().unwrap();
            assert_eq!(rows.len(), 3, "{path}");
            for row in rows {
                assert_eq!(keys(row), keys(&spec["apps"][0]), "{row}");
                assert_eq!(row["state"], "stopped");
                assert_eq!(
                    (&row["pid"], &row["last_exit"]),
                    (&Value::Null, &Value::Null)
                );
            }
        }
        let one = api.get("/v1/status?app=web").await;
        assert_eq!(one.status, StatusCode::OK);
        let rows = one.body["apps"].as_array().unwrap();
        assert_eq!((rows.len(), &rows[0]["name"]), (1, &json!("web")));
    }

    #[tokio::test]
    async fn an_unknown_app_or_job_is_404_with_what_is_known() {
        let api = Api::new().await;
        let message = format!(
            "no app named \"nope\"; known apps: {}",
            api.names().await.join(", ")
        );
        let hint = Some("`citrusctl status` lists the apps");
        for (method, path) in [
            (Method::GET, "/v1/status?app=nope"),
            (Method::GET, "/v1/apps/nope"),
            (Method::DELETE, "/v1/apps/nope"),
            (Method::POST, "/v1/apps/nope/stop"),
            (Method::POST, "/v1/apps/nope/restart"),
            (Method::GET, "/v1/apps/nope/logs"),
            (Method::GET, "/v1/apps/nope/deployments"),
        ] {
            let reply = api.call(method, path, "").await;
            assert_error(&reply, StatusCode::NOT_FOUND, "unknown_app", &message, hint);
        }
        let job = api.post("/v1/jobs/nope/run", "").await;
        assert_error(
            &job,
            StatusCode::NOT_FOUND,
            "unknown_job",
            "no job named \"nope\"; known jobs: flush",
            Some("`citrusctl jobs` lists the jobs"),
        );
    }

    #[tokio::test]
    async fn a_bad_body_query_action_or_route_is_400() {
        let api = Api::new().await;
        let body_hint = Some("the README lists each route and its body");
        let array = api.post("/v1/apps", "[1]").await;
        let message = "the body must be a JSON object, not an array";
        assert_error(
            &array,
            StatusCode::BAD_REQUEST,
            "bad_request",
            message,
            body_hint,
        );
        for (path, body) in [
            ("/v1/apps", "not json"),
            ("/v1/apps", r#"{"name": "x"}"#),
            ("/v1/apps", r#"{"name": "x", "command": "sleep 1"}"#),
            (
                "/v1/apps",
                r#"{"name": "bad name!", "command": ["sleep", "1"]}"#,
            ),
            ("/v1/reload-config", r#"{"dry_run": "yes"}"#),
            ("/v1/apps/api/rollback", r#"{"to": 7}"#),
        ] {
            let reply = api.post(path, body).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path} {body}");
            assert_eq!(reply.body["error"]["code"], "bad_request", "{path} {body}");
            assert!(reply.body["error"]["message"].is_string());
        }
        let action = api.post("/v1/apps/api/jump", "").await;
        let hint = Some("use start, stop, restart or reload");
        assert_error(
            &action,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unknown action \"jump\"",
            hint,
        );
        let lines = api.get("/v1/apps/api/logs?lines=100001").await;
        assert_eq!(lines.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            lines.body["error"]["message"],
            "lines=100001 is too many: at most 100000"
        );
        let since = api.get("/v1/apps/api/logs?since=yesterday").await;
        assert_eq!(since.status, StatusCode::BAD_REQUEST);
        let message = since.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("since=\"yesterday\" is not an RFC 3339 time"),
            "{message}"
        );
        let grep = api.get("/v1/apps/api/logs?grep=%28").await;
        assert_eq!(grep.status, StatusCode::BAD_REQUEST);
        let message = grep.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("is not a regular expression"), "{message}");
        let typed = api.get("/v1/apps/api/logs?lines=many").await;
        assert_eq!(typed.status, StatusCode::BAD_REQUEST);
        assert_eq!(typed.body["error"]["code"], "bad_request");
        let route = api.get("/v2/apps").await;
        let hint = Some("the API lives under /v1/ (see the README)");
        assert_error(
            &route,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "no such route",
            hint,
        );
        let method = api.call(Method::DELETE, "/v1/ping", "").await;
        assert_eq!(method.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(method.body["error"]["code"], "bad_request");
        assert!(method.headers.contains_key(ALLOW));
    }

    #[tokio::test]
    async fn actions_reply_with_the_instances_or_why_they_failed() {
        let api = Api::new().await;
        let spec: Value = serde_json::from_str(SPEC_STATUS).unwrap();
        let stop = api.post("/v1/apps/web/stop", "").await;
        assert_eq!(stop.status, StatusCode::OK, "{}", stop.body);
        assert_eq!(keys(&stop.body), ["apps"]);
        let rows = stop.body["apps"].as_array().unwrap();
        assert_eq!((rows.len(), &rows[0]["name"]), (1, &json!("web")));
        assert_eq!(keys(&rows[0]), keys(&spec["apps"][0]));
        assert_eq!(rows[0]["state"], "stopped");
        let all = api.post("/v1/apps/all/stop", "").await;
        assert_eq!(all.status, StatusCode::OK);
        assert_eq!(all.body["apps"].as_array().unwrap().len(), 3);

        let start = api.post("/v1/apps/broken/start", "").await;
        assert_eq!(start.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(keys(&start.body["error"]), ["code", "message"]);
        assert_eq!(start.body["error"]["code"], "failed");
        let message = start.body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("broken: ") && message.contains("/nonexistent/citrus-test-app"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn run_time_apps_are_added_refused_and_deleted() {
        let api = Api::new().await;
        let add = r#"{"name": "extra", "command": ["/nonexistent/citrus-test-app"]}"#;
        let added = api.post("/v1/apps", add).await;
        assert_eq!(added.status, StatusCode::INTERNAL_SERVER_ERROR);
        let message = added.body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("extra was added but did not start: "),
            "{message}"
        );
        assert!(
            message.ends_with("; `citrusctl delete extra` removes it"),
            "{message}"
        );
        let again = api.post("/v1/apps", add).await;
        let message = "an app named \"extra\" already exists; pick another --name or `citrusctl delete extra` first";
        assert_error(&again, StatusCode::CONFLICT, "conflict", message, None);
        let deleted = api.call(Method::DELETE, "/v1/apps/extra", "").await;
        assert_eq!(
            (deleted.status, deleted.body),
            (StatusCode::OK, json!({"apps": []}))
        );
        let config_app = api.call(Method::DELETE, "/v1/apps/api", "").await;
        let message = format!(
            "api is defined in {}; remove it there and run `citrusctl reload-config`",
            api.dir.path().join("citrusd.toml").display()
        );
        assert_error(
            &config_app,
            StatusCode::CONFLICT,
            "conflict",
            &message,
            None,
        );
    }

    #[tokio::test]
    async fn describe_and_logs_of_an_app() {
        let api = Api::new().await;
        let spec: Value = serde_json::from_str(SPEC_STATUS).unwrap();
        let describe = api.get("/v1/apps/api").await;
        assert_eq!(describe.status, StatusCode::OK);
        let body = &describe.body;
        let fields = ["config", "desired", "env", "instances", "name", "source"];
        assert_eq!(keys(body), fields);
        assert_eq!(
            (&body["source"], &body["desired"]),
            (&json!("config"), &json!("running"))
        );
        assert_eq!(body["env"], json!({"TOKEN": "*****"}));
        assert_eq!(body["config"]["command"], json!(["sleep", "3600"]));
        let instance = &body["instances"][0];
        let fields = [
            "err_log",
            "last_error",
            "out_log",
            "recent_exits",
            "status",
            "status_text",
        ];
        assert_eq!(keys(instance), fields);
        assert_eq!(keys(&instance["status"]), keys(&spec["apps"][0]));
        let fields = ["bytes_dropped", "bytes_written", "last_error", "path"];
        assert_eq!(keys(&instance["out_log"]), fields);

        let logs = api.get("/v1/apps/api/logs?lines=5").await;
        assert_eq!(logs.status, StatusCode::OK);
        let out = api.dir.path().join("logs/api-out.log");
        assert_eq!(
            logs.body,
            json!(format!(
                "==> {} <==\n==> {} <==\n",
                out.display(),
                out.with_file_name("api-err.log").display()
            ))
        );
    }

    #[tokio::test]
    async fn jobs_are_listed_and_run_on_demand() {
        let api = Api::new().await;
        let jobs = api.get("/v1/jobs").await;
        assert_eq!(jobs.status, StatusCode::OK);
        assert_eq!(keys(&jobs.body), ["jobs"]);
        let job = &jobs.body["jobs"][0];
        let fields = [
            "kind",
            "last_run",
            "name",
            "next_run_ms",
            "running_since_ms",
            "runs",
            "schedule",
            "timezone",
        ];
        assert_eq!(keys(job), fields);
        assert_eq!(
            (&job["name"], &job["kind"], &job["timezone"]),
            (&json!("flush"), &json!("save"), &json!("local"))
        );
        let run = api.post("/v1/jobs/flush/run", "").await;
        assert_eq!(run.status, StatusCode::OK);
        let fields = [
            "ended_ms",
            "level",
            "outcome",
            "output",
            "scheduled_ms",
            "started_ms",
            "summary",
            "trigger",
        ];
        assert_eq!(keys(&run.body), fields);
        assert_eq!(run.body["trigger"], "manual");
        assert_eq!(
            (&run.body["outcome"], &run.body["summary"]),
            (&json!("ok"), &json!("state saved"))
        );
        assert_eq!(
            api.get("/v1/jobs").await.body["jobs"][0]["last_run"],
            run.body
        );
    }

    #[tokio::test]
    async fn reload_config_plans_and_refuses_an_invalid_file() {
        let api = Api::new().await;
        let changed =
            APPS.replace(
                "[apps.broken]\ncommand = [\"/nonexistent/citrus-test-app\"]\n",
                "",
            )
            .replace(
                "autostart = false",
                "autostart = false\nkill_timeout = \"1s\"",
            ) + "\n[apps.new]\ncommand = [\"sleep\", \"1\"]\n";
        testing::config(api.dir.path(), &changed);
        let plan = api.post("/v1/reload-config", r#"{"dry_run": true}"#).await;
        assert_eq!(plan.status, StatusCode::OK, "{}", plan.body);
        let want = json!({"start": ["new"], "stop": ["broken"], "restart": ["web"],
                          "unchanged": ["api"], "warnings": [], "applied": false});
        assert_eq!(plan.body, want);
        std::fs::write(
            api.dir.path().join("citrusd.toml"),
            "[apps.x]\ncommand = 7\n",
        )
        .unwrap();
        let invalid = api.post("/v1/reload-config", "").await;
        assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(invalid.body["error"]["code"], "invalid_config");
        let message = invalid.body["error"]["message"].as_str().unwrap();
        assert!(
            message.ends_with("\nthe running config stays in force"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn save_fleet_deploy_and_metrics() {
        let api = Api::new().await;
        let save = api.post("/v1/save", "").await;
        assert_eq!(
            (save.status, save.body),
            (StatusCode::OK, json!({"saved": true}))
        );
        let fleet = api.get("/v1/fleet").await;
        let hint = "add a [fleet] section (engine_url, agent_id, key_file) to the config and restart citrusd";
        let message = "this citrusd has no fleet agent";
        assert_error(
            &fleet,
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            message,
            Some(hint),
        );
        let message =
            "app api has no [apps.api.deploy] section; add one (root and source) to deploy it";
        for reply in [
            api.post("/v1/apps/api/deploy", "{}").await,
            api.get("/v1/apps/api/deployments").await,
            api.post("/v1/apps/api/rollback", "").await,
        ] {
            assert_error(
                &reply,
                StatusCode::BAD_REQUEST,
                "bad_request",
                message,
                None,
            );
        }
        let metrics = api.get("/metrics").await;
        assert_eq!(metrics.status, StatusCode::OK);
        assert_eq!(metrics.headers[CONTENT_TYPE], "text/plain; version=0.0.4");
        let text = metrics.body.as_str().unwrap();
        assert!(
            text.contains("citrus_app_state{app=\"api\",instance=\"0\",state=\"stopped\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("citrus_app_restarts_total{app=\"web\",instance=\"0\"} 0\n"));
    }
}
