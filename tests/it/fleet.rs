//! The fleet agent against a stand-in engine on 127.0.0.1: enrolment, headers, status updates,
//! reconnects with backoff, commands (sites through argv templates, key rotation, app control),
//! error replies, one operation per domain, reports kept across disconnects and restarts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use citrus::control::AppState;

use crate::engine::Engine;
use crate::https_server::HttpsServer;
use crate::support::{git, wait_for, Daemon, DEADLINE};

const AGENT_ID: &str = "3f1c2b7e-0000-4000-8000-000000000001";
pub(crate) const KEY: &str = "k-0123456789abcdef";

/// A daemon with one app and a `[fleet]` section towards `engine`; `sites` adds the recorder
/// templates. The key file holds `key` unless it is None.
/// Waits until the checkout's HEAD is `want`; on time-out shows HEAD and citrusd's stderr.
#[track_caller]
fn wait_head(d: &Daemon, checkout: &std::path::Path, want: &str, what: &str) {
    wait_for(what, DEADLINE, || {
        let head = git(checkout, &["rev-parse", "HEAD"]);
        if head == want {
            Ok(())
        } else {
            Err(format!("HEAD {head}\n{}", d.stderr()))
        }
    });
}

pub(crate) fn agent(engine: &Engine, key: Option<&str>, extra: &str) -> Daemon {
    let d = Daemon::prepare(
        &format!(
            "[apps.api]\ncommand = [\"sleep\", \"1000\"]\n\
             [fleet]\nengine_url = \"{}\"\nagent_id = \"{AGENT_ID}\"\nkey_file = \"agent.key\"\nstatus_interval = \"300ms\"\nreconnect_delay = \"100ms\"\n{extra}\n\
             [fleet.sites]\ncreate = [\"./record.sh\", \"create\", \"{{domain}}\", \"--type=wp\"]\ndelete = [\"./record.sh\", \"delete\", \"{{domain}}\", \"--yes\"]\n",
            engine.url()
        ),
        &[],
    );
    let record = d.dir.path().join("record.sh");
    // Site commands run in /, so the templates name the recorder by its absolute path.
    let text = fs::read_to_string(&d.config)
        .unwrap()
        .replace("./record.sh", &record.display().to_string());
    fs::write(&d.config, text).unwrap();
    fs::write(&record, "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> \"$(dirname \"$0\")/argv.log\"\necho \"made $2\"\n").unwrap();
    fs::set_permissions(&record, fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(k) = key {
        fs::write(d.dir.path().join("agent.key"), k).unwrap();
    }
    d
}

fn ty(v: &serde_json::Value, t: &str) -> bool {
    v["type"] == t
}

#[test]
fn connects_with_headers_reports_status_and_comes_back_after_an_engine_restart() {
    let mut engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "").launch();
    let hello = engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    assert_eq!(hello["agentId"], AGENT_ID);
    assert!(hello["version"].is_string());
    let headers = &engine.connects()[0];
    assert_eq!(headers["x-client-type"], "agent");
    assert_eq!(headers["x-agent-id"], AGENT_ID);
    assert_eq!(headers["x-citrus-protocol"], "1");
    d.wait_state("api", AppState::Online);
    let status = engine.wait_frame("a status_update listing the app", |v| {
        ty(v, "status_update")
            && v["status"]["apps"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["name"] == "api"))
    });
    let s = &status["status"];
    for key in [
        "hostname",
        "uptime",
        "gitVersion",
        "cpu",
        "memory",
        "disk",
        "apps",
        "timestamp",
    ] {
        assert!(s.get(key).is_some(), "status.{key} missing: {s}");
    }
    assert!(s["cpu"]["cores"].as_u64().unwrap() >= 1);
    assert!(s["memory"]["total"].as_u64().unwrap() > 0);
    assert!(s["disk"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["fs"].is_string() && d["size"].is_u64()));
    d.ctl(&["fleet"])
        .code(0)
        .stdout_has(&["connected", AGENT_ID, &engine.url()]);

    engine.stop();
    wait_for("the agent to notice", DEADLINE, || {
        let r = d.ctl(&["--json", "fleet"]);
        if r.stdout.contains("\"connected\"") {
            Err(r.stdout)
        } else {
            Ok(())
        }
    });
    engine.restart();
    wait_for("a second connection", DEADLINE, || {
        if engine.connects().len() >= 2 {
            Ok(())
        } else {
            Err(format!("{}", engine.connects().len()))
        }
    });
    d.ctl(&["fleet"]).code(0).stdout_has(&["connected"]);
}

#[test]
fn a_wrong_key_is_logged_and_retried_with_backoff_without_hammering() {
    let engine = Engine::start("the-right-key");
    let d = agent(&engine, Some("a-wrong-key"), "").launch();
    let t0 = Instant::now();
    wait_for("a few refusals", DEADLINE, || {
        if engine.refused() >= 3 {
            Ok(())
        } else {
            Err(engine.refused().to_string())
        }
    });
    // Backoff from 100 ms doubling (full jitter): nowhere near one attempt per millisecond.
    std::thread::sleep(Duration::from_secs(2));
    let attempts = engine.refused();
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(
        f64::from(attempts) / elapsed < 10.0,
        "{attempts} attempts in {elapsed:.1}s"
    );
    let fleet = d.ctl(&["fleet"]);
    fleet.code(0).stdout_has(&["401"]);
    assert!(d.stderr().contains("401"));
    assert!(
        !d.stderr().contains("a-wrong-key"),
        "the key must never be logged"
    );
}

#[test]
fn sites_run_through_argv_templates_and_hostile_domains_run_nothing() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "").launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    engine.send(r#"{"type":"create_site","id":"op-1","domain":"Shop.Example.com","options":{"cache":true}}"#);
    let done = engine.wait_frame("create completed", |v| {
        ty(v, "site_operation") && v["id"] == "op-1" && v["status"] == "completed"
    });
    assert_eq!(done["domain"], "shop.example.com");
    assert!(done["output"]
        .as_str()
        .unwrap()
        .contains("made shop.example.com"));
    engine.wait_frame("create starting", |v| {
        v["id"] == "op-1" && v["status"] == "starting"
    });
    let argv = fs::read_to_string(d.dir.path().join("argv.log")).unwrap();
    assert_eq!(argv, "create\nshop.example.com\n--type=wp\n");

    for (i, hostile) in [
        "a.com; touch /tmp/x",
        "-rf",
        "../x",
        "",
        &"a".repeat(300),
        "$(reboot).com",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("bad-{i}");
        let frame =
            serde_json::json!({"type": "create_site", "id": id, "domain": hostile}).to_string();
        engine.send(&frame);
        // Refused before anything runs: an error reply naming the field.
        let r = engine.wait_frame("a refusal", |v| v["id"] == id.as_str());
        assert_eq!(r["type"], "error", "{r}");
        assert!(r["error"].as_str().unwrap().contains("domain"), "{r}");
    }
    assert_eq!(
        fs::read_to_string(d.dir.path().join("argv.log")).unwrap(),
        argv,
        "nothing ran for hostile domains"
    );
    engine.send(r#"{"type":"delete_site","id":"op-2","domain":"shop.example.com"}"#);
    engine.wait_frame("delete completed", |v| {
        v["id"] == "op-2" && v["status"] == "completed"
    });
    assert!(fs::read_to_string(d.dir.path().join("argv.log"))
        .unwrap()
        .ends_with("delete\nshop.example.com\n--yes\n"));
}

#[test]
fn one_operation_per_domain_at_a_time() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "").launch();
    // A slow recorder: the first operation is still running when the second arrives.
    fs::write(
        d.dir.path().join("record.sh"),
        "#!/bin/sh\nprintf '%s\\n' \"$@\" >> \"$(dirname \"$0\")/argv.log\"\nsleep 1\necho done\n",
    )
    .unwrap();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    engine.send(r#"{"type":"create_site","id":"first","domain":"busy.example.com"}"#);
    engine.wait_frame("first starting", |v| {
        v["id"] == "first" && v["status"] == "starting"
    });
    engine.send(r#"{"type":"create_site","id":"second","domain":"busy.example.com"}"#);
    let second = engine.wait_frame("second refused", |v| v["id"] == "second");
    assert_eq!(second["status"], "failed");
    assert!(
        second["error"]
            .as_str()
            .unwrap()
            .contains("already running"),
        "{second}"
    );
    engine.wait_frame("first completed", |v| {
        v["id"] == "first" && v["status"] == "completed"
    });
    assert_eq!(
        fs::read_to_string(d.dir.path().join("argv.log"))
            .unwrap()
            .matches("busy.example.com")
            .count(),
        1
    );
}

#[test]
fn malformed_unknown_and_incomplete_messages_get_error_replies_and_the_link_stays_up() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "").launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    engine.send("this is not json");
    engine.send(r#"{"type":"launch_missiles","id":"u-1"}"#);
    engine.send(r#"{"type":"create_site","id":"m-1"}"#);
    engine.wait_frame("malformed reply", |v| ty(v, "error") && v["id"].is_null());
    let unknown = engine.wait_frame("unknown-type reply", |v| ty(v, "error") && v["id"] == "u-1");
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("launch_missiles"),
        "{unknown}"
    );
    let missing = engine.wait_frame("missing-field reply", |v| {
        ty(v, "error") && v["id"] == "m-1"
    });
    assert!(
        missing["error"].as_str().unwrap().contains("domain"),
        "{missing}"
    );
    // Same connection, still working.
    engine.send(r#"{"type":"app_control","id":"a-1","app":"api","action":"restart"}"#);
    engine.wait_frame("restart done", |v| {
        ty(v, "app_operation") && v["id"] == "a-1" && v["status"] == "completed"
    });
    assert_eq!(engine.connects().len(), 1);
    d.ctl(&["ping"]).code(0);
}

#[test]
fn commit_ids_are_validated_and_an_update_needs_a_repo() {
    let engine = Engine::start(KEY);
    let _d = agent(&engine, Some(KEY), "").launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    for (id, commit) in [("r-1", "HEAD~1"), ("r-2", "--upload-pack=x")] {
        engine.send(
            &serde_json::json!({"type": "rollback_agent", "id": id, "commitId": commit})
                .to_string(),
        );
        let r = engine.wait_frame("rollback refused", |v| v["id"] == id);
        assert_eq!(r["type"], "error", "{r}");
        assert!(r["error"].as_str().unwrap().contains("commitId"), "{r}");
    }
    // Without [fleet.update] there is nothing to update from: said, nothing runs.
    engine.send(r#"{"type":"update_agent","id":"up-1"}"#);
    let up = engine.wait_frame("update refused", |v| v["id"] == "up-1");
    assert_eq!(
        (up["type"].as_str(), up["status"].as_str()),
        (Some("update_operation"), Some("failed"))
    );
    assert!(
        up["error"].as_str().unwrap().contains("[fleet.update]"),
        "{up}"
    );
}

#[test]
fn key_rotation_is_written_0600_acknowledged_and_used_on_reconnect() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "").launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    engine.send(r#"{"type":"rotate_key","id":"rk-0","newKey":"  "}"#);
    let empty = engine.wait_frame("empty key refused", |v| v["id"] == "rk-0");
    assert_eq!(empty["type"], "error", "{empty}");
    assert!(
        empty["error"].as_str().unwrap().contains("newKey"),
        "{empty}"
    );
    // Two-phase: the engine accepts both keys until the agent acknowledges.
    engine.accept_keys(&[KEY, "k-new-key"]);
    engine.send(r#"{"type":"rotate_key","id":"rk-1","newKey":"k-new-key"}"#);
    let ack = engine.wait_frame("rotation acknowledged", |v| {
        ty(v, "key_rotation") && v["id"] == "rk-1"
    });
    assert_eq!(ack["status"], "completed");
    let key_file = d.dir.path().join("agent.key");
    assert_eq!(fs::read_to_string(&key_file).unwrap(), "k-new-key");
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    engine.accept_keys(&["k-new-key"]);
    wait_for("a reconnect with the new key", DEADLINE, || {
        let c = engine.connects();
        if c.last().is_some_and(|h| h["x-agent-key"] == "k-new-key") {
            Ok(())
        } else {
            Err(format!("{}", c.len()))
        }
    });
}

#[test]
fn reports_made_while_disconnected_are_delivered_after_reconnect_even_across_a_restart() {
    let mut engine = Engine::start(KEY);
    let mut d = agent(&engine, Some(KEY), "").launch();
    fs::write(
        d.dir.path().join("record.sh"),
        "#!/bin/sh\nsleep 1\necho finished $2\n",
    )
    .unwrap();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    engine.send(r#"{"type":"create_site","id":"q-1","domain":"late.example.com"}"#);
    engine.wait_frame("starting", |v| {
        v["id"] == "q-1" && v["status"] == "starting"
    });
    engine.stop();
    // The operation completes while the engine is away; the report is queued and persisted.
    wait_for("a queued report", DEADLINE, || {
        let r = d.ctl(&["--json", "fleet"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
        if v["queued_reports"].as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(r.stdout)
        }
    });
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    engine.restart();
    d.spawn();
    d.wait_ready();
    let done = engine.wait_frame("the queued report", |v| {
        v["id"] == "q-1" && v["status"] == "completed"
    });
    assert!(done["output"]
        .as_str()
        .unwrap()
        .contains("finished late.example.com"));
}

#[test]
fn enrolment_exchanges_the_token_once_for_a_key_written_0600() {
    let engine = Engine::start("unused");
    engine.add_token("tok-single-use-123", "k-from-enrolment");
    let d = agent(&engine, None, "enroll_token = \"tok-single-use-123\"").launch();
    wait_for("a connection with the enrolled key", DEADLINE, || {
        let c = engine.connects();
        if c.iter().any(|h| h["x-agent-key"] == "k-from-enrolment") {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    let key_file = d.dir.path().join("agent.key");
    assert_eq!(fs::read_to_string(&key_file).unwrap(), "k-from-enrolment");
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !d.stderr().contains("tok-single-use-123"),
        "the token must never be logged"
    );
}

#[test]
fn enrolment_over_https_trusts_the_ca_file() {
    let server = HttpsServer::start(|req, _| {
        let (status, body) = match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/agent/enroll") => ("200 OK", r#"{"key":"k-over-tls"}"#),
            _ => ("404 Not Found", r#"{"error":"no such route"}"#),
        };
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    let engine_url = server.url("agent").replace("https://", "wss://");
    let d = Daemon::prepare(
        &format!(
            "[fleet]\nengine_url = \"{engine_url}\"\nagent_id = \"{AGENT_ID}\"\n\
             key_file = \"agent.key\"\nenroll_token = \"tok-tls\"\nca_file = \"ca.pem\"\n\
             reconnect_delay = \"100ms\"\n"
        ),
        &[],
    );
    fs::write(d.dir.path().join("ca.pem"), server.pem()).unwrap();
    let d = d.launch();
    let key_file = d.dir.path().join("agent.key");
    wait_for(
        "the key from an https enrolment",
        DEADLINE,
        || match fs::read_to_string(&key_file) {
            Ok(key) if key == "k-over-tls" => Ok(()),
            other => Err(format!("{other:?}; requests {:?}", server.requests())),
        },
    );
    assert_eq!(server.requests()[0], "POST /agent/enroll");
}

#[test]
fn an_engine_url_that_does_not_resolve_is_reported_and_citrusd_carries_on() {
    let d = Daemon::start(
        "[apps.api]\ncommand = [\"sleep\", \"1000\"]\n[fleet]\nengine_url = \"ws://engine.invalid/agent\"\nagent_id = \"a1\"\nkey_file = \"agent.key\"\nreconnect_delay = \"100ms\"\n",
    );
    fs::write(d.dir.path().join("agent.key"), KEY).unwrap();
    wait_for("a connection error", DEADLINE, || {
        let r = d.ctl(&["fleet"]);
        if r.stdout.contains("engine.invalid") && r.stdout.contains("cannot connect") {
            Ok(())
        } else {
            Err(r.stdout)
        }
    });
    d.wait_state("api", AppState::Online);
}

#[test]
fn events_are_forwarded_to_the_engine() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "").launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    d.ctl(&["start", "--name", "crashy", "--", "false"]).code(0);
    let event = engine.wait_frame("an errored event", |v| {
        ty(v, "event") && v["kind"] == "errored"
    });
    assert_eq!(event["app"], "crashy");
    assert!(
        event["message"].as_str().unwrap().contains("cannot start")
            || event["message"].as_str().unwrap().contains("max_restarts")
    );
}

#[test]
fn wss_with_a_ca_file() {
    let engine = Engine::start_tls(KEY);
    let d = agent(&engine, Some(KEY), "ca_file = \"engine-ca.pem\"");
    std::fs::write(d.dir.path().join("engine-ca.pem"), engine.cert_pem()).unwrap();
    let d = d.launch();
    let hello = engine.wait_frame("agent_connected over TLS", |v| ty(v, "agent_connected"));
    assert_eq!(hello["agentId"], AGENT_ID);
    d.ctl(&["fleet"])
        .code(0)
        .stdout_has(&["connected", "wss://localhost"]);
}

#[test]
fn wss_refuses_an_engine_it_cannot_verify() {
    let engine = Engine::start_tls(KEY);
    let d = agent(&engine, Some(KEY), "").launch();
    wait_for("a certificate error", DEADLINE, || {
        let r = d.ctl(&["fleet"]);
        if r.stdout.to_lowercase().contains("certificate") {
            Ok(())
        } else {
            Err(r.stdout)
        }
    });
    assert!(engine.connects().is_empty());
}

/// A bare remote with commit A checked out at `checkout`, and commit B pushed after it.
/// Returns (A, B).
pub(crate) fn repos(root: &std::path::Path) -> (String, String) {
    git(root, &["init", "--bare", "-b", "main", "remote.git"]);
    git(root, &["clone", "-q", "remote.git", "checkout"]);
    let checkout = root.join("checkout");
    fs::write(checkout.join("VERSION"), "a\n").unwrap();
    git(&checkout, &["add", "VERSION"]);
    git(&checkout, &["commit", "-q", "-m", "A"]);
    git(&checkout, &["push", "-q", "origin", "main"]);
    let a = git(&checkout, &["rev-parse", "HEAD"]);
    git(root, &["clone", "-q", "remote.git", "other"]);
    let other = root.join("other");
    fs::write(other.join("VERSION"), "b\n").unwrap();
    git(&other, &["commit", "-q", "-am", "B"]);
    git(&other, &["push", "-q", "origin", "main"]);
    let b = git(&other, &["rev-parse", "HEAD"]);
    (a, b)
}

pub(crate) fn with_update(d: &Daemon, extra: &str) {
    let mut text = fs::read_to_string(&d.config).unwrap();
    text.push_str(&format!(
        "[fleet.update]\nrepo = \"checkout\"\n{extra}\n[apps.tick]\ncommand = [\"sh\", \"-c\", \"while :; do echo tick; sleep 0.05; done\"]\n"
    ));
    fs::write(&d.config, text).unwrap();
}

#[test]
fn update_and_rollback_move_the_checkout_and_reexec_citrusd_keeping_the_apps() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "");
    let (a, b) = repos(d.dir.path());
    with_update(&d, "");
    let d = d.launch();
    let citrusd = d.pid();
    let api = d.wait_state("api", AppState::Online)[0].pid.unwrap();
    let tick = d.wait_state("tick", AppState::Online)[0].pid.unwrap();
    let hello = engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    assert_eq!(hello["gitVersion"], a[..12]);

    engine.send(r#"{"type":"update_agent","id":"up-1"}"#);
    engine.wait_frame("update starting", |v| {
        v["id"] == "up-1" && v["status"] == "starting"
    });
    let done = engine.wait_frame("update confirmed by the new process", |v| {
        ty(v, "update_operation") && v["id"] == "up-1" && v["status"] != "starting"
    });
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["gitVersion"], b[..12]);
    assert_eq!(
        git(&d.dir.path().join("checkout"), &["rev-parse", "HEAD"]),
        b
    );
    assert!(
        engine.connects().len() >= 2,
        "the re-executed citrusd reconnects"
    );
    // Same citrusd process (exec keeps the pid), same app processes.
    assert_eq!(d.pid(), citrusd);
    assert!(d.stderr().contains("re-executing citrusd"));
    d.ctl(&["ping"]).code(0);
    assert_eq!(d.app("api")[0].pid.unwrap(), api);
    assert_eq!(d.app("tick")[0].pid.unwrap(), tick);
    // The app's output still reaches its log through the handed-over pipe.
    let before = d.log("tick-out.log").len();
    wait_for("more ticks after the re-exec", DEADLINE, || {
        let n = d.log("tick-out.log").len();
        if n > before + 20 {
            Ok(())
        } else {
            Err(format!("{n} bytes"))
        }
    });

    let frame = serde_json::json!({"type": "rollback_agent", "id": "rb-1", "commitId": &a[..10]})
        .to_string();
    engine.send(&frame);
    let rolled = engine.wait_frame("rollback confirmed", |v| {
        ty(v, "rollback_operation") && v["id"] == "rb-1" && v["status"] != "starting"
    });
    assert_eq!(rolled["status"], "completed", "{rolled}");
    assert_eq!(rolled["gitVersion"], a[..12]);
    assert_eq!(
        git(&d.dir.path().join("checkout"), &["rev-parse", "HEAD"]),
        a
    );
    assert_eq!(d.app("api")[0].pid.unwrap(), api);
    assert_eq!(d.pid(), citrusd);
}

#[test]
fn a_failed_fetch_is_reported_from_git2_and_nothing_moves() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "");
    let (a, _) = repos(d.dir.path());
    with_update(&d, "remote = \"nosuch\"");
    let d = d.launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    engine.send(r#"{"type":"update_agent","id":"up-x"}"#);
    let failed = engine.wait_frame("update failed", |v| {
        v["id"] == "up-x" && v["status"] == "failed"
    });
    assert!(
        failed["error"].as_str().unwrap().contains("nosuch"),
        "{failed}"
    );
    assert_eq!(
        git(&d.dir.path().join("checkout"), &["rev-parse", "HEAD"]),
        a
    );
    assert_eq!(engine.connects().len(), 1, "no re-exec");
}

#[test]
fn an_update_that_does_not_reach_the_engine_goes_back_on_its_own() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "");
    let (a, _) = repos(d.dir.path());
    with_update(&d, "confirm_timeout = \"1s\"");
    let d = d.launch();
    let api = d.wait_state("api", AppState::Online)[0].pid.unwrap();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    // The new version will not get in: the engine refuses every key from now on.
    engine.accept_keys(&[]);
    engine.send(r#"{"type":"update_agent","id":"up-2"}"#);
    wait_for("the checkout back at A", DEADLINE, || {
        let head = git(&d.dir.path().join("checkout"), &["rev-parse", "HEAD"]);
        if head == a && d.stderr().contains("did not reach the engine") {
            Ok(())
        } else {
            Err(head)
        }
    });
    engine.accept_keys(&[KEY]);
    let failed = engine.wait_frame("the update reported failed", |v| {
        ty(v, "update_operation") && v["id"] == "up-2" && v["status"] == "failed"
    });
    assert!(
        failed["error"].as_str().unwrap().contains("went back"),
        "{failed}"
    );
    assert_eq!(
        d.app("api")[0].pid.unwrap(),
        api,
        "the apps kept running through both re-execs"
    );
}

#[test]
fn sigterm_closes_the_engine_connection_politely() {
    let engine = Engine::start(KEY);
    let mut d = agent(&engine, Some(KEY), "").launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let close = engine.wait_frame("a Close frame", |v| ty(v, "(close)"));
    assert_eq!(close["code"], 1001, "going away");
    assert_eq!(d.wait_exit(), 0);
}

#[test]
fn an_unconfirmed_update_survives_a_crash_of_the_new_version_and_still_goes_back() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "");
    let (a, b) = repos(d.dir.path());
    with_update(&d, "confirm_timeout = \"2s\"");
    let mut d = d.launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    engine.accept_keys(&[]);
    engine.send(r#"{"type":"update_agent","id":"up-3"}"#);
    let checkout = d.dir.path().join("checkout");
    wait_head(&d, &checkout, &b, "the checkout at B");
    // The new version dies before it could confirm; it is started again (as systemd would).
    d.kill9();
    d.spawn();
    d.wait_ready();
    wait_head(&d, &checkout, &a, "the checkout back at A");
    engine.accept_keys(&[KEY]);
    let failed = engine.wait_frame("the update reported failed", |v| {
        ty(v, "update_operation") && v["id"] == "up-3" && v["status"] == "failed"
    });
    assert!(
        failed["error"].as_str().unwrap().contains("went back"),
        "{failed}"
    );
    let record = d.dir.path().join("state/fleet-update.json");
    wait_for("the update record cleared", DEADLINE, || {
        if record.exists() {
            Err(format!(
                "{}\n{}",
                fs::read_to_string(&record).unwrap_or_default(),
                d.stderr()
            ))
        } else {
            Ok(())
        }
    });
}

/// A citrusd killed inside the update's hard reset (git2 moved HEAD, the index still under its
/// lock) leaves `.git/index.lock`, which git never takes back: the restarted citrusd removes that
/// lock (older than itself) and still goes back, instead of failing to reset for good.
#[test]
fn a_crash_that_left_the_index_locked_still_goes_back() {
    let engine = Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "");
    let (a, b) = repos(d.dir.path());
    with_update(&d, "confirm_timeout = \"8s\"");
    let mut d = d.launch();
    engine.wait_frame("agent_connected", |v| ty(v, "agent_connected"));
    engine.accept_keys(&[]);
    engine.send(r#"{"type":"update_agent","id":"up-4"}"#);
    wait_for("the re-exec for the update", DEADLINE, || {
        if d.stderr().contains("re-executing citrusd") {
            Ok(())
        } else {
            Err(d.stderr())
        }
    });
    let checkout = d.dir.path().join("checkout");
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), b);
    // What a kill between git2's move of HEAD and its write of the index leaves behind.
    fs::write(checkout.join(".git/index.lock"), "").unwrap();
    d.kill9();
    d.spawn();
    d.wait_ready();
    wait_head(&d, &checkout, &a, "the checkout back at A");
    assert!(
        d.stderr().contains("removing an index lock"),
        "{}",
        d.stderr()
    );
    // HEAD moves before git2 writes the index (under a lock of its own): wait for that too.
    wait_for("the reset to finish", DEADLINE, || {
        if checkout.join(".git/index.lock").exists() {
            Err("index.lock still there".into())
        } else {
            Ok(())
        }
    });
    assert_eq!(git(&checkout, &["status", "--porcelain"]), "");
}
