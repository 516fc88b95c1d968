//! The engine's web panel (SPEC 4, issue 11): server-rendered pages over the store and the live
//! view, a little JavaScript (`assets/panel/panel.js`) that calls the admin JSON API with the
//! session and follows `GET /admin/live`, and the vendored uPlot for charts. Everything is
//! embedded in the binary.
//!
//! Every response of the panel carries a strict Content-Security-Policy (no inline script or
//! style: the pages' script and CSS are files of their own) and `X-Frame-Options: DENY`; pages
//! are `no-store`. Values from agents (hostnames, app names, output) are escaped by maud on the
//! server and set with `textContent` in the browser.

mod agent;
mod assets;
mod events;
mod fleet;
mod layout;
mod login;
mod operations;
mod servers;
pub mod session;

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::html;

use super::store::StoreError;
use super::Engine;
use layout::{Nav, Page};

/// The panel's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The panel's routes: pages, login and logout, assets.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/", get(fleet::page))
        .route("/agents/{id}", get(agent::page))
        .route("/login", get(login::page).post(login::submit))
        .route("/logout", axum::routing::post(login::logout))
        .route("/servers", get(servers::page))
        .route("/operations", get(operations::page))
        .route("/events", get(events::page))
        .route("/assets/{hash}/{name}", get(assets::serve))
        .layer(axum::middleware::map_response(security_headers))
}

/// The headers every panel response carries.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 4] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A page that could not be made: a status and a sentence, as a small page.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        tracing::error!("{e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the engine's database failed; the engine's log says why",
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = Page {
            title: "Error",
            page: "error",
            nav: Nav::None,
            charts: false,
        };
        let content = html! {
            section.card.narrow {
                h1 { (self.status.as_u16()) " " (self.status.canonical_reason().unwrap_or("")) }
                p { (self.message) }
                p { a href="/" { "Back to the fleet" } }
            }
        };
        (self.status, layout::render(page, None, content)).into_response()
    }
}

type PageResult = Result<Response, PageError>;
