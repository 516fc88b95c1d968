//! git's smart HTTP protocol over our own rustls, registered with libgit2 for `https://`
//! remotes, so citrusd links no OpenSSL (libgit2's own https needs it: 1.7 MB of every
//! citrusd's resident memory, and a -dev package to build).
//!
//! Theory of operation. libgit2 drives the protocol and asks a "smart subtransport" for one
//! stateless HTTP exchange per step: `UploadPackLs` is `GET <url>/info/refs?service=
//! git-upload-pack` (the refs), `UploadPack` is `POST <url>/git-upload-pack` (the negotiation,
//! answered with the pack). libgit2 writes the request body into the stream, then reads the
//! answer: the first read sends the request. A redirect of the refs request moves the base URL
//! of the later requests too, as git does. Pushing is refused: citrusd only fetches.
//!
//! TLS trusts the system roots plus `[fleet] ca_file`: [`with_tls`] sets the configuration for
//! the fetches made inside it on this thread (libgit2 creates the transport on the thread that
//! fetches).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};

/// How long one HTTP exchange with the git server may take.
const TIMEOUT: Duration = Duration::from_secs(300);

thread_local! {
    static TLS: RefCell<Option<Arc<rustls::ClientConfig>>> = const { RefCell::new(None) };
}

/// Runs `f` with `tls` as the TLS configuration of the https fetches it makes on this thread.
pub fn with_tls<T>(tls: Arc<rustls::ClientConfig>, f: impl FnOnce() -> T) -> T {
    let previous = TLS.with(|t| t.replace(Some(tls)));
    let out = f();
    TLS.with(|t| *t.borrow_mut() = previous);
    out
}

/// Registers the transport for `https://`, once. Every fetch goes through this first.
pub fn register() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: libgit2's transport registry is a global without a lock, read only when a
        // remote connects. In citrusd every fetch (the only thing that connects) calls this
        // first, and `Once` makes it wait until the registration is done; nothing else reads
        // the registry, so registration never races a lookup.
        let registered = unsafe { git2::transport::register("https", factory) };
        if let Err(e) = registered {
            tracing::error!(
                "cannot register the https transport for git: {}",
                e.message()
            );
        }
    });
}

fn factory(remote: &git2::Remote<'_>) -> Result<Transport, git2::Error> {
    let tls = TLS.with(|t| t.borrow().clone());
    let tls = match tls {
        Some(tls) => tls,
        None => super::tls::client_config(None).map_err(|e| git2::Error::from_str(&e))?,
    };
    let client = reqwest::blocking::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(TIMEOUT)
        .user_agent(concat!("git/2.0 (citrusd ", env!("CARGO_PKG_VERSION"), ")"))
        .build()
        .map_err(|e| git2::Error::from_str(&format!("cannot build an HTTPS client: {e}")))?;
    Transport::smart(
        remote,
        true,
        HttpsSubtransport {
            client,
            base: Arc::new(Mutex::new(None)),
        },
    )
}

struct HttpsSubtransport {
    client: reqwest::blocking::Client,
    /// The repository's URL after a redirect of its refs, for the requests that follow.
    base: Arc<Mutex<Option<String>>>,
}

impl SmartSubtransport for HttpsSubtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let base = self
            .base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| url.trim_end_matches('/').to_owned());
        let (method, path) = match action {
            Service::UploadPackLs => (reqwest::Method::GET, "/info/refs?service=git-upload-pack"),
            Service::UploadPack => (reqwest::Method::POST, "/git-upload-pack"),
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(git2::Error::from_str(
                    "citrusd only fetches: pushing over https is not supported",
                ))
            }
        };
        Ok(Box::new(HttpsStream {
            client: self.client.clone(),
            method,
            url: format!("{base}{path}"),
            path,
            body: Vec::new(),
            response: None,
            base: self.base.clone(),
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// One exchange: the body libgit2 writes, then the answer it reads. A GET asks for the refs,
/// a POST for the pack.
struct HttpsStream {
    client: reqwest::blocking::Client,
    method: reqwest::Method,
    url: String,
    /// What follows the repository's URL in `url`.
    path: &'static str,
    body: Vec<u8>,
    response: Option<reqwest::blocking::Response>,
    base: Arc<Mutex<Option<String>>>,
}

impl HttpsStream {
    fn send(&mut self) -> io::Result<reqwest::blocking::Response> {
        let mut request = self.client.request(self.method.clone(), &self.url);
        if self.method == reqwest::Method::POST {
            request = request
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-git-upload-pack-request",
                )
                .header(
                    reqwest::header::ACCEPT,
                    "application/x-git-upload-pack-result",
                )
                .body(std::mem::take(&mut self.body));
        }
        let response = request.send().map_err(|e| {
            io::Error::other(format!(
                "{} {}: {}",
                self.method,
                redact(&self.url),
                crate::sys::causes(&e.without_url())
            ))
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(io::Error::other(format!(
                "{} {}: the server answered {status}",
                self.method,
                redact(&self.url)
            )));
        }
        if self.method == reqwest::Method::GET {
            // Only a smart server answers with an advertisement; a dumb one sends a plain list.
            let advertised = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                == Some("application/x-git-upload-pack-advertisement");
            if !advertised {
                return Err(io::Error::other(format!(
                    "{} is not a smart git HTTP server (no upload-pack advertisement)",
                    redact(&self.url)
                )));
            }
            let landed = response.url().as_str();
            if landed != self.url {
                if let Some(base) = landed.strip_suffix(self.path) {
                    *self.base.lock().unwrap_or_else(|e| e.into_inner()) = Some(base.to_owned());
                }
            }
        }
        Ok(response)
    }
}

impl Read for HttpsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            self.response = Some(self.send()?);
        }
        self.response
            .as_mut()
            .map_or(Ok(0), |response| response.read(buf))
    }
}

impl Write for HttpsStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.body.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `url` without user information (a token in a remote URL is never repeated in a message).
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_appear_in_messages() {
        assert_eq!(
            redact("https://user:tok@git.example.com/r.git/info/refs"),
            "https://git.example.com/r.git/info/refs"
        );
        assert_eq!(
            redact("https://git.example.com/r.git"),
            "https://git.example.com/r.git"
        );
    }
}
