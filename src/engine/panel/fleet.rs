//! `GET /[?q=]`: the fleet at a glance. Every agent (problems first, then by name; at most
//! [`SHOWN`] rendered, with the count of the rest) with its state, version, host figures and
//! app counts; the servers still being provisioned (or failed) above them. Answered from the
//! live view in memory; `agent` and `server` messages of the live stream keep it current, and
//! the filter box narrows the rows at once in the browser (`?q=` does it on the server).

use std::sync::Arc;

use axum::extract::{Query, State};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, badge, bytes, time, Nav, Page};
use super::session::Session;
use super::PageResult;
use crate::engine::live::AgentSummary;
use crate::engine::store::{AgentStatus, ServerRow, ServerStatus};
use crate::engine::Engine;

/// The longest filter used.
const QUERY_MAX: usize = 200;

/// Agents rendered at most: the page stays small at 10,000 agents.
pub const SHOWN: usize = 500;

/// A used/total figure as a bar: the width class (5 % steps) and its tone (see panel.css).
pub(super) fn bar(used: Option<i64>, total: Option<i64>) -> Markup {
    let percent = match (used, total) {
        (Some(used), Some(total)) if total > 0 => Some(used as f64 * 100.0 / total as f64),
        _ => None,
    };
    bar_percent(percent)
}

/// A percent (0–100) as a bar.
pub(super) fn bar_percent(percent: Option<f64>) -> Markup {
    let Some(p) = percent else {
        return html! { span.bar {} };
    };
    let p = p.clamp(0.0, 100.0);
    let step = ((p / 5.0).round() as u32) * 5;
    let tone = match p {
        p if p > 90.0 => " bad",
        p if p > 75.0 => " warn",
        _ => "",
    };
    html! { span class={ "bar" (tone) } title={ (format!("{p:.0}")) " %" } { span class={ "w" (step) } {} } }
}

/// The state shown: an agent that never enrolled is `pending` (not a problem), else its status.
pub(super) fn state(s: &AgentSummary) -> &'static str {
    match (s.enrolled, s.status) {
        (false, AgentStatus::Offline) => "pending",
        (_, status) => status.as_str(),
    }
}

/// The counts of an agent's apps by state, errored in red.
fn app_counts(s: &AgentSummary) -> Markup {
    let a = &s.apps;
    html! {
        span.apps-counts {
            span.online.zero[a.online == 0] { (a.online) " online" }
            span.errored.zero[a.errored == 0] { (a.errored) " errored" }
            span.zero[a.stopped == 0] { (a.stopped) " stopped" }
            @if a.other > 0 { span { (a.other) " other" } }
        }
    }
}

/// One agent's row; `None` gives the empty row the script clones for a new agent. The cells
/// are named by `data-f` so that the script fills the same ones.
pub(super) fn agent_row(s: Option<&AgentSummary>) -> Markup {
    html! {
        tr data-id=[s.map(|s| &s.id)] data-name=[s.map(|s| &s.name)]
            data-hostname=[s.and_then(|s| s.hostname.as_ref())]
            data-problem=[s.map(|s| s.problem)]
            class=[s.filter(|s| s.problem > 0).map(|_| "problem")] {
            td data-f="agent" data-label="Agent" {
                @if let Some(s) = s {
                    span class={ "dot " (layout::tone(state(s))) } title=(state(s)) {}
                    a href={ "/agents/" (s.id) } { (s.name) }
                    @if let Some(h) = &s.hostname { br; span.muted { (h) } }
                }
            }
            td data-f="status" data-label="State" { @if let Some(s) = s { (badge(state(s))) } }
            td data-f="version" data-label="Version" {
                @if let Some(s) = s {
                    (s.version.as_deref().unwrap_or("—"))
                    @if let Some(g) = &s.git_version { br; code.muted { (g) } }
                }
            }
            td data-f="cpu" data-label="CPU" {
                @if let Some(load) = s.and_then(|s| s.load) {
                    span.figure { (format!("{load:.0}")) " %" @if let Some(c) = s.and_then(|s| s.cores) { " of " (c) " cores" } }
                    (bar_percent(Some(load)))
                }
            }
            td data-f="memory" data-label="Memory" {
                @if let (Some(used), Some(total)) = (s.and_then(|s| s.memory_used), s.and_then(|s| s.memory_total)) {
                    span.figure { (bytes(used)) " / " (bytes(total)) }
                    (bar(Some(used), Some(total)))
                }
            }
            td data-f="disk" data-label="Disk" {
                @if let (Some(used), Some(size)) = (s.and_then(|s| s.disk_used), s.and_then(|s| s.disk_size)) {
                    span.figure { (bytes(used)) " / " (bytes(size)) }
                    (bar(Some(used), Some(size)))
                }
            }
            td data-f="apps" data-label="Apps" { @if let Some(s) = s { (app_counts(s)) } }
            td data-f="seen" data-label="Last seen" { @if let Some(s) = s { (time(s.last_seen_at)) } }
        }
    }
}

/// A server on its way (or failed) as the overview shows it.
fn server_row(s: Option<&ServerRow>) -> Markup {
    html! {
        tr data-id=[s.map(|s| &s.id)] {
            td data-f="name" { @if let Some(s) = s { a href={ "/agents/" (s.agent_id) } { (s.name) } } }
            td data-f="status" { @if let Some(s) = s { (badge(s.status.as_str())) } }
            td data-f="ip" { @if let Some(ip) = s.and_then(|s| s.ip.as_ref()) { (ip) } }
            td data-f="error" .error { @if let Some(e) = s.and_then(|s| s.error.as_ref()) { (e) } }
            td data-f="updated" { @if let Some(s) = s { (time(Some(s.updated_at))) } }
        }
    }
}

/// "1 agent", "3 agents".
fn plural(n: usize, word: &str) -> String {
    match n {
        1 => format!("1 {word}"),
        n => format!("{n} {word}s"),
    }
}

#[derive(Deserialize)]
pub(super) struct FleetQuery {
    q: Option<String>,
}

/// `GET /`.
pub(super) async fn page(
    State(engine): State<Arc<Engine>>,
    session: Session,
    Query(query): Query<FleetQuery>,
) -> PageResult {
    // As long as `GET /admin/fleet` takes it; the rest of a longer one is ignored.
    let filter = query
        .q
        .as_deref()
        .map(|q| q.trim().chars().take(QUERY_MAX).collect::<String>())
        .filter(|q| !q.is_empty());
    let filter = filter.as_deref();
    let (agents, total) = engine.live.snapshot(filter, SHOWN);
    let servers: Vec<ServerRow> = engine
        .store
        .list_servers()
        .await?
        .into_iter()
        .filter(|s| s.status != ServerStatus::Active)
        .collect();
    let content = html! {
        div.head {
            h1 { "Fleet" }
            span.count #agent-count data-total=(total) { (plural(total, "agent")) @if filter.is_some() { " matching" } }
        }
        form.toolbar method="get" action="/" {
            input #filter type="search" name="q" value=[filter] placeholder="Filter by name, hostname or id" autocomplete="off";
            button type="submit" { "Filter" }
            @if filter.is_some() { a href="/" { "Clear" } }
        }
        section.card #provisioning hidden[servers.is_empty()] {
            h2 { "Servers being provisioned" }
            div.scroll {
                table #servers {
                    thead { tr { th { "Name" } th { "State" } th { "IP" } th { "Error" } th { "Updated" } } }
                    tbody { @for s in &servers { (server_row(Some(s))) } }
                }
            }
            template #server-row { (server_row(None)) }
        }
        section.card {
            div.scroll {
                table.stack #agents data-shown=(agents.len()) {
                    thead { tr {
                        th { "Agent" } th { "State" } th { "Version" } th { "CPU" } th { "Memory" }
                        th { "Disk" } th { "Apps" } th { "Last seen" }
                    } }
                    tbody { @for agent in &agents { (agent_row(Some(agent))) } }
                }
            }
            p.muted #no-agents hidden[!agents.is_empty()] {
                @if filter.is_some() { "No agent matches." } @else { "No agent yet: deploy a server, or create an agent with POST /admin/agents." }
            }
            p.more.muted #more-agents hidden[total <= agents.len()] {
                "Showing " span #shown { (agents.len()) } " of " span #total { (total) } " agents: filter to narrow."
            }
            template #agent-row { (agent_row(None)) }
        }
    };
    let page = Page {
        title: "Fleet",
        page: "fleet",
        nav: Nav::Fleet,
        charts: false,
    };
    Ok(layout::render(page, Some(&session), content))
}
