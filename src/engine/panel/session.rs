//! Panel sessions: `POST /login` exchanges the admin token for a session cookie, pages and the
//! admin API accept the cookie, `POST /logout` ends it on the server.
//!
//! The cookie `citrus_session` holds 32 random bytes (hex); the store keeps only their SHA-256
//! with the session's CSRF token and expiry (12 h). A request authenticated by the cookie that
//! changes something must carry the CSRF token in `x-csrf-token` (the panel's pages hold it in a
//! `<meta>`), and its `Origin`, when present, must be the engine's own; `SameSite=Strict` on the
//! cookie is the second line.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::super::error::ApiError;
use super::super::store::StoreError;
use super::super::{auth, now, Engine};

/// The session cookie's name.
pub const COOKIE: &str = "citrus_session";
/// How long a session lasts from login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Live sessions kept at most; a login beyond drops the oldest.
pub const MAX_SESSIONS: i64 = 1000;
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A logged-in panel session.
#[derive(Clone)]
pub struct Session {
    id_hash: String,
    /// What state-changing requests of this session must send in `x-csrf-token`.
    pub csrf: String,
}

impl Session {
    /// Whether `given` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, given: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(given, self.csrf.as_bytes()).is_ok()
    }
}

/// The token is a credential: never in a log.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(…)")
    }
}

/// The value of cookie `citrus_session`, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The session of the request's cookie, if it has a live one.
pub async fn lookup(engine: &Engine, headers: &HeaderMap) -> Result<Option<Session>, StoreError> {
    let Some(id) = cookie(headers) else {
        return Ok(None);
    };
    let id_hash = auth::hash(id);
    Ok(engine
        .store
        .get_session(&id_hash, now())
        .await?
        .map(|row| Session {
            id_hash,
            csrf: row.csrf_token,
        }))
}

/// Starts a session; answers its `Set-Cookie` value.
pub async fn start(engine: &Engine) -> Result<HeaderValue, StoreError> {
    let id = auth::random_hex(32);
    let csrf = auth::random_hex(32);
    let at = now();
    engine
        .store
        .insert_session(
            &auth::hash(&id),
            &csrf,
            at,
            at + LIFETIME.as_millis() as i64,
            MAX_SESSIONS,
        )
        .await?;
    Ok(set_cookie(engine, &id, LIFETIME.as_secs()))
}

/// Ends the session on the server; answers the `Set-Cookie` value that clears it.
pub async fn end(engine: &Engine, session: &Session) -> Result<HeaderValue, StoreError> {
    engine.store.delete_session(&session.id_hash).await?;
    Ok(set_cookie(engine, "", 0))
}

fn set_cookie(engine: &Engine, value: &str, max_age: u64) -> HeaderValue {
    let secure = match engine.config.public_url.starts_with("https://") {
        true => "; Secure",
        false => "",
    };
    let text =
        format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).expect("hex and fixed text make a valid header")
}

/// The engine's own origin (`scheme://host[:port]` of `public_url`).
pub fn own_origin(engine: &Engine) -> &str {
    let url = engine.config.public_url.as_str();
    let rest_at = url.find("://").map_or(0, |i| i + 3);
    match url[rest_at..].find('/') {
        Some(slash) => &url[..rest_at + slash],
        None => url,
    }
}

/// Whether the request's `Origin`, if it has one, is the engine's own.
pub fn origin_ok(engine: &Engine, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => origin.as_bytes() == own_origin(engine).as_bytes(),
    }
}

/// The admin API's check for a request without a bearer token: `None` when it has no session
/// cookie either (the caller refuses it as before); else whether the session lets it through.
pub async fn authorize_api(
    engine: &Engine,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Result<(), ApiError>> {
    cookie(headers)?;
    let session = match lookup(engine, headers).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            return Some(Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the panel session has expired or was ended: log in again at /login",
            )))
        }
        Err(e) => return Some(Err(ApiError::internal(e))),
    };
    if matches!(*method, Method::GET | Method::HEAD) {
        return Some(Ok(()));
    }
    if !origin_ok(engine, headers) {
        return Some(Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "cross-origin request refused: a panel session acts only from {}",
                own_origin(engine)
            ),
        )));
    }
    let given = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes);
    let right = given.is_some_and(|given| session.csrf_matches(given));
    Some(match right {
        true => Ok(()),
        false => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing or wrong x-csrf-token header: a request made with the panel's session must carry the token of its page",
        )),
    })
}

/// A page's session; without one the browser is sent to `/login` (303).
impl FromRequestParts<Arc<Engine>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        engine: &Arc<Engine>,
    ) -> Result<Self, Self::Rejection> {
        match lookup(engine, &parts.headers).await {
            Ok(Some(session)) => Ok(session),
            Ok(None) => Err(Redirect::to("/login").into_response()),
            Err(e) => Err(super::PageError::from(e).into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(cookie(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; citrus_session=abc ; b=2"),
        );
        assert_eq!(cookie(&headers), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("citrus_session="));
        assert_eq!(cookie(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("xcitrus_session=1"),
        );
        assert_eq!(cookie(&headers), None);
    }
}
