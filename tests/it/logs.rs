//! Logs: per-instance files with citrusd's own lines, tail and follow, rotation, SIGUSR1
//! reopen, and every byte of a flat-out writer kept.

use std::io::Read;
use std::process::{Command, Stdio};

use citrus::control::AppState;

use crate::support::{count, wait_for, Daemon, Tmpfs, CITRUSCTL, DEADLINE};

#[test]
fn tail_out_err_and_follow() {
    let d = Daemon::start(
        "[apps.chatty]\ncommand = [\"sh\", \"-c\", \"for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; while :; do read x < /dev/null; sleep 0.1; echo tick; done\"]\n",
    );
    d.wait_state("chatty", AppState::Online);
    wait_for("output", DEADLINE, || {
        let l = d.log("chatty-err.log");
        if l.contains("err5") {
            Ok(())
        } else {
            Err(l)
        }
    });
    let err = d.ctl(&["logs", "chatty", "--err", "--lines", "2"]);
    err.code(0);
    assert_eq!(err.stdout, "err4\nerr5\n");
    let out = d.ctl(&["logs", "chatty", "--out", "--lines", "200"]);
    out.code(0)
        .stdout_has(&["out1", "out5", "[citrus] spawned pid"]);
    assert!(!out.stdout.contains("err1"));
    let both = d.ctl(&["logs", "chatty"]);
    both.code(0)
        .stdout_has(&["==> ", "chatty-out.log <==", "chatty-err.log <=="]);

    // -f keeps streaming new lines.
    let mut follow = Command::new(CITRUSCTL)
        .arg("--socket")
        .arg(&d.socket)
        .args(["logs", "chatty", "--out", "-f", "--lines", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while count(&String::from_utf8_lossy(&seen), "tick") < 3 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "follow ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn timestamps_and_rotation_keep_log_keep_files() {
    let d = Daemon::start(
        "[apps.spam]\ncommand = [\"sh\", \"-c\", \"i=0; while [ $i -lt 3000 ]; do echo line-$i-padding-padding-padding; i=$((i+1)); done; exec sleep 1000\"]\nlog_max_size = \"8K\"\nlog_keep = 3\nlog_timestamps = true\n",
    );
    d.wait_state("spam", AppState::Online);
    wait_for("the last line", DEADLINE, || {
        let l = d.log("spam-out.log");
        if l.contains("line-2999-") {
            Ok(())
        } else {
            Err(format!("{} bytes", l.len()))
        }
    });
    let rotated = |d: &Daemon| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d.dir.path().join("logs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("spam-out.log."))
            .collect();
        names.sort();
        names
    };
    let names = wait_for("exactly 3 rotated files", DEADLINE, || {
        let n = rotated(&d);
        if n == ["spam-out.log.1", "spam-out.log.2", "spam-out.log.3"] {
            Ok(n)
        } else {
            Err(format!("{n:?}"))
        }
    });
    assert_eq!(names.len(), 3);
    let current = d.log("spam-out.log");
    // Rotation happens between reads of the pipe, so a file exceeds the cap by at most one read.
    assert!(
        current.len() <= 64 * 1024,
        "current log is {} bytes",
        current.len()
    );
    let line = current.lines().find(|l| l.contains("line-2999-")).unwrap();
    assert!(
        line.len() > 25 && line.as_bytes()[4] == b'-' && line.contains("Z line-2999"),
        "{line}"
    );
}

#[test]
fn sigusr1_reopens_log_files() {
    let d = Daemon::start(
        "[apps.ticker]\ncommand = [\"sh\", \"-c\", \"while :; do echo tick; sleep 0.05; done\"]\n",
    );
    d.wait_state("ticker", AppState::Online);
    let path = d.log_path("ticker-out.log");
    wait_for("first ticks", DEADLINE, || {
        if d.log("ticker-out.log").contains("tick") {
            Ok(())
        } else {
            Err(String::new())
        }
    });
    let moved = d.dir.path().join("moved.log");
    std::fs::rename(&path, &moved).unwrap();
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    wait_for("a new file at the old path", DEADLINE, || {
        let l = std::fs::read_to_string(&path).unwrap_or_default();
        if l.contains("tick") {
            Ok(())
        } else {
            Err(l)
        }
    });
}

#[test]
fn a_flat_out_writer_loses_no_byte() {
    // 64 MiB as fast as dd can write; every byte must be in the log.
    let d = Daemon::start(
        "[apps.flood]\ncommand = [\"dd\", \"if=/dev/zero\", \"bs=64k\", \"count=1024\", \"status=none\"]\nrestart = \"never\"\nlog_max_size = \"0\"\n",
    );
    d.wait_state("flood", AppState::Stopped);
    let size = wait_for("all bytes", DEADLINE, || {
        let log = std::fs::read(d.log_path("flood-out.log")).unwrap_or_default();
        let zeros = log.iter().filter(|b| **b == 0).count();
        if zeros == 64 << 20 {
            Ok(zeros)
        } else {
            Err(format!("{zeros} zero bytes"))
        }
    });
    assert_eq!(size, 64 << 20);
    assert_eq!(d.app("flood")[0].last_exit.as_ref().unwrap().code, Some(0));
}

#[test]
fn a_full_disk_drops_bytes_counts_them_and_never_blocks_the_app() {
    let d = Daemon::prepare(
        "[apps.flood]\ncommand = [\"dd\", \"if=/dev/zero\", \"bs=64k\", \"count=64\", \"status=none\"]\nrestart = \"never\"\nlog_max_size = \"0\"\n",
        &[],
    );
    let Some(disk) = Tmpfs::mount(&d.dir.path().join("logs"), "256k") else {
        return;
    };
    let d = d.launch();
    // Declared after the daemon so it is unmounted first and the temp dir can then be removed.
    let _disk = disk;
    // 4 MiB into a 256 KiB disk: the app still finishes, citrusd still answers.
    let row = d.wait_state("flood", AppState::Stopped);
    assert_eq!(row[0].last_exit.as_ref().unwrap().code, Some(0));
    let desc = d.ctl(&["--json", "describe", "flood"]);
    desc.code(0);
    let v: serde_json::Value = serde_json::from_str(&desc.stdout).unwrap();
    let out = &v["instances"][0]["out_log"];
    let dropped = out["bytes_dropped"].as_u64().unwrap();
    let written = out["bytes_written"].as_u64().unwrap();
    assert!(dropped > 0, "{out}");
    assert!(
        written + dropped >= 4 << 20,
        "every byte is either written or counted: {out}"
    );
    assert!(
        out["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left"),
        "{out}"
    );
    d.ctl(&["describe", "flood"])
        .code(0)
        .stdout_has(&["DROPPED"]);
}

#[test]
fn an_apps_terminal_escapes_are_shown_not_obeyed() {
    let d = Daemon::start(
        "[apps.evil]\ncommand = [\"printf\", \"\\\\033]0;pwned\\\\007\\\\033[2Jcleared\\\\n\"]\nrestart = \"never\"\n",
    );
    d.wait_state("evil", AppState::Stopped);
    let shown = d.ctl(&["logs", "evil", "--out"]);
    shown.code(0).stdout_has(&["^[]0;pwned^G^[[2Jcleared"]);
    assert!(!shown.stdout.contains('\u{1b}'), "{:?}", shown.stdout);
    let raw = d.ctl(&["logs", "evil", "--out", "--raw"]);
    raw.code(0).stdout_has(&["\u{1b}[2Jcleared"]);
}

/// Bytes held by the files of the log `name` in `dir` (live, staged, rotated), each file once.
fn disk_use(dir: &std::path::Path, name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(name))
                .filter_map(|e| std::fs::symlink_metadata(e.path()).ok())
                .filter(|m| seen.insert(m.ino()))
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_fast_writer_never_holds_more_than_keep_plus_two_files() {
    // Before the bound, `log_max_size = "4K"` left 31,550 staged files and "10M" 2.3 GB: each
    // rotation staged one more file than the background worker could number and compress.
    let (total4k, total1m) = (16u64 << 20, 96u64 << 20);
    let d = Daemon::start(&format!(
        "[apps.fast4k]\ncommand = [\"dd\", \"if=/dev/zero\", \"bs=64k\", \"count={}\", \"status=none\"]\n\
         restart = \"never\"\nlog_max_size = \"4K\"\nlog_keep = 3\n\
         [apps.fast1m]\ncommand = [\"dd\", \"if=/dev/urandom\", \"bs=64k\", \"count={}\", \"status=none\"]\n\
         restart = \"never\"\nlog_max_size = \"1M\"\nlog_keep = 2\nlog_compress = true\n",
        total4k >> 16,
        total1m >> 16
    ));
    let logs = d.dir.path().join("logs");
    let cases = [
        ("fast4k", 4096u64, 3u64, total4k),
        ("fast1m", 1 << 20, 2, total1m),
    ];
    let mut worst = [0u64; 2];
    let counted = |app: &str| {
        let desc = d.ctl(&["--json", "describe", app]);
        let v: serde_json::Value = serde_json::from_str(&desc.stdout).unwrap();
        let out = v["instances"][0]["out_log"].clone();
        let n = |k: &str| out[k].as_u64().unwrap_or(0);
        (n("bytes_written"), n("bytes_dropped"), out)
    };
    // Sampled while the apps write, until every byte is written or counted as dropped.
    wait_for(
        "both writers to finish",
        std::time::Duration::from_secs(120),
        || {
            let mut done = true;
            for (i, (app, max, keep, total)) in cases.iter().enumerate() {
                let used = disk_use(&logs, &format!("{app}-out.log"));
                worst[i] = worst[i].max(used);
                // keep rotated + one staged + the live file; one more file of slack for a sample
                // that races a rename (and the gzip being written).
                assert!(
                    used <= (keep + 3) * max,
                    "{app}: {used} bytes on disk, bound (log_keep + 2) × log_max_size = {}",
                    (keep + 2) * max
                );
                let (written, dropped, _) = counted(app);
                done &= written + dropped >= *total;
            }
            match done {
                true => Ok(()),
                false => Err(format!("worst so far {worst:?}")),
            }
        },
    );
    for (app, _, _, total) in cases {
        d.wait_state(app, AppState::Stopped);
        let (written, dropped, out) = counted(app);
        // Every byte is written or counted as dropped; citrusd's own lines add a little.
        assert!(
            written + dropped >= total && written + dropped < total + 4096,
            "{app}: {out}"
        );
        eprintln!("{app}: worst disk use {worst:?}, written {written}, dropped {dropped}");
    }
}

#[test]
fn a_symlink_at_a_log_path_is_refused_and_reported_not_followed() {
    let hook = crate::support::Receiver::start();
    let d = Daemon::prepare(
        &format!(
            "[apps.victim]\ncommand = [\"sh\", \"-c\", \"echo app-output; echo to-err >&2; exec sleep 1000\"]\n\
             [notify]\nwebhook = \"{}\"\n",
            hook.url
        ),
        &[],
    );
    let logs = d.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let target = d.dir.path().join("precious");
    std::fs::write(&target, "original\n").unwrap();
    std::os::unix::fs::symlink(&target, logs.join("victim-out.log")).unwrap();
    let d = d.launch();
    d.wait_state("victim", AppState::Online);
    // The other stream is unaffected.
    wait_for("stderr logged", DEADLINE, || {
        let l = d.log("victim-err.log");
        if l.contains("to-err") {
            Ok(())
        } else {
            Err(l)
        }
    });
    let out = wait_for("the refusal in describe", DEADLINE, || {
        let desc = d.ctl(&["--json", "describe", "victim"]);
        let v: serde_json::Value = serde_json::from_str(&desc.stdout).unwrap();
        let out = v["instances"][0]["out_log"].clone();
        match out["bytes_dropped"].as_u64() > Some(0) {
            true => Ok(out),
            false => Err(out.to_string()),
        }
    });
    let error = out["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("victim-out.log") && error.contains("symlink"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original\n");
    assert!(std::fs::symlink_metadata(logs.join("victim-out.log"))
        .unwrap()
        .file_type()
        .is_symlink());
    d.ctl(&["describe", "victim"])
        .code(0)
        .stdout_has(&["DROPPED", "symlink"]);
    let event = hook.wait_event("log");
    assert!(event.to_string().contains("symlink"), "{event}");
}
