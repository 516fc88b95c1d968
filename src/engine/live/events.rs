//! The agents' `event` messages (errored, memory_restart, health_failed, disk, job_failed,
//! deployments): their bounds where they enter, and `GET /admin/events`.
//!
//! The hub turns an admitted event into an [`EventRow`] and queues it for the batch writer,
//! which publishes it on the live streams once stored. An agent gets [`EVENTS_PER_MINUTE`]
//! events a minute (a fixed window, kept in the live view); the excess is logged once per window,
//! counted as `eventsDropped` in `/admin/stats`, and not stored.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::engine::error::{parse_limit, ApiError};
use crate::engine::store::{EventFilter, EventRow};
use crate::engine::{now, Engine};

/// The longest event message kept, in bytes (a longer one is cut, ending in `…`).
pub const MESSAGE_MAX: usize = 4096;
/// The longest `kind` and `app` kept, in bytes.
pub const KIND_MAX: usize = 64;
pub const APP_MAX: usize = 256;
/// Events stored per agent per minute.
pub const EVENTS_PER_MINUTE: u32 = 60;
/// The window of [`EVENTS_PER_MINUTE`], ms.
pub const WINDOW_MS: i64 = 60_000;

/// Events listed without `?limit=`, and the most that may be asked for.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 1000;

/// `text` cut to at most `max` bytes at a character boundary, ending in `…` when cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The row to store for an agent's event received at `at`, bounded.
pub fn row(
    id: i64,
    agent: &str,
    kind: &str,
    app: Option<&str>,
    message: &str,
    at: i64,
) -> EventRow {
    EventRow {
        id,
        agent_id: agent.to_owned(),
        kind: bounded(kind, KIND_MAX),
        app: app.map(|a| bounded(a, APP_MAX)),
        message: bounded(message, MESSAGE_MAX),
        at,
    }
}

/// An agent's event budget: a fixed one-minute window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gate {
    since: i64,
    count: u32,
}

/// What [`Gate::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The first one over the budget in this window (worth a log line).
    FirstDropped,
    Dropped,
}

impl Gate {
    /// Whether an event at `at` (Unix ms) is within the budget.
    pub fn admit(&mut self, at: i64) -> Admit {
        if at - self.since >= WINDOW_MS || at < self.since {
            *self = Gate {
                since: at,
                count: 0,
            };
        }
        self.count = self.count.saturating_add(1);
        match self.count {
            n if n <= EVENTS_PER_MINUTE => Admit::Yes,
            n if n == EVENTS_PER_MINUTE + 1 => Admit::FirstDropped,
            _ => Admit::Dropped,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    agent: Option<String>,
    kind: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

/// `GET /admin/events?agent=&kind=&before=&limit=` → `{events}`, newest first.
pub(super) async fn list(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let limit = parse_limit(query.limit.as_deref(), LIST_DEFAULT, LIST_MAX)?;
    let before = match query.before.as_deref() {
        None => None,
        Some(text) => Some(
            text.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    bad(format!(
                        "invalid `before` {text:?}: give the id of the oldest event of the previous page"
                    ))
                })?,
        ),
    };
    if let Some(kind) = &query.kind {
        if kind.is_empty() || kind.len() > KIND_MAX {
            return Err(bad(format!(
                "invalid `kind` {kind:?}: 1 to {KIND_MAX} bytes, e.g. errored, memory_restart, health_failed, disk, job_failed"
            )));
        }
    }
    if let Some(agent) = &query.agent {
        if !engine.live.has(agent) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no agent with id {agent:?}: see GET /admin/fleet"),
            ));
        }
    }
    let filter = EventFilter {
        agent_id: query.agent.as_deref(),
        kind: query.kind.as_deref(),
        before,
    };
    let events = engine.store.list_events(filter, limit as i64).await?;
    Ok(Json(json!({ "events": events })).into_response())
}

/// Deletes events older than `status_history_retention` (called by the history pruner).
pub async fn prune(engine: &Engine) {
    let retention = engine.config.status_history_retention;
    match engine
        .store
        .prune_events(now() - retention.as_millis() as i64)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::debug!("pruned {n} events"),
        Err(e) => tracing::error!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_at_a_char_boundary_with_a_mark() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("abcdefghij", 10), "abcdefghij");
        let cut = bounded("abcdefghijk", 10);
        assert_eq!(cut, "abcdefg…");
        assert_eq!(cut.len(), 10);
        // "é" is two bytes: never split.
        let cut = bounded(&"é".repeat(10), 10);
        assert!(cut.len() <= 10, "{cut}");
        assert_eq!(cut, "ééé…");
        let long = "x".repeat(10_000);
        assert_eq!(bounded(&long, MESSAGE_MAX).len(), MESSAGE_MAX);
    }

    #[test]
    fn the_gate_admits_a_minute_budget_then_a_new_window() {
        let mut gate = Gate::default();
        let t = 1_000_000;
        for _ in 0..EVENTS_PER_MINUTE {
            assert_eq!(gate.admit(t), Admit::Yes);
        }
        assert_eq!(gate.admit(t + 10), Admit::FirstDropped);
        assert_eq!(gate.admit(t + 20), Admit::Dropped);
        assert_eq!(gate.admit(t + WINDOW_MS - 1), Admit::Dropped);
        assert_eq!(gate.admit(t + WINDOW_MS), Admit::Yes);
        // A clock stepping back starts a window too.
        assert_eq!(gate.admit(t), Admit::Yes);
    }
}
