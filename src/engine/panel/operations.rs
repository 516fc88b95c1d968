//! `GET /operations[?agent=ID]`: the newest operations of the fleet (or of one agent) with their
//! type, target, status, times and output; `operation` messages of the live stream update and
//! add rows.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, badge, time, Nav, Page};
use super::session::Session;
use super::PageResult;
use crate::engine::store::OperationRow;
use crate::engine::Engine;

/// Operations listed.
const LIMIT: i64 = 200;

/// What an operation acted on, besides its agent: the app, domain, ref or commit of its command.
pub(super) fn detail(command: &serde_json::Value) -> String {
    ["app", "domain", "ref", "commitId", "action"]
        .iter()
        .filter_map(|k| command.get(*k).and_then(|v| v.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One operation's row; `None` gives the empty row the script clones. `agent` is the agent's
/// name when known.
pub(super) fn row(op: Option<&OperationRow>, agent: Option<&str>) -> Markup {
    html! {
        tr data-id=[op.map(|o| &o.id)] data-agent=[op.map(|o| &o.agent_id)]
            data-status=[op.map(|o| &o.status)] data-updated=[op.map(|o| o.updated_at)] {
            td data-f="type" { @if let Some(o) = op { code { (o.kind) } } }
            td data-f="target" {
                @if let Some(o) = op {
                    a href={ "/agents/" (o.agent_id) } { (agent.unwrap_or(&o.agent_id)) }
                    " " span.muted { (detail(&o.command)) }
                }
            }
            td data-f="status" { @if let Some(o) = op { (badge(o.status.as_str())) } }
            td data-f="created" { @if let Some(o) = op { (time(Some(o.created_at))) } }
            td data-f="updated" { @if let Some(o) = op { (time(Some(o.updated_at))) } }
            td data-f="output" .output {
                @if let Some(e) = op.and_then(|o| o.error.as_ref()) { div.error { (e) } }
                @if let Some(out) = op.and_then(|o| o.output.as_ref()).filter(|o| !o.is_empty()) {
                    details { summary { "output" } pre { (out) } }
                }
            }
        }
    }
}

/// The operations table with its row template; `names` maps agent ids to names.
pub(super) fn table(ops: &[OperationRow], names: &HashMap<String, String>) -> Markup {
    html! {
        div.scroll {
            table.operations data-live="operations" {
                thead { tr { th { "Type" } th { "Target" } th { "Status" } th { "Started" } th { "Updated" } th { "Output" } } }
                tbody {
                    @for op in ops { (row(Some(op), names.get(&op.agent_id).map(String::as_str))) }
                }
            }
        }
        p.muted.empty hidden[!ops.is_empty()] { "No operation yet." }
        template.operation-row { (row(None, None)) }
    }
}

#[derive(Deserialize)]
pub(super) struct OperationsQuery {
    agent: Option<String>,
}

/// `GET /operations`.
pub(super) async fn page(
    State(engine): State<Arc<Engine>>,
    session: Session,
    Query(q): Query<OperationsQuery>,
) -> PageResult {
    let agent = q.agent.filter(|a| !a.is_empty());
    let ops = engine
        .store
        .list_operations(agent.as_deref(), LIMIT)
        .await?;
    let names = super::events::names(&engine, ops.iter().map(|o| &o.agent_id));
    let content = html! {
        h1 { "Operations" }
        @if let Some(agent) = &agent {
            p { "Of agent " a href={ "/agents/" (agent) } { (names.get(agent).unwrap_or(agent)) } " · " a href="/operations" { "all agents" } }
        }
        section.card data-agent=[agent.as_ref()] { (table(&ops, &names)) }
    };
    let page = Page {
        title: "Operations",
        page: "operations",
        nav: Nav::Operations,
        charts: false,
    };
    Ok(layout::render(page, Some(&session), content))
}
