//! `citrus-engine`, the fleet hub (SPEC 4): the agents' WebSocket endpoint, enrolment, the admin
//! API, the store, and DigitalOcean provisioning with cloud-init.

pub mod api;
pub mod auth;
pub mod cloud_init;
pub mod digitalocean;
pub mod error;
pub mod hub;
pub mod live;
pub mod panel;
pub mod provision;
pub mod releases;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, Notify};

use crate::config::{format_duration, EngineConfig};
use crate::sys::fs::write_atomic;
use error::ApiError;
use store::{AgentRow, AgentStatus, AgentWrite, Store, StoreError};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no admin token: set admin_token_file in {config} or CITRUS_ADMIN_TOKEN in the environment"
    )]
    NoAdminToken { config: String },
    #[error("cannot {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is empty: put the {what} in it, or delete it to have one generated")]
    EmptyFile { what: &'static str, path: String },
    #[error("cannot listen on {addr}: {source} (is another engine running? change `listen` or --listen)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("DigitalOcean client: {0}")]
    DigitalOcean(#[from] digitalocean::DoError),
    #[error("host profile {path}: {why}")]
    HostProfile { path: String, why: String },
}

/// Unix milliseconds now.
pub fn now() -> i64 {
    crate::sys::now_ms() as i64
}

/// What every handler and task shares.
pub struct Engine {
    pub config: EngineConfig,
    pub store: Store,
    pub hub: hub::Hub,
    /// The fleet in memory and the panel's live streams.
    pub live: live::Live,
    pub limiter: auth::FailureLimiter,
    /// SHA-256 of the admin token.
    admin_token_hash: String,
    /// `None` without `DO_API_TOKEN`: provisioning is refused with a message saying so.
    pub digitalocean: Option<digitalocean::Client>,
    /// Wakes the provisioning loop.
    pub provision_wake: Notify,
    /// Servers whose droplet is being created by this process.
    creating: provision::Creating,
    /// The checked host profile (`host_profile`), empty without one.
    pub host_profile: String,
    /// To the task that applies agents' writes in batches ([`hub::agent_writer`]).
    writes: mpsc::Sender<AgentWrite>,
}

impl Engine {
    /// Queues an agent's write for the batch writer; waits while the queue is full.
    pub async fn write(&self, write: AgentWrite) {
        if self.writes.send(write).await.is_err() {
            tracing::warn!("an agent write was dropped: the engine is shutting down");
        }
    }

    /// Creates an agent with a single-use enrolment token; returns the token and its expiry.
    pub async fn new_enroll_token(
        &self,
        id: &str,
        name: &str,
    ) -> Result<(String, i64), StoreError> {
        let token = auth::random_hex(32);
        let at = now();
        let expires_at = at + self.config.enroll_token_ttl.as_millis() as i64;
        self.store
            .insert_agent(id, name, None, Some((&auth::hash(&token), expires_at)), at)
            .await?;
        self.live.created(&AgentRow {
            id: id.to_owned(),
            name: name.to_owned(),
            status: AgentStatus::Offline,
            enrolled: false,
            version: None,
            git_version: None,
            binary_sha256: None,
            connected_at: None,
            last_seen_at: None,
            created_at: at,
        });
        Ok((token, expires_at))
    }
}

/// Reads a secret file, or creates it with a new random secret (0600, atomically).
fn read_or_create_secret(path: &Path, what: &'static str) -> Result<String, EngineError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Err(EngineError::EmptyFile {
            what,
            path: path.display().to_string(),
        }),
        Ok(text) => Ok(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = auth::new_key();
            let file_err = |source| EngineError::File {
                what: "write",
                path: path.display().to_string(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(file_err)?;
            }
            write_atomic(path, secret.as_bytes(), 0o600).map_err(file_err)?;
            tracing::info!(file = %path.display(), "generated a new {what}");
            Ok(secret)
        }
        Err(source) => Err(EngineError::File {
            what: "read",
            path: path.display().to_string(),
            source,
        }),
    }
}

fn admin_token(config: &EngineConfig) -> Result<String, EngineError> {
    if let Some(file) = &config.admin_token_file {
        return read_or_create_secret(file, "admin token");
    }
    match std::env::var("CITRUS_ADMIN_TOKEN") {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        _ => Err(EngineError::NoAdminToken {
            config: config.path.display().to_string(),
        }),
    }
}

/// A bound engine, ready to serve.
pub struct Bound {
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    writes_rx: mpsc::Receiver<AgentWrite>,
}

impl Bound {
    /// The address actually listened on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Opens the store (migrating it), registers the local agent, and binds the listener.
pub async fn bind(config: EngineConfig) -> Result<Bound, EngineError> {
    let admin_token_hash = auth::hash(&admin_token(&config)?);
    let store = Store::open(&config.database).await?;
    store.all_offline().await?;
    releases::clean_uploads(&config.releases_dir);
    let host_profile = provision::load_host_profile(&config)?;
    if let Some(local) = &config.local_agent {
        let key = read_or_create_secret(&local.key_file, "agent key")?;
        store
            .upsert_agent_key(&local.id, &local.name, &auth::hash(&key), now())
            .await?;
    }
    let digitalocean = match std::env::var("DO_API_TOKEN") {
        Ok(token) if !token.trim().is_empty() => {
            let d = &config.digitalocean;
            let client = digitalocean::Client::new(&d.api_base, token.trim().to_owned())?
                .with_timeout(d.timeout)
                .with_retry(d.attempts, Duration::from_secs(1));
            Some(client)
        }
        _ => None,
    };
    let live = live::Live::load(&store).await?;
    let listener = listen(config.listen).map_err(|source| EngineError::Listen {
        addr: config.listen,
        source,
    })?;
    let (writes, writes_rx) = mpsc::channel(20_000);
    let engine = Arc::new(Engine {
        limiter: auth::FailureLimiter::new(config.auth_max_failures, config.auth_failure_window),
        config,
        store,
        hub: hub::Hub::default(),
        live,
        admin_token_hash,
        digitalocean,
        provision_wake: Notify::new(),
        creating: provision::Creating::default(),
        host_profile,
        writes,
    });
    Ok(Bound {
        engine,
        listener,
        writes_rx,
    })
}

/// A listener with a backlog for a fleet: when the engine restarts, thousands of agents
/// reconnect within seconds, and the default backlog (128) would drop their SYNs into 1 s
/// retransmits.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// HTTP connections the engine serves at once (lowered to a quarter of the open-files limit, see
/// [`crate::sys::connection_cap`]); more are accepted and closed at once. Agents' WebSockets leave
/// the count once upgraded: they are bounded by the enrolled agents (one each).
pub const MAX_HTTP_CONNECTIONS: usize = 1024;

/// The bounds of the engine's listener: a request head gets 10 s (agents come over the Internet),
/// which is also how long an idle keep-alive connection is kept.
pub fn http_limits() -> crate::sys::serve::Limits {
    crate::sys::serve::Limits {
        max_connections: crate::sys::connection_cap(MAX_HTTP_CONNECTIONS),
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
    }
}

/// The whole HTTP surface.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/agent", get(hub::upgrade))
        .route("/agent/enroll", post(api::enroll))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .merge(api::admin_routes(engine.clone()))
        .merge(releases::public_routes())
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "no such route; the admin API is under /admin/ (see the README)",
            )
        })
        .layer(axum::middleware::from_fn(|req, next| {
            crate::sys::serve::json_errors(req, next, error::shape_error)
        }))
        // The web panel answers pages, not JSON: outside the layer above.
        .merge(panel::routes())
        .with_state(engine)
}

impl Bound {
    /// Serves until `shutdown` resolves; then closes agent connections (1001) and flushes the
    /// status updates received.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), EngineError> {
        let Bound {
            engine,
            listener,
            writes_rx,
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(hub::agent_writer(engine.clone(), writes_rx, stop_rx));
        let tasks = [
            tokio::spawn(provision::run(engine.clone())),
            tokio::spawn(timeout_operations(engine.clone())),
            tokio::spawn(prune_history(engine.clone())),
            tokio::spawn(live::run(engine.clone())),
        ];
        tracing::info!(
            listen = %listener.local_addr().map_err(EngineError::Serve)?,
            public_url = %engine.config.public_url,
            "citrus-engine ready"
        );
        let closer = engine.clone();
        let (down_tx, mut down_rx) = tokio::sync::watch::channel(false);
        let on_shutdown = async move {
            shutdown.await;
            closer.hub.close_all("citrus-engine is shutting down");
            closer.live.streams.close_all();
            let _ = down_tx.send(true);
        };
        let limits = http_limits();
        tracing::debug!(?limits, "HTTP listener limits");
        let app = router(engine.clone());
        let server = crate::sys::serve::serve(listener, app, limits, |_, addr| addr, on_shutdown);
        // Requests in flight (long polls) get a few seconds to finish, not forever.
        let grace = async move {
            let _ = down_rx.wait_for(|down| *down).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        };
        tokio::select! {
            () = server => {}
            _ = grace => {}
        };
        for task in tasks {
            task.abort();
        }
        // Connections are gone: the writer stores what is queued, then ends.
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
        Ok(())
    }
}

/// Fails operations with no final report within `command_timeout` (also those left over from a
/// previous run of the engine).
async fn timeout_operations(engine: Arc<Engine>) {
    let timeout = engine.config.command_timeout;
    let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let reason = format!(
        "no answer from the agent within {}",
        format_duration(timeout)
    );
    loop {
        let at = now();
        match engine
            .store
            .fail_stale_operations(at - timeout.as_millis() as i64, &reason, at)
            .await
        {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(operation = %id, "operation timed out");
                    engine.hub.operation_changed(&id);
                    engine.live.operation_changed(&engine.store, &id).await;
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Deletes status history and events older than `status_history_retention`.
async fn prune_history(engine: Arc<Engine>) {
    let retention = engine.config.status_history_retention;
    // Often, so that each pass deletes little (a minute of history at most, for long retentions).
    let every = (retention / 10).clamp(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        match engine
            .store
            .prune_history(now() - retention.as_millis() as i64)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!("pruned {n} status history points"),
            Err(e) => tracing::error!("{e}"),
        }
        live::events::prune(&engine).await;
        tokio::time::sleep(every).await;
    }
}
