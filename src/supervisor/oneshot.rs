//! Running a command to its end (a `command` job, a deployment's build): spawned in its own
//! process group with the supervisor's markers, its output captured into a bounded tail, and its
//! whole group stopped (SIGTERM, then SIGKILL) if it outlives its timeout or leaves processes
//! behind.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::capture::OutputTail;
use super::kill::GroupStop;
use super::reaper::{ExitStatus, Reaper};
use super::spawn::{self, SpawnError, Spec};
use crate::config::format_duration;

/// Between SIGTERM and SIGKILL when a command is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited (or was killed by a signal) on its own.
    Exited(ExitStatus),
    /// It outlived its timeout and its group was stopped; the message says how.
    TimedOut(String),
}

/// A finished command: how it ended and the last bytes of its output.
#[derive(Clone, Debug)]
pub struct Finished {
    pub ended: Ended,
    pub output: String,
}

impl Finished {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        matches!(&self.ended, Ended::Exited(status) if status.success())
    }
}

/// Runs `spec` until it exits or `timeout` passes, keeping the last `tail` bytes of its output.
/// `label` names it in log lines. Background processes it leaves behind are stopped with it.
pub async fn run(
    reaper: &Reaper,
    spec: &Spec<'_>,
    timeout: Duration,
    tail: usize,
    label: &str,
) -> Result<Finished, SpawnError> {
    let marker = spawn::entries(&spec.extra);
    let mut cmd = spawn::command(spec)?;
    let child = reaper
        .spawn(&mut cmd)
        .map_err(|e| spawn::exec_error(spec.command, e))?;
    let output = OutputTail::new(tail);
    let readers = output.capture([child.stdout, child.stderr]);
    let mut exit = child.exit;
    let stop = GroupStop {
        reaper,
        pgid: child.pid,
        marker,
        signal: Signal::SIGTERM,
        timeout: KILL_GRACE,
        cgroup: None,
    };
    let ended = match tokio::time::timeout(timeout, &mut exit).await {
        Ok(status) => {
            if stop.remains() {
                let _ = stop.run(None, || {}).await;
            }
            Ended::Exited(status.unwrap_or(ExitStatus {
                code: None,
                signal: None,
            }))
        }
        Err(_) => {
            let (result, _) = stop
                .run(Some(&mut exit), || {
                    tracing::warn!(
                        "{label}: still running {} after SIGTERM: SIGKILL",
                        format_duration(KILL_GRACE)
                    );
                })
                .await;
            let mut msg = format!(
                "killed after timeout {} (its process group: SIGTERM, SIGKILL after {})",
                format_duration(timeout),
                format_duration(KILL_GRACE)
            );
            if let Err(e) = result {
                msg.push_str(&format!("; {e}"));
            }
            Ended::TimedOut(msg)
        }
    };
    // The pipes close when the group is gone; never wait long for stragglers.
    readers.finish(Duration::from_secs(1)).await;
    Ok(Finished {
        ended,
        output: output.text(),
    })
}
