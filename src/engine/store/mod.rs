//! The engine's store: one [`Store`] over one schema (`migrations/engine/`) for SQLite (the
//! embedded default) and PostgreSQL, through sqlx's `Any` driver; migrations run at open. Times
//! are Unix milliseconds. This file owns the connection, the migrations and what the tables
//! share (row helpers, the status words, [`OperationStatus`] of operations and deployments);
//! each table's rows and statements live in its own file: agents (and their batched writes),
//! their status history, events, operations, deployments, servers, panel sessions, releases.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

use crate::config::Database;
use crate::deploy::Phase;
use crate::fleet::protocol;

/// Defines a word kept in a text column and shown by the API as the same word (a status): the
/// enum (serialized as its words), `ALL`, `as_str`, `Display`, and [`Word`] to read it back.
macro_rules! stored_words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The word as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::engine::store::Word for $name {
            const ALL: &'static [Self] = $name::ALL;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }
    };
}

/// A value kept in a text column as one of a fixed set of words.
trait Word: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

impl Word for Phase {
    const ALL: &'static [Self] = &Phase::ALL;
    fn as_str(self) -> &'static str {
        Phase::as_str(self)
    }
}

/// Column `column` of `row` read back into its [`Word`]; a word it does not know (a database
/// written by something else) is a decode error naming it.
fn word<T: Word>(row: &AnyRow, column: &str) -> std::result::Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    T::ALL
        .iter()
        .copied()
        .find(|w| w.as_str() == text)
        .ok_or_else(|| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: format!("unknown value {text:?}").into(),
        })
}

stored_words! {
    /// Where an operation is: sent to the agent, started by it, or ended.
    OperationStatus {
        Sent = "sent",
        Starting = "starting",
        Completed = "completed",
        Failed = "failed",
    }
}

impl OperationStatus {
    /// `completed` or `failed`: no report changes it any more.
    pub fn is_final(self) -> bool {
        matches!(self, OperationStatus::Completed | OperationStatus::Failed)
    }
}

/// The status an agent reports.
impl From<protocol::OperationStatus> for OperationStatus {
    fn from(status: protocol::OperationStatus) -> Self {
        match status {
            protocol::OperationStatus::Starting => OperationStatus::Starting,
            protocol::OperationStatus::Completed => OperationStatus::Completed,
            protocol::OperationStatus::Failed => OperationStatus::Failed,
        }
    }
}

mod agents;
pub use agents::{AgentKeys, AgentRow, AgentStatus, AgentWrite, EnrollState};

mod history;
pub use history::{HistoryPoint, StatusRecord};

mod events;
pub use events::{EventFilter, EventRow};

mod operations;
pub use operations::OperationRow;

mod deployments;
pub use deployments::{DeploymentReport, DeploymentRow, NewDeployment, DEPLOYMENT_OUTPUT_MAX};

mod servers;
pub use servers::{ServerRow, ServerStatus, ServerUpdate};

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
        include_str!("../../../migrations/engine/0001_init.sql"),
    ),
    (
        2,
        "agent connection",
        include_str!("../../../migrations/engine/0002_agent_connection.sql"),
    ),
    (
        3,
        "deployments",
        include_str!("../../../migrations/engine/0003_deployments.sql"),
    ),
    (
        4,
        "events",
        include_str!("../../../migrations/engine/0004_events.sql"),
    ),
    (
        5,
        "sessions",
        include_str!("../../../migrations/engine/0005_sessions.sql"),
    ),
    (
        6,
        "releases",
        include_str!("../../../migrations/engine/0006_releases.sql"),
    ),
    (
        7,
        "agent binary",
        include_str!("../../../migrations/engine/0007_agent_binary.sql"),
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

/// Rows deleted per statement by [`Store::prune_history`] and [`Store::prune_events`].
const PRUNE_BATCH: u64 = 1000;

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
}

/// A store on a new SQLite file in `dir`.
#[cfg(test)]
async fn test_store(dir: &Path) -> Store {
    Store::open(&Database::Sqlite(dir.join("engine.db")))
        .await
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of `T`, checked to be what it serializes to.
    fn words<T: Word + serde::Serialize>() -> Vec<&'static str> {
        let words: Vec<&str> = T::ALL.iter().map(|w| w.as_str()).collect();
        let shown: Vec<serde_json::Value> = T::ALL
            .iter()
            .map(|w| serde_json::to_value(w).unwrap())
            .collect();
        assert_eq!(shown, words);
        words
    }

    #[test]
    fn statuses_are_stored_and_shown_as_their_words() {
        assert_eq!(words::<AgentStatus>(), ["online", "offline"]);
        assert_eq!(
            words::<OperationStatus>(),
            ["sent", "starting", "completed", "failed"]
        );
        assert_eq!(
            words::<ServerStatus>(),
            [
                "creating",
                "provisioning",
                "initializing",
                "active",
                "failed"
            ]
        );
        assert_eq!(
            words::<Phase>()[..3],
            ["queued", "pulling_source", "building"]
        );
        assert_eq!(OperationStatus::Completed.to_string(), "completed");
        let finals: Vec<OperationStatus> = OperationStatus::ALL
            .iter()
            .copied()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [OperationStatus::Completed, OperationStatus::Failed]
        );
        for reported in [
            protocol::OperationStatus::Starting,
            protocol::OperationStatus::Completed,
            protocol::OperationStatus::Failed,
        ] {
            // The same word on the wire and in the store.
            let stored = serde_json::to_value(OperationStatus::from(reported)).unwrap();
            assert_eq!(stored, serde_json::to_value(reported).unwrap());
        }
    }

    #[tokio::test]
    async fn a_status_word_the_store_does_not_know_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        sqlx::query(
            "INSERT INTO agents (id, name, status, created_at) VALUES ('a', 'a', 'asleep', 1)",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        let error = store.get_agent("a").await.unwrap_err().to_string();
        assert!(
            error.contains("reading an agent") && error.contains("\"asleep\""),
            "{error}"
        );
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
}
