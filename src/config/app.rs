//! An app (`[apps.NAME]`, and `[defaults]` which has the same keys): its layer as written, its
//! effective configuration once merged over `[defaults]`, and the check of that configuration
//! against every rule of [`super::validate`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use toml::de::DeValue;
use toml::Spanned;

use super::cron::CronSchedule;
use super::deploy::{self, DeployConfig, DeployLayer};
use super::diag::{suggest, Diagnostics};
use super::listen::{self, ListenAddr};
use super::probe::{self, HealthConfig, HealthLayer, ReadyConfig, ReadyLayer};
use super::schema::{layer, value, Field, Layer};
use super::units::{Bounded, DurationValue, SignalValue, SizeValue};
use super::validate::{
    check_command, check_cwd, check_env, check_env_name, check_instances, validate_app_name,
    CommandValue, EnvTable, InstanceCount, InvalidApp,
};

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
    /// Number of instances, from 1 to [`MAX_INSTANCES`](super::validate::MAX_INSTANCES).
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

layer!(
    /// The fixed keys of an app (and of `[defaults]`).
    AppFields {
        command: CommandValue,
        cwd: PathBuf,
        instances: InstanceCount,
        user: String,
        env: EnvTable,
        env_file: PathBuf,
        inherit_env: Vec<String>,
        max_memory_restart: SizeValue,
        autostart: bool,
        after: Vec<Spanned<String>>,
        cron_restart: CronSchedule,
        restart: RestartPolicy,
        max_restarts: Bounded<u32, 0, 1_000_000>,
        min_uptime: DurationValue,
        restart_delay: DurationValue,
        exp_backoff_restart_delay: DurationValue,
        kill_signal: SignalValue,
        kill_timeout: DurationValue,
        log_max_size: SizeValue,
        log_keep: Bounded<u32, 0, 1000>,
        log_max_age: DurationValue,
        log_compress: bool,
        log_timestamps: bool,
        ready: ReadyLayer,
        health: HealthLayer,
        deploy: DeployLayer,
        listen: Vec<Spanned<ListenAddr>>,
    }
);

/// `[apps.NAME]` or `[defaults]`: the fixed keys plus any `env_<NAME>` tables.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct AppLayer {
    pub fields: AppFields,
    pub named_env: BTreeMap<String, Field<EnvTable>>,
}

impl Layer for AppLayer {
    const KEYS: &'static [&'static str] = AppFields::KEYS;
    fn set(
        &mut self,
        diags: &mut Diagnostics<'_>,
        path: &str,
        key: &str,
        key_span: Range<usize>,
        value: Spanned<DeValue<'_>>,
    ) -> bool {
        let name = key.strip_prefix("env_").filter(|name| !name.is_empty());
        // `env_fil = ".env"` is a typo, not an environment named "fil".
        let env_table =
            value.get_ref().is_table() || suggest(key, Self::KEYS.iter().copied()).is_none();
        match name {
            Some(name) if env_table && !Self::KEYS.contains(&key) => {
                if let Some(table) = Field::read(diags, path, key_span, value) {
                    self.named_env.insert(name.to_owned(), table);
                }
                true
            }
            _ => self.fields.set(diags, path, key, key_span, value),
        }
    }
}

/// Merges an app's layer over `[defaults]` and the built-in defaults.
pub(super) fn resolve_app(
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
        .and_then(|layer| deploy::resolve(layer, base, app.ready.as_ref(), app.health.as_ref()))
        .map(Arc::new);
    app
}

/// Variables passed through from citrusd's environment unless `inherit_env` says otherwise.
pub(super) fn default_inherit_env() -> Vec<String> {
    vec!["PATH".to_owned()]
}

/// Makes a relative program path (`./server`, `bin/app`) relative to `cwd`; a bare name is
/// looked up in `PATH` at start.
pub(super) fn resolve_program(command: &mut [String], cwd: &Path) {
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

/// Checks a resolved app against every rule; `Err` lists each problem.
pub fn validate_app(app: &AppConfig) -> Result<(), InvalidApp> {
    let mut problems = Vec::new();
    let mut check = |result: Result<(), String>| problems.extend(result.err());
    check(validate_app_name(&app.name));
    check(check_command(&app.command));
    check(check_instances(i64::from(app.instances)).map(drop));
    for (key, value) in &app.env {
        check(check_env(key, value));
    }
    for key in &app.inherit_env {
        check(check_env_name(key));
    }
    if let Some(cwd) = &app.cwd {
        check(check_cwd(cwd));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(InvalidApp {
            name: app.name.clone(),
            problems,
        }),
    }
}
