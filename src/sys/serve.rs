//! Bounded HTTP/1 serving, for citrusd's control socket and metrics listener and for the engine:
//! a small accept loop in place of `axum::serve`, which has no timeout and no cap.
//!
//! - **Cap.** At most [`Limits::max_connections`] connections are served at once. One more takes
//!   the place of the connection idle for longest (a half-sent request, an idle keep-alive), so a
//!   flood cannot lock a real client out; when none is idle it is accepted and closed at once (no
//!   buffer, no task), so the excess costs a descriptor for an instant.
//! - **Header and idle timeout.** A request head must arrive within [`Limits::header_timeout`] of
//!   the connection's start or of the previous response's end: the same timer closes half-sent
//!   requests and idle keep-alive connections (hyper's `header_read_timeout`).
//! - **Body timeout.** A request body must arrive within [`Limits::body_timeout`] of the head.
//! - **Write stall.** A write that makes no progress for [`Limits::write_timeout`] (the peer stopped
//!   reading) ends the connection; an idle stream (a quiet `logs --follow`) is not a stall.
//! - **Upgrades.** An upgraded connection (the engine's agent WebSocket) leaves the cap and the
//!   header timeout when the upgrade completes; the write stall still applies to it.
//!
//! Both APIs decode their JSON request bodies through [`json_object`] and answer refusals through
//! [`json_errors`], each in its own error shape.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Sleep;

/// The bounds of one listener. See the module header for what each one covers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
}

/// hyper's read and write buffers per connection, so that the cap bounds memory too (hyper's
/// default, ~400 KiB, times a thousand connections would be 400 MiB). Bodies stream through it.
const MAX_BUF: usize = 32 * 1024;

/// Refusals at the cap are logged at most this often (with their count), not once each.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// One served connection, as the accept loop sees it.
struct Slot {
    /// Requests in flight (until their response body is dropped) and since when none is.
    state: Mutex<(usize, Instant)>,
    /// Told to close (evicted for a newcomer).
    evict: Notify,
}

impl Slot {
    /// Since when the connection has had no request in flight, if it has none.
    fn idle_since(&self) -> Option<Instant> {
        let (in_flight, since) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        (in_flight == 0).then_some(since)
    }
}

/// Marks a request in flight on its connection until dropped (with the response body).
struct InFlight(Arc<Slot>);

impl InFlight {
    fn new(slot: &Arc<Slot>) -> InFlight {
        slot.state.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
        InFlight(slot.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = state.0.saturating_sub(1);
        state.1 = Instant::now();
    }
}

/// The connections being served, by id.
type Slots = Arc<Mutex<HashMap<u64, Arc<Slot>>>>;

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then lets the
/// connections in flight finish (they are told to close after their current request) and
/// returns when they have. `info` gives each connection's [`ConnectInfo`] value.
///
/// At the cap, a newcomer takes the place of the connection idle for longest (no request in
/// flight: a half-sent head, or keep-alive between requests), so a flood of half-sent requests
/// cannot lock a real client out; when every connection has a request in flight, the newcomer
/// is closed at once.
pub async fn serve<L, T>(
    mut listener: L,
    router: Router,
    limits: Limits,
    info: impl Fn(&L::Io, L::Addr) -> T,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    T: Clone + Send + Sync + 'static,
{
    let cap = limits.max_connections.max(1);
    let slots: Slots = Arc::default();
    let mut next_id: u64 = 0;
    // Each connection task holds a clone: `recv` returns `None` once all have ended.
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut refused, mut evicted): (u64, u64) = (0, 0);
    let mut logged_at: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.as_mut() => break,
        };
        let slot = Arc::new(Slot {
            state: Mutex::new((0, Instant::now())),
            evict: Notify::new(),
        });
        let id = next_id;
        next_id += 1;
        {
            let mut open = slots.lock().unwrap_or_else(|e| e.into_inner());
            if open.len() >= cap {
                let oldest = open
                    .iter()
                    .filter_map(|(id, s)| s.idle_since().map(|since| (since, *id)))
                    .min();
                match oldest.and_then(|(_, id)| open.remove(&id)) {
                    Some(victim) => {
                        victim.evict.notify_one();
                        evicted += 1;
                    }
                    None => {
                        // Accepted and closed at once: the peer sees EOF, we keep nothing.
                        drop(open);
                        drop(io);
                        refused += 1;
                        if logged_at.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                            tracing::warn!(
                                limit = cap,
                                refused,
                                evicted,
                                "connection refused: {cap} connections open with a request in flight (the cap of this listener)"
                            );
                            logged_at = Some(Instant::now());
                        }
                        continue;
                    }
                }
            }
            open.insert(id, slot.clone());
        }
        let info = info(&io, addr);
        let router = router.clone();
        let mut stop = stop_rx.clone();
        let alive = alive_tx.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let served = slot.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let in_flight = InFlight::new(&served);
                let mut req =
                    req.map(|body| Body::new(DeadlineBody::new(body, limits.body_timeout)));
                req.extensions_mut().insert(ConnectInfo(info.clone()));
                let mut router = router.clone();
                async move {
                    let response = tower_service::Service::call(&mut router, req)
                        .await
                        .unwrap_or_else(|e| match e {});
                    Ok::<_, Infallible>(response.map(|body| {
                        Body::new(InFlightBody {
                            inner: body,
                            _in_flight: in_flight,
                        })
                    }))
                }
            });
            let io = TokioIo::new(StallGuard::new(io, limits.write_timeout));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_BUF)
                .serve_connection(io, service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = slot.evict.notified() => Ok(()),
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
            let mut open = slots.lock().unwrap_or_else(|e| e.into_inner());
            if open.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                open.remove(&id);
            }
            drop(alive);
        });
    }
    let _ = stop_tx.send(true);
    drop(alive_tx);
    // Every connection task ended (upgraded connections left when the upgrade completed).
    let _ = alive_rx.recv().await;
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct InFlightBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for InFlightBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's I/O with the write-stall timeout.
struct StallGuard<T> {
    io: T,
    limit: Duration,
    /// Armed while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    fn new(io: T, limit: Duration) -> Self {
        StallGuard {
            io,
            limit,
            stalled: None,
        }
    }

    /// After the inner I/O answered: progress disarms the timer; `Pending` arms it and fails
    /// once it expires.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer read nothing for {}",
                crate::config::format_duration(limit)
            ),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

/// A request body that must arrive within a deadline counted from the request head.
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0}")]
pub struct BodyTimeout(String);

impl HttpBody for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(self.deadline.as_mut().poll(cx));
        let limit = crate::config::format_duration(self.limit);
        Poll::Ready(Some(Err(BodyTimeout(limit).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The one message for a request body that is JSON but not an object.
pub const NOT_AN_OBJECT: &str = "the body must be a JSON object";

/// Decodes a request body that must be one JSON object; an empty body is `{}`. serde alone
/// would take a JSON array for a struct, field by field in order (`["a"]` as `{"name": "a"}`),
/// so anything else is refused first. The error is the message to answer `bad_request` with.
pub fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = body.trim_ascii_start();
    let kind = match text.first() {
        None => return serde_json::from_slice(b"{}").map_err(|e| format!("empty body: {e}")),
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b'-' | b'0'..=b'9') => Some("a number"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        Some(_) => Some("something else"),
    };
    match kind {
        // Not JSON at all: serde's message says where it fails.
        Some(kind) if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() => {
            Err(format!("{NOT_AN_OBJECT}, not {kind}"))
        }
        _ => serde_json::from_slice(text).map_err(|e| format!("invalid JSON body: {e}")),
    }
}

/// Gives an error answer that is not JSON yet (axum's own refusals: a query, path or body it
/// cannot decode, an unknown method, a body too large) the surface's JSON shape: `shape` gets
/// the status and a message naming the request, and makes the answer. `Allow` and `Retry-After`
/// are kept. Successful answers, and errors already JSON, pass untouched.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    shape: fn(axum::http::StatusCode, String) -> axum::response::Response,
) -> axum::response::Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // axum's refusals are one short line; a longer text is not buffered (the status names it).
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let message = match (status, text) {
        (axum::http::StatusCode::METHOD_NOT_ALLOWED, _) => {
            let allow = parts
                .headers
                .get(axum::http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            format!("{method} is not allowed on {path}; it takes {allow}")
        }
        (_, "") => format!(
            "{method} {path}: {}",
            status.canonical_reason().unwrap_or("refused")
        ),
        (_, text) => format!("{method} {path}: {text}"),
    };
    let mut shaped = shape(status, message);
    for name in [axum::http::header::ALLOW, axum::http::header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            shaped.headers_mut().insert(name, value.clone());
        }
    }
    shaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    struct Named {
        name: Option<String>,
    }

    #[test]
    fn only_an_object_or_nothing_decodes() {
        let ok = |body: &str| json_object::<Named>(body.as_bytes());
        assert_eq!(ok(""), Ok(Named::default()));
        assert_eq!(ok(" \n"), Ok(Named::default()));
        assert_eq!(ok(r#" {"name": "a"}"#).unwrap().name.as_deref(), Some("a"));
        // serde alone reads this as {"name": "a"}.
        assert_eq!(
            ok(r#"["a"]"#).unwrap_err(),
            "the body must be a JSON object, not an array"
        );
        for (body, kind) in [
            ("\"a\"", "a string"),
            ("-1", "a number"),
            ("true", "a boolean"),
        ] {
            assert_eq!(
                ok(body).unwrap_err(),
                format!("{NOT_AN_OBJECT}, not {kind}")
            );
        }
        assert_eq!(
            ok("null").unwrap_err(),
            format!("{NOT_AN_OBJECT}, not null")
        );
        // Not JSON at all, or an object of the wrong types: serde says where.
        assert!(ok("nope").unwrap_err().starts_with("invalid JSON body: "));
        assert!(ok("[1,").unwrap_err().starts_with("invalid JSON body: "));
        assert!(ok(r#"{"name": 5}"#)
            .unwrap_err()
            .starts_with("invalid JSON body: invalid type"));
    }
}
