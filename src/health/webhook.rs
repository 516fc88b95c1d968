//! Webhook notifications (crashes, restarts, …) that never block supervision.
//!
//! [`Webhook::send`] only enqueues; one background task POSTs events in order
//! as Slack-compatible JSON, retrying transient failures with exponential
//! backoff. When the queue is full, events are dropped and counted.
//!
//! Webhook URLs are credentials (Slack's carry a secret in their path), so the
//! full URL is never logged or shown: only `scheme://host[:port]`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::sys::backoff::Backoff;

/// Default for [`WebhookConfig::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// Default for [`WebhookConfig::first_backoff`].
pub const DEFAULT_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Default for [`WebhookConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`WebhookConfig::queue`].
pub const DEFAULT_QUEUE: usize = 256;
/// The longest backoff between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// At most one "queue full" warning per this interval.
const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

/// Something worth telling a person about.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Event {
    /// The machine's name.
    pub host: String,
    /// The app concerned, if any.
    pub app: Option<String>,
    /// A short event name, e.g. `crashed`, `restart-limit`.
    pub event: String,
    /// A human-readable description.
    pub message: String,
}

/// Where and how to deliver events. `Debug` shows only the URL's origin.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The endpoint (secret: never logged).
    pub url: String,
    /// Attempts per event, including the first (at least 1 is made).
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles each time, up to [`MAX_BACKOFF`].
    pub first_backoff: Duration,
    /// Timeout of one attempt (connect, request and response head).
    pub request_timeout: Duration,
    /// Events that may wait while one is being delivered.
    pub queue: usize,
}

impl WebhookConfig {
    /// A configuration for `url` with the default limits.
    pub fn new(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            first_backoff: DEFAULT_FIRST_BACKOFF,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            queue: DEFAULT_QUEUE,
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &format_args!("{}/<redacted>", url_origin(&self.url)))
            .field("max_attempts", &self.max_attempts)
            .field("first_backoff", &self.first_backoff)
            .field("request_timeout", &self.request_timeout)
            .field("queue", &self.queue)
            .finish()
    }
}

/// The part of a URL that is safe to show: `scheme://host[:port]`, without
/// user info, path or query; `<invalid URL>` when it does not parse.
pub fn url_origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) if url.has_host() => {
            let mut origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
            if let Some(port) = url.port() {
                origin.push_str(&format!(":{port}"));
            }
            origin
        }
        _ => "<invalid URL>".to_owned(),
    }
}

/// Counters for `describe`/metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WebhookStats {
    /// Events delivered (answered 2xx).
    pub sent: u64,
    /// Events given up on: retries exhausted, or a non-retryable answer.
    pub failed: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events accepted but not yet sent or failed (waiting or in flight).
    pub queued: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    queued: AtomicU64,
    last_drop_warn: Mutex<Option<Instant>>,
}

struct Shared {
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    origin: String,
    queue: usize,
}

/// A handle on the webhook sender; cheap to clone. The sender task stops once
/// every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct Webhook {
    shared: Arc<Shared>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("origin", &self.shared.origin)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Webhook {
    /// Starts the sender task on the current runtime (panics outside one).
    ///
    /// An unusable URL does not fail here: each event is then counted as
    /// failed with a warning.
    pub fn start(config: WebhookConfig) -> Webhook {
        let origin = url_origin(&config.url);
        let queue = config.queue.max(1);
        let (tx, rx) = mpsc::channel(queue);
        let counters = Arc::new(Counters::default());
        let sender = Sender::new(&config, origin.clone(), counters.clone());
        tokio::spawn(sender.run(rx));
        Webhook {
            shared: Arc::new(Shared {
                tx,
                counters,
                origin,
                queue,
            }),
        }
    }

    /// Never blocks and never fails: enqueues `event`, or counts a drop when
    /// the queue is full (logged with `tracing::warn` at most once per 60 s).
    pub fn send(&self, event: Event) {
        let c = &self.shared.counters;
        c.queued.fetch_add(1, Ordering::Relaxed);
        let why = match self.shared.tx.try_send(event) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "queue full",
            Err(mpsc::error::TrySendError::Closed(_)) => "sender task not running",
        };
        c.queued.fetch_sub(1, Ordering::Relaxed);
        let dropped = c.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = c
            .last_drop_warn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| now.duration_since(at) >= DROP_WARN_EVERY) {
            *last = Some(now);
            drop(last);
            tracing::warn!(
                webhook = %self.shared.origin,
                queue = self.shared.queue,
                dropped_total = dropped,
                "webhook {why}: dropping events"
            );
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> WebhookStats {
        let c = &self.shared.counters;
        WebhookStats {
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
        }
    }
}

/// The JSON body: Slack's `text` plus the raw fields.
#[derive(serde::Serialize)]
struct Payload<'a> {
    text: String,
    host: &'a str,
    app: Option<&'a str>,
    event: &'a str,
    message: &'a str,
}

impl<'a> Payload<'a> {
    fn new(e: &'a Event) -> Payload<'a> {
        let text = match &e.app {
            Some(app) => format!("[{}] {}: {}: {}", e.host, app, e.event, e.message),
            None => format!("[{}] {}: {}", e.host, e.event, e.message),
        };
        Payload {
            text,
            host: &e.host,
            app: e.app.as_deref(),
            event: &e.event,
            message: &e.message,
        }
    }
}

/// What one attempt came to.
enum Outcome {
    Sent,
    /// Worth another attempt, after `retry_after` when the server said so.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Not worth retrying (e.g. 404).
    Fatal(String),
}

/// The background task's state.
struct Sender {
    /// The client and parsed URL, or why there are none.
    target: Result<(reqwest::Client, reqwest::Url), String>,
    origin: String,
    max_attempts: u32,
    backoff: Backoff,
    counters: Arc<Counters>,
}

impl Sender {
    fn new(config: &WebhookConfig, origin: String, counters: Arc<Counters>) -> Sender {
        let target = match reqwest::Url::parse(&config.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                reqwest::Client::builder()
                    .timeout(config.request_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent("citrusd")
                    .build()
                    .map(|client| (client, url))
                    .map_err(|e| format!("cannot build HTTP client: {}", error_chain(&e)))
            }
            _ => Err("the URL is not a valid http(s) URL".to_owned()),
        };
        Sender {
            target,
            origin,
            max_attempts: config.max_attempts.max(1),
            backoff: Backoff {
                first: config.first_backoff,
                max: MAX_BACKOFF,
            },
            counters,
        }
    }

    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        while let Some(event) = rx.recv().await {
            let sent = self.deliver(&event).await;
            let c = &self.counters;
            c.queued.fetch_sub(1, Ordering::Relaxed);
            if sent {
                c.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Delivers one event, retrying; true when it was accepted.
    async fn deliver(&self, event: &Event) -> bool {
        let origin = &self.origin;
        let (client, url) = match &self.target {
            Ok(target) => target,
            Err(reason) => {
                tracing::warn!(webhook = %origin, event = %event.event, "webhook not sent: {reason}");
                return false;
            }
        };
        let body = match serde_json::to_vec(&Payload::new(event)) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(webhook = %origin, "webhook payload: {e}");
                return false;
            }
        };
        for attempt in 1..=self.max_attempts {
            let (reason, retry_after) = match attempt_once(client, url, body.clone()).await {
                Outcome::Sent => return true,
                Outcome::Fatal(reason) => {
                    tracing::warn!(
                        webhook = %origin,
                        event = %event.event,
                        "webhook failed (not retried): {reason}"
                    );
                    return false;
                }
                Outcome::Retry {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            if attempt == self.max_attempts {
                tracing::warn!(
                    webhook = %origin,
                    event = %event.event,
                    "webhook failed after {attempt} attempts: {reason}"
                );
                break;
            }
            let delay = retry_after
                .map(|d| d.min(MAX_RETRY_AFTER))
                .unwrap_or_else(|| self.backoff.delay(attempt));
            tracing::debug!(
                webhook = %origin,
                "webhook attempt {attempt}/{} failed: {reason}; retrying in {delay:?}",
                self.max_attempts
            );
            tokio::time::sleep(delay).await;
        }
        false
    }
}

/// One POST. Errors are described without the URL.
async fn attempt_once(client: &reqwest::Client, url: &reqwest::Url, body: Vec<u8>) -> Outcome {
    let response = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                return Outcome::Sent;
            }
            let reason = format!("answered {status}");
            let code = status.as_u16();
            if code == 429 || status.is_server_error() {
                let retry_after = if code == 429 || code == 503 {
                    response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                } else {
                    None
                };
                Outcome::Retry {
                    reason,
                    retry_after,
                }
            } else {
                Outcome::Fatal(reason)
            }
        }
        Err(e) if e.is_builder() => Outcome::Fatal(error_chain(&e.without_url())),
        Err(e) => Outcome::Retry {
            reason: error_chain(&e.without_url()),
            retry_after: None,
        },
    }
}

/// An error and its sources, `: `-separated (callers strip URLs first).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// How the test receiver answers a request.
    #[derive(Clone, Copy)]
    enum Reply {
        Status(u16),
        RetryAfter(u16, u32),
        Hang,
    }

    struct Request {
        head: String,
        body: Vec<u8>,
        at: Instant,
    }

    /// A tiny HTTP server on 127.0.0.1:0 that records requests and answers
    /// them from `script`, then with 200.
    struct Receiver {
        port: u16,
        seen: Arc<Mutex<Vec<Request>>>,
    }

    impl Receiver {
        async fn start(script: &[Reply]) -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
            let record = seen.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(stream, script.clone(), record.clone()));
                }
            });
            Receiver { port, seen }
        }

        fn url(&self) -> String {
            format!(
                "http://127.0.0.1:{}/services/T0/B0/SECRETPATH?token=hunter2",
                self.port
            )
        }

        fn count(&self) -> usize {
            self.seen.lock().unwrap().len()
        }

        fn bodies(&self) -> Vec<serde_json::Value> {
            let seen = self.seen.lock().unwrap();
            seen.iter()
                .map(|r| serde_json::from_slice(&r.body).unwrap())
                .collect()
        }
    }

    async fn serve(
        mut stream: TcpStream,
        script: Arc<Mutex<VecDeque<Reply>>>,
        seen: Arc<Mutex<Vec<Request>>>,
    ) {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while data.len() < head_end + length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
        let reply = script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Status(200));
        seen.lock().unwrap().push(Request {
            head,
            body: data[head_end..head_end + length].to_vec(),
            at: Instant::now(),
        });
        let answer = match reply {
            Reply::Status(code) => format!(
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            Reply::RetryAfter(code, secs) => format!(
                "HTTP/1.1 {code} X\r\nRetry-After: {secs}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            Reply::Hang => {
                let _ = stream.read(&mut buf).await; // until the client gives up
                return;
            }
        };
        let _ = stream.write_all(answer.as_bytes()).await;
    }

    fn quick(url: String) -> WebhookConfig {
        WebhookConfig {
            max_attempts: 3,
            first_backoff: Duration::from_millis(10),
            request_timeout: Duration::from_secs(5),
            ..WebhookConfig::new(url)
        }
    }

    fn event(n: u32) -> Event {
        Event {
            host: "web1".into(),
            app: Some("api".into()),
            event: "crashed".into(),
            message: format!("exit code {n}"),
        }
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A port nothing listens on.
    async fn dead_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn delivers_slack_compatible_json() {
        let rx = Receiver::start(&[]).await;
        let hook = Webhook::start(quick(rx.url()));
        hook.send(event(1));
        hook.send(Event {
            app: None,
            event: "started".into(),
            message: "citrusd 0.1".into(),
            ..event(0)
        });
        wait_until("2 sent", || hook.stats().sent == 2).await;
        assert_eq!(
            hook.stats(),
            WebhookStats {
                sent: 2,
                ..Default::default()
            }
        );
        let bodies = rx.bodies();
        assert_eq!(
            bodies[0],
            serde_json::json!({"text": "[web1] api: crashed: exit code 1", "host": "web1",
                "app": "api", "event": "crashed", "message": "exit code 1"})
        );
        assert_eq!(
            bodies[1],
            serde_json::json!({"text": "[web1] started: citrusd 0.1", "host": "web1",
                "app": null, "event": "started", "message": "citrusd 0.1"})
        );
        let seen = rx.seen.lock().unwrap();
        let head = seen[0].head.to_ascii_lowercase();
        assert!(head.starts_with("post /services/t0/b0/secretpath?token=hunter2 http/1.1\r\n"));
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn retries_a_500_in_order() {
        let rx = Receiver::start(&[Reply::Status(500)]).await;
        let hook = Webhook::start(quick(rx.url()));
        for n in 1..=3 {
            hook.send(event(n));
        }
        wait_until("3 sent", || hook.stats().sent == 3).await;
        assert_eq!(hook.stats().failed, 0);
        assert_eq!(hook.stats().queued, 0);
        let messages: Vec<_> = rx.bodies().iter().map(|b| b["message"].clone()).collect();
        assert_eq!(
            messages,
            ["exit code 1", "exit code 1", "exit code 2", "exit code 3"]
        );
    }

    #[tokio::test]
    async fn honours_retry_after_on_429() {
        let rx = Receiver::start(&[Reply::RetryAfter(429, 1)]).await;
        let hook = Webhook::start(quick(rx.url()));
        hook.send(event(1));
        wait_until("sent", || hook.stats().sent == 1).await;
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let waited = seen[1].at.duration_since(seen[0].at);
        assert!(waited >= Duration::from_millis(900), "waited {waited:?}");
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let rx = Receiver::start(&[Reply::Status(404)]).await;
        let hook = Webhook::start(quick(rx.url()));
        hook.send(event(1));
        hook.send(event(2));
        wait_until("one failed, one sent", || {
            let s = hook.stats();
            s.failed == 1 && s.sent == 1
        })
        .await;
        assert_eq!(rx.count(), 2);
    }

    #[tokio::test]
    async fn refused_port_fails_after_max_attempts() {
        let port = dead_port().await;
        let hook = Webhook::start(quick(format!("http://127.0.0.1:{port}/hook")));
        let started = Instant::now();
        hook.send(event(1));
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(hook.stats().queued, 1);
        wait_until("failed", || hook.stats().failed == 1).await;
        assert_eq!(
            hook.stats(),
            WebhookStats {
                failed: 1,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn hanging_receiver_times_out() {
        let rx = Receiver::start(&[Reply::Hang, Reply::Hang]).await;
        let hook = Webhook::start(WebhookConfig {
            max_attempts: 2,
            request_timeout: Duration::from_millis(200),
            ..quick(rx.url())
        });
        hook.send(event(1));
        wait_until("failed", || hook.stats().failed == 1).await;
        assert_eq!(rx.count(), 2);
        assert_eq!(hook.stats().sent, 0);
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let rx = Receiver::start(&[]).await;
        let hook = Webhook::start(WebhookConfig {
            queue: 2,
            ..quick(rx.url())
        });
        // On this current-thread runtime the sender task cannot run until we
        // await, so the queue holds exactly 2 of these.
        for n in 1..=5 {
            hook.send(event(n));
        }
        assert_eq!(
            hook.stats(),
            WebhookStats {
                dropped: 3,
                queued: 2,
                ..Default::default()
            }
        );
        wait_until("2 sent", || hook.stats().sent == 2).await;
        assert_eq!(hook.stats().queued, 0);
        assert_eq!(rx.count(), 2);
    }

    #[tokio::test]
    async fn invalid_url_fails_each_event() {
        let hook = Webhook::start(WebhookConfig::new("not a url"));
        hook.send(event(1));
        wait_until("failed", || hook.stats().failed == 1).await;
    }

    #[test]
    fn debug_redacts_the_url() {
        let config =
            WebhookConfig::new("https://user:pw@hooks.slack.com/services/T0/B0/XSECRET?token=abc");
        let debug = format!("{config:?}");
        assert!(debug.contains("https://hooks.slack.com"), "{debug}");
        for secret in ["services", "XSECRET", "token", "abc", "user", "pw@"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert_eq!(
            url_origin("http://127.0.0.1:8080/x"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(url_origin("nonsense"), "<invalid URL>");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let config = WebhookConfig {
            first_backoff: Duration::from_secs(1),
            ..WebhookConfig::new("http://127.0.0.1:9/hook")
        };
        let backoff = Sender::new(&config, "test".into(), Arc::default()).backoff;
        let waits: Vec<u64> = (1..=8).map(|a| backoff.delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff.delay(u32::MAX), MAX_BACKOFF);
    }

    /// Collects every tracing event emitted on this thread as text.
    struct Capture(Arc<Mutex<String>>);

    struct Fields<'a>(&'a mut String);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut line = format!("{} ", event.metadata().level());
            event.record(&mut Fields(&mut line));
            line.push('\n');
            self.0.lock().unwrap().push_str(&line);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn logs_never_contain_the_url_path() {
        let logs = Arc::new(Mutex::new(String::new()));
        let _guard = tracing::subscriber::set_default(Capture(logs.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let port = dead_port().await;
            let secret = format!("http://127.0.0.1:{port}/services/T0/B0/SECRETPATH?token=hunter2");
            let hook = Webhook::start(WebhookConfig {
                queue: 1,
                ..quick(secret.clone())
            });
            for n in 1..=4 {
                hook.send(event(n)); // 1 queued, 3 dropped: one warning
            }
            wait_until("failed", || hook.stats().failed == 1).await;

            let rx = Receiver::start(&[Reply::Status(403)]).await;
            let hook = Webhook::start(quick(rx.url()));
            hook.send(event(1));
            wait_until("failed", || hook.stats().failed == 1).await;
        });
        let logs = logs.lock().unwrap().clone();
        assert_eq!(logs.matches("dropping events").count(), 1, "{logs}");
        assert!(logs.contains("failed after 3 attempts"), "{logs}");
        assert!(logs.contains("answered 403"), "{logs}");
        assert!(logs.contains("http://127.0.0.1:"), "{logs}");
        for secret in ["SECRETPATH", "hunter2", "services"] {
            assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
        }
    }
}
