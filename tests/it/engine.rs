//! A stand-in engine for agent tests: a WebSocket endpoint on 127.0.0.1 that checks the agent
//! headers (401 before the upgrade for a wrong key), records every frame, sends commands, serves
//! `POST /agent/enroll` on the same port, and can be stopped and started again on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{stable_port, wait_for, DEADLINE};

#[derive(Default)]
struct State {
    /// Keys accepted in `x-agent-key`.
    keys: Vec<String>,
    /// Enrolment tokens → the key they are exchanged for (removed when used).
    tokens: HashMap<String, String>,
    frames: Vec<serde_json::Value>,
    /// Header maps of accepted connections.
    connects: Vec<HashMap<String, String>>,
    refused: u32,
    current: Option<mpsc::UnboundedSender<String>>,
    /// `GET /releases/<sha256>`: the bytes and how to serve them.
    releases: HashMap<String, (Vec<u8>, Serve)>,
}

/// How the stand-in serves a release.
#[derive(Clone, Copy, Debug)]
pub enum Serve {
    /// Whole, with its length.
    Whole,
    /// Only the first n bytes (and that length): a truncated file.
    Truncated(usize),
    /// Its full length announced, 64 KiB sent, then nothing more while the connection lasts.
    Stalled,
}

/// The fake engine.
pub struct Engine {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    rt: tokio::runtime::Runtime,
    server: Option<tokio::task::JoinHandle<()>>,
    /// With TLS (`wss://localhost`): the acceptor and the self-signed certificate in PEM.
    tls: Option<(tokio_rustls::TlsAcceptor, String)>,
}

impl Engine {
    /// Starts an engine that accepts `key`.
    pub fn start(key: &str) -> Engine {
        Self::start_with(key, None)
    }

    /// An engine speaking `wss://` with a self-signed certificate for `localhost`.
    pub fn start_tls(key: &str) -> Engine {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = cert.cert.pem();
        let der =
            rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], der)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_with(key, Some((acceptor, pem)))
    }

    fn start_with(key: &str, tls: Option<(tokio_rustls::TlsAcceptor, String)>) -> Engine {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(bind_outside_ephemeral_range());
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            keys: vec![key.to_string()],
            ..State::default()
        }));
        let mut engine = Engine {
            addr,
            state,
            rt,
            server: None,
            tls,
        };
        engine.serve(listener);
        engine
    }

    /// The self-signed certificate (PEM) of a TLS engine.
    pub fn cert_pem(&self) -> &str {
        &self.tls.as_ref().expect("a TLS engine").1
    }

    fn serve(&mut self, listener: TcpListener) {
        let state = self.state.clone();
        let tls = self.tls.as_ref().map(|(a, _)| a.clone());
        self.server = Some(self.rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                match &tls {
                    None => {
                        conns.spawn(handle(stream, state));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        conns.spawn(async move {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                websocket(tls, state).await;
                            }
                        });
                    }
                }
            }
        }));
    }

    /// `ws://127.0.0.1:PORT/agent`, or `wss://localhost:PORT/agent` with TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("ws://{}/agent", self.addr),
            Some(_) => format!("wss://localhost:{}/agent", self.addr.port()),
        }
    }

    /// Serves `bytes` at `GET /releases/<sha256>` as `serve` says.
    pub fn serve_release(&self, sha256: &str, bytes: Vec<u8>, serve: Serve) {
        let mut s = self.state.lock().unwrap();
        s.releases.insert(sha256.to_string(), (bytes, serve));
    }

    /// Drops the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            // Wait until the task (and with it the listener and the connections) is gone.
            let _ = self.rt.block_on(s);
        }
        self.state.lock().unwrap().current = None;
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        let listener = self.rt.block_on(TcpListener::bind(self.addr)).unwrap();
        self.serve(listener);
    }

    /// Replaces the accepted keys.
    pub fn accept_keys(&self, keys: &[&str]) {
        self.state.lock().unwrap().keys = keys.iter().map(|k| k.to_string()).collect();
    }

    /// Adds a single-use enrolment token.
    pub fn add_token(&self, token: &str, key: &str) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.into(), key.into());
    }

    /// How many connections were refused with 401.
    pub fn refused(&self) -> u32 {
        self.state.lock().unwrap().refused
    }

    /// Headers of the accepted connections so far.
    pub fn connects(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().connects.clone()
    }

    /// Sends a frame to the connected agent (waits for a connection).
    #[track_caller]
    pub fn send(&self, frame: &str) {
        let tx = wait_for("a connected agent", DEADLINE, || {
            self.state
                .lock()
                .unwrap()
                .current
                .clone()
                .ok_or_else(|| "not connected".to_string())
        });
        tx.send(frame.to_string()).unwrap();
    }

    /// Waits for a frame matching `pred` and returns it.
    #[track_caller]
    pub fn wait_frame(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(what, DEADLINE, || {
            let s = self.state.lock().unwrap();
            s.frames.iter().find(|f| pred(f)).cloned().ok_or_else(|| {
                let last: Vec<_> = s.frames.iter().rev().take(5).collect();
                format!("{} frames, last: {last:?}", s.frames.len())
            })
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds 127.0.0.1 on a free port below the kernel's ephemeral range (see [`stable_port`]),
/// trying again if another test took it in between.
async fn bind_outside_ephemeral_range() -> TcpListener {
    loop {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", stable_port())).await {
            return l;
        }
    }
}

async fn handle(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut head = [0u8; 14];
    let peeked = stream.peek(&mut head).await.unwrap_or(0);
    if head[..peeked].starts_with(b"POST") {
        return enroll(stream, state).await;
    }
    if peeked == head.len() && &head == b"GET /releases/" {
        return release(stream, state).await;
    }
    websocket(stream, state).await;
}

/// `GET /releases/<sha256>` as the engine serves it (length and checksum headers), or as set
/// with [`Engine::serve_release`].
async fn release(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let sha = line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .trim_start_matches("/releases/")
        .to_string();
    let found = state.lock().unwrap().releases.get(&sha).cloned();
    let Some((bytes, serve)) = found else {
        let body = r#"{"error":{"code":"not_found","message":"no such release"}}"#;
        let resp = format!("HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        let _ = stream.write_all(resp.as_bytes()).await;
        return;
    };
    let (announced, sent) = match serve {
        Serve::Whole => (bytes.len(), bytes.len()),
        Serve::Truncated(n) => (n, n),
        Serve::Stalled => (bytes.len(), 64 << 10),
    };
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {announced}\r\nx-checksum-sha256: {sha}\r\nconnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err()
        || stream.write_all(&bytes[..sent]).await.is_err()
    {
        return;
    }
    if let Serve::Stalled = serve {
        std::future::pending::<()>().await;
    }
}

async fn websocket<S>(stream: S, state: Arc<Mutex<State>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let check = state.clone();
    // The callback's signature is tungstenite's; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers: HashMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut s = check.lock().unwrap();
        let key = headers.get("x-agent-key").cloned().unwrap_or_default();
        if !s.keys.contains(&key) {
            s.refused += 1;
            let mut r = ErrorResponse::new(Some("bad credentials".into()));
            *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
            return Err(r);
        }
        s.connects.push(headers);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    state.lock().unwrap().current = Some(out_tx);
    // Cleared when a newer connection takes over the commands (its sender replaces this one's):
    // this one is still read until the agent closes it, as the engine does, so the reports it
    // sent last (a key rotation's acknowledgement before it reconnects) are not lost.
    let mut commands = true;
    loop {
        tokio::select! {
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str(t.as_str()) {
                        state.lock().unwrap().frames.push(v);
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    // Recorded as a pseudo-frame so tests can wait for it.
                    let code = close.map(|c| u16::from(c.code));
                    state.lock().unwrap().frames.push(serde_json::json!({"type": "(close)", "code": code}));
                    return;
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            out = out_rx.recv(), if commands => match out {
                Some(text) => if tx.send(Message::text(text)).await.is_err() { return },
                None => commands = false,
            },
        }
    }
}

async fn enroll(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break buf[end + 4..end + 4 + len].to_vec();
            }
        }
    };
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let token = req["token"].as_str().unwrap_or_default().to_string();
    let key = state.lock().unwrap().tokens.remove(&token);
    let (status, body) = match key {
        Some(k) => {
            state.lock().unwrap().keys.push(k.clone());
            ("200 OK", serde_json::json!({ "key": k }).to_string())
        }
        None => ("403 Forbidden", r#"{"error":{"code":"token_used","message":"enrolment token already used or expired"}}"#.to_string()),
    };
    let resp = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = stream.write_all(resp.as_bytes()).await;
}
