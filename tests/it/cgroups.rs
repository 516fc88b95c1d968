//! Instances in their own cgroup v2 (where citrusd can create one): a process that leaves the
//! group with `setsid` and clears its environment is still stopped, by `citrusctl stop` and by
//! the orphan cleanup after a crash of citrusd; cgroups go away with their app and at shutdown.

use std::path::PathBuf;

use citrus::control::AppState;
use citrus::supervisor::cgroup;
use citrus::sys::procfs;
use nix::sys::signal::Signal;

use crate::support::{wait_for, with_daemon_table, Daemon, DEADLINE};

/// The app: once citrusd has moved it into its cgroup (a few milliseconds after the spawn), a
/// child that calls setsid and re-executes itself as `sleep` with an empty environment (no
/// marker), then the leader becomes a sleeper too.
const ESCAPER: &str = r#"[apps.esc]
command = ["/usr/bin/python3", "-c", '''
import os, time
deadline = time.monotonic() + 10
while not open("/proc/self/cgroup").read().rstrip().endswith("/esc.0") and time.monotonic() < deadline:
    time.sleep(0.01)
pid = os.fork()
if pid == 0:
    os.setsid()
    os.execve("/bin/sleep", ["sleep", "1000"], {})
print("escapee=%d" % pid, flush=True)
os.execv("/bin/sleep", ["sleep", "1001"])
''']
kill_timeout = "300ms"
"#;

/// A process, by pid and start time (a reused pid is another process).
struct Proc {
    pid: i32,
    start: u64,
}

impl Proc {
    fn alive(&self) -> bool {
        procfs::stat(self.pid).is_some_and(|s| s.state != 'Z' && s.start_ticks == self.start)
    }

    /// Its cgroup directory in the unified hierarchy.
    fn cgroup(&self) -> PathBuf {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).unwrap();
        let own = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        cgroup::mount_point()
            .unwrap()
            .join(own.trim_start_matches('/'))
    }
}

/// Starts the escaper; `None` (with the reason printed) where citrusd cannot use cgroups.
fn start_escaper() -> Option<(Daemon, Proc)> {
    let d = Daemon::start(ESCAPER);
    if let Some(line) = d.stderr().lines().find(|l| l.contains("cgroups not used")) {
        eprintln!("skipped: cgroup v2 is not writable here: {line}");
        return None;
    }
    d.wait_state("esc", AppState::Online);
    let pid = wait_for("the escapee's pid in the log", DEADLINE, || {
        let log = d.log("esc-out.log");
        log.lines()
            .find_map(|l| l.split("escapee=").nth(1)?.trim().parse::<i32>().ok())
            .ok_or(log)
    });
    let start = procfs::stat(pid).expect("the escapee runs").start_ticks;
    let esc = Proc { pid, start };
    // It left the group and carries no marker: only its cgroup still ties it to the app.
    wait_for(
        "the escapee to be sleep in its own session",
        DEADLINE,
        || {
            let s = procfs::stat(pid).ok_or("gone")?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if s.pgrp == pid && cmd.starts_with(b"sleep\0") && procfs::environ(pid).is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "pgrp {} cmdline {:?}",
                    s.pgrp,
                    String::from_utf8_lossy(&cmd)
                ))
            }
        },
    );
    Some((d, esc))
}

#[test]
fn stop_kills_a_setsid_escapee_with_a_cleared_environment() {
    let Some((mut d, esc)) = start_escaper() else {
        return;
    };
    let leaf = esc.cgroup();
    assert!(
        leaf.ends_with(format!("citrus-{}/esc.0", d.supervisor_id())),
        "{}",
        leaf.display()
    );
    d.ctl(&["stop", "esc"]).code(0);
    assert!(!esc.alive(), "pid {} survived stop", esc.pid);
    // The cgroup is reused by the next run and removed with the app (gone from the config).
    d.ctl(&["start", "esc"]).code(0);
    d.wait_state("esc", AppState::Online);
    std::fs::write(&d.config, with_daemon_table("")).unwrap();
    d.ctl(&["reload-config"]).code(0);
    wait_for(
        "the app's cgroup to go with the app",
        DEADLINE,
        || match leaf.exists() {
            true => Err(format!("{} still there", leaf.display())),
            false => Ok(()),
        },
    );
    // The supervisor's own cgroup goes at a clean shutdown.
    let parent = leaf.parent().unwrap().to_path_buf();
    assert!(parent.exists());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    assert!(!parent.exists(), "{} left after shutdown", parent.display());
}

#[test]
fn a_restarted_citrusd_kills_the_escapee_of_the_previous_run() {
    let Some((mut d, esc)) = start_escaper() else {
        return;
    };
    d.kill9();
    assert!(esc.alive(), "the escapee runs on after citrusd's crash");
    d.spawn();
    d.wait_ready();
    assert!(!esc.alive(), "pid {} of the previous run survived", esc.pid);
    d.wait_state("esc", AppState::Online);
}
