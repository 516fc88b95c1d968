//! One validation path and all-or-nothing commands (issue 10, classes 3 and 4): every source of
//! an app definition is checked alike, an invalid `state.json` entry is set aside while the rest
//! runs, and a command whose state write fails changes nothing.

use std::fs;
use std::path::{Path, PathBuf};

use citrus::control::AppState;

use crate::config_errors::refused;
use crate::support::{wait_for, Daemon, Tmpfs, DEADLINE};

const API: &str = "[apps.api]\ncommand = [\"sleep\", \"1000\"]\n";

#[test]
fn invalid_state_entries_are_set_aside_and_the_rest_runs() {
    let mut d = Daemon::prepare(API, &[]);
    let state_dir = d.dir.path().join("state");
    fs::create_dir_all(&state_dir).unwrap();
    let state = serde_json::json!({
        "version": 1,
        "apps": {
            "good": {"desired": "running", "runtime": {"command": ["sleep", "1001"], "instances": 1}},
            "empty": {"desired": "running", "runtime": {"command": [], "instances": 1}},
            "../outside": {"desired": "running", "runtime": {"command": ["sleep", "1002"], "instances": 1}},
            "nul": {"desired": "running", "runtime": {"command": ["sleep", "10\u{0}03"], "instances": 1}},
            "many": {"desired": "running", "runtime": {"command": ["sleep", "1004"], "instances": 4000000000u32}},
            "typed": {"desired": "running", "runtime": {"command": "sleep", "instances": 1}},
        }
    });
    fs::write(state_dir.join("state.json"), state.to_string()).unwrap();
    d = d.launch();
    d.wait_state("api", AppState::Online);
    d.wait_state("good", AppState::Online);
    let names: Vec<String> = d.status().apps.into_iter().map(|a| a.name).collect();
    for bad in ["empty", "../outside", "nul", "many", "typed"] {
        assert!(!names.iter().any(|n| n == bad), "{bad} runs: {names:?}");
    }
    let err = d.stderr();
    for needle in [
        "\"empty\"",
        "command is empty",
        "\"../outside\"",
        "invalid app name",
        "\"nul\"",
        "NUL",
        "\"many\"",
        "from 1 to 256",
        "\"typed\"",
        "state.json.set-aside",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
    // Nothing was written outside log_dir for the traversing name.
    assert!(!d.dir.path().join("outside-0-out.log").exists());
    let stray: Vec<PathBuf> = fs::read_dir(d.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    // The entries are kept, not lost: set aside in a file beside state.json ...
    let aside: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(state_dir.join("state.json.set-aside")).unwrap())
            .unwrap();
    for bad in ["empty", "../outside", "nul", "many", "typed"] {
        assert!(aside["apps"].get(bad).is_some(), "{bad} not kept: {aside}");
        assert!(aside["apps"][bad]["reason"].is_string(), "{aside}");
    }
    // ... and the state file now holds only valid entries.
    let now: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(state_dir.join("state.json")).unwrap()).unwrap();
    assert!(now["apps"].get("good").is_some(), "{now}");
    assert!(now["apps"].get("empty").is_none(), "{now}");
}

#[test]
fn a_huge_instance_count_is_refused_at_once() {
    let d = Daemon::start(API);
    let r = d.ctl(&[
        "start",
        "--name",
        "x",
        "--instances",
        "4000000000",
        "--",
        "sleep",
        "1000",
    ]);
    r.code(2)
        .stderr_has(&["instances", "4000000000", "from 1 to 256"]);
    d.ctl(&[
        "start",
        "--name",
        "x",
        "--instances",
        "0",
        "--",
        "sleep",
        "1",
    ])
    .code(2)
    .stderr_has(&["from 1 to 256"]);
    // Same rules, same words, as the config file.
    let err = refused("[apps.api]\ncommand = [\"true\"]\ninstances = 4000000000\n");
    assert!(err.contains("apps.api.instances"), "{err}");
    assert!(err.contains("from 1 to 256"), "{err}");
    assert!(!d.status().apps.iter().any(|a| a.name == "x"));
    // A NUL in an argument or a traversing name is refused by the API as by the config.
    let (code, body) = post_apps(&d.socket, r#"{"name":"y","command":["sleep","1\u0000"]}"#);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("NUL") && body.contains("bad_request"),
        "{body}"
    );
    let (code, body) = post_apps(&d.socket, r#"{"name":"../y","command":["sleep","1"]}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid app name"), "{body}");
    assert!(!d.status().apps.iter().any(|a| a.name.contains('y')));
}

/// `POST /v1/apps` with `body` on the control socket: (status, response body).
fn post_apps(socket: &Path, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let req = format!(
        "POST /v1/apps HTTP/1.1\r\nhost: citrusd\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, reply)
}

#[test]
fn env_keys_are_checked_in_the_config() {
    let err = refused("[apps.api]\ncommand = [\"true\"]\nenv = { \"A=B\" = \"1\" }\n");
    assert!(err.contains("apps.api.env"), "{err}");
    assert!(err.contains("`=`"), "{err}");
    let err = refused("[apps.api]\ncommand = [\"true\"]\nenv = { \"\" = \"1\" }\n");
    assert!(err.contains("empty"), "{err}");
    let err = refused("[apps.api]\ncommand = [\"true\"]\nenv = { \"A\\u0000\" = \"1\" }\n");
    assert!(err.contains("NUL"), "{err}");
    let err = refused("[apps.api]\ncommand = [\"true\"]\nenv_production = { A = \"x\\u0000y\" }\n");
    assert!(err.contains("NUL"), "{err}");
    let err = refused("[apps.api]\ncommand = [\"true\", \"a\\u0000b\"]\n");
    assert!(
        err.contains("apps.api.command") && err.contains("NUL"),
        "{err}"
    );
    // reload-config reads the file through the same path: refused, the running config stays.
    let d = Daemon::start(API);
    d.wait_state("api", AppState::Online);
    fs::write(
        &d.config,
        crate::support::with_daemon_table(&format!("{API}env = {{ \"A=B\" = \"1\" }}\n")),
    )
    .unwrap();
    d.ctl(&["reload-config"])
        .code(2)
        .stderr_has(&["apps.api.env", "`=`"]);
    d.wait_state("api", AppState::Online);
}

#[test]
fn commands_whose_state_write_fails_change_nothing() {
    let d = Daemon::prepare(API, &[]);
    let Some(disk) = Tmpfs::mount(&d.dir.path().join("state"), "1m") else {
        return;
    };
    let mut d = d.launch();
    // Declared after the daemon: unmounted before its temp dir is removed.
    let disk = disk;
    d.ctl(&["start", "--name", "adhoc", "--", "sleep", "1001"])
        .code(0);
    let api = d.wait_state("api", AppState::Online)[0].pid;
    let adhoc = d.wait_state("adhoc", AppState::Online)[0].pid;
    let state_file = d.dir.path().join("state/state.json");
    let before = fs::read_to_string(&state_file).unwrap();
    disk.fill();

    d.ctl(&["stop", "api"])
        .code(1)
        .stderr_has(&["state.json", "No space left", "not stopped"]);
    d.ctl(&["stop", "all"])
        .code(1)
        .stderr_has(&["no app was stopped", "nothing was changed"]);
    d.ctl(&["delete", "adhoc"])
        .code(1)
        .stderr_has(&["state.json", "No space left", "not deleted"]);
    d.ctl(&["start", "--name", "fresh", "--", "sleep", "1002"])
        .code(1)
        .stderr_has(&["state.json", "No space left", "not added"]);
    // Exactly as before: the same processes, no phantom app.
    let status = d.status();
    let row = |name: &str| status.apps.iter().find(|a| a.name == name).cloned();
    assert_eq!(
        row("api").map(|a| (a.state, a.pid)),
        Some((AppState::Online, api))
    );
    assert_eq!(
        row("adhoc").map(|a| (a.state, a.pid)),
        Some((AppState::Online, adhoc))
    );
    assert!(row("fresh").is_none(), "{status:?}");
    assert!(d.marked(Some("fresh")).is_empty());
    assert_eq!(fs::read_to_string(&state_file).unwrap(), before);

    // With room again, a graceful restart brings back exactly the old state.
    disk.free();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    assert_eq!(fs::read_to_string(&state_file).unwrap(), before);
    d.spawn();
    d.wait_ready();
    d.wait_state("api", AppState::Online);
    d.wait_state("adhoc", AppState::Online);
    assert!(!d.status().apps.iter().any(|a| a.name == "fresh"));
    // And the refused add left nothing that blocks a retry.
    d.ctl(&["start", "--name", "fresh", "--", "sleep", "1002"])
        .code(0);
    wait_for("fresh online", DEADLINE, || {
        let rows = d.app("fresh");
        match rows.iter().all(|r| r.state == AppState::Online) && !rows.is_empty() {
            true => Ok(()),
            false => Err(format!("{rows:?}")),
        }
    });
}
