//! The agents' WebSocket endpoint (`GET /agent`, SPEC 3): authentication before the upgrade,
//! one task per connection, online/offline, status updates batched into the store, operation
//! reports (deployment progress into its own table too), and commands sent to connected agents.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};

use super::error::ApiError;
use super::live::events;
use super::store::{AgentWrite, DeploymentReport, HistoryPoint, StatusRecord, StoreError};
use super::{auth, now, Engine};
use crate::fleet::protocol::{
    AgentMessage, AppState, EngineMessage, HostStatus, OperationStatus, CLIENT_TYPE_AGENT,
    HEADER_AGENT_ID, HEADER_AGENT_KEY, HEADER_CLIENT_TYPE, HEADER_PROTOCOL, PROTOCOL_VERSION,
};

/// Close code for "going away" (engine shutting down, connection replaced).
const CLOSE_AWAY: u16 = 1001;
/// Close code for "policy violation" (silent agent).
const CLOSE_POLICY: u16 = 1008;
/// How long a peer has to answer the engine's Close frame before the connection is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connected agents and the waiters on operations.
pub struct Hub {
    conns: Mutex<HashMap<String, Conn>>,
    next_conn: AtomicU64,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Status updates received (not yet necessarily stored).
    pub status_received: AtomicU64,
    /// Status updates stored.
    pub status_stored: AtomicU64,
    /// Status updates kept out of the history: they came less than half a `status_interval`
    /// after the agent's previous history point (only its latest status was replaced).
    pub status_thinned: AtomicU64,
}

struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Message>,
}

/// Why a command was not sent.
#[derive(Debug, thiserror::Error)]
#[error("agent {0} is not connected")]
pub struct NotConnected(pub String);

impl Default for Hub {
    fn default() -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            waiters: Mutex::new(HashMap::new()),
            status_received: AtomicU64::new(0),
            status_stored: AtomicU64::new(0),
            status_thinned: AtomicU64::new(0),
        }
    }
}

impl Hub {
    /// Whether the agent has a connection now.
    pub fn is_connected(&self, agent: &str) -> bool {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(agent)
    }

    /// Number of open connections.
    pub fn connected(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sends a command to the agent's connection.
    pub fn send(&self, agent: &str, message: &EngineMessage) -> Result<(), NotConnected> {
        let text = serde_json::to_string(message).expect("EngineMessage serialises to JSON");
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let conn = conns
            .get(agent)
            .ok_or_else(|| NotConnected(agent.to_owned()))?;
        conn.tx
            .send(Message::Text(text.into()))
            .map_err(|_| NotConnected(agent.to_owned()))
    }

    /// Closes the agent's connection, if any, with `code` and `reason`.
    pub fn disconnect(&self, agent: &str, code: u16, reason: &str) {
        if let Some(conn) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
        {
            let _ = conn.tx.send(close(code, reason));
        }
    }

    /// Closes every connection (engine shutdown).
    pub fn close_all(&self, reason: &str) {
        for conn in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = conn.tx.send(close(CLOSE_AWAY, reason));
        }
    }

    pub(super) fn register(&self, agent: &str, tx: mpsc::UnboundedSender<Message>) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let old = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(agent.to_owned(), Conn { id, tx });
        if let Some(old) = old {
            let _ = old.tx.send(close(
                CLOSE_AWAY,
                "replaced by a newer connection of this agent",
            ));
        }
        id
    }

    /// Removes the connection if it is still the agent's current one; `true` if it was.
    fn unregister(&self, agent: &str, conn: u64) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get(agent) {
            Some(current) if current.id == conn => {
                conns.remove(agent);
                true
            }
            _ => false,
        }
    }

    /// The notifier of changes to operation `id`; drop it with [`Hub::release_waiter`].
    pub fn waiter(&self, id: &str) -> Arc<Notify> {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Forgets the notifier of `id` when nobody else holds it.
    pub fn release_waiter(&self, id: &str, notify: Arc<Notify>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        drop(notify);
        if waiters.get(id).is_some_and(|n| Arc::strong_count(n) == 1) {
            waiters.remove(id);
        }
    }

    /// Wakes whoever waits on operation `id`.
    pub fn operation_changed(&self, id: &str) {
        if let Some(notify) = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            notify.notify_waiters();
        }
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `GET /agent`: checks the agent's headers, then upgrades to a WebSocket.
pub async fn upgrade(
    State(engine): State<Arc<Engine>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let agent = match authenticate(&engine, peer, &headers).await {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("GET /agent is a WebSocket endpoint: {rejection}"),
            )
            .into_response()
        }
    };
    let max = engine.config.max_frame;
    ws.max_frame_size(max)
        .max_message_size(max)
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve(engine, agent, socket))
}

/// The agent id, if the headers carry a known id and its key (or the pending key of a rotation,
/// which then becomes its key).
async fn authenticate(
    engine: &Engine,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let ip = peer.ip();
    if let Some(wait) = engine.limiter.refused(ip) {
        return Err(ApiError::too_many(wait));
    }
    // A failure counts against the address; past the limit a wrong credential gets 429.
    let fail = |error: ApiError| match engine.limiter.failed(ip) {
        Some(wait) => ApiError::too_many(wait),
        None => error,
    };
    if header(headers, HEADER_CLIENT_TYPE) != Some(CLIENT_TYPE_AGENT) {
        return Err(fail(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("missing or wrong {HEADER_CLIENT_TYPE} header: agents send `{HEADER_CLIENT_TYPE}: {CLIENT_TYPE_AGENT}`"),
        )));
    }
    match header(headers, HEADER_PROTOCOL) {
        None => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("missing {HEADER_PROTOCOL} header: agents send `{HEADER_PROTOCOL}: {PROTOCOL_VERSION}`"),
            ))
        }
        Some(version) if version.trim() != PROTOCOL_VERSION.to_string() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unsupported protocol version {version:?}: this engine speaks {PROTOCOL_VERSION}; update citrusd"),
            ));
        }
        Some(_) => {}
    }
    let (Some(id), Some(key)) = (
        header(headers, HEADER_AGENT_ID),
        header(headers, HEADER_AGENT_KEY),
    ) else {
        return Err(fail(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("missing {HEADER_AGENT_ID} or {HEADER_AGENT_KEY} header"),
        )));
    };
    let keys = engine
        .store
        .agent_keys(id)
        .await
        .map_err(ApiError::internal)?;
    let refused = || {
        tracing::warn!(agent = id, %ip, "agent authentication refused");
        fail(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown agent id or wrong agent key (enrol the agent, or check its key_file)",
        ))
    };
    let Some(keys) = keys else {
        return Err(refused());
    };
    let current = keys
        .key_hash
        .as_deref()
        .is_some_and(|h| auth::matches(key, h));
    let pending = !current
        && keys
            .pending_key_hash
            .as_deref()
            .is_some_and(|h| auth::matches(key, h));
    if pending {
        // The agent has the new key: its acknowledgement was lost, the rotation is done.
        engine
            .store
            .promote_pending_key(id)
            .await
            .map_err(ApiError::internal)?;
        tracing::info!(
            agent = id,
            "key rotation completed (agent connected with the new key)"
        );
    }
    if !(current || pending) {
        return Err(refused());
    }
    Ok(id.to_owned())
}

/// One agent connection, until it closes.
async fn serve(engine: Arc<Engine>, agent: String, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let conn = engine.hub.register(&agent, tx.clone());
    let at = now();
    engine.live.online(&agent, conn, at);
    engine
        .write(AgentWrite::Online {
            agent_id: agent.clone(),
            connection: conn,
            at,
        })
        .await;
    super::provision::agent_connected(&engine, &agent).await;
    tracing::info!(agent = %agent, "agent connected");

    // Ends once the engine sent a Close (or could not write): `writing` turns false.
    let (writing_tx, mut writing) = tokio::sync::watch::channel(true);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = writing_tx.send(false);
        let _ = sink.close().await;
    });

    let mut gate = StatusGate::new(engine.config.status_interval / 2);
    // An agent sends a status every interval: three missed ones and it is offline. Once the
    // engine has sent a Close (replaced connection, disconnect), the peer has CLOSE_TIMEOUT to
    // answer it.
    let silence = engine.config.status_interval.saturating_mul(3);
    let mut close_deadline: Option<tokio::time::Instant> = None;
    let reason = loop {
        let wait = match close_deadline {
            Some(at) => tokio::time::sleep_until(at),
            None => tokio::time::sleep(silence),
        };
        let next = tokio::select! {
            next = stream.next() => Some(next),
            () = async { let _ = writing.wait_for(|w| !*w).await; }, if close_deadline.is_none() => {
                close_deadline = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
                continue;
            }
            () = wait => None,
        };
        let frame = match next {
            None if close_deadline.is_some() => {
                break format!(
                    "no answer to the Close frame within {}",
                    crate::config::format_duration(CLOSE_TIMEOUT)
                );
            }
            None => {
                let _ = tx.send(close(CLOSE_POLICY, "no status for 3 intervals"));
                break format!("silent for {}", crate::config::format_duration(silence));
            }
            Some(None) => break "connection closed".to_owned(),
            Some(Some(Err(e))) => break format!("connection error: {e}"),
            Some(Some(Ok(frame))) => frame,
        };
        match frame {
            Message::Text(text) => {
                handle_frame(&engine, &agent, conn, &mut gate, text.as_str()).await
            }
            Message::Binary(_) => {
                tracing::warn!(agent = %agent, "binary frame ignored: messages are JSON text frames")
            }
            Message::Close(_) => break "closed by the agent".to_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
        }
    };
    drop(tx);
    if gate.thinned > 0 {
        tracing::info!(
            agent = %agent,
            thinned = gate.thinned,
            "status updates kept out of the history on this connection (sent too often)"
        );
    }
    if engine.hub.unregister(&agent, conn) {
        tracing::info!(agent = %agent, "agent offline: {reason}");
    }
    let at = now();
    engine.live.offline(&agent, conn, at);
    engine
        .write(AgentWrite::Offline {
            agent_id: agent.clone(),
            connection: conn,
            at,
        })
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// The rate bound on one connection's history points: at most one per `every` (half the
/// `status_interval`). Statuses in between still replace the agent's latest status (the store
/// coalesces those of one batch into one row update), are counted, and never end the
/// connection: a legitimate agent sending early (after a reconnect, an operation) loses nothing
/// but a history point.
struct StatusGate {
    every: Duration,
    last_point: Option<tokio::time::Instant>,
    /// Statuses kept out of the history on this connection.
    thinned: u64,
}

impl StatusGate {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last_point: None,
            thinned: 0,
        }
    }

    /// Whether a status arriving now becomes a history point.
    fn admit(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self.last_point.is_some_and(|at| now < at + self.every) {
            self.thinned += 1;
            return false;
        }
        self.last_point = Some(now);
        true
    }
}

/// Handles one text frame from an agent on its connection `conn`. A frame that cannot be used
/// is logged and dropped: it never ends the connection.
async fn handle_frame(engine: &Engine, agent: &str, conn: u64, gate: &mut StatusGate, text: &str) {
    let message: AgentMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(agent, "unusable frame from agent: {e}");
            return;
        }
    };
    let result = match message {
        AgentMessage::AgentConnected {
            agent_id,
            version,
            git_version,
            binary_sha256,
        } => {
            agent_connected(
                engine,
                agent,
                &agent_id,
                version,
                git_version,
                binary_sha256,
            )
            .await;
            Ok(())
        }
        AgentMessage::StatusUpdate { status } => {
            status_update(engine, agent, gate, status).await;
            Ok(())
        }
        AgentMessage::DeployOperation {
            id,
            app,
            phase,
            status,
            release_id,
            commit,
            output,
            error,
        } => {
            let progress = DeploymentReport {
                phase,
                status: status.into(),
                release_id: release_id.as_deref(),
                commit: commit.as_deref(),
                output: output.as_deref(),
                error: error.as_deref(),
            };
            deployment_progress(engine, agent, &id, &app, &progress).await;
            report(engine, agent, &id, status, output, error).await
        }
        AgentMessage::SiteOperation {
            id,
            status,
            output,
            error,
            ..
        }
        | AgentMessage::UpdateOperation {
            id,
            status,
            output,
            error,
            ..
        }
        | AgentMessage::RollbackOperation {
            id,
            status,
            output,
            error,
            ..
        }
        | AgentMessage::AppOperation {
            id,
            status,
            output,
            error,
            ..
        } => report(engine, agent, &id, status, output, error).await,
        AgentMessage::KeyRotation { id, status, error } => {
            key_rotation(engine, agent, conn, &id, status, error).await
        }
        AgentMessage::Event { kind, app, message } => {
            event(engine, agent, &kind, app.as_deref(), &message).await;
            Ok(())
        }
        AgentMessage::Error { id, error } => refused(engine, agent, id.as_deref(), &error).await,
    };
    if let Err(e) = result {
        tracing::error!(agent, "{e}");
    }
}

/// Its `agent_connected` message (`said` is the id it gives): the version it runs.
async fn agent_connected(
    engine: &Engine,
    agent: &str,
    said: &str,
    version: String,
    git_version: Option<String>,
    binary_sha256: Option<String>,
) {
    if said != agent {
        tracing::warn!(agent, said = %said, "agent_connected names another agent id");
    }
    engine.live.version(agent, &version, git_version.as_deref());
    engine
        .write(AgentWrite::Version {
            agent_id: agent.to_owned(),
            version,
            git_version,
            binary_sha256,
        })
        .await;
}

/// A status update: into the live view at once, queued for the store (a history point too if
/// `gate` admits it).
async fn status_update(engine: &Engine, agent: &str, gate: &mut StatusGate, status: HostStatus) {
    engine.hub.status_received.fetch_add(1, Ordering::Relaxed);
    let history = gate.admit();
    if !history {
        engine.hub.status_thinned.fetch_add(1, Ordering::Relaxed);
        if gate.thinned == 1 {
            tracing::warn!(
                agent,
                "agent sends status updates more often than every {}: one per {0} goes \
                 into the history, the others only replace its latest status (counted \
                 as statusThinned in /admin/stats)",
                crate::config::format_duration(gate.every),
            );
        }
    }
    let point = history_point(&status);
    let json = text_of_status(&status);
    engine.live.status(agent, status, point.at);
    engine
        .write(AgentWrite::Status(StatusRecord {
            agent_id: agent.to_owned(),
            point,
            json,
            history,
        }))
        .await;
}

/// A `deploy_operation` report moves its deployment (its operation is reported as any other's).
async fn deployment_progress(
    engine: &Engine,
    agent: &str,
    id: &str,
    app: &str,
    progress: &DeploymentReport<'_>,
) {
    let phase = progress.phase;
    match engine
        .store
        .report_deployment(id, agent, progress, now())
        .await
    {
        Ok(true) => {
            tracing::debug!(agent, operation = %id, app = %app, %phase, "deployment progress")
        }
        Ok(false) => tracing::debug!(
            agent,
            operation = %id,
            app = %app,
            %phase,
            "deployment report ignored: unknown deployment, ended, or already past that phase"
        ),
        Err(e) => tracing::error!(agent, "{e}"),
    }
}

/// A `key_rotation` report: a completed rotation promotes the pending key (and this connection,
/// opened with the old one, stops taking commands), a failed one drops it.
async fn key_rotation(
    engine: &Engine,
    agent: &str,
    conn: u64,
    id: &str,
    status: OperationStatus,
    error: Option<String>,
) -> Result<(), StoreError> {
    match status {
        OperationStatus::Completed => {
            // This connection was opened with the old key, and the agent now reconnects with
            // the new one: a command sent here meanwhile would be lost with it, so none is;
            // until the new connection comes, commands get "offline". (An ack that comes on
            // the new connection finds the key already promoted.)
            if engine.store.promote_pending_key(agent).await? && engine.hub.unregister(agent, conn)
            {
                engine.live.offline(agent, conn, now());
                tracing::info!(agent, "key rotated; waiting for the agent to reconnect");
            }
        }
        OperationStatus::Failed => engine.store.clear_pending_key(agent).await?,
        OperationStatus::Starting => {}
    }
    report(engine, agent, id, status, None, error).await
}

/// An `event` message: stored unless the agent is past its budget.
async fn event(engine: &Engine, agent: &str, kind: &str, app: Option<&str>, message: &str) {
    let at = now();
    if engine.live.admit_event(agent, at) {
        let id = engine.store.next_event_id();
        let row = events::row(id, agent, kind, app, message, at);
        tracing::info!(agent, kind = %row.kind, app = ?row.app, "event: {}", row.message);
        engine.write(AgentWrite::Event(row)).await;
    }
}

/// An `error` message: the agent refused a message; if it names a command, its operation (and
/// deployment) fail with the agent's words.
async fn refused(
    engine: &Engine,
    agent: &str,
    id: Option<&str>,
    error: &str,
) -> Result<(), StoreError> {
    tracing::warn!(agent, id = ?id, "agent refused a message: {error}");
    let Some(id) = id else {
        return Ok(());
    };
    let error = format!("refused by the agent: {error}");
    // A refused deploy_app ends its deployment (no-op for other operations).
    if let Err(e) = engine
        .store
        .report_deployment(id, agent, &DeploymentReport::failed(&error), now())
        .await
    {
        tracing::error!(agent, "{e}");
    }
    report(
        engine,
        agent,
        id,
        OperationStatus::Failed,
        None,
        Some(error),
    )
    .await
}

/// An agent's report on operation `id`: stored, and its waiters and the live view told.
async fn report(
    engine: &Engine,
    agent: &str,
    id: &str,
    status: OperationStatus,
    output: Option<String>,
    error: Option<String>,
) -> Result<(), StoreError> {
    let (output, error) = (output.as_deref(), error.as_deref());
    if let Some(operation) = engine
        .store
        .report_operation(id, agent, status.into(), output, error, now())
        .await?
    {
        engine.hub.operation_changed(id);
        engine.live.operation(&operation);
    }
    Ok(())
}

fn text_of_status(status: &HostStatus) -> String {
    serde_json::to_string(status).expect("HostStatus serialises to JSON")
}

/// The figures of a status kept in history.
fn history_point(status: &HostStatus) -> HistoryPoint {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    HistoryPoint {
        at: now(),
        cpu_load: if status.cpu.load.is_finite() {
            status.cpu.load
        } else {
            0.0
        },
        memory_used: clamp(status.memory.used),
        memory_total: clamp(status.memory.total),
        disk_used: clamp(status.disk.iter().map(|d| d.used).sum()),
        disk_size: clamp(status.disk.iter().map(|d| d.size).sum()),
        apps_online: status
            .apps
            .iter()
            .filter(|a| a.state == AppState::Online)
            .count() as i64,
        apps_total: status.apps.len() as i64,
    }
}

/// Applies agents' writes in batches: whatever was queued while the previous batch was
/// written. Ends when `stop` turns true, after applying what is queued.
pub async fn agent_writer(
    engine: Arc<Engine>,
    mut rx: mpsc::Receiver<AgentWrite>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(1024);
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, 5000) => n == 0,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        if stopping {
            while batch.len() < 100_000 {
                match rx.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let statuses = batch
                .iter()
                .filter(|w| matches!(w, AgentWrite::Status(_)))
                .count();
            match engine.store.record_agent_writes(&batch).await {
                Ok(()) => {
                    engine
                        .hub
                        .status_stored
                        .fetch_add(statuses as u64, Ordering::Relaxed);
                    for write in &batch {
                        if let AgentWrite::Event(event) = write {
                            engine.live.event(event);
                        }
                    }
                }
                Err(e) => tracing::error!(
                    "{} agent writes lost ({statuses} status updates): {e}",
                    batch.len()
                ),
            }
            batch.clear();
        }
        if stopping {
            return;
        }
    }
}
