//! Agents (`agents`, migrations 0001, 0002, 0007): identity, key hashes and enrolment, the
//! connection state, and the batched writes of their connections ([`AgentWrite`]).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::history::{record_statuses, StatusRecord};
use super::{ctx, events, word, EventRow, Result, Store};

stored_words! {
    /// Whether an agent has a connection now.
    AgentStatus {
        Online = "online",
        Offline = "offline",
    }
}

/// An agent as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub status: AgentStatus,
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

/// An agent's row; `last_seen_at` is the later of its last connect/disconnect and its latest
/// status (which is written at every status, the agent's row is not).
const AGENT_SELECT: &str = "SELECT a.id, a.name, a.status, a.key_hash, a.version, a.git_version, \
     a.binary_sha256, a.connected_at, a.created_at, \
     CASE WHEN a.last_seen_at IS NULL OR s.received_at > a.last_seen_at THEN s.received_at \
     ELSE a.last_seen_at END AS last_seen_at \
     FROM agents a LEFT JOIN agent_status s ON s.agent_id = a.id";

fn agent(row: &AnyRow) -> std::result::Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: word(row, "status")?,
        enrolled: row.try_get::<Option<String>, _>("key_hash")?.is_some(),
        version: row.try_get("version")?,
        git_version: row.try_get("git_version")?,
        binary_sha256: row.try_get("binary_sha256")?,
        connected_at: row.try_get("connected_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
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
                AgentWrite::Event(e) => events::insert(e),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::test_store;

    #[tokio::test]
    async fn an_agent_is_online_while_its_newest_connection_lasts() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        store
            .insert_agent("a", "web-1", Some("hash"), None, 10)
            .await
            .unwrap();
        let status = || async {
            let row = store.get_agent("a").await.unwrap().unwrap();
            let json = serde_json::to_value(&row).unwrap();
            (row.status, json["status"].as_str().unwrap().to_owned())
        };
        assert_eq!(status().await, (AgentStatus::Offline, "offline".into()));
        let online = |connection| AgentWrite::Online {
            agent_id: "a".into(),
            connection,
            at: 20,
        };
        let offline = |connection| AgentWrite::Offline {
            agent_id: "a".into(),
            connection,
            at: 30,
        };
        store
            .record_agent_writes(&[online(1), online(2), offline(1)])
            .await
            .unwrap();
        assert_eq!(status().await, (AgentStatus::Online, "online".into()));
        assert_eq!(store.agent_counts().await.unwrap(), (1, 1));
        store.record_agent_writes(&[offline(2)]).await.unwrap();
        assert_eq!(status().await, (AgentStatus::Offline, "offline".into()));
        store.record_agent_writes(&[online(3)]).await.unwrap();
        store.all_offline().await.unwrap();
        assert_eq!(status().await, (AgentStatus::Offline, "offline".into()));
    }
}
