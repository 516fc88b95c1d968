//! Issue 10, class 6: every refusal of citrusd's control API and of the engine's HTTP API has its
//! documented JSON shape (axum's own query, path, body and method refusals included); the agent
//! handshake needs `x-citrus-protocol`; the auth limit spares a right credential; `engine.db` is
//! private.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::hub_support::{agent_headers, raw_connect, EngineProc, ADMIN_TOKEN};
use crate::support::{Daemon, DEADLINE};

/// One raw HTTP/1.1 request on citrusd's control socket: (status, headers, body).
fn control(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: citrusd\r\nconnection: close\r\n");
    if let Some(body) = body {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_string())
}

/// The `{"error": {"code", "message", "hint"?}}` of a control API refusal.
#[track_caller]
fn control_error(reply: &(u16, String, String)) -> Value {
    let (code, head, body) = reply;
    assert!(*code >= 400, "{code} {body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let error = &body["error"];
    assert!(error["code"].is_string(), "{body}");
    assert!(error["message"].is_string(), "{body}");
    error.clone()
}

#[test]
fn control_api_refusals_are_json() {
    let d = Daemon::start("[apps.web]\ncommand = [\"sleep\", \"60\"]\n");
    let s = &d.socket;
    // Query parameters of the wrong type or out of range.
    for path in [
        "/v1/apps/web/logs?lines=abc",
        "/v1/apps/web/logs?lines=-1",
        "/v1/apps/web/logs?lines=99999999999999999999999",
        "/v1/apps/web/logs?stream=sideways",
        "/v1/apps/web/logs?follow=maybe",
        "/v1/apps/web/deployments/x?follow=2",
    ] {
        let reply = control(s, "GET", path, None);
        assert_eq!(reply.0, 400, "{path}: {reply:?}");
        let error = control_error(&reply);
        assert_eq!(error["code"], "bad_request", "{path}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("/v1/apps/web/"),
            "{path}: {error}"
        );
    }
    // Too many lines: bounded, with the bound in the message.
    let reply = control(s, "GET", "/v1/apps/web/logs?lines=100000000", None);
    assert_eq!(reply.0, 400);
    let error = control_error(&reply);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("at most 100000"),
        "{error}"
    );
    // A path that does not decode.
    let reply = control(s, "GET", "/v1/apps/%FF", None);
    assert_eq!(reply.0, 400, "{reply:?}");
    assert_eq!(control_error(&reply)["code"], "bad_request");
    // Wrong JSON types in bodies, and a body that is not JSON.
    for (path, body) in [
        ("/v1/reload-config", r#"{"dry_run": "yes"}"#),
        ("/v1/reload-config", "not json"),
        ("/v1/apps", r#"{"name": 5, "command": ["true"]}"#),
        ("/v1/apps", r#"{"name": "x", "command": "true"}"#),
        (
            "/v1/apps",
            r#"{"name": "x", "command": ["true"], "instances": -1}"#,
        ),
        ("/v1/apps/web/deploy", r#"{"ref": 7}"#),
        ("/v1/apps/web/rollback", r#"{"to": []}"#),
    ] {
        let reply = control(s, "POST", path, Some(body));
        assert_eq!(reply.0, 400, "{path} {body}: {reply:?}");
        assert_eq!(
            control_error(&reply)["code"],
            "bad_request",
            "{path} {body}"
        );
    }
    // A wrong method: 405 in the same shape, with Allow.
    let reply = control(s, "PUT", "/v1/status", None);
    assert_eq!(reply.0, 405, "{reply:?}");
    assert!(reply.1.contains("allow: get"), "{}", reply.1);
    let error = control_error(&reply);
    assert_eq!(error["code"], "bad_request");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("PUT is not allowed on /v1/status"),
        "{error}"
    );
    assert!(error["hint"].is_string(), "{error}");
    let reply = control(s, "GET", "/v1/save", None);
    assert_eq!(reply.0, 405, "{reply:?}");
    control_error(&reply);
    // An unknown route.
    let reply = control(s, "GET", "/v2/nothing", None);
    assert_eq!(reply.0, 400);
    control_error(&reply);
    // What works still works, in plain text where documented.
    let (code, _, body) = control(s, "GET", "/v1/apps/web/logs?lines=5", None);
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = control(s, "POST", "/v1/reload-config", Some(r#"{"dry_run": true}"#));
    assert_eq!(code, 200, "{body}");
}

/// The `{"success": false, "error": {"code", "message"}}` of an engine refusal.
#[track_caller]
fn engine_error(status: u16, body: &Value) -> String {
    assert!(status >= 400, "{status} {body}");
    assert_eq!(body["success"], false, "{status} {body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["code"].as_str().unwrap().to_string()
}

#[test]
fn engine_refusals_are_json() {
    let engine = EngineProc::start("");
    let (id, _) = engine.create_agent("shape");
    for path in [
        format!("/admin/agents/{id}/history?limit=abc"),
        format!("/admin/agents/{id}/history?since=1.5"),
        format!("/admin/agents/{id}/history?limit=99999999999999999999999"),
        "/admin/agents/%FF".to_string(),
    ] {
        let (status, body) = engine.admin("GET", &path, None);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(engine_error(status, &body), "bad_request", "{path}");
    }
    for (path, body) in [
        ("/admin/agents", json!({"name": 5})),
        ("/admin/agents", json!({"name": ["a"]})),
        (&*format!("/admin/agents/{id}/deploy"), json!({"app": 1})),
        (&*format!("/admin/agents/{id}/commands"), json!("restart")),
        ("/agent/enroll", json!({"agentId": 1, "token": "x"})),
    ] {
        let (status, reply) = engine.admin("POST", path, Some(body.clone()));
        assert_eq!(status, 400, "{path} {body}: {reply}");
        assert_eq!(engine_error(status, &reply), "bad_request", "{path}");
    }
    // Wrong methods: 405, method_not_allowed, with Allow kept.
    for (method, path) in [
        ("DELETE", "/admin/agents"),
        ("PUT", "/admin/stats"),
        ("POST", "/health"),
        ("POST", "/agent"),
        ("GET", "/agent/enroll"),
    ] {
        let (status, body) = engine.admin(method, path, None);
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(engine_error(status, &body), "method_not_allowed");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{method} is not allowed on {path}")),
            "{body}"
        );
    }
    let allow = engine.rt.block_on(async {
        reqwest::Client::new()
            .delete(format!("{}/admin/agents", engine.url()))
            .send()
            .await
            .unwrap()
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string())
    });
    assert!(allow.unwrap_or_default().contains("GET"));
    // Unknown routes (404) and GET /agent without an upgrade keep their shape.
    let (status, body) = engine.admin("GET", "/admin/nothing", None);
    assert_eq!(status, 404);
    assert_eq!(engine_error(status, &body), "not_found");
}

#[test]
fn agent_handshake_needs_the_protocol_header() {
    let engine = EngineProc::start("");
    let (id, key) = engine.enrolled_agent("proto");
    let rt = &engine.rt;
    let url = engine.ws_url();
    let without: Vec<_> = agent_headers(&id, &key)
        .into_iter()
        .filter(|(k, _)| *k != "x-citrus-protocol")
        .collect();
    assert_eq!(raw_connect(rt, &url, &without).err(), Some(401));
    let mut other = without.clone();
    other.push(("x-citrus-protocol", "2"));
    assert_eq!(raw_connect(rt, &url, &other).err(), Some(400));
    raw_connect(rt, &url, &agent_headers(&id, &key)).expect("accepted with the header");
}

#[test]
fn admin_lockout_spares_the_right_token_and_stays_bounded() {
    let engine = EngineProc::start("auth_max_failures = 3\n");
    for _ in 0..5 {
        engine.call("GET", "/admin/agents", Some("nope"), None);
    }
    // Past the limit a wrong token gets 429 ...
    let (status, body) = engine.call("GET", "/admin/agents", Some("nope"), None);
    assert_eq!(status, 429, "{body}");
    assert_eq!(engine_error(status, &body), "rate_limited");
    // ... the right one works at once.
    let (status, body) = engine.call("GET", "/admin/agents", Some(ADMIN_TOKEN), None);
    assert_eq!(status, 200, "{body}");
    // A guessing run (10 × the limit) is refused without a check, right token or not.
    for _ in 6..30 {
        engine.call("GET", "/admin/agents", Some("nope"), None);
    }
    let (status, body) = engine.call("GET", "/admin/agents", Some(ADMIN_TOKEN), None);
    assert_eq!(status, 429, "{body}");
}

#[test]
fn agent_lockout_spares_right_keys_and_stays_bounded() {
    let engine = EngineProc::start("auth_max_failures = 3\n");
    let (a, key_a) = engine.enrolled_agent("a");
    let (b, key_b) = engine.enrolled_agent("b");
    let rt = &engine.rt;
    let url = engine.ws_url();
    for _ in 0..2 {
        assert_eq!(
            raw_connect(rt, &url, &agent_headers(&a, "wrong")).err(),
            Some(401)
        );
    }
    for _ in 0..6 {
        assert_eq!(
            raw_connect(rt, &url, &agent_headers(&a, "wrong")).err(),
            Some(429)
        );
    }
    // The same address: the other agent and the right key of the first still connect.
    let ws_b = raw_connect(rt, &url, &agent_headers(&b, &key_b)).expect("other agent accepted");
    let ws_a = raw_connect(rt, &url, &agent_headers(&a, &key_a)).expect("right key accepted");
    drop((ws_a, ws_b));
    // Guessing is still bounded: after 10 × the limit nothing from the address is checked.
    for _ in 8..30 {
        let _ = raw_connect(rt, &url, &agent_headers(&a, "wrong"));
    }
    assert_eq!(
        raw_connect(rt, &url, &agent_headers(&b, &key_b)).err(),
        Some(429)
    );
}

#[test]
fn engine_database_is_private() {
    // Created by the engine: 0600, and so are its WAL and shared-memory files.
    let engine = EngineProc::start("");
    engine.create_agent("mode");
    let db = engine.dir.path().join("state/engine.db");
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", db.display());
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
    // An existing world-readable database is made private at start.
    let mut engine = engine;
    engine.stop();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    engine.spawn();
    engine.get("/admin/agents");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

/// Bodies that serde alone would take field by field in order (`["a"]` as `{"name": "a"}`).
const NOT_OBJECTS: [&str; 5] = [r#"["x", ["sleep", "1"]]"#, "[true]", r#""x""#, "7", "null"];

#[test]
fn bodies_must_be_json_objects_on_both_apis() {
    let d = Daemon::start("[apps.web]\ncommand = [\"sleep\", \"60\"]\n");
    for path in [
        "/v1/apps",
        "/v1/reload-config",
        "/v1/apps/web/deploy",
        "/v1/apps/web/rollback",
    ] {
        for body in NOT_OBJECTS {
            let reply = control(&d.socket, "POST", path, Some(body));
            assert_eq!(reply.0, 400, "{path} {body}: {reply:?}");
            let error = control_error(&reply);
            assert_eq!(error["code"], "bad_request", "{path} {body}");
            let message = error["message"].as_str().unwrap();
            assert!(
                message.starts_with("the body must be a JSON object, not "),
                "{path} {body}: {message}"
            );
        }
    }
    // Before, `["x", ["sleep", "1"]]` added an app named x.
    assert!(d.app("x").is_empty());
    let reply = control(
        &d.socket,
        "POST",
        "/v1/apps",
        Some(r#" {"name": "x", "command": ["sleep", "61"]}"#),
    );
    assert_eq!(reply.0, 200, "{reply:?}");

    let engine = EngineProc::start("");
    let (id, _) = engine.create_agent("objects");
    let call = |path: &str, body: &str| {
        engine.rt.block_on(async {
            let resp = reqwest::Client::new()
                .post(format!("{}{path}", engine.url()))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        })
    };
    for path in [
        "/admin/agents".to_string(),
        format!("/admin/agents/{id}/deploy"),
        format!("/admin/agents/{id}/commands"),
        "/agent/enroll".to_string(),
    ] {
        for body in NOT_OBJECTS {
            let (status, reply) = call(&path, body);
            assert_eq!(status, 400, "{path} {body}: {reply}");
            assert_eq!(engine_error(status, &reply), "bad_request", "{path}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(
                message.starts_with("the body must be a JSON object, not "),
                "{path} {body}: {message}"
            );
        }
    }
    // Before, `["x", ...]` created an agent named x.
    let agents = engine.get("/admin/agents");
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["objects"]);
}
