//! Deployments through the fleet: `POST /admin/agents/{id}/deploy` (and `/commands` with
//! `deploy_app`, the same path) sends `deploy_app` to a test-driven agent over a real WebSocket;
//! its `deploy_operation` reports move the deployment phase by phase, as
//! `GET /admin/agents/{id}/deployments` and the operation show; late reports never move it back.

use serde_json::{json, Value};

use crate::hub_support::{agent_headers, raw_connect, EngineProc, RawAgent};
use crate::support::{wait_for, DEADLINE};

/// An engine whose agents need not send statuses during a test.
fn engine() -> EngineProc {
    EngineProc::start("status_interval = \"60s\"\n")
}

/// An enrolled agent, connected and online.
pub fn connected_agent(engine: &EngineProc, name: &str) -> (String, String, RawAgent) {
    let (id, key) = engine.enrolled_agent(name);
    let ws = raw_connect(&engine.rt, &engine.ws_url(), &agent_headers(&id, &key)).unwrap();
    engine.wait_agent_status(&id, "online");
    (id, key, ws)
}

fn deploy(engine: &EngineProc, agent: &str, body: Value) -> (u16, Value) {
    engine.admin("POST", &format!("/admin/agents/{agent}/deploy"), Some(body))
}

fn deployments(engine: &EngineProc, agent: &str) -> Vec<Value> {
    engine.get(&format!("/admin/agents/{agent}/deployments"))["deployments"]
        .as_array()
        .unwrap()
        .clone()
}

/// The deployment `id` of `agent` as listed.
#[track_caller]
fn deployment(engine: &EngineProc, agent: &str, id: &str) -> Value {
    deployments(engine, agent)
        .into_iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("deployment {id} not listed"))
}

/// Waits until deployment `id` is in `phase` with `status`.
#[track_caller]
fn wait_phase(engine: &EngineProc, agent: &str, id: &str, phase: &str, status: &str) -> Value {
    wait_for(
        &format!("deployment {id} {phase}/{status}"),
        DEADLINE,
        || {
            let d = deployment(engine, agent, id);
            match d["phase"] == phase && d["status"] == status {
                true => Ok(d),
                false => Err(d.to_string()),
            }
        },
    )
}

/// The next frame the agent receives, as JSON.
#[track_caller]
fn next_frame(engine: &EngineProc, ws: &mut RawAgent) -> Value {
    let frame = ws.recv(&engine.rt, DEADLINE).expect("a frame").unwrap();
    serde_json::from_str(&frame).unwrap()
}

/// A `deploy_operation` frame; `extra` adds releaseId, commit, output or error.
fn report(id: &str, app: &str, phase: &str, status: &str, extra: Value) -> String {
    let mut frame =
        json!({"type": "deploy_operation", "id": id, "app": app, "phase": phase, "status": status});
    frame
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    frame.to_string()
}

/// Sends a status naming `hostname` and waits until the engine shows it: the frames sent before
/// it on this connection have been handled (one at a time, in order).
fn barrier(engine: &EngineProc, ws: &mut RawAgent, agent: &str, hostname: &str) {
    let status = json!({"type": "status_update", "status": {
        "hostname": hostname, "uptime": 1, "gitVersion": null,
        "cpu": {"load": 0.0, "cores": 1},
        "memory": {"total": 1, "used": 0, "free": 1},
        "disk": [], "apps": [], "timestamp": 1
    }});
    assert!(ws.send(&engine.rt, status.to_string()));
    wait_for(&format!("status {hostname}"), DEADLINE, || {
        let a = engine.agent(agent);
        match a["status"]["hostname"] == hostname {
            true => Ok(()),
            false => Err(a["status"].to_string()),
        }
    });
}

const RUNNING: [&str; 7] = [
    "queued",
    "pulling_source",
    "building",
    "copying_files",
    "creating_symlinks",
    "restarting",
    "health_check",
];

#[test]
fn deploy_reports_every_phase_and_a_late_report_does_not_move_it_back() {
    let engine = engine();
    let (agent, key, mut ws) = connected_agent(&engine, "deployer");
    let (status, body) = deploy(&engine, &agent, json!({"app": "web", "ref": "v1.2"}));
    assert_eq!(status, 202, "{body}");
    let op = &body["operation"];
    assert_eq!(op["type"], "deploy_app", "{body}");
    assert_eq!(op["status"], "sent", "{body}");
    let id = op["id"].as_str().unwrap().to_owned();

    let sent = next_frame(&engine, &mut ws);
    assert_eq!(
        sent,
        json!({"type": "deploy_app", "id": id, "app": "web", "ref": "v1.2"})
    );
    let d = deployment(&engine, &agent, &id);
    assert_eq!(d["app"], "web");
    assert_eq!(d["ref"], "v1.2");
    assert_eq!(d["agentId"], agent.as_str());
    assert_eq!(
        (&d["phase"], &d["status"]),
        (&json!("queued"), &json!("sent"))
    );
    assert!(d["createdAt"].as_i64().unwrap() > 0, "{d}");

    for phase in RUNNING {
        let output = json!({"output": format!("now {phase}")});
        assert!(ws.send(&engine.rt, report(&id, "web", phase, "starting", output)));
        let d = wait_phase(&engine, &agent, &id, phase, "starting");
        assert_eq!(d["output"], format!("now {phase}"), "{d}");
        let op = engine.get(&format!("/admin/operations/{id}"))["operation"].clone();
        assert_eq!(op["status"], "starting", "{op}");
    }
    // The final report carries the release, the commit and a long output: its tail is kept.
    let output = format!("{}BUILD OK", "x".repeat(100 * 1024));
    let extra = json!({"releaseId": "20261206-1", "commit": "0123456789abcdef", "output": output});
    assert!(ws.send(
        &engine.rt,
        report(&id, "web", "completed", "completed", extra)
    ));
    let op = engine.wait_operation(&id);
    assert_eq!(op["status"], "completed", "{op}");
    let d = wait_phase(&engine, &agent, &id, "completed", "completed");
    assert_eq!(d["releaseId"], "20261206-1");
    assert_eq!(d["commit"], "0123456789abcdef");
    assert_eq!(d["error"], Value::Null);
    let kept = d["output"].as_str().unwrap();
    assert_eq!(kept.len(), 64 * 1024, "the output's last 64 KiB");
    assert!(kept.ends_with("xBUILD OK"));
    assert!(d["updatedAt"].as_i64() >= d["createdAt"].as_i64());

    // The agent reconnects and its outbox sends a report from before the end: nothing moves.
    drop(ws);
    engine.wait_agent_status(&agent, "offline");
    let mut ws = raw_connect(&engine.rt, &engine.ws_url(), &agent_headers(&agent, &key)).unwrap();
    engine.wait_agent_status(&agent, "online");
    let late = report(
        &id,
        "web",
        "building",
        "starting",
        json!({"output": "late"}),
    );
    assert!(ws.send(&engine.rt, late));
    barrier(&engine, &mut ws, &agent, "after-late-report");
    let after = deployment(&engine, &agent, &id);
    assert_eq!(after["phase"], "completed", "{after}");
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(after["output"], d["output"]);
    assert_eq!(after["updatedAt"], d["updatedAt"]);
    let op = engine.get(&format!("/admin/operations/{id}"))["operation"].clone();
    assert_eq!(op["status"], "completed", "{op}");
}

#[test]
fn deploy_app_through_commands_and_a_rollback_ends_failed_with_its_error() {
    let engine = engine();
    let (agent, _key, mut ws) = connected_agent(&engine, "rollbacks");
    // The generic command route records the deployment too: it is the same path.
    let (status, body) = engine.command(&agent, json!({"type": "deploy_app", "app": "api"}));
    assert_eq!(status, 202, "{body}");
    let first = body["operation"]["id"].as_str().unwrap().to_owned();
    let sent = next_frame(&engine, &mut ws);
    assert_eq!(
        sent,
        json!({"type": "deploy_app", "id": first, "app": "api"})
    );
    let d = deployment(&engine, &agent, &first);
    assert_eq!((&d["app"], &d["ref"]), (&json!("api"), &Value::Null));

    for phase in ["queued", "building", "health_check"] {
        assert!(ws.send(
            &engine.rt,
            report(&first, "api", phase, "starting", json!({}))
        ));
    }
    wait_phase(&engine, &agent, &first, "health_check", "starting");
    let error = "health check failed: GET /health answered 500; current is back on 20261205-3";
    let end = report(
        &first,
        "api",
        "rolled_back",
        "failed",
        json!({"error": error}),
    );
    assert!(ws.send(&engine.rt, end));
    let op = engine.wait_operation(&first);
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(op["error"], error);
    let d = wait_phase(&engine, &agent, &first, "rolled_back", "failed");
    assert_eq!(d["error"], error);
    // A late report on the same connection changes nothing either.
    assert!(ws.send(
        &engine.rt,
        report(&first, "api", "restarting", "starting", json!({}))
    ));
    barrier(&engine, &mut ws, &agent, "after-rollback");
    let after = deployment(&engine, &agent, &first);
    assert_eq!(
        (&after["phase"], &after["status"]),
        (&json!("rolled_back"), &json!("failed"))
    );

    // An agent that refuses the command ends the deployment failed with its reason.
    let (status, body) = deploy(&engine, &agent, json!({"app": "api", "ref": "main"}));
    assert_eq!(status, 202, "{body}");
    let second = body["operation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(next_frame(&engine, &mut ws)["id"], second.as_str());
    let refusal = json!({"type": "error", "id": second, "error": "no app named \"api\" has a [deploy] section"});
    assert!(ws.send(&engine.rt, refusal.to_string()));
    let d = wait_phase(&engine, &agent, &second, "failed", "failed");
    assert!(
        d["error"].as_str().unwrap().contains("[deploy] section"),
        "{d}"
    );

    // Newest first; `limit` bounds the list and is checked.
    let list = deployments(&engine, &agent);
    let ids: Vec<&str> = list.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(list[0]["createdAt"].as_i64() >= list[1]["createdAt"].as_i64());
    let one = engine.get(&format!("/admin/agents/{agent}/deployments?limit=1"));
    assert_eq!(one["deployments"].as_array().unwrap().len(), 1);
    assert_eq!(one["deployments"][0]["id"], ids[0]);
    for bad in ["0", "501", "ten", "-1"] {
        let (status, body) = engine.admin(
            "GET",
            &format!("/admin/agents/{agent}/deployments?limit={bad}"),
            None,
        );
        assert_eq!(status, 400, "limit={bad}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1 to 500"),
            "{body}"
        );
    }
}

#[test]
fn bad_deploy_requests_are_refused_and_nothing_is_sent() {
    let engine = engine();
    let (agent, _key, mut ws) = connected_agent(&engine, "guarded");
    let path = format!("/admin/agents/{agent}/deploy");
    let refused = |body: Value, status: u16, says: &str| {
        let (got, answer) = deploy(&engine, &agent, body.clone());
        assert_eq!(got, status, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body} → {message}");
    };
    for bad_ref in ["-x", "a..b", "a b"] {
        refused(json!({"app": "web", "ref": bad_ref}), 400, "invalid ref");
        // The generic route refuses it the same way.
        let (status, body) = engine.command(
            &agent,
            json!({"type": "deploy_app", "app": "web", "ref": bad_ref}),
        );
        assert_eq!(status, 400, "{body}");
    }
    refused(json!({"app": "../web"}), 400, "invalid app name");
    refused(json!({"app": "all"}), 400, "reserved");
    refused(json!({"ref": "main"}), 400, "missing field `app`");
    refused(
        json!({"app": "web", "branch": "main"}),
        400,
        "unknown field `branch`",
    );
    // The app and ref are checked before the agent is looked up.
    let (status, body) = engine.admin(
        "POST",
        "/admin/agents/nobody/deploy",
        Some(json!({"app": "web"})),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no agent with id \"nobody\""));
    let (status, _) = engine.admin("GET", "/admin/agents/nobody/deployments", None);
    assert_eq!(status, 404);
    // No token, or a wrong one: 401 on both routes.
    let (status, body) = engine.call("POST", &path, None, Some(json!({"app": "web"})));
    assert_eq!(status, 401, "{body}");
    let deployments_path = format!("/admin/agents/{agent}/deployments");
    let (status, _) = engine.call("GET", &deployments_path, Some("wrong"), None);
    assert_eq!(status, 401);
    // Nothing was recorded, and the first frame the agent gets is the valid deploy sent now.
    assert!(deployments(&engine, &agent).is_empty());
    let (status, body) = deploy(&engine, &agent, json!({"app": "web", "ref": "feature/x-1"}));
    assert_eq!(status, 202, "{body}");
    let sent = next_frame(&engine, &mut ws);
    assert_eq!(sent["id"], body["operation"]["id"]);
    assert_eq!(sent["ref"], "feature/x-1");
    assert_eq!(deployments(&engine, &agent).len(), 1);
}

#[test]
fn deploy_to_an_offline_agent_answers_as_commands_do() {
    let engine = engine();
    let (agent, _key) = engine.enrolled_agent("sleeping");
    let (status, body) = deploy(&engine, &agent, json!({"app": "web"}));
    let (command_status, command_body) =
        engine.command(&agent, json!({"type": "deploy_app", "app": "web"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!((status, &body), (command_status, &command_body));
    assert!(deployments(&engine, &agent).is_empty());
}
