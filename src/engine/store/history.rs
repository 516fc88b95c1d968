//! Agents' status (`agent_status`: the latest of each, as received) and its history
//! (`agent_status_history`: the figures of each point kept, pruned by age).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{ctx, Result, Store};

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

impl Store {
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
}

/// The statuses of one transaction: the latest of each agent (the last one wins) and the
/// history points (those marked `history`), in multi-row statements (one round trip per chunk instead of one per row).
pub(super) async fn record_statuses(
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
    use crate::engine::store::test_store;
    use crate::engine::store::AgentWrite;

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

    #[tokio::test]
    async fn history_buckets_average_each_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
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
        let store = test_store(dir.path()).await;
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
