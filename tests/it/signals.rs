//! Signals and config reload: SIGTERM stops everything in reverse order and exits 0; SIGHUP and
//! `reload-config` apply the new file; an invalid file keeps the running config.

use std::fs;

use citrus::control::AppState;
use nix::sys::signal::Signal;

use crate::support::{wait_for, with_daemon_table, Daemon, DEADLINE};

#[test]
fn sigterm_stops_every_app_in_reverse_order_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("journal");
    let app = |name: &str, after: &str| {
        format!(
            "[apps.{name}]\ncommand = [\"sh\", \"-c\", \"trap 'sleep 0.1; echo stop {name} >> {j}; exit 0' TERM; while :; do sleep 0.05; done\"]\nafter = [{after}]\n",
            j = j.display()
        )
    };
    let mut d = Daemon::start(&format!("{}{}", app("front", "\"back\""), app("back", "")));
    d.wait_state("front", AppState::Online);
    d.wait_state("back", AppState::Online);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    assert_eq!(fs::read_to_string(&j).unwrap(), "stop front\nstop back\n");
    assert!(d.marked(None).is_empty());
    assert!(!d.socket.exists(), "socket file removed at exit");
}

#[test]
fn reload_config_starts_new_stops_removed_restarts_changed_only() {
    let d = Daemon::start(
        "[apps.keep]\ncommand = [\"sleep\", \"1000\"]\n[apps.change]\ncommand = [\"sleep\", \"1000\"]\n[apps.drop]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    let keep = d.wait_state("keep", AppState::Online)[0].pid;
    let change = d.wait_state("change", AppState::Online)[0].pid;
    d.wait_state("drop", AppState::Online);
    fs::write(
        &d.config,
        with_daemon_table(
            "[apps.keep]\ncommand = [\"sleep\", \"1000\"]\n[apps.change]\ncommand = [\"sleep\", \"1001\"]\n[apps.new]\ncommand = [\"sleep\", \"1000\"]\n",
        ),
    )
    .unwrap();
    let plan = d.ctl(&["reload-config", "--dry-run"]);
    plan.code(0).stdout_has(&[
        "would start: new",
        "would stop: drop",
        "would restart: change",
    ]);
    assert!(d.app("new").is_empty(), "dry run applied nothing");

    d.signal(Signal::SIGHUP);
    d.wait_state("new", AppState::Online);
    wait_for("drop to be gone", DEADLINE, || {
        if d.app("drop").is_empty() {
            Ok(())
        } else {
            Err(String::new())
        }
    });
    let changed = d.wait_state("change", AppState::Online)[0].pid;
    assert_ne!(changed, change);
    assert_eq!(
        d.app("keep")[0].pid,
        keep,
        "an unchanged app must not restart"
    );
    assert!(d.marked(Some("drop")).is_empty());

    // An invalid file: the caller sees the error (exit 2), the running config stays.
    fs::write(
        &d.config,
        with_daemon_table("[apps.keep]\ncommand = [\"sleep\", \"1000\"]\nbogus = 1\n"),
    )
    .unwrap();
    d.ctl(&["reload-config"])
        .code(2)
        .stderr_has(&["bogus", "stays in force"]);
    d.signal(Signal::SIGHUP);
    d.ctl(&["ping"]).code(0);
    assert_eq!(d.app("new")[0].state, AppState::Online);
    assert_eq!(d.app("keep")[0].pid, keep);
}

#[test]
fn sigterm_while_apps_are_still_starting_is_a_graceful_shutdown() {
    let apps: String = (0..40)
        .map(|i| format!("[apps.s{i}]\ncommand = [\"sleep\", \"1000\"]\n"))
        .collect();
    let mut d = Daemon::prepare(&apps, &[]);
    d.spawn();
    // The handlers are installed before the socket is bound: signal as soon as it exists.
    wait_for("the socket", DEADLINE, || {
        if d.socket.exists() {
            Ok(())
        } else {
            Err(String::new())
        }
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.stderr());
    assert!(
        d.marked(None).is_empty(),
        "apps left running: {:?}",
        d.marked(None)
    );
}
