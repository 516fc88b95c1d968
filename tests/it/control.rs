//! The control socket and citrusctl: exit codes, messages, socket rules, run-time apps.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};

use citrus::control::{AppState, Status};

use crate::support::{ctl_at, Daemon, CITRUSCTL, CITRUSD};

const SLEEPER: &str =
    "[apps.api]\ncommand = [\"sleep\", \"1000\"]\n[apps.worker]\ncommand = [\"sleep\", \"1000\"]\n";

#[test]
fn unknown_app_exit_1_names_it_and_lists_known_apps() {
    let d = Daemon::start(SLEEPER);
    d.ctl(&["restart", "nosuch"])
        .code(1)
        .stderr_has(&["nosuch", "api", "worker"]);
    d.ctl(&["logs", "nosuch"]).code(1).stderr_has(&["nosuch"]);
    d.ctl(&["describe", "../etc"]).code(1);
}

#[test]
fn bad_flag_and_missing_arguments_exit_2() {
    let out = Command::new(CITRUSCTL)
        .args(["status", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(CITRUSCTL).args(["restart"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(CITRUSD).args(["--nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    // Usage errors are caught before contacting the daemon.
    ctl_at(&sock, &["start"]).code(2);
    ctl_at(&sock, &["start", "--name", "x"])
        .code(2)
        .stderr_has(&["--"]);
}

#[test]
fn daemon_not_running_exit_3_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-home.sock");
    ctl_at(&sock, &["status"])
        .code(3)
        .stderr_has(&["nobody-home.sock", "not reachable"]);
    // The default-path rule: CITRUS_SOCKET is honoured without a flag.
    let out = Command::new(CITRUSCTL)
        .arg("ping")
        .env("CITRUS_SOCKET", &sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody-home.sock"));
}

#[test]
fn socket_is_0600_second_daemon_refused_stale_socket_replaced() {
    let mut d = Daemon::start(SLEEPER);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A second daemon on the same socket refuses and leaves the first alone.
    let out = Command::new(CITRUSD)
        .arg("--config")
        .arg(&d.config)
        .arg("--socket")
        .arg(&d.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{out:?}"
    );
    d.ctl(&["ping"]).code(0);

    // A second daemon with another socket but the same state dir is refused too.
    let out = Command::new(CITRUSD)
        .arg("--config")
        .arg(&d.config)
        .arg("--socket")
        .arg(d.dir.path().join("other.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("state directory"),
        "{out:?}"
    );

    // After a crash the socket file stays behind; the next start replaces it.
    d.kill9();
    assert!(d.socket.exists());
    d.spawn();
    d.wait_ready();
    d.wait_state("api", AppState::Online);
}

#[test]
fn status_json_has_every_field_and_the_table_reads_well() {
    let d = Daemon::start(SLEEPER);
    d.wait_state("api", AppState::Online);
    let raw = d.ctl(&["--json", "status"]);
    raw.code(0);
    let v: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
    for key in ["pid", "version", "uptime_ms"] {
        assert!(v["daemon"].get(key).is_some(), "daemon.{key} missing: {v}");
    }
    let app = &v["apps"][0];
    for key in [
        "name",
        "instance",
        "pid",
        "state",
        "restarts",
        "unstable_restarts",
        "memory_restarts",
        "uptime_ms",
        "memory_bytes",
        "cpu_percent",
        "last_exit",
    ] {
        assert!(app.get(key).is_some(), "apps[0].{key} missing: {v}");
    }
    let parsed: Status = serde_json::from_value(v.clone()).unwrap();
    assert!(parsed.apps[0].memory_bytes > 0);
    let table = d.ctl(&["status"]);
    table
        .code(0)
        .stdout_has(&["NAME", "STATE", "MEMORY", "api", "worker", "online"]);
    // One app only.
    let one: Status = serde_json::from_str(&d.ctl(&["--json", "status", "worker"]).stdout).unwrap();
    assert_eq!(one.apps.len(), 1);
    // ping shows the protocol version.
    d.ctl(&["ping"]).code(0).stdout_has(&["protocol 1"]);
}

#[test]
fn runtime_app_added_described_and_deleted() {
    let d = Daemon::start(SLEEPER);
    d.ctl(&[
        "start",
        "--name",
        "adhoc",
        "--instances",
        "2",
        "--",
        "sleep",
        "999",
    ])
    .code(0)
    .stdout_has(&["adhoc"]);
    let rows = d.wait_state("adhoc", AppState::Online);
    assert_eq!(rows.len(), 2);
    // Same name again: exit 1, clear reason.
    d.ctl(&["start", "--name", "adhoc", "--", "true"])
        .code(1)
        .stderr_has(&["already exists"]);
    // Bad name: exit 2.
    d.ctl(&["start", "--name", "../evil", "--", "true"]).code(2);
    d.ctl(&["describe", "adhoc"])
        .code(0)
        .stdout_has(&["runtime", "sleep", "adhoc-0-out.log"]);
    // Config apps cannot be deleted; run-time apps can.
    d.ctl(&["delete", "api"])
        .code(1)
        .stderr_has(&["reload-config"]);
    d.ctl(&["delete", "adhoc"]).code(0);
    assert!(d.app("adhoc").is_empty());
    assert!(d.marked(Some("adhoc")).is_empty());
}

#[test]
fn start_stop_restart_wait_until_done() {
    let d = Daemon::start(SLEEPER);
    let before = d.wait_state("api", AppState::Online)[0].pid;
    d.ctl(&["stop", "api"]).code(0).stdout_has(&["stopped"]);
    assert_eq!(d.app("api")[0].state, AppState::Stopped);
    assert!(d.marked(Some("api")).is_empty());
    d.ctl(&["start", "api"]).code(0).stdout_has(&["online"]);
    let r = d.ctl(&["restart", "api"]);
    r.code(0);
    let after = d.app("api")[0].pid;
    assert_ne!(before, after);
    d.ctl(&["restart", "all"]).code(0);
    d.ctl(&["reload", "worker"]).code(0);
    d.ctl(&["save"]).code(0);
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let d = Daemon::start(SLEEPER);
    d.wait_state("api", AppState::Online);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = rt
        .block_on(citrus::control::client::Client::new(&d.socket).get_raw("/metrics"))
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    for needle in [
        "citrus_app_state{app=\"api\",instance=\"0\",state=\"online\"} 1",
        "citrus_app_restarts_total{app=\"api\",instance=\"0\"} 0",
        "citrusd_resident_memory_bytes",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
}

#[test]
fn import_pm2_prints_a_config_citrusd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let eco = dir.path().join("ecosystem.json");
    std::fs::write(
        &eco,
        r#"{"apps":[{"name":"amexing-api","script":"./src/index.js","instances":1,"exec_mode":"fork",
 "env_production":{"NODE_ENV":"production","PORT":1338},"autorestart":true,"max_restarts":10,
 "min_uptime":"10s","max_memory_restart":"1G","watch":true}]}"#,
    )
    .unwrap();
    let run = ctl_at(
        &dir.path().join("unused.sock"),
        &["import-pm2", eco.to_str().unwrap()],
    );
    run.code(0).stdout_has(&[
        "[apps.amexing-api]",
        "max_memory_restart = \"1G\"",
        "min_uptime = \"10s\"",
    ]);
    run.stderr_has(&["watch"]);
    let toml = dir.path().join("citrusd.toml");
    std::fs::write(&toml, &run.stdout).unwrap();
    let config = citrus::config::Config::load(&toml, Some("production"))
        .expect("the converted config loads");
    let api = &config.apps["amexing-api"];
    assert_eq!(api.env["PORT"], "1338");
    assert_eq!(api.max_memory_restart, Some(1 << 30));

    let bad = dir.path().join("ecosystem.config.js");
    std::fs::write(&bad, "module.exports = { apps: [] }").unwrap();
    ctl_at(
        &dir.path().join("unused.sock"),
        &["import-pm2", bad.to_str().unwrap()],
    )
    .code(1)
    .stderr_has(&["JSON"]);
}
