//! What the unit tests of the supervisor and of the layers above it share: a config on a temp dir,
//! and a supervisor that keeps to its own processes — its reaper collects only the children it
//! spawned (the test process runs other tests' children too), no subreaper flag, no cgroups.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::cgroup::Cgroups;
use super::reaper::Reaper;
use super::spawn::Marker;
use super::{EventSink, Shared, Supervisor};
use crate::config::{Config, EventKind};
use crate::state::{PersistedState, StateStore};

/// Writes `<dir>/citrusd.toml` with `state_dir` and `log_dir` in `dir` and `rest` after them
/// (apps, jobs), and loads it.
pub(crate) fn config(dir: &Path, rest: &str) -> Config {
    let path = dir.join("citrusd.toml");
    let text = format!(
        "[daemon]\nstate_dir = {:?}\nlog_dir = {:?}\n\n{rest}",
        dir.join("state"),
        dir.join("logs")
    );
    std::fs::write(&path, text).expect("write the test config");
    Config::load(&path, None).expect("a valid test config")
}

/// An event sink that drops every event (they are logged by the notifier in citrusd).
pub(crate) struct Quiet;

impl EventSink for Quiet {
    fn emit(&self, _: EventKind, _: Option<&str>, _: &str) {}
}

/// What the instances of a supervisor for `config` share, its directories created, its marker
/// unique to the temp dir. Needs a runtime (the reaper's task).
pub(crate) fn shared(config: &Config, events: Arc<dyn EventSink>) -> Arc<Shared> {
    let daemon = &config.daemon;
    let notify_dir = daemon.state_dir.join("notify");
    for dir in [&daemon.log_dir, &notify_dir] {
        std::fs::create_dir_all(dir).expect("create the test dirs");
    }
    let supervisor_id = format!(
        "test-{}",
        crate::sys::stable_hash(daemon.state_dir.as_os_str().as_encoded_bytes())
    );
    Arc::new(Shared {
        reaper: Reaper::for_tests(),
        marker: Marker { supervisor_id },
        log_dir: daemon.log_dir.clone(),
        notify_dir,
        events,
        cgroups: Cgroups::disabled(),
    })
}

/// A supervisor of `config`'s apps on `shared` (see [`shared`]), none started, nothing persisted
/// before.
pub(crate) async fn supervisor(shared: Arc<Shared>, config: Config) -> Arc<Supervisor> {
    let store = StateStore::new(&config.daemon.state_dir);
    let persisted = PersistedState::default();
    Supervisor::new(
        shared,
        config,
        store,
        &persisted,
        HashMap::new(),
        HashMap::new(),
    )
    .await
    .expect("a test supervisor")
}

/// Waits until `done()` holds, yielding to the runtime between checks. No timer is involved, so
/// paused time stays where it is while real processes run; gives up after 20 s of real time.
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// Lets every task that can run do so (paused time stays where it is).
pub(crate) async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}
