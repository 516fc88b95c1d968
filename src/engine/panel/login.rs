//! `GET /login` (the form), `POST /login` (form field `token` → session cookie, 303 to `/`),
//! `POST /logout` (ends the session on the server).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Nav, Page};
use super::session::{self, Session};
use super::{PageError, PageResult};
use crate::engine::{auth, Engine};

/// The login form with a message (an error) and the status to answer with.
fn form(status: StatusCode, message: Option<&str>) -> Response {
    let page = Page {
        title: "Log in",
        page: "login",
        nav: Nav::None,
        charts: false,
    };
    let content = html! {
        section.card.narrow.login {
            h1 { "Log in" }
            p.muted { "Give the engine's admin token: the content of its " code { "admin_token_file" } " or of " code { "CITRUS_ADMIN_TOKEN" } "." }
            @if let Some(message) = message {
                p.flash.bad #login-error role="alert" { (message) }
            }
            form method="post" action="/login" {
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button.primary type="submit" { "Log in" }
            }
        }
    };
    (status, layout::render(page, None, content)).into_response()
}

/// `GET /login`: the form, or `/` for a browser already logged in.
pub(super) async fn page(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> PageResult {
    match session::lookup(&engine, &headers).await? {
        Some(_) => Ok(Redirect::to("/").into_response()),
        None => Ok(form(StatusCode::OK, None)),
    }
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// `POST /login`: a right token starts a session; wrong ones count against the address in the
/// engine's limiter, which keeps accepting the right token (see [`auth::FailureLimiter`]).
pub(super) async fn submit(
    State(engine): State<Arc<Engine>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Form<LoginForm>, FormRejection>,
) -> PageResult {
    if !session::origin_ok(&engine, &headers) {
        return Ok(form(
            StatusCode::FORBIDDEN,
            Some("cross-origin login refused: log in from the engine's own page"),
        ));
    }
    let ip = peer.ip();
    if let Some(wait) = engine.limiter.refused(ip) {
        return Ok(too_many(wait));
    }
    let Ok(Form(body)) = body else {
        return Ok(form(
            StatusCode::BAD_REQUEST,
            Some("the form needs the field `token` (application/x-www-form-urlencoded)"),
        ));
    };
    if auth::matches(body.token.trim(), &engine.admin_token_hash) {
        let cookie = session::start(&engine).await?;
        tracing::info!(%ip, "panel login");
        let mut response = Redirect::to("/").into_response();
        response.headers_mut().insert(header::SET_COOKIE, cookie);
        return Ok(response);
    }
    tracing::warn!(%ip, "panel login with a wrong token");
    match engine.limiter.failed(ip) {
        Some(wait) => Ok(too_many(wait)),
        None => Ok(form(StatusCode::UNAUTHORIZED, Some("wrong admin token"))),
    }
}

fn too_many(wait: std::time::Duration) -> Response {
    let message = format!(
        "too many wrong tokens from this address: wrong tokens are refused for {} s more (the right one still works)",
        wait.as_secs().max(1)
    );
    let mut response = form(StatusCode::TOO_MANY_REQUESTS, Some(&message));
    if let Ok(value) = wait.as_secs().max(1).to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /logout`: deletes the session row and clears the cookie; 303 to `/login`.
pub(super) async fn logout(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    session: Session,
    body: Result<Form<LogoutForm>, FormRejection>,
) -> PageResult {
    let csrf = body.ok().and_then(|Form(f)| f.csrf);
    let csrf_ok = csrf.is_some_and(|c| session.csrf_matches(c.as_bytes()));
    if !session::origin_ok(&engine, &headers) || !csrf_ok {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "logout refused: use the Logout button of a panel page",
        ));
    }
    let cookie = session::end(&engine, &session).await?;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}
