//! The control API router (axum on the Unix socket): `/v1/...` JSON routes and `/metrics`.
//! Every mutating request is logged with the caller's uid (SO_PEERCRED).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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
    JobRun, JobsReply, LogInfo, LogStream, LogsQuery, Ping, ReloadPlan, ReloadRequest, Status,
    PROTOCOL_VERSION,
};
use crate::control::{DeployRequest, DeploymentReply, DeploymentsReply, RollbackRequest};
use crate::deploy::DeployError;
use crate::health::jobs::JobError;
use crate::supervisor::logs::{tail_lines, LogFile};
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
    let views = d.supervisor.instances(Some(&name))?;
    let mut files = Vec::new();
    for v in &views {
        let logs = v.handle.logs();
        if q.stream != LogStream::Err {
            files.push(logs.out.clone());
        }
        if q.stream != LogStream::Out {
            files.push(logs.err.clone());
        }
    }
    // Subscribe before reading the tails, so nothing written in between is lost.
    let receivers: Vec<broadcast::Receiver<Bytes>> = if q.follow {
        files
            .iter()
            .map(|f| f.lock().unwrap_or_else(|e| e.into_inner()).subscribe())
            .collect()
    } else {
        Vec::new()
    };
    let mut head = Vec::new();
    for f in &files {
        let path = f
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .path()
            .to_path_buf();
        let tail = tail_lines(&path, q.lines).map_err(|e| {
            HttpError::new(
                ErrorCode::Failed,
                format!("cannot read {}: {e}", path.display()),
                None,
            )
        })?;
        if files.len() > 1 {
            head.extend_from_slice(format!("==> {} <==\n", path.display()).as_bytes());
        }
        head.extend_from_slice(&tail);
    }
    if !q.follow {
        return Ok(head.into_response());
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let _ = tx.try_send(Bytes::from(head));
    for mut r in receivers {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let chunk = match r.recv().await {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(n)) => Bytes::from(format!(
                        "\n[citrus] follower too slow: {n} chunks skipped\n"
                    )),
                    Err(broadcast::error::RecvError::Closed) => return,
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
