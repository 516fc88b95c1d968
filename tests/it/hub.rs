//! citrus-engine with real agents: authentication before the upgrade, online/offline, status
//! and history, commands and their reports, key rotation, and the admin API's refusals.

use serde_json::{json, Value};

use crate::hub_support::{agent_headers, raw_connect, EngineProc, ENGINE};
use crate::support::{wait_for, Daemon, DEADLINE};

/// A citrusd whose agent enrols at `engine` with `token` and creates sites with `echo`.
pub fn agent_daemon(engine: &EngineProc, id: &str, token: &str) -> Daemon {
    Daemon::start(&format!(
        "[apps.api]\ncommand = [\"sleep\", \"1000\"]\n\
         [fleet]\nengine_url = \"{}\"\nagent_id = \"{id}\"\nkey_file = \"agent.key\"\n\
         enroll_token = \"{token}\"\nstatus_interval = \"300ms\"\nreconnect_delay = \"100ms\"\n\
         [fleet.sites]\ncreate = [\"echo\", \"created\", \"{{domain}}\"]\n",
        engine.ws_url()
    ))
}

#[test]
fn invalid_config_exits_2_naming_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:1\"\nstatus_intervall = \"5s\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(ENGINE)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("engine.toml:2:1: status_intervall: unknown key `status_intervall`; did you mean `status_interval`?"),
        "{stderr}"
    );
    // No admin token anywhere: refused at start with the fix.
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\n").unwrap();
    let out = std::process::Command::new(ENGINE)
        .arg("--config")
        .arg(&path)
        .env_remove("CITRUS_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CITRUS_ADMIN_TOKEN"), "{stderr}");
}

#[test]
fn admin_api_refuses_missing_or_wrong_token_with_json_errors() {
    let engine = EngineProc::start("auth_max_failures = 3\n");
    let (status, body) = engine.call("GET", "/admin/agents", None, None);
    assert_eq!(status, 401);
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    let (status, body) = engine.call("GET", "/admin/agents", Some("nope"), None);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "wrong admin token");
    // Third failure from this address: a wrong token is refused for the window (the right
    // one still works, see error_shapes::admin_lockout_spares_the_right_token_and_stays_bounded).
    let (status, body) = engine.call("GET", "/admin/servers", Some("nope"), None);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too many failed attempts"));
}

#[test]
fn admin_api_errors_for_bad_requests() {
    let engine = EngineProc::start("");
    let (status, body) = engine.admin("GET", "/admin/agents/nope", None);
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no agent with id \"nope\""));
    let (status, body) = engine.admin("GET", "/admin/operations/nope", None);
    assert_eq!(status, 404, "{body}");
    let (status, body) = engine.admin("POST", "/admin/agents", Some(json!({"name": "a b"})));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid name"),
        "{body}"
    );
    let (status, body) = engine.admin("POST", "/admin/agents", Some(json!({"nmae": "x"})));
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `nmae`"),
        "{body}"
    );
    let (status, body) = engine.admin("GET", "/nowhere", None);
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/admin/"),
        "{body}"
    );
    // Provisioning without DigitalOcean configured says how to configure it.
    let (status, body) = engine.admin("POST", "/admin/servers/deploy-with-agent", Some(json!({})));
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("DO_API_TOKEN"),
        "{body}"
    );
}

#[test]
fn agent_handshake_is_refused_before_the_upgrade_and_rate_limited() {
    let engine = EngineProc::start("auth_max_failures = 4\n");
    let (id, key) = engine.enrolled_agent("raw");
    let rt = &engine.rt;
    let url = engine.ws_url();
    // Wrong key, unknown id, missing key header: 401 before any upgrade.
    assert_eq!(
        raw_connect(rt, &url, &agent_headers(&id, "wrong")).err(),
        Some(401)
    );
    assert_eq!(
        raw_connect(rt, &url, &agent_headers("ghost", &key)).err(),
        Some(401)
    );
    let missing = [
        ("x-client-type", "agent"),
        ("x-agent-id", id.as_str()),
        ("x-citrus-protocol", "1"),
    ];
    assert_eq!(raw_connect(rt, &url, &missing).err(), Some(401));
    // The right key works while under the limit; from the 4th failure a wrong key gets 429,
    // while the right key is still accepted.
    let ok = raw_connect(rt, &url, &agent_headers(&id, &key)).expect("accepted");
    drop(ok);
    assert_eq!(
        raw_connect(rt, &url, &agent_headers(&id, "wrong")).err(),
        Some(429)
    );
    let ok = raw_connect(rt, &url, &agent_headers(&id, &key)).expect("accepted");
    drop(ok);
    assert!(engine.stderr().contains("agent authentication refused"));
    assert!(
        !engine.stderr().contains(&key),
        "the key must never be logged"
    );
}

#[test]
fn enrolment_token_is_single_use() {
    let engine = EngineProc::start("");
    let (id, token) = engine.create_agent("once");
    let (status, body) = engine.enroll(&id, "not-the-token");
    assert_eq!(status, 401, "{body}");
    let (status, body) = engine.enroll(&id, &token);
    assert_eq!(status, 200, "{body}");
    let key = body["key"].as_str().unwrap();
    assert_eq!(key.len(), 64);
    let (status, body) = engine.enroll(&id, &token);
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );
    let (status, body) = engine.call("POST", "/agent/enroll", None, Some(json!({"agentId": id})));
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("token"),
        "{body}"
    );
    // Expired tokens are refused.
    let short = EngineProc::start("enroll_token_ttl = \"200ms\"\n");
    let (status, body) = short.admin("POST", "/admin/agents", Some(json!({"name": "late"})));
    assert_eq!(status, 201);
    let expires = body["expiresAt"].as_u64().unwrap();
    wait_for("the token's expiry", DEADLINE, || {
        match citrus::sys::now_ms() > expires {
            true => Ok(()),
            false => Err("not yet".into()),
        }
    });
    let id = body["agent"]["id"].as_str().unwrap();
    let (status, body) = short.enroll(id, body["enrollToken"].as_str().unwrap());
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
}

#[test]
fn real_agent_enrols_reports_status_runs_commands_and_rotates_its_key() {
    let engine = EngineProc::start("command_timeout = \"20s\"\n");
    let (id, token) = engine.create_agent("web-1");
    let daemon = agent_daemon(&engine, &id, &token);
    let agent = engine.wait_agent_status(&id, "online");
    assert_eq!(agent["agent"]["enrolled"], true);
    let old_key = std::fs::read_to_string(daemon.dir.path().join("agent.key")).unwrap();

    // Latest status and history are kept.
    let agent = wait_for("a stored status", DEADLINE, || {
        let agent = engine.agent(&id);
        match agent["status"]["apps"][0]["name"] == "api" {
            true => Ok(agent),
            false => Err(agent.to_string()),
        }
    });
    assert!(agent["status"]["hostname"].is_string());
    assert!(agent["agent"]["version"].is_string(), "{agent}");
    let history = engine.get(&format!("/admin/agents/{id}/history"));
    assert!(!history["points"].as_array().unwrap().is_empty());
    assert_eq!(history["points"][0]["appsTotal"], 1);
    // Every status counts as a sign of life.
    wait_for("lastSeenAt to follow the statuses", DEADLINE, || {
        let agent = engine.agent(&id)["agent"].clone();
        match agent["lastSeenAt"].as_i64() > agent["connectedAt"].as_i64() {
            true => Ok(()),
            false => Err(agent.to_string()),
        }
    });

    // A command round trip with its output.
    let op = engine.create_site_completes(&id, "Shop.Example.com");
    assert_eq!(op["command"]["domain"], "shop.example.com");

    // Refused before anything is sent: a hostile domain, an unknown type, a missing field.
    let (status, body) = engine.command(
        &id,
        json!({"type": "create_site", "domain": "a.com; rm -rf /"}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("domain"),
        "{body}"
    );
    let (status, body) = engine.command(&id, json!({"type": "launch_missiles"}));
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown command type \"launch_missiles\""),
        "{body}"
    );
    let (status, body) =
        engine.command(&id, json!({"type": "rollback_agent", "commitId": "HEAD~1"}));
    assert_eq!(status, 400, "{body}");
    let (status, _) = engine.command(&id, json!({"domain": "x.com"}));
    assert_eq!(status, 400);
    let ops = engine.get(&format!("/admin/agents/{id}/operations"));
    assert_eq!(
        ops["operations"].as_array().unwrap().len(),
        1,
        "refused commands are not recorded"
    );

    // Key rotation: the agent acknowledges, reconnects with the new key; the old one is refused.
    let connected_at = engine.agent(&id)["agent"]["connectedAt"].clone();
    let (status, body) = engine.admin("POST", &format!("/admin/agents/{id}/rotate-key"), None);
    assert_eq!(status, 202, "{body}");
    assert!(!body.to_string().contains("newKey"));
    let op = engine.wait_operation(body["operation"]["id"].as_str().unwrap());
    assert_eq!(op["status"], "completed", "{op}");
    let new_key = wait_for("the new key file", DEADLINE, || {
        let key = std::fs::read_to_string(daemon.dir.path().join("agent.key")).unwrap();
        if key != old_key {
            Ok(key)
        } else {
            Err("old key".into())
        }
    });
    // Its new connection (commands sent on the old one after the ack would be lost with it).
    wait_for("the agent's new connection", DEADLINE, || {
        let agent = engine.agent(&id)["agent"].clone();
        match agent["status"] == "online" && agent["connectedAt"] != connected_at {
            true => Ok(()),
            false => Err(agent.to_string()),
        }
    });
    let rt = &engine.rt;
    assert_eq!(
        raw_connect(rt, &engine.ws_url(), &agent_headers(&id, old_key.trim())).err(),
        Some(401)
    );
    let stderr = engine.stderr();
    assert!(!stderr.contains(new_key.trim()) && !stderr.contains(old_key.trim()));

    // Commands still work on the new connection.
    let (status, body) = engine.command(
        &id,
        json!({"type": "app_control", "app": "api", "action": "restart"}),
    );
    assert_eq!(status, 202, "{body}");
    let op = engine.wait_operation(body["operation"]["id"].as_str().unwrap());
    assert_eq!(op["status"], "completed", "{op}");

    // Agent gone: offline, and commands are refused with 409.
    drop(daemon);
    engine.wait_agent_status(&id, "offline");
    let (status, body) = engine.command(&id, json!({"type": "update_agent"}));
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("offline"),
        "{body}"
    );
    let stats = engine.get("/admin/stats");
    assert!(stats["statusUpdates"].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn silent_agent_goes_offline_and_unanswered_commands_time_out() {
    let engine = EngineProc::start("status_interval = \"300ms\"\ncommand_timeout = \"1s\"\n");
    let (id, key) = engine.enrolled_agent("mute");
    let rt = &engine.rt;
    let mut ws = raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &key)).unwrap();
    engine.wait_agent_status(&id, "online");
    // A command the agent never answers fails after command_timeout.
    let (status, body) = engine.command(
        &id,
        json!({"type": "delete_site", "domain": "old.example.com"}),
    );
    assert_eq!(status, 202, "{body}");
    let frame = ws.recv(rt, DEADLINE).unwrap().unwrap();
    let sent: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(sent["type"], "delete_site");
    assert_eq!(sent["id"], body["operation"]["id"]);
    let op = engine.wait_operation(body["operation"]["id"].as_str().unwrap());
    assert_eq!(op["status"], "failed");
    assert!(
        op["error"]
            .as_str()
            .unwrap()
            .contains("no answer from the agent within 1s"),
        "{op}"
    );
    // A report after the timeout changes nothing.
    let late = json!({"type": "site_operation", "id": op["id"], "operation": "delete", "status": "completed", "domain": "old.example.com"});
    ws.send(rt, late.to_string());
    // Three missed status intervals: the engine closes and marks the agent offline.
    engine.wait_agent_status(&id, "offline");
    let op = engine.get(&format!("/admin/operations/{}", op["id"].as_str().unwrap()))["operation"]
        .clone();
    assert_eq!(op["status"], "failed");
    assert!(
        matches!(ws.recv(rt, DEADLINE), Some(Err(_))),
        "connection closed"
    );
}

#[test]
fn malformed_and_oversized_frames_never_take_the_engine_down() {
    let engine = EngineProc::start("max_frame = 4096\n");
    let (id, key) = engine.enrolled_agent("noisy");
    let rt = &engine.rt;
    let mut ws = raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &key)).unwrap();
    engine.wait_agent_status(&id, "online");
    for junk in [
        "not json",
        "[1,2]",
        r#"{"type":"nonsense"}"#,
        r#"{"type":"status_update"}"#,
    ] {
        assert!(ws.send(rt, junk.to_string()));
    }
    // Still connected and still served.
    let (status, body) = engine.command(&id, json!({"type": "update_agent"}));
    assert_eq!(status, 202, "{body}");
    let frame = ws.recv(rt, DEADLINE).unwrap().unwrap();
    assert!(frame.contains("update_agent"));
    // A frame over max_frame closes that connection only.
    ws.send(
        rt,
        format!(
            "{{\"type\":\"event\",\"kind\":\"x\",\"message\":\"{}\"}}",
            "x".repeat(8000)
        ),
    );
    assert!(matches!(ws.recv(rt, DEADLINE), Some(Err(_))));
    engine.wait_agent_status(&id, "offline");
    let again = raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &key));
    assert!(again.is_ok());
    engine.wait_agent_status(&id, "online");
}

#[test]
fn status_history_is_pruned_after_the_retention() {
    let engine = EngineProc::start("status_history_retention = \"1s\"\n");
    let (id, token) = engine.create_agent("hist");
    let daemon = agent_daemon(&engine, &id, &token);
    engine.wait_agent_status(&id, "online");
    let count = || {
        engine.get(&format!("/admin/agents/{id}/history"))["points"]
            .as_array()
            .unwrap()
            .len()
    };
    wait_for("history points", DEADLINE, || {
        if count() >= 2 {
            Ok(())
        } else {
            Err("few".into())
        }
    });
    drop(daemon);
    engine.wait_agent_status(&id, "offline");
    wait_for("history to be pruned", DEADLINE, || match count() {
        0 => Ok(()),
        n => Err(format!("{n} points left")),
    });
    // The latest status stays.
    assert!(engine.agent(&id)["status"]["hostname"].is_string());
}

#[test]
fn operations_and_agents_survive_an_engine_restart() {
    let mut engine = EngineProc::start("");
    let (id, token) = engine.create_agent("durable");
    let _daemon = agent_daemon(&engine, &id, &token);
    engine.wait_agent_status(&id, "online");
    let (_, body) = engine.command(
        &id,
        json!({"type": "create_site", "domain": "a.example.com"}),
    );
    let op_id = body["operation"]["id"].as_str().unwrap().to_owned();
    engine.wait_operation(&op_id);
    assert_eq!(engine.stop(), 0);
    engine.spawn();
    // The agent reconnects with its key (kept in its key file) and the store kept everything.
    engine.wait_agent_status(&id, "online");
    let op = engine.get(&format!("/admin/operations/{op_id}"))["operation"].clone();
    assert_eq!(op["status"], "completed");
}

/// A throwaway PostgreSQL server started by `.ci/postgres`; stopped on drop.
struct Postgres {
    url: String,
    dir: String,
}

/// Set (by `.ci/run`) to make a PostgreSQL test that cannot run a failure instead of a skip.
const REQUIRE_POSTGRES: &str = "CITRUS_REQUIRE_POSTGRES";

impl Postgres {
    /// Starts a server, or says why it cannot and answers `None` where that is no failure:
    /// `.ci/postgres` needs root, and Debian's postgresql package (installed if apt-get can). With
    /// `CITRUS_REQUIRE_POSTGRES=1`, not being able to is a failure.
    fn start() -> Option<Postgres> {
        let installed = std::fs::read_dir("/usr/lib/postgresql")
            .map(|versions| {
                versions
                    .flatten()
                    .any(|v| v.path().join("bin/initdb").exists())
            })
            .unwrap_or(false);
        let apt = std::path::Path::new("/usr/bin/apt-get").exists();
        let needs = match (nix::unistd::geteuid().is_root(), installed || apt) {
            (false, _) => Some("root"),
            (true, false) => Some("Debian's postgresql package (or apt-get to install it)"),
            (true, true) => None,
        };
        if let Some(needs) = needs {
            let why = format!("the PostgreSQL store test needs {needs}");
            assert!(
                std::env::var_os(REQUIRE_POSTGRES).is_none_or(|v| v != "1"),
                "{why}, and {REQUIRE_POSTGRES}=1 makes it mandatory"
            );
            // Straight to stderr: the test harness captures eprintln! of passing tests, and a
            // skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {why} (with {REQUIRE_POSTGRES}=1, as .ci/run sets, this fails)"
            );
            return None;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
        let out = std::process::Command::new(script)
            .arg("start")
            .output()
            .unwrap();
        let line = crate::support::succeeded(
            out,
            "cannot start PostgreSQL with .ci/postgres (needs root and Debian's postgresql package)",
        );
        let (url, dir) = line.trim().split_once(' ').unwrap();
        Some(Postgres {
            url: url.to_owned(),
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
        let _ = std::process::Command::new(script)
            .args(["stop", &self.dir])
            .status();
    }
}

#[test]
fn postgresql_store_has_the_same_schema_and_behaviour() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let mut engine = EngineProc::start(&format!(
        "database_url = \"{}\"\nstatus_history_retention = \"1h\"\n",
        pg.url
    ));
    let (id, key) = engine.enrolled_agent("pg-agent");
    let rt = &engine.rt;
    let mut ws = raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &key)).unwrap();
    engine.wait_agent_status(&id, "online");
    let status_frame = json!({"type": "status_update", "status": {
        "hostname": "pg-host", "uptime": 5, "gitVersion": null,
        "cpu": {"load": 12.5, "cores": 2},
        "memory": {"total": 1000, "used": 400, "free": 600},
        "disk": [{"fs": "/", "size": 100, "used": 40, "available": 60}],
        "apps": [], "timestamp": 1
    }});
    assert!(ws.send(rt, status_frame.to_string()));
    wait_for("the status in PostgreSQL", DEADLINE, || {
        let agent = engine.agent(&id);
        match agent["status"]["hostname"] == "pg-host" {
            true => Ok(()),
            false => Err(agent.to_string()),
        }
    });
    let history = engine.get(&format!("/admin/agents/{id}/history"));
    assert_eq!(history["points"][0]["cpuLoad"], 12.5);
    assert_eq!(history["points"][0]["diskUsed"], 40);
    // Downsampled in SQL, and events stored and listed, as with SQLite.
    let hour = engine.get(&format!("/admin/agents/{id}/history?range=hour"));
    assert_eq!(hour["points"][0]["cpuLoad"], 12.5, "{hour}");
    assert_eq!(hour["points"][0]["memoryUsed"], 400, "{hour}");
    let event = json!({"type": "event", "kind": "disk", "message": "/ is 91 % full"});
    assert!(ws.send(rt, event.to_string()));
    let events = wait_for("the event in PostgreSQL", DEADLINE, || {
        let events = engine.get(&format!("/admin/events?agent={id}&kind=disk"))["events"].clone();
        match events.as_array().map_or(0, Vec::len) {
            1 => Ok(events),
            _ => Err(events.to_string()),
        }
    });
    assert_eq!(events[0]["message"], "/ is 91 % full");
    assert!(events[0]["app"].is_null());
    let (status, body) = engine.command(
        &id,
        json!({"type": "create_site", "domain": "pg.example.com"}),
    );
    assert_eq!(status, 202, "{body}");
    let sent: Value = serde_json::from_str(&ws.recv(rt, DEADLINE).unwrap().unwrap()).unwrap();
    let op_id = sent["id"].as_str().unwrap().to_owned();
    let report = json!({"type": "site_operation", "id": op_id, "operation": "create", "status": "completed", "domain": "pg.example.com", "output": "done"});
    ws.send(rt, report.to_string());
    let op = engine.wait_operation(&op_id);
    assert_eq!(op["status"], "completed");
    assert_eq!(op["output"], "done");
    // A deployment: inserted with its operation, moved by reports, never moved back, listed.
    let (status, body) = engine.admin(
        "POST",
        &format!("/admin/agents/{id}/deploy"),
        Some(json!({"app": "web", "ref": "main"})),
    );
    assert_eq!(status, 202, "{body}");
    let sent: Value = serde_json::from_str(&ws.recv(rt, DEADLINE).unwrap().unwrap()).unwrap();
    assert_eq!(sent["type"], "deploy_app");
    let deploy_id = sent["id"].as_str().unwrap().to_owned();
    let deploy_report = |phase: &str, status: &str, extra: Value| {
        let mut frame = json!({"type": "deploy_operation", "id": deploy_id, "app": "web",
            "phase": phase, "status": status});
        frame
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        frame.to_string()
    };
    ws.send(
        rt,
        deploy_report("building", "starting", json!({"output": "npm ci"})),
    );
    ws.send(
        rt,
        deploy_report(
            "completed",
            "completed",
            json!({"releaseId": "r-pg", "commit": "abcdef1", "output": "built"}),
        ),
    );
    ws.send(
        rt,
        deploy_report("restarting", "starting", json!({"output": "late"})),
    );
    // Frames are handled in order: once this status shows, the late report has been too.
    let mut later = status_frame.clone();
    later["status"]["uptime"] = json!(6);
    ws.send(rt, later.to_string());
    wait_for("the second status in PostgreSQL", DEADLINE, || {
        let agent = engine.agent(&id);
        match agent["status"]["uptime"] == 6 {
            true => Ok(()),
            false => Err(agent.to_string()),
        }
    });
    assert_eq!(engine.wait_operation(&deploy_id)["status"], "completed");
    let deployments = |engine: &EngineProc| {
        engine.get(&format!("/admin/agents/{id}/deployments"))["deployments"].clone()
    };
    let listed = deployments(&engine);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let d = &listed[0];
    assert_eq!(d["id"], deploy_id.as_str());
    assert_eq!((&d["app"], &d["ref"]), (&json!("web"), &json!("main")));
    assert_eq!(
        (&d["phase"], &d["status"]),
        (&json!("completed"), &json!("completed"))
    );
    assert_eq!(
        (&d["releaseId"], &d["commit"]),
        (&json!("r-pg"), &json!("abcdef1"))
    );
    drop(ws);
    // Migrations at the second start find the schema in place; the data is all there.
    assert_eq!(engine.stop(), 0);
    engine.spawn();
    let agent = engine.agent(&id);
    assert_eq!(agent["agent"]["status"], "offline");
    assert_eq!(agent["status"]["hostname"], "pg-host");
    // The fleet view is loaded from PostgreSQL too.
    let fleet = engine.get("/admin/fleet");
    assert_eq!(fleet["agents"][0]["hostname"], "pg-host", "{fleet}");
    assert_eq!(
        engine.get(&format!("/admin/operations/{op_id}"))["operation"]["output"],
        "done"
    );
    let after_restart = deployments(&engine);
    assert_eq!(after_restart[0]["phase"], "completed", "{after_restart}");
    assert_eq!(after_restart[0]["output"], "built", "{after_restart}");
    // Pruning (PostgreSQL deletes by ctid): with a retention of 1 ms the history goes, the
    // latest status stays.
    assert_eq!(engine.stop(), 0);
    let config = std::fs::read_to_string(&engine.config).unwrap();
    std::fs::write(
        &engine.config,
        config.replace(
            "status_history_retention = \"1h\"",
            "status_history_retention = \"1ms\"",
        ),
    )
    .unwrap();
    engine.spawn();
    wait_for(
        "the history and events pruned in PostgreSQL",
        DEADLINE,
        || {
            let history = engine.get(&format!("/admin/agents/{id}/history"));
            let events = engine.get(&format!("/admin/events?agent={id}"));
            match (
                history["points"].as_array().map_or(0, Vec::len),
                events["events"].as_array().map_or(0, Vec::len),
            ) {
                (0, 0) => Ok(()),
                n => Err(format!("{n:?} points and events")),
            }
        },
    );
    assert_eq!(engine.agent(&id)["status"]["hostname"], "pg-host");
}

#[test]
fn example_configs_load_and_point_the_local_agent_at_the_engine() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let citrusd = citrus::config::Config::load(&root.join("config/citrusd.toml"), None).unwrap();
    let engine = citrus::config::EngineConfig::load(&root.join("config/engine.toml")).unwrap();
    let fleet = citrusd.fleet.expect("the example runs the local agent");
    let local = engine
        .local_agent
        .expect("the engine knows the local agent");
    assert_eq!(fleet.agent_id, local.id);
    let same = |a: &std::path::Path, b: &std::path::Path| {
        std::path::absolute(a)
            .unwrap()
            .components()
            .collect::<Vec<_>>()
            == std::path::absolute(b)
                .unwrap()
                .components()
                .collect::<Vec<_>>()
    };
    let normal = |p: &std::path::Path| {
        let mut out = std::path::PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    };
    assert!(same(&normal(&fleet.key_file), &normal(&local.key_file)));
    assert_eq!(fleet.engine_url, format!("ws://{}/agent", engine.listen));
    assert!(citrusd.apps.contains_key("engine"));
}

#[test]
fn citrusd_supervises_the_engine_and_its_own_agent_comes_online() {
    let port = crate::support::stable_port();
    let engine_toml = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"sqlite://engine/engine.db\"\n\
         admin_token_file = \"engine/admin.token\"\nstatus_interval = \"1s\"\n\
         [local_agent]\nid = \"local\"\nkey_file = \"state/agent.key\"\n"
    );
    let mut daemon = Daemon::prepare(
        &format!(
            "[apps.engine]\ncommand = [\"{ENGINE}\", \"--config\", \"engine.toml\"]\n\
             ready = {{ http = \"http://127.0.0.1:{port}/health\" }}\n\
             [fleet]\nengine_url = \"ws://127.0.0.1:{port}/agent\"\nagent_id = \"local\"\n\
             key_file = \"state/agent.key\"\nstatus_interval = \"300ms\"\nreconnect_delay = \"100ms\"\n"
        ),
        &[],
    );
    std::fs::write(daemon.dir.path().join("engine.toml"), engine_toml).unwrap();
    daemon
        .extra_env
        .push(("CITRUS_LOG".into(), "citrus=info".into()));
    let daemon = daemon.launch();
    daemon.wait_state("engine", citrus::control::AppState::Online);
    let token_file = daemon.dir.path().join("engine/admin.token");
    let token = wait_for("the admin token file", DEADLINE, || {
        std::fs::read_to_string(&token_file).map_err(|e| e.to_string())
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key_mode = std::fs::metadata(daemon.dir.path().join("state/agent.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let agent = wait_for("the local agent online with its status", DEADLINE, || {
        let body: Value = rt.block_on(async {
            let resp = client
                .get(format!("http://127.0.0.1:{port}/admin/agents/local"))
                .bearer_auth(token.trim())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            resp.json().await.map_err(|e| e.to_string())
        })?;
        match body["agent"]["status"] == "online" && body["status"]["apps"][0]["name"] == "engine" {
            true => Ok(body),
            false => Err(body.to_string()),
        }
    });
    assert_eq!(agent["agent"]["name"], "local");
}

#[test]
fn key_rotation_accepts_the_old_key_until_the_agent_acknowledges() {
    let engine = EngineProc::start("");
    let (id, old_key) = engine.enrolled_agent("rotor");
    let rt = &engine.rt;
    let mut first = raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &old_key)).unwrap();
    engine.wait_agent_status(&id, "online");
    let (status, body) = engine.admin("POST", &format!("/admin/agents/{id}/rotate-key"), None);
    assert_eq!(status, 202, "{body}");
    let op_id = body["operation"]["id"].as_str().unwrap().to_owned();
    let frame: Value = serde_json::from_str(&first.recv(rt, DEADLINE).unwrap().unwrap()).unwrap();
    assert_eq!(frame["type"], "rotate_key");
    assert_eq!(frame["id"], op_id.as_str());
    let new_key = frame["newKey"].as_str().unwrap().to_owned();
    assert_eq!(new_key.len(), 64);
    // Not acknowledged yet: the old key still opens a connection (which replaces the first).
    let mut second = raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &old_key))
        .expect("old key until the ack");
    assert!(
        matches!(first.recv(rt, DEADLINE), Some(Err(_))),
        "the older connection is closed"
    );
    let ack = json!({"type": "key_rotation", "id": op_id, "status": "completed"});
    assert!(second.send(rt, ack.to_string()));
    let op = engine.wait_operation(&op_id);
    assert_eq!(op["status"], "completed");
    assert!(
        op["command"].get("newKey").is_none(),
        "the key is not stored with the operation"
    );
    // The connection of the old key takes no more commands (the agent is reconnecting): they
    // are refused, not lost on a connection about to close.
    let (status, body) = engine.command(&id, json!({"type": "update_agent"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &old_key)).err(),
        Some(401)
    );
    let mut third =
        raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &new_key)).expect("the new key");
    wait_for(
        "a command accepted on the new connection",
        DEADLINE,
        || match engine.command(&id, json!({"type": "update_agent"})) {
            (202, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        },
    );
    let frame: Value = serde_json::from_str(&third.recv(rt, DEADLINE).unwrap().unwrap()).unwrap();
    assert_eq!(frame["type"], "update_agent");
}

#[test]
fn a_flooding_agent_gets_one_history_point_per_half_interval_and_stays_connected() {
    // Before the bound, every status_update became a row (one agent: ~800 rows/s).
    let engine = EngineProc::start(""); // status_interval = "1s": one point per 500 ms
    let (id, key) = engine.enrolled_agent("flood");
    let rt = &engine.rt;
    let mut ws = raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &key)).unwrap();
    engine.wait_agent_status(&id, "online");
    let frame = |i: usize| {
        json!({"type": "status_update", "status": {
            "hostname": format!("flood-{i}"), "uptime": 5, "gitVersion": null,
            "cpu": {"load": 0.5, "cores": 2},
            "memory": {"total": 1000, "used": 400, "free": 600},
            "disk": [], "apps": [], "timestamp": 1
        }})
        .to_string()
    };
    let sent = 500;
    let start = std::time::Instant::now();
    for i in 0..sent {
        assert!(ws.send(rt, frame(i)), "the engine closed a flooding agent");
    }
    // The latest status is the last one sent: nothing an agent says is lost from it.
    wait_for("the last status", DEADLINE, || {
        let agent = engine.agent(&id);
        match agent["status"]["hostname"] == format!("flood-{}", sent - 1) {
            true => Ok(()),
            false => Err(agent["status"]["hostname"].to_string()),
        }
    });
    let elapsed = start.elapsed();
    let history = engine.get(&format!("/admin/agents/{id}/history?limit=1000"));
    let points = history["points"].as_array().unwrap().len() as u128;
    let bound = 1 + elapsed.as_millis() / 500;
    assert!(
        points <= bound,
        "{points} history points for {sent} statuses in {elapsed:?}: at most {bound}"
    );
    let stats = engine.get("/admin/stats");
    assert_eq!(stats["statusReceived"], sent as u64, "{stats}");
    assert_eq!(
        stats["statusThinned"].as_u64().unwrap() as u128,
        sent as u128 - points,
        "{stats}"
    );
    assert!(engine.stderr().contains("more often than every 500ms"));
    // Still connected, and a status after the half interval is a point again.
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(ws.send(rt, frame(sent)));
    wait_for("one more point", DEADLINE, || {
        let history = engine.get(&format!("/admin/agents/{id}/history?limit=1000"));
        match history["points"].as_array().unwrap().len() as u128 {
            n if n == points + 1 => Ok(()),
            n => Err(format!("{n} points")),
        }
    });
    engine.wait_agent_status(&id, "online");
}

/// Each float as written, and the value Rust's own (correctly rounded) parser makes of it.
const FLOATS: [&str; 6] = [
    "0.30000000000000004",
    "1.7976931348623157e308",
    "0.9999999999999999",
    "9007199254740993.0",
    "5e-324",
    "2.2250738585072014e-308",
];

/// The number after `"key":` in a JSON text, parsed by Rust (not serde_json).
fn number_in(text: &str, key: &str) -> f64 {
    let start = text
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {text}"));
    let rest = text[start + key.len() + 3..].trim_start();
    let end = rest.find([',', '}', ']']).unwrap();
    rest[..end].trim().parse().unwrap()
}

#[test]
fn create_site_options_reach_the_agent_digit_for_digit() {
    // Before `float_roundtrip`, 0.9999999999999999 arrived as 1.0 and 9007199254740993.0 as
    // 9007199254740994.0 (the exact value is 9007199254740992).
    let engine = EngineProc::start("");
    let (id, key) = engine.enrolled_agent("floats");
    let rt = &engine.rt;
    let mut ws = raw_connect(rt, &engine.ws_url(), &agent_headers(&id, &key)).unwrap();
    engine.wait_agent_status(&id, "online");
    let options: Vec<String> = (0..FLOATS.len())
        .map(|i| format!("\"f{i}\": {}", FLOATS[i]))
        .collect();
    let body = format!(
        "{{\"type\": \"create_site\", \"domain\": \"floats.example.com\", \"options\": {{{}}}}}",
        options.join(", ")
    );
    let (status, answer) = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{}/admin/agents/{id}/commands", engine.url()))
            .bearer_auth(crate::hub_support::ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(status, 202, "{answer}");
    let frame = ws.recv(rt, DEADLINE).unwrap().unwrap();
    for (i, written) in FLOATS.iter().enumerate() {
        let want: f64 = written.parse().unwrap();
        let got = number_in(&frame, &format!("f{i}"));
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{written} arrived as {got}: {frame}"
        );
        // What the agent makes of the frame is the same value.
        let parsed = citrus::fleet::protocol::parse_engine(&frame).unwrap();
        let citrus::fleet::protocol::EngineMessage::CreateSite { options, .. } = parsed else {
            panic!("{frame}");
        };
        let agent_side = options.unwrap()[&format!("f{i}")].as_f64().unwrap();
        assert_eq!(
            agent_side.to_bits(),
            want.to_bits(),
            "{written}: {agent_side}"
        );
    }
}
