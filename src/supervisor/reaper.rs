//! The child reaper: the one place that calls `waitpid`.
//!
//! Theory of operation. citrusd is a child subreaper, so besides the instances it spawns it also
//! inherits every orphaned descendant of its apps. Tokio's own process driver would not reap those,
//! and a blanket `waitpid(-1)` next to it would steal the statuses Tokio waits for; so citrusd does
//! not use `tokio::process` at all. Every child is spawned through [`Reaper::spawn`], which registers
//! its pid while holding the registry lock, and [`Reaper::reap_all`] (run on every SIGCHLD) collects
//! every zombie under the same lock: registered pids get their exit status on a oneshot, orphans are
//! simply reaped. Holding the lock across `spawn` also keeps the reaper away from a child whose
//! `exec` failed, which the standard library waits for itself.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "code {c}"),
            (None, Some(s)) => write!(f, "signal {}", crate::sys::signal_name(s)),
            (None, None) => write!(f, "unknown status"),
        }
    }
}

/// A child just spawned: its pid, the read ends of its stdout/stderr pipes, and its exit.
pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// Registry of our children and the SIGCHLD-driven reaping loop.
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
    reaped: watch::Sender<u64>,
}

impl Reaper {
    /// Creates the reaper and starts its task on the current runtime. Must be called before the
    /// first spawn so that no SIGCHLD is missed.
    pub fn start() -> io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper {
            waiting: Mutex::new(HashMap::new()),
            reaped: watch::Sender::new(0),
        });
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            // Children may have exited before the handler was installed.
            r.reap_all();
            while sigchld.recv().await.is_some() {
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr piped, and registers the child.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid, tx);
        drop(waiting);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        // Dropping a std Child neither waits nor kills; the reaper owns the exit status.
        drop(child);
        match (stdout, stderr) {
            (Some(stdout), Some(stderr)) => Ok(Spawned {
                pid,
                stdout,
                stderr,
                exit: rx,
            }),
            _ => Err(io::Error::other("child spawned without pipes")),
        }
    }

    /// Registers a child this process did not spawn (handed over across `exec`). Must be called
    /// before the reaper task first runs, so the child's exit cannot be collected as an orphan.
    pub fn adopt(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, tx);
        rx
    }

    /// Reaps every exited child: registered ones get their status, orphans are just collected.
    pub fn reap_all(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(answer) => match exited(answer) {
                    Some(exit) => exit,
                    None => continue,
                },
            };
            any = true;
            match waiting.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    tracing::debug!(pid, %status, "reaped an orphaned descendant")
                }
            }
        }
        drop(waiting);
        if any {
            self.reaped.send_modify(|n| *n += 1);
        }
    }

    /// A reaper for unit tests, which share their process with other tests' children: on each
    /// SIGCHLD it collects only the children it spawned, each by its pid, never another's.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Reaper> {
        let reaper = Arc::new(Reaper {
            waiting: Mutex::new(HashMap::new()),
            reaped: watch::Sender::new(0),
        });
        let mut sigchld = signal(SignalKind::child()).expect("a SIGCHLD handler");
        let me = Arc::downgrade(&reaper);
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                let Some(reaper) = me.upgrade() else { return };
                let mut waiting = reaper.waiting.lock().unwrap_or_else(|e| e.into_inner());
                let pids: Vec<i32> = waiting.keys().copied().collect();
                let flag = Some(WaitPidFlag::WNOHANG);
                let ended = pids
                    .into_iter()
                    .filter_map(|pid| exited(waitpid(Pid::from_raw(pid), flag).ok()?));
                let mut any = false;
                for (pid, status) in ended.collect::<Vec<_>>() {
                    any = true;
                    if let Some(tx) = waiting.remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
                drop(waiting);
                if any {
                    reaper.reaped.send_modify(|n| *n += 1);
                }
            }
        });
        reaper
    }

    /// A receiver that changes whenever some process was reaped (to re-check "is the group gone?").
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.reaped.subscribe()
    }

    /// Pids spawned through us that have not exited yet.
    pub fn is_registered(&self, pid: i32) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&pid)
    }
}

/// The pid and exit status `waitpid` reported, if it reported an exit.
fn exited(answer: WaitStatus) -> Option<(i32, ExitStatus)> {
    match answer {
        WaitStatus::Exited(pid, code) => Some((
            pid.as_raw(),
            ExitStatus {
                code: Some(code),
                signal: None,
            },
        )),
        WaitStatus::Signaled(pid, sig, _) => Some((
            pid.as_raw(),
            ExitStatus {
                code: None,
                signal: Some(sig as i32),
            },
        )),
        _ => None,
    }
}
