//! The `citrusd` config file (TOML): loading, validation with positioned diagnostics for every
//! problem at once, the effective per-app configuration (`[defaults]` merged, `--env` chosen),
//! scheduled jobs, notifications and the fleet agent.
//!
//! Reading happens in three steps: toml parses the text into a spanned document; `schema` reads it
//! section by section into layers of spanned values (unknown keys and bad values are recorded, not
//! fatal, and checks within a table run); then checks across sections (`after`, cycles, a health
//! job's `apps`) run before the layers are resolved into [`Config`].

mod cron;
mod deploy;
mod diag;
mod engine;
mod envfile;
mod fleet;
mod jobs;
mod listen;
mod probe;
mod schema;
mod units;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{geteuid, User};
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use cron::{CronSchedule, Timezone};
pub use deploy::{DeployConfig, DeployHealth, DeploySource, DEFAULT_HEALTH_TIMEOUT};
pub use diag::{ConfigError, Diagnostic};
pub use engine::{Database, DigitalOceanConfig, EngineConfig, InstallConfig, LocalAgentConfig};
pub use envfile::{read_env_file, EnvFileError};
pub use fleet::{FleetConfig, Secret, SiteTemplates, UpdateConfig};
pub use jobs::{glob_match, EventKind, JobConfig, JobKind, NotifyConfig};
pub use listen::{ListenAddr, MAX_LISTEN};
pub use probe::{HealthConfig, ProbeTarget, ReadyCheck, ReadyConfig};
pub use units::{
    format_duration, format_size, parse_duration, parse_signal, parse_size, MAX_DURATION,
};
pub use validate::{
    check_command, check_cwd, check_env, check_env_name, check_instances, validate_app, InvalidApp,
    MAX_INSTANCES,
};

use diag::{suggest, Diagnostics};
use schema::{value, AppLayer, CommandValue, DaemonLayer, Field, RawConfig};

/// A loaded and validated config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file, absolutised (not canonicalised).
    pub path: PathBuf,
    /// The `--env NAME` the apps' environments were chosen with.
    pub env: Option<String>,
    /// `[daemon]`, with defaults filled in.
    pub daemon: DaemonConfig,
    /// `[defaults]`, kept to build apps added at run time.
    pub defaults: AppDefaults,
    /// Effective per-app config: defaults merged in, env chosen.
    pub apps: BTreeMap<String, AppConfig>,
    /// Scheduled jobs.
    pub jobs: BTreeMap<String, JobConfig>,
    /// `[notify]`, with defaults filled in.
    pub notify: NotifyConfig,
    /// `[fleet]`, if the file has one.
    pub fleet: Option<FleetConfig>,
}

/// The `[defaults]` section as written (opaque).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppDefaults(AppLayer);

/// `[daemon]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    /// Persisted state.
    pub state_dir: PathBuf,
    /// App logs.
    pub log_dir: PathBuf,
    /// Control socket, if set in the file.
    pub socket: Option<PathBuf>,
    /// Group that owns the control socket.
    pub socket_group: Option<String>,
    /// How often memory use is sampled for `max_memory_restart`.
    pub memory_check_interval: Duration,
    /// Where to serve metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// When an exited app is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    /// Never.
    Never,
}

/// The effective configuration of one app.
#[derive(Clone, Debug, PartialEq)]
pub struct AppConfig {
    /// The app's name (a valid file name; see [`validate_app_name`]).
    pub name: String,
    /// Program and arguments; never empty.
    pub command: Vec<String>,
    /// Working directory, absolute; the config file's directory unless set.
    pub cwd: Option<PathBuf>,
    /// Number of instances, from 1 to [`MAX_INSTANCES`].
    pub instances: u32,
    /// User to run as.
    pub user: Option<String>,
    /// `[defaults].env`, then `env`, then `[defaults].env_NAME`, then `env_NAME` (later wins).
    pub env: BTreeMap<String, String>,
    /// Dotenv file, absolute; read by the supervisor at every start, not at load.
    pub env_file: Option<PathBuf>,
    /// Variables passed through from citrusd's own environment.
    pub inherit_env: Vec<String>,
    /// Restart when an instance's memory exceeds this many bytes.
    pub max_memory_restart: Option<u64>,
    /// Start with the daemon.
    pub autostart: bool,
    /// Apps that must be started first.
    pub after: Vec<String>,
    /// Scheduled restarts.
    pub cron_restart: Option<CronSchedule>,
    /// When to restart after an exit.
    pub restart: RestartPolicy,
    /// Crashes within `min_uptime` tolerated before giving up.
    pub max_restarts: u32,
    /// A run shorter than this counts as a crash.
    pub min_uptime: Duration,
    /// Fixed delay before a restart.
    pub restart_delay: Duration,
    /// Base of the exponential restart backoff; zero disables it.
    pub exp_backoff_restart_delay: Duration,
    /// Signal sent to stop an instance.
    pub kill_signal: Signal,
    /// Wait after `kill_signal` before SIGKILL.
    pub kill_timeout: Duration,
    /// Log rotation.
    pub log: LogConfig,
    /// How to tell that the app has started, for apps `after` it.
    pub ready: Option<ReadyConfig>,
    /// Health probing while it runs.
    pub health: Option<HealthConfig>,
    /// Deployments (`[apps.NAME.deploy]`); the app then runs from `<root>/current` by default.
    pub deploy: Option<Arc<DeployConfig>>,
    /// Sockets citrusd binds once and passes to every instance as fds 3, 4, … (socket
    /// activation); Unix paths absolute.
    pub listen: Vec<ListenAddr>,
}

impl AppConfig {
    /// The stop signal's name, e.g. `"SIGTERM"`.
    pub fn kill_signal_name(&self) -> &'static str {
        self.kill_signal.as_str()
    }
}

/// Log rotation of one app.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// Rotate at this size; `None` (written `"0"`) disables size rotation.
    pub max_size: Option<u64>,
    /// Rotated files kept.
    pub keep: u32,
    /// Delete rotated files older than this; `None` (written `"0s"`) keeps them.
    pub max_age: Option<Duration>,
    /// Gzip rotated files.
    pub compress: bool,
    /// Prefix each line with a timestamp.
    pub timestamps: bool,
}

/// Validates an app name: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, not `all`. `Err` is the message.
pub fn validate_app_name(name: &str) -> Result<(), String> {
    validate_name("app", name)
}

/// Validates the name of an app or a job (`what`), as [`validate_app_name`] does.
fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if !is_identifier(name) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Err(format!(
            "invalid {what} name {name:?}: use 1 to 64 letters, digits, `_`, `.` or `-`, \
             starting with a letter or digit"
        ))
    } else if name == "all" {
        Err(format!("the {what} name \"all\" is reserved"))
    } else {
        Ok(())
    }
}

/// Whether `s` is 1 to 64 ASCII letters, digits, `_`, `.` or `-`.
fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Config {
    /// Reads and validates the file. `env` is the `--env NAME`.
    pub fn load(path: &Path, env: Option<&str>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Same from text; `path` is used in messages and its directory for relative paths.
    pub fn parse(text: &str, path: &Path, env: Option<&str>) -> Result<Config, ConfigError> {
        let mut diags = Diagnostics::new(text, path);
        // Only the first syntax error: what toml recovers after one is mostly echoes of it.
        let root = toml::de::DeTable::parse(text).map_err(|error| {
            diags.error(error.span().unwrap_or(0..0), "", error.message());
            diags.take()
        })?;
        let raw = schema::read(&mut diags, root.into_inner());
        check_layers(&mut diags, &raw);
        let abs_path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base = abs_path.parent().unwrap_or(Path::new("/"));
        listen::check(&mut diags, &raw, base);
        let apps: BTreeMap<String, AppConfig> = raw
            .apps
            .iter()
            .map(|app| {
                let config = resolve_app(&app.name, &app.layer, &raw.defaults, base, env);
                (app.name.clone(), config)
            })
            .collect();
        check_cycles(&mut diags, &raw, &apps);
        // Each value was checked where it was read; the resolved apps go through the validator
        // every other source uses too, which catches what only the merge shows.
        if diags.is_empty() {
            for raw_app in &raw.apps {
                if let Err(invalid) = validate_app(&apps[&raw_app.name]) {
                    for problem in invalid.problems {
                        let path = format!("apps.{}", raw_app.name);
                        diags.error(raw_app.span.clone(), path, problem);
                    }
                }
            }
        }
        diags.check()?;

        let jobs = raw
            .jobs
            .iter()
            .filter_map(|job| {
                let config = jobs::resolve_job(&job.name, &job.layer, base)?;
                Some((job.name.clone(), config))
            })
            .collect();
        let fleet = raw
            .fleet
            .as_ref()
            .and_then(|fleet| fleet::resolve(fleet, base));
        Ok(Config {
            daemon: resolve_daemon(&raw.daemon, base),
            path: abs_path,
            env: env.map(str::to_owned),
            defaults: AppDefaults(raw.defaults),
            apps,
            jobs,
            notify: jobs::resolve_notify(&raw.notify),
            fleet,
        })
    }

    /// App names in start order: every app after the apps in its `after`; ties broken by name.
    pub fn start_order(&self) -> Vec<String> {
        let mut waiting: BTreeMap<&str, BTreeSet<&str>> = self
            .apps
            .iter()
            .map(|(name, app)| {
                let deps = app.after.iter().map(String::as_str);
                let deps = deps.filter(|dep| self.apps.contains_key(*dep) && dep != name);
                (name.as_str(), deps.collect())
            })
            .collect();
        let mut ready: BTreeSet<&str> = waiting
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(name, _)| *name)
            .collect();
        let mut order = Vec::with_capacity(waiting.len());
        while let Some(next) = ready.pop_first() {
            waiting.remove(next);
            order.push(next.to_owned());
            for (name, deps) in &mut waiting {
                if deps.remove(next) && deps.is_empty() {
                    ready.insert(name);
                }
            }
        }
        // A validated config has no cycles; stay total anyway.
        order.extend(waiting.keys().map(|name| name.to_string()));
        order
    }

    /// An app added at run time (`citrusctl start --name N -- CMD`, or read back from
    /// `state.json`): `[defaults]` applied, env chosen as for the file's apps, then checked by
    /// [`validate_app`] like every app of the file. A relative `cwd` resolves against the config
    /// file's directory.
    pub fn runtime_app(
        &self,
        name: &str,
        command: Vec<String>,
        instances: u32,
        cwd: Option<PathBuf>,
    ) -> Result<AppConfig, InvalidApp> {
        let mut layer = AppLayer::default();
        layer.fields.command = Some(Field::unspanned(CommandValue(command)));
        layer.fields.cwd = cwd.map(Field::unspanned);
        let base = self.path.parent().unwrap_or(Path::new("/"));
        let mut app = resolve_app(name, &layer, &self.defaults.0, base, self.env.as_deref());
        app.instances = instances;
        validate_app(&app)?;
        Ok(app)
    }
}

/// Checks across sections: `command` in `[defaults]`, app names in `after` and in jobs' `apps`.
fn check_layers(diags: &mut Diagnostics<'_>, raw: &RawConfig) {
    if let Some(command) = &raw.defaults.fields.command {
        diags.error(
            command.key.clone(),
            "defaults.command",
            "`command` cannot be set in [defaults]; give each app its own",
        );
    }
    if let Some(deploy) = &raw.defaults.fields.deploy {
        diags.error(
            deploy.key.clone(),
            "defaults.deploy",
            "`deploy` cannot be set in [defaults]: each app deploys into its own root",
        );
    }
    let names: Vec<&str> = raw.apps.iter().map(|app| app.name.as_str()).collect();
    let layers = raw
        .apps
        .iter()
        .map(|app| (format!("apps.{}", app.name), &app.layer));
    for (path, layer) in std::iter::once(("defaults".to_owned(), &raw.defaults)).chain(layers) {
        let after = layer.fields.after.as_ref();
        check_app_names(diags, &names, after, &format!("{path}.after"));
    }
    for job in &raw.jobs {
        let path = format!("jobs.{}.apps", job.name);
        check_app_names(diags, &names, job.layer.apps.as_ref(), &path);
    }
}

/// Reports each name in `list` (at `path`) that is not one of `apps`.
fn check_app_names(
    diags: &mut Diagnostics<'_>,
    apps: &[&str],
    list: Option<&Field<Vec<Spanned<String>>>>,
    path: &str,
) {
    let key = path.rsplit('.').next().unwrap_or_default();
    for name in list.iter().flat_map(|list| &list.value) {
        if !apps.contains(&name.get_ref().as_str()) {
            let hint = suggest(name.get_ref(), apps.iter().copied())
                .map(|close| format!("; did you mean `{close}`?"))
                .unwrap_or_default();
            let message = format!("`{key}` names unknown app `{}`{hint}", name.get_ref());
            diags.error(name.span(), path, message);
        }
    }
}

/// Reports each `after` cycle once, at the `after` key of its alphabetically first app.
fn check_cycles(diags: &mut Diagnostics<'_>, raw: &RawConfig, apps: &BTreeMap<String, AppConfig>) {
    for cycle in find_cycles(apps) {
        let Some(&first) = cycle.first() else {
            continue;
        };
        let own = raw
            .apps
            .iter()
            .find(|app| app.name == first)
            .and_then(|app| app.layer.fields.after.as_ref());
        let (path, after) = match own {
            Some(after) => (format!("apps.{first}.after"), Some(after)),
            None => (
                "defaults.after".to_owned(),
                raw.defaults.fields.after.as_ref(),
            ),
        };
        let span = after.map_or(0..0, |after| after.key.clone());
        let message = format!(
            "`after` cycle: {} (each app waits for the next)",
            cycle.join(" -> ")
        );
        diags.error(span, path, message);
    }
}

/// Every cycle in the `after` graph, each starting and ending at its smallest name.
fn find_cycles(apps: &BTreeMap<String, AppConfig>) -> BTreeSet<Vec<&str>> {
    #[derive(PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    struct Search<'a> {
        apps: &'a BTreeMap<String, AppConfig>,
        marks: BTreeMap<&'a str, Mark>,
        stack: Vec<&'a str>,
        cycles: BTreeSet<Vec<&'a str>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, name: &'a str, app: &'a AppConfig) {
            self.marks.insert(name, Mark::Active);
            self.stack.push(name);
            for dep in &app.after {
                let Some((dep, dep_app)) = self.apps.get_key_value(dep) else {
                    continue;
                };
                match self.marks.get(dep.as_str()) {
                    None => self.visit(dep, dep_app),
                    Some(Mark::Done) => {}
                    Some(Mark::Active) => {
                        let start = self.stack.iter().position(|n| n == dep).unwrap_or(0);
                        let mut cycle = self.stack[start..].to_vec();
                        let smallest = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
                        cycle.rotate_left(smallest);
                        cycle.extend(cycle.first().copied());
                        self.cycles.insert(cycle);
                    }
                }
            }
            self.stack.pop();
            self.marks.insert(name, Mark::Done);
        }
    }
    let mut search = Search {
        apps,
        marks: BTreeMap::new(),
        stack: Vec::new(),
        cycles: BTreeSet::new(),
    };
    for (name, app) in apps {
        if !search.marks.contains_key(name.as_str()) {
            search.visit(name, app);
        }
    }
    search.cycles
}

/// Merges an app's layer over `[defaults]` and the built-in defaults.
fn resolve_app(
    name: &str,
    app: &AppLayer,
    defaults: &AppLayer,
    base: &Path,
    env_name: Option<&str>,
) -> AppConfig {
    let (own, def) = (&app.fields, &defaults.fields);
    macro_rules! get {
        ($field:ident) => {
            value(&own.$field).or(value(&def.$field))
        };
    }
    let named = env_name.map_or([None, None], |n| {
        [defaults.named_env.get(n), app.named_env.get(n)]
    });
    let env = [def.env.as_ref(), own.env.as_ref()]
        .into_iter()
        .chain(named)
        .flatten()
        .flat_map(|table| &table.value.0)
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    // `after` inherited from [defaults] never makes an app wait for itself.
    let inherited = own.after.is_none();
    let after = get!(after)
        .into_iter()
        .flatten()
        .map(|dep| dep.get_ref().clone())
        .filter(|dep| !(inherited && dep == name))
        .collect();
    // Apps run in the config file's directory (an app with `[deploy]`: in `<root>/current`)
    // unless they name another; a relative program path (`./server`, `bin/app`) is relative to
    // that working directory.
    let deploy_root = value(&own.deploy)
        .and_then(|d| value(&d.root))
        .map(|root| base.join(root).join("current"));
    let cwd = match get!(cwd) {
        Some(cwd) => base.join(cwd),
        None => deploy_root.unwrap_or_else(|| base.to_path_buf()),
    };
    let mut command = get!(command).map_or_else(Vec::new, |c| c.0.clone());
    resolve_program(&mut command, &cwd);
    let mut app = AppConfig {
        name: name.to_owned(),
        command,
        cwd: Some(cwd),
        instances: get!(instances).map_or(1, |n| n.0.max(1)),
        user: get!(user).cloned(),
        env,
        env_file: get!(env_file).map(|file| base.join(file)),
        inherit_env: get!(inherit_env)
            .cloned()
            .unwrap_or_else(default_inherit_env),
        max_memory_restart: get!(max_memory_restart)
            .map(|size| size.0)
            .filter(|&bytes| bytes > 0),
        autostart: get!(autostart).copied().unwrap_or(true),
        after,
        cron_restart: get!(cron_restart).cloned(),
        restart: get!(restart).copied().unwrap_or(RestartPolicy::Always),
        max_restarts: get!(max_restarts).map_or(10, |n| n.0),
        min_uptime: get!(min_uptime).map_or(Duration::from_secs(10), |d| d.0),
        restart_delay: get!(restart_delay).map_or(Duration::ZERO, |d| d.0),
        exp_backoff_restart_delay: get!(exp_backoff_restart_delay).map_or(Duration::ZERO, |d| d.0),
        kill_signal: get!(kill_signal).map_or(Signal::SIGTERM, |s| s.0),
        kill_timeout: get!(kill_timeout).map_or(Duration::from_secs(5), |d| d.0),
        log: LogConfig {
            max_size: Some(get!(log_max_size).map_or(10 << 20, |s| s.0)).filter(|&b| b > 0),
            keep: get!(log_keep).map_or(5, |n| n.0),
            max_age: Some(get!(log_max_age).map_or(Duration::from_secs(14 * 86_400), |d| d.0))
                .filter(|age| !age.is_zero()),
            compress: get!(log_compress).copied().unwrap_or(false),
            timestamps: get!(log_timestamps).copied().unwrap_or(false),
        },
        ready: get!(ready).and_then(probe::resolve_ready),
        health: get!(health).and_then(probe::resolve_health),
        // Never inherited: `listen` in [defaults] is an error.
        listen: listen::resolve(own.listen.as_ref(), base),
        deploy: None,
    };
    app.deploy = value(&own.deploy)
        .and_then(|layer| deploy::resolve(layer, base, &app))
        .map(Arc::new);
    app
}

/// Variables passed through from citrusd's environment unless `inherit_env` says otherwise.
fn default_inherit_env() -> Vec<String> {
    vec!["PATH".to_owned()]
}

/// Makes a relative program path (`./server`, `bin/app`) relative to `cwd`; a bare name is
/// looked up in `PATH` at start.
fn resolve_program(command: &mut [String], cwd: &Path) {
    if let Some(program) = command.first_mut() {
        if program.contains('/') && !Path::new(program.as_str()).is_absolute() {
            let relative: PathBuf = Path::new(program.as_str())
                .components()
                .filter(|c| *c != std::path::Component::CurDir)
                .collect();
            *program = cwd.join(relative).to_string_lossy().into_owned();
        }
    }
}

fn resolve_daemon(layer: &DaemonLayer, base: &Path) -> DaemonConfig {
    let path = |field: &Option<Field<PathBuf>>| field.as_ref().map(|f| base.join(&f.value));
    let is_root = geteuid().is_root();
    let state_dir = path(&layer.state_dir).unwrap_or_else(|| {
        default_state_dir(
            is_root,
            std::env::var_os("XDG_STATE_HOME"),
            std::env::var_os("HOME"),
        )
    });
    let log_dir = path(&layer.log_dir).unwrap_or_else(|| match is_root {
        true => PathBuf::from("/var/log/citrus"),
        false => state_dir.join("logs"),
    });
    DaemonConfig {
        log_dir,
        state_dir,
        socket: path(&layer.socket),
        socket_group: layer.socket_group.as_ref().map(|f| f.value.clone()),
        memory_check_interval: layer
            .memory_check_interval
            .as_ref()
            .map_or(Duration::from_secs(1), |f| f.value.0),
        metrics_listen: layer.metrics_listen.as_ref().map(|f| f.value),
    }
}

/// root: `/var/lib/citrus`; otherwise `$XDG_STATE_HOME/citrus`, else `$HOME/.local/state/citrus`
/// (home from the password database if `HOME` is unset).
fn default_state_dir(is_root: bool, xdg: Option<OsString>, home: Option<OsString>) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/citrus");
    }
    let absolute = |var: Option<OsString>| var.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = absolute(xdg) {
        return xdg.join("citrus");
    }
    absolute(home)
        .or_else(|| {
            User::from_uid(geteuid())
                .ok()
                .flatten()
                .map(|user| user.dir)
        })
        .unwrap_or_else(std::env::temp_dir)
        .join(".local/state/citrus")
}

#[cfg(test)]
mod tests;
