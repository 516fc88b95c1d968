//! Turning an app's config into a `Command`: argv (never a shell), working directory, the
//! environment recomputed from the config at every start, the markers that identify our processes,
//! and the pre-exec steps (new session, user switch).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use crate::config::{read_env_file, AppConfig};

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
    #[error("{0}")]
    EnvFile(String),
    #[error("user {user:?}: {reason}")]
    User { user: String, reason: String },
    #[error("cannot start {program:?}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// The uid/gid/groups to switch to, resolved before the fork (reading /etc/passwd is not
/// async-signal-safe).
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    home: String,
    name: String,
}

fn resolve_user(name: &str) -> Result<Identity, SpawnError> {
    let err = |reason: String| SpawnError::User {
        user: name.to_string(),
        reason,
    };
    let user = User::from_name(name)
        .map_err(|e| err(e.to_string()))?
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
        .map_err(|e| err(format!("cannot list groups: {e}")))?
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
    /// The spec of instance `index` of `app`, with its markers.
    pub fn instance(app: &'a AppConfig, index: u32, marker: &Marker) -> Spec<'a> {
        let mut extra = marker.instance_vars(&app.name, index);
        extra.push(("NODE_APP_INSTANCE".into(), index.to_string()));
        Spec {
            command: &app.command,
            cwd: app.cwd.as_deref(),
            user: app.user.as_deref(),
            inherit_env: &app.inherit_env,
            env_file: app.env_file.as_deref(),
            env: &app.env,
            extra,
        }
    }
}

/// Builds the command for `spec`. Reads `env_file` now, so every start sees the file's current
/// contents.
pub fn command(spec: &Spec<'_>) -> Result<Command, SpawnError> {
    if let Some(cwd) = spec.cwd {
        if !cwd.is_dir() {
            return Err(SpawnError::MissingCwd(cwd.display().to_string()));
        }
    }
    let identity = spec.user.map(resolve_user).transpose()?;

    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut set = |k: OsString, v: OsString| {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    };
    for name in spec.inherit_env {
        if let Some(v) = std::env::var_os(name) {
            set(name.into(), v);
        }
    }
    if let Some(id) = &identity {
        set("HOME".into(), id.home.clone().into());
        set("USER".into(), id.name.clone().into());
        set("LOGNAME".into(), id.name.clone().into());
    }
    if let Some(path) = spec.env_file {
        let vars = read_env_file(path).map_err(|e| SpawnError::EnvFile(e.to_string()))?;
        for (k, v) in vars {
            set(k.into(), v.into());
        }
    }
    for (k, v) in spec.env {
        set(k.into(), v.into());
    }
    for (k, v) in &spec.extra {
        set(k.into(), v.into());
    }

    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..]).env_clear().envs(env);
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
    Ok(cmd)
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
