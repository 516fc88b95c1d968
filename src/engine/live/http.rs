//! The live view's admin routes: `GET /admin/fleet` and the event stream `GET /admin/live`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::stream::{Subscriber, HELLO, KEEP_ALIVE};
use crate::engine::error::{parse_limit, ApiError};
use crate::engine::Engine;

/// Agents listed by `GET /admin/fleet` without `?limit=`, and the most that may be asked for.
const FLEET_DEFAULT: usize = 1000;
const FLEET_MAX: usize = 10_000;
/// The longest `?q=` filter.
const QUERY_MAX: usize = 200;

/// The live view's routes (behind the admin check of [`crate::engine::api::admin_routes`]).
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/admin/fleet", get(fleet))
        .route("/admin/live", get(live))
        .route("/admin/events", get(super::events::list))
}

#[derive(Deserialize)]
struct FleetQuery {
    q: Option<String>,
    limit: Option<String>,
}

/// `GET /admin/fleet?q=&limit=` → `{agents, total, servers}`: the agents from memory, problems
/// first, then by name.
async fn fleet(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<FleetQuery>,
) -> Result<Response, ApiError> {
    let limit = parse_limit(query.limit.as_deref(), FLEET_DEFAULT, FLEET_MAX)?;
    if query.q.as_ref().is_some_and(|q| q.len() > QUERY_MAX) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "`q` is longer than {QUERY_MAX} bytes: filter on part of a name, id or hostname"
            ),
        ));
    }
    let (agents, total) = engine.live.snapshot(query.q.as_deref(), limit);
    let servers = engine.store.list_servers().await?;
    Ok(Json(json!({"agents": agents, "total": total, "servers": servers})).into_response())
}

#[derive(Deserialize)]
struct LiveQuery {
    agent: Option<String>,
}

/// Closes its stream when the response body is dropped (the client went away).
struct Open {
    engine: Arc<Engine>,
    sub: Arc<Subscriber>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.engine.live.unsubscribe(&self.sub);
    }
}

/// `GET /admin/live[?agent=ID]`: Server-Sent Events (see the README's "Live stream").
async fn live(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<LiveQuery>,
) -> Result<Response, ApiError> {
    let agent = query.agent.as_deref();
    if let Some(id) = agent {
        if !engine.live.has(id) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no agent with id {id:?}: see GET /admin/fleet"),
            ));
        }
    }
    let sub = engine
        .live
        .subscribe(agent)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let open = Open { engine, sub };
    let hello =
        futures_util::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(HELLO)) });
    let frames = futures_util::stream::unfold(open, |open| async move {
        let bytes = open.sub.next(KEEP_ALIVE).await?;
        Some((Ok::<_, Infallible>(bytes), open))
    });
    let mut response =
        Body::from_stream(futures_util::StreamExt::chain(hello, frames)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies (nginx) must pass each message on at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
