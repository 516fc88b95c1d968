//! After a crash of citrusd (`kill -9`, OOM), its apps keep running without anyone reading their
//! output or able to stop them. On start, before spawning anything, citrusd finds every process
//! whose environment carries its supervisor marker, stops them the way their app says
//! (`kill_signal`, `kill_timeout`, SIGKILL), and only then starts the apps again: every instance
//! runs exactly once. Processes are addressed through pidfds after re-checking their marker, so
//! a pid reused by an unrelated process is never signalled. Where instances have cgroups, the
//! members of the previous run's cgroups are orphans too (found even without the marker), and
//! each such cgroup ends with `cgroup.kill`.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::config::Config;
use crate::supervisor::cgroup::{Cgroups, Leaf};
use crate::supervisor::spawn::Marker;
use crate::sys::{self, procfs, PidFd};

struct Orphan {
    pid: i32,
    fd: PidFd,
    leader: bool,
    signal: Signal,
    timeout: Duration,
}

/// Stops every process left by a previous run of this supervisor; returns how many there were.
/// Processes of `kept` groups (instances handed over across a re-exec) and our own children are
/// not orphans.
pub async fn stop_previous_run(
    marker: &Marker,
    config: &Config,
    kept: &[i32],
    cgroups: &Cgroups,
) -> usize {
    let me = std::process::id() as i32;
    let wanted = [marker.supervisor_entry()];
    // The previous run's cgroups, but for those of instances handed over to us.
    let leaves: Vec<(String, Leaf)> = cgroups
        .leaves()
        .into_iter()
        .map(|(app, _, leaf)| (app, leaf))
        .filter(|(_, leaf)| {
            !leaf
                .members()
                .into_iter()
                .filter_map(procfs::stat)
                .any(|s| kept.contains(&s.pgrp))
        })
        .collect();
    let mut candidates: Vec<(i32, Option<&str>)> = leaves
        .iter()
        .flat_map(|(app, leaf)| {
            leaf.members()
                .into_iter()
                .map(|pid| (pid, Some(app.as_str())))
        })
        .collect();
    candidates.extend(procfs::all_pids().into_iter().map(|pid| (pid, None)));
    let mut orphans: Vec<Orphan> = Vec::new();
    for (pid, leaf_app) in candidates {
        if pid == me || orphans.iter().any(|o| o.pid == pid) {
            continue;
        }
        if leaf_app.is_none() && !procfs::environ_contains(pid, &wanted) {
            continue;
        }
        let Ok(fd) = PidFd::open(pid) else { continue };
        // Identity re-checked after the pidfd pins the process.
        let env = procfs::environ(pid);
        let in_leaf = |app: &str| {
            leaves
                .iter()
                .any(|(a, leaf)| a == app && leaf.members().contains(&pid))
        };
        let name = match leaf_app {
            Some(app) if in_leaf(app) => Some(app),
            Some(_) => continue,
            None if env.iter().any(|e| e == wanted[0].as_bytes()) => env
                .iter()
                .find_map(|e| e.strip_prefix(b"CITRUS_APP="))
                .and_then(|v| std::str::from_utf8(v).ok()),
            None => continue,
        };
        let app = name.and_then(|name| config.apps.get(name));
        let Some(stat) = procfs::stat(pid) else {
            continue;
        };
        if stat.ppid == me || kept.contains(&stat.pgrp) {
            continue;
        }
        orphans.push(Orphan {
            pid,
            fd,
            leader: stat.pgrp == pid,
            signal: app.map(|a| a.kill_signal).unwrap_or(Signal::SIGTERM),
            timeout: app
                .map(|a| a.kill_timeout)
                .unwrap_or(Duration::from_secs(5)),
        });
    }
    if orphans.is_empty() {
        return 0;
    }
    tracing::warn!(
        count = orphans.len(),
        "stopping processes left running by a previous citrusd"
    );
    let count = orphans.len();
    for o in &orphans {
        if matches!(o.fd.send_signal(o.signal), Ok(true)) && o.leader {
            let _ = sys::signal_group(o.pid, o.signal);
        }
    }
    let timeout = orphans.iter().map(|o| o.timeout).max().unwrap_or_default();
    if !wait_gone(&mut orphans, timeout).await {
        for o in &orphans {
            tracing::warn!(pid = o.pid, "still running after kill_timeout: SIGKILL");
            let _ = o.fd.send_signal(Signal::SIGKILL);
            if o.leader {
                let _ = sys::signal_group(o.pid, Signal::SIGKILL);
            }
        }
        wait_gone(&mut orphans, Duration::from_secs(5)).await;
    }
    for (_, leaf) in &leaves {
        leaf.kill();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while leaf.populated() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    count
}

/// Waits until every orphan is gone (a zombie counts as gone: it is its parent's to reap).
async fn wait_gone(orphans: &mut Vec<Orphan>, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        orphans.retain(|o| procfs::stat(o.pid).is_some_and(|s| s.state != 'Z') && o.fd.is_alive());
        if orphans.is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
