//! The agent's connection loop and command handling.
//!
//! Theory of operation. One task owns the WebSocket. Before connecting it makes sure there is a
//! key (exchanging the single-use `enroll_token` at the engine once, writing `key_file` 0600
//! atomically). It connects with the agent headers, sends `agent_connected`, then `select!`s over
//! incoming frames, the status timer and the outbox. Commands run in tasks of their own and put
//! their reports in the persisted outbox, which the connection drains in order, so a report made
//! while disconnected (or before a citrusd restart) is sent after the next connect. A broken
//! connection is retried after a full-jitter backoff: a random delay up to
//! `reconnect_delay * 2^attempt`, capped at 60 s, so a fleet does not stampede a restarted engine.
//! Nothing is ever run through a shell: site commands are argv templates with the validated
//! domain as one element.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::outbox::Outbox;
use super::protocol::{self as wire, AgentMessage, EngineMessage, OperationStatus};
use super::system;
use super::update::{PendingUpdate, UpdateKind};
use crate::config::{FleetConfig, Secret, SiteTemplates};
use crate::control::{FleetState, FleetStatus};
use crate::deploy::{Deployment, Deployments};
use crate::supervisor::handoff;
use crate::supervisor::oneshot::{self, Ended};
use crate::supervisor::reaper::Reaper;
use crate::supervisor::spawn::{Marker, Spec};
use crate::supervisor::{Supervisor, Target};
use crate::sys::backoff::Backoff;
use crate::sys::fs::write_atomic;
use crate::sys::now_ms;

/// Backoff never waits longer than this between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Output kept in a report: the last 64 KiB.
const OUTPUT_TAIL: usize = 64 * 1024;
/// Reports sent from the outbox before they are marked sent (one sync each batch); a crash
/// sends at most these again.
const DRAIN_BATCH: usize = 64;
/// A site command (`[fleet.sites]`) still running after this is stopped and fails.
const SITE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The running agent.
pub struct Agent {
    config: FleetConfig,
    supervisor: Arc<Supervisor>,
    deploys: Arc<Deployments>,
    reaper: Arc<Reaper>,
    marker: Marker,
    outbox: Outbox,
    status: Mutex<FleetStatus>,
    /// Domains with a site operation in progress.
    busy_domains: Mutex<HashSet<String>>,
    /// Set after a key rotation was acknowledged: reconnect with the new key.
    reconnect: tokio::sync::Notify,
    /// Set at citrusd's shutdown: close the WebSocket politely and stop.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Ourselves, for the tasks commands run in.
    me: std::sync::Weak<Agent>,
    state_dir: std::path::PathBuf,
    /// An update this process was re-executed for, confirmed at the first connect.
    pending: Mutex<Option<PendingUpdate>>,
    /// An update or rollback accepted and not yet handed to the new process: another is refused.
    updating: AtomicBool,
    /// SHA-256 of the binary this process runs (`/proc/self/exe`), read once at start.
    binary_sha256: std::sync::OnceLock<String>,
    /// When this process started the agent: a git lock older than this was left by a crash.
    started: std::time::SystemTime,
}

/// What an `update_agent` / `rollback_agent` asks for.
#[derive(Clone, Debug, PartialEq)]
enum UpdateRequest {
    /// Move the checkout to `remote/branch` (then `build`, `binary`).
    Git,
    /// Reset the checkout to a commit.
    GitRollback(String),
    /// Install this release from the engine.
    Release(String),
    /// Back to `citrusd.prev`.
    BinaryRollback,
}

impl UpdateRequest {
    fn kind(&self) -> UpdateKind {
        match self {
            Self::Git | Self::Release(_) => UpdateKind::Update,
            Self::GitRollback(_) | Self::BinaryRollback => UpdateKind::Rollback,
        }
    }

    /// The report of this request's progress.
    fn report(
        &self,
        id: &str,
        status: OperationStatus,
        output: Option<String>,
        error: Option<String>,
        git_version: Option<String>,
    ) -> AgentMessage {
        match self {
            Self::GitRollback(_) | Self::BinaryRollback => AgentMessage::RollbackOperation {
                id: id.to_owned(),
                status,
                commit_id: match self {
                    Self::GitRollback(c) => c.clone(),
                    _ => String::new(),
                },
                git_version,
                output,
                error,
            },
            Self::Git | Self::Release(_) => AgentMessage::UpdateOperation {
                id: id.to_owned(),
                status,
                git_version,
                output,
                error,
            },
        }
    }
}

fn short(c: &str) -> String {
    c.chars().take(12).collect()
}

/// Starts of a new version that has not confirmed its update yet after which it is taken as
/// crash-looping and the previous commit is restored at once.
const MAX_UNCONFIRMED_STARTS: u32 = 3;

/// The update in flight, kept in `<state_dir>/fleet-update.json` until it is confirmed, so a
/// restart of the new version (a crash, systemd) does not forget it.
#[derive(Serialize, Deserialize)]
struct StoredUpdate {
    update: PendingUpdate,
    starts: u32,
}

fn update_file(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("fleet-update.json")
}

fn store_update(state_dir: &std::path::Path, update: &PendingUpdate, starts: u32) {
    let stored = StoredUpdate {
        update: update.clone(),
        starts,
    };
    let json = serde_json::to_vec(&stored).expect("serialises");
    if let Err(e) = write_atomic(&update_file(state_dir), &json, 0o600) {
        tracing::error!("cannot record the update in progress: {e}");
    }
}

/// The waits between connection attempts: full jitter over a [`Backoff`] from
/// `reconnect_delay`, doubling up to [`MAX_BACKOFF`].
struct Reconnect {
    backoff: Backoff,
    /// Failed attempts since the last connection.
    failures: u32,
}

impl Reconnect {
    fn new(reconnect_delay: Duration) -> Reconnect {
        Reconnect {
            backoff: Backoff {
                first: reconnect_delay,
                max: MAX_BACKOFF,
            },
            failures: 0,
        }
    }

    /// After a clean end (key rotated, engine closed politely): the backoff starts over.
    fn reset(&mut self) {
        self.failures = 0;
    }

    /// Waits after a failed attempt, or returns early when `stop` changes. A connection that
    /// was up (the engine restarted, the network blipped) starts the backoff over: the next
    /// attempt waits at most `reconnect_delay`.
    async fn wait(&mut self, was_up: bool, stop: &mut tokio::sync::watch::Receiver<bool>) {
        if was_up {
            self.reset();
        }
        self.failures = self.failures.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(self.backoff.jittered(self.failures)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The WebSocket to the engine, and its two halves.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsSink = futures_util::stream::SplitSink<Ws, Message>;
type WsStream = futures_util::stream::SplitStream<Ws>;

/// Why a connection attempt or a connection ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("the engine refused this agent's credentials (HTTP 401); check agent_id and key_file")]
    Unauthorized,
    #[error("{0}")]
    Other(String),
}

impl Agent {
    /// Starts the agent's connection task.
    pub fn start(
        config: FleetConfig,
        supervisor: Arc<Supervisor>,
        deploys: Arc<Deployments>,
        reaper: Arc<Reaper>,
        marker: Marker,
        state_dir: &std::path::Path,
    ) -> Arc<Agent> {
        let outbox = Outbox::open(state_dir);
        let status = FleetStatus {
            state: FleetState::Connecting,
            engine_url: config.engine_url.clone(),
            agent_id: config.agent_id.clone(),
            connected_since_ms: None,
            last_error: None,
            queued_reports: outbox.len(),
            dropped_reports: 0,
            protocol: wire::PROTOCOL_VERSION,
        };
        // The update in flight is recorded in the state dir before the checkout moves, so it
        // survives any restart of the new version; each start is counted.
        let stored: Option<StoredUpdate> = std::fs::read(update_file(state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (pending, starts) = match stored {
            Some(s) => (Some(s.update), s.starts + 1),
            None => (None, 0),
        };
        if let Some(p) = &pending {
            store_update(state_dir, p, starts);
        }
        let mut watch = pending.clone().filter(|p| p.reverted.is_none());
        if let Some(p) = watch.as_mut().filter(|_| starts > MAX_UNCONFIRMED_STARTS) {
            tracing::error!(
                starts,
                "the new version keeps restarting without confirming its update"
            );
            p.deadline_ms = 0;
        }
        let agent = Arc::new_cyclic(|me| Agent {
            me: me.clone(),
            state_dir: state_dir.to_path_buf(),
            pending: Mutex::new(pending),
            config,
            supervisor,
            deploys: deploys.clone(),
            reaper,
            marker,
            outbox,
            status: Mutex::new(status),
            busy_domains: Mutex::new(HashSet::new()),
            reconnect: tokio::sync::Notify::new(),
            stopping: tokio::sync::watch::Sender::new(false),
            updating: AtomicBool::new(false),
            binary_sha256: std::sync::OnceLock::new(),
            started: std::time::SystemTime::now(),
        });
        tokio::spawn(agent.clone().run());
        tokio::spawn(report_deployments(
            Arc::downgrade(&agent),
            deploys.subscribe(),
        ));
        if let Some(p) = watch {
            tokio::spawn(agent.clone().confirm_or_revert(p));
        }
        agent
    }

    /// After a re-exec for an update: if the new version has not reached the engine by the
    /// deadline, go back to the previous binary (or commit) and re-execute again.
    async fn confirm_or_revert(self: Arc<Self>, p: PendingUpdate) {
        let wait = Duration::from_millis(p.deadline_ms.saturating_sub(now_ms()));
        tokio::time::sleep(wait).await;
        // Taken under the lock, so a connect from now on has nothing to confirm: the update
        // cannot be reported `completed` and then go back.
        let taken = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.as_ref() {
                Some(p) if p.reverted.is_none() => pending.take(),
                _ => None,
            }
        };
        if taken.is_none() {
            return;
        }
        let timeout = self.confirm_timeout();
        let back = match &p.binary {
            Some(b) if b.previous_sha256 == p.previous => {
                format!("the previous binary {}", short(&b.previous_sha256))
            }
            Some(b) => format!(
                "the previous binary {} and commit {}",
                short(&b.previous_sha256),
                short(&p.previous)
            ),
            None => short(&p.previous),
        };
        let late = format!(
            "the new version did not reach the engine within {}",
            crate::config::format_duration(timeout),
        );
        tracing::error!("{late}; going back to {back}");
        let (binary, repo, started) = (p.binary.clone(), self.repo(), self.started);
        let previous = p.previous.clone();
        // `previous` is the commit for the git path (also when it installed a binary it built).
        let undone = tokio::task::spawn_blocking(move || {
            if let Some(b) = &binary {
                super::update::restore_previous(&b.exe).map_err(|e| e.to_string())?;
            }
            match (binary.is_some_and(|b| b.previous_sha256 == previous), repo) {
                (true, _) => Ok(()),
                (false, Some(repo)) => {
                    super::update::reset_back(&repo, &previous, started).map(drop)
                }
                (false, None) => Err("no [fleet.update] repo to go back in".to_string()),
            }
        })
        .await;
        let reverted = |reason: String| PendingUpdate {
            reverted: Some(reason),
            deadline_ms: u64::MAX,
            ..p.clone()
        };
        if let Ok(Err(e)) | Err(e) = undone.map_err(|e| e.to_string()) {
            tracing::error!("cannot go back to {back}: {e}");
            // Still the new version: reported `failed` with both reasons at the next connect.
            let update = reverted(format!("{late}; cannot go back to {back}: {e}"));
            store_update(&self.state_dir, &update, 0);
            *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(update);
            return;
        }
        let _ = std::fs::remove_file(self.state_dir.join(super::update::MARKER));
        let update = reverted(format!("{late}; went back to {back}"));
        store_update(&self.state_dir, &update, 0);
        // Should the re-exec fail, this process reports the revert at its next connect.
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(update);
        self.re_exec();
    }

    /// Re-executes citrusd (the binary at the path it was started from) with the handoff;
    /// returns only when that failed, after logging why.
    fn re_exec(&self) -> std::io::Error {
        let handoff = self.supervisor.handoff();
        let e = match super::update::running_exe() {
            Ok(exe) => handoff::exec_program(&handoff, &self.state_dir, &exe),
            Err(e) => e,
        };
        tracing::error!("cannot re-execute citrusd: {e}");
        e
    }

    /// `[fleet.update] confirm_timeout` (2 minutes without the section).
    fn confirm_timeout(&self) -> Duration {
        self.config
            .update
            .as_ref()
            .map_or(Duration::from_secs(120), |u| u.confirm_timeout)
    }

    fn repo(&self) -> Option<std::path::PathBuf> {
        self.config.update.as_ref()?.repo.clone()
    }

    /// Reads the running binary's SHA-256 once; then, if an unconfirmed binary update is
    /// recorded but this is the binary it replaced, the new one never got far enough to confirm
    /// and the unit's guard put the old one back: the update is reported `failed`.
    async fn read_binary(&self) {
        if self.binary_sha256.get().is_some() {
            return;
        }
        let sha = tokio::task::spawn_blocking(|| {
            super::update::sha256_file(std::path::Path::new("/proc/self/exe"))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let sha = match sha {
            Ok(sha) => sha,
            Err(e) => {
                tracing::warn!("cannot read the running binary's SHA-256: {e}");
                return;
            }
        };
        let _ = self.binary_sha256.set(sha.clone());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pending.as_mut() else { return };
        let Some(b) = &p.binary else { return };
        if p.reverted.is_none() && b.sha256 != sha {
            let reason = format!(
                "the new binary {} stopped before it reached the engine; {} runs again \
                 (put back by the service's guard)",
                short(&b.sha256),
                short(&sha),
            );
            tracing::error!("{reason}");
            p.reverted = Some(reason);
            p.deadline_ms = u64::MAX;
            store_update(&self.state_dir, p, 0);
            let _ = std::fs::remove_file(self.state_dir.join(super::update::MARKER));
        }
    }

    /// At the first connect after an update's re-exec: the update is done (or was reverted).
    fn confirm_update(&self) {
        let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        // Confirmed (or reported reverted): nothing is in flight any more.
        let _ = std::fs::remove_file(update_file(&self.state_dir));
        let _ = std::fs::remove_file(self.state_dir.join(super::update::MARKER));
        let (status, error) = match p.reverted {
            None => (OperationStatus::Completed, None),
            Some(reason) => (OperationStatus::Failed, Some(reason)),
        };
        let git_version = self.git_version();
        let output = Some(match (&p.binary, self.binary_sha256.get()) {
            (Some(_), Some(sha)) => format!("running binary {sha}"),
            _ => format!("running {}", git_version.clone().unwrap_or_default()),
        });
        self.report(if p.kind == UpdateKind::Rollback {
            AgentMessage::RollbackOperation {
                id: p.id,
                status,
                commit_id: p.commit_id.unwrap_or_default(),
                git_version,
                output,
                error,
            }
        } else {
            AgentMessage::UpdateOperation {
                id: p.id,
                status,
                git_version,
                output,
                error,
            }
        });
    }

    /// The connection state for `citrusctl fleet`.
    pub fn status(&self) -> FleetStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.queued_reports = self.outbox.len();
        s.dropped_reports = self.outbox.dropped();
        s
    }

    fn set_state(&self, state: FleetState, error: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.state = state;
        if state != FleetState::Connected {
            s.connected_since_ms = None;
        }
        if let Some(e) = error {
            s.last_error = Some(e);
        }
    }

    /// Closes the connection with a Close frame (1001, going away) and ends the agent; waits at
    /// most 2 s. Called at citrusd's shutdown, before the apps are stopped.
    pub async fn stop(&self) {
        let mut rx = self.stopping.subscribe();
        self.stopping.send_replace(true);
        let stopped = async {
            loop {
                if self.status().state == FleetState::Stopped {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
    }

    fn stopped(&self) {
        self.set_state(FleetState::Stopped, None);
        // Wake `stop`, which waits on this channel.
        self.stopping.send_replace(true);
    }

    async fn run(self: Arc<Self>) {
        self.read_binary().await;
        let mut reconnect = Reconnect::new(self.config.reconnect_delay);
        let mut stop = self.stopping.subscribe();
        loop {
            if *stop.borrow_and_update() {
                return self.stopped();
            }
            let result = match self.ensure_key().await {
                Ok(key) => self.session(&key).await,
                Err(e) => Err(LinkError::Other(e)),
            };
            let e = match result {
                // A clean end (key rotated, engine closed politely): reconnect at once.
                Ok(()) => {
                    reconnect.reset();
                    continue;
                }
                Err(e) => e,
            };
            let was_up = self
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .connected_since_ms
                .is_some();
            let msg = e.to_string();
            match e {
                LinkError::Unauthorized => tracing::error!("{msg}"),
                LinkError::Other(_) => tracing::warn!("fleet: {msg}"),
            }
            self.set_state(FleetState::Waiting, Some(msg));
            reconnect.wait(was_up, &mut stop).await;
        }
    }

    /// The agent key: read from `key_file`, or obtained once with the enrolment token.
    async fn ensure_key(&self) -> Result<Secret, String> {
        let path = &self.config.key_file;
        match std::fs::read_to_string(path) {
            Ok(k) if !k.trim().is_empty() => return Ok(Secret::new(k.trim())),
            Ok(_) => return Err(format!("key_file {} is empty", path.display())),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot read key_file {}: {e}", path.display()))
            }
            Err(_) => {}
        }
        let Some(token) = &self.config.enroll_token else {
            return Err(format!(
                "no key_file at {} and no enroll_token to obtain one",
                path.display()
            ));
        };
        self.set_state(FleetState::Enrolling, None);
        #[derive(Deserialize)]
        struct Enrolled {
            key: String,
        }
        // The same trust as the WebSocket: the system roots plus ca_file.
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*self.tls()?).clone())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let resp = client
            .post(&self.config.enroll_url)
            .json(&serde_json::json!({ "agentId": self.config.agent_id, "token": token.expose() }))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "enrolment at {} failed: {}",
                    self.config.enroll_url,
                    e.without_url()
                )
            })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!(
                "enrolment refused by the engine ({status}): {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        let enrolled: Enrolled = resp
            .json()
            .await
            .map_err(|e| format!("enrolment answer unreadable: {}", e.without_url()))?;
        if enrolled.key.trim().is_empty() {
            return Err("enrolment answered an empty key".into());
        }
        write_atomic(path, enrolled.key.trim().as_bytes(), 0o600)
            .map_err(|e| format!("cannot write key_file {}: {e}", path.display()))?;
        tracing::info!(key_file = %path.display(), "enrolled with the engine; key saved");
        Ok(Secret::new(enrolled.key.trim()))
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        super::tls::client_config(self.config.ca_file.as_deref())
    }

    /// One connection, until it ends.
    async fn session(&self, key: &Secret) -> Result<(), LinkError> {
        self.set_state(FleetState::Connecting, None);
        // Subscribed before connecting: a stop while connecting still closes politely.
        let mut stop = self.stopping.subscribe();
        let ws = self.connect(key).await?;
        let (mut tx, mut rx) = ws.split();
        {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.state = FleetState::Connected;
            s.connected_since_ms = Some(now_ms());
            s.last_error = None;
        }
        tracing::info!(engine = %self.config.engine_url, "connected to the engine");
        let hello = AgentMessage::AgentConnected {
            agent_id: self.config.agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_version: self.git_version(),
            binary_sha256: self.binary_sha256.get().cloned(),
        };
        self.send(&mut tx, to_frame(&hello)).await?;
        self.send(&mut tx, to_frame(&self.status_update())).await?;
        self.confirm_update();
        self.serve(&mut tx, &mut rx, &mut stop).await
    }

    /// Opens the WebSocket to `engine_url` with the agent's headers (at most 30 s); a 401 is
    /// [`LinkError::Unauthorized`].
    async fn connect(&self, key: &Secret) -> Result<Ws, LinkError> {
        let url = &self.config.engine_url;
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| LinkError::Other(format!("bad engine_url {url}: {e}")))?;
        let h = req.headers_mut();
        let header =
            |v: &str| HeaderValue::from_str(v).map_err(|e| LinkError::Other(e.to_string()));
        h.insert(wire::HEADER_CLIENT_TYPE, header(wire::CLIENT_TYPE_AGENT)?);
        h.insert(wire::HEADER_AGENT_ID, header(&self.config.agent_id)?);
        h.insert(wire::HEADER_AGENT_KEY, header(key.expose())?);
        h.insert(
            wire::HEADER_PROTOCOL,
            header(&wire::PROTOCOL_VERSION.to_string())?,
        );
        let connector = if url.starts_with("wss://") {
            Some(tokio_tungstenite::Connector::Rustls(
                self.tls().map_err(LinkError::Other)?,
            ))
        } else {
            None
        };
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(wire::MAX_FRAME))
            .max_frame_size(Some(wire::MAX_FRAME));
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(ws_config),
            false,
            connector,
        );
        let (ws, _) = tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .map_err(|_| LinkError::Other(format!("connecting to {url} timed out")))?
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) if resp.status() == 401 => LinkError::Unauthorized,
                other => LinkError::Other(format!("cannot connect to {url}: {other}")),
            })?;
        Ok(ws)
    }

    /// The connection's life: sends the outbox, answers frames and sends the status at its
    /// interval, until the connection breaks, citrusd stops (a polite close, `Ok`) or the key
    /// was rotated (`Ok`, to reconnect with the new key).
    async fn serve(
        &self,
        tx: &mut WsSink,
        rx: &mut WsStream,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), LinkError> {
        let url = &self.config.engine_url;
        let mut status_timer = tokio::time::interval(self.config.status_interval);
        status_timer.reset();
        loop {
            self.drain(tx).await?;
            tokio::select! {
                frame = rx.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_frame(text.as_str()),
                    Some(Ok(Message::Binary(_))) => {
                        self.outbox.push(to_frame(&wire::ProtocolError::NotText.reply()));
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(LinkError::Other(format!("the engine at {url} closed the connection")));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(LinkError::Other(format!("connection to {url} failed: {e}"))),
                },
                _ = status_timer.tick() => self.send(tx, to_frame(&self.status_update())).await?,
                _ = self.outbox.ready.notified() => {}
                _ = stop.changed() => {
                    let bye = tungstenite::protocol::CloseFrame {
                        code: tungstenite::protocol::frame::coding::CloseCode::Away,
                        reason: "citrusd is shutting down".into(),
                    };
                    let _ = tx.send(Message::Close(Some(bye))).await;
                    tracing::info!("closed the engine connection (shutting down)");
                    return Ok(());
                }
                _ = self.reconnect.notified() => {
                    // Flush acknowledgements, then come back with the new key.
                    self.drain(tx).await?;
                    let _ = tx.send(Message::Close(None)).await;
                    tracing::info!("key rotated: reconnecting with the new key");
                    return Ok(());
                }
            }
        }
    }

    /// Sends the outbox in order, [`DRAIN_BATCH`] reports at a time, each batch marked sent
    /// once it is written to the connection.
    async fn drain(&self, tx: &mut WsSink) -> Result<(), LinkError> {
        loop {
            let batch = self.outbox.peek(DRAIN_BATCH);
            if batch.frames.is_empty() {
                return Ok(());
            }
            for frame in batch.frames {
                tx.feed(Message::text(frame))
                    .await
                    .map_err(|e| self.lost(e))?;
            }
            tx.flush().await.map_err(|e| self.lost(e))?;
            self.outbox.sent(batch.end);
        }
    }

    /// Sends one text frame.
    async fn send(&self, tx: &mut WsSink, frame: String) -> Result<(), LinkError> {
        tx.send(Message::text(frame))
            .await
            .map_err(|e| self.lost(e))
    }

    /// A failed send: the connection is lost.
    fn lost(&self, e: tungstenite::Error) -> LinkError {
        LinkError::Other(format!(
            "connection to {} lost: {e}",
            self.config.engine_url
        ))
    }

    /// The checkout's HEAD (12 hex digits), read through git2 like the updates themselves.
    fn git_version(&self) -> Option<String> {
        let repo = self.config.update.as_ref()?.repo.as_ref()?;
        let head = super::update::head(repo).ok()?;
        Some(head.chars().take(12).collect())
    }

    fn status_update(&self) -> AgentMessage {
        let (load, cores) = system::cpu();
        let (total, used, free) = system::memory();
        AgentMessage::StatusUpdate {
            status: wire::HostStatus {
                hostname: crate::sys::hostname(),
                uptime: system::uptime(),
                git_version: self.git_version(),
                binary_sha256: self.binary_sha256.get().cloned(),
                cpu: wire::CpuStatus { load, cores },
                memory: wire::MemoryStatus { total, used, free },
                disk: system::filesystems()
                    .into_iter()
                    .map(|(fs, size, used, available)| wire::DiskStatus {
                        fs,
                        size,
                        used,
                        available,
                    })
                    .collect(),
                apps: self
                    .deploys
                    .with_releases(self.supervisor.status(None).unwrap_or_default())
                    .iter()
                    .map(wire::AppStatus::from)
                    .collect(),
                timestamp: now_ms(),
            },
        }
    }

    /// Parses a frame and starts its command; anything unusable is answered with an error.
    fn on_frame(&self, text: &str) {
        match wire::parse_engine(text) {
            Ok(msg) => {
                tracing::info!(id = msg.id(), kind = msg.type_name(), "engine command");
                self.dispatch(msg);
            }
            Err(e) => {
                tracing::warn!("unusable message from the engine: {e}");
                self.outbox.push(to_frame(&e.reply()));
            }
        }
    }

    /// Queues a notification event for the engine.
    pub fn event(&self, kind: &str, app: Option<&str>, message: &str) {
        self.report(AgentMessage::Event {
            kind: kind.to_string(),
            app: app.map(str::to_string),
            message: message.to_string(),
        });
    }

    fn report(&self, msg: AgentMessage) {
        self.outbox.push(to_frame(&msg));
    }

    fn dispatch(&self, msg: EngineMessage) {
        match msg {
            EngineMessage::CreateSite { id, domain, .. } => self.site(
                id,
                domain,
                wire::SiteAction::Create,
                self.config.sites.create.clone(),
            ),
            EngineMessage::DeleteSite { id, domain } => self.site(
                id,
                domain,
                wire::SiteAction::Delete,
                self.config.sites.delete.clone(),
            ),
            EngineMessage::RotateKey { id, new_key } => {
                let result = if new_key.trim().is_empty() {
                    Err("refused: the new key is empty".to_string())
                } else {
                    write_atomic(&self.config.key_file, new_key.trim().as_bytes(), 0o600).map_err(
                        |e| {
                            format!(
                                "cannot write key_file {}: {e}",
                                self.config.key_file.display()
                            )
                        },
                    )
                };
                let ok = result.is_ok();
                self.report(AgentMessage::KeyRotation {
                    id,
                    status: if ok {
                        OperationStatus::Completed
                    } else {
                        OperationStatus::Failed
                    },
                    error: result.err(),
                });
                if ok {
                    self.reconnect.notify_one();
                }
            }
            EngineMessage::AppControl { id, app, action } => self.app_control(id, app, action),
            EngineMessage::UpdateAgent { id, sha256 } => self.update(
                id,
                sha256.map_or(UpdateRequest::Git, UpdateRequest::Release),
            ),
            EngineMessage::RollbackAgent { id, commit_id } => self.update(
                id,
                commit_id.map_or(UpdateRequest::BinaryRollback, UpdateRequest::GitRollback),
            ),
            EngineMessage::DeployApp { id, app, git_ref } => {
                // Its progress is reported by `report_deployments`, phase by phase.
                if let Err(e) = self.deploys.start(&app, git_ref, Some(id.clone())) {
                    self.report(AgentMessage::DeployOperation {
                        id,
                        app,
                        phase: wire::Phase::Failed,
                        status: OperationStatus::Failed,
                        release_id: None,
                        commit: None,
                        output: None,
                        error: Some(format!("refused: {e}")),
                    })
                }
            }
        }
    }

    /// `update_agent` or `rollback_agent`: install a release (or go back to `citrusd.prev`), or
    /// move the checkout with git2 (then build and install what it made, when configured); then
    /// re-execute citrusd keeping the apps. The new process confirms once it reaches the engine.
    /// One at a time: another request while one is in flight is refused.
    fn update(&self, id: String, request: UpdateRequest) {
        let report = |status, error: Option<String>| {
            request.report(&id, status, None, error, self.git_version())
        };
        if let Err(why) = self.claim_update(&request) {
            return self.report(report(OperationStatus::Failed, Some(why)));
        }
        self.report(report(OperationStatus::Starting, None));
        let agent = self.handle();
        tokio::spawn(async move {
            let result = agent.clone().run_update(&id, &request).await;
            agent.updating.store(false, Ordering::SeqCst);
            let _ = std::fs::remove_file(update_file(&agent.state_dir));
            let _ = std::fs::remove_file(agent.state_dir.join(super::update::MARKER));
            let (status, output, error) = match result {
                Ok(done) => (OperationStatus::Completed, Some(done), None),
                Err((output, e)) => (OperationStatus::Failed, output, Some(e)),
            };
            let git_version = agent.git_version();
            agent.report(request.report(&id, status, output, error, git_version));
        });
    }

    /// Takes the one slot for an update or rollback, or says why `request` is refused: one is
    /// waiting for its confirmation, another is in flight, or a git update has no repo.
    fn claim_update(&self, request: &UpdateRequest) -> Result<(), String> {
        if let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Err(format!(
                "refused: {} {} is still waiting for its confirmation",
                p.kind.as_str(),
                p.id
            ));
        }
        if self.updating.swap(true, Ordering::SeqCst) {
            return Err(
                "refused: another update or rollback of this agent is in flight; \
                        wait for its report"
                    .to_string(),
            );
        }
        let git = matches!(request, UpdateRequest::Git | UpdateRequest::GitRollback(_));
        if git && self.repo().is_none() {
            self.updating.store(false, Ordering::SeqCst);
            return Err(
                "no [fleet.update] repo is configured on this host; send update_agent \
                        with the sha256 of a release instead"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// The record of an update in flight, kept until the new process confirms it.
    fn pending_for(
        &self,
        id: &str,
        request: &UpdateRequest,
        previous: String,
        binary: Option<super::update::BinaryChange>,
    ) -> PendingUpdate {
        PendingUpdate {
            id: id.to_owned(),
            kind: request.kind(),
            commit_id: match request {
                UpdateRequest::GitRollback(c) => Some(c.clone()),
                _ => None,
            },
            previous,
            deadline_ms: now_ms() + self.confirm_timeout().as_millis() as u64,
            reverted: None,
            binary,
        }
    }

    /// Does the update up to the re-exec. Returns only when there is nothing to re-execute for
    /// (`Ok`, the output) or when something failed (the output so far and why), with what it
    /// changed undone.
    async fn run_update(
        self: Arc<Self>,
        id: &str,
        request: &UpdateRequest,
    ) -> Result<String, (Option<String>, String)> {
        use super::update as up;
        let exe = up::running_exe()
            .map_err(|e| (None, format!("cannot find the running citrusd binary: {e}")))?;
        let running = self.binary_sha256.get().cloned().unwrap_or_default();
        let (staged, new_sha) = match request {
            UpdateRequest::Release(sha256) => {
                if *sha256 == running {
                    return Ok(format!("already running binary {sha256}"));
                }
                let tls = self.tls().map_err(|e| (None, e))?;
                let client = up::client((*tls).clone()).map_err(|e| (None, e))?;
                let url = format!("{}{sha256}", self.config.releases_url);
                tracing::info!(%url, "downloading a release");
                let tmp = up::download(&client, &url, sha256, &exe, up::MAX_RELEASE)
                    .await
                    .map_err(|e| (None, e.to_string()))?;
                (Some(tmp), sha256.clone())
            }
            UpdateRequest::BinaryRollback => {
                let prev = up::previous_of(&exe);
                let sha = tokio::task::spawn_blocking(move || up::sha256_file(&prev))
                    .await
                    .map_err(|e| (None, e.to_string()))?
                    .map_err(|e| (None, format!("no previous binary to go back to: {e}")))?;
                (None, sha)
            }
            UpdateRequest::Git | UpdateRequest::GitRollback(_) => {
                return self.run_git_update(id, request, &exe, &running).await;
            }
        };
        let output = format!("binary {} -> {}", short(&running), short(&new_sha));
        let change = up::BinaryChange {
            exe: exe.clone(),
            sha256: new_sha,
            previous_sha256: running.clone(),
        };
        let pending = self.pending_for(id, request, running, Some(change));
        self.install_and_exec(&exe, staged, pending, output).await
    }

    /// The git path: move the checkout, run `build`, install `binary` if configured, re-execute.
    async fn run_git_update(
        self: Arc<Self>,
        id: &str,
        request: &UpdateRequest,
        exe: &std::path::Path,
        running: &str,
    ) -> Result<String, (Option<String>, String)> {
        use super::update as up;
        let update = self.config.update.clone().expect("checked by `update`");
        let repo = update.repo.clone().expect("checked by `update`");
        let r = repo.clone();
        let previous = tokio::task::spawn_blocking(move || up::head(&r))
            .await
            .map_err(|e| (None, e.to_string()))?
            .map_err(|e| (None, e))?;
        store_update(
            &self.state_dir,
            &self.pending_for(id, request, previous.clone(), None),
            0,
        );
        let moved = self
            .move_checkout(request, &update, &repo)
            .await
            .map_err(|e| (None, e))?;
        let output = format!("{} -> {}", short(&moved.previous), short(&moved.current));
        if moved.previous == moved.current {
            return Ok(format!("already at {}", short(&moved.current)));
        }
        let undo = |why: String| {
            let _ = up::reset_to(&repo, &moved.previous);
            (Some(output.clone()), why)
        };
        if let Some(build) = &update.build {
            let (ok, out, error) = self.run_argv(build, &repo).await;
            if !ok {
                let why = format!(
                    "the build failed: {}; the checkout went back to {}\n{out}",
                    error.unwrap_or_default(),
                    short(&moved.previous)
                );
                return Err(undo(why));
            }
        }
        let Some(built) = &update.binary else {
            tracing::info!("checkout moved {output}: re-executing citrusd");
            let e = self.re_exec();
            return Err(undo(format!("cannot re-execute citrusd: {e}")));
        };
        let (b, e) = (built.clone(), exe.to_owned());
        let staged = tokio::task::spawn_blocking(move || {
            let sha = up::sha256_file(&b)?;
            up::stage_copy(&b, &e).map(|tmp| (tmp, sha))
        })
        .await
        .map_err(|e| undo(e.to_string()))?
        .map_err(|e| undo(e.to_string()))?;
        let change = up::BinaryChange {
            exe: exe.to_owned(),
            sha256: staged.1,
            previous_sha256: running.to_owned(),
        };
        let pending = self.pending_for(id, request, moved.previous.clone(), Some(change));
        self.install_and_exec(exe, Some(staged.0), pending, output.clone())
            .await
            .map_err(|(out, why)| {
                let _ = up::reset_to(&repo, &moved.previous);
                (out, why)
            })
    }

    /// Moves the checkout: to the commit of a rollback, else fetched from `remote/branch` (over
    /// https with the agent's TLS trust).
    async fn move_checkout(
        &self,
        request: &UpdateRequest,
        update: &crate::config::UpdateConfig,
        repo: &std::path::Path,
    ) -> Result<super::update::Moved, String> {
        use super::update as up;
        let (target, r) = (request.clone(), repo.to_owned());
        let (remote, branch) = (update.remote.clone(), update.branch.clone());
        let ca_file = self.config.ca_file.clone();
        tokio::task::spawn_blocking(move || match &target {
            UpdateRequest::GitRollback(c) => up::reset_to(&r, c),
            _ => {
                let tls = super::tls::client_config(ca_file.as_deref())?;
                super::git_https::with_tls(tls, || up::pull(&r, &remote, &branch))
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    }

    /// Records `pending` and the marker the unit's guard looks for, puts `staged` in place of
    /// `exe` (or swaps `exe` with `citrusd.prev` when `None`), and re-executes. Returns only on
    /// failure, with the old binary back in place.
    async fn install_and_exec(
        &self,
        exe: &std::path::Path,
        staged: Option<std::path::PathBuf>,
        pending: PendingUpdate,
        output: String,
    ) -> Result<String, (Option<String>, String)> {
        use super::update as up;
        let failed = |why: String| (Some(output.clone()), why);
        store_update(&self.state_dir, &pending, 0);
        let marker = self.state_dir.join(up::MARKER);
        write_atomic(&marker, exe.as_os_str().as_encoded_bytes(), 0o600).map_err(|e| {
            if let Some(tmp) = &staged {
                let _ = std::fs::remove_file(tmp);
            }
            failed(format!("cannot write {}: {e}", marker.display()))
        })?;
        let (e, swap) = (exe.to_owned(), staged.is_none());
        let installed = tokio::task::spawn_blocking(move || match &staged {
            Some(tmp) => up::install(&e, tmp).inspect_err(|_| {
                let _ = std::fs::remove_file(tmp);
            }),
            None => up::swap_previous(&e),
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
        installed.map_err(|e| failed(e.to_string()))?;
        tracing::info!("installed {output}: re-executing citrusd");
        let e = self.re_exec();
        // Still here: put the old binary back.
        let back = match swap {
            true => up::swap_previous(exe),
            false => up::restore_previous(exe),
        };
        if let Err(b) = back {
            tracing::error!("cannot put the previous binary back: {b}");
        }
        Err(failed(format!("cannot re-execute citrusd: {e}")))
    }

    fn site(
        &self,
        id: String,
        domain: String,
        op: wire::SiteAction,
        template: Option<Vec<String>>,
    ) {
        let failed = |domain: String, error: String| AgentMessage::SiteOperation {
            id: id.clone(),
            operation: op,
            status: OperationStatus::Failed,
            domain,
            output: None,
            error: Some(error),
        };
        let domain = match wire::validate_domain(&domain) {
            Ok(d) => d,
            Err(e) => return self.report(failed(domain, format!("refused: {e}"))),
        };
        let Some(template) = template else {
            let which = if op == wire::SiteAction::Create {
                "create"
            } else {
                "delete"
            };
            return self.report(failed(
                domain,
                format!("no [fleet.sites] {which} template is configured on this host"),
            ));
        };
        if !self
            .busy_domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.clone())
        {
            return self.report(failed(
                domain.clone(),
                format!("refused: an operation on {domain} is already running on this host"),
            ));
        }
        self.report(AgentMessage::SiteOperation {
            id: id.clone(),
            operation: op,
            status: OperationStatus::Starting,
            domain: domain.clone(),
            output: None,
            error: None,
        });
        let argv = SiteTemplates::render(&template, &domain);
        let agent = self.handle();
        tokio::spawn(async move {
            let (ok, output, error) = agent.run_argv(&argv, std::path::Path::new("/")).await;
            agent
                .busy_domains
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&domain);
            agent.report(AgentMessage::SiteOperation {
                id,
                operation: op,
                status: if ok {
                    OperationStatus::Completed
                } else {
                    OperationStatus::Failed
                },
                domain,
                output: Some(output),
                error,
            });
        });
    }

    fn app_control(&self, id: String, app: String, action: wire::AppAction) {
        self.report(AgentMessage::AppOperation {
            id: id.clone(),
            app: app.clone(),
            action,
            status: OperationStatus::Starting,
            output: None,
            error: None,
        });
        let agent = self.handle();
        tokio::spawn(async move {
            let target = Target::App(app.clone());
            let result = match action {
                wire::AppAction::Start => agent.supervisor.start(&target).await,
                wire::AppAction::Stop => agent.supervisor.stop(&target).await,
                wire::AppAction::Restart => agent.supervisor.restart(&target).await,
            };
            agent.report(AgentMessage::AppOperation {
                id,
                app,
                action,
                status: if result.is_ok() {
                    OperationStatus::Completed
                } else {
                    OperationStatus::Failed
                },
                output: None,
                error: result.err().map(|e| e.to_string()),
            });
        });
    }

    /// Runs an argv (no shell) to completion, at most [`SITE_TIMEOUT`]; returns success, the last
    /// 64 KiB of output and an error.
    async fn run_argv(
        &self,
        argv: &[String],
        cwd: &std::path::Path,
    ) -> (bool, String, Option<String>) {
        let env = std::collections::BTreeMap::new();
        let inherit = vec!["PATH".to_string()];
        let spec = Spec {
            command: argv,
            cwd: Some(cwd),
            user: None,
            inherit_env: &inherit,
            env_file: None,
            env: &env,
            extra: vec![self.marker.supervisor_var()],
        };
        let done =
            match oneshot::run(&self.reaper, &spec, SITE_TIMEOUT, OUTPUT_TAIL, &argv[0]).await {
                Ok(done) => done,
                Err(e) => return (false, String::new(), Some(e.to_string())),
            };
        let error = match &done.ended {
            Ended::Exited(s) if s.success() => None,
            Ended::Exited(s) => Some(format!("{} exited with {s}", argv[0])),
            Ended::TimedOut(msg) => Some(format!("{} was {msg}", argv[0])),
        };
        (error.is_none(), done.output, error)
    }

    fn handle(&self) -> Arc<Agent> {
        self.me
            .upgrade()
            .expect("the agent lives in the Arc made by `start`")
    }
}

/// Reports every phase of the deployments the engine asked for (also those a restarted citrusd
/// took up again) as `deploy_operation`, through the outbox.
async fn report_deployments(
    agent: std::sync::Weak<Agent>,
    mut updates: tokio::sync::mpsc::Receiver<Deployment>,
) {
    while let Some(d) = updates.recv().await {
        let Some(agent) = agent.upgrade() else { return };
        if let Some(msg) = deploy_report(&d) {
            agent.report(msg);
        }
    }
}

/// The `deploy_operation` for a deployment the engine asked for; `None` for the others. It carries
/// the output of the phase that just ended, and the deployment's last output when it ends.
fn deploy_report(d: &Deployment) -> Option<AgentMessage> {
    let id = d.operation.clone()?;
    let status = match d.phase {
        wire::Phase::Completed => OperationStatus::Completed,
        wire::Phase::Failed | wire::Phase::RolledBack => OperationStatus::Failed,
        _ => OperationStatus::Starting,
    };
    let output = match d.phase.is_final() {
        true => Some(d.output.clone()),
        false => d.phases.iter().rev().nth(1).map(|p| p.output.clone()),
    };
    Some(AgentMessage::DeployOperation {
        id,
        app: d.app.clone(),
        phase: d.phase,
        status,
        release_id: Some(d.release.clone()),
        commit: d.commit.clone(),
        output: output.filter(|o| !o.is_empty()),
        error: d.error.clone(),
    })
}

fn to_frame(msg: &AgentMessage) -> String {
    serde_json::to_string(msg).expect("wire types serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;
    use tokio::time::Instant;

    /// One reconnect wait, in paused time.
    async fn timed(r: &mut Reconnect, was_up: bool, stop: &mut watch::Receiver<bool>) -> Duration {
        let start = Instant::now();
        r.wait(was_up, stop).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_backoff_doubles_to_a_minute_with_jitter_and_starts_over() {
        let (_tx, mut stop) = watch::channel(false);
        let first = Duration::from_millis(100);
        let mut r = Reconnect::new(first);
        let mut waits = Vec::new();
        for n in 0..30u32 {
            // Failure n + 1 waits at most 100 ms × 2^n, never more than a minute.
            let cap = first.saturating_mul(1 << n.min(20)).min(MAX_BACKOFF);
            let wait = timed(&mut r, false, &mut stop).await;
            assert!(wait <= cap, "wait {} was {wait:?}, over {cap:?}", n + 1);
            waits.push(wait);
        }
        // From the 11th on the cap is a minute: 20 full-jitter waits average 10 minutes in all.
        let late: Duration = waits[10..].iter().sum();
        assert!(
            late > Duration::from_secs(200),
            "the waits did not grow: {waits:?}"
        );
        assert!(
            waits[10..].iter().any(|w| *w != waits[10]),
            "no jitter: {waits:?}"
        );
        // After a connection that was up, the next wait is back within reconnect_delay.
        assert!(timed(&mut r, true, &mut stop).await <= first);
        // So after a clean end.
        for _ in 0..12 {
            timed(&mut r, false, &mut stop).await;
        }
        r.reset();
        assert!(timed(&mut r, false, &mut stop).await <= first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_cuts_the_reconnect_wait_short() {
        let mut cut = 0;
        for _ in 0..5 {
            let (tx, mut stop) = watch::channel(false);
            // At the cap: a wait anywhere in [0, 60 s].
            let mut r = Reconnect::new(MAX_BACKOFF);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send_replace(true);
            });
            let wait = timed(&mut r, false, &mut stop).await;
            assert!(wait <= Duration::from_secs(1), "{wait:?}");
            cut += usize::from(wait == Duration::from_secs(1));
        }
        assert!(cut > 0, "no wait was cut short by the stop");
    }
}
