//! Partial failures (issue 10): state and log dirs that turn read-only under a running citrusd
//! (or are read-only from its start), a spawn with no descriptor left, and a `reload-config`
//! that cannot open a log file. Each refused change is refused whole, the apps keep running, and
//! everything works again once the fault is gone.

use std::fs;

use citrus::control::{AppState, AppStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{citrusd_once, wait_for, with_daemon_table, Daemon, Tmpfs, DEADLINE};

/// `(pid, state)` of every app, by name: what must not change when a command is refused.
fn snapshot(d: &Daemon) -> Vec<(String, Option<u32>, AppState)> {
    let rows = d.status().apps.into_iter();
    rows.map(|a: AppStatus| (a.name, a.pid, a.state)).collect()
}

/// The `out_log` of `describe --json APP` (instance 0): bytes written and dropped, last error.
#[track_caller]
fn out_log(d: &Daemon, app: &str) -> serde_json::Value {
    let desc = d.ctl(&["--json", "describe", app]);
    desc.code(0);
    let v: serde_json::Value = serde_json::from_str(&desc.stdout).unwrap();
    v["instances"][0]["out_log"].clone()
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

/// Waits until `app` is online with a pid other than `old`; returns the new pid.
#[track_caller]
fn wait_respawned(d: &Daemon, app: &str, old: u32) -> u32 {
    wait_for(&format!("{app} to be respawned"), DEADLINE, || {
        let row = d.app(app).remove(0);
        match (row.state, row.pid) {
            (AppState::Online, Some(pid)) if pid != old => Ok(pid),
            (AppState::Errored, _) => panic!("{app} errored: {row:?}"),
            _ => Err(format!("{row:?}")),
        }
    })
}

/// 1000-byte lines, 20 a second: a 4K log rotates five times a second.
const WRITER: &str = "[apps.chatty]\n\
    command = [\"sh\", \"-c\", \"while :; do printf '%01000d\\\\n' 0; sleep 0.05; done\"]\n\
    log_max_size = \"4K\"\nlog_keep = 2\n";
const SLEEPER: &str = "[apps.api]\ncommand = [\"sleep\", \"1001\"]\n";

#[test]
fn read_only_state_and_log_dirs_refuse_changes_whole_and_lose_nothing() {
    let d = Daemon::prepare(&format!("{SLEEPER}{WRITER}"), &[]);
    let Some(state) = Tmpfs::mount(&d.dir.path().join("state"), "4m") else {
        return;
    };
    let Some(logs) = Tmpfs::mount(&d.dir.path().join("logs"), "4m") else {
        return;
    };
    let d = d.launch();
    // Declared after the daemon: unmounted before its temp dir is removed.
    let (state, logs) = (state, logs);
    d.ctl(&["start", "--name", "adhoc", "--", "sleep", "1002"])
        .code(0);
    let api = d.wait_state("api", AppState::Online)[0].pid.unwrap();
    d.wait_state("adhoc", AppState::Online);
    let chatty = d.wait_state("chatty", AppState::Online)[0].pid.unwrap();
    let state_file = d.dir.path().join("state/state.json");
    let saved = fs::read_to_string(&state_file).unwrap();
    // The next reload would add `newcomer` and drop `api`.
    fs::write(
        &d.config,
        with_daemon_table(&format!(
            "{WRITER}[apps.newcomer]\ncommand = [\"sleep\", \"1003\"]\n"
        )),
    )
    .unwrap();

    let read_only = (state.read_only(), logs.read_only());
    let before = snapshot(&d);
    d.ctl(&["stop", "api"]).code(1).stderr_has(&[
        "api was not stopped",
        "state/state.json",
        "Read-only file system",
        "nothing was changed",
    ]);
    d.ctl(&["stop", "all"])
        .code(1)
        .stderr_has(&["no app was stopped", "Read-only file system"]);
    d.ctl(&["delete", "adhoc"]).code(1).stderr_has(&[
        "adhoc was not deleted",
        "state/state.json",
        "Read-only file system",
    ]);
    d.ctl(&["start", "--name", "late", "--", "sleep", "1004"])
        .code(1)
        .stderr_has(&[
            "late was not added",
            "logs/late-out.log",
            "Read-only file system",
        ]);
    d.ctl(&["reload-config"]).code(1).stderr_has(&[
        "the config was not reloaded",
        "logs/newcomer-out.log",
        "Read-only file system",
        "nothing was changed",
    ]);
    // What the user was told is what happened: nothing.
    assert_eq!(snapshot(&d), before);
    assert!(d.marked(Some("late")).is_empty() && d.marked(Some("newcomer")).is_empty());

    // Apps keep running: a crashed one is respawned (its log file is open already).
    sigkill(api);
    let api = wait_respawned(&d, "api", api);
    // The writer's log cannot be rotated: what is past log_max_size is dropped and counted.
    let stuck = wait_for("dropped output to be counted", DEADLINE, || {
        let out = out_log(&d, "chatty");
        let error = out["last_error"].as_str().unwrap_or_default();
        match out["bytes_dropped"].as_u64() {
            Some(n) if n > 0 && error.contains("Read-only file system") => Ok(out),
            _ => Err(out.to_string()),
        }
    });
    assert!(
        stuck["last_error"]
            .as_str()
            .unwrap()
            .contains("logs/chatty-out.log"),
        "{stuck}"
    );
    assert_eq!(d.app("chatty")[0].pid, Some(chatty));
    assert_eq!(fs::read_to_string(&state_file).unwrap(), saved);

    // The dirs writable again: the log rotates (bytes are written past one file), nothing of
    // the state was lost, and each refused command now works.
    drop(read_only);
    let written = stuck["bytes_written"].as_u64().unwrap();
    wait_for("the writer's log to rotate again", DEADLINE, || {
        let out = out_log(&d, "chatty");
        match out["bytes_written"].as_u64() {
            Some(n) if n > written + 3 * 4096 => Ok(()),
            _ => Err(out.to_string()),
        }
    });
    assert_eq!(fs::read_to_string(&state_file).unwrap(), saved);
    assert_eq!(d.app("api")[0].pid, Some(api));
    d.ctl(&["stop", "api"]).code(0);
    d.ctl(&["delete", "adhoc"]).code(0);
    d.ctl(&["start", "--name", "late", "--", "sleep", "1004"])
        .code(0);
    d.ctl(&["reload-config"]).code(0);
    d.wait_state("newcomer", AppState::Online);
    d.wait_state("late", AppState::Online);
    let names: Vec<String> = snapshot(&d).into_iter().map(|(n, ..)| n).collect();
    assert_eq!(names, ["chatty", "newcomer", "late"]);
    assert_eq!(d.app("chatty")[0].pid, Some(chatty), "never restarted");
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&state_file).unwrap()).unwrap();
    let persisted: Vec<&String> = state["apps"].as_object().unwrap().keys().collect();
    assert_eq!(persisted, ["chatty", "late", "newcomer"]);
}

#[test]
fn dirs_read_only_from_the_start_are_refused_in_one_line() {
    // citrusd holds no directory open across operations: state and log files are opened by
    // path, so a read-only mount is seen at once, at start as later. At start it refuses to run
    // without its lock file or its apps' logs, naming the file, once.
    let d = Daemon::prepare(SLEEPER, &[]);
    let Some(state) = Tmpfs::mount(&d.dir.path().join("state"), "1m") else {
        return;
    };
    let Some(logs) = Tmpfs::mount(&d.dir.path().join("logs"), "1m") else {
        return;
    };
    let read_only = state.read_only();
    let run = citrusd_once(d.dir.path(), &d.config);
    run.code(1)
        .stderr_has(&["cannot open", "state/citrusd.lock", "Read-only file system"]);
    assert_eq!(
        run.stderr.matches("Read-only file system").count(),
        1,
        "{run:?}"
    );
    drop(read_only);
    let read_only = logs.read_only();
    let run = citrusd_once(d.dir.path(), &d.config);
    run.code(1).stderr_has(&[
        "api: cannot open log file",
        "logs/api-out.log",
        "Read-only file system",
    ]);
    assert!(d.marked(Some("api")).is_empty(), "no app was started");
    drop(read_only);
}

/// Sets `pid`'s soft open-files limit (the hard one stays); returns the previous soft limit.
fn set_nofile(pid: i32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reads `old` and writes `old`, both valid for the call.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, `new` is valid for the call.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// Gives a process its open-files limit back when dropped (also when the test fails).
struct NofileBack(i32, u64);

impl Drop for NofileBack {
    fn drop(&mut self) {
        set_nofile(self.0, self.1);
    }
}

#[test]
fn a_spawn_without_descriptors_backs_off_and_recovers_by_itself() {
    // Each app opens a file of its own at spawn before the exec's pipes: the env file, the
    // user database. Were the refused spawns counted as the app's crashes, two would make it
    // `errored`.
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap()
        .name;
    let mut d = Daemon::prepare(
        &format!(
            "[apps.api]\ncommand = [\"sleep\", \"1001\"]\nmax_restarts = 2\n\
             [apps.env]\ncommand = [\"sleep\", \"1002\"]\nmax_restarts = 2\nenv_file = \"app.env\"\n\
             [apps.mine]\ncommand = [\"sleep\", \"1003\"]\nmax_restarts = 2\nuser = \"{me}\"\n"
        ),
        &[],
    );
    fs::write(d.dir.path().join("app.env"), "GREETING=hi\n").unwrap();
    d.spawn();
    d.wait_ready();
    let apps = ["api", "env", "mine"];
    let victims: Vec<u32> = apps
        .iter()
        .map(|app| d.wait_state(app, AppState::Online)[0].pid.unwrap())
        .collect();
    // Descriptors 0 to 2 stay open: with a limit of 3, every new one fails with EMFILE
    // (whichever descriptors citrusd closes meanwhile, they are numbered 3 or more).
    let limit = NofileBack(d.pid(), set_nofile(d.pid(), 3));
    for pid in &victims {
        sigkill(*pid);
    }
    // The control socket cannot accept either: the story is in the apps' logs, written to the
    // files citrusd holds open. Five attempts each: the next retry is 4 s away.
    let mut refused = Vec::new();
    for app in apps {
        let log = wait_for(&format!("{app}'s spawn retries"), DEADLINE, || {
            let log = d.log(&format!("{app}-out.log"));
            match log.matches("retrying in").count() {
                n if n >= 5 => Ok(log),
                _ => Err(log),
            }
        });
        let retries: Vec<&str> = log.lines().filter(|l| l.contains("retrying in")).collect();
        for line in &retries {
            assert!(
                line.contains("cannot start") && line.contains("Too many open files"),
                "{line}"
            );
        }
        assert!(!log.contains("errored"), "{log}");
        refused.push(retries.last().unwrap().to_string());
    }
    drop(limit);
    // Still waiting for the next retry (the control socket accepts again within a second):
    // in backoff, saying why.
    for app in apps {
        let row = d.app(app).remove(0);
        assert_eq!(row.state, AppState::Backoff, "{row:?}");
    }
    d.ctl(&["describe", "env"])
        .code(0)
        .stdout_has(&["backoff", "app.env", "Too many open files"]);
    for (app, old) in apps.into_iter().zip(victims) {
        wait_respawned(&d, app, old);
    }
    eprintln!("EMFILE: the last refusals: {refused:#?}");
}

#[test]
fn a_reload_that_cannot_open_a_log_file_changes_nothing() {
    const APPS: &str = "[apps.keep]\ncommand = [\"sleep\", \"1010\"]\n\
        [apps.changed]\ncommand = [\"sleep\", \"1011\"]\n\
        [apps.gone]\ncommand = [\"sleep\", \"1012\"]\n";
    let d = Daemon::start(APPS);
    for app in ["keep", "changed", "gone"] {
        d.wait_state(app, AppState::Online);
    }
    let state_file = d.dir.path().join("state/state.json");
    let saved = fs::read_to_string(&state_file).unwrap();
    let before = snapshot(&d);
    // `broken`'s err log path is a directory: it cannot be opened (EISDIR, root or not).
    let blocker = d.log_path("broken-err.log");
    fs::create_dir_all(&blocker).unwrap();
    fs::write(
        &d.config,
        with_daemon_table(
            "[apps.keep]\ncommand = [\"sleep\", \"1010\"]\n\
             [apps.changed]\ncommand = [\"sleep\", \"1013\"]\n\
             [apps.added]\ncommand = [\"sleep\", \"1014\"]\n\
             [apps.broken]\ncommand = [\"sleep\", \"1015\"]\n",
        ),
    )
    .unwrap();
    // Before: `gone` and `changed` were stopped, `added` made, then the error left the table
    // half-swapped (the old config in force, `changed` gone, `added` never started).
    d.ctl(&["reload-config"]).code(1).stderr_has(&[
        "the config was not reloaded",
        "cannot open log file",
        "broken-err.log",
        "nothing was changed",
    ]);
    assert_eq!(snapshot(&d), before);
    assert_eq!(fs::read_to_string(&state_file).unwrap(), saved);
    assert!(d.marked(Some("added")).is_empty());

    // Fixed: the same reload applies whole. The restarted app writes on in its own log file.
    fs::remove_dir(&blocker).unwrap();
    d.ctl(&["reload-config"]).code(0);
    d.wait_state("broken", AppState::Online);
    d.wait_state("added", AppState::Online);
    let pid_before = |app: &str| before.iter().find(|(n, ..)| n == app).unwrap().1;
    let changed = d.wait_state("changed", AppState::Online)[0].pid;
    assert_ne!(changed, pid_before("changed"));
    assert!(d.app("gone").is_empty());
    let keep = d.app("keep").remove(0);
    assert_eq!(
        (keep.pid, keep.state),
        (pid_before("keep"), AppState::Online)
    );
    let log = d.log("changed-out.log");
    assert!(
        log.contains("sleep 1011") && log.contains("sleep 1013"),
        "{log}"
    );
}
