//! Stopping a process group and everything that escaped it: the first signal to the group and
//! to escapees, a wait of up to `timeout` for all of them to be gone, then SIGKILL.
//!
//! Escapees are processes that left the group with `setsid` (double forks). citrusd is a child
//! subreaper, so they are re-parented to it; they are recognised among its children by the
//! environment marker every process of ours inherits, and signalled through a pidfd after the
//! marker is re-checked, so a reused pid is never hit.
//!
//! Where the instance has a cgroup (see `cgroup`), its members are signalled too (a process that
//! cleared its environment is found there), the last step includes `cgroup.kill`, and the instance
//! is gone only when its cgroup is no longer populated as well. The marker scan stays: a process
//! forked in the first milliseconds, before citrusd moved the instance into its cgroup, is not
//! in it.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use super::cgroup::Leaf;
use super::reaper::{ExitStatus, Reaper};
use crate::config::format_duration;
use crate::sys::{self, procfs, PidFd};

/// After SIGKILL, how long to wait for the group to disappear before reporting failure.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// While waiting for a group to die, re-check at least this often (a grandchild's exit is
/// reported to its parent, not to us).
const RECHECK: Duration = Duration::from_millis(20);

/// A stop that failed: the group (or an escapee) was still there [`KILL_GRACE`] after SIGKILL.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error(
    "pid {pgid} or its group survived SIGKILL for {}",
    format_duration(KILL_GRACE)
)]
pub struct Survived {
    pub pgid: i32,
}

/// One process group to stop.
pub struct GroupStop<'a> {
    pub reaper: &'a Reaper,
    pub pgid: i32,
    /// `KEY=VALUE` entries every process of this group carries in its environment.
    pub marker: Vec<String>,
    pub signal: Signal,
    pub timeout: Duration,
    /// The instance's cgroup, where it has one.
    pub cgroup: Option<&'a Leaf>,
}

impl GroupStop<'_> {
    /// True while the group or one of its escapees is alive.
    pub fn remains(&self) -> bool {
        sys::group_alive(self.pgid)
            || self.cgroup.is_some_and(Leaf::populated)
            || !self.escapees().is_empty()
    }

    /// Our children that are not registered spawns, are outside the group and carry the marker.
    fn escapees(&self) -> Vec<procfs::ProcStat> {
        procfs::children(std::process::id() as i32)
            .into_iter()
            .filter(|pid| !self.reaper.is_registered(*pid))
            .filter_map(procfs::stat)
            .filter(|s| {
                s.pgrp != self.pgid
                    && s.state != 'Z'
                    && procfs::environ_contains(s.pid, &self.marker)
            })
            .collect()
    }

    fn signal_all(&self, signal: Signal) {
        if let Err(e) = sys::signal_group(self.pgid, signal) {
            tracing::warn!(pgid = self.pgid, "cannot signal group: {e}");
        }
        let signalled = match self.cgroup {
            Some(leaf) if signal == Signal::SIGKILL => {
                leaf.kill();
                Vec::new()
            }
            Some(leaf) => leaf.signal_outside(signal, Some(self.pgid)),
            None => Vec::new(),
        };
        for esc in self.escapees() {
            if signalled.contains(&esc.pid) {
                continue;
            }
            if let Ok(fd) = PidFd::open(esc.pid) {
                if procfs::environ_contains(esc.pid, &self.marker) {
                    let _ = fd.send_signal(signal);
                    if esc.pgrp == esc.pid {
                        let _ = sys::signal_group(esc.pgrp, signal);
                    }
                }
            }
        }
    }

    /// Stops everything. `leader` is the exit of the group leader when it has not exited yet;
    /// its status is returned. `on_sigkill` runs before escalating to SIGKILL.
    pub async fn run(
        &self,
        mut leader: Option<&mut oneshot::Receiver<ExitStatus>>,
        on_sigkill: impl FnOnce(),
    ) -> (Result<(), Survived>, Option<ExitStatus>) {
        enum Wake {
            Leader(Option<ExitStatus>),
            Check,
            Timeout,
        }
        let mut reaped = self.reaper.subscribe();
        let mut leader_done = leader.is_none();
        let mut leader_status = None;
        let mut on_sigkill = Some(on_sigkill);
        for (signal, wait) in [(self.signal, self.timeout), (Signal::SIGKILL, KILL_GRACE)] {
            if signal == Signal::SIGKILL {
                if let Some(f) = on_sigkill.take() {
                    f();
                }
            }
            self.signal_all(signal);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                if leader_done && !self.remains() {
                    return (Ok(()), leader_status);
                }
                let wake = {
                    let leader_exit = async {
                        match leader.as_deref_mut() {
                            Some(rx) if !leader_done => rx.await.ok(),
                            _ => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        s = leader_exit => Wake::Leader(s),
                        _ = reaped.changed() => Wake::Check,
                        _ = tokio::time::sleep(RECHECK) => Wake::Check,
                        _ = tokio::time::sleep_until(deadline) => Wake::Timeout,
                    }
                };
                match wake {
                    Wake::Leader(s) => {
                        leader_done = true;
                        leader_status = s;
                    }
                    Wake::Check => {}
                    Wake::Timeout => break,
                }
            }
        }
        (Err(Survived { pgid: self.pgid }), leader_status)
    }
}
