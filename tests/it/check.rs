//! `citrusd --check`: the plan and exit 0 for a good config; exit 2 with every problem listed at
//! once (config diagnostics and what only the host can tell) for a bad one; nothing started.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Run, Tmpfs, CITRUSD};

/// Runs `citrusd --check --config <dir>/citrusd.toml` on `body`, with a socket flag inside `dir`.
fn check(dir: &Path, body: &str) -> Run {
    let config = dir.join("citrusd.toml");
    fs::write(&config, body).unwrap();
    let out = Command::new(CITRUSD)
        .arg("--check")
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.join("check.sock"))
        .stdin(Stdio::null())
        .output()
        .expect("run citrusd --check");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn good_config_prints_the_plan_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("www")).unwrap();
    let body = r#"
[daemon]
state_dir = "state"
log_dir = "logs"
metrics_listen = "127.0.0.1:9559"

[apps.api]
command = ["sleep", "60"]
instances = 3
cwd = "www"
cron_restart = "30 4 * * *"
listen = ["tcp://127.0.0.1:3000"]

[apps.worker]
command = ["/bin/sh", "-c", "sleep 60"]
after = ["api"]

[jobs.nightly]
schedule = "0 3 * * *"
timezone = "UTC"
kind = "command"
command = ["true"]

[jobs.disk]
schedule = "*/30 * * * *"
kind = "disk"
"#;
    let run = check(dir.path(), body);
    run.code(0);
    let www = dir.path().join("www");
    run.stdout_has(&[
        "apps (2), in start order:",
        "api              3x",
        &format!("cwd {}", www.display()),
        "sleep 60",
        "cron_restart \"30 4 * * *\", next 20",
        "worker           1x",
        "/bin/sh -c \"sleep 60\"",
        "jobs (2):",
        "nightly          command          0 3 * * *        next 20",
        "T03:00:00.000Z",
        "disk             disk",
        "fleet      off",
        &format!("control socket {}", dir.path().join("check.sock").display()),
        "metrics http://127.0.0.1:9559/metrics",
        "tcp://127.0.0.1:3000 (app api)",
        "config OK",
    ]);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    // api is started before worker.
    assert!(run.stdout.find("  api ").unwrap() < run.stdout.find("  worker ").unwrap());
    // Nothing was created: no state or log dir, no socket.
    for made in ["state", "logs", "check.sock"] {
        assert!(!dir.path().join(made).exists(), "{made} was created");
    }
}

#[test]
fn every_problem_is_listed_at_once_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // The log dir lies under a regular file: it can never be created, even by root.
    fs::write(dir.path().join("plain-file"), "").unwrap();
    let body = r#"
[daemon]
state_dir = "state"
log_dir = "plain-file/logs"

[apps.ghost]
command = ["sleep", "60"]
user = "citrus-no-such-user"

[apps.lost]
command = ["sleep", "60"]
cwd = "no-such-dir"

[apps.typo]
command = ["citrus-no-such-program", "--serve"]

[jobs.bad-cron]
schedule = "61 * * * *"
kind = "save"
"#;
    let run = check(dir.path(), body);
    run.code(2);
    run.stderr_has(&[
        "citrusd --check: 5 problems in",
        // The config's own diagnostic, positioned.
        "citrusd.toml:18:12: jobs.bad-cron.schedule: invalid cron expression \"61 * * * *\": bad minute field",
        "apps.ghost: user \"citrus-no-such-user\": no such user",
        &format!(
            "apps.lost: working directory {} does not exist",
            dir.path().join("no-such-dir").display()
        ),
        "apps.typo: command \"citrus-no-such-program\" not found in PATH",
        &format!(
            "daemon.log_dir: {} cannot be created: {} is not a directory",
            dir.path().join("plain-file/logs").display(),
            dir.path().join("plain-file").display()
        ),
    ]);
    // The plan still shows what could be read.
    run.stdout_has(&["apps (3)", "ghost", "lost", "typo", "jobs (0)"]);
    assert!(!run.stdout.contains("config OK"), "{}", run.stdout);
    assert!(!dir.path().join("state").exists());
}

#[test]
fn read_only_log_dir_is_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let Some(tmpfs) = Tmpfs::mount(&logs, "1m") else {
        return;
    };
    let body =
        "[daemon]\nstate_dir = \"state\"\nlog_dir = \"logs\"\n\n[apps.a]\ncommand = [\"true\"]\n";
    check(dir.path(), body).code(0);
    let read_only = tmpfs.read_only();
    check(dir.path(), body).code(2).stderr_has(&[
        "1 problem in",
        &format!("daemon.log_dir: {} is not writable", logs.display()),
        "Read-only file system",
    ]);
    drop(read_only);
    // --check wrote nothing into the directory it probed.
    assert_eq!(fs::read_dir(&logs).unwrap().count(), 0);
}

#[test]
fn unreadable_or_broken_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CITRUSD)
        .args(["--check", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
    let run = check(dir.path(), "[apps.a\ncommand = 1\n");
    run.code(2).stderr_has(&["citrusd.toml:1:"]);
}

#[test]
fn the_systemd_unit_checks_before_it_starts() {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/citrusd.service"
    ))
    .unwrap();
    let pre: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStartPre="))
        .collect();
    // After the self-update guard, which may put the previous binary back first.
    assert_eq!(pre.len(), 2, "{pre:?}");
    assert!(pre[0].contains("binary-update.pending"), "{}", pre[0]);
    assert_eq!(
        pre[1],
        "ExecStartPre=/usr/local/bin/citrusd --check --config /etc/citrus/citrusd.toml"
    );
}
