//! Turning an app's config into a `Command`: argv (never a shell), working directory, the
//! environment recomputed from the config at every start, the markers that identify our processes,
//! the pre-exec steps (new session, user switch) and, for an app with `listen`, the passing of
//! its sockets (socket activation).

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use super::listen::Bound;
use crate::config::{read_env_file, AppConfig, EnvFileError, JobKind, MAX_LISTEN};

/// Environment variables that mark a process as one of ours: the supervisor (derived from the
/// state directory), the app and the instance. They survive double forks and let citrusd find the
/// remains of an app after its own crash.
#[derive(Clone, Debug)]
pub struct Marker {
    pub supervisor_id: String,
}

/// An environment variable: (name, value).
pub type EnvVar = (String, String);

impl Marker {
    pub const SUPERVISOR_VAR: &'static str = "CITRUS_SUPERVISOR";

    /// The variable every process this supervisor ever started carries.
    pub fn supervisor_var(&self) -> EnvVar {
        (Self::SUPERVISOR_VAR.into(), self.supervisor_id.clone())
    }

    /// The variables every process of instance `index` of `app` carries.
    pub fn instance_vars(&self, app: &str, index: u32) -> Vec<EnvVar> {
        vec![
            self.supervisor_var(),
            ("CITRUS_APP".into(), app.into()),
            ("CITRUS_INSTANCE".into(), index.to_string()),
        ]
    }

    /// The variables every process of job `job` carries.
    pub fn job_vars(&self, job: &str) -> Vec<EnvVar> {
        vec![self.supervisor_var(), ("CITRUS_JOB".into(), job.into())]
    }

    /// [`Marker::instance_vars`] as `KEY=VALUE`, the way `/proc/PID/environ` shows them.
    pub fn instance_entries(&self, app: &str, index: u32) -> Vec<String> {
        entries(&self.instance_vars(app, index))
    }

    /// [`Marker::supervisor_var`] as `KEY=VALUE`.
    pub fn supervisor_entry(&self) -> String {
        entries(&[self.supervisor_var()]).remove(0)
    }
}

/// Variables as the `KEY=VALUE` entries of `/proc/PID/environ`.
pub fn entries(vars: &[EnvVar]) -> Vec<String> {
    vars.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Why an instance could not be spawned; shown as the app's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("working directory {0} does not exist")]
    MissingCwd(String),
    #[error(transparent)]
    EnvFile(#[from] EnvFileError),
    /// `errno`: the lookup itself failed (e.g. EMFILE opening `/etc/passwd`).
    #[error("user {user:?}: {reason}")]
    User {
        user: String,
        reason: String,
        errno: Option<nix::errno::Errno>,
    },
    #[error("cannot start {program:?}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl SpawnError {
    /// True when the spawn failed for a momentary shortage of descriptors or processes (see
    /// [`crate::sys::is_resource_shortage`]), be it in the exec, reading the env file or
    /// looking up the user: worth retrying, not the app's fault.
    pub fn is_resource_shortage(&self) -> bool {
        match self {
            SpawnError::Exec { source, .. }
            | SpawnError::EnvFile(EnvFileError::Read { source, .. }) => {
                crate::sys::is_resource_shortage(source)
            }
            SpawnError::User {
                errno: Some(errno), ..
            } => crate::sys::is_resource_shortage(&std::io::Error::from(*errno)),
            _ => false,
        }
    }
}

/// The uid/gid/groups to switch to, resolved before the fork (reading /etc/passwd is not
/// async-signal-safe).
pub(crate) struct Identity {
    pub(crate) uid: libc::uid_t,
    pub(crate) gid: libc::gid_t,
    /// Supplementary groups; empty when the user is citrusd's own (no switch happens).
    pub(crate) groups: Vec<libc::gid_t>,
    home: String,
    name: String,
}

/// Looks `name` up as a spawn does: an unknown user, or another user while citrusd is not
/// root, is an error.
pub(crate) fn resolve_user(name: &str) -> Result<Identity, SpawnError> {
    let err = |reason: String| SpawnError::User {
        user: name.to_string(),
        reason,
        errno: None,
    };
    let failed = |errno: nix::errno::Errno, what: &str| SpawnError::User {
        user: name.to_string(),
        reason: format!("{what}{errno}"),
        errno: Some(errno),
    };
    let user = User::from_name(name)
        .map_err(|e| failed(e, "cannot look it up: "))?
        .ok_or_else(|| err("no such user".into()))?;
    if user.uid == Uid::effective() {
        return Ok(Identity {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: Vec::new(),
            home: user.dir.display().to_string(),
            name: user.name,
        });
    }
    if !Uid::effective().is_root() {
        return Err(err(
            "citrusd must run as root to start apps as another user".into(),
        ));
    }
    let cname = std::ffi::CString::new(name).map_err(|e| err(e.to_string()))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| failed(e, "cannot list groups: "))?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    Ok(Identity {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        home: user.dir.display().to_string(),
        name: user.name,
    })
}

/// What to run, wherever it comes from (an app instance, a `command` job).
pub struct Spec<'a> {
    pub command: &'a [String],
    pub cwd: Option<&'a Path>,
    pub user: Option<&'a str>,
    pub inherit_env: &'a [String],
    pub env_file: Option<&'a Path>,
    pub env: &'a BTreeMap<String, String>,
    /// Set last, over everything else: citrusd's own variables and markers.
    pub extra: Vec<EnvVar>,
}

impl<'a> Spec<'a> {
    /// The spec of `app`, without citrusd's variables.
    pub fn app(app: &'a AppConfig) -> Spec<'a> {
        Spec {
            command: &app.command,
            cwd: app.cwd.as_deref(),
            user: app.user.as_deref(),
            inherit_env: &app.inherit_env,
            env_file: app.env_file.as_deref(),
            env: &app.env,
            extra: Vec::new(),
        }
    }

    /// The spec of instance `index` of `app`, with its markers.
    pub fn instance(app: &'a AppConfig, index: u32, marker: &Marker) -> Spec<'a> {
        let mut extra = marker.instance_vars(&app.name, index);
        extra.push(("NODE_APP_INSTANCE".into(), index.to_string()));
        Spec {
            extra,
            ..Spec::app(app)
        }
    }

    /// The spec of a `command` job, without citrusd's variables; `None` for other kinds.
    pub fn job(kind: &'a JobKind) -> Option<Spec<'a>> {
        let JobKind::Command {
            command,
            env,
            cwd,
            user,
            inherit_env,
        } = kind
        else {
            return None;
        };
        Some(Spec {
            command,
            cwd: Some(cwd),
            user: user.as_deref(),
            inherit_env,
            env_file: None,
            env,
            extra: Vec::new(),
        })
    }
}

/// Builds the command for `spec`. Reads `env_file` now, so every start sees the file's current
/// contents.
pub fn command(spec: &Spec<'_>) -> Result<Command, SpawnError> {
    let (mut cmd, env) = prepare(spec)?;
    cmd.env_clear().envs(env);
    Ok(cmd)
}

/// The command, working directory, identity switch and environment of `spec`; the environment
/// is not installed in the command yet.
fn prepare(spec: &Spec<'_>) -> Result<(Command, Vec<(OsString, OsString)>), SpawnError> {
    if let Some(cwd) = spec.cwd {
        if !cwd.is_dir() {
            return Err(SpawnError::MissingCwd(cwd.display().to_string()));
        }
    }
    let identity = spec.user.map(resolve_user).transpose()?;

    let mut env: Vec<(OsString, OsString)> = Vec::new();
    for name in spec.inherit_env {
        if let Some(v) = std::env::var_os(name) {
            set_var(&mut env, name.into(), v);
        }
    }
    if let Some(id) = &identity {
        set_var(&mut env, "HOME".into(), id.home.clone().into());
        set_var(&mut env, "USER".into(), id.name.clone().into());
        set_var(&mut env, "LOGNAME".into(), id.name.clone().into());
    }
    if let Some(path) = spec.env_file {
        let vars = read_env_file(path)?;
        for (k, v) in vars {
            set_var(&mut env, k.into(), v.into());
        }
    }
    for (k, v) in spec.env {
        set_var(&mut env, k.into(), v.into());
    }
    for (k, v) in &spec.extra {
        set_var(&mut env, k.into(), v.into());
    }

    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..]);
    if let Some(cwd) = spec.cwd {
        cmd.current_dir(cwd);
    }
    let ids = identity.map(|id| (id.uid, id.gid, id.groups));
    let fd_limit = crate::sys::app_fd_limit();
    // SAFETY: the closure runs in the child between fork and exec, so it may only make
    // async-signal-safe calls: setsid, setrlimit, setgroups, setgid and setuid are plain syscalls,
    // and every value it uses (the id vector, the limit) was built before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(limit) = &fd_limit {
                libc::setrlimit(libc::RLIMIT_NOFILE, limit);
            }
            if let Some((uid, gid, groups)) = &ids {
                if libc::getuid() == 0 && libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgid(*gid) < 0 || libc::setuid(*uid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok((cmd, env))
}

/// The command of an instance of an app with `listen` (socket activation): as [`command`], plus
/// `sockets` at fds 3, 4, … (without close-on-exec), `LISTEN_FDS`, `LISTEN_FDNAMES` and
/// `LISTEN_PID` (the child's own pid, written after the fork). Keep the returned [`FdPlugs`]
/// until the command has been spawned.
///
/// std installs the environment it builds only after the pre-exec closures have run, and it
/// builds one only if the command's environment was changed. So this command's environment is
/// left alone; its own `envp` array is built here, before the fork, with a fixed-width
/// `LISTEN_PID=` slot, and the closure fills the slot and points `environ` at the array; std's
/// `execvp` then passes `environ` on (std `sys/process/unix/unix.rs`, `do_exec`).
pub fn activated_command(
    spec: &Spec<'_>,
    sockets: &Bound,
) -> Result<(Command, FdPlugs), SpawnError> {
    let (mut cmd, mut env) = prepare(spec)?;
    let fds = sockets.fds();
    let count = fds.len();
    if count > MAX_LISTEN {
        return Err(exec_error(
            spec.command,
            std::io::Error::other(format!("{count} sockets; at most {MAX_LISTEN} are passed")),
        ));
    }
    set_var(&mut env, "LISTEN_FDS".into(), count.to_string().into());
    set_var(&mut env, "LISTEN_FDNAMES".into(), sockets.names().into());
    env.retain(|(k, _)| k != "LISTEN_PID");
    let mut envp = Envp::new(&env).map_err(|e| exec_error(spec.command, e))?;
    let mut sources = [-1; MAX_LISTEN];
    sources[..count].copy_from_slice(&fds);
    // Every descriptor std opens for the spawn (its exec-error channel above all) must lie above
    // the range the sockets go to, or placing a socket there would close it in the child.
    let plugs =
        FdPlugs::fill(FIRST_LISTEN_FD + count as RawFd).map_err(|e| exec_error(spec.command, e))?;
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (getpid, fcntl, dup2, close) and plain memory writes: into the
    // `LISTEN_PID=` slot and the `environ` pointer, both set up before the fork; nothing
    // allocates. The source descriptors are citrusd's sockets, open until the spawn returns (the
    // caller holds `sockets`). Each is first duplicated above the target range (close-on-exec),
    // so that placing one at its target cannot close another still to be placed; `dup2` clears
    // close-on-exec on the target. `environ` is only read again by the `execvp` that follows.
    unsafe {
        cmd.pre_exec(move || {
            let pid = libc::getpid();
            envp.set_pid(pid);
            let target = |i: usize| FIRST_LISTEN_FD + i as RawFd;
            let mut high = [-1; MAX_LISTEN];
            for (dup, &source) in high.iter_mut().zip(&sources[..count]) {
                *dup = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, target(count));
                if *dup < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &dup) in high[..count].iter().enumerate() {
                if libc::dup2(dup, target(i)) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(dup);
            }
            std::ptr::addr_of_mut!(environ).write(envp.pointers());
            Ok(())
        });
    }
    Ok((cmd, plugs))
}

/// The first descriptor a socket-activated app receives (`SD_LISTEN_FDS_START`).
const FIRST_LISTEN_FD: RawFd = 3;

extern "C" {
    /// The C library's environment, which `execvp` passes to the new program.
    static mut environ: *const *const libc::c_char;
}

/// `LISTEN_PID=` and room for any pid (at most 10 digits) and its NUL.
const PID_PREFIX: &[u8] = b"LISTEN_PID=";
const PID_DIGITS: usize = 10;

/// A NUL-terminated `envp` array built before the fork, with a `LISTEN_PID=` entry whose value
/// is written in the child.
struct Envp {
    /// Owns the entries the pointers point into.
    _entries: Vec<CString>,
    /// `LISTEN_PID=` then [`PID_DIGITS`] + 1 bytes; written only through `pid_slot`.
    _pid_entry: Box<[u8]>,
    /// Where the pid's digits go, inside `_pid_entry`.
    pid_slot: *mut u8,
    /// The entries, then the pid entry, then NULL.
    pointers: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the heap buffers `Envp` owns, which never move or change
// from other threads; they are written only in the forked child, which has a single thread.
unsafe impl Send for Envp {}
// SAFETY: as above: no shared access writes through the pointers.
unsafe impl Sync for Envp {}

impl Envp {
    fn new(env: &[(OsString, OsString)]) -> std::io::Result<Envp> {
        let entries = env
            .iter()
            .map(|(k, v)| {
                let mut entry = k.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(v.as_bytes());
                CString::new(entry).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the environment variable {k:?} contains a NUL byte"),
                    )
                })
            })
            .collect::<std::io::Result<Vec<CString>>>()?;
        let mut pid_entry = vec![0u8; PID_PREFIX.len() + PID_DIGITS + 1].into_boxed_slice();
        pid_entry[..PID_PREFIX.len()].copy_from_slice(PID_PREFIX);
        // SAFETY: PID_PREFIX.len() is within the buffer, which holds PID_DIGITS + 1 more bytes.
        let pid_slot = unsafe { pid_entry.as_mut_ptr().add(PID_PREFIX.len()) };
        let mut pointers: Vec<*const libc::c_char> = entries.iter().map(|e| e.as_ptr()).collect();
        pointers.push(pid_entry.as_ptr().cast());
        pointers.push(std::ptr::null());
        Ok(Envp {
            _entries: entries,
            _pid_entry: pid_entry,
            pid_slot,
            pointers,
        })
    }

    /// Writes `pid` and a NUL into the `LISTEN_PID=` entry. Async-signal-safe: no allocation.
    fn set_pid(&mut self, pid: libc::pid_t) {
        let mut digits = [0u8; PID_DIGITS + 1];
        let len = pid_digits(pid.unsigned_abs(), &mut digits);
        for (i, &byte) in digits[..=len].iter().enumerate() {
            // SAFETY: `pid_slot` has PID_DIGITS + 1 bytes and `len` is at most PID_DIGITS.
            unsafe { self.pid_slot.add(i).write(byte) };
        }
    }

    fn pointers(&self) -> *const *const libc::c_char {
        self.pointers.as_ptr()
    }
}

/// Writes the decimal digits of `n` and a NUL into `out`; returns the number of digits.
fn pid_digits(mut n: u32, out: &mut [u8; PID_DIGITS + 1]) -> usize {
    let mut reversed = [0u8; PID_DIGITS];
    let mut len = 0;
    loop {
        reversed[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[i] = reversed[len - 1 - i];
    }
    out[len] = 0;
    len
}

/// Placeholders (`/dev/null`, close-on-exec) in every free descriptor below a limit, so that the
/// descriptors opened next land above it. Dropping them frees the numbers again.
pub struct FdPlugs {
    _plugs: Vec<OwnedFd>,
}

impl FdPlugs {
    /// Fills the free descriptors below `limit`. `open` always returns the lowest free
    /// descriptor, so this never disturbs a descriptor in use.
    fn fill(limit: RawFd) -> std::io::Result<FdPlugs> {
        let mut plugs = Vec::new();
        loop {
            let fd = OwnedFd::from(std::fs::File::open("/dev/null")?);
            if fd.as_raw_fd() >= limit {
                return Ok(FdPlugs { _plugs: plugs });
            }
            plugs.push(fd);
        }
    }
}

/// Sets `k` in `env`, replacing an earlier value.
fn set_var(env: &mut Vec<(OsString, OsString)>, k: OsString, v: OsString) {
    env.retain(|(ek, _)| *ek != k);
    env.push((k, v));
}

/// Maps an OS error from `spawn` to a message naming the program.
pub fn exec_error(command: &[String], source: std::io::Error) -> SpawnError {
    SpawnError::Exec {
        program: command.first().cloned().unwrap_or_default(),
        source,
    }
}

/// Enlarges a pipe's buffer (best effort) so a flat-out writer wakes us less often.
pub fn grow_pipe(fd: &impl std::os::fd::AsRawFd, bytes: i32) {
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; failure (e.g. over the system limit) is harmless.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    #[test]
    fn only_a_shortage_of_descriptors_or_processes_is_worth_retrying() {
        let failed = |errno| exec_error(&["app".into()], std::io::Error::from_raw_os_error(errno));
        for errno in [libc::EMFILE, libc::ENFILE, libc::EAGAIN, libc::ENOMEM] {
            assert!(failed(errno).is_resource_shortage(), "errno {errno}");
        }
        for errno in [libc::ENOENT, libc::EACCES, libc::ENOEXEC] {
            assert!(!failed(errno).is_resource_shortage(), "errno {errno}");
        }
        assert!(!SpawnError::MissingCwd("/nope".into()).is_resource_shortage());
        // Reading the env file and looking up the user can run short of descriptors too.
        let env_file = |errno| {
            SpawnError::from(EnvFileError::Read {
                path: "/etc/app.env".into(),
                source: std::io::Error::from_raw_os_error(errno),
            })
        };
        assert!(env_file(libc::EMFILE).is_resource_shortage());
        assert!(!env_file(libc::ENOENT).is_resource_shortage());
        let user = |errno| SpawnError::User {
            user: "app".into(),
            reason: "cannot look it up".into(),
            errno,
        };
        assert!(user(Some(nix::errno::Errno::ENFILE)).is_resource_shortage());
        assert!(!user(None).is_resource_shortage());
    }

    #[test]
    fn pid_digits_fill_the_slot() {
        for (pid, text) in [
            (0, "0"),
            (7, "7"),
            (4_194_304, "4194304"),
            (u32::MAX, "4294967295"),
        ] {
            let mut out = [b'x'; PID_DIGITS + 1];
            let len = pid_digits(pid, &mut out);
            assert_eq!(&out[..len], text.as_bytes());
            assert_eq!(out[len], 0);
        }
    }

    #[test]
    fn envp_ends_with_the_pid_entry_and_null() {
        let env = [("A".into(), "1".into()), ("B".into(), "two words".into())];
        let mut envp = Envp::new(&env).unwrap();
        envp.set_pid(12_345_678);
        envp.set_pid(42);
        let entries: Vec<String> = envp.pointers[..envp.pointers.len() - 1]
            .iter()
            // SAFETY: every pointer but the last points to a NUL-terminated entry `envp` owns.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["A=1", "B=two words", "LISTEN_PID=42"]);
        assert!(envp.pointers.last().unwrap().is_null());
        let nul = [("BAD".into(), "a\0b".into())];
        let err = Envp::new(&nul).err().unwrap().to_string();
        assert!(err.contains("\"BAD\" contains a NUL byte"), "{err}");
    }
}
