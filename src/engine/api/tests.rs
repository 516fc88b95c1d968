//! The admin API's router called in-process (no socket): each answer checked against SPEC 4
//! and the README's literal shapes, on a real engine over a temp SQLite store.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::extract::ws::Message;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::config::EngineConfig;
use crate::engine::store::OperationStatus;
use crate::engine::{bind, router, Engine};

const TOKEN: &str = "router-test-admin-token";

/// An engine on a temp dir, reached through its router.
struct Api {
    engine: Arc<Engine>,
    router: Router,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
        let text = "listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://engine.db\"\n\
                    admin_token_file = \"admin.token\"\n";
        let config = EngineConfig::parse(text, &dir.path().join("engine.toml")).unwrap();
        let mut bound = bind(config).await.unwrap();
        // Whatever the environment says, no DigitalOcean here.
        Arc::get_mut(&mut bound.engine).unwrap().digitalocean = None;
        let engine = bound.engine.clone();
        Api {
            router: router(engine.clone()),
            engine,
            _dir: dir,
        }
    }

    /// `method path` with `token` (as `Authorization: Bearer`) and `body`: the status and the
    /// JSON answered.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut request = request.body(HttpBody::from(body.to_owned())).unwrap();
        let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {bytes:?}"));
        (status, json)
    }

    /// As the admin.
    async fn admin(&self, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
        self.call(method, path, Some(TOKEN), body).await
    }

    /// Creates agent `name`; its id and enrolment token.
    async fn agent(&self, name: &str) -> (String, String) {
        let (status, body) = self
            .admin("POST", "/admin/agents", &json!({"name": name}).to_string())
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["agent"]["id"].as_str().unwrap().to_owned();
        (id, body["enrollToken"].as_str().unwrap().to_owned())
    }

    /// Connects agent `id` to the hub as its WebSocket would: what the engine sends it.
    fn connect(&self, id: &str) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.engine.hub.register(id, tx);
        rx
    }
}

/// The error shape of both APIs: `{"success": false, "error": {"code", "message"}}`.
fn error(code: &str, message: &str) -> Value {
    json!({"success": false, "error": {"code": code, "message": message}})
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_token() {
    let api = Api::new().await;
    let missing = error(
        "unauthorized",
        "missing `Authorization: Bearer <admin token>` header (the token is in the engine's \
         admin_token_file or CITRUS_ADMIN_TOKEN)",
    );
    // Four routes, two failures each: below the lockout (auth_max_failures, 10).
    for (method, path) in [
        ("POST", "/admin/agents"),
        ("GET", "/admin/servers"),
        ("GET", "/admin/operations/x"),
        ("POST", "/admin/agents/x/rotate-key"),
    ] {
        let (status, body) = api.call(method, path, None, "").await;
        assert_eq!(
            (status, &body),
            (StatusCode::UNAUTHORIZED, &missing),
            "{method} {path}"
        );
        let (status, body) = api.call(method, path, Some("wrong"), "").await;
        let wrong = error("unauthorized", "wrong admin token");
        assert_eq!(
            (status, &body),
            (StatusCode::UNAUTHORIZED, &wrong),
            "{method} {path}"
        );
    }
    let (status, body) = api.admin("GET", "/admin/agents", "").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"agents": []})));
}

#[tokio::test]
async fn agents_are_created_listed_and_shown() {
    let api = Api::new().await;
    let (status, body) = api
        .admin("POST", "/admin/agents", r#"{"name": "web-1"}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], true);
    let agent = &body["agent"];
    let id = agent["id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(
        (&agent["name"], &agent["status"], &agent["enrolled"]),
        (&json!("web-1"), &json!("offline"), &json!(false))
    );
    let token = body["enrollToken"].as_str().unwrap();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(body["expiresAt"].as_i64().unwrap() > agent["createdAt"].as_i64().unwrap());
    // Without a name, one is made from the id.
    let (_, unnamed) = api.admin("POST", "/admin/agents", "").await;
    let unnamed_id = unnamed["agent"]["id"].as_str().unwrap();
    assert_eq!(
        unnamed["agent"]["name"],
        format!("agent-{}", &unnamed_id[..8])
    );

    let (status, list) = api.admin("GET", "/admin/agents", "").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"web-1"));
    let (status, one) = api.admin("GET", &format!("/admin/agents/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["agent"], *agent);
    assert_eq!(
        (&one["status"], &one["statusAt"], &one["server"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    let (status, stats) = api.admin("GET", "/admin/stats", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats["agents"],
        json!({"total": 2, "online": 0, "connected": 0})
    );
}

#[tokio::test]
async fn unknown_ids_are_404_naming_the_id() {
    let api = Api::new().await;
    for (method, path, what) in [
        ("GET", "/admin/agents/nope", "agent"),
        ("GET", "/admin/agents/nope/history", "agent"),
        ("GET", "/admin/agents/nope/deployments", "agent"),
        ("POST", "/admin/agents/nope/rotate-key", "agent"),
        ("GET", "/admin/operations/nope", "operation"),
        ("GET", "/admin/servers/nope", "server"),
        ("DELETE", "/admin/servers/nope", "server"),
    ] {
        let (status, body) = api.admin(method, path, "").await;
        let expected = error("not_found", &format!("no {what} with id \"nope\""));
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, expected),
            "{method} {path}"
        );
    }
    let command = r#"{"type": "create_site", "domain": "a.example.com"}"#;
    let (status, body) = api
        .admin("POST", "/admin/agents/nope/commands", command)
        .await;
    let expected = error("not_found", "no agent with id \"nope\"");
    assert_eq!((status, body), (StatusCode::NOT_FOUND, expected));
    let (status, body) = api.admin("GET", "/admin/nothing", "").await;
    let expected = error(
        "not_found",
        "no such route; the admin API is under /admin/ (see the README)",
    );
    assert_eq!((status, body), (StatusCode::NOT_FOUND, expected));
}

#[tokio::test]
async fn bad_bodies_and_queries_are_400_saying_what_to_send() {
    let api = Api::new().await;
    let (id, _) = api.agent("web-1").await;
    let commands = format!("/admin/agents/{id}/commands");
    let bad_name = "invalid name \"-web\": use 1 to 63 letters, digits, '-' or '.', not starting \
                    with '-' or '.'";
    for (path, body, message) in [
        ("/admin/agents", r#"{"name": "-web"}"#, bad_name),
        (
            "/admin/agents",
            "[1]",
            "the body must be a JSON object, not an array",
        ),
        (&commands, r#"{"type": 5}"#, "field `type` must be a string"),
        (
            &commands,
            r#"{"type": "create_site", "id": "x", "domain": "a.example.com"}"#,
            "do not set `id`: the engine gives each operation its id",
        ),
    ] {
        let (status, reply) = api.admin("POST", path, body).await;
        let expected = error("bad_request", message);
        assert_eq!(
            (status, reply),
            (StatusCode::BAD_REQUEST, expected),
            "{path} {body}"
        );
    }
    let (status, reply) = api
        .admin(
            "GET",
            &format!("/admin/agents/{id}/deployments?limit=0"),
            "",
        )
        .await;
    let expected = error(
        "bad_request",
        "invalid `limit` \"0\": give a whole number from 1 to 500",
    );
    assert_eq!((status, reply), (StatusCode::BAD_REQUEST, expected));
    let (status, reply) = api.admin("POST", &commands, "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("missing field `type`; one of: create_site, delete_site"),
        "{message}"
    );
    let (status, reply) = api
        .admin("POST", &commands, r#"{"type": "rotate_key"}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let expected =
        format!("rotate keys with POST /admin/agents/{id}/rotate-key: the engine makes the key");
    assert_eq!(reply, error("bad_request", &expected));
    let (status, reply) = api.admin("POST", &commands, r#"{"type": "reboot"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("unknown command type \"reboot\"; one of: "),
        "{message}"
    );
    assert!(!message.contains("rotate_key"), "{message}");
    let (status, reply) = api.admin("GET", "/admin/operations/x?wait=soon", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid `wait`: "));
}

#[tokio::test]
async fn commands_go_to_connected_agents_only_and_become_operations() {
    let api = Api::new().await;
    let (id, _) = api.agent("web-1").await;
    let path = format!("/admin/agents/{id}/commands");
    let command = r#"{"type": "create_site", "domain": "a.example.com"}"#;
    let (status, body) = api.admin("POST", &path, command).await;
    let offline = format!(
        "agent {id} is offline: commands go only to connected agents; see GET /admin/agents"
    );
    assert_eq!(
        (status, body),
        (StatusCode::CONFLICT, error("conflict", &offline))
    );
    let (status, body) = api
        .admin("POST", &format!("/admin/agents/{id}/rotate-key"), "")
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::CONFLICT, error("conflict", &offline))
    );

    let mut agent = api.connect(&id);
    let (status, body) = api.admin("POST", &path, command).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let operation = &body["operation"];
    let op_id = operation["id"].as_str().unwrap();
    assert_eq!(
        (
            &operation["agentId"],
            &operation["type"],
            &operation["status"]
        ),
        (&json!(id), &json!("create_site"), &json!("sent"))
    );
    assert_eq!(
        operation["command"],
        json!({"type": "create_site", "id": op_id, "domain": "a.example.com"})
    );
    // The agent got the command, with the operation's id.
    let Some(Message::Text(sent)) = agent.recv().await else {
        panic!("no command sent")
    };
    let sent: Value = serde_json::from_str(sent.as_str()).unwrap();
    assert_eq!(sent, operation["command"]);

    let (status, shown) = api
        .admin("GET", &format!("/admin/operations/{op_id}"), "")
        .await;
    assert_eq!((status, &shown["operation"]), (StatusCode::OK, operation));
    let report = api
        .engine
        .store
        .report_operation(
            op_id,
            &id,
            OperationStatus::Completed,
            Some("done"),
            None,
            5,
        )
        .await
        .unwrap();
    assert!(report.is_some());
    let (_, shown) = api
        .admin("GET", &format!("/admin/operations/{op_id}?wait=1s"), "")
        .await;
    assert_eq!(
        (&shown["operation"]["status"], &shown["operation"]["output"]),
        (&json!("completed"), &json!("done"))
    );
    let (status, listed) = api
        .admin("GET", &format!("/admin/agents/{id}/operations"), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["operations"][0]["id"], op_id);
}

#[tokio::test]
async fn deploy_with_agent_says_what_is_missing_and_servers_list() {
    let api = Api::new().await;
    let (status, body) = api
        .admin("POST", "/admin/servers/deploy-with-agent", "")
        .await;
    let expected = error(
        "unavailable",
        "DigitalOcean is not configured: start the engine with DO_API_TOKEN in its environment",
    );
    assert_eq!((status, body), (StatusCode::SERVICE_UNAVAILABLE, expected));
    let (status, body) = api.admin("GET", "/admin/servers", "").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"servers": []})));
}

#[tokio::test]
async fn an_enrolment_token_is_exchanged_once() {
    let api = Api::new().await;
    let (id, token) = api.agent("web-1").await;
    let body = json!({"agentId": id, "token": token}).to_string();
    let (status, reply) = api.call("POST", "/agent/enroll", None, &body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let key = reply["key"].as_str().unwrap();
    assert!(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()));
    let (status, reply) = api.call("POST", "/agent/enroll", None, &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert_eq!(reply["error"]["code"], "forbidden");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("enrolment refused: the token was already used (at ")
            && message.ends_with("); it is single-use"),
        "{message}"
    );
    let (_, shown) = api.admin("GET", &format!("/admin/agents/{id}"), "").await;
    assert_eq!(shown["agent"]["enrolled"], true);
    let wrong = json!({"agentId": id, "token": "0".repeat(64)}).to_string();
    let (status, reply) = api.call("POST", "/agent/enroll", None, &wrong).await;
    let expected = error(
        "unauthorized",
        "enrolment refused: unknown agent id or wrong token",
    );
    assert_eq!((status, reply), (StatusCode::UNAUTHORIZED, expected));
}
