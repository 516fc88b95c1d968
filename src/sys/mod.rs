//! Linux specifics in one place: `/proc` parsing, process-group and pidfd signalling, the child
//! subreaper flag, signal names, percent-encoding, crash-safe file writes (`fs`), wall-clock
//! timestamps (`time`), the binaries' logging on stderr (`logging`) and citrusd's memory footprint
//! (`memory`). Everything else in the crate talks to the OS through here. Also the small
//! system-level helpers every part shares: the retry schedule (`backoff`).

pub mod backoff;
pub mod fs;
pub mod logging;
pub mod memory;
mod percent;
pub mod procfs;
pub mod serve;
#[cfg(test)]
pub(crate) mod testing;
pub mod time;

pub use percent::percent_encode;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Marks this process as a child subreaper: orphaned descendants are re-parented to us instead of
/// init, so double-forked daemons of an app are still reaped and still found when the app stops.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer argument and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The open-files limit citrusd started with, which its apps get back (see [`raise_fd_limit`]).
static APP_FD_LIMIT: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises citrusd's soft open-files limit to the hard limit (each instance holds two pipes and two
/// log files; 1000 apps need more than the usual soft limit of 1024). Apps keep the limit citrusd
/// was started with: programs using `select()` misbehave with a huge one.
pub fn raise_fd_limit() -> io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = APP_FD_LIMIT.set(libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    });
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(())
}

/// The open-files limit to give apps, if citrusd changed its own.
pub fn app_fd_limit() -> Option<libc::rlimit> {
    APP_FD_LIMIT.get().copied()
}

/// The share of the open-files limit a listener's connections may take: the rest stays for
/// supervision (each instance's pipes and log files, a spawn's pipes) and the engine's store, so a
/// connection flood never makes a spawn fail with EMFILE.
pub const CONNECTION_FD_SHARE: u64 = 4;

/// The connection cap of a listener: `wanted`, lowered to a [`CONNECTION_FD_SHARE`]th of the
/// current soft open-files limit (at least 1).
pub fn connection_cap(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let room = usize::try_from(soft / CONNECTION_FD_SHARE).unwrap_or(usize::MAX);
    wanted.min(room).max(1)
}

/// True for the errors of a momentary shortage of descriptors or processes (EMFILE, ENFILE,
/// EAGAIN, ENOMEM): worth retrying later, unlike a missing program or a bad directory.
pub fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
    )
}

/// Sends `signal` to every process of group `pgid`. Returns `false` when the group is empty
/// (ESRCH), which is not an error: the processes are already gone.
pub fn signal_group(pgid: i32, signal: Signal) -> io::Result<bool> {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// True while process group `pgid` has at least one member.
pub fn group_alive(pgid: i32) -> bool {
    // Signal 0 checks existence and permission without delivering anything.
    // SAFETY: kill(2) with signal 0 only performs the permission/existence check.
    let rc = unsafe { libc::kill(-pgid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A pidfd: a handle on one exact process that stays valid (and never aliases another process)
/// even if the pid is reused after the process exits.
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid` (Linux ≥ 5.3).
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends a signal to exactly the process this pidfd refers to. ESRCH (gone) is `Ok(false)`.
    pub fn send_signal(&self, signal: Signal) -> io::Result<bool> {
        self.send_raw(signal as i32)
    }

    /// True while the process exists (signal 0: nothing is delivered).
    pub fn is_alive(&self) -> bool {
        matches!(self.send_raw(0), Ok(true))
    }

    fn send_raw(&self, signo: i32) -> io::Result<bool> {
        // SAFETY: pidfd_send_signal with a null siginfo and zero flags; the fd is owned by self.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signo,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(true)
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// "SIGTERM" for 15, or the number as text for signals without a name.
pub fn signal_name(signo: i32) -> String {
    Signal::try_from(signo)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| signo.to_string())
}

/// The machine's hostname (`localhost` when it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Milliseconds since the Unix epoch (0 before it): the times on the wire and in state files.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// [`unix_ms`] of now.
pub fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

/// FNV-1a 64: a stable hash (unlike `DefaultHasher`, identical across Rust releases), used to derive
/// the supervisor id that marks our apps' environments from the state directory's path.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The error and its causes, `: `-separated (each only once).
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
