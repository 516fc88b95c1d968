//! Supervision as SPEC 2.2 says: restart policies and limits, process groups, memory caps,
//! start order, env, errors that leave the rest running.

use std::fs;
use std::time::Duration;

use citrus::control::AppState;
use citrus::sys::procfs;

use crate::support::{count, wait_for, Daemon, DEADLINE};

#[test]
fn crash_loop_spawns_exactly_n_plus_one_times_then_errored() {
    let d = Daemon::start("[apps.crash]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nmax_restarts = 4\nmin_uptime = \"5s\"\n");
    let rows = d.wait_state("crash", AppState::Errored);
    assert_eq!(rows[0].unstable_restarts, 5);
    assert_eq!(rows[0].last_exit.as_ref().unwrap().code, Some(3));
    assert_eq!(count(&d.log("crash-out.log"), "[citrus] spawned"), 5);
    // A manual start gives it a fresh budget.
    d.ctl(&["start", "crash"]).code(0);
    d.wait_state("crash", AppState::Errored);
    assert_eq!(count(&d.log("crash-out.log"), "[citrus] spawned"), 10);
}

#[test]
fn restart_policies_on_failure_and_never() {
    let d = Daemon::start(
        "[apps.ok]\ncommand = [\"true\"]\nrestart = \"on-failure\"\n\
         [apps.fail]\ncommand = [\"false\"]\nrestart = \"on-failure\"\nmax_restarts = 2\nmin_uptime = \"5s\"\n\
         [apps.once]\ncommand = [\"false\"]\nrestart = \"never\"\n",
    );
    d.wait_state("ok", AppState::Stopped);
    d.wait_state("once", AppState::Stopped);
    d.wait_state("fail", AppState::Errored);
    assert_eq!(count(&d.log("ok-out.log"), "[citrus] spawned"), 1);
    assert_eq!(count(&d.log("once-out.log"), "[citrus] spawned"), 1);
    assert_eq!(count(&d.log("fail-out.log"), "[citrus] spawned"), 3);
}

#[test]
fn exponential_backoff_shows_backoff_state() {
    let d = Daemon::start(
        "[apps.flap]\ncommand = [\"false\"]\nexp_backoff_restart_delay = \"300ms\"\nmax_restarts = 50\nmin_uptime = \"5s\"\n",
    );
    wait_for("backoff with a growing delay", DEADLINE, || {
        let log = d.log("flap-out.log");
        if count(&log, "restarting in 1200ms") >= 1 {
            Ok(())
        } else {
            Err(log)
        }
    });
    let log = d.log("flap-out.log");
    for delay in [
        "restarting in 300ms",
        "restarting in 600ms",
        "restarting in 1200ms",
    ] {
        assert!(log.contains(delay), "{log}");
    }
}

#[test]
fn missing_executable_and_cwd_error_while_others_run() {
    let d = Daemon::start(
        "[apps.ghost]\ncommand = [\"/nonexistent/bin/app\"]\n\
         [apps.nocwd]\ncommand = [\"true\"]\ncwd = \"/nonexistent-dir\"\n\
         [apps.fine]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    let ghost = d.wait_state("ghost", AppState::Errored);
    d.wait_state("nocwd", AppState::Errored);
    d.wait_state("fine", AppState::Online);
    assert!(ghost[0].pid.is_none());
    let describe = d.ctl(&["describe", "ghost"]);
    describe
        .code(0)
        .stdout_has(&["No such file or directory", "/nonexistent/bin/app"]);
    d.ctl(&["describe", "nocwd"])
        .code(0)
        .stdout_has(&["/nonexistent-dir does not exist"]);
    // Starting it again fails with the reason and exit 1.
    d.ctl(&["start", "ghost"])
        .code(1)
        .stderr_has(&["No such file or directory"]);
}

#[test]
fn stop_kills_the_whole_tree_including_sigterm_ignorers_and_double_forks() {
    // The app: a grandchild that ignores SIGTERM in the group, and a double-forked grandchild in
    // its own session (re-parented to citrusd) that ignores SIGTERM too.
    let script = r#"
trap '' TERM
sh -c 'trap "" TERM; exec sleep 1001' &
( setsid sh -c 'trap "" TERM; exec sleep 1002' & )
exec sleep 1003
"#;
    let d = Daemon::start(&format!(
        "[apps.tree]\ncommand = [\"sh\", \"-c\", '''{script}''']\nkill_timeout = \"300ms\"\n"
    ));
    d.wait_state("tree", AppState::Online);
    // Three marked processes may be seen before the double fork has called setsid: wait for both.
    wait_for(
        "the tree's 3 sleepers, the double fork out of the group",
        DEADLINE,
        || {
            let p = d.marked(Some("tree"));
            let groups: std::collections::HashSet<i32> = p
                .iter()
                .filter_map(|p| procfs::stat(*p))
                .map(|s| s.pgrp)
                .collect();
            match p.len() >= 3 && groups.len() >= 2 {
                true => Ok(()),
                false => Err(format!("{p:?} in groups {groups:?}")),
            }
        },
    );
    let r = d.ctl(&["stop", "tree"]);
    r.code(0);
    assert!(
        d.marked(Some("tree")).is_empty(),
        "processes survived stop: {:?}",
        d.marked(Some("tree"))
    );
    assert!(d.log("tree-out.log").contains("SIGKILL"));
}

#[test]
fn crash_of_the_leader_takes_its_group_down_before_the_restart() {
    // Each run leaves a background sleeper in its group and exits at once: 3 runs, then errored.
    let d = Daemon::start(
        "[apps.leaky]\ncommand = [\"sh\", \"-c\", \"sleep 1000 & exit 1\"]\nmin_uptime = \"10s\"\nmax_restarts = 2\n",
    );
    d.wait_state("leaky", AppState::Errored);
    assert_eq!(count(&d.log("leaky-out.log"), "[citrus] spawned"), 3);
    let left = d.marked(Some("leaky"));
    assert!(
        left.is_empty(),
        "remnants of crashed runs survived: {left:?}"
    );
}

#[test]
fn instances_get_their_number_and_separate_logs() {
    let d = Daemon::start(
        "[apps.multi]\ncommand = [\"sh\", \"-c\", \"echo instance=$CITRUS_INSTANCE node=$NODE_APP_INSTANCE; exec sleep 1000\"]\ninstances = 3\n",
    );
    let rows = d.wait_state("multi", AppState::Online);
    assert_eq!(rows.len(), 3);
    for i in 0..3 {
        let file = format!("multi-{i}-out.log");
        wait_for(&file, DEADLINE, || {
            let log = d.log(&file);
            if log.contains(&format!("instance={i} node={i}")) {
                Ok(())
            } else {
                Err(log)
            }
        });
    }
}

#[test]
fn memory_cap_restarts_the_tree_gracefully() {
    // The child (not the leader) holds the memory: the cap is on the whole tree.
    let d = Daemon::start(
        r#"[apps.hog]
command = ["sh", "-c", '''python3 -c 'import time; x = bytearray(80 << 20); x[::4096] = b"x" * len(x[::4096]); time.sleep(1000)'; sleep 1000''']
max_memory_restart = "40M"
min_uptime = "0s"
"#,
    );
    let row = wait_for("a memory restart", DEADLINE, || {
        let r = d.app("hog").remove(0);
        if r.memory_restarts >= 1 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert!(row.restarts >= 1);
    assert!(d.log("hog-out.log").contains("over max_memory_restart"));
}

#[test]
fn after_orders_start_and_reverse_orders_stop() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let app = |name: &str, after: &str| {
        format!(
            "[apps.{name}]\ncommand = [\"sh\", \"-c\", \"echo start {name} >> {j}; trap 'echo stop {name} >> {j}; exit 0' TERM; while :; do sleep 0.05; done\"]\nafter = [{after}]\n",
            j = journal.display()
        )
    };
    let config = format!(
        "{}{}{}",
        app("web", "\"api\""),
        app("api", "\"db\""),
        app("db", "")
    );
    let d = Daemon::start(&config);
    for a in ["db", "api", "web"] {
        d.wait_state(a, AppState::Online);
    }
    wait_for("three starts", DEADLINE, || {
        let j = fs::read_to_string(&journal).unwrap_or_default();
        if j.lines().count() >= 3 {
            Ok(())
        } else {
            Err(j)
        }
    });
    // Without a readiness check `after` orders the spawns (the apps then race to write their
    // own first line): citrusd's "spawned" lines carry the order.
    let spawned = |app: &str| {
        let log = d.log(&format!("{app}-out.log"));
        log.lines()
            .find(|l| l.contains("[citrus] spawned"))
            .expect("spawn line")[..24]
            .to_string()
    };
    let (db, api, web) = (spawned("db"), spawned("api"), spawned("web"));
    assert!(
        db <= api && api <= web,
        "spawn order db {db}, api {api}, web {web}"
    );
    d.ctl(&["stop", "all"]).code(0);
    // Stops are sequential by level, each waiting for the last: exact order.
    let j = fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = j.lines().collect();
    let mut starts = lines[..3].to_vec();
    starts.sort();
    assert_eq!(starts, ["start api", "start db", "start web"]);
    assert_eq!(lines[3..], ["stop web", "stop api", "stop db"]);
}

#[test]
fn cron_restart_fires_on_schedule() {
    let d = Daemon::start(
        "[apps.nightly]\ncommand = [\"sleep\", \"1000\"]\ncron_restart = \"* * * * * *\"\n",
    );
    wait_for("two scheduled restarts", DEADLINE, || {
        let r = d.app("nightly").remove(0);
        if r.restarts >= 2 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert!(d.log("nightly-out.log").contains("cron_restart"));
}

#[test]
fn env_is_recomputed_from_config_env_file_and_env_name_at_every_start() {
    let dir_env = "FROM_FILE=one\n# comment\nexport QUOTED=\"a b\"\n";
    let mut d = Daemon::prepare(
        "[apps.env]\ncommand = [\"sh\", \"-c\", \"echo file=$FROM_FILE quoted=$QUOTED mode=$MODE port=$PORT home=${SHELL_SECRET:-unset}; exec sleep 1000\"]\n\
         env_file = \"app.env\"\nenv = { MODE = \"dev\", PORT = 1 }\nenv_production = { MODE = \"prod\" }\n",
        &["--env", "production"],
    );
    fs::write(d.dir.path().join("app.env"), dir_env).unwrap();
    d.spawn();
    d.wait_ready();
    let first = wait_for("env line", DEADLINE, || {
        let log = d.log("env-out.log");
        // The app's own line (citrusd's "spawned" line quotes the command).
        if log.lines().any(|l| l.starts_with("file=")) {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(
        first.contains("file=one quoted=a b mode=prod port=1 home=unset"),
        "{first}"
    );
    fs::write(d.dir.path().join("app.env"), "FROM_FILE=two\n").unwrap();
    d.ctl(&["restart", "env"]).code(0);
    wait_for("the new env_file value", DEADLINE, || {
        let log = d.log("env-out.log");
        if log.contains("file=two") {
            Ok(())
        } else {
            Err(log)
        }
    });
    // Values are masked in describe.
    let desc = d.ctl(&["describe", "env"]);
    desc.code(0).stdout_has(&["MODE=*****", "FROM_FILE=*****"]);
    assert!(!desc.stdout.contains("prod"), "{}", desc.stdout);
}

#[test]
fn user_switch_when_root() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start("[apps.asnobody]\ncommand = [\"sleep\", \"1000\"]\nuser = \"nobody\"\n");
    let rows = d.wait_state("asnobody", AppState::Online);
    let status = fs::read_to_string(format!("/proc/{}/status", rows[0].pid.unwrap())).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.to_string()),
        "{uid_line}"
    );
}

#[test]
fn restart_latency_is_not_a_polling_tick() {
    // Not a benchmark: a sanity check that a SIGKILLed app is replaced without a fixed delay.
    let d = Daemon::start("[apps.victim]\ncommand = [\"sleep\", \"1000\"]\nmin_uptime = \"0s\"\n");
    let pid = d.wait_state("victim", AppState::Online)[0].pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let row = wait_for("a replacement", Duration::from_secs(5), || {
        let r = d.app("victim").remove(0);
        match r.pid {
            Some(p) if p != pid && r.state == AppState::Online => Ok(r),
            _ => Err(format!("{r:?}")),
        }
    });
    assert_eq!(row.restarts, 1);
    assert_eq!(row.last_exit.unwrap().signal.as_deref(), Some("SIGKILL"));
}
