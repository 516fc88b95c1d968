//! Persisted state: crash of citrusd (kill -9) and a fresh start run every instance exactly once,
//! stopped apps stay stopped, run-time apps come back; a torn state file is survived.

use std::collections::HashMap;

use citrus::control::AppState;
use citrus::sys::procfs;

use crate::support::{wait_for, Daemon, DEADLINE};

/// Live processes of `app` by instance number.
fn by_instance(d: &Daemon, app: &str) -> HashMap<String, Vec<i32>> {
    let mut m: HashMap<String, Vec<i32>> = HashMap::new();
    for pid in d.marked(Some(app)) {
        let inst = procfs::environ(pid)
            .into_iter()
            .find_map(|e| {
                e.strip_prefix(b"CITRUS_INSTANCE=")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default();
        m.entry(inst).or_default().push(pid);
    }
    m
}

#[test]
fn kill_9_then_restart_runs_every_instance_exactly_once() {
    let mut d = Daemon::start(
        "[apps.web]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\n[apps.paused]\ncommand = [\"sleep\", \"1000\"]\n\
         [apps.polite]\ncommand = [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 0.05; done\"]\n",
    );
    d.wait_state("web", AppState::Online);
    d.ctl(&["stop", "paused"]).code(0);
    d.ctl(&["start", "--name", "adhoc", "--", "sleep", "1001"])
        .code(0);
    d.wait_state("adhoc", AppState::Online);
    let old: Vec<i32> = d.marked(None);
    let old_starts: Vec<(i32, u64)> = old
        .iter()
        .filter_map(|p| procfs::stat(*p))
        .map(|s| (s.pid, s.start_ticks))
        .collect();

    // The instances' main processes (polite's `sleep 0.05` children come and go on their own).
    let leaders: Vec<i32> = d
        .status()
        .apps
        .iter()
        .filter_map(|a| a.pid)
        .map(|p| p as i32)
        .collect();
    d.kill9();
    // The apps outlive the crash (nobody is stopping them) ...
    assert!(
        leaders.iter().all(|p| procfs::stat(*p).is_some()),
        "{leaders:?}"
    );
    d.spawn();
    d.wait_ready();
    d.wait_state("web", AppState::Online);
    d.wait_state("adhoc", AppState::Online);
    d.wait_state("polite", AppState::Online);
    assert_eq!(d.app("paused")[0].state, AppState::Stopped);
    // ... and after the restart, none of the old processes is left and each instance runs once.
    for (pid, start) in old_starts {
        let same = procfs::stat(pid).is_some_and(|s| s.start_ticks == start && s.state != 'Z');
        assert!(!same, "process {pid} of the previous run survived");
    }
    let web = by_instance(&d, "web");
    assert_eq!(web.len(), 2, "{web:?}");
    assert!(web.values().all(|p| p.len() == 1), "{web:?}");
    assert_eq!(d.marked(Some("adhoc")).len(), 1);
    assert!(d.marked(Some("paused")).is_empty());
    assert!(d.stderr().contains("previous citrusd"));
}

#[test]
fn a_truncated_state_file_is_kept_aside_and_the_config_runs() {
    let mut d = Daemon::start("[apps.api]\ncommand = [\"sleep\", \"1000\"]\n[apps.off]\ncommand = [\"sleep\", \"1000\"]\n");
    d.ctl(&["stop", "off"]).code(0);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    let state = d.dir.path().join("state/state.json");
    let text = std::fs::read(&state).unwrap();
    assert!(String::from_utf8_lossy(&text).contains("\"stopped\""));
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();

    d.spawn();
    d.wait_ready();
    d.wait_state("api", AppState::Online);
    // The persisted "stopped" was lost with the torn file: the config's autostart applies.
    d.wait_state("off", AppState::Online);
    let err = d.stderr();
    assert!(
        err.contains("could not be read") && err.contains("kept a copy"),
        "{err}"
    );
    let aside = std::fs::read_dir(d.dir.path().join("state"))
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .expect("a copy kept aside");
    assert_eq!(
        std::fs::read(aside.path()).unwrap(),
        &text[..text.len() / 2]
    );
    // And the new state file is whole again.
    wait_for("a valid state file", DEADLINE, || {
        let t = std::fs::read_to_string(&state).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&t)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}
