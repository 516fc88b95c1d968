//! The engine's HTTP error answer, [`ApiError`]: a status and one message saying what to do, as
//! `{"success": false, "error": {"code", "message"}}` (the shape of citrusd's control API). Every
//! handler of the engine answers its failures with it.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::store::StoreError;

/// An error answer: a status and one message saying what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
}

/// A handler's answer.
pub type ApiResult = Result<Response, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 after too many failed attempts.
    pub fn too_many(wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed attempts from this address: wrong credentials are refused for {} s more",
                    wait.as_secs().max(1)
                ),
            )
        }
    }

    /// 500 for a store failure: logged with its cause; the caller is told where to look,
    /// not the database's own words.
    pub fn internal(e: StoreError) -> Self {
        tracing::error!("{e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the engine's database failed; the engine's log says why",
        )
    }

    /// 404 `no {what} with id "{id}"`.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no {what} with id {id:?}"))
    }

    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The machine-readable kind of the error, one per status.
    fn code(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::BAD_GATEWAY => "upstream_failed",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({
                "success": false,
                "error": {"code": self.code(), "message": self.message},
            })),
        )
            .into_response();
        if let Some(wait) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(e)
    }
}

/// `?limit=` as a whole number in `1..=max` (`default` when absent), else a 400 naming the range.
pub fn parse_limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match text {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid `limit` {text:?}: give a whole number from 1 to {max}"
                ))
            }),
    }
}

/// The engine's shape for an error axum answered itself (a query or path it cannot decode, a
/// wrong method): see [`crate::sys::serve::json_errors`]. 422 becomes 400 (`bad_request`).
pub fn shape_error(status: StatusCode, message: String) -> Response {
    let status = match status {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        s => s,
    };
    ApiError::new(status, message).into_response()
}
