//! The admin HTTP API (SPEC 4) behind `Authorization: Bearer <admin token>`: agents, commands
//! and deployments through the fleet, servers (their provisioning is [`super::provision`]'s),
//! and agent enrolment (`POST /agent/enroll`). Errors answer [`ApiError`]'s JSON shape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{parse_limit, ApiError, ApiResult};
use super::provision::{self, check_name};
use super::store::{DeploymentReport, NewDeployment, OperationRow, OperationStatus};
use super::{auth, now, Engine};
use crate::fleet::protocol::{parse_engine, validate_git_ref, EngineMessage, ProtocolError};

/// The admin routes, behind the bearer-token check.
pub fn admin_routes(engine: Arc<Engine>) -> Router<Arc<Engine>> {
    Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/agents", get(list_agents).post(create_agent))
        .route("/admin/agents/{id}", get(get_agent))
        .route("/admin/agents/{id}/history", get(agent_history))
        .route("/admin/agents/{id}/operations", get(agent_operations))
        .route("/admin/agents/{id}/commands", post(command))
        .route("/admin/agents/{id}/deploy", post(deploy))
        .route("/admin/agents/{id}/deployments", get(agent_deployments))
        .route("/admin/agents/{id}/rotate-key", post(rotate_key))
        .route("/admin/operations/{id}", get(get_operation))
        .route("/admin/servers", get(list_servers))
        .route("/admin/servers/deploy-with-agent", post(deploy_server))
        .route("/admin/servers/{id}", get(get_server).delete(delete_server))
        .merge(super::live::http::routes())
        .merge(super::releases::admin_routes())
        .route_layer(middleware::from_fn_with_state(engine, require_admin))
}

/// Checks `Authorization: Bearer <admin token>` in constant time (failures count against the
/// caller's address), or else a panel session ([`super::panel::session::authorize_api`]).
async fn require_admin(
    State(engine): State<Arc<Engine>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let ip = peer.ip();
    if let Some(wait) = engine.limiter.refused(ip) {
        return ApiError::too_many(wait).into_response();
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Without a bearer token, the web panel's session cookie (and its CSRF token) may do.
    if given.is_none() {
        let (method, headers) = (request.method(), request.headers());
        if let Some(verdict) = super::panel::session::authorize_api(&engine, method, headers).await
        {
            return match verdict {
                Ok(()) => next.run(request).await,
                Err(refusal) => refusal.into_response(),
            };
        }
    }
    let refusal = match given {
        None => "missing `Authorization: Bearer <admin token>` header (the token is in the engine's admin_token_file or CITRUS_ADMIN_TOKEN)",
        Some(token) if auth::matches(token.trim(), &engine.admin_token_hash) => {
            return next.run(request).await
        }
        Some(_) => "wrong admin token",
    };
    match engine.limiter.failed(ip) {
        Some(wait) => ApiError::too_many(wait).into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, refusal).into_response(),
    }
}

/// A JSON object body (an empty one is `{}`), with a clear message when it is not one (see
/// [`crate::sys::serve::json_object`]).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        crate::sys::serve::json_object(&bytes)
            .map(Body)
            .map_err(ApiError::bad_request)
    }
}

async fn stats(State(engine): State<Arc<Engine>>) -> ApiResult {
    let (total, online) = engine.store.agent_counts().await?;
    let hub = &engine.hub;
    Ok(Json(json!({
        "agents": {"total": total, "online": online, "connected": hub.connected()},
        "statusUpdates": hub.status_stored.load(std::sync::atomic::Ordering::Relaxed),
        "statusReceived": hub.status_received.load(std::sync::atomic::Ordering::Relaxed),
        "statusThinned": hub.status_thinned.load(std::sync::atomic::Ordering::Relaxed),
        "eventsStored": engine.live.events_stored.load(std::sync::atomic::Ordering::Relaxed),
        "eventsDropped": engine.live.events_dropped.load(std::sync::atomic::Ordering::Relaxed),
        "live": engine.live.stats(),
    }))
    .into_response())
}

async fn list_agents(State(engine): State<Arc<Engine>>) -> ApiResult {
    let agents = engine.store.list_agents().await?;
    Ok(Json(json!({ "agents": agents })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: Option<String>,
}

/// `POST /admin/agents {name?}`: an agent for a host not provisioned here; answers its
/// single-use enrolment token (put it in that host's `[fleet] enroll_token`).
async fn create_agent(State(engine): State<Arc<Engine>>, Body(body): Body<NameBody>) -> ApiResult {
    let id = auth::new_uuid();
    let name = body.name.unwrap_or_else(|| format!("agent-{}", &id[..8]));
    check_name(&name)?;
    let (token, expires_at) = engine.new_enroll_token(&id, &name).await?;
    let agent = engine.store.get_agent(&id).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"success": true, "agent": agent, "enrollToken": token, "expiresAt": expires_at}),
        ),
    )
        .into_response())
}

async fn get_agent(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    let agent = engine
        .store
        .get_agent(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent", &id))?;
    let (status, status_at) = match engine.store.latest_status(&id).await? {
        Some((status, at)) => (status, Some(at)),
        None => (Value::Null, None),
    };
    let server = engine.store.server_of_agent(&id).await?;
    Ok(
        Json(json!({"agent": agent, "status": status, "statusAt": status_at, "server": server}))
            .into_response(),
    )
}

#[derive(Deserialize)]
struct HistoryQuery {
    since: Option<i64>,
    limit: Option<i64>,
    /// `hour`, `day` or `week`: downsampled (see [`super::live::history`]).
    range: Option<String>,
}

async fn agent_history(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    engine
        .store
        .get_agent(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent", &id))?;
    if let Some(range) = q.range.as_deref() {
        use super::live::history;
        if q.since.is_some() || q.limit.is_some() {
            return Err(ApiError::bad_request(
                "give either `range` (hour, day, week) or `since`/`limit`, not both",
            ));
        }
        let body = history::downsampled(&engine, &id, history::Range::parse(range)?).await?;
        return Ok(Json(body).into_response());
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let points = engine
        .store
        .history(&id, q.since.unwrap_or(0), limit)
        .await?;
    Ok(Json(json!({ "points": points })).into_response())
}

async fn agent_operations(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    let operations = engine.store.list_operations(Some(&id), 100).await?;
    Ok(Json(json!({ "operations": operations })).into_response())
}

/// `POST /admin/agents/{id}/commands {type, …}`: validates the command exactly as the agent
/// will (a hostile domain never leaves the engine), records the operation and sends it.
async fn command(
    State(engine): State<Arc<Engine>>,
    Path(agent): Path<String>,
    Body(body): Body<Map<String, Value>>,
) -> ApiResult {
    send_command(&engine, &agent, body).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    app: String,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

/// `POST /admin/agents/{id}/deploy {app, ref?}`: `deploy_app` through the path of
/// `POST /admin/agents/{id}/commands`, so the answer, the checks and the records are the same.
async fn deploy(
    State(engine): State<Arc<Engine>>,
    Path(agent): Path<String>,
    Body(body): Body<DeployBody>,
) -> ApiResult {
    let mut command = Map::new();
    command.insert("type".into(), Value::String("deploy_app".into()));
    command.insert("app".into(), Value::String(body.app));
    if let Some(git_ref) = body.git_ref {
        command.insert("ref".into(), Value::String(git_ref));
    }
    send_command(&engine, &agent, command).await
}

/// Checks what the wire format leaves open in a command: a `deploy_app`'s app name and ref
/// (the ref reaches git: `-x` would be an option).
fn check_command(message: &EngineMessage) -> Result<(), ApiError> {
    if let EngineMessage::DeployApp { app, git_ref, .. } = message {
        crate::config::validate_app_name(app).map_err(ApiError::bad_request)?;
        if let Some(git_ref) = git_ref {
            validate_git_ref(git_ref).map_err(ApiError::bad_request)?;
        }
    }
    Ok(())
}

/// Validates a command (`{type, …}` without `id`), records its operation and sends it; 202
/// `{operation}`.
async fn send_command(engine: &Engine, agent: &str, body: Map<String, Value>) -> ApiResult {
    let kind = match body.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => return Err(ApiError::bad_request("field `type` must be a string")),
        None => {
            return Err(ApiError::bad_request(format!(
                "missing field `type`; one of: {}",
                EngineMessage::TYPES.join(", ")
            )))
        }
    };
    if kind == "rotate_key" {
        return Err(ApiError::bad_request(format!(
            "rotate keys with POST /admin/agents/{agent}/rotate-key: the engine makes the key"
        )));
    }
    if body.contains_key("id") {
        return Err(ApiError::bad_request(
            "do not set `id`: the engine gives each operation its id",
        ));
    }
    let id = auth::new_uuid();
    let mut object = body;
    if let (true, Some(sha256)) = (kind == "update_agent", object.get_mut("sha256")) {
        super::releases::check_update(engine, sha256).await?;
    }
    object.insert("id".into(), Value::String(id.clone()));
    let message = parse_engine(&Value::Object(object).to_string()).map_err(|e| match e {
        ProtocolError::UnknownType { ty, .. } => ApiError::bad_request(format!(
            "unknown command type {ty:?}; one of: {}",
            EngineMessage::TYPES
                .iter()
                .filter(|t| **t != "rotate_key")
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )),
        other => ApiError::bad_request(other.to_string()),
    })?;
    check_command(&message)?;
    let record = serde_json::to_value(&message).expect("EngineMessage serialises to JSON");
    let operation = dispatch(engine, agent, &id, &kind, &record, &message).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "operation": operation })),
    )
        .into_response())
}

/// Deployments listed when `?limit=` is not given, and the most that may be asked for.
const DEPLOYMENTS_DEFAULT: usize = 50;
const DEPLOYMENTS_MAX: usize = 500;

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<String>,
}

/// `GET /admin/agents/{id}/deployments[?limit=N]`: the agent's deployments, newest first.
async fn agent_deployments(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    let limit = parse_limit(q.limit.as_deref(), DEPLOYMENTS_DEFAULT, DEPLOYMENTS_MAX)?;
    engine
        .store
        .get_agent(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent", &id))?;
    let deployments = engine.store.list_deployments(&id, limit as i64).await?;
    Ok(Json(json!({ "deployments": deployments })).into_response())
}

/// `POST /admin/agents/{id}/rotate-key`: two-phase rotation (SPEC 3). The new key is sent to
/// the agent only; the old key works until the agent acknowledges.
async fn rotate_key(State(engine): State<Arc<Engine>>, Path(agent): Path<String>) -> ApiResult {
    let key = auth::new_key();
    let id = auth::new_uuid();
    if engine.store.get_agent(&agent).await?.is_none() {
        return Err(ApiError::not_found("agent", &agent));
    }
    if !engine.hub.is_connected(&agent) {
        return Err(offline(&agent));
    }
    engine
        .store
        .set_pending_key(&agent, &auth::hash(&key))
        .await?;
    let message = EngineMessage::RotateKey {
        id: id.clone(),
        new_key: key,
    };
    // What is recorded leaves the key out.
    let record = json!({"type": "rotate_key", "id": id});
    let operation = dispatch(&engine, &agent, &id, "rotate_key", &record, &message).await;
    if operation.is_err() {
        engine.store.clear_pending_key(&agent).await?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "operation": operation? })),
    )
        .into_response())
}

/// Records operation `id` (and, for `deploy_app`, its deployment) and sends `message` to
/// the agent. An unknown agent is a 404; an offline one gets nothing (409) and nothing is
/// recorded.
async fn dispatch(
    engine: &Engine,
    agent: &str,
    id: &str,
    kind: &str,
    record: &Value,
    message: &EngineMessage,
) -> Result<OperationRow, ApiError> {
    if engine.store.get_agent(agent).await?.is_none() {
        return Err(ApiError::not_found("agent", agent));
    }
    if !engine.hub.is_connected(agent) {
        return Err(offline(agent));
    }
    let deployment = match message {
        EngineMessage::DeployApp { app, git_ref, .. } => Some(NewDeployment {
            app,
            git_ref: git_ref.as_deref(),
        }),
        _ => None,
    };
    engine
        .store
        .insert_operation(id, agent, kind, record, deployment, now())
        .await?;
    if engine.hub.send(agent, message).is_err() {
        let error = "the agent disconnected before the command was sent";
        engine
            .store
            .report_operation(id, agent, OperationStatus::Failed, None, Some(error), now())
            .await?;
        if deployment.is_some() {
            engine
                .store
                .report_deployment(id, agent, &DeploymentReport::failed(error), now())
                .await?;
        }
    }
    tracing::info!(agent, operation = id, kind, "command sent");
    let operation =
        engine.store.get_operation(id).await?.ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "operation vanished")
        })?;
    engine.live.operation(&operation);
    Ok(operation)
}

fn offline(agent: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "agent {agent} is offline: commands go only to connected agents; see GET /admin/agents"
        ),
    )
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

/// `GET /admin/operations/{id}[?wait=5s]`: with `wait`, answers once the operation is final or
/// the wait (at most 60 s) is over.
async fn get_operation(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult {
    let wait = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(text) => crate::config::parse_duration(text)
            .map_err(|e| ApiError::bad_request(format!("invalid `wait`: {e}")))?
            .min(Duration::from_secs(60)),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let notify = engine.hub.waiter(&id);
    let result: Result<OperationRow, ApiError> = async {
        loop {
            let changed = notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let operation: OperationRow = engine
                .store
                .get_operation(&id)
                .await?
                .ok_or_else(|| ApiError::not_found("operation", &id))?;
            if operation.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(operation);
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
    .await;
    engine.hub.release_waiter(&id, notify);
    let operation = result?;
    Ok(Json(json!({ "operation": operation })).into_response())
}

async fn list_servers(State(engine): State<Arc<Engine>>) -> ApiResult {
    let servers = engine.store.list_servers().await?;
    Ok(Json(json!({ "servers": servers })).into_response())
}

async fn get_server(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    let server = engine
        .store
        .get_server(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("server", &id))?;
    let agent = engine.store.get_agent(&server.agent_id).await?;
    Ok(Json(json!({ "server": server, "agent": agent })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployServerBody {
    name: Option<String>,
    /// The release (SHA-256) cloud-init installs, instead of the default.
    release: Option<String>,
}

/// `POST /admin/servers/deploy-with-agent {name?, release?}` → 202 with the server in
/// `creating` (see [`provision::deploy_with_agent`]).
async fn deploy_server(
    State(engine): State<Arc<Engine>>,
    Body(body): Body<DeployServerBody>,
) -> ApiResult {
    let server = provision::deploy_with_agent(&engine, body.name, body.release.as_deref()).await?;
    let (id, name) = (&server.id, &server.name);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "success": true,
            "message": format!("server {name} is being created; follow GET /admin/servers/{id}"),
            "server": {"id": id, "name": name, "status": server.status, "agent": {"id": server.agent_id}},
        })),
    )
        .into_response())
}

/// `DELETE /admin/servers/{id}`: destroys the droplet, then forgets the server and its agent.
async fn delete_server(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> ApiResult {
    let server = provision::delete_server(&engine, &id).await?;
    Ok(Json(json!({
        "success": true,
        "message": match server.droplet_id {
            Some(d) => format!("server {} deleted; droplet {d} destroyed", server.name),
            None => format!("server {} deleted (it had no droplet)", server.name),
        },
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EnrollBody {
    agent_id: String,
    token: String,
}

/// `POST /agent/enroll {agentId, token}` → `{key}`: exchanges a single-use enrolment token for
/// the agent key, once. A refusal is also noted on the agent's server, so the admin sees why.
pub(super) async fn enroll(
    State(engine): State<Arc<Engine>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(body): Body<EnrollBody>,
) -> ApiResult {
    let ip = peer.ip();
    if let Some(wait) = engine.limiter.refused(ip) {
        return Err(ApiError::too_many(wait));
    }
    let at = now();
    let refuse = |status: StatusCode, why: String| {
        refuse_enrolment(&engine, ip, &body.agent_id, at, status, why)
    };
    let Some(state) = engine.store.enroll_state(&body.agent_id).await? else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unknown agent id or wrong token".into(),
        )
        .await;
    };
    let Some(token_hash) = state.token_hash.as_deref() else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this agent has no enrolment token".into(),
        )
        .await;
    };
    if !auth::matches(&body.token, token_hash) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unknown agent id or wrong token".into(),
        )
        .await;
    }
    if let Some(used) = state.enrolled_at {
        let why = format!(
            "the token was already used (at {}); it is single-use",
            iso(used)
        );
        return refuse(StatusCode::FORBIDDEN, why).await;
    }
    if let Some(expires) = state.expires_at.filter(|&e| e <= at) {
        let why = format!(
            "the token expired at {}; deploy a new server or create a new agent",
            iso(expires)
        );
        return refuse(StatusCode::FORBIDDEN, why).await;
    }
    let key = auth::new_key();
    if !engine
        .store
        .complete_enrolment(&body.agent_id, token_hash, &auth::hash(&key), at)
        .await?
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "the token was already used; it is single-use".into(),
        )
        .await;
    }
    engine.live.enrolled(&body.agent_id);
    tracing::info!(agent = %body.agent_id, %ip, "agent enrolled");
    Ok(Json(json!({ "key": key })).into_response())
}

async fn refuse_enrolment(
    engine: &Engine,
    ip: std::net::IpAddr,
    agent: &str,
    at: i64,
    status: StatusCode,
    why: String,
) -> ApiResult {
    let blocked = engine.limiter.failed(ip);
    tracing::warn!(agent, %ip, "enrolment refused: {why}");
    if let Ok(Some(server)) = engine.store.server_of_agent(agent).await {
        let note = format!("enrolment refused from {ip}: {why}");
        match engine.store.note_server_error(&server.id, &note, at).await {
            Ok(()) => engine.live.server_changed(&engine.store, &server.id).await,
            Err(e) => tracing::error!("{e}"),
        }
    }
    match blocked {
        Some(wait) => Err(ApiError::too_many(wait)),
        None => Err(ApiError::new(status, format!("enrolment refused: {why}"))),
    }
}

/// A Unix-ms time as RFC 3339 UTC.
fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests;
