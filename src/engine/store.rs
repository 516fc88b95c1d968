//! The engine's store: agents, servers, agent status and its history, operations and the
//! deployments among them, the agents' events. One schema
//! (`migrations/engine/`) for SQLite (the embedded default) and PostgreSQL, through sqlx's
//! `Any` driver; migrations run at open. Times are Unix milliseconds.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

use crate::config::Database;
use crate::deploy::Phase;

mod sessions;
pub use sessions::SessionRow;

mod releases;
pub use releases::ReleaseRow;

/// A store failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the database file {path} private (0600): {source}")]
    Private {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database ({what}): {source}")]
    Open { what: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error while {what}: {source}")]
    Query {
        what: &'static str,
        source: sqlx::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Creates the SQLite file 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` the
/// database file's mode), and takes group and other access away from an existing one and its
/// `-wal`/`-shm`: it holds key hashes, tokens and every host's status.
fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let private = |path: &Path| -> std::io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o077 != 0 => {
                let mode = meta.permissions().mode() & 0o700;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                tracing::warn!(file = %path.display(), "the database file was readable by others; it is 0600 now");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    };
    let error = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Private { path, source }
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(error(path))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        private(&file).map_err(error(&file))?;
    }
    Ok(())
}

fn ctx(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// The schema, embedded in the binary.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/engine/0001_init.sql"),
    ),
    (
        2,
        "agent connection",
        include_str!("../../migrations/engine/0002_agent_connection.sql"),
    ),
    (
        3,
        "deployments",
        include_str!("../../migrations/engine/0003_deployments.sql"),
    ),
    (
        4,
        "events",
        include_str!("../../migrations/engine/0004_events.sql"),
    ),
    (
        5,
        "sessions",
        include_str!("../../migrations/engine/0005_sessions.sql"),
    ),
    (
        6,
        "releases",
        include_str!("../../migrations/engine/0006_releases.sql"),
    ),
    (
        7,
        "agent binary",
        include_str!("../../migrations/engine/0007_agent_binary.sql"),
    ),
];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// A connected, migrated store.
#[derive(Clone)]
pub struct Store {
    /// Reads.
    pool: AnyPool,
    /// Writes. With SQLite, one connection: writers queue in order in the pool instead of
    /// spinning on SQLite's busy handler, and a command's write waits at most for the one
    /// status batch being written.
    writer: AnyPool,
    /// SQLite (else PostgreSQL): the few statements that differ ask.
    sqlite: bool,
    /// The id of the last event given out ([`Store::next_event_id`]).
    last_event: Arc<AtomicI64>,
}

/// An agent as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub enrolled: bool,
    pub version: Option<String>,
    pub git_version: Option<String>,
    /// SHA-256 of the citrusd binary it runs, as it last reported.
    pub binary_sha256: Option<String>,
    pub connected_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
}

/// The key hashes an agent may authenticate with.
#[derive(Clone, Debug, Default)]
pub struct AgentKeys {
    pub key_hash: Option<String>,
    pub pending_key_hash: Option<String>,
}

/// An agent's enrolment token state.
#[derive(Clone, Debug)]
pub struct EnrollState {
    pub token_hash: Option<String>,
    pub expires_at: Option<i64>,
    pub enrolled_at: Option<i64>,
}

/// One point of status history.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    pub at: i64,
    pub cpu_load: f64,
    pub memory_used: i64,
    pub memory_total: i64,
    pub disk_used: i64,
    pub disk_size: i64,
    pub apps_online: i64,
    pub apps_total: i64,
}

/// A status update to store: the JSON as received and its history figures.
#[derive(Clone, Debug)]
pub struct StatusRecord {
    pub agent_id: String,
    pub json: String,
    pub point: HistoryPoint,
    /// Whether `point` goes into the history too (else only the latest status is replaced):
    /// the hub keeps at most one point per half `status_interval` per agent.
    pub history: bool,
}

/// What an agent's connection writes: applied in batches by one writer task, in the order they
/// were queued, so that a fleet connecting at once costs a few transactions, not one commit per
/// agent, and a command's own write never waits behind thousands of them.
#[derive(Clone, Debug)]
pub enum AgentWrite {
    /// The agent is online through `connection` (increasing within a run of the engine), unless
    /// a newer connection already said so.
    Online {
        agent_id: String,
        connection: u64,
        at: i64,
    },
    /// Its `agent_connected` message.
    Version {
        agent_id: String,
        version: String,
        git_version: Option<String>,
        binary_sha256: Option<String>,
    },
    /// A status update.
    Status(StatusRecord),
    /// An `event` message.
    Event(EventRow),
    /// The agent is offline, if `connection` is still its current one.
    Offline {
        agent_id: String,
        connection: u64,
        at: i64,
    },
}

/// An agent's `event` message as stored (bounded by the hub) and served.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    /// Increasing: a newer event has a greater id.
    pub id: i64,
    pub agent_id: String,
    pub kind: String,
    pub app: Option<String>,
    pub message: String,
    pub at: i64,
}

/// Which events [`Store::list_events`] lists.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventFilter<'a> {
    pub agent_id: Option<&'a str>,
    pub kind: Option<&'a str>,
    /// Only events with a smaller id (the next page of a newest-first list).
    pub before: Option<i64>,
}

/// An operation: a command sent to an agent and its outcome.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationRow {
    pub id: String,
    pub agent_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub command: serde_json::Value,
    pub status: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl OperationRow {
    /// `completed` or `failed`.
    pub fn is_final(&self) -> bool {
        is_final(&self.status)
    }
}

/// Whether an operation status is final.
pub fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed")
}

/// A deployment sent to an agent (`deploy_app`) and how far it got; `id` is its operation's.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRow {
    pub id: String,
    pub agent_id: String,
    pub app: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub phase: String,
    /// As the operation's: `sent`, `starting`, `completed` or `failed`.
    pub status: String,
    pub release_id: Option<String>,
    pub commit: Option<String>,
    /// The last [`DEPLOYMENT_OUTPUT_MAX`] bytes of the output reported.
    pub output: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The deployment a `deploy_app` command starts, recorded with its operation.
#[derive(Clone, Copy, Debug)]
pub struct NewDeployment<'a> {
    pub app: &'a str,
    pub git_ref: Option<&'a str>,
}

/// An agent's `deploy_operation` report (or the engine's own verdict on the deployment).
#[derive(Clone, Copy, Debug)]
pub struct DeploymentReport<'a> {
    pub phase: Phase,
    /// `starting`, `completed` or `failed`.
    pub status: &'a str,
    pub release_id: Option<&'a str>,
    pub commit: Option<&'a str>,
    pub output: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl<'a> DeploymentReport<'a> {
    /// The deployment failed before or without the agent saying so (never sent, timed out).
    pub fn failed(error: &'a str) -> Self {
        Self {
            phase: Phase::Failed,
            status: "failed",
            release_id: None,
            commit: None,
            output: None,
            error: Some(error),
        }
    }
}

/// The most of a deployment's output kept: its tail.
pub const DEPLOYMENT_OUTPUT_MAX: usize = 64 * 1024;

/// The last `max` bytes of `text` at most, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A provisioned server.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRow {
    pub id: String,
    pub name: String,
    pub agent_id: String,
    pub status: String,
    pub droplet_id: Option<i64>,
    pub ip: Option<String>,
    pub region: String,
    pub size: String,
    pub image: String,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Rows deleted per statement by [`Store::prune_history`] and [`Store::prune_events`].
const PRUNE_BATCH: u64 = 1000;

/// An agent's row; `last_seen_at` is the later of its last connect/disconnect and its latest
/// status (which is written at every status, the agent's row is not).
const AGENT_SELECT: &str = "SELECT a.id, a.name, a.status, a.key_hash, a.version, a.git_version, \
     a.binary_sha256, a.connected_at, a.created_at, \
     CASE WHEN a.last_seen_at IS NULL OR s.received_at > a.last_seen_at THEN s.received_at \
     ELSE a.last_seen_at END AS last_seen_at \
     FROM agents a LEFT JOIN agent_status s ON s.agent_id = a.id";
const OPERATION_COLUMNS: &str =
    "id, agent_id, type, command, status, output, error, created_at, updated_at";
const DEPLOYMENT_COLUMNS: &str =
    "id, agent_id, app, git_ref, phase, status, release_id, commit_id, \
                                  output, error, created_at, updated_at";
const SERVER_COLUMNS: &str = "id, name, agent_id, status, droplet_id, ip, region, size, image, \
                              error, created_at, updated_at";
const EVENT_COLUMNS: &str = "id, agent_id, kind, app, message, at";

fn agent(row: &AnyRow) -> std::result::Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        enrolled: row.try_get::<Option<String>, _>("key_hash")?.is_some(),
        version: row.try_get("version")?,
        git_version: row.try_get("git_version")?,
        binary_sha256: row.try_get("binary_sha256")?,
        connected_at: row.try_get("connected_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        created_at: row.try_get("created_at")?,
    })
}

fn operation(row: &AnyRow) -> std::result::Result<OperationRow, sqlx::Error> {
    let command: String = row.try_get("command")?;
    Ok(OperationRow {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        kind: row.try_get("type")?,
        command: serde_json::from_str(&command).unwrap_or(serde_json::Value::String(command)),
        status: row.try_get("status")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn deployment(row: &AnyRow) -> std::result::Result<DeploymentRow, sqlx::Error> {
    Ok(DeploymentRow {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        app: row.try_get("app")?,
        git_ref: row.try_get("git_ref")?,
        phase: row.try_get("phase")?,
        status: row.try_get("status")?,
        release_id: row.try_get("release_id")?,
        commit: row.try_get("commit_id")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn server(row: &AnyRow) -> std::result::Result<ServerRow, sqlx::Error> {
    Ok(ServerRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        agent_id: row.try_get("agent_id")?,
        status: row.try_get("status")?,
        droplet_id: row.try_get("droplet_id")?,
        ip: row.try_get("ip")?,
        region: row.try_get("region")?,
        size: row.try_get("size")?,
        image: row.try_get("image")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn event(row: &AnyRow) -> std::result::Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        kind: row.try_get("kind")?,
        app: row.try_get("app")?,
        message: row.try_get("message")?,
        at: row.try_get("at")?,
    })
}

fn history_point(row: &AnyRow) -> std::result::Result<HistoryPoint, sqlx::Error> {
    Ok(HistoryPoint {
        at: row.try_get("at")?,
        cpu_load: row.try_get("cpu_load")?,
        memory_used: row.try_get("memory_used")?,
        memory_total: row.try_get("memory_total")?,
        disk_used: row.try_get("disk_used")?,
        disk_size: row.try_get("disk_size")?,
        apps_online: row.try_get("apps_online")?,
        apps_total: row.try_get("apps_total")?,
    })
}

/// `sqlite://` URL of `path`, percent-encoding what a URL cannot hold as is (each segment: the
/// slashes stay).
fn sqlite_url(path: &Path) -> String {
    let segments: Vec<String> = path
        .as_os_str()
        .as_encoded_bytes()
        .split(|&b| b == b'/')
        .map(crate::sys::percent_encode)
        .collect();
    format!("sqlite://{}?mode=rwc", segments.join("/"))
}

impl Store {
    /// Connects (creating an SQLite file and its directory if needed) and migrates.
    pub async fn open(database: &Database) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (url, what, connections) = match database {
            Database::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                make_private(path)?;
                (
                    sqlite_url(path),
                    format!("SQLite file {}", path.display()),
                    4,
                )
            }
            Database::Postgres(url) => (url.clone(), "PostgreSQL".to_owned(), 8),
        };
        let sqlite = matches!(database, Database::Sqlite(_));
        let options = AnyPoolOptions::new().after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // WAL: readers never wait for the writer. NORMAL: a commit is not
                    // fsynced on its own (WAL checkpoints are); a crash of the engine loses
                    // nothing, a power cut at most the last commits, never consistency.
                    sqlx::raw_sql(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA busy_timeout = 5000;",
                    )
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            })
        });
        let open = |options: AnyPoolOptions, connections: u32| {
            let (url, what) = (url.clone(), what.clone());
            async move {
                options
                    .max_connections(connections)
                    .connect(&url)
                    .await
                    .map_err(|source| StoreError::Open { what, source })
            }
        };
        let writer = open(options.clone(), if sqlite { 1 } else { connections }).await?;
        // Migrate before readers open: they then see the whole schema.
        migrator().run(&writer).await?;
        let pool = match sqlite {
            true => open(options, connections).await?,
            false => writer.clone(),
        };
        let last_event: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM events")
            .fetch_one(&pool)
            .await
            .and_then(|row| row.try_get("id"))
            .map_err(ctx("reading the last event id"))?;
        Ok(Store {
            pool,
            writer,
            sqlite,
            last_event: Arc::new(AtomicI64::new(last_event)),
        })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    // ---- agents ------------------------------------------------------------------------

    /// Inserts an agent, `offline`, with its key hash or an enrolment token (hash, expiry).
    pub async fn insert_agent(
        &self,
        id: &str,
        name: &str,
        key_hash: Option<&str>,
        enroll: Option<(&str, i64)>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO agents (id, name, key_hash, enroll_token_hash, enroll_expires_at, status, \
             created_at) VALUES ($1, $2, $3, $4, $5, 'offline', $6)",
        )
        .bind(id)
        .bind(name)
        .bind(key_hash)
        .bind(enroll.map(|(hash, _)| hash))
        .bind(enroll.map(|(_, expires)| expires))
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(ctx("inserting an agent"))?;
        Ok(())
    }

    /// Creates the agent or replaces its key hash (the engine host's own agent).
    pub async fn upsert_agent_key(
        &self,
        id: &str,
        name: &str,
        key_hash: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO agents (id, name, key_hash, status, created_at, enrolled_at) \
             VALUES ($1, $2, $3, 'offline', $4, $4) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, key_hash = excluded.key_hash, \
             pending_key_hash = NULL",
        )
        .bind(id)
        .bind(name)
        .bind(key_hash)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(ctx("saving the local agent"))?;
        Ok(())
    }

    /// The agent's key hashes; `None` for an unknown agent.
    pub async fn agent_keys(&self, id: &str) -> Result<Option<AgentKeys>> {
        let row = sqlx::query("SELECT key_hash, pending_key_hash FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading an agent's key"))?;
        row.map(|row| {
            Ok(AgentKeys {
                key_hash: row.try_get("key_hash")?,
                pending_key_hash: row.try_get("pending_key_hash")?,
            })
        })
        .transpose()
        .map_err(ctx("reading an agent's key"))
    }

    /// The agent's enrolment state; `None` for an unknown agent.
    pub async fn enroll_state(&self, id: &str) -> Result<Option<EnrollState>> {
        let row = sqlx::query(
            "SELECT enroll_token_hash, enroll_expires_at, enrolled_at FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx("reading an enrolment"))?;
        row.map(|row| {
            Ok(EnrollState {
                token_hash: row.try_get("enroll_token_hash")?,
                expires_at: row.try_get("enroll_expires_at")?,
                enrolled_at: row.try_get("enrolled_at")?,
            })
        })
        .transpose()
        .map_err(ctx("reading an enrolment"))
    }

    /// Burns the token and sets the key, if the token is still unused and unexpired; `false`
    /// if someone else used it first.
    pub async fn complete_enrolment(
        &self,
        id: &str,
        token_hash: &str,
        key_hash: &str,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE agents SET key_hash = $1, enrolled_at = $2 WHERE id = $3 \
             AND enroll_token_hash = $4 AND enrolled_at IS NULL AND enroll_expires_at > $2",
        )
        .bind(key_hash)
        .bind(now)
        .bind(id)
        .bind(token_hash)
        .execute(&self.writer)
        .await
        .map_err(ctx("completing an enrolment"))?;
        Ok(done.rows_affected() == 1)
    }

    /// At start: no agent is connected yet.
    pub async fn all_offline(&self) -> Result<()> {
        sqlx::query(
            "UPDATE agents SET status = 'offline', connection = NULL \
             WHERE status <> 'offline' OR connection IS NOT NULL",
        )
        .execute(&self.writer)
        .await
        .map_err(ctx("resetting agent states"))?;
        Ok(())
    }

    /// Every agent, oldest first.
    pub async fn list_agents(&self) -> Result<Vec<AgentRow>> {
        let sql = format!("{AGENT_SELECT} ORDER BY a.created_at, a.id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("listing agents"))?;
        rows.iter()
            .map(agent)
            .collect::<std::result::Result<_, _>>()
            .map_err(ctx("listing agents"))
    }

    /// One agent.
    pub async fn get_agent(&self, id: &str) -> Result<Option<AgentRow>> {
        let sql = format!("{AGENT_SELECT} WHERE a.id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading an agent"))?;
        row.as_ref()
            .map(agent)
            .transpose()
            .map_err(ctx("reading an agent"))
    }

    /// Number of agents, and of those online.
    pub async fn agent_counts(&self) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
             COALESCE(SUM(CASE WHEN status = 'online' THEN 1 ELSE 0 END), 0) AS online FROM agents",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(ctx("counting agents"))?;
        let total: i64 = row.try_get("total").map_err(ctx("counting agents"))?;
        let online: i64 = row.try_get("online").map_err(ctx("counting agents"))?;
        Ok((total, online))
    }

    /// Starts a key rotation: `hash` is accepted beside the current key.
    pub async fn set_pending_key(&self, id: &str, hash: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET pending_key_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(ctx("starting a key rotation"))?;
        Ok(())
    }

    /// Ends a key rotation: the pending key becomes the key; the old one is refused from now.
    pub async fn promote_pending_key(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE agents SET key_hash = pending_key_hash, pending_key_hash = NULL \
             WHERE id = $1 AND pending_key_hash IS NOT NULL",
        )
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(ctx("finishing a key rotation"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Abandons a key rotation.
    pub async fn clear_pending_key(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET pending_key_hash = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(ctx("abandoning a key rotation"))?;
        Ok(())
    }

    /// Removes an agent, its status and history.
    pub async fn delete_agent(&self, id: &str) -> Result<()> {
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(ctx("deleting an agent"))?;
        for sql in [
            "DELETE FROM agent_status_history WHERE agent_id = $1",
            "DELETE FROM agent_status WHERE agent_id = $1",
            "DELETE FROM events WHERE agent_id = $1",
            "DELETE FROM agents WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(ctx("deleting an agent"))?;
        }
        tx.commit().await.map_err(ctx("deleting an agent"))
    }

    // ---- status ------------------------------------------------------------------------

    /// Applies a batch of agent writes, in order, a few hundred per transaction (each hold of
    /// the write lock stays short). Of several statuses of one agent in a transaction, the last
    /// is kept as its latest; each one marked `history` becomes a history point.
    pub async fn record_agent_writes(&self, batch: &[AgentWrite]) -> Result<()> {
        for chunk in batch.chunks(200) {
            self.record_agent_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn record_agent_chunk(&self, chunk: &[AgentWrite]) -> Result<()> {
        let what = "storing agent states and status updates";
        let mut tx = self.writer.begin().await.map_err(ctx(what))?;
        let mut statuses = Vec::with_capacity(chunk.len());
        for write in chunk {
            let query = match write {
                AgentWrite::Status(record) => {
                    statuses.push(record);
                    continue;
                }
                AgentWrite::Event(e) => sqlx::query(
                    "INSERT INTO events (id, agent_id, kind, app, message, at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(e.id)
                .bind(e.agent_id.as_str())
                .bind(e.kind.as_str())
                .bind(e.app.as_deref())
                .bind(e.message.as_str())
                .bind(e.at),
                AgentWrite::Online {
                    agent_id,
                    connection,
                    at,
                } => sqlx::query(
                    "UPDATE agents SET status = 'online', connected_at = $1, last_seen_at = $1, \
                     connection = $3 WHERE id = $2 AND (connection IS NULL OR connection < $3)",
                )
                .bind(*at)
                .bind(agent_id.as_str())
                .bind(*connection as i64),
                AgentWrite::Version {
                    agent_id,
                    version,
                    git_version,
                    binary_sha256,
                } => sqlx::query(
                    "UPDATE agents SET version = $1, git_version = $2, binary_sha256 = $4 \
                     WHERE id = $3",
                )
                .bind(version.as_str())
                .bind(git_version.as_deref())
                .bind(agent_id.as_str())
                .bind(binary_sha256.as_deref()),
                AgentWrite::Offline {
                    agent_id,
                    connection,
                    at,
                } => sqlx::query(
                    "UPDATE agents SET status = 'offline', last_seen_at = $1, connection = NULL \
                     WHERE id = $2 AND connection = $3",
                )
                .bind(*at)
                .bind(agent_id.as_str())
                .bind(*connection as i64),
            };
            query.execute(&mut *tx).await.map_err(ctx(what))?;
        }
        record_statuses(&mut tx, &statuses)
            .await
            .map_err(ctx(what))?;
        tx.commit().await.map_err(ctx(what))
    }

    /// The agent's latest status (JSON) and when it came.
    pub async fn latest_status(&self, id: &str) -> Result<Option<(serde_json::Value, i64)>> {
        let what = "reading an agent's status";
        let row = sqlx::query("SELECT status, received_at FROM agent_status WHERE agent_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx(what))?;
        let Some(row) = row else { return Ok(None) };
        let json: String = row.try_get("status").map_err(ctx(what))?;
        let at: i64 = row.try_get("received_at").map_err(ctx(what))?;
        Ok(Some((
            serde_json::from_str(&json).unwrap_or(serde_json::Value::Null),
            at,
        )))
    }

    /// Every agent's latest status (JSON as received), by agent id: the live view's start.
    pub async fn latest_statuses(&self) -> Result<std::collections::HashMap<String, String>> {
        let what = "reading the agents' statuses";
        let rows = sqlx::query("SELECT agent_id, status FROM agent_status")
            .fetch_all(&self.pool)
            .await
            .map_err(ctx(what))?;
        rows.iter()
            .map(|row| Ok((row.try_get("agent_id")?, row.try_get("status")?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(ctx(what))
    }

    /// The agent's history since `since`, oldest first, at most `limit` points (the newest).
    pub async fn history(&self, id: &str, since: i64, limit: i64) -> Result<Vec<HistoryPoint>> {
        let what = "reading status history";
        let rows = sqlx::query(
            "SELECT at, cpu_load, memory_used, memory_total, disk_used, disk_size, apps_online, \
             apps_total FROM agent_status_history WHERE agent_id = $1 AND at >= $2 \
             ORDER BY at DESC LIMIT $3",
        )
        .bind(id)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx(what))?;
        let mut points = rows
            .iter()
            .map(history_point)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(ctx(what))?;
        points.reverse();
        Ok(points)
    }

    /// Deletes the status history older than `before` and returns how many points went, in
    /// statements of [`PRUNE_BATCH`] rows: a fleet's hour of history is hundreds of thousands
    /// of rows, and one statement for all of them would hold the writer (and every command's
    /// write behind it) for seconds.
    pub async fn prune_history(&self, before: i64) -> Result<u64> {
        self.prune("agent_status_history", before, "pruning status history")
            .await
    }

    /// Deletes `table`'s rows whose `at` is before `before`, [`PRUNE_BATCH`] per statement.
    async fn prune(&self, table: &'static str, before: i64, what: &'static str) -> Result<u64> {
        // The row id of each store: SQLite's rowid, PostgreSQL's ctid.
        let row = if self.sqlite { "rowid" } else { "ctid" };
        let sql = format!(
            "DELETE FROM {table} WHERE {row} IN \
             (SELECT {row} FROM {table} WHERE at < $1 LIMIT $2)"
        );
        let mut total = 0;
        loop {
            let done = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(before)
                .bind(PRUNE_BATCH as i64)
                .execute(&self.writer)
                .await
                .map_err(ctx(what))?;
            total += done.rows_affected();
            if done.rows_affected() < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// The agent's history since `from`, averaged over buckets of `bucket` ms aligned on
    /// `from`, oldest first: one point per bucket that has any, `at` its start. Load, memory and
    /// disk are averages (rounded); apps online the fewest and apps total the most seen in the bucket.
    pub async fn history_buckets(
        &self,
        id: &str,
        from: i64,
        bucket: i64,
    ) -> Result<Vec<HistoryPoint>> {
        let what = "reading status history";
        let rows = sqlx::query(
            "SELECT $2 + ((at - $2) / $3) * $3 AS at, \
             CAST(AVG(cpu_load) AS DOUBLE PRECISION) AS cpu_load, \
             CAST(ROUND(AVG(memory_used)) AS BIGINT) AS memory_used, \
             CAST(ROUND(AVG(memory_total)) AS BIGINT) AS memory_total, \
             CAST(ROUND(AVG(disk_used)) AS BIGINT) AS disk_used, \
             CAST(ROUND(AVG(disk_size)) AS BIGINT) AS disk_size, \
             MIN(apps_online) AS apps_online, MAX(apps_total) AS apps_total \
             FROM agent_status_history WHERE agent_id = $1 AND at >= $2 \
             GROUP BY 1 ORDER BY 1",
        )
        .bind(id)
        .bind(from)
        .bind(bucket.max(1))
        .fetch_all(&self.pool)
        .await
        .map_err(ctx(what))?;
        rows.iter()
            .map(history_point)
            .collect::<std::result::Result<_, _>>()
            .map_err(ctx(what))
    }

    // ---- events ------------------------------------------------------------------------

    /// A new event id, greater than every one given before (also by earlier runs).
    pub fn next_event_id(&self) -> i64 {
        self.last_event.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Events matching `filter`, newest first, at most `limit`.
    pub async fn list_events(&self, filter: EventFilter<'_>, limit: i64) -> Result<Vec<EventRow>> {
        let what = "listing events";
        let mut conditions = vec!["id < $1".to_owned()];
        let mut args: Vec<&str> = Vec::new();
        for (column, value) in [("agent_id", filter.agent_id), ("kind", filter.kind)] {
            if let Some(value) = value {
                args.push(value);
                conditions.push(format!("{column} = ${}", args.len() + 2));
            }
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE {} ORDER BY id DESC LIMIT $2",
            conditions.join(" AND ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.before.unwrap_or(i64::MAX))
            .bind(limit);
        for arg in args {
            query = query.bind(arg);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(ctx(what))?;
        rows.iter()
            .map(event)
            .collect::<std::result::Result<_, _>>()
            .map_err(ctx(what))
    }

    /// Deletes the events older than `before`; returns how many went.
    pub async fn prune_events(&self, before: i64) -> Result<u64> {
        self.prune("events", before, "pruning events").await
    }

    // ---- operations --------------------------------------------------------------------

    /// Records a command about to be sent, as `sent`; with `deployment`, the deployment it
    /// starts too (phase `queued`), in the same transaction.
    pub async fn insert_operation(
        &self,
        id: &str,
        agent_id: &str,
        kind: &str,
        command: &serde_json::Value,
        deployment: Option<NewDeployment<'_>>,
        now: i64,
    ) -> Result<()> {
        let what = "recording an operation";
        let mut tx = self.writer.begin().await.map_err(ctx(what))?;
        sqlx::query(
            "INSERT INTO operations (id, agent_id, type, command, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'sent', $5, $5)",
        )
        .bind(id)
        .bind(agent_id)
        .bind(kind)
        .bind(command.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(ctx(what))?;
        if let Some(d) = deployment {
            sqlx::query(
                "INSERT INTO deployments (id, agent_id, app, git_ref, phase, status, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, 'queued', 'sent', $5, $5)",
            )
            .bind(id)
            .bind(agent_id)
            .bind(d.app)
            .bind(d.git_ref)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(ctx(what))?;
        }
        tx.commit().await.map_err(ctx(what))
    }

    /// Applies an agent's report to its operation, unless the operation is already final (a
    /// report repeated after a reconnect changes nothing). Output and error are kept when the
    /// report has none. Returns the operation as it is now if it changed (read by the same
    /// statement: the live streams show it without another query).
    pub async fn report_operation(
        &self,
        id: &str,
        agent_id: &str,
        status: &str,
        output: Option<&str>,
        error: Option<&str>,
        now: i64,
    ) -> Result<Option<OperationRow>> {
        let what = "recording an operation report";
        let sql = format!(
            "UPDATE operations SET status = $1, output = COALESCE($2, output), \
             error = COALESCE($3, error), updated_at = $4 \
             WHERE id = $5 AND agent_id = $6 AND status NOT IN ('completed', 'failed') \
             AND (status <> $1 OR $1 = 'starting') RETURNING {OPERATION_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .bind(output)
            .bind(error)
            .bind(now)
            .bind(id)
            .bind(agent_id)
            .fetch_optional(&self.writer)
            .await
            .map_err(ctx(what))?;
        row.as_ref().map(operation).transpose().map_err(ctx(what))
    }

    /// Fails every unfinished operation created before `before`; returns their ids.
    pub async fn fail_stale_operations(
        &self,
        before: i64,
        reason: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        let what = "timing out operations";
        let rows = sqlx::query(
            "SELECT id, agent_id FROM operations \
             WHERE status NOT IN ('completed', 'failed') AND created_at < $1",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx(what))?;
        let mut failed = Vec::new();
        for row in rows {
            let id: String = row.try_get("id").map_err(ctx(what))?;
            let agent_id: String = row.try_get("agent_id").map_err(ctx(what))?;
            let done = sqlx::query(
                "UPDATE operations SET status = 'failed', error = $1, updated_at = $2 \
                 WHERE id = $3 AND status NOT IN ('completed', 'failed')",
            )
            .bind(reason)
            .bind(now)
            .bind(&id)
            .execute(&self.writer)
            .await
            .map_err(ctx(what))?;
            if done.rows_affected() == 1 {
                // Its deployment, if it is one, ends with it.
                self.report_deployment(&id, &agent_id, &DeploymentReport::failed(reason), now)
                    .await?;
                failed.push(id);
            }
        }
        Ok(failed)
    }

    /// One operation.
    pub async fn get_operation(&self, id: &str) -> Result<Option<OperationRow>> {
        let sql = format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading an operation"))?;
        row.as_ref()
            .map(operation)
            .transpose()
            .map_err(ctx("reading an operation"))
    }

    /// The newest operations, of one agent or of all, newest first.
    pub async fn list_operations(
        &self,
        agent_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OperationRow>> {
        let what = "listing operations";
        let rows = match agent_id {
            Some(agent) => {
                let sql = format!(
                    "SELECT {OPERATION_COLUMNS} FROM operations WHERE agent_id = $1 \
                     ORDER BY created_at DESC LIMIT $2"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(agent)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                let sql = format!(
                    "SELECT {OPERATION_COLUMNS} FROM operations ORDER BY created_at DESC LIMIT $1"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(ctx(what))?;
        rows.iter()
            .map(operation)
            .collect::<std::result::Result<_, _>>()
            .map_err(ctx(what))
    }

    // ---- deployments -------------------------------------------------------------------

    /// Applies a report to deployment `id` of `agent_id`, unless it has ended or is already
    /// past the reported phase: a report queued in the agent's outbox and sent late never moves
    /// it back. Release id and commit are kept when the report has none; output (its last
    /// [`DEPLOYMENT_OUTPUT_MAX`] bytes) and error replace earlier ones when given. Returns
    /// whether the deployment changed (`false` for an unknown id, too).
    pub async fn report_deployment(
        &self,
        id: &str,
        agent_id: &str,
        report: &DeploymentReport<'_>,
        now: i64,
    ) -> Result<bool> {
        // The phases it may move from: not final, not after the reported one (never empty:
        // `queued` comes first). Static names, safe to inline.
        let from: Vec<String> = Phase::ALL
            .iter()
            .filter(|p| !p.is_final() && **p <= report.phase)
            .map(|p| format!("'{}'", p.as_str()))
            .collect();
        let sql = format!(
            "UPDATE deployments SET phase = $1, status = $2, \
             release_id = COALESCE($3, release_id), commit_id = COALESCE($4, commit_id), \
             output = COALESCE($5, output), error = COALESCE($6, error), updated_at = $7 \
             WHERE id = $8 AND agent_id = $9 AND status NOT IN ('completed', 'failed') \
             AND phase IN ({})",
            from.join(", ")
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(report.phase.as_str())
            .bind(report.status)
            .bind(report.release_id)
            .bind(report.commit)
            .bind(report.output.map(|o| tail(o, DEPLOYMENT_OUTPUT_MAX)))
            .bind(report.error)
            .bind(now)
            .bind(id)
            .bind(agent_id)
            .execute(&self.writer)
            .await
            .map_err(ctx("recording a deployment report"))?;
        Ok(done.rows_affected() == 1)
    }

    /// One deployment.
    pub async fn get_deployment(&self, id: &str) -> Result<Option<DeploymentRow>> {
        let what = "reading a deployment";
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx(what))?;
        row.as_ref().map(deployment).transpose().map_err(ctx(what))
    }

    /// The agent's newest deployments, newest first.
    pub async fn list_deployments(&self, agent_id: &str, limit: i64) -> Result<Vec<DeploymentRow>> {
        let what = "listing deployments";
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE agent_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(agent_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx(what))?;
        rows.iter()
            .map(deployment)
            .collect::<std::result::Result<_, _>>()
            .map_err(ctx(what))
    }

    // ---- servers -----------------------------------------------------------------------

    /// Inserts a server in `creating`.
    pub async fn insert_server(&self, s: &ServerRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO servers (id, name, agent_id, status, region, size, image, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.agent_id)
        .bind(&s.status)
        .bind(&s.region)
        .bind(&s.size)
        .bind(&s.image)
        .bind(s.created_at)
        .execute(&self.writer)
        .await
        .map_err(ctx("inserting a server"))?;
        Ok(())
    }

    /// Every server, oldest first.
    pub async fn list_servers(&self) -> Result<Vec<ServerRow>> {
        self.servers_where("1 = 1", None).await
    }

    /// Servers the provisioning loop still has to move.
    pub async fn servers_in_progress(&self) -> Result<Vec<ServerRow>> {
        self.servers_where(
            "status IN ('creating', 'provisioning', 'initializing')",
            None,
        )
        .await
    }

    /// One server.
    pub async fn get_server(&self, id: &str) -> Result<Option<ServerRow>> {
        Ok(self.servers_where("id = $1", Some(id)).await?.pop())
    }

    /// The server whose agent is `agent_id`.
    pub async fn server_of_agent(&self, agent_id: &str) -> Result<Option<ServerRow>> {
        Ok(self
            .servers_where("agent_id = $1", Some(agent_id))
            .await?
            .pop())
    }

    async fn servers_where(&self, condition: &str, arg: Option<&str>) -> Result<Vec<ServerRow>> {
        let sql = format!(
            "SELECT {SERVER_COLUMNS} FROM servers WHERE {condition} ORDER BY created_at, id"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(arg) = arg {
            query = query.bind(arg);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("reading servers"))?;
        rows.iter()
            .map(server)
            .collect::<std::result::Result<_, _>>()
            .map_err(ctx("reading servers"))
    }

    /// Moves a server to `status` if it is in one of `from`, with an error message (or none)
    /// and, when given, its droplet and IP. Returns whether it moved.
    pub async fn move_server(
        &self,
        id: &str,
        from: &[&str],
        status: &str,
        update: ServerUpdate<'_>,
        now: i64,
    ) -> Result<bool> {
        let mut sql = String::from(
            "UPDATE servers SET status = $1, updated_at = $2, error = $3, \
             droplet_id = COALESCE($4, droplet_id), ip = COALESCE($5, ip) WHERE id = $6",
        );
        if !from.is_empty() {
            let list: Vec<String> = from.iter().map(|s| format!("'{s}'")).collect();
            sql.push_str(&format!(" AND status IN ({})", list.join(", ")));
        }
        debug_assert!(from
            .iter()
            .all(|s| s.bytes().all(|b| b.is_ascii_lowercase())));
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .bind(now)
            .bind(update.error)
            .bind(update.droplet_id)
            .bind(update.ip)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(ctx("updating a server"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets a server's `error` without moving it.
    pub async fn note_server_error(&self, id: &str, error: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE servers SET error = $1, updated_at = $2 WHERE id = $3")
            .bind(error)
            .bind(now)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(ctx("updating a server"))?;
        Ok(())
    }

    /// Removes a server.
    pub async fn delete_server(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(ctx("deleting a server"))?;
        Ok(())
    }
}

/// Optional fields of [`Store::move_server`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerUpdate<'a> {
    pub error: Option<&'a str>,
    pub droplet_id: Option<i64>,
    pub ip: Option<&'a str>,
}

/// The statuses of one transaction: the latest of each agent (the last one wins) and the
/// history points (those marked `history`), in multi-row statements (one round trip per chunk instead of one per row).
async fn record_statuses(
    conn: &mut sqlx::AnyConnection,
    batch: &[&StatusRecord],
) -> std::result::Result<(), sqlx::Error> {
    let mut latest: std::collections::HashMap<&str, &StatusRecord> =
        std::collections::HashMap::with_capacity(batch.len());
    for record in batch {
        latest.insert(&record.agent_id, *record);
    }
    let latest: Vec<&StatusRecord> = latest.into_values().collect();
    for chunk in latest.chunks(200) {
        let mut sql =
            String::from("INSERT INTO agent_status (agent_id, status, received_at) VALUES ");
        for i in 0..chunk.len() {
            let n = i * 3;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${}, ${}, ${})", n + 1, n + 2, n + 3));
        }
        sql.push_str(
            " ON CONFLICT (agent_id) DO UPDATE SET status = excluded.status, \
             received_at = excluded.received_at",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for record in chunk {
            query = query
                .bind(record.agent_id.as_str())
                .bind(record.json.as_str())
                .bind(record.point.at);
        }
        query.execute(&mut *conn).await?;
    }
    let points: Vec<&StatusRecord> = batch.iter().copied().filter(|r| r.history).collect();
    for chunk in points.chunks(100) {
        let mut sql = String::from(
            "INSERT INTO agent_status_history (agent_id, at, cpu_load, memory_used, \
             memory_total, disk_used, disk_size, apps_online, apps_total) VALUES ",
        );
        for i in 0..chunk.len() {
            let n = i * 9;
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for k in 1..=9 {
                if k > 1 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", n + k));
            }
            sql.push(')');
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for record in chunk {
            let p = &record.point;
            query = query
                .bind(record.agent_id.as_str())
                .bind(p.at)
                .bind(p.cpu_load)
                .bind(p.memory_used)
                .bind(p.memory_total)
                .bind(p.disk_used)
                .bind(p.disk_size)
                .bind(p.apps_online)
                .bind(p.apps_total);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: i64) -> AgentWrite {
        AgentWrite::Status(StatusRecord {
            agent_id: "a".into(),
            json: "{}".into(),
            point: HistoryPoint {
                at,
                cpu_load: 0.5,
                memory_used: 1,
                memory_total: 2,
                disk_used: 3,
                disk_size: 4,
                apps_online: 1,
                apps_total: 1,
            },
            history: true,
        })
    }

    #[test]
    fn sqlite_urls_keep_slashes_and_encode_the_rest() {
        assert_eq!(
            sqlite_url(Path::new("/var/lib/citrus/engine.db")),
            "sqlite:///var/lib/citrus/engine.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url(Path::new("/tmp/a b/é?#.db")),
            "sqlite:///tmp/a%20b/%C3%A9%3F%23.db?mode=rwc"
        );
    }

    #[test]
    fn tail_keeps_the_end_at_a_char_boundary() {
        assert_eq!(tail("abcdef", 10), "abcdef");
        assert_eq!(tail("abcdef", 2), "ef");
        assert_eq!(tail("abcdef", 0), "");
        // "é" is two bytes: a cut inside it starts after it.
        assert_eq!(tail("aébc", 4), "ébc");
        assert_eq!(tail("aébc", 3), "bc");
    }

    async fn store_with_deployment(dir: &Path) -> Store {
        let store = Store::open(&Database::Sqlite(dir.join("engine.db")))
            .await
            .unwrap();
        let deployment = NewDeployment {
            app: "web",
            git_ref: Some("v1"),
        };
        store
            .insert_operation(
                "d1",
                "agent",
                "deploy_app",
                &serde_json::json!({}),
                Some(deployment),
                100,
            )
            .await
            .unwrap();
        store
    }

    fn progress(phase: Phase) -> DeploymentReport<'static> {
        DeploymentReport {
            phase,
            status: if phase.is_final() {
                "completed"
            } else {
                "starting"
            },
            release_id: None,
            commit: None,
            output: None,
            error: None,
        }
    }

    #[tokio::test]
    async fn deployment_phases_only_move_forward_and_stop_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_deployment(dir.path()).await;
        let d = store.get_deployment("d1").await.unwrap().unwrap();
        assert_eq!(
            (d.phase.as_str(), d.status.as_str(), d.git_ref.as_deref()),
            ("queued", "sent", Some("v1"))
        );
        // Another agent cannot report it; an unknown id changes nothing.
        let building = progress(Phase::Building);
        assert!(!store
            .report_deployment("d1", "other", &building, 1)
            .await
            .unwrap());
        assert!(!store
            .report_deployment("nope", "agent", &building, 1)
            .await
            .unwrap());
        assert!(store
            .report_deployment("d1", "agent", &building, 200)
            .await
            .unwrap());
        // The same phase again (a resumed build) is progress; an earlier one is a late report.
        assert!(store
            .report_deployment("d1", "agent", &building, 250)
            .await
            .unwrap());
        let pulling = progress(Phase::PullingSource);
        assert!(!store
            .report_deployment("d1", "agent", &pulling, 260)
            .await
            .unwrap());
        let done = DeploymentReport {
            release_id: Some("r1"),
            commit: Some("abc1234"),
            output: Some("ok"),
            ..progress(Phase::Completed)
        };
        assert!(store
            .report_deployment("d1", "agent", &done, 300)
            .await
            .unwrap());
        // Ended: neither a late phase nor another end moves it.
        let checking = progress(Phase::HealthCheck);
        assert!(!store
            .report_deployment("d1", "agent", &checking, 400)
            .await
            .unwrap());
        let failed = DeploymentReport::failed("late");
        assert!(!store
            .report_deployment("d1", "agent", &failed, 400)
            .await
            .unwrap());
        let d = store.get_deployment("d1").await.unwrap().unwrap();
        assert_eq!(
            (d.phase.as_str(), d.status.as_str()),
            ("completed", "completed")
        );
        assert_eq!(
            (d.release_id.as_deref(), d.commit.as_deref()),
            (Some("r1"), Some("abc1234"))
        );
        assert_eq!((d.output.as_deref(), d.error), (Some("ok"), None));
        assert_eq!((d.created_at, d.updated_at), (100, 300));
    }

    #[tokio::test]
    async fn deployment_output_is_kept_to_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_deployment(dir.path()).await;
        let output = format!("{}END", "x".repeat(DEPLOYMENT_OUTPUT_MAX));
        let building = DeploymentReport {
            output: Some(&output),
            ..progress(Phase::Building)
        };
        assert!(store
            .report_deployment("d1", "agent", &building, 200)
            .await
            .unwrap());
        let d = store.get_deployment("d1").await.unwrap().unwrap();
        let kept = d.output.unwrap();
        assert_eq!(kept.len(), DEPLOYMENT_OUTPUT_MAX);
        assert!(kept.ends_with("xEND"));
    }

    #[tokio::test]
    async fn a_timed_out_deployment_fails_with_its_operation() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_deployment(dir.path()).await;
        let building = progress(Phase::Building);
        assert!(store
            .report_deployment("d1", "agent", &building, 200)
            .await
            .unwrap());
        let ids = store
            .fail_stale_operations(150, "no answer", 500)
            .await
            .unwrap();
        assert_eq!(ids, ["d1"]);
        let d = store.get_deployment("d1").await.unwrap().unwrap();
        assert_eq!((d.phase.as_str(), d.status.as_str()), ("failed", "failed"));
        assert_eq!(d.error.as_deref(), Some("no answer"));
        // Listed newest first, with what the API shows.
        let list = store.list_deployments("agent", 10).await.unwrap();
        assert_eq!(list.len(), 1);
        let json = serde_json::to_value(&list[0]).unwrap();
        assert_eq!(json["ref"], "v1");
        assert_eq!(json["agentId"], "agent");
        assert_eq!(json["updatedAt"], 500);
        assert!(store
            .list_deployments("other", 10)
            .await
            .unwrap()
            .is_empty());
    }

    fn event_write(store: &Store, agent: &str, kind: &str, at: i64) -> AgentWrite {
        AgentWrite::Event(EventRow {
            id: store.next_event_id(),
            agent_id: agent.into(),
            kind: kind.into(),
            app: None,
            message: format!("{kind} at {at}"),
            at,
        })
    }

    #[tokio::test]
    async fn events_are_listed_newest_first_filtered_paged_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::Sqlite(dir.path().join("engine.db"));
        let store = Store::open(&db).await.unwrap();
        let writes: Vec<AgentWrite> = (0..1500)
            .map(|i| {
                let agent = if i % 3 == 0 { "a" } else { "b" };
                let kind = if i % 2 == 0 { "errored" } else { "disk" };
                event_write(&store, agent, kind, i)
            })
            .collect();
        store.record_agent_writes(&writes).await.unwrap();
        let all = store
            .list_events(EventFilter::default(), 2000)
            .await
            .unwrap();
        assert_eq!(all.len(), 1500);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        assert_eq!(all[0].at, 1499);
        let filter = EventFilter {
            agent_id: Some("a"),
            kind: Some("errored"),
            before: None,
        };
        let page = store.list_events(filter, 10).await.unwrap();
        assert_eq!(page.len(), 10);
        assert!(page
            .iter()
            .all(|e| e.agent_id == "a" && e.kind == "errored"));
        assert_eq!(page[0].at, 1494);
        let next = EventFilter {
            before: Some(page[9].id),
            ..filter
        };
        let page2 = store.list_events(next, 10).await.unwrap();
        assert_eq!(page2[0].at, page[9].at - 6);
        // Older than 1,200: 1,200 events go, in two batches.
        assert_eq!(store.prune_events(1200).await.unwrap(), 1200);
        let left = store
            .list_events(EventFilter::default(), 2000)
            .await
            .unwrap();
        assert_eq!(left.len(), 300);
        store.close().await;
        // Ids keep increasing after a restart.
        let store = Store::open(&db).await.unwrap();
        assert_eq!(store.next_event_id(), all[0].id + 1);
    }

    #[tokio::test]
    async fn history_buckets_average_each_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Database::Sqlite(dir.path().join("engine.db")))
            .await
            .unwrap();
        let write = |at: i64, load: f64, used: i64, online: i64| {
            AgentWrite::Status(StatusRecord {
                agent_id: "a".into(),
                json: "{}".into(),
                point: HistoryPoint {
                    at,
                    cpu_load: load,
                    memory_used: used,
                    memory_total: 100,
                    disk_used: used * 2,
                    disk_size: 1000,
                    apps_online: online,
                    apps_total: 3,
                },
                history: true,
            })
        };
        let writes = [
            write(990, 99.0, 99, 0),
            write(1000, 10.0, 10, 3),
            write(1050, 20.0, 20, 2),
            write(1099, 30.0, 31, 3),
            write(1100, 50.0, 50, 1),
            write(1350, 70.0, 70, 3),
        ];
        store.record_agent_writes(&writes).await.unwrap();
        let points = store.history_buckets("a", 1000, 100).await.unwrap();
        let got: Vec<(i64, f64, i64, i64, i64)> = points
            .iter()
            .map(|p| (p.at, p.cpu_load, p.memory_used, p.disk_used, p.apps_online))
            .collect();
        // Before `from`: left out. 1000-1099: averages (20, 20.33 → 20, 40.67 → 41) and the
        // fewest online; an empty bucket (1200) has no point.
        assert_eq!(
            got,
            [
                (1000, 20.0, 20, 41, 2),
                (1100, 50.0, 50, 100, 1),
                (1300, 70.0, 70, 140, 3)
            ]
        );
        assert!(store
            .history_buckets("other", 1000, 100)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn history_is_pruned_in_batches_down_to_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Database::Sqlite(dir.path().join("engine.db")))
            .await
            .unwrap();
        // 2,500 old points (three batches) and 10 recent ones.
        let writes: Vec<AgentWrite> = (0..2500)
            .map(point)
            .chain((10_000..10_010).map(point))
            .collect();
        store.record_agent_writes(&writes).await.unwrap();
        assert_eq!(store.prune_history(10_000).await.unwrap(), 2500);
        let left = store.history("a", 0, 10_000).await.unwrap();
        assert_eq!(left.len(), 10);
        assert!(left.iter().all(|p| p.at >= 10_000));
        assert_eq!(store.prune_history(10_000).await.unwrap(), 0);
    }
}
