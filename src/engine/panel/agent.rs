//! `GET /agents/{id}`: one agent. Its host figures and apps (live through the stream opened with
//! `?agent=ID`), charts of CPU, memory and disk over an hour, a day or a week (uPlot, from
//! `GET /admin/agents/{id}/history?range=`), its recent operations and events, and its actions:
//! app start/stop/restart, deploy with an optional ref, create/delete site, rotate key,
//! update/rollback. Each action shows its operation's status and output until it ends.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use maud::{html, Markup};
use serde_json::Value;

use super::fleet::{self, bar, bar_percent};
use super::layout::{self, badge, bytes, time, Nav, Page};
use super::session::Session;
use super::{events, operations, PageError, PageResult};
use crate::engine::store::EventFilter;
use crate::engine::Engine;

/// Operations and events listed on the page.
const OPERATIONS: i64 = 20;
const EVENTS: i64 = 50;

/// An uptime or a span in ms, short: "3 d 4 h", "12 min".
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// One app instance's row, from its `citrusctl status --json` entry.
fn app_row(app: &Value) -> Markup {
    let text = |k: &str| app.get(k).and_then(Value::as_str).unwrap_or("");
    let num = |k: &str| app.get(k).and_then(Value::as_u64);
    let name = text("name");
    let state = text("state");
    html! {
        tr data-app=(name) data-instance=(num("instance").unwrap_or(0)) {
            td { (name) @if let Some(i) = num("instance").filter(|i| *i > 0) { span.muted { " #" (i) } } }
            td { (badge(state)) }
            td.num { @if let Some(pid) = num("pid") { (pid) } @else { span.muted { "—" } } }
            td.num { @if state == "online" { (span(num("uptime_ms").unwrap_or(0))) } @else { span.muted { "—" } } }
            td.num { (num("restarts").unwrap_or(0)) }
            td.num { (bytes(num("memory_bytes").unwrap_or(0) as i64)) }
            td.num { (format!("{:.1}", app.get("cpu_percent").and_then(Value::as_f64).unwrap_or(0.0))) " %" }
            td { @if let Some(r) = app.get("release").and_then(Value::as_str) { code { (r) } } @else { span.muted { "—" } } }
            td.row-actions {
                button.small type="button" data-app-action="start" { "Start" }
                button.small type="button" data-app-action="stop" { "Stop" }
                button.small type="button" data-app-action="restart" { "Restart" }
            }
        }
    }
}

/// `GET /agents/{id}`.
pub(super) async fn page(
    State(engine): State<Arc<Engine>>,
    session: Session,
    Path(id): Path<String>,
) -> PageResult {
    let Some(view) = engine.live.agent(&id) else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("no agent with id {id:?}"),
        ));
    };
    let s = &view.summary;
    let server = engine.store.server_of_agent(&id).await?;
    let ops = engine.store.list_operations(Some(&id), OPERATIONS).await?;
    let filter = EventFilter {
        agent_id: Some(&id),
        ..Default::default()
    };
    let events = engine.store.list_events(filter, EVENTS).await?;
    let names = HashMap::from([(s.id.clone(), s.name.clone())]);
    let mut app_names: Vec<&str> = view
        .apps
        .iter()
        .filter_map(|a| a.get("name").and_then(Value::as_str))
        .collect();
    app_names.dedup();
    let content = html! {
        div.head {
            h1 #agent-name { (s.name) }
            span #agent-status { (badge(fleet::state(s))) }
            @if let Some(server) = &server {
                span.muted { "server " (badge(server.status.as_str())) @if let Some(e) = &server.error { " " span.error { (e) } } }
            }
        }
        section.card #facts data-agent=(s.id) {
            div.facts {
                div { span { "Hostname" } b data-f="hostname" { (s.hostname.as_deref().unwrap_or("—")) } }
                div { span { "Agent id" } code { (s.id) } }
                div { span { "Version" } b data-f="version" { (s.version.as_deref().unwrap_or("—")) } @if let Some(g) = &s.git_version { " " code.muted { (g) } } }
                div { span { "CPU" } b data-f="cpu" { @if let Some(l) = s.load { (format!("{l:.0}")) " %" @if let Some(c) = s.cores { " of " (c) " cores" } } @else { "—" } } (bar_percent(s.load)) }
                div { span { "Memory" } b data-f="memory" { @if let (Some(u), Some(t)) = (s.memory_used, s.memory_total) { (bytes(u)) " / " (bytes(t)) } @else { "—" } } (bar(s.memory_used, s.memory_total)) }
                div { span { "Disk" } b data-f="disk" { @if let (Some(u), Some(t)) = (s.disk_used, s.disk_size) { (bytes(u)) " / " (bytes(t)) } @else { "—" } } (bar(s.disk_used, s.disk_size)) }
                div { span { "Connected" } b data-f="connected" { (time(s.connected_at)) } }
                div { span { "Last seen" } b data-f="seen" { (time(s.last_seen_at)) } }
                @if let Some(server) = &server {
                    div { span { "Droplet" } b { @if let Some(d) = server.droplet_id { (d) } @else { "—" } " " @if let Some(ip) = &server.ip { span.muted { (ip) } } } }
                }
            }
        }
        section.card {
            h2 { "Apps " span.count #app-count { (view.apps.len()) } }
            div.scroll {
                table #apps {
                    thead { tr {
                        th { "App" } th { "State" } th.num { "PID" } th.num { "Uptime" } th.num { "Restarts" }
                        th.num { "Memory" } th.num { "CPU" } th { "Release" } th {}
                    } }
                    tbody { @for app in &view.apps { (app_row(app)) } }
                }
            }
            p.muted #no-apps hidden[!view.apps.is_empty()] { "No app reported." }
        }
        section.card {
            div.head {
                h2 { "History" }
                div.ranges {
                    button.small.active type="button" data-range="hour" { "Hour" }
                    button.small type="button" data-range="day" { "Day" }
                    button.small type="button" data-range="week" { "Week" }
                }
                span.muted #chart-note {}
            }
            div.charts {
                div.chart #chart-cpu { h3 { "CPU %" } }
                div.chart #chart-memory { h3 { "Memory %" } }
                div.chart #chart-disk { h3 { "Disk %" } }
            }
        }
        section.card #actions {
            h2 { "Actions" }
            div.actions {
                div {
                    h3 { "Deploy an app" }
                    form #deploy-form {
                        select #deploy-app name="app" required {
                            @for app in &app_names { option value=(app) { (app) } }
                        }
                        input #deploy-ref name="ref" placeholder="ref (optional)" maxlength="200";
                        button.primary type="submit" { "Deploy" }
                    }
                }
                div {
                    h3 { "Sites" }
                    form #site-form {
                        input #site-domain name="domain" required maxlength="253" placeholder="example.com"
                            title="a DNS name such as example.com: letters, digits, '-' and '.'";
                        button.primary type="submit" data-site="create_site" { "Create site" }
                        button.danger type="submit" data-site="delete_site" { "Delete site" }
                    }
                }
                div {
                    h3 { "Agent" }
                    form #agent-form {
                        button type="button" data-agent-action="rotate" { "Rotate key" }
                        button type="button" data-agent-action="update_agent" { "Update agent" }
                    }
                    form #rollback-form {
                        input #rollback-commit name="commitId" placeholder="commit (optional)" pattern="[0-9a-fA-F]{7,40}"
                            title="7 to 40 hex digits, or empty for the previous version";
                        button type="submit" { "Roll back" }
                    }
                }
            }
            p #action-error .flash.bad hidden {}
            div #action-log {}
            template #op-box {
                div.op-box {
                    div.op-head { code data-f="type" {} span data-f="target" .muted {} span data-f="status" {} span data-f="updated" {} }
                    div data-f="error" .error {}
                    pre data-f="output" hidden {}
                }
            }
        }
        section.card data-agent=(s.id) {
            div.head { h2 { "Recent operations" } a href={ "/operations?agent=" (s.id) } { "all" } }
            (operations::table(&ops, &names))
        }
        section.card data-agent=(s.id) {
            h2 { "Events" }
            (events::table(&events, &names, false))
        }
    };
    let page = Page {
        title: &s.name,
        page: "agent",
        nav: Nav::None,
        charts: true,
    };
    Ok(layout::render(page, Some(&session), content))
}
