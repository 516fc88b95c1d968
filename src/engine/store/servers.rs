//! Servers provisioned on DigitalOcean (`servers`, migration 0001): each with its agent, its
//! droplet, and where its provisioning is (see [`crate::engine::provision`]).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{ctx, word, Result, Store};

stored_words! {
    /// Where a server is: `creating → provisioning → initializing → active`, or `failed`.
    ServerStatus {
        /// Recorded; its droplet is being created.
        Creating = "creating",
        /// The droplet exists; waiting for DigitalOcean to start it.
        Provisioning = "provisioning",
        /// The droplet runs cloud-init; waiting for its agent.
        Initializing = "initializing",
        /// Its agent connected.
        Active = "active",
        Failed = "failed",
    }
}

/// A provisioned server.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRow {
    pub id: String,
    pub name: String,
    pub agent_id: String,
    pub status: ServerStatus,
    pub droplet_id: Option<i64>,
    pub ip: Option<String>,
    pub region: String,
    pub size: String,
    pub image: String,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const SERVER_COLUMNS: &str = "id, name, agent_id, status, droplet_id, ip, region, size, image, \
                              error, created_at, updated_at";

fn server(row: &AnyRow) -> std::result::Result<ServerRow, sqlx::Error> {
    Ok(ServerRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        agent_id: row.try_get("agent_id")?,
        status: word(row, "status")?,
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

impl Store {
    /// Inserts a server in `creating`.
    pub async fn insert_server(&self, s: &ServerRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO servers (id, name, agent_id, status, region, size, image, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.agent_id)
        .bind(s.status.as_str())
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
        from: &[ServerStatus],
        status: ServerStatus,
        update: ServerUpdate<'_>,
        now: i64,
    ) -> Result<bool> {
        let mut sql = String::from(
            "UPDATE servers SET status = $1, updated_at = $2, error = $3, \
             droplet_id = COALESCE($4, droplet_id), ip = COALESCE($5, ip) WHERE id = $6",
        );
        if !from.is_empty() {
            // Static words, safe to inline.
            let list: Vec<String> = from.iter().map(|s| format!("'{s}'")).collect();
            sql.push_str(&format!(" AND status IN ({})", list.join(", ")));
        }
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::test_store;

    #[tokio::test]
    async fn a_server_moves_only_from_the_statuses_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let server = ServerRow {
            id: "s1".into(),
            name: "web-1".into(),
            agent_id: "a1".into(),
            status: ServerStatus::Creating,
            droplet_id: None,
            ip: None,
            region: "fra1".into(),
            size: "s-1vcpu-1gb".into(),
            image: "debian-13-x64".into(),
            error: None,
            created_at: 10,
            updated_at: 10,
        };
        store.insert_server(&server).await.unwrap();
        let status = || async { store.get_server("s1").await.unwrap().unwrap().status };
        let in_progress = || async { store.servers_in_progress().await.unwrap().len() };
        assert_eq!(
            (status().await, in_progress().await),
            (ServerStatus::Creating, 1)
        );
        let update = ServerUpdate {
            droplet_id: Some(7),
            ..Default::default()
        };
        let from = [ServerStatus::Provisioning, ServerStatus::Initializing];
        assert!(!store
            .move_server("s1", &from, ServerStatus::Active, update, 20)
            .await
            .unwrap());
        assert!(store
            .move_server(
                "s1",
                &[ServerStatus::Creating],
                ServerStatus::Provisioning,
                update,
                20
            )
            .await
            .unwrap());
        assert!(store
            .move_server(
                "s1",
                &from,
                ServerStatus::Active,
                ServerUpdate::default(),
                30
            )
            .await
            .unwrap());
        let active = store.get_server("s1").await.unwrap().unwrap();
        assert_eq!(
            (active.status, active.droplet_id),
            (ServerStatus::Active, Some(7))
        );
        assert_eq!(serde_json::to_value(&active).unwrap()["status"], "active");
        assert_eq!(in_progress().await, 0);
    }
}
