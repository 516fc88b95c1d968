//! Fixtures for citrus-engine tests: the real engine binary in a temp dir on a loopback port,
//! admin API calls, and a raw agent WebSocket client.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{stable_port, wait_for, DEADLINE};

pub const ENGINE: &str = env!("CARGO_BIN_EXE_citrus-engine");
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A running citrus-engine. Dropping it kills it.
pub struct EngineProc {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    pub rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl EngineProc {
    /// Writes an engine.toml (listen, SQLite file, admin token, short intervals, then `extra`)
    /// and starts the engine.
    pub fn start(extra: &str) -> EngineProc {
        Self::start_env(extra, &[])
    }

    /// As [`EngineProc::start`] with extra environment (e.g. `DO_API_TOKEN`).
    pub fn start_env(extra: &str, env: &[(&str, &str)]) -> EngineProc {
        let mut e = Self::prepare(extra, env);
        e.spawn();
        e
    }

    /// Writes the config without starting the engine.
    pub fn prepare(extra: &str, env: &[(&str, &str)]) -> EngineProc {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("citrus-engine-it")
            .tempdir()
            .unwrap();
        let port = stable_port();
        let config = dir.path().join("engine.toml");
        let has = |key: &str| extra.lines().any(|l| l.trim_start().starts_with(key));
        let mut text = format!("listen = \"127.0.0.1:{port}\"\n");
        if !has("database_url") {
            text.push_str("database_url = \"sqlite://state/engine.db\"\n");
        }
        if !has("status_interval") {
            text.push_str("status_interval = \"1s\"\n");
        }
        text.push_str(extra);
        fs::write(&config, text).unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("CITRUS_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()));
        EngineProc {
            dir,
            port,
            config,
            env,
            child: None,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// Starts the engine process and waits until it answers.
    pub fn spawn(&mut self) {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("engine.stderr"))
            .unwrap();
        let child = Command::new(ENGINE)
            .arg("--config")
            .arg(&self.config)
            .env_remove("DO_API_TOKEN")
            .env_remove("CITRUS_ADMIN_TOKEN")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("CITRUS_LOG", "citrus=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for("the engine to answer /health", DEADLINE, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("citrus-engine exited early ({status}):\n{}", self.stderr());
            }
            match self.call("GET", "/health", None, None) {
                (200, _) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }

    /// The engine's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM, then waits for the exit code.
    pub fn stop(&mut self) -> i32 {
        let Some(mut child) = self.child.take() else {
            return 0;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = wait_for("the engine to exit", DEADLINE, || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => Err("running".into()),
        });
        status.code().unwrap_or(-1)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("engine.stderr")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/agent", self.port)
    }

    /// One HTTP call: status and JSON body (`Null` if none).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(&self.rt, request)
    }

    /// Sends `create_site` for `domain` to `agent`; waits until it completed with the
    /// template's output for the domain (lowercased, as the agent writes it); its operation.
    #[track_caller]
    pub fn create_site_completes(&self, agent: &str, domain: &str) -> Value {
        let (status, body) = self.command(agent, json!({"type": "create_site", "domain": domain}));
        assert_eq!(status, 202, "{body}");
        let op = self.wait_operation(body["operation"]["id"].as_str().unwrap());
        assert_eq!(op["status"], "completed", "{op}");
        let created = format!("created {}", domain.to_ascii_lowercase());
        assert!(op["output"].as_str().unwrap().contains(&created), "{op}");
        op
    }

    /// An admin call with the right token.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(ADMIN_TOKEN), body)
    }

    /// `GET` with the admin token, expecting 200.
    #[track_caller]
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.admin("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The agent as `GET /admin/agents/{id}` shows it.
    pub fn agent(&self, id: &str) -> Value {
        self.get(&format!("/admin/agents/{id}"))
    }

    /// Waits until the agent's `status` is `want`.
    #[track_caller]
    pub fn wait_agent_status(&self, id: &str, want: &str) -> Value {
        wait_for(&format!("agent {id} to be {want}"), DEADLINE, || {
            let agent = self.agent(id);
            match agent["agent"]["status"] == want {
                true => Ok(agent),
                false => Err(agent.to_string()),
            }
        })
    }

    /// Creates an agent; returns its id and enrolment token.
    pub fn create_agent(&self, name: &str) -> (String, String) {
        let (status, body) = self.admin(
            "POST",
            "/admin/agents",
            Some(serde_json::json!({"name": name})),
        );
        assert_eq!(status, 201, "{body}");
        (
            body["agent"]["id"].as_str().unwrap().to_owned(),
            body["enrollToken"].as_str().unwrap().to_owned(),
        )
    }

    /// Exchanges an enrolment token for a key.
    pub fn enroll(&self, id: &str, token: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/agent/enroll",
            None,
            Some(serde_json::json!({"agentId": id, "token": token})),
        )
    }

    /// An enrolled agent's id and key.
    pub fn enrolled_agent(&self, name: &str) -> (String, String) {
        let (id, token) = self.create_agent(name);
        let (status, body) = self.enroll(&id, &token);
        assert_eq!(status, 200, "{body}");
        (id, body["key"].as_str().unwrap().to_owned())
    }

    /// Sends a command; returns the answer.
    pub fn command(&self, agent: &str, command: Value) -> (u16, Value) {
        self.admin(
            "POST",
            &format!("/admin/agents/{agent}/commands"),
            Some(command),
        )
    }

    /// Waits until operation `id` is final; returns it.
    #[track_caller]
    pub fn wait_operation(&self, id: &str) -> Value {
        wait_for(&format!("operation {id} to finish"), DEADLINE, || {
            let op = self.get(&format!("/admin/operations/{id}?wait=2s"))["operation"].clone();
            match op["status"].as_str() {
                Some("completed" | "failed") => Ok(op),
                _ => Err(op.to_string()),
            }
        })
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `request`: its status and JSON body (the text as a JSON string when it is not JSON;
/// status 0 and the error when it could not be sent).
pub fn send(rt: &tokio::runtime::Runtime, request: reqwest::RequestBuilder) -> (u16, Value) {
    rt.block_on(async {
        match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    })
}

/// A raw agent connection, for what a real agent never does.
pub struct RawAgent {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// Connects to `url` with `headers`; `Err(status)` when refused before the upgrade.
pub fn raw_connect(
    rt: &tokio::runtime::Runtime,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<RawAgent, u16> {
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        request.headers_mut().insert(name, v.parse().unwrap());
    }
    rt.block_on(async {
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(RawAgent { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("connect failed: {e}"),
        }
    })
}

/// The headers of agent `id` with `key`.
pub fn agent_headers<'a>(id: &'a str, key: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("x-client-type", "agent"),
        ("x-agent-id", id),
        ("x-agent-key", key),
        ("x-citrus-protocol", "1"),
    ]
}

impl RawAgent {
    pub fn send(&mut self, rt: &tokio::runtime::Runtime, text: String) -> bool {
        rt.block_on(self.ws.send(Message::text(text))).is_ok()
    }

    /// The next text frame within `timeout`; `None` if the connection ended or nothing came.
    pub fn recv(
        &mut self,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
    ) -> Option<Result<String, String>> {
        rt.block_on(async {
            loop {
                match tokio::time::timeout(timeout, self.ws.next()).await {
                    Err(_) => return None,
                    Ok(None) => return Some(Err("closed".into())),
                    Ok(Some(Err(e))) => return Some(Err(e.to_string())),
                    Ok(Some(Ok(Message::Text(t)))) => return Some(Ok(t.to_string())),
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        return Some(Err(format!("closed: {frame:?}")))
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        })
    }
}
