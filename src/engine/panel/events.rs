//! `GET /events`: the feed of the agents' events (errored, memory_restart, health_failed, disk,
//! job_failed, deploy, log), newest first, filtered by kind. The script fills it from
//! `GET /admin/events` and adds `event` messages of the live stream as they come.

use maud::html;

use super::layout::{self, Nav, Page};
use super::session::Session;
use super::PageResult;
use crate::config::EventKind;

/// `GET /events`.
pub(super) async fn page(session: Session) -> PageResult {
    let content = html! {
        div.head {
            h1 { "Events" }
            form.toolbar {
                label for="event-kind" { "Kind" }
                select #event-kind {
                    option value="" { "all" }
                    @for kind in EventKind::ALL { option value=(kind.as_str()) { (kind.as_str()) } }
                }
            }
        }
        section.card {
            div.scroll {
                table #events {
                    thead { tr { th { "When" } th { "Agent" } th { "Kind" } th { "App" } th { "Message" } } }
                    tbody {}
                }
            }
            p.muted #no-events { "Loading…" }
        }
    };
    let page = Page {
        title: "Events",
        page: "events",
        nav: Nav::Events,
        charts: false,
    };
    Ok(layout::render(page, Some(&session), content))
}
