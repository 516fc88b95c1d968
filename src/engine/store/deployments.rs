//! Deployments (`deployments`, migration 0003): each `deploy_app` sent to an agent, recorded
//! with its operation, and how far it got (its phase only moves forward).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{ctx, word, OperationStatus, Result, Store};
use crate::deploy::Phase;

/// A deployment sent to an agent (`deploy_app`) and how far it got; `id` is its operation's.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRow {
    pub id: String,
    pub agent_id: String,
    pub app: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub phase: Phase,
    /// As the operation's.
    pub status: OperationStatus,
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
    pub status: OperationStatus,
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
            status: OperationStatus::Failed,
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

const DEPLOYMENT_COLUMNS: &str =
    "id, agent_id, app, git_ref, phase, status, release_id, commit_id, \
                                  output, error, created_at, updated_at";

fn deployment(row: &AnyRow) -> std::result::Result<DeploymentRow, sqlx::Error> {
    Ok(DeploymentRow {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        app: row.try_get("app")?,
        git_ref: row.try_get("git_ref")?,
        phase: word(row, "phase")?,
        status: word(row, "status")?,
        release_id: row.try_get("release_id")?,
        commit: row.try_get("commit_id")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Records the deployment `d` starts as operation `id` (phase `queued`), in the operation's
/// transaction.
pub(super) async fn insert(
    conn: &mut AnyConnection,
    id: &str,
    agent_id: &str,
    d: NewDeployment<'_>,
    now: i64,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deployments (id, agent_id, app, git_ref, phase, status, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, 'queued', 'sent', $5, $5)",
    )
    .bind(id)
    .bind(agent_id)
    .bind(d.app)
    .bind(d.git_ref)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
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
            .bind(report.status.as_str())
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
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::store::test_store;

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
        let store = test_store(dir).await;
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
                OperationStatus::Completed
            } else {
                OperationStatus::Starting
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
        assert_eq!(
            (&json["phase"], &json["status"]),
            (&"failed".into(), &"failed".into())
        );
        assert!(store
            .list_deployments("other", 10)
            .await
            .unwrap()
            .is_empty());
    }
}
