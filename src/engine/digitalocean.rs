//! The DigitalOcean v2 API, as far as the engine needs it: create, read and delete droplets.
//!
//! Every call is one logical request made of up to `max_attempts` HTTP attempts. An answer of
//! 429 or 5xx is retried after `Retry-After` (capped at 60 s) or an exponential backoff; so is a
//! failure to connect (the request was never sent). A timeout or a connection lost after the
//! request went out is retried only for GET and DELETE: a repeated `POST /droplets` could create
//! a second droplet. Other 4xx answers are final.
//!
//! The API token travels only in the `Authorization` header: never in a URL, a log line, an
//! error message or a `Debug` output.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::{format_duration, Secret};
use crate::sys::backoff::Backoff;

/// Longest wait honoured from a `Retry-After` header, and longest backoff.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Connecting takes at most this long (less if the request timeout is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT: &str = concat!("citrus-engine/", env!("CARGO_PKG_VERSION"));

/// A DigitalOcean API client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `https://api.digitalocean.com/v2`, without a trailing slash.
    base: String,
    token: Secret,
    timeout: Duration,
    max_attempts: u32,
    retry: Backoff,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.retry.first)
            .finish()
    }
}

/// The body of `POST /droplets`.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CreateDroplet {
    /// The droplet's name (and hostname).
    pub name: String,
    /// Region slug, e.g. `sfo3`.
    pub region: String,
    /// Size slug, e.g. `s-1vcpu-512mb-10gb`.
    pub size: String,
    /// Image slug, e.g. `ubuntu-22-04-x64`.
    pub image: String,
    /// Enable backups.
    pub backups: bool,
    /// Enable IPv6.
    pub ipv6: bool,
    /// Install the monitoring agent.
    pub monitoring: bool,
    /// Tags to apply.
    pub tags: Vec<String>,
    /// The cloud-init user data. It carries the enrolment token, so `Debug` shows only its size.
    pub user_data: String,
}

impl fmt::Debug for CreateDroplet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateDroplet")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("size", &self.size)
            .field("image", &self.image)
            .field("backups", &self.backups)
            .field("ipv6", &self.ipv6)
            .field("monitoring", &self.monitoring)
            .field("tags", &self.tags)
            .field(
                "user_data",
                &format_args!("<{} bytes, redacted>", self.user_data.len()),
            )
            .finish()
    }
}

/// What the engine needs to know of a droplet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Droplet {
    /// DigitalOcean's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// `new`, `active`, `off` or `archive`.
    pub status: String,
    /// The first public IPv4 address, once it has one.
    pub public_ipv4: Option<String>,
}

/// A failed API call. The message is one line that names the problem and, where there is one,
/// the fix; it never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum DoError {
    /// The client could not be set up (a bad `api_base`, or the HTTP client failed to build).
    #[error("invalid DigitalOcean API base {base:?}: {why}")]
    Setup { base: String, why: String },
    /// The token cannot be sent in a header (never shown).
    #[error("invalid DigitalOcean API token: {why} (check DO_API_TOKEN)")]
    Token { why: &'static str },
    /// DigitalOcean answered with an error status (after any retries).
    #[error("DigitalOcean answered {status}: {message}{}", hint(*.status))]
    Api {
        /// The request, e.g. `POST /droplets`.
        request: String,
        status: StatusCode,
        /// DigitalOcean's error id, e.g. `unauthorized`.
        id: Option<String>,
        /// DigitalOcean's `message`, or what the body said.
        message: String,
    },
    /// No answer within the request timeout.
    #[error("DigitalOcean did not answer within {} ({request})", format_duration(*.timeout))]
    Timeout { request: String, timeout: Duration },
    /// The API could not be reached (connection refused, DNS, TLS…).
    #[error("cannot reach DigitalOcean at {base}: {cause}")]
    Connect { base: String, cause: String },
    /// The connection broke after the request was sent.
    #[error("lost the connection to DigitalOcean during {request}: {cause}")]
    Transport { request: String, cause: String },
    /// A successful answer that is not what the API documents.
    #[error("DigitalOcean sent an unexpected answer to {request}: {why}")]
    Unexpected { request: String, why: String },
}

impl DoError {
    /// The HTTP status DigitalOcean answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            DoError::Api { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }
}

/// What an operator can do about an error status.
fn hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => " (check DO_API_TOKEN)",
        StatusCode::FORBIDDEN => " (check DO_API_TOKEN's scopes)",
        StatusCode::TOO_MANY_REQUESTS => " (rate limited; try again later)",
        _ => "",
    }
}

impl Client {
    /// A client for the API at `api_base` (e.g. `https://api.digitalocean.com/v2`; a trailing
    /// slash is fine) authenticating with `token`.
    pub fn new(api_base: &str, token: String) -> Result<Client, DoError> {
        // Credentials in the base are refused, and not repeated in the message.
        let shown = match api_base.rsplit_once('@') {
            Some((_, host)) => format!("…@{host}"),
            None => api_base.to_owned(),
        };
        let setup = |why: String| DoError::Setup {
            base: shown.clone(),
            why,
        };
        let url = reqwest::Url::parse(api_base).map_err(|e| {
            setup(format!(
                "{e}; expected e.g. https://api.digitalocean.com/v2"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(setup("use an http:// or https:// URL".to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(setup(
                "remove the `user:password@`; the token comes from DO_API_TOKEN".to_owned(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(setup("remove the `?query` or `#fragment`".to_owned()));
        }
        if token.is_empty() {
            return Err(DoError::Token { why: "it is empty" });
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(DoError::Token {
                why: "it contains whitespace, control or non-ASCII characters",
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| {
                setup(format!(
                    "cannot build the HTTP client: {}",
                    crate::sys::causes(&e)
                ))
            })?;
        Ok(Client {
            http,
            base: api_base.trim_end_matches('/').to_owned(),
            token: Secret::new(token),
            timeout: Duration::from_secs(30),
            max_attempts: 4,
            retry: Backoff {
                first: Duration::from_secs(1),
                max: MAX_RETRY_DELAY,
            },
        })
    }

    /// Each HTTP attempt gets at most `timeout` (default 30 s), body included.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// At most `max_attempts` attempts per call (at least 1; default 4), waiting `base_delay`,
    /// then twice that, and so on between them unless `Retry-After` says otherwise (default 1 s).
    pub fn with_retry(mut self, max_attempts: u32, base_delay: Duration) -> Client {
        self.max_attempts = max_attempts.max(1);
        self.retry.first = base_delay;
        self
    }

    /// `POST /droplets`: starts creating a droplet (DigitalOcean answers 202 with it `new`).
    pub async fn create_droplet(&self, spec: &CreateDroplet) -> Result<Droplet, DoError> {
        let ok = [StatusCode::ACCEPTED];
        let body = self
            .call(Method::POST, "/droplets", Some(spec), &ok)
            .await?;
        droplet("POST /droplets", &body)
    }

    /// `GET /droplets/{id}`.
    pub async fn get_droplet(&self, id: u64) -> Result<Droplet, DoError> {
        let path = format!("/droplets/{id}");
        let body = self
            .call(Method::GET, &path, None, &[StatusCode::OK])
            .await?;
        droplet(&format!("GET {path}"), &body)
    }

    /// `DELETE /droplets/{id}`. A droplet that does not exist (404) is already deleted: `Ok`.
    pub async fn delete_droplet(&self, id: u64) -> Result<(), DoError> {
        let path = format!("/droplets/{id}");
        let ok = [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND];
        self.call(Method::DELETE, &path, None, &ok).await?;
        Ok(())
    }

    /// Makes the request, retrying as the module header says, until it gets one of `ok` (→ the
    /// body) or a final failure.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&CreateDroplet>,
        ok: &[StatusCode],
    ) -> Result<Vec<u8>, DoError> {
        let request = format!("{method} {path}");
        // Only a request that never left may be repeated if it is not idempotent.
        let idempotent = method != Method::POST;
        let mut attempt = 1;
        loop {
            let outcome = self.attempt(&method, path, body).await;
            let retry = match &outcome {
                Ok(answer) if answer.status == StatusCode::TOO_MANY_REQUESTS => {
                    Some(retry_after(&answer.headers).unwrap_or_else(|| self.retry.delay(attempt)))
                }
                Ok(answer) if answer.status.is_server_error() => {
                    Some(retry_after(&answer.headers).unwrap_or_else(|| self.retry.delay(attempt)))
                }
                Ok(_) => None,
                Err(e) if e.is_connect() || idempotent => Some(self.retry.delay(attempt)),
                Err(_) => None,
            };
            match retry {
                Some(delay) if attempt < self.max_attempts => {
                    let why = match &outcome {
                        Ok(answer) => answer.status.to_string(),
                        Err(e) => crate::sys::causes(e),
                    };
                    tracing::warn!(
                        request,
                        attempt,
                        max_attempts = self.max_attempts,
                        ?delay,
                        why,
                        "DigitalOcean request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                _ => {
                    return match outcome {
                        Ok(answer) if ok.contains(&answer.status) => Ok(answer.body),
                        Ok(answer) => Err(api_error(request, &answer)),
                        Err(e) => Err(self.transport_error(request, &e)),
                    };
                }
            }
        }
    }

    /// One HTTP exchange, body read in full.
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        body: Option<&CreateDroplet>,
    ) -> Result<Answer, reqwest::Error> {
        let url = format!("{}{path}", self.base);
        let mut builder = self
            .http
            .request(method.clone(), url)
            .bearer_auth(self.token.expose())
            .timeout(self.timeout);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        // Messages name the request (`GET /droplets/1`) themselves; reqwest's URL is noise.
        let response = builder.send().await.map_err(reqwest::Error::without_url)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(reqwest::Error::without_url)?
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn transport_error(&self, request: String, e: &reqwest::Error) -> DoError {
        if e.is_connect() {
            DoError::Connect {
                base: self.base.clone(),
                cause: crate::sys::causes(e),
            }
        } else if e.is_timeout() {
            DoError::Timeout {
                request,
                timeout: self.timeout,
            }
        } else {
            DoError::Transport {
                request,
                cause: crate::sys::causes(e),
            }
        }
    }
}

/// A complete HTTP answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// The `{"droplet": {...}}` in the answer to `request`.
fn droplet(request: &str, body: &[u8]) -> Result<Droplet, DoError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| DoError::Unexpected {
        request: request.to_owned(),
        why: e.to_string(),
    })?;
    let raw = envelope.droplet;
    let v4 = raw.networks.and_then(|n| n.v4).unwrap_or_default();
    let public_ipv4 = v4
        .into_iter()
        .find(|net| net.kind == "public")
        .map(|net| net.ip_address);
    Ok(Droplet {
        id: raw.id,
        name: raw.name,
        status: raw.status,
        public_ipv4,
    })
}

#[derive(Deserialize)]
struct Envelope {
    droplet: RawDroplet,
}

#[derive(Deserialize)]
struct RawDroplet {
    id: u64,
    name: String,
    status: String,
    #[serde(default)]
    networks: Option<Networks>,
}

#[derive(Deserialize)]
struct Networks {
    #[serde(default)]
    v4: Option<Vec<V4Network>>,
}

#[derive(Deserialize)]
struct V4Network {
    ip_address: String,
    #[serde(rename = "type")]
    kind: String,
}

/// DigitalOcean's error body.
#[derive(Deserialize)]
struct ErrorBody {
    id: Option<String>,
    message: Option<String>,
}

fn api_error(request: String, answer: &Answer) -> DoError {
    let parsed = serde_json::from_slice::<ErrorBody>(&answer.body).ok();
    let (id, message) = match parsed {
        Some(body) => (body.id, body.message),
        None => (None, None),
    };
    let message = message
        .map(|m| one_line(&m))
        .filter(|m| !m.is_empty())
        .or_else(|| Some(one_line(&String::from_utf8_lossy(&answer.body))))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "(no error message)".to_owned());
    DoError::Api {
        request,
        status: answer.status,
        id,
        message,
    }
}

/// Whitespace and control characters collapsed to single spaces, cut to 300 characters.
fn one_line(s: &str) -> String {
    let words: Vec<&str> = s
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let line = words.join(" ");
    match line.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// `Retry-After` in seconds, capped; an HTTP date is not honoured (backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_DELAY))
}

/// The fake API of the integration tests.
#[cfg(test)]
#[path = "../../tests/it/digitalocean.rs"]
mod fake;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::fake::FakeDo;
    use super::*;

    fn client(fake: &FakeDo) -> Client {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Client::new(&fake.base, fake.token().to_owned())
            .unwrap()
            .with_retry(3, Duration::from_millis(10))
    }

    fn spec() -> CreateDroplet {
        CreateDroplet {
            name: "citrus-host-1".to_owned(),
            region: "sfo3".to_owned(),
            size: "s-1vcpu-512mb-10gb".to_owned(),
            image: "ubuntu-22-04-x64".to_owned(),
            backups: false,
            ipv6: true,
            monitoring: true,
            tags: vec!["citrus-host".to_owned()],
            user_data: "#!/bin/bash\nenroll_token = \"tok-SECRET\"\n".to_owned(),
        }
    }

    #[tokio::test]
    async fn create_get_delete() {
        let fake = FakeDo::start();
        fake.set_active_after(2);
        let do_api = client(&fake);
        let created = do_api.create_droplet(&spec()).await.unwrap();
        assert_eq!(
            created,
            Droplet {
                id: 1000,
                name: "citrus-host-1".to_owned(),
                status: "new".to_owned(),
                public_ipv4: None,
            }
        );
        let body = &fake.created()[0];
        assert_eq!(
            *body,
            serde_json::json!({
                "name": "citrus-host-1", "region": "sfo3", "size": "s-1vcpu-512mb-10gb",
                "image": "ubuntu-22-04-x64", "backups": false, "ipv6": true, "monitoring": true,
                "tags": ["citrus-host"], "user_data": "#!/bin/bash\nenroll_token = \"tok-SECRET\"\n",
            })
        );
        let first = do_api.get_droplet(1000).await.unwrap();
        assert_eq!((first.status.as_str(), first.public_ipv4), ("new", None));
        let second = do_api.get_droplet(1000).await.unwrap();
        assert_eq!(second.status, "active");
        // The public address, not the private one listed first.
        assert_eq!(second.public_ipv4.as_deref(), Some("203.0.113.1"));
        do_api.delete_droplet(1000).await.unwrap();
        assert_eq!(fake.deleted(), [1000]);
        let gone = do_api.get_droplet(1000).await.unwrap_err();
        assert_eq!(gone.status(), Some(404));

        let bearer = format!("Bearer {}", fake.token());
        let requests = fake.requests();
        let seen: Vec<(&str, &str)> = requests
            .iter()
            .map(|(method, path, _)| (method.as_str(), path.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("POST", "/v2/droplets"),
                ("GET", "/v2/droplets/1000"),
                ("GET", "/v2/droplets/1000"),
                ("DELETE", "/v2/droplets/1000"),
                ("GET", "/v2/droplets/1000"),
            ]
        );
        for (_, path, auth) in &requests {
            assert_eq!(auth.as_deref(), Some(bearer.as_str()));
            assert!(!path.contains(fake.token()));
        }
    }

    #[tokio::test]
    async fn trailing_slash_in_the_base() {
        let fake = FakeDo::start();
        let do_api = Client::new(&format!("{}/", fake.base), fake.token().to_owned()).unwrap();
        do_api.create_droplet(&spec()).await.unwrap();
        assert_eq!(fake.requests()[0].1, "/v2/droplets");
    }

    #[tokio::test]
    async fn deleting_an_unknown_droplet_is_ok() {
        let fake = FakeDo::start();
        client(&fake).delete_droplet(4242).await.unwrap();
        assert_eq!(fake.requests().len(), 1);
        assert!(fake.deleted().is_empty());
    }

    #[tokio::test]
    async fn wrong_token() {
        let fake = FakeDo::start();
        let do_api = Client::new(&fake.base, "dop_v1_wrong".to_owned()).unwrap();
        let err = do_api.get_droplet(1000).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "DigitalOcean answered 401 Unauthorized: Unable to authenticate you \
             (check DO_API_TOKEN)"
        );
        assert_eq!(err.status(), Some(401));
        assert!(!format!("{err:?}").contains("dop_v1_wrong"));
        // Not retried.
        assert_eq!(fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn unprocessable() {
        let fake = FakeDo::start();
        fake.fail_create(422, "Region is not available");
        let err = client(&fake).create_droplet(&spec()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "DigitalOcean answered 422 Unprocessable Entity: Region is not available"
        );
        assert_eq!(err.status(), Some(422));
        assert_eq!(fake.requests().len(), 1);
        assert!(fake.created().is_empty());
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_reported() {
        let fake = FakeDo::start();
        fake.fail_create(500, "Server was unable to give you a response.");
        let err = client(&fake).create_droplet(&spec()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "DigitalOcean answered 500 Internal Server Error: \
             Server was unable to give you a response."
        );
        assert_eq!(fake.requests().len(), 3);
    }

    #[tokio::test]
    async fn throttling_honours_retry_after() {
        let fake = FakeDo::start();
        fake.throttle_next(1);
        let started = Instant::now();
        // A long backoff: only Retry-After can make the second attempt come after 1 s.
        let do_api = client(&fake).with_retry(2, Duration::from_secs(30));
        let droplet = do_api.create_droplet(&spec()).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(droplet.id, 1000);
        assert!(
            (Duration::from_secs(1)..Duration::from_secs(10)).contains(&waited),
            "{waited:?}"
        );
        assert_eq!(fake.requests().len(), 2);
        assert_eq!(fake.created().len(), 1);
    }

    #[tokio::test]
    async fn a_hanging_create_times_out_and_is_not_repeated() {
        let fake = FakeDo::start();
        fake.hang_create();
        let do_api = client(&fake).with_timeout(Duration::from_millis(300));
        let err = do_api.create_droplet(&spec()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "DigitalOcean did not answer within 300ms (POST /droplets)"
        );
        assert_eq!(err.status(), None);
        assert_eq!(fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn unreachable() {
        // A port that was free a moment ago: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}/v2");
        let do_api = Client::new(&base, "dop_v1_secret".to_owned())
            .unwrap()
            .with_retry(2, Duration::from_millis(10));
        let err = do_api.create_droplet(&spec()).await.unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("cannot reach DigitalOcean at {base}: ")),
            "{shown}"
        );
        assert!(!shown.contains("/droplets"), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
    }

    #[tokio::test]
    async fn a_hanging_get_is_retried() {
        // Accepts connections, reads nothing, answers nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v2", listener.local_addr().unwrap());
        let (accepted, mut connections) = tokio::sync::mpsc::unbounded_channel();
        let held = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = accepted.send(socket);
            }
        });
        let do_api = Client::new(&base, "t".to_owned())
            .unwrap()
            .with_timeout(Duration::from_millis(200))
            .with_retry(2, Duration::from_millis(10));
        let err = do_api.get_droplet(7).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "DigitalOcean did not answer within 200ms (GET /droplets/7)"
        );
        held.abort();
        let mut attempts = 0;
        while connections.try_recv().is_ok() {
            attempts += 1;
        }
        assert_eq!(attempts, 2);
    }

    #[test]
    fn debug_hides_secrets() {
        let do_api = Client::new(
            "https://api.digitalocean.com/v2",
            "dop_v1_secret".to_owned(),
        )
        .unwrap();
        let shown = format!("{do_api:?}");
        assert!(!shown.contains("dop_v1_secret"), "{shown}");
        assert!(shown.contains("api.digitalocean.com"), "{shown}");
        let shown = format!("{:?}", spec());
        assert!(!shown.contains("tok-SECRET"), "{shown}");
        assert!(shown.contains("citrus-host-1"), "{shown}");
    }

    #[test]
    fn bad_bases() {
        for (base, part) in [
            ("api.digitalocean.com/v2", "relative URL"),
            ("ftp://api.digitalocean.com/v2", "http:// or https://"),
            ("https://user:pw@api.digitalocean.com/v2", "user:password@"),
        ] {
            let err = Client::new(base, "t".to_owned()).unwrap_err();
            assert!(err.to_string().contains(part), "{base}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        for (token, part) in [("", "it is empty"), ("dop_v1_x\n", "whitespace")] {
            let err = Client::new("https://api.digitalocean.com/v2", token.to_owned());
            let shown = err.unwrap_err().to_string();
            assert!(
                shown.starts_with("invalid DigitalOcean API token: "),
                "{shown}"
            );
            assert!(
                shown.contains(part) && !shown.contains("dop_v1_x"),
                "{shown}"
            );
        }
    }

    #[test]
    fn retry_delays() {
        let do_api = Client::new("https://api.digitalocean.com/v2", "t".to_owned())
            .unwrap()
            .with_retry(10, Duration::from_secs(1));
        let delays: Vec<u64> = (1..=8).map(|a| do_api.retry.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_DELAY));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn droplet_json() {
        let new = br#"{"droplet": {"id": 3164444, "name": "h", "status": "new",
            "networks": {"v4": [], "v6": []}, "region": {"slug": "sfo3"}}, "links": {}}"#;
        let parsed = droplet("POST /droplets", new).unwrap();
        assert_eq!((parsed.id, parsed.public_ipv4), (3164444, None));
        let bare = br#"{"droplet": {"id": 1, "name": "h", "status": "new", "networks": {}}}"#;
        assert_eq!(droplet("GET /droplets/1", bare).unwrap().public_ipv4, None);
        let err = droplet("GET /droplets/1", br#"{"droplets": []}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DigitalOcean sent an unexpected answer to GET /droplets/1: \
             missing field `droplet` at line 1 column 16"
        );
    }

    #[test]
    fn error_bodies_that_are_not_json() {
        let answer = Answer {
            status: StatusCode::BAD_GATEWAY,
            headers: HeaderMap::new(),
            body: b"<html>\n  <h1>502 Bad Gateway</h1>\n</html>".to_vec(),
        };
        let err = api_error("GET /droplets/1".to_owned(), &answer);
        assert_eq!(
            err.to_string(),
            "DigitalOcean answered 502 Bad Gateway: <html> <h1>502 Bad Gateway</h1> </html>"
        );
        let empty = Answer {
            body: Vec::new(),
            ..answer
        };
        let err = api_error("GET /droplets/1".to_owned(), &empty);
        assert!(err.to_string().ends_with("(no error message)"), "{err}");
    }
}
