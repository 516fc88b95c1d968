//! Operations (`operations`, migration 0001): each command sent to an agent, from `sent` to
//! `completed` or `failed` ([`OperationStatus`]), with the agent's output.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::deployments::{self, DeploymentReport, NewDeployment};
use super::{ctx, word, OperationStatus, Result, Store};

/// An operation: a command sent to an agent and its outcome.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationRow {
    pub id: String,
    pub agent_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub command: serde_json::Value,
    pub status: OperationStatus,
    pub output: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl OperationRow {
    /// `completed` or `failed`.
    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }
}

const OPERATION_COLUMNS: &str =
    "id, agent_id, type, command, status, output, error, created_at, updated_at";

fn operation(row: &AnyRow) -> std::result::Result<OperationRow, sqlx::Error> {
    let command: String = row.try_get("command")?;
    Ok(OperationRow {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        kind: row.try_get("type")?,
        command: serde_json::from_str(&command).unwrap_or(serde_json::Value::String(command)),
        status: word(row, "status")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
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
            deployments::insert(&mut tx, id, agent_id, d, now)
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
        status: OperationStatus,
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
            .bind(status.as_str())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::test_store;

    #[tokio::test]
    async fn an_operation_moves_from_sent_to_one_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let command = serde_json::json!({"type": "restart_app", "app": "web"});
        store
            .insert_operation("o1", "a", "restart_app", &command, None, 10)
            .await
            .unwrap();
        let sent = store.get_operation("o1").await.unwrap().unwrap();
        assert_eq!(
            (sent.status, sent.is_final()),
            (OperationStatus::Sent, false)
        );
        let json = serde_json::to_value(&sent).unwrap();
        assert_eq!(
            (json["status"].as_str(), json["type"].as_str()),
            (Some("sent"), Some("restart_app"))
        );
        let report = |status| store.report_operation("o1", "a", status, Some("out"), None, 20);
        let starting = report(OperationStatus::Starting).await.unwrap().unwrap();
        assert_eq!(starting.status, OperationStatus::Starting);
        let done = report(OperationStatus::Completed).await.unwrap().unwrap();
        assert_eq!(
            (done.status, done.output.as_deref()),
            (OperationStatus::Completed, Some("out"))
        );
        // Ended: a late report changes nothing.
        assert!(report(OperationStatus::Failed).await.unwrap().is_none());
        let listed = store.list_operations(Some("a"), 10).await.unwrap();
        assert_eq!(listed[0].status, OperationStatus::Completed);
    }
}
