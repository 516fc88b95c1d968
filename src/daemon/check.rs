//! `citrusd --check`: the config read as citrusd would read it (every diagnostic at once), then
//! what only the host can tell: each app's and command job's user, working directory, env file
//! and program (looked up in `PATH` as the spawn will look it up), whether the state and log
//! directories are writable, and when each schedule fires next. Prints a one-screen plan on
//! stdout and the problems on stderr; nothing is started, bound, locked or written.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::unistd::{AccessFlags, Gid, Uid};

use crate::config::{read_env_file, AppConfig, Config, ConfigError};
use crate::supervisor::spawn::{resolve_user, Spec};
use crate::sys::time::rfc3339;

/// glibc's `execvp` search path when the environment has no `PATH` (`_CS_PATH`).
const DEFAULT_EXEC_PATH: &str = "/bin:/usr/bin";

/// What `--check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// The plan, one screen of text.
    pub plan: String,
    /// Every problem, one line each; empty when all is well.
    pub problems: Vec<String>,
    /// Things worth knowing that do not stop citrusd (e.g. an app not deployed yet).
    pub notes: Vec<String>,
}

/// Checks the config at `path` (with `--env` `env`); `socket` is the `--socket` flag.
pub fn check(path: &Path, env: Option<&str>, socket: Option<PathBuf>, now: SystemTime) -> Report {
    let mut report = Report::default();
    let (config, invalid) = match Config::load_partial(path, env) {
        Ok(found) => found,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    if let Some(ConfigError::Invalid(diagnostics)) = invalid {
        report
            .problems
            .extend(diagnostics.iter().map(ToString::to_string));
    }
    report.check_dir("state_dir", &config.daemon.state_dir);
    report.check_dir("log_dir", &config.daemon.log_dir);
    for app in config.apps.values() {
        report.check_app(app);
    }
    for job in config.jobs.values() {
        if let Some(spec) = Spec::job(&job.kind) {
            report.check_spawn(&format!("jobs.{}", job.name), &spec, false);
        }
    }
    let socket = super::socket::choose(socket, config.daemon.socket.as_deref());
    report.plan = plan(&config, &socket, now);
    report
}

impl Report {
    fn problem(&mut self, what: &str, message: impl std::fmt::Display) {
        self.problems.push(format!("{what}: {message}"));
    }

    fn check_app(&mut self, app: &AppConfig) {
        let what = format!("apps.{}", app.name);
        // An app that deploys runs in `<root>/current`, which exists once it has been deployed.
        let undeployed = app.deploy.as_ref().is_some_and(|deploy| {
            app.cwd.as_deref() == Some(deploy.current().as_path()) && !deploy.current().exists()
        });
        if undeployed {
            self.notes.push(format!(
                "{what}: not deployed yet (no {}); `citrusctl deploy {}` first",
                app.cwd.as_deref().unwrap_or(Path::new("")).display(),
                app.name
            ));
        }
        self.check_spawn(&what, &Spec::app(app), undeployed);
    }

    /// The spawn's own checks, in its order, plus the program's lookup. `undeployed`: the
    /// working directory and a program inside it are not there yet, and need not be.
    fn check_spawn(&mut self, what: &str, run: &Spec<'_>, undeployed: bool) {
        if let Some(cwd) = run.cwd {
            if !undeployed && !cwd.is_dir() {
                self.problem(
                    what,
                    format_args!("working directory {} does not exist", cwd.display()),
                );
            }
        }
        // The identity the program runs with: the user's, else citrusd's own.
        let identity = match run.user {
            Some(user) => match resolve_user(user) {
                Ok(id) => {
                    let groups = match id.groups.is_empty() {
                        true => own_groups(),
                        false => id.groups.clone(),
                    };
                    Some((id.uid, id.gid, groups))
                }
                Err(e) => {
                    self.problem(what, e);
                    None
                }
            },
            None => Some((
                Uid::effective().as_raw(),
                Gid::effective().as_raw(),
                own_groups(),
            )),
        };
        // The child's PATH: inherited, then the env file, then `env` (later wins).
        let mut path = run
            .inherit_env
            .iter()
            .any(|name| name == "PATH")
            .then(|| std::env::var_os("PATH"))
            .flatten();
        if let Some(file) = run.env_file {
            match read_env_file(file) {
                Ok(vars) => {
                    if let Some((_, value)) = vars.into_iter().rev().find(|(k, _)| k == "PATH") {
                        path = Some(value.into());
                    }
                }
                Err(e) => self.problem(what, e),
            }
        }
        if let Some(value) = run.env.get("PATH") {
            path = Some(value.into());
        }
        let Some(program) = run.command.first() else {
            return; // the config's diagnostics already say so
        };
        if undeployed && !Path::new(program).is_absolute() {
            return;
        }
        let Some((uid, gid, groups)) = identity else {
            return;
        };
        if let Err(message) =
            find_program(program, path, |file| executable_by(file, uid, gid, &groups))
        {
            self.problem(what, message);
        }
    }

    /// A directory citrusd writes into: writable if it exists, else creatable (its nearest
    /// existing ancestor a writable directory). Checked with `access(W_OK|X_OK)` for the
    /// effective ids (which sees a read-only mount), so nothing is written.
    fn check_dir(&mut self, key: &str, dir: &Path) {
        let mut at = dir;
        let why = loop {
            match std::fs::metadata(at) {
                Ok(meta) if meta.is_dir() => {
                    let flags = AccessFlags::W_OK | AccessFlags::X_OK;
                    let at_flags = nix::fcntl::AtFlags::AT_EACCESS;
                    match nix::unistd::faccessat(nix::fcntl::AT_FDCWD, at, flags, at_flags) {
                        Ok(()) => return,
                        Err(errno) => break format!("is not writable: {errno}"),
                    }
                }
                Ok(_) => break "is not a directory".to_owned(),
                Err(_) => match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    _ => return,
                },
            }
        };
        let message = match at == dir {
            true => format!("{} {why}", dir.display()),
            false => format!(
                "{} cannot be created: {} {why}",
                dir.display(),
                at.display()
            ),
        };
        self.problem(&format!("daemon.{key}"), message);
    }
}

/// citrusd's supplementary groups.
fn own_groups() -> Vec<libc::gid_t> {
    nix::unistd::getgroups()
        .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_default()
}

/// Whether `file` is a regular file that `uid` (primary group `gid`, also in `groups`) may
/// execute, by its mode bits (root: any execute bit).
fn executable_by(file: &Path, uid: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a file".to_owned());
    }
    let mode = meta.permissions().mode();
    let bit = if uid == 0 {
        0o111
    } else if meta.uid() == uid {
        0o100
    } else if meta.gid() == gid || groups.contains(&meta.gid()) {
        0o010
    } else {
        0o001
    };
    match mode & bit {
        0 => Err(format!(
            "not executable by uid {uid} (mode {:o})",
            mode & 0o7777
        )),
        _ => Ok(()),
    }
}

/// Resolves `program` as `execvp` does: a name with a `/` is used as is, a bare name is looked
/// up in each directory of `path` (the child's `PATH`; without one glibc's default), the first
/// executable file winning.
fn find_program(
    program: &str,
    path: Option<OsString>,
    executable: impl Fn(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    if program.contains('/') {
        let file = PathBuf::from(program);
        return executable(&file)
            .map(|()| file)
            .map_err(|why| format!("command {program:?}: {why}"));
    }
    let path = path.unwrap_or_else(|| DEFAULT_EXEC_PATH.into());
    for dir in path.as_bytes().split(|&b| b == b':') {
        // An empty entry is the current directory, as for execvp.
        let dir = match dir.is_empty() {
            true => Path::new("."),
            false => Path::new(std::ffi::OsStr::from_bytes(dir)),
        };
        let file = dir.join(program);
        if executable(&file).is_ok() {
            return Ok(file);
        }
    }
    Err(format!(
        "command {program:?} not found in PATH {}; give its absolute path or set PATH in `env`",
        path.to_string_lossy()
    ))
}

/// The plan: daemon paths, apps, jobs with their next run, fleet, listening sockets.
fn plan(config: &Config, socket: &Path, now: SystemTime) -> String {
    let mut out = String::new();
    let daemon = &config.daemon;
    let _ = writeln!(out, "config     {}", config.path.display());
    if let Some(env) = &config.env {
        let _ = writeln!(out, "env        {env}");
    }
    let _ = writeln!(out, "state_dir  {}", daemon.state_dir.display());
    let _ = writeln!(out, "log_dir    {}", daemon.log_dir.display());
    let _ = writeln!(out, "\napps ({}), in start order:", config.apps.len());
    for name in config.start_order() {
        let app = &config.apps[&name];
        let cwd = app.cwd.as_deref().unwrap_or(Path::new("-"));
        let _ = writeln!(
            out,
            "  {name:<16} {}x  user {:<10} cwd {}  {}{}",
            app.instances,
            app.user.as_deref().unwrap_or("-"),
            cwd.display(),
            shell_words(&app.command),
            if app.autostart {
                ""
            } else {
                "  (no autostart)"
            },
        );
        if let Some(cron) = &app.cron_restart {
            let _ = writeln!(
                out,
                "  {:<16} cron_restart {:?}, next {}",
                "",
                cron.expr(),
                next(cron, now)
            );
        }
    }
    let _ = writeln!(out, "\njobs ({}):", config.jobs.len());
    for job in config.jobs.values() {
        let _ = writeln!(
            out,
            "  {:<16} {:<16} {:<16} next {}",
            job.name,
            job.kind.name(),
            job.schedule.expr(),
            next(&job.schedule, now)
        );
    }
    let fleet = match &config.fleet {
        Some(fleet) => format!("on: {} as {:?}", fleet.engine_url, fleet.agent_id),
        None => "off".to_owned(),
    };
    let _ = writeln!(out, "\nfleet      {fleet}");
    let _ = writeln!(out, "listen     control socket {}", socket.display());
    if let Some(metrics) = daemon.metrics_listen {
        let _ = writeln!(out, "           metrics http://{metrics}/metrics");
    }
    for app in config.apps.values() {
        for addr in &app.listen {
            let _ = writeln!(out, "           {} (app {})", addr, app.name);
        }
    }
    out
}

/// The next firing of `cron`, as RFC 3339 UTC, or `never`.
fn next(cron: &crate::config::CronSchedule, now: SystemTime) -> String {
    cron.next_after(now)
        .map_or_else(|| "never".to_owned(), rfc3339)
}

/// An argv as one line, arguments with spaces or quotes quoted.
fn shell_words(argv: &[String]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(
            |arg| match arg.is_empty() || arg.contains([' ', '"', '\'']) {
                true => format!("{arg:?}"),
                false => arg.clone(),
            },
        )
        .collect();
    words.join(" ")
}

/// Runs the check and prints it: the plan on stdout, then the problems on stderr. The exit
/// code: 0 when all is well, 2 on any problem.
pub fn run(path: &Path, env: Option<&str>, socket: Option<PathBuf>) -> u8 {
    let report = check(path, env, socket, SystemTime::now());
    print!("{}", report.plan);
    for note in &report.notes {
        println!("note: {note}");
    }
    if report.problems.is_empty() {
        println!("\nconfig OK");
        return 0;
    }
    eprintln!(
        "citrusd --check: {} problem{} in {}:",
        report.problems.len(),
        if report.problems.len() == 1 { "" } else { "s" },
        path.display()
    );
    for problem in &report.problems {
        eprintln!("  {problem}");
    }
    2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup_follows_path_and_slashes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = Some(OsString::from(format!("/nonexistent:{}", bin.display())));
        let as_user = |file: &Path| executable_by(file, 4242, 4242, &[]);
        // Not executable: not found, and named with its PATH.
        let err = find_program("tool", path.clone(), as_user).unwrap_err();
        assert!(err.contains("not found in PATH /nonexistent:"), "{err}");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program("tool", path.clone(), as_user).unwrap(), tool);
        // A path with a slash is not looked up.
        let err = find_program("./tool", path, as_user).unwrap_err();
        assert!(err.contains("\"./tool\""), "{err}");
        // No PATH: glibc's default, where sh is.
        assert!(find_program("sh", None, as_user).is_ok());
        assert!(find_program("sh", Some(OsString::from("/nonexistent")), as_user).is_err());
    }

    #[test]
    fn mode_bits_for_owner_group_other_and_root() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let (owner, group) = (meta.uid(), meta.gid());
        let set = |mode| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode));
        set(0o010).unwrap();
        assert!(executable_by(&file, 0, 0, &[]).is_ok());
        assert!(executable_by(&file, owner.wrapping_add(1).max(1), group, &[]).is_ok());
        assert!(executable_by(&file, owner.wrapping_add(1).max(1), 4242, &[]).is_err());
        assert!(executable_by(&file, owner.wrapping_add(1).max(1), 4242, &[group]).is_ok());
        set(0o700).unwrap();
        let other = owner.wrapping_add(1).max(1);
        assert!(executable_by(&file, other, 4242, &[]).is_err());
        assert!(executable_by(dir.path(), 0, 0, &[]).is_err());
    }
}
