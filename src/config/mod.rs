//! The `citrusd` config file (TOML): loading, validation with positioned diagnostics for every
//! problem at once, the effective per-app configuration (`[defaults]` merged, `--env` chosen),
//! scheduled jobs, notifications and the fleet agent.
//!
//! Reading happens in three steps: toml parses the text into a spanned document; `read` reads it
//! section by section into layers of spanned values with `schema`'s machinery (unknown keys and
//! bad values are recorded, not fatal, and checks within a table run); then checks across
//! sections (`after`, cycles, a health job's `apps`, `listen`) run before the layers are resolved
//! into [`Config`].
//!
//! The modules form layers, each using only those listed before it: `diag`, `envfile`; `units`;
//! `cron`, `validate`; `schema`; then one module per section, each owning its layer and its
//! resolution, in this order: `probe`, `listen`, `fleet`, `deploy`, `engine`, `daemon`, `app`,
//! `jobs`; this file on top.

mod app;
mod cron;
mod daemon;
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
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::DeTable;
use toml::Spanned;

pub use app::{validate_app, AppConfig, LogConfig, RestartPolicy};
pub use cron::{CronSchedule, Timezone};
pub use daemon::{DaemonConfig, LogFormat};
pub use deploy::{DeployConfig, DeployHealth, DeploySource, DEFAULT_HEALTH_TIMEOUT};
pub use diag::{ConfigError, Diagnostic};
pub use engine::{Database, DigitalOceanConfig, EngineConfig, InstallConfig, LocalAgentConfig};
pub use envfile::{read_env_file, EnvFileError};
pub use fleet::{FleetConfig, Secret, SiteTemplates, UpdateConfig};
pub use jobs::{glob_match, EventKind, JobConfig, JobKind, NotifyConfig};
pub use listen::{ListenAddr, MAX_LISTEN};
pub use probe::{HealthConfig, ProbeTarget, ReadyCheck, ReadyConfig};
pub use units::{
    format_duration, format_size, parse_duration, parse_signal, parse_size, toml_string,
    MAX_DURATION,
};
pub use validate::{
    check_command, check_cwd, check_env, check_env_name, check_instances, validate_app_name,
    InvalidApp, MAX_INSTANCES,
};

use app::{resolve_app, AppLayer};
use daemon::{resolve_daemon, DaemonLayer};
use diag::{suggest, Diagnostics};
use fleet::FleetLayer;
use jobs::{JobLayer, NotifyLayer};
use schema::{named_tables, read_layer, read_table, Field};
use validate::CommandValue;

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
    /// Effective per-app config: defaults merged in, env chosen. Shared: the supervisor keeps
    /// the same `Arc` for each app and its instances.
    pub apps: BTreeMap<String, Arc<AppConfig>>,
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
        let (config, problems) = Self::parse_partial(text, path, env)?;
        match problems {
            Some(problems) => Err(problems),
            None => Ok(config),
        }
    }

    /// Reads the file as far as it can be read, for `citrusd --check`: `Err` only when it
    /// cannot be read or is not TOML; otherwise what resolved (an app or job with a bad value
    /// may be left out or take a default) and the diagnostics, if any ([`ConfigError::Invalid`]).
    pub fn load_partial(
        path: &Path,
        env: Option<&str>,
    ) -> Result<(Config, Option<ConfigError>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_partial(&text, path, env)
    }

    /// [`Config::parse`]'s work: a syntax error is fatal, every other problem is collected
    /// while the rest resolves.
    fn parse_partial(
        text: &str,
        path: &Path,
        env: Option<&str>,
    ) -> Result<(Config, Option<ConfigError>), ConfigError> {
        let mut diags = Diagnostics::new(text, path);
        // Only the first syntax error: what toml recovers after one is mostly echoes of it.
        let root = toml::de::DeTable::parse(text).map_err(|error| {
            diags.error(error.span().unwrap_or(0..0), "", error.message());
            diags.take()
        })?;
        let raw = read(&mut diags, root.into_inner());
        check_layers(&mut diags, &raw);
        let abs_path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base = abs_path.parent().unwrap_or(Path::new("/"));
        let listens = raw.apps.iter().filter_map(|app| {
            let listen = app.layer.fields.listen.as_ref()?;
            Some((app.name.as_str(), listen))
        });
        listen::check(
            &mut diags,
            raw.defaults.fields.listen.as_ref(),
            listens,
            base,
        );
        let apps: BTreeMap<String, Arc<AppConfig>> = raw
            .apps
            .iter()
            .map(|app| {
                let config = resolve_app(&app.name, &app.layer, &raw.defaults, base, env);
                (app.name.clone(), Arc::new(config))
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
        let problems = diags.check().err();

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
        let config = Config {
            daemon: resolve_daemon(&raw.daemon, base),
            path: abs_path,
            env: env.map(str::to_owned),
            defaults: AppDefaults(raw.defaults),
            apps,
            jobs,
            notify: jobs::resolve_notify(&raw.notify),
            fleet,
        };
        Ok((config, problems))
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

/// The whole file, section by section.
#[derive(Default)]
struct RawConfig {
    daemon: DaemonLayer,
    defaults: AppLayer,
    apps: Vec<RawApp>,
    jobs: Vec<RawJob>,
    notify: NotifyLayer,
    fleet: Option<FleetLayer>,
}

/// One `[apps.NAME]` table.
struct RawApp {
    name: String,
    /// The name's, in its table header.
    span: Range<usize>,
    layer: AppLayer,
}

/// One `[jobs.NAME]` table.
struct RawJob {
    name: String,
    layer: JobLayer,
}

const SECTIONS: &[&str] = &["daemon", "defaults", "apps", "jobs", "notify", "fleet"];

/// Reads the document into layers, recording every unknown key and bad value in `diags`.
fn read(diags: &mut Diagnostics<'_>, root: DeTable<'_>) -> RawConfig {
    let mut raw = RawConfig::default();
    for (key, value) in root {
        let key_span = key.span();
        let key = key.into_inner();
        match &*key {
            "daemon" => raw.daemon = read_table(diags, &key, key_span, value).unwrap_or_default(),
            "defaults" => {
                raw.defaults = read_table(diags, &key, key_span, value).unwrap_or_default();
            }
            "notify" => raw.notify = read_table(diags, &key, key_span, value).unwrap_or_default(),
            "fleet" => raw.fleet = read_table(diags, &key, key_span, value),
            "apps" => {
                for named in named_tables(diags, "app", &key, value) {
                    if !named
                        .table
                        .iter()
                        .any(|(key, _)| key.get_ref() == "command")
                    {
                        let message =
                            r#"app has no `command`; add e.g. command = ["node", "index.js"]"#;
                        diags.error(named.span.clone(), &named.path, message);
                    }
                    let layer = read_layer(diags, &named.path, named.span.clone(), named.table);
                    raw.apps.push(RawApp {
                        name: named.name,
                        span: named.span,
                        layer,
                    });
                }
            }
            "jobs" => {
                for named in named_tables(diags, "job", &key, value) {
                    let layer = read_layer(diags, &named.path, named.span, named.table);
                    raw.jobs.push(RawJob {
                        name: named.name,
                        layer,
                    });
                }
            }
            _ => diags.unknown_key(key_span, key.to_string(), &key, SECTIONS),
        }
    }
    raw
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
fn check_cycles(
    diags: &mut Diagnostics<'_>,
    raw: &RawConfig,
    apps: &BTreeMap<String, Arc<AppConfig>>,
) {
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
fn find_cycles(apps: &BTreeMap<String, Arc<AppConfig>>) -> BTreeSet<Vec<&str>> {
    #[derive(PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    struct Search<'a> {
        apps: &'a BTreeMap<String, Arc<AppConfig>>,
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

#[cfg(test)]
mod tests;
