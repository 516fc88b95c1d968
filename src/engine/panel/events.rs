//! `GET /events[?kind=]`: the feed of the agents' events (errored, memory_restart,
//! health_failed, disk, job_failed, deploy, log), newest first; `event` messages of the live
//! stream add to it. The agent page shows the same table for its agent.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, time, Nav, Page};
use super::session::Session;
use super::PageResult;
use crate::config::EventKind;
use crate::engine::store::{EventFilter, EventRow};
use crate::engine::Engine;

/// Events listed on the page.
const LIMIT: i64 = 200;

/// The tone of an event kind's badge (as `eventTone` in panel.js).
fn tone(kind: &str) -> &'static str {
    match kind {
        "errored" | "health_failed" | "job_failed" | "disk" => "bad",
        "memory_restart" | "deploy" => "busy",
        _ => "idle",
    }
}

/// One event's row; `None` gives the empty row the script clones. `agent` is the agent's name
/// when known; the agent column is there when `show_agent`.
fn row(event: Option<&EventRow>, agent: Option<&str>, show_agent: bool) -> Markup {
    let e = event;
    html! {
        tr data-id=[e.map(|e| e.id)] data-agent=[e.map(|e| &e.agent_id)] {
            td data-f="at" { @if let Some(e) = e { (time(Some(e.at))) } }
            @if show_agent {
                td data-f="agent" { @if let Some(e) = e { a href={ "/agents/" (e.agent_id) } { (agent.unwrap_or(&e.agent_id)) } } }
            }
            td data-f="kind" { @if let Some(e) = e { span class={ "badge " (tone(&e.kind)) } { (e.kind) } } }
            td data-f="app" { @if let Some(app) = e.and_then(|e| e.app.as_ref()) { (app) } }
            td data-f="message" .output { @if let Some(e) = e { (e.message) } }
        }
    }
}

/// The events table with its row template; `names` maps agent ids to names. Without
/// `show_agent` (the agent page), the table follows one agent.
pub(super) fn table(
    events: &[EventRow],
    names: &HashMap<String, String>,
    show_agent: bool,
) -> Markup {
    let name = |e: &EventRow| names.get(&e.agent_id).map(String::as_str);
    html! {
        div.scroll {
            table.events data-live="events" {
                thead { tr {
                    th { "When" } @if show_agent { th { "Agent" } } th { "Kind" } th { "App" } th { "Message" }
                } }
                tbody { @for e in events { (row(Some(e), name(e), show_agent)) } }
            }
        }
        p.muted.empty hidden[!events.is_empty()] { "No event yet." }
        template.event-row { (row(None, None, show_agent)) }
    }
}

/// The names of the agents of `agent_ids`, from the live view.
pub(super) fn names<'a>(
    engine: &Engine,
    agent_ids: impl IntoIterator<Item = &'a String>,
) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for id in agent_ids {
        if !names.contains_key(id) {
            if let Some(view) = engine.live.agent(id) {
                names.insert(id.clone(), view.summary.name);
            }
        }
    }
    names
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    kind: Option<String>,
}

/// `GET /events`.
pub(super) async fn page(
    State(engine): State<Arc<Engine>>,
    session: Session,
    Query(q): Query<EventsQuery>,
) -> PageResult {
    let kind = q
        .kind
        .filter(|k| EventKind::ALL.iter().any(|e| e.as_str() == k));
    let filter = EventFilter {
        kind: kind.as_deref(),
        ..Default::default()
    };
    let events = engine.store.list_events(filter, LIMIT).await?;
    let names = names(&engine, events.iter().map(|e| &e.agent_id));
    let content = html! {
        div.head {
            h1 { "Events" }
            form.toolbar #event-filter method="get" action="/events" {
                label for="event-kind" { "Kind" }
                select #event-kind name="kind" {
                    option value="" { "all" }
                    @for k in EventKind::ALL {
                        option value=(k.as_str()) selected[kind.as_deref() == Some(k.as_str())] { (k.as_str()) }
                    }
                }
                button type="submit" { "Show" }
            }
        }
        section.card data-kind=[kind.as_deref()] { (table(&events, &names, true)) }
    };
    let page = Page {
        title: "Events",
        page: "events",
        nav: Nav::Events,
        charts: false,
    };
    Ok(layout::render(page, Some(&session), content))
}
