//! The supervisor: the table of apps, each a set of instance actors, and the operations on it.
//!
//! Theory of operation. The table lives behind a `std::sync::Mutex` that is only ever held to
//! read or change the table, never across an `.await`: an operation clones the instance handles
//! it needs, releases the lock, then talks to the actors (which serialise commands per instance).
//! Operations on several apps follow the `after` graph: apps are grouped in levels (an app is one
//! level above the deepest app it comes after), levels start in order and stop in reverse, and
//! the apps of one level are handled concurrently, so stopping 100 independent apps takes as long
//! as the slowest, not the sum.
//!
//! Every command that changes what is persisted is all-or-nothing: what can fail is done first
//! — the log files of apps to be made are opened, then the new state is written (computed from
//! a copy of the table) — and only then is anything applied, which cannot fail any more. So a
//! log directory or state directory that is full or read-only leaves the apps and the file
//! exactly as they were, and the caller is told so ([`SupervisorError::NotDone`]). An app that
//! replaces another of the same name (`reload-config`, health recovery) keeps its predecessor's
//! log files open rather than opening them again. App definitions from `state.json` and the
//! control API go through the config's validator ([`Config::runtime_app`]); an invalid
//! `state.json` entry is set aside.
//!
//! Running an instance includes its readiness and liveness probes (`probe`) and the sd_notify
//! socket it is given (`sdnotify`). What an operator should hear of goes to the [`EventSink`]
//! citrusd passes in; nothing here depends on what sits above (health jobs, deployments, daemon).

pub mod capture;
pub mod cgroup;
pub mod handoff;
pub mod instance;
pub mod kill;
pub mod lifecycle;
pub mod listen;
pub mod logs;
pub mod oneshot;
pub mod probe;
pub mod reaper;
pub mod sdnotify;
pub mod spawn;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::{AppConfig, Config, DaemonConfig};
use crate::control::{AddApp, AppState, AppStatus, ReloadPlan};
use crate::state::{
    Desired, PersistedApp, PersistedState, RuntimeApp, SetAside, StateError, StateStore,
};
use crate::sys::procfs;
pub use instance::{
    Adoption, EventSink, InstanceError, InstanceHandle, InstanceLogs, InstanceStatus, LogOpenError,
    Shared,
};
use listen::AppSockets;

/// Errors of supervisor operations; the control API maps each to a status and exit code.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no app named {name:?}; known apps: {}", if .known.is_empty() { "(none)".to_string() } else { .known.join(", ") })]
    UnknownApp { name: String, known: Vec<String> },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    State(#[from] StateError),
    /// A file the change needs could not be written or opened, so nothing was done; `what` says
    /// what was not, e.g. "api was not stopped".
    #[error("{what}: {source}; nothing was changed")]
    NotDone { what: String, source: NotDoneCause },
}

/// Why a command was not done: the state file could not be written, or a log file opened.
#[derive(Debug, thiserror::Error)]
pub enum NotDoneCause {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Log(#[from] LogOpenError),
}

impl SupervisorError {
    /// `what` (e.g. "api was not stopped") was not done because of `source`.
    fn not_done<E: Into<NotDoneCause>>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> SupervisorError {
        let what = what.into();
        move |source| SupervisorError::NotDone {
            what,
            source: source.into(),
        }
    }
}

/// Which apps an operation applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    All,
    App(String),
}

impl Target {
    /// What a refused command tells: "api was not stopped", "no app was stopped".
    fn not_done(&self, done: &str) -> String {
        match self {
            Target::All => format!("no app was {done}"),
            Target::App(name) => format!("{name} was not {done}"),
        }
    }

    /// `"all"` is every app; anything else one app.
    pub fn parse(name: &str) -> Target {
        if name == "all" {
            Target::All
        } else {
            Target::App(name.to_string())
        }
    }
}

struct App {
    config: Arc<AppConfig>,
    runtime: bool,
    desired: Desired,
    instances: Vec<Arc<InstanceHandle>>,
    /// The listening sockets of an app with `listen`, shared by its instances.
    sockets: Option<Arc<AppSockets>>,
}

struct Table {
    config: Arc<Config>,
    /// `config.start_order()`, worked out once per config: `order` runs on every status.
    start_order: Vec<String>,
    apps: BTreeMap<String, App>,
}

impl Table {
    fn new(config: Arc<Config>, apps: BTreeMap<String, App>) -> Table {
        let start_order = config.start_order();
        Table {
            config,
            start_order,
            apps,
        }
    }

    /// Takes `config` as the table's config.
    fn set_config(&mut self, config: Arc<Config>) {
        self.start_order = config.start_order();
        self.config = config;
    }

    /// Names in display/start order: the config's start order, then run-time apps by name.
    fn order(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .start_order
            .iter()
            .filter(|n| self.apps.contains_key(*n))
            .cloned()
            .collect();
        names.extend(
            self.apps
                .iter()
                .filter(|(_, a)| a.runtime)
                .map(|(n, _)| n.clone()),
        );
        names
    }

    /// `names` grouped by dependency depth: level 0 depends on nothing among all apps.
    fn levels(&self, names: &[String]) -> Vec<Vec<String>> {
        let mut depth: HashMap<String, usize> = HashMap::new();
        for name in self.order() {
            let d = self.apps[&name]
                .config
                .after
                .iter()
                .filter_map(|dep| depth.get(dep).map(|d| d + 1))
                .max()
                .unwrap_or(0);
            depth.insert(name, d);
        }
        let mut levels: Vec<Vec<String>> = Vec::new();
        for name in names {
            let d = depth.get(name).copied().unwrap_or(0);
            if levels.len() <= d {
                levels.resize(d + 1, Vec::new());
            }
            levels[d].push(name.clone());
        }
        levels.retain(|l| !l.is_empty());
        levels
    }

    fn resolve(&self, target: &Target) -> Result<Vec<String>, SupervisorError> {
        match target {
            Target::All => Ok(self.order()),
            Target::App(name) if self.apps.contains_key(name) => Ok(vec![name.clone()]),
            Target::App(name) => Err(SupervisorError::UnknownApp {
                name: name.clone(),
                known: self.order(),
            }),
        }
    }

    fn persisted(&self) -> PersistedState {
        let mut state = PersistedState::default();
        for (name, app) in &self.apps {
            let runtime = app.runtime.then(|| runtime_entry(&app.config));
            state.apps.insert(
                name.clone(),
                PersistedApp {
                    desired: app.desired,
                    runtime,
                },
            );
        }
        state
    }

    /// What reloading `new` does: apps it no longer has stop (run-time apps stay), apps it
    /// changes or now defines instead of a run-time app restart, its new apps start; with a
    /// warning for each `[daemon]` setting that only a restart of citrusd applies.
    fn plan_reload(&self, new: &Config) -> ReloadPlan {
        let mut plan = ReloadPlan {
            warnings: restart_only_changes(&self.config.daemon, &new.daemon),
            ..ReloadPlan::default()
        };
        for (name, app) in &self.apps {
            match new.apps.get(name) {
                None if !app.runtime => plan.stop.push(name.clone()),
                None => plan.unchanged.push(name.clone()),
                Some(n) if app.runtime || **n != *app.config => {
                    if app.runtime {
                        plan.warnings.push(format!("{name}: the config now defines this run-time app; the config's version replaces it"));
                    }
                    plan.restart.push(name.clone());
                }
                Some(_) => plan.unchanged.push(name.clone()),
            }
        }
        plan.start = new
            .start_order()
            .into_iter()
            .filter(|n| !self.apps.contains_key(n))
            .collect();
        plan
    }

    /// The persisted state once `plan` is applied: stopped apps gone, a run-time app the config
    /// now defines running as a config app, new apps at their `autostart`.
    fn persisted_after(&self, plan: &ReloadPlan, new: &Config) -> PersistedState {
        let mut state = self.persisted();
        for name in &plan.stop {
            state.apps.remove(name);
        }
        for name in &plan.restart {
            if let Some(entry) = state.apps.get_mut(name) {
                if entry.runtime.take().is_some() {
                    entry.desired = Desired::Running;
                }
            }
        }
        for name in &plan.start {
            let desired = autostart_desired(&new.apps[name]);
            let runtime = None;
            state
                .apps
                .insert(name.clone(), PersistedApp { desired, runtime });
        }
        state
    }
}

/// The warnings for `[daemon]` settings that changed but apply only when citrusd restarts.
fn restart_only_changes(old: &DaemonConfig, new: &DaemonConfig) -> Vec<String> {
    [
        ("state_dir", old.state_dir != new.state_dir),
        ("log_dir", old.log_dir != new.log_dir),
        ("socket", old.socket != new.socket),
        ("socket_group", old.socket_group != new.socket_group),
        ("metrics_listen", old.metrics_listen != new.metrics_listen),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(what, _)| format!("[daemon] {what} changed: takes effect when citrusd restarts"))
    .collect()
}

/// The desired state of a config app nothing was persisted for: its `autostart`.
fn autostart_desired(app: &AppConfig) -> Desired {
    match app.autostart {
        true => Desired::Running,
        false => Desired::Stopped,
    }
}

/// What `state.json` keeps of a run-time app to recreate it.
fn runtime_entry(config: &AppConfig) -> RuntimeApp {
    RuntimeApp {
        command: config.command.clone(),
        instances: config.instances,
        cwd: config.cwd.clone(),
    }
}

/// (app, instance, pid): a CPU sample belongs to one run of one instance.
type SampleKey = (String, u32, i32);

/// An instance's status with what the API shows beside it.
pub struct InstanceView {
    pub name: String,
    pub status: InstanceStatus,
    pub handle: Arc<InstanceHandle>,
}

/// The supervisor of one citrusd.
pub struct Supervisor {
    shared: Arc<Shared>,
    store: StateStore,
    table: Mutex<Table>,
    /// Woken when memory caps or the check interval change.
    memory_config: Notify,
    /// CPU samples per (app, instance, pid) for `cpu_percent`: (cpu ticks, when).
    cpu_samples: Mutex<HashMap<SampleKey, (u64, Instant)>>,
}

impl Supervisor {
    /// Creates the supervisor with the config's apps and the persisted run-time apps; nothing is
    /// started yet (see [`Supervisor::boot`]) except the children in `adopt`, handed over by the
    /// previous citrusd with the listening sockets in `sockets` (by app). Children no app claims
    /// any more are stopped; sockets no app claims close.
    pub async fn new(
        shared: Arc<Shared>,
        config: Config,
        store: StateStore,
        persisted: &PersistedState,
        mut adopt: HashMap<(String, u32), Adoption>,
        mut sockets: HashMap<String, Vec<listen::Handed>>,
    ) -> Result<Arc<Supervisor>, SupervisorError> {
        let config = Arc::new(config);
        let mut apps = BTreeMap::new();
        for (name, app) in &config.apps {
            let desired = persisted
                .apps
                .get(name)
                .map(|p| p.desired)
                .unwrap_or_else(|| autostart_desired(app));
            let app_sockets = match sockets.remove(name) {
                Some(handed) => AppSockets::adopt(app, handed),
                None => AppSockets::new(app),
            };
            apps.insert(
                name.clone(),
                Self::make_app_adopting(
                    &shared,
                    app.clone(),
                    false,
                    desired,
                    app_sockets,
                    &mut adopt,
                )?,
            );
        }
        let mut set_aside = Vec::new();
        for (name, p) in &persisted.apps {
            let Some(rt) = &p.runtime else { continue };
            if apps.contains_key(name) {
                tracing::warn!(app = %name, "the config now defines this run-time app; using the config");
                continue;
            }
            let app =
                match config.runtime_app(name, rt.command.clone(), rt.instances, rt.cwd.clone()) {
                    Ok(app) => app,
                    Err(invalid) => {
                        set_aside.push(SetAside {
                            name: name.clone(),
                            entry: serde_json::to_value(p).unwrap_or_default(),
                            reason: invalid.problems.join("; "),
                        });
                        continue;
                    }
                };
            apps.insert(
                name.clone(),
                Self::make_app_adopting(&shared, Arc::new(app), true, p.desired, None, &mut adopt)?,
            );
        }
        for line in store.set_aside(set_aside) {
            tracing::error!("{line}");
        }
        for ((app, index), orphan) in adopt {
            tracing::warn!(app = %app, index, pid = orphan.pid, "handed-over app is gone from the config: stopping it");
            let leaf = shared.cgroups.existing_leaf(&app, index);
            let stop = kill::GroupStop {
                reaper: &shared.reaper,
                pgid: orphan.pid,
                marker: shared.marker.instance_entries(&app, index),
                signal: nix::sys::signal::Signal::SIGTERM,
                timeout: Duration::from_secs(5),
                cgroup: leaf.as_ref(),
            };
            let mut exit = orphan.exit;
            let _ = stop.run(Some(&mut exit), || {}).await;
            if let Some(leaf) = &leaf {
                leaf.remove();
            }
        }
        Ok(Arc::new(Supervisor {
            shared,
            store,
            table: Mutex::new(Table::new(config, apps)),
            memory_config: Notify::new(),
            cpu_samples: Mutex::new(HashMap::new()),
        }))
    }

    /// The log files of each instance of `config`: those of the instance of `previous` (the app
    /// it replaces) that writes to the same files, else opened now. All or nothing; the error
    /// names the file that could not be opened.
    fn open_logs(
        shared: &Shared,
        config: &AppConfig,
        previous: Option<&App>,
    ) -> Result<Vec<InstanceLogs>, LogOpenError> {
        let kept: Vec<&InstanceLogs> = previous
            .map(|app| app.instances.iter().map(|h| h.logs()).collect())
            .unwrap_or_default();
        (0..config.instances)
            .map(|i| {
                let (out, _) = instance::log_paths(&shared.log_dir, config, i);
                match kept.iter().find(|logs| logs.out_path() == out) {
                    Some(logs) => Ok((*logs).clone()),
                    None => InstanceLogs::open(shared, config, i),
                }
            })
            .collect()
    }

    /// An app whose instances write to `logs` (one per instance, see [`Self::open_logs`]) and
    /// listen on `sockets` (see `listen`). Cannot fail: what can was done before.
    fn make_app(
        shared: &Arc<Shared>,
        config: Arc<AppConfig>,
        runtime: bool,
        desired: Desired,
        sockets: Option<Arc<AppSockets>>,
        logs: Vec<InstanceLogs>,
    ) -> App {
        let adopted = logs.into_iter().map(|logs| (logs, None)).collect();
        Self::assemble(shared, config, runtime, desired, sockets, adopted)
    }

    /// As `make_app` at start-up: the logs opened here, and instances given their children back
    /// from `adopt` (after a re-exec).
    fn make_app_adopting(
        shared: &Arc<Shared>,
        config: Arc<AppConfig>,
        runtime: bool,
        desired: Desired,
        sockets: Option<Arc<AppSockets>>,
        adopt: &mut HashMap<(String, u32), Adoption>,
    ) -> Result<App, SupervisorError> {
        let name = &config.name;
        let logs = Self::open_logs(shared, &config, None)
            .map_err(|e| SupervisorError::Failed(format!("{name}: {e}")))?;
        let mut adopted = Vec::with_capacity(logs.len());
        for (i, logs) in (0..).zip(logs) {
            let child = adopt.remove(&(name.clone(), i)).map(|child| {
                let pid = child.pid;
                child.prepare().map_err(|e| {
                    SupervisorError::Failed(format!(
                        "{name}: cannot take back pid {pid} of instance {i}: {e}"
                    ))
                })
            });
            adopted.push((logs, child.transpose()?));
        }
        Ok(Self::assemble(
            shared, config, runtime, desired, sockets, adopted,
        ))
    }

    /// The app, its instance actors started: one per (log files, child to take back).
    fn assemble(
        shared: &Arc<Shared>,
        config: Arc<AppConfig>,
        runtime: bool,
        desired: Desired,
        sockets: Option<Arc<AppSockets>>,
        instances: Vec<(InstanceLogs, Option<instance::Adopted>)>,
    ) -> App {
        let instances = (0..)
            .zip(instances)
            .map(|(i, (logs, child))| {
                let (shared, config, sockets) = (shared.clone(), config.clone(), sockets.clone());
                Arc::new(InstanceHandle::spawn(
                    shared, config, i, sockets, logs, child,
                ))
            })
            .collect();
        App {
            config,
            runtime,
            desired,
            instances,
            sockets,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts every app whose desired state is running, level by level.
    pub async fn boot(&self) -> Vec<String> {
        let names: Vec<String> = {
            let t = self.table();
            t.order()
                .into_iter()
                .filter(|n| t.apps[n].desired == Desired::Running)
                .collect()
        };
        self.memory_config.notify_one();
        self.apply(names, Op::Start).await
    }

    /// Persists the current desired state now.
    pub fn save(&self) -> Result<(), SupervisorError> {
        let state = self.table().persisted();
        self.store.save(&state)?;
        Ok(())
    }

    /// Sets the desired state of `names`, persisted first: if the write fails, nothing changes.
    fn set_desired(&self, names: &[String], desired: Desired) -> Result<(), StateError> {
        let mut t = self.table();
        let changing: Vec<&String> = names
            .iter()
            .filter(|n| t.apps.get(*n).is_some_and(|a| a.desired != desired))
            .collect();
        if changing.is_empty() {
            return Ok(());
        }
        let mut state = t.persisted();
        for n in &changing {
            if let Some(entry) = state.apps.get_mut(*n) {
                entry.desired = desired;
            }
        }
        self.store.save(&state)?;
        for n in changing {
            if let Some(app) = t.apps.get_mut(n) {
                app.desired = desired;
            }
        }
        Ok(())
    }

    /// Runs `op` on the named apps following the dependency levels.
    async fn apply(&self, names: Vec<String>, op: Op) -> Vec<String> {
        let mut levels = self.table().levels(&names);
        if matches!(op, Op::Stop | Op::Shutdown) {
            levels.reverse();
        }
        let mut errors = Vec::new();
        for level in levels {
            let handles: Vec<(String, Arc<InstanceHandle>)> = {
                let t = self.table();
                level
                    .iter()
                    .filter_map(|n| t.apps.get(n).map(|a| (n, a)))
                    .flat_map(|(n, a)| a.instances.iter().map(move |h| (n.clone(), h.clone())))
                    .collect()
            };
            let mut set = JoinSet::new();
            for (name, h) in handles {
                set.spawn(async move {
                    let r = match op {
                        Op::Start => h.start().await,
                        Op::Stop => h.stop().await,
                        Op::Restart => h.restart().await,
                        Op::Shutdown => {
                            h.shutdown().await;
                            Ok(())
                        }
                    };
                    r.map_err(|e| format!("{name}: {e}"))
                });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Err(e)) => errors.push(e),
                    Err(e) => errors.push(e.to_string()),
                    Ok(Ok(())) => {}
                }
            }
        }
        errors
    }

    async fn operate(&self, target: &Target, op: Op) -> Result<Vec<String>, SupervisorError> {
        let names = self.table().resolve(target)?;
        let (desired, done) = match op {
            Op::Stop | Op::Shutdown => (Desired::Stopped, "stopped"),
            Op::Start => (Desired::Running, "started"),
            Op::Restart => (Desired::Running, "restarted"),
        };
        let what = target.not_done(done);
        self.set_desired(&names, desired)
            .map_err(SupervisorError::not_done(what))?;
        let errors = self.apply(names.clone(), op).await;
        if errors.is_empty() {
            Ok(names)
        } else {
            Err(SupervisorError::Failed(errors.join("\n")))
        }
    }

    /// Starts the target; returns the names it applied to.
    pub async fn start(&self, target: &Target) -> Result<Vec<String>, SupervisorError> {
        self.operate(target, Op::Start).await
    }

    /// Stops the target. The listening sockets of a stopped app close (clients are refused
    /// rather than left waiting); its next start binds them again.
    pub async fn stop(&self, target: &Target) -> Result<Vec<String>, SupervisorError> {
        let stopped = self.operate(target, Op::Stop).await;
        let names = self.table().resolve(target).unwrap_or_default();
        self.close_sockets(&names);
        stopped
    }

    /// Closes the listening sockets of the named apps that are stopped.
    fn close_sockets(&self, names: &[String]) {
        let t = self.table();
        for app in names.iter().filter_map(|n| t.apps.get(n)) {
            if let (Some(sockets), Desired::Stopped) = (&app.sockets, app.desired) {
                sockets.close();
            }
        }
    }

    /// Restarts the target (all instances of an app at once).
    pub async fn restart(&self, target: &Target) -> Result<Vec<String>, SupervisorError> {
        self.operate(target, Op::Restart).await
    }

    /// Rolling restart: one instance at a time, each online before the next.
    pub async fn reload(&self, target: &Target) -> Result<Vec<String>, SupervisorError> {
        let names = self.table().resolve(target)?;
        let what = target.not_done("reloaded");
        self.set_desired(&names, Desired::Running)
            .map_err(SupervisorError::not_done(what))?;
        for name in &names {
            let (handles, shared_port) = match self.table().apps.get(name) {
                Some(a) => (a.instances.clone(), shared_probe_port(&a.config)),
                None => continue,
            };
            for h in &handles {
                h.restart()
                    .await
                    .map_err(|e| SupervisorError::Failed(format!("{name}: {e}")))?;
                if let Some((port, timeout)) = shared_port {
                    listening_itself(h, &handles, port, timeout)
                        .await
                        .map_err(|e| SupervisorError::Failed(format!("{name}: {e}")))?;
                }
            }
        }
        Ok(names)
    }

    /// Adds and starts an app at run time. The definition goes through the config's validator;
    /// its log files are opened, then it is persisted, then made (which cannot fail).
    pub async fn add(&self, req: AddApp) -> Result<Vec<String>, SupervisorError> {
        let name = req.name.clone();
        {
            let mut t = self.table();
            let config = t
                .config
                .runtime_app(&req.name, req.command, req.instances, req.cwd)
                .map_err(|invalid| SupervisorError::BadRequest(invalid.to_string()))?;
            if t.apps.contains_key(&name) {
                return Err(SupervisorError::Conflict(format!(
                    "an app named {name:?} already exists; pick another --name or `citrusctl delete {name}` first"
                )));
            }
            let not_added = format!("{name} was not added");
            let logs = Self::open_logs(&self.shared, &config, None)
                .map_err(SupervisorError::not_done(not_added.clone()))?;
            let mut state = t.persisted();
            let entry = PersistedApp {
                desired: Desired::Running,
                runtime: Some(runtime_entry(&config)),
            };
            state.apps.insert(name.clone(), entry);
            self.store
                .save(&state)
                .map_err(SupervisorError::not_done(not_added))?;
            let config = Arc::new(config);
            let sockets = AppSockets::new(&config);
            let app = Self::make_app(&self.shared, config, true, Desired::Running, sockets, logs);
            t.apps.insert(name.clone(), app);
        }
        self.start(&Target::App(name.clone()))
            .await
            .map_err(|e| match e {
                SupervisorError::Failed(why) => SupervisorError::Failed(format!(
                    "{name} was added but did not start: {why}; `citrusctl delete {name}` removes it"
                )),
                other => other,
            })
    }

    /// Forgets a run-time app (persisted first: if the write fails it keeps running), then stops
    /// it.
    pub async fn delete(&self, name: &str) -> Result<(), SupervisorError> {
        let app = {
            let mut t = self.table();
            let app = t
                .apps
                .get(name)
                .ok_or_else(|| SupervisorError::UnknownApp {
                    name: name.into(),
                    known: t.order(),
                })?;
            if !app.runtime {
                return Err(SupervisorError::Conflict(format!(
                    "{name} is defined in {}; remove it there and run `citrusctl reload-config`",
                    t.config.path.display()
                )));
            }
            let mut state = t.persisted();
            state.apps.remove(name);
            self.store
                .save(&state)
                .map_err(SupervisorError::not_done(format!("{name} was not deleted")))?;
            t.apps.remove(name)
        };
        if let Some(app) = app {
            for h in &app.instances {
                h.shutdown().await;
            }
            if let Some(sockets) = &app.sockets {
                sockets.close();
            }
        }
        self.prune_cgroups();
        Ok(())
    }

    /// Removes the cgroups of instances no longer in the table (see `cgroup`).
    fn prune_cgroups(&self) {
        if !self.shared.cgroups.enabled() {
            return;
        }
        let live: HashSet<(String, u32)> = self
            .table()
            .apps
            .iter()
            .flat_map(|(name, app)| app.instances.iter().map(|h| (name.clone(), h.index)))
            .collect();
        self.shared
            .cgroups
            .prune(|app, index| live.contains(&(app.to_string(), index)));
    }

    /// The instances of the target (every app for `None`), in display order.
    pub fn instances(&self, app: Option<&str>) -> Result<Vec<InstanceView>, SupervisorError> {
        let t = self.table();
        let names = match app {
            Some(n) => t.resolve(&Target::App(n.to_string()))?,
            None => t.order(),
        };
        Ok(names
            .iter()
            .flat_map(|n| {
                t.apps[n].instances.iter().map(move |h| InstanceView {
                    name: n.clone(),
                    status: h.status(),
                    handle: h.clone(),
                })
            })
            .collect())
    }

    /// The status rows of `status --json`: live memory and CPU read from `/proc` now.
    pub fn status(&self, app: Option<&str>) -> Result<Vec<AppStatus>, SupervisorError> {
        let views = self.instances(app)?;
        let mut samples = self.cpu_samples.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut seen = HashSet::with_capacity(views.len());
        let rows = views
            .into_iter()
            .map(|v| {
                let s = &v.status;
                let (memory_bytes, cpu_percent) = match s.pid {
                    Some(pid) => {
                        let (rss, ticks) = procfs::tree_usage(pid);
                        let key = (v.name.clone(), v.handle.index, pid);
                        let since = s.since.unwrap_or(now);
                        let (prev_ticks, prev_at) =
                            samples.get(&key).copied().unwrap_or((0, since));
                        let secs = now.duration_since(prev_at).as_secs_f64();
                        let cpu = if secs > 0.0 {
                            ticks.saturating_sub(prev_ticks) as f64
                                / procfs::clock_ticks() as f64
                                / secs
                                * 100.0
                        } else {
                            0.0
                        };
                        samples.insert(key.clone(), (ticks, now));
                        seen.insert(key);
                        (rss, (cpu * 10.0).round() / 10.0)
                    }
                    None => (0, 0.0),
                };
                AppStatus {
                    name: v.name,
                    instance: v.handle.index,
                    pid: s.pid.map(|p| p as u32),
                    state: s.state,
                    restarts: s.restarts,
                    unstable_restarts: s.unstable_restarts,
                    memory_restarts: s.memory_restarts,
                    uptime_ms: s.since.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0),
                    memory_bytes,
                    cpu_percent,
                    last_exit: s.last_exit.clone(),
                    release: None,
                }
            })
            .collect();
        if app.is_none() {
            samples.retain(|k, _| seen.contains(k));
        }
        Ok(rows)
    }

    /// The app's config, whether it is a run-time app, and its desired state.
    pub fn app_config(
        &self,
        name: &str,
    ) -> Result<(Arc<AppConfig>, bool, Desired), SupervisorError> {
        let t = self.table();
        t.apps
            .get(name)
            .map(|a| (a.config.clone(), a.runtime, a.desired))
            .ok_or_else(|| SupervisorError::UnknownApp {
                name: name.into(),
                known: t.order(),
            })
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.table().config.clone()
    }

    /// Compares `new` with the config in force and, unless `dry_run`, applies the difference:
    /// new apps start, removed apps stop, changed apps restart, the rest is left alone.
    pub async fn reload_config(
        &self,
        new: Config,
        dry_run: bool,
    ) -> Result<ReloadPlan, SupervisorError> {
        let new = Arc::new(new);
        let mut plan = self.table().plan_reload(&new);
        if dry_run {
            return Ok(plan);
        }
        let logs = self.prepare_reload(&plan, &new)?;
        // Stop removed and changed apps (reverse order), then swap the table, then start.
        let going: Vec<String> = plan.stop.iter().chain(&plan.restart).cloned().collect();
        let _ = self.apply(going, Op::Stop).await;
        let (replaced, to_start) = self.swap_in(&mut plan, &new, logs);
        for h in replaced {
            h.shutdown().await;
        }
        self.prune_cgroups();
        self.memory_config.notify_one();
        let errors = self.apply(to_start, Op::Start).await;
        plan.applied = true;
        plan.warnings.extend(errors);
        Ok(plan)
    }

    /// What can fail in applying `plan`, done before anything is stopped or started: the log
    /// files of the apps that start or restart are opened (a restarted app keeps its own open),
    /// then the state after the reload is written. Returns the log files by app.
    fn prepare_reload(
        &self,
        plan: &ReloadPlan,
        new: &Config,
    ) -> Result<HashMap<String, Vec<InstanceLogs>>, SupervisorError> {
        let not_reloaded = "the config was not reloaded";
        let t = self.table();
        let mut logs = HashMap::new();
        for name in plan.restart.iter().chain(&plan.start) {
            let opened = Self::open_logs(&self.shared, &new.apps[name], t.apps.get(name))
                .map_err(SupervisorError::not_done(not_reloaded))?;
            logs.insert(name.clone(), opened);
        }
        self.store
            .save(&t.persisted_after(plan, new))
            .map_err(SupervisorError::not_done(not_reloaded))?;
        Ok(logs)
    }

    /// Puts the reloaded apps in the table once the removed and changed ones are stopped: a
    /// changed app is replaced by one made from `new` (with its `logs`), a removed one leaves
    /// (closing its sockets), a new one is added; then `new` is the config in force. Cannot
    /// fail. Returns the replaced instances, to be ended, and the apps to start.
    fn swap_in(
        &self,
        plan: &mut ReloadPlan,
        new: &Arc<Config>,
        mut logs: HashMap<String, Vec<InstanceLogs>>,
    ) -> (Vec<Arc<InstanceHandle>>, Vec<String>) {
        let mut replaced = Vec::new();
        let mut to_start = Vec::new();
        let mut t = self.table();
        for name in plan.stop.iter().chain(&plan.restart) {
            let Some(app) = t.apps.remove(name) else {
                continue;
            };
            replaced.extend(app.instances);
            if plan.restart.contains(name) {
                let cfg = new.apps[name].clone();
                let desired = if app.runtime {
                    Desired::Running
                } else {
                    app.desired
                };
                // Unchanged `listen`: the very same sockets, open all along.
                let sockets = AppSockets::carry(app.sockets.as_ref(), &cfg);
                let logs = logs.remove(name).unwrap_or_default();
                let made = Self::make_app(&self.shared, cfg, false, desired, sockets, logs);
                if desired == Desired::Running {
                    to_start.push(name.clone());
                }
                t.apps.insert(name.clone(), made);
            } else if let Some(sockets) = &app.sockets {
                // Gone from the config: its addresses are free for other apps now.
                sockets.close();
            }
        }
        for name in &plan.start {
            let cfg = new.apps[name].clone();
            let desired = autostart_desired(&cfg);
            let sockets = AppSockets::new(&cfg);
            let logs = logs.remove(name).unwrap_or_default();
            let made = Self::make_app(&self.shared, cfg, false, desired, sockets, logs);
            t.apps.insert(name.clone(), made);
            if desired == Desired::Running {
                to_start.push(name.clone());
            }
        }
        t.set_config(new.clone());
        // Normally what was written before; only a command racing the reload differs.
        if let Err(e) = self.store.save(&t.persisted()) {
            plan.warnings.push(e.to_string());
        }
        (replaced, to_start)
    }

    /// Stops every app (reverse dependency order) without changing desired state, then ends the
    /// instance actors. Used at shutdown: after a restart the same apps come back.
    pub async fn shutdown(&self) {
        let names = self.table().order();
        for e in self.apply(names, Op::Shutdown).await {
            tracing::error!("{e}");
        }
    }

    /// Apps whose desired state is running, in order; only those in `only` when it is not empty.
    pub fn running_apps(&self, only: &[String]) -> Vec<String> {
        let t = self.table();
        t.order()
            .into_iter()
            .filter(|n| t.apps[n].desired == Desired::Running)
            .filter(|n| only.is_empty() || only.contains(n))
            .collect()
    }

    /// Restarts one instance of `app`; a no-op for an index it does not have.
    pub async fn restart_instance(&self, app: &str, index: u32) -> Result<(), SupervisorError> {
        let handle = {
            let t = self.table();
            let a = t.apps.get(app).ok_or_else(|| SupervisorError::UnknownApp {
                name: app.into(),
                known: t.order(),
            })?;
            a.instances.iter().find(|h| h.index == index).cloned()
        };
        match handle {
            Some(h) => h
                .restart()
                .await
                .map_err(|e| SupervisorError::Failed(format!("{app}: {e}"))),
            None => Ok(()),
        }
    }

    /// Stops every instance of `app`, replaces them with new ones made from the config in force,
    /// and starts them.
    pub async fn respawn(&self, app: &str) -> Result<(), SupervisorError> {
        let old = {
            let t = self.table();
            let a = t.apps.get(app).ok_or_else(|| SupervisorError::UnknownApp {
                name: app.into(),
                known: t.order(),
            })?;
            a.instances.clone()
        };
        for h in &old {
            h.shutdown().await;
        }
        {
            let mut t = self.table();
            let fresh = match t.apps.get(app) {
                Some(a) if !a.runtime => t
                    .config
                    .apps
                    .get(app)
                    .cloned()
                    .unwrap_or_else(|| a.config.clone()),
                Some(a) => a.config.clone(),
                None => return Ok(()),
            };
            let old = &t.apps[app];
            let logs = Self::open_logs(&self.shared, &fresh, Some(old))
                .map_err(|e| SupervisorError::Failed(format!("{app} was not respawned: {e}")))?;
            let sockets = AppSockets::carry(old.sockets.as_ref(), &fresh);
            let runtime = old.runtime;
            let made = Self::make_app(
                &self.shared,
                fresh,
                runtime,
                Desired::Running,
                sockets,
                logs,
            );
            t.apps.insert(app.to_string(), made);
        }
        let errors = self.apply(vec![app.to_string()], Op::Start).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SupervisorError::Failed(errors.join("\n")))
        }
    }

    /// The running instances and the apps' listening sockets, for a handoff to a re-executed
    /// citrusd. Synchronous on purpose: nothing may act on the children between this snapshot
    /// and the `exec`.
    pub fn handoff(&self) -> handoff::Handoff {
        let sockets = {
            let t = self.table();
            let apps = t.apps.iter();
            let apps = apps.filter_map(|(name, app)| Some((name, app.sockets.as_ref()?)));
            apps.flat_map(|(name, sockets)| {
                sockets
                    .handoff()
                    .into_iter()
                    .map(|(addr, fd)| handoff::HandedSocket {
                        app: name.clone(),
                        addr,
                        fd,
                    })
            })
            .collect()
        };
        let instances = self
            .instances(None)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                let s = v.status;
                let (pid, (out_fd, err_fd)) = (s.pid?, s.pipes?);
                Some(handoff::AdoptedInstance {
                    app: v.name,
                    index: v.handle.index,
                    pid,
                    out_fd,
                    err_fd,
                    uptime_ms: s.since.map_or(0, |t| t.elapsed().as_millis() as u64),
                    restarts: s.restarts,
                    unstable_restarts: s.unstable_restarts,
                    memory_restarts: s.memory_restarts,
                })
            })
            .collect();
        handoff::Handoff { instances, sockets }
    }

    /// Reopens every log file (SIGUSR1).
    pub fn reopen_logs(&self) {
        for v in self.instances(None).unwrap_or_default() {
            for log in [&v.handle.logs().out, &v.handle.logs().err] {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = log.reopen() {
                    tracing::error!(path = %log.path().display(), "cannot reopen log: {e}");
                }
            }
        }
    }

    /// The memory check: every `memory_check_interval`, the process-tree RSS of each instance of
    /// an app with `max_memory_restart`; an instance over its cap is told to restart. Sleeps
    /// without waking while no app has a cap.
    pub async fn memory_check_loop(self: Arc<Self>) {
        loop {
            let (interval, capped) = {
                let t = self.table();
                let capped: Vec<(u64, Arc<InstanceHandle>)> = t
                    .apps
                    .values()
                    .filter_map(|a| a.config.max_memory_restart.map(|cap| (cap, a)))
                    .flat_map(|(cap, a)| a.instances.iter().map(move |h| (cap, h.clone())))
                    .collect();
                (
                    t.config
                        .daemon
                        .memory_check_interval
                        .max(Duration::from_millis(50)),
                    capped,
                )
            };
            if capped.is_empty() {
                self.memory_config.notified().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.memory_config.notified() => continue,
            }
            for (cap, h) in capped {
                let status = h.status();
                if let (Some(pid), AppState::Online) = (status.pid, status.state) {
                    let (rss, _) = procfs::tree_usage(pid);
                    if rss > cap {
                        h.memory_exceeded(pid, rss);
                    }
                }
            }
        }
    }
}

/// The port of an http/tcp `ready` probe of an app with several instances, and the ready timeout:
/// instances that share a port answer each other's probes.
fn shared_probe_port(app: &AppConfig) -> Option<(u16, Duration)> {
    let ready = app.ready.as_ref().filter(|_| app.instances >= 2)?;
    match &ready.check {
        crate::config::ReadyCheck::Probe(
            crate::config::ProbeTarget::Http { port, .. }
            | crate::config::ProbeTarget::Tcp { port, .. },
        ) => Some((*port, ready.timeout)),
        crate::config::ReadyCheck::Notify { .. } => None,
    }
}

/// After instance `h` of a rolling reload passed its `ready` probe on `port`: waits until its own
/// process tree listens on the port when a sibling does, since the probe may have been answered by
/// that sibling, which is stopped next. A port no instance listens on (another process serves it)
/// needs nothing more.
async fn listening_itself(
    h: &InstanceHandle,
    all: &[Arc<InstanceHandle>],
    port: u16,
    timeout: Duration,
) -> Result<(), InstanceError> {
    let deadline = Instant::now() + timeout;
    loop {
        let listening = procfs::listening_sockets(port);
        let holds = |handle: &InstanceHandle| {
            let pids = handle.status().pid.map(procfs::tree).unwrap_or_default();
            !procfs::socket_inodes(&pids).is_disjoint(&listening)
        };
        let siblings = all.iter().filter(|s| s.index != h.index);
        if holds(h) || !siblings.into_iter().any(|s| holds(s)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(InstanceError::NotListening {
                index: h.index,
                port,
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Start,
    Stop,
    Restart,
    /// Stop and end the actor.
    Shutdown,
}
