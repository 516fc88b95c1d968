//! A stand-in DigitalOcean v2 API on 127.0.0.1: `POST /v2/droplets`, `GET /v2/droplets/{id}`,
//! `DELETE /v2/droplets/{id}`, with DigitalOcean's JSON shapes and error bodies. It records every
//! request and can be told to fail, hang or throttle. It runs on its own thread with its own
//! runtime, so sync tests and `#[tokio::test]`s can both use it; dropping it stops it.
//!
//! Also compiled into `src/engine/digitalocean.rs`'s unit tests (`#[path]`), so it uses nothing
//! but std, tokio, axum and serde_json.

// Not every test uses every knob.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use axum::extract::{Path, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const FIRST_ID: u64 = 1000;
const TOKEN: &str = "dop_v1_fake_5f2a9c0e7d";

struct State {
    token: String,
    next_id: u64,
    /// Live droplets: their create body and the GETs they have had.
    droplets: BTreeMap<u64, (Value, u32)>,
    active_after: u32,
    fail_create: Option<(u16, String)>,
    hang_create: bool,
    throttle_next: Option<u32>,
    created: Vec<Value>,
    requests: Vec<(String, String, Option<String>)>,
    deleted: Vec<u64>,
}

type Shared = Arc<Mutex<State>>;

/// The fake API; stopped on drop.
pub struct FakeDo {
    /// `http://127.0.0.1:PORT/v2`.
    pub base: String,
    state: Shared,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeDo {
    /// Starts the server on a free port.
    pub fn start() -> FakeDo {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(Mutex::new(State {
            token: TOKEN.to_owned(),
            next_id: FIRST_ID,
            droplets: BTreeMap::new(),
            active_after: 1,
            fail_create: None,
            hang_create: false,
            throttle_next: None,
            created: Vec::new(),
            requests: Vec::new(),
            deleted: Vec::new(),
        }));
        let app = Router::new()
            .route("/v2/droplets", post(create))
            .route("/v2/droplets/{id}", get(show).delete(delete))
            .fallback(not_found)
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake DigitalOcean runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("from_std");
                // Not graceful: a hanging create must not hold up the stop. Dropping the
                // runtime below cancels the connections still open.
                tokio::select! {
                    result = axum::serve(listener, app) => result.expect("fake DigitalOcean serve"),
                    _ = stopped => {}
                }
            });
        });
        FakeDo {
            base: format!("http://{addr}/v2"),
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The one API token accepted; any other gets DigitalOcean's 401.
    pub fn token(&self) -> &str {
        TOKEN
    }

    /// Every later create answers `status` with DigitalOcean's error JSON carrying `message`.
    pub fn fail_create(&self, status: u16, message: &str) {
        self.lock().fail_create = Some((status, message.to_owned()));
    }

    /// Every later create never answers.
    pub fn hang_create(&self) {
        self.lock().hang_create = true;
    }

    /// The next request (whatever it is) answers 429 with `Retry-After: retry_after_secs`.
    pub fn throttle_next(&self, retry_after_secs: u32) {
        self.lock().throttle_next = Some(retry_after_secs);
    }

    /// The JSON bodies of the successful creates, in order.
    pub fn created(&self) -> Vec<Value> {
        self.lock().created.clone()
    }

    /// Every request received: method, path (`/v2/droplets/1000`) and `Authorization` header.
    pub fn requests(&self) -> Vec<(String, String, Option<String>)> {
        self.lock().requests.clone()
    }

    /// The ids of the droplets deleted, in order.
    pub fn deleted(&self) -> Vec<u64> {
        self.lock().deleted.clone()
    }

    /// A droplet reads `active`, with public IPv4 `203.0.113.N`, from its `polls`-th GET on
    /// (default 1: the first GET); before that `new` with no networks.
    pub fn set_active_after(&self, polls: u32) {
        self.lock().active_after = polls;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for FakeDo {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A panicking test must not poison the fake for the others' assertions.
fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// DigitalOcean's error answer.
fn error(status: StatusCode, id: &str, message: &str) -> Response {
    (status, Json(json!({"id": id, "message": message}))).into_response()
}

fn not_found_error() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "The resource you were accessing could not be found.",
    )
}

/// Records the request, then answers for throttling and authentication, if either applies.
fn gate(state: &Shared, method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
    let mut state = lock(state);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state
        .requests
        .push((method.to_string(), path.to_owned(), auth.clone()));
    if let Some(secs) = state.throttle_next.take() {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "API Rate limit exceeded.",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Some(response);
    }
    if auth.as_deref() != Some(&format!("Bearer {}", state.token)) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unable to authenticate you",
        ));
    }
    None
}

/// DigitalOcean's droplet JSON for droplet `id`, created from `body`.
fn droplet_json(id: u64, body: &Value, active: bool) -> Value {
    let networks = match active {
        true => {
            let n = (id - FIRST_ID) % 254 + 1;
            json!({
                "v4": [
                    {"ip_address": format!("10.124.0.{n}"), "netmask": "255.255.240.0",
                     "gateway": "", "type": "private"},
                    {"ip_address": format!("203.0.113.{n}"), "netmask": "255.255.255.0",
                     "gateway": "203.0.113.254", "type": "public"},
                ],
                "v6": [],
            })
        }
        false => json!({"v4": [], "v6": []}),
    };
    json!({
        "id": id,
        "name": body["name"],
        "status": if active { "active" } else { "new" },
        "region": {"slug": body["region"]},
        "size_slug": body["size"],
        "tags": body["tags"],
        "networks": networks,
    })
}

async fn create(
    Extract(state): Extract<Shared>,
    method: Method,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(answer) = gate(&state, &method, "/v2/droplets", &headers) {
        return answer;
    }
    let hang = lock(&state).hang_create;
    if hang {
        std::future::pending::<()>().await;
    }
    let mut state = lock(&state);
    if let Some((status, message)) = state.fail_create.clone() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let id = match status.as_u16() {
            422 => "unprocessable_entity",
            s if s >= 500 => "server_error",
            _ => "bad_request",
        };
        return error(status, id, &message);
    }
    let body: Value = match serde_json::from_str(&body) {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    for key in ["name", "region", "size", "image"] {
        if !body[key].is_string() {
            let message = format!("You must specify a {key}.");
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable_entity",
                &message,
            );
        }
    }
    let id = state.next_id;
    state.next_id += 1;
    state.created.push(body.clone());
    let droplet = droplet_json(id, &body, false);
    state.droplets.insert(id, (body, 0));
    let links = json!({"actions": [{"id": id * 10, "rel": "create",
        "href": format!("https://api.digitalocean.com/v2/actions/{}", id * 10)}]});
    (
        StatusCode::ACCEPTED,
        Json(json!({"droplet": droplet, "links": links})),
    )
        .into_response()
}

async fn show(
    Extract(state): Extract<Shared>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Some(answer) = gate(&state, &method, &format!("/v2/droplets/{id}"), &headers) {
        return answer;
    }
    let mut state = lock(&state);
    let active_after = state.active_after;
    let Some((id, (body, polls))) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| Some((id, state.droplets.get_mut(&id)?)))
    else {
        return not_found_error();
    };
    *polls += 1;
    let droplet = droplet_json(id, body, *polls >= active_after);
    Json(json!({"droplet": droplet})).into_response()
}

async fn delete(
    Extract(state): Extract<Shared>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Some(answer) = gate(&state, &method, &format!("/v2/droplets/{id}"), &headers) {
        return answer;
    }
    let mut state = lock(&state);
    match id
        .parse::<u64>()
        .ok()
        .filter(|id| state.droplets.contains_key(id))
    {
        Some(id) => {
            state.droplets.remove(&id);
            state.deleted.push(id);
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found_error(),
    }
}

async fn not_found(
    Extract(state): Extract<Shared>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    match gate(&state, &method, uri.path(), &headers) {
        Some(answer) => answer,
        None => not_found_error(),
    }
}
