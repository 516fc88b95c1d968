//! Handing the running apps over to a re-executed citrusd (self-update and rollback).
//!
//! `exec` keeps the process id, so the apps stay citrusd's children; what would be lost is what
//! lives in memory and in close-on-exec descriptors. Right before `exec` citrusd writes a handoff
//! file (mode 0600, atomically) naming every running instance with its pid, counters and the
//! read ends of its output pipes (duplicated without close-on-exec), and the listening sockets of
//! apps with `listen` (also without close-on-exec), and points `CITRUS_HANDOFF` at it. The new
//! process registers those pids with its reaper before reaping anything, keeps them out of the
//! orphan cleanup, gives each instance actor its child back instead of spawning one (same pids,
//! logs continue) and each app its sockets instead of binding them again. The control socket and the state-dir lock are
//! close-on-exec and are simply taken again.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::fs::write_atomic;

/// The environment variable naming the handoff file.
pub const ENV: &str = "CITRUS_HANDOFF";

/// One running instance handed over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdoptedInstance {
    pub app: String,
    pub index: u32,
    pub pid: i32,
    pub out_fd: i32,
    pub err_fd: i32,
    pub uptime_ms: u64,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub memory_restarts: u32,
}

/// One listening socket of an app with `listen` handed over (socket activation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandedSocket {
    pub app: String,
    /// The address as written, e.g. `tcp://127.0.0.1:8089`.
    pub addr: String,
    pub fd: i32,
}

/// What one citrusd hands to the next.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub instances: Vec<AdoptedInstance>,
    /// Absent in a handoff from a citrusd without socket activation.
    #[serde(default)]
    pub sockets: Vec<HandedSocket>,
}

/// Reads (and removes) the handoff this process was started with, if any.
pub fn take() -> Option<Handoff> {
    let path = PathBuf::from(std::env::var_os(ENV)?);
    // SAFETY: called once at start-up before any other thread reads the environment.
    unsafe { std::env::remove_var(ENV) };
    let bytes = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    match serde_json::from_slice(&bytes) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(path = %path.display(), "unreadable handoff ({e}); starting apps afresh");
            None
        }
    }
}

/// Writes `handoff` into `state_dir` and re-executes citrusd with the same arguments. Returns only
/// on failure.
pub fn exec(handoff: &Handoff, state_dir: &Path) -> io::Error {
    match std::env::current_exe() {
        Ok(exe) => exec_program(handoff, state_dir, &exe),
        Err(e) => e,
    }
}

/// As [`exec`], running the binary at `exe` (a self-update renamed a new one there).
pub fn exec_program(handoff: &Handoff, state_dir: &Path, exe: &Path) -> io::Error {
    let path = state_dir.join("handoff.json");
    let json = serde_json::to_vec(handoff).expect("handoff serialises");
    if let Err(e) = write_atomic(&path, &json, 0o600) {
        return e;
    }
    let pipes = handoff.instances.iter().flat_map(|i| [i.out_fd, i.err_fd]);
    let sockets = handoff.sockets.iter().map(|s| s.fd);
    for fd in pipes.chain(sockets) {
        // SAFETY: fcntl on descriptors the instance actors and the apps' socket sets own and
        // keep open until exec.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
        }
    }
    let cstr =
        |b: &[u8]| CString::new(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let program = match cstr(exe.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let args: Result<Vec<CString>, io::Error> =
        std::env::args_os().map(|a| cstr(a.as_bytes())).collect();
    let args = match args {
        Ok(a) => a,
        Err(e) => return e,
    };
    // SAFETY: citrusd is single-threaded apart from blocking-pool threads, which exec ends.
    unsafe { std::env::set_var(ENV, &path) };
    tracing::info!(exe = %exe.display(), instances = handoff.instances.len(), "re-executing citrusd");
    execv_when_not_busy(&program, &args)
}

/// How long [`execv_when_not_busy`] waits out a binary still open for writing.
const TEXT_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `execv`, retried while the kernel answers ETXTBSY: the new binary was just written, and an app
/// forked meanwhile holds a copy of that write descriptor until its own `exec` closes it, a matter
/// of milliseconds. Gives up after [`TEXT_BUSY_WAIT`]; returns only on failure. Allocates nothing
/// after building argv, so it is safe in a forked child too.
fn execv_when_not_busy(program: &CString, args: &[CString]) -> io::Error {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let pause = std::time::Duration::from_millis(10);
    let mut waited = std::time::Duration::ZERO;
    loop {
        // SAFETY: program and argv are NUL-terminated C strings alive for the call, and argv ends
        // with a null pointer, as execv requires.
        unsafe { libc::execv(program.as_ptr(), argv.as_ptr()) };
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ETXTBSY) || waited >= TEXT_BUSY_WAIT {
            return e;
        }
        std::thread::sleep(pause);
        waited += pause;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use crate::sys::testing::eventually;

    #[test]
    fn exec_waits_until_the_new_binary_is_no_longer_open_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("true");
        let mut writer = std::fs::File::create(&exe).unwrap();
        writer
            .write_all(&std::fs::read("/bin/true").unwrap())
            .unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = CString::new(exe.as_os_str().as_bytes()).unwrap();
        let args = [program.clone()];
        // SAFETY: the child closes its copy of the write descriptor, execs or exits; glibc's fork
        // leaves its allocator usable in the child.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: the child's own copy of the descriptor.
            unsafe { libc::close(writer.as_raw_fd()) };
            let e = execv_when_not_busy(&program, &args);
            let code = if e.raw_os_error() == Some(libc::ETXTBSY) {
                3
            } else {
                4
            };
            // SAFETY: leaves the forked child without running the test harness's exit path.
            unsafe { libc::_exit(code) };
        }
        // The binary stays open for writing here a while: a plain execv fails at once (ETXTBSY).
        std::thread::sleep(Duration::from_millis(150));
        drop(writer);
        let mut status = 0;
        assert!(
            // SAFETY: waits for the child forked above.
            eventually(|| unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid),
            "the child neither ran the binary nor gave up"
        );
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "3: gave up on ETXTBSY, 4: another error"
        );
    }
}
