//! The agents' events (`events`, migration 0004): what each agent reported happening, bounded
//! by the hub, listed newest first and pruned by age.

use std::sync::atomic::Ordering;

use serde::Serialize;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

use super::{ctx, Result, Store};

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

const EVENT_COLUMNS: &str = "id, agent_id, kind, app, message, at";

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

/// The statement storing `e` (one of an agent's batched writes).
pub(super) fn insert(e: &EventRow) -> Query<'_, Any, AnyArguments> {
    sqlx::query(
        "INSERT INTO events (id, agent_id, kind, app, message, at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(e.id)
    .bind(e.agent_id.as_str())
    .bind(e.kind.as_str())
    .bind(e.app.as_deref())
    .bind(e.message.as_str())
    .bind(e.at)
}

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Database;
    use crate::engine::store::AgentWrite;

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
}
