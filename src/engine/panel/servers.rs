//! `GET /servers`: the servers provisioned on DigitalOcean with their states, the form that
//! deploys one, and deletion behind a confirmation that names the droplet. The script calls
//! `POST /admin/servers/deploy-with-agent` and `DELETE /admin/servers/{id}`; `server`
//! messages of the live stream move the rows.

use std::sync::Arc;

use axum::extract::State;
use maud::{html, Markup};

use super::layout::{self, badge, time, Nav, Page};
use super::session::Session;
use super::PageResult;
use crate::engine::store::ServerRow;
use crate::engine::Engine;

/// One server's row; `None` gives the empty row the script clones for a new server. Cells are
/// named by `data-f` so that the script fills the same ones.
pub(super) fn row(server: Option<&ServerRow>) -> Markup {
    let s = server;
    html! {
        tr data-id=[s.map(|s| &s.id)] data-name=[s.map(|s| &s.name)]
            data-droplet=[s.and_then(|s| s.droplet_id)] {
            td data-f="name" {
                @if let Some(s) = s { a href={ "/agents/" (s.agent_id) } { (s.name) } }
            }
            td data-f="status" { @if let Some(s) = s { (badge(s.status.as_str())) } }
            td data-f="droplet" { @if let Some(d) = s.and_then(|s| s.droplet_id) { (d) } }
            td data-f="ip" { @if let Some(ip) = s.and_then(|s| s.ip.as_ref()) { (ip) } }
            td data-f="where" { @if let Some(s) = s { (s.region) " · " (s.size) } }
            td data-f="error" .error { @if let Some(e) = s.and_then(|s| s.error.as_ref()) { (e) } }
            td data-f="updated" { @if let Some(s) = s { (time(Some(s.updated_at))) } }
            td { button.danger.small type="button" data-action="delete-server" { "Delete" } }
        }
    }
}

/// `GET /servers`.
pub(super) async fn page(State(engine): State<Arc<Engine>>, session: Session) -> PageResult {
    let servers = engine.store.list_servers().await?;
    let configured = engine.digitalocean.is_some();
    let content = html! {
        h1 { "Servers" }
        section.card {
            h2 { "Deploy a server" }
            @if !configured {
                p.flash.bad { "DigitalOcean is not configured: start the engine with DO_API_TOKEN in its environment to deploy servers." }
            }
            form #deploy-server .inline {
                label for="server-name" { "Name" }
                input #server-name name="name" required maxlength="63"
                    pattern="[A-Za-z0-9][A-Za-z0-9.\\-]{0,62}"
                    title="1 to 63 letters, digits, '-' or '.', not starting with '-' or '.'"
                    placeholder="web-1";
                button.primary type="submit" { "Deploy" }
            }
            p #deploy-result .flash hidden {}
        }
        section.card {
            h2 { "All servers " span.count #server-count { (servers.len()) } }
            div.scroll {
                table #servers {
                    thead { tr { th { "Name" } th { "State" } th { "Droplet" } th { "IP" } th { "Region · size" } th { "Error" } th { "Updated" } th {} } }
                    tbody {
                        @for server in &servers { (row(Some(server))) }
                    }
                }
            }
            p #no-servers .muted hidden[!servers.is_empty()] { "No server yet." }
            template #server-row { (row(None)) }
        }
        dialog #confirm {
            form method="dialog" {
                p #confirm-text {}
                div.buttons {
                    button type="submit" value="cancel" { "Cancel" }
                    button.danger #confirm-yes type="submit" value="yes" { "Delete" }
                }
            }
        }
    };
    let page = Page {
        title: "Servers",
        page: "servers",
        nav: Nav::Servers,
        charts: false,
    };
    Ok(layout::render(page, Some(&session), content))
}
