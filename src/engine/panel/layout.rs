//! The page frame every panel page shares (head, nav, the CSRF token for the page's script) and
//! the small formatters of figures and times. Every value goes through maud, which escapes it.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::assets;
use super::session::Session;

/// The nav entries; `None` for pages outside them (login, an agent).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Servers,
    Operations,
    Events,
    None,
}

/// A whole page: `page` names it for the script (`<body data-page>`); `charts` adds uPlot.
pub struct Page<'a> {
    pub title: &'a str,
    pub page: &'a str,
    pub nav: Nav,
    pub charts: bool,
}

/// Renders a page with the nav (for a logged-in session) or without (login).
pub fn render(page: Page<'_>, session: Option<&Session>, content: Markup) -> Response {
    let links = [
        (Nav::Fleet, "/", "Fleet"),
        (Nav::Servers, "/servers", "Servers"),
        (Nav::Operations, "/operations", "Operations"),
        (Nav::Events, "/events", "Events"),
    ];
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title) " · Citrus" }
                link rel="stylesheet" href=(assets::url("panel.css"));
                @if page.charts {
                    link rel="stylesheet" href=(assets::url("uplot.css"));
                    script src=(assets::url("uplot.js")) defer {}
                }
                @if let Some(session) = session {
                    meta name="citrus-csrf" content=(session.csrf);
                }
                script src=(assets::url("panel.js")) defer {}
            }
            body data-page=(page.page) {
                header.top {
                    a.brand href="/" { span.logo {} "Citrus" }
                    @if session.is_some() {
                        nav {
                            @for (nav, href, label) in links {
                                a href=(href) class=[(nav == page.nav).then_some("active")] { (label) }
                            }
                            form.logout method="post" action="/logout" {
                                @if let Some(session) = session {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                }
                                button type="submit" { "Logout" }
                            }
                        }
                        span #live-state .live title="live updates" { "connecting" }
                    }
                }
                main { (content) }
            }
        }
    };
    let mut response = Html(markup.into_string()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A Unix-ms time: UTC in the text, the script makes it relative ("12 s ago").
pub fn time(ms: Option<i64>) -> Markup {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => html! {
            time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) data-ms=(t.timestamp_millis()) {
                (t.format("%Y-%m-%d %H:%M:%S UTC"))
            }
        },
        None => html! { span.muted { "—" } },
    }
}

/// Bytes as KiB, MiB, GiB (binary, one decimal).
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// A status badge: its class says how good the status is.
pub fn badge(status: &str) -> Markup {
    html! { span class={ "badge " (tone(status)) } data-status=(status) { (status) } }
}

/// The tone of a status word: `ok`, `bad`, `busy` or `idle` (shared with panel.js's `tone`).
pub fn tone(status: &str) -> &'static str {
    match status {
        "online" | "active" | "completed" => "ok",
        "failed" | "errored" | "offline" => "bad",
        "creating" | "provisioning" | "initializing" | "sent" | "starting" | "stopping"
        | "backoff" => "busy",
        _ => "idle",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(tone("errored"), "bad");
        assert_eq!(tone("initializing"), "busy");
        let t = time(Some(0)).into_string();
        assert!(
            t.contains("1970-01-01 00:00:00 UTC") && t.contains("data-ms=\"0\""),
            "{t}"
        );
    }

    #[test]
    fn values_are_escaped() {
        let evil = "<img src=x onerror=alert(1)>";
        let out = badge(evil).into_string();
        assert!(!out.contains("<img"), "{out}");
        assert!(out.contains("&lt;img src=x onerror=alert(1)&gt;"), "{out}");
    }
}
