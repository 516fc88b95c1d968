//! The panel's live view of the fleet (issue 11): every agent's [`AgentSummary`] and latest apps
//! in memory, kept up to date by the hub, and the Server-Sent Events of `GET /admin/live`.
//!
//! Theory of operation. The view is loaded from the store once, at engine start; after that the
//! hub tells it of every connect, disconnect, `agent_connected` and status update, and the API of
//! agents created, enrolled and deleted, so the panel's pages are answered from memory. Updating
//! an agent is a map lookup and a few field writes under one short lock: a status arrives parsed
//! and nothing is serialised then. Changes are only flagged; a ticker ([`run`]) sends them once a
//! second, serialising each changed summary once for all streams: urgent changes (online,
//! offline, app counts, the problem) at the next tick; figures-only changes (load, memory, disk,
//! last seen) at most every [`FIGURES_EVERY`] ticks per agent and at most [`FIGURES_PER_TICK`]
//! agents a tick, taken round-robin, so a big fleet's stream stays light (10,000 agents at a
//! 1-s status interval would otherwise be 2,000 summaries, 1 MB, a second to every browser tab;
//! at the default 60-s interval that fleet's 170 changes a second all go). A stream opened with
//! `?agent=ID` gets that agent's summary and apps (the `apps` message) at the next tick after
//! any change. Operations, servers
//! and events are published as they change, each serialised once. When more than
//! [`RELOAD_ABOVE`] agents changed at once (a fleet reconnecting), the fleet streams get `reload`
//! instead of their summaries. Streams are bounded queues (see [`stream`]): a slow one gets
//! `reload`, never slows the hub.

pub mod events;
pub mod history;
pub mod http;
pub mod stream;
pub mod summary;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::store::{AgentRow, EventRow, OperationRow, ServerRow, Store, StoreError};
use super::Engine;
use crate::fleet::protocol::{AppStatus, HostStatus};
use stream::{Frame, Streams, Subscriber, TooMany};
pub use summary::{AgentSummary, AppCounts};
use summary::{Change, Figures};

/// The live streams' tick: the most often an agent's summary is sent.
pub const TICK: Duration = Duration::from_secs(1);
/// A figures-only change of an agent reaches the fleet streams at most once per this many ticks.
pub const FIGURES_EVERY: u64 = 5;
/// Agents whose figures-only change is sent to the fleet streams per tick, at most.
pub const FIGURES_PER_TICK: usize = 250;
/// More changed agents than this in one tick (a fleet reconnecting after an engine restart)
/// and the fleet streams get `reload` instead: one refetch beats thousands of messages.
pub const RELOAD_ABOVE: usize = 1000;

/// One agent as its panel page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    pub summary: AgentSummary,
    /// The apps array of its latest status update, as `citrusctl status --json` gives them.
    pub apps: Vec<serde_json::Value>,
}

struct Entry {
    summary: Arc<AgentSummary>,
    apps: Arc<Vec<AppStatus>>,
    /// Changed since last sent to the fleet streams.
    urgent: bool,
    figures: bool,
    /// Changed since last sent to this agent's streams.
    watch_summary: bool,
    watch_apps: bool,
    /// Open streams of this agent (`?agent=`).
    watched: u32,
    /// The hub's id of its current connection: a late disconnect of a replaced connection
    /// does not make it offline (as in the store).
    conn: Option<u64>,
    /// The tick its summary last went to the fleet streams.
    sent_at: Option<u64>,
    /// Its events' budget.
    events: events::Gate,
}

impl Entry {
    fn new(summary: AgentSummary, apps: Vec<AppStatus>) -> Entry {
        Entry {
            summary: Arc::new(summary),
            apps: Arc::new(apps),
            urgent: true,
            figures: false,
            watch_summary: false,
            watch_apps: false,
            watched: 0,
            conn: None,
            events: events::Gate::default(),
            sent_at: None,
        }
    }

    fn changed(&mut self, change: Change) {
        self.urgent |= change.urgent;
        self.figures |= change.figures;
        if self.watched > 0 && change.any() {
            self.watch_summary = true;
        }
    }
}

/// The agents of the view: entries in a vector (the ticker goes round it) and their index.
#[derive(Default)]
struct Agents {
    index: HashMap<String, usize>,
    entries: Vec<Entry>,
    /// Where the ticker's round of figures-only changes goes on.
    cursor: usize,
}

impl Agents {
    fn get(&self, id: &str) -> Option<&Entry> {
        self.index.get(id).map(|&i| &self.entries[i])
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.index.get(id).map(|&i| &mut self.entries[i])
    }

    fn contains_key(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    fn insert(&mut self, entry: Entry) {
        match self.index.get(&entry.summary.id) {
            Some(&i) => self.entries[i] = entry,
            None => {
                self.index
                    .insert(entry.summary.id.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(i) = self.index.remove(id) {
            self.entries.swap_remove(i);
            if let Some(moved) = self.entries.get(i) {
                self.index.insert(moved.summary.id.clone(), i);
            }
        }
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}

/// The live view: agents' summaries and apps, and the open streams.
pub struct Live {
    agents: Mutex<Agents>,
    pub streams: Streams,
    ticks: AtomicU64,
    /// Agents' events stored, and those over their budget (not stored).
    pub events_stored: AtomicU64,
    pub events_dropped: AtomicU64,
}

impl Live {
    /// The view of the agents in `store`, with their latest statuses.
    pub async fn load(store: &Store) -> Result<Live, StoreError> {
        let rows = store.list_agents().await?;
        let mut statuses = store.latest_statuses().await?;
        let mut agents = Agents::default();
        for row in rows {
            let status = statuses.remove(&row.id).and_then(|json| {
                match serde_json::from_str::<HostStatus>(&json) {
                    Ok(status) => Some(status),
                    Err(e) => {
                        tracing::debug!(agent = %row.id, "stored status not loaded: {e}");
                        None
                    }
                }
            });
            let summary = AgentSummary::from_row(&row, status.as_ref());
            let apps = status.map(|s| s.apps).unwrap_or_default();
            agents.insert(Entry::new(summary, apps));
        }
        Ok(Live {
            agents: Mutex::new(agents),
            streams: Streams::default(),
            ticks: AtomicU64::new(0),
            events_stored: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Agents> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the agent's summary, if the view has the agent.
    fn update(&self, agent: &str, f: impl FnOnce(&mut AgentSummary) -> Change) {
        if let Some(entry) = self.lock().get_mut(agent) {
            let change = f(Arc::make_mut(&mut entry.summary));
            entry.changed(change);
        }
    }

    /// A new agent (created, not enrolled, offline).
    pub fn created(&self, row: &AgentRow) {
        let entry = Entry::new(AgentSummary::from_row(row, None), Vec::new());
        self.lock().insert(entry);
    }

    /// An agent was deleted: gone from the view, and from the panel at once.
    pub fn deleted(&self, agent: &str) {
        self.lock().remove(agent);
        self.publish("agent", &json!({"id": agent, "deleted": true}), Some(agent));
    }

    /// The agent enrolled.
    pub fn enrolled(&self, agent: &str) {
        self.update(agent, AgentSummary::enrolled);
    }

    /// The agent connected at `at` through the hub's connection `conn`, unless a newer
    /// connection already did.
    pub fn online(&self, agent: &str, conn: u64, at: i64) {
        if let Some(entry) = self.lock().get_mut(agent) {
            if entry.conn.is_none_or(|c| c < conn) {
                entry.conn = Some(conn);
                let change = Arc::make_mut(&mut entry.summary).online(at);
                entry.changed(change);
            }
        }
    }

    /// The agent's connection `conn` ended at `at`: offline, if that was its current one.
    pub fn offline(&self, agent: &str, conn: u64, at: i64) {
        if let Some(entry) = self.lock().get_mut(agent) {
            if entry.conn == Some(conn) {
                entry.conn = None;
                let change = Arc::make_mut(&mut entry.summary).offline(at);
                entry.changed(change);
            }
        }
    }

    /// Its `agent_connected` message.
    pub fn version(&self, agent: &str, version: &str, git_version: Option<&str>) {
        self.update(agent, |s| s.version(version, git_version));
    }

    /// A status update received at `at`: the hub's hot path. Its apps are kept as they are;
    /// nothing is serialised here.
    pub fn status(&self, agent: &str, status: HostStatus, at: i64) {
        let figures = Figures::of(&status);
        let mut agents = self.lock();
        let Some(entry) = agents.get_mut(agent) else {
            return;
        };
        let change = Arc::make_mut(&mut entry.summary).apply(&figures, Some(at));
        entry.changed(change);
        if *entry.apps != status.apps {
            entry.apps = Arc::new(status.apps);
            if entry.watched > 0 {
                entry.watch_apps = true;
            }
        }
    }

    /// Agents matching `filter` (in name, id or hostname, ignoring case), problems first, then
    /// by name; at most `limit` of them, and how many matched.
    pub fn snapshot(&self, filter: Option<&str>, limit: usize) -> (Vec<AgentSummary>, usize) {
        let all: Vec<Arc<AgentSummary>> = self.lock().values().map(|e| e.summary.clone()).collect();
        let query = filter.map(str::trim).unwrap_or("").to_lowercase();
        let mut matching: Vec<Arc<AgentSummary>> =
            all.into_iter().filter(|s| s.matches(&query)).collect();
        let total = matching.len();
        let order = |a: &Arc<AgentSummary>, b: &Arc<AgentSummary>| {
            b.problem
                .cmp(&a.problem)
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.id.cmp(&b.id))
        };
        if limit < matching.len() {
            matching.select_nth_unstable_by(limit, order);
            matching.truncate(limit);
        }
        matching.sort_unstable_by(order);
        (matching.iter().map(|s| (**s).clone()).collect(), total)
    }

    /// One agent's summary and apps.
    pub fn agent(&self, id: &str) -> Option<AgentView> {
        let (summary, apps) = {
            let agents = self.lock();
            let entry = agents.get(id)?;
            (entry.summary.clone(), entry.apps.clone())
        };
        Some(AgentView {
            summary: (*summary).clone(),
            apps: apps
                .iter()
                .map(|a| serde_json::to_value(a).expect("AppStatus serialises to JSON"))
                .collect(),
        })
    }

    /// Whether the agent's event at `at` is within its budget ([`events::EVENTS_PER_MINUTE`]);
    /// the excess is counted, and logged once per window.
    pub fn admit_event(&self, agent: &str, at: i64) -> bool {
        let admit = match self.lock().get_mut(agent) {
            Some(entry) => entry.events.admit(at),
            None => return false,
        };
        if admit != events::Admit::Yes {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if admit == events::Admit::FirstDropped {
            tracing::warn!(
                agent,
                "agent sends more than {} events a minute: the rest of this minute's are dropped \
                 (counted as eventsDropped in /admin/stats)",
                events::EVENTS_PER_MINUTE
            );
        }
        admit == events::Admit::Yes
    }

    /// An event was stored.
    pub fn event(&self, event: &EventRow) {
        self.events_stored.fetch_add(1, Ordering::Relaxed);
        self.publish("event", event, Some(&event.agent_id));
    }

    /// The live view's figures for `GET /admin/stats`.
    pub fn stats(&self) -> serde_json::Value {
        json!({
            "streams": self.streams.count(),
            "reloads": self.streams.reloads.load(Ordering::Relaxed),
        })
    }

    /// Whether the view has the agent.
    pub fn has(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Opens a stream, of `agent`'s messages only when given (its current summary and apps
    /// then come at the next tick).
    pub fn subscribe(&self, agent: Option<&str>) -> Result<Arc<Subscriber>, TooMany> {
        let sub = self.streams.open(agent)?;
        if let Some(agent) = agent {
            if let Some(entry) = self.lock().get_mut(agent) {
                entry.watched += 1;
                entry.watch_summary = true;
                entry.watch_apps = true;
            }
        }
        Ok(sub)
    }

    /// Closes a stream opened by [`Live::subscribe`].
    pub fn unsubscribe(&self, sub: &Arc<Subscriber>) {
        self.streams.close(sub);
        if let Some(agent) = sub.agent.as_deref() {
            if let Some(entry) = self.lock().get_mut(agent) {
                entry.watched = entry.watched.saturating_sub(1);
            }
        }
    }

    /// Publishes one message now, to the fleet streams and `agent`'s.
    fn publish(&self, event: &str, data: &impl Serialize, agent: Option<&str>) {
        if self.streams.any() {
            self.streams.publish(&Frame::message(event, data, agent));
        }
    }

    /// An operation was created or changed.
    pub fn operation(&self, operation: &OperationRow) {
        self.publish("operation", operation, Some(&operation.agent_id));
    }

    /// Operation `id` changed in the store: publishes it as it is now (read only when a stream
    /// is open).
    pub async fn operation_changed(&self, store: &Store, id: &str) {
        if !self.streams.any() {
            return;
        }
        match store.get_operation(id).await {
            Ok(Some(operation)) => self.operation(&operation),
            Ok(None) => {}
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// Server `id` changed in the store: publishes it as it is now.
    pub async fn server_changed(&self, store: &Store, id: &str) {
        if !self.streams.any() {
            return;
        }
        match store.get_server(id).await {
            Ok(Some(server)) => self.server(&server),
            Ok(None) => {}
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// A server as it is now.
    pub fn server(&self, server: &ServerRow) {
        self.publish("server", server, Some(&server.agent_id));
    }

    /// Server `id` (of `agent`) was deleted.
    pub fn server_deleted(&self, id: &str, agent: &str) {
        self.publish("server", &json!({"id": id, "deleted": true}), Some(agent));
    }

    /// Sends what changed since the previous tick (see the module header).
    pub fn tick(&self) {
        let tick = self.ticks.fetch_add(1, Ordering::Relaxed);
        let fleet_open = self.streams.any_fleet();
        let mut fleet = Vec::new();
        let mut watched = Vec::new();
        {
            let mut guard = self.lock();
            let agents = &mut *guard;
            let n = agents.entries.len();
            let start = agents.cursor.min(n);
            let mut budget = FIGURES_PER_TICK;
            let mut next = start;
            for k in 0..n {
                let i = (start + k) % n;
                let entry = &mut agents.entries[i];
                if entry.watched > 0 && (entry.watch_summary || entry.watch_apps) {
                    let summary = entry.watch_summary.then(|| entry.summary.clone());
                    let apps = entry.watch_apps.then(|| entry.apps.clone());
                    watched.push((summary, apps, entry.summary.id.clone()));
                    entry.watch_summary = false;
                    entry.watch_apps = false;
                }
                let due =
                    entry.figures && entry.sent_at.is_none_or(|at| tick >= at + FIGURES_EVERY);
                if !(entry.urgent || (due && budget > 0)) {
                    continue;
                }
                if !entry.urgent {
                    budget -= 1;
                    if budget == 0 {
                        // The next tick's round starts after the last one sent.
                        next = i + 1;
                    }
                }
                if fleet_open {
                    fleet.push(entry.summary.clone());
                }
                entry.urgent = false;
                entry.figures = false;
                entry.sent_at = Some(tick);
            }
            agents.cursor = if n == 0 { 0 } else { next % n };
        }
        if fleet.len() > RELOAD_ABOVE {
            self.streams.publish(&Frame {
                fleet: true,
                agent: None,
                bytes: bytes::Bytes::from_static(stream::RELOAD),
            });
        } else if !fleet.is_empty() {
            let mut buf = Vec::with_capacity(fleet.len() * 512);
            for summary in &fleet {
                Frame::push(&mut buf, "agent", &**summary);
            }
            drop(fleet);
            self.streams.publish(&Frame {
                fleet: true,
                agent: None,
                bytes: buf.into(),
            });
        }
        for (summary, apps, id) in watched {
            let mut buf = Vec::with_capacity(1024);
            if let Some(summary) = summary {
                Frame::push(&mut buf, "agent", &*summary);
            }
            if let Some(apps) = apps {
                Frame::push(&mut buf, "apps", &json!({"agent": id, "apps": &*apps}));
            }
            self.streams.publish(&Frame {
                fleet: false,
                agent: Some(Arc::from(id.as_str())),
                bytes: buf.into(),
            });
        }
    }
}

/// The live streams' ticker: [`Live::tick`] every [`TICK`].
pub async fn run(engine: Arc<Engine>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        engine.live.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Database;
    use crate::engine::store::AgentStatus;
    use crate::fleet::protocol::{AppState, CpuStatus, MemoryStatus};

    fn status(state: AppState, load: f64) -> HostStatus {
        HostStatus {
            hostname: "host".into(),
            uptime: 1,
            git_version: None,
            binary_sha256: None,
            cpu: CpuStatus { load, cores: 2 },
            memory: MemoryStatus {
                total: 100,
                used: 10,
                free: 90,
            },
            disk: vec![],
            apps: vec![AppStatus {
                pid: Some(1),
                ..summary::tests::app("web", state)
            }],
            timestamp: 0,
        }
    }

    fn row(id: &str, name: &str) -> AgentRow {
        AgentRow {
            id: id.into(),
            name: name.into(),
            status: AgentStatus::Offline,
            enrolled: true,
            version: None,
            git_version: None,
            binary_sha256: None,
            connected_at: None,
            last_seen_at: None,
            created_at: 1,
        }
    }

    async fn live() -> (tempfile::TempDir, Live) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Database::Sqlite(dir.path().join("engine.db")))
            .await
            .unwrap();
        (dir, Live::load(&store).await.unwrap())
    }

    /// Every `event:` name and data line of what the stream has queued now.
    async fn drain(sub: &Subscriber) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        while let Ok(Some(bytes)) =
            tokio::time::timeout(Duration::from_millis(20), sub.next(stream::KEEP_ALIVE)).await
        {
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            for message in text.split("\n\n").filter(|m| m.starts_with("event: ")) {
                let mut lines = message.lines();
                let event = lines.next().unwrap()["event: ".len()..].to_owned();
                let data = lines.next().unwrap()["data: ".len()..].to_owned();
                out.push((event, serde_json::from_str(&data).unwrap()));
            }
        }
        out
    }

    #[tokio::test]
    async fn snapshot_sorts_problems_first_then_names_and_filters() {
        let (_dir, live) = live().await;
        live.created(&row("1", "b-fine"));
        live.created(&row("2", "a-fine"));
        live.created(&row("3", "z-errored"));
        for (conn, id) in ["1", "2", "3"].into_iter().enumerate() {
            live.online(id, conn as u64, 5);
        }
        live.status("3", status(AppState::Errored, 1.0), 6);
        let (agents, total) = live.snapshot(None, 10);
        let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["z-errored", "a-fine", "b-fine"]);
        assert_eq!(total, 3);
        let (agents, total) = live.snapshot(Some(" FINE "), 1);
        assert_eq!((agents.len(), total), (1, 2));
        assert_eq!(agents[0].name, "a-fine");
        let view = live.agent("3").unwrap();
        assert_eq!(view.apps[0]["state"], "errored");
        assert_eq!(view.summary.hostname.as_deref(), Some("host"));
        assert!(live.agent("nope").is_none());
    }

    #[tokio::test]
    async fn urgent_changes_go_at_the_next_tick_figures_at_most_every_5_ticks() {
        let (_dir, live) = live().await;
        live.created(&row("a", "web"));
        live.tick();
        let sub = live.subscribe(None).unwrap();
        live.online("a", 2, 5);
        live.tick();
        let got = drain(&sub).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "agent");
        assert_eq!(got[0].1["status"], "online");
        // A replaced connection's late end, or an older connection, changes nothing.
        live.online("a", 1, 5);
        live.offline("a", 1, 6);
        live.tick();
        assert!(drain(&sub).await.is_empty());
        assert_eq!(live.agent("a").unwrap().summary.status, AgentStatus::Online);
        // Figures only: at most once per FIGURES_EVERY ticks.
        live.status("a", status(AppState::Online, 1.0), 6);
        live.tick();
        let first = drain(&sub).await; // the hostname and apps are new: urgent
        assert_eq!(first.len(), 1);
        let mut sent = 0;
        for load in 0..FIGURES_EVERY * 2 {
            live.status("a", status(AppState::Online, 2.0 + load as f64), 7);
            live.tick();
            sent += drain(&sub).await.len();
        }
        assert_eq!(sent as u64, 2);
        // An app going errored: the next tick.
        live.status("a", status(AppState::Errored, 3.0), 8);
        live.tick();
        let got = drain(&sub).await;
        assert_eq!(got[0].1["apps"]["errored"], 1);
        live.unsubscribe(&sub);
        assert_eq!(live.streams.count(), 0);
    }

    #[tokio::test]
    async fn figures_of_a_big_fleet_go_round_robin_within_the_budget() {
        let (_dir, live) = live().await;
        let n = FIGURES_PER_TICK + 50;
        for i in 0..n {
            live.created(&row(&format!("a{i}"), &format!("agent-{i}")));
        }
        let sub = live.subscribe(None).unwrap();
        live.tick();
        assert_eq!(drain(&sub).await.len(), n, "new agents are urgent");
        for i in 0..n {
            live.status(&format!("a{i}"), status(AppState::Online, 1.0), 5);
        }
        live.tick();
        assert_eq!(
            drain(&sub).await.len(),
            n,
            "a first status is urgent (hostname, apps)"
        );
        for _ in 0..FIGURES_EVERY {
            live.tick();
        }
        assert!(drain(&sub).await.is_empty());
        let mut seen = std::collections::HashSet::new();
        for round in 0..2 {
            for i in 0..n {
                live.status(
                    &format!("a{i}"),
                    status(AppState::Online, 2.0 + round as f64),
                    6,
                );
            }
            live.tick();
            let first = drain(&sub).await;
            assert_eq!(first.len(), FIGURES_PER_TICK);
            live.tick();
            let second = drain(&sub).await;
            assert_eq!(second.len(), 50);
            // Every agent once, none twice, in the two ticks.
            let ids: std::collections::HashSet<String> = first
                .iter()
                .chain(&second)
                .map(|(_, d)| d["id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(ids.len(), n);
            seen.extend(ids);
            for _ in 0..FIGURES_EVERY {
                live.tick();
            }
        }
        assert_eq!(seen.len(), n);
        // A mass change (more than RELOAD_ABOVE at once): one reload instead.
        for i in n..RELOAD_ABOVE + 1 {
            live.created(&row(&format!("a{i}"), &format!("agent-{i}")));
        }
        live.tick();
        let got = drain(&sub).await;
        assert_eq!(got.len(), 1 + RELOAD_ABOVE - n);
        for i in 0..RELOAD_ABOVE + 1 {
            live.offline(&format!("a{i}"), 0, 9);
            live.online(&format!("a{i}"), 1, 9);
        }
        live.tick();
        let got = drain(&sub).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "reload");
        live.deleted("a0");
        assert_eq!(live.snapshot(None, 10_000).1, RELOAD_ABOVE);
        assert!(live.agent("a0").is_none() && live.agent(&format!("a{}", n - 1)).is_some());
    }

    #[tokio::test]
    async fn an_agent_stream_gets_its_summary_and_apps_only() {
        let (_dir, live) = live().await;
        live.created(&row("a", "web"));
        live.created(&row("b", "db"));
        live.tick();
        let sub = live.subscribe(Some("a")).unwrap();
        live.tick();
        let got = drain(&sub).await;
        let names: Vec<&str> = got.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(names, ["agent", "apps"]);
        assert_eq!(got[1].1, json!({"agent": "a", "apps": []}));
        live.status("b", status(AppState::Online, 1.0), 6);
        live.status("a", status(AppState::Online, 1.0), 6);
        live.tick();
        let got = drain(&sub).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].1["id"], "a");
        assert_eq!(got[1].1["apps"][0]["name"], "web");
        // The same apps again: only the figures' summary.
        live.status("a", status(AppState::Online, 2.0), 7);
        live.tick();
        let got = drain(&sub).await;
        assert_eq!(got.len(), 1, "{got:?}");
        live.deleted("a");
        let got = drain(&sub).await;
        assert_eq!(got[0].1, json!({"id": "a", "deleted": true}));
        live.unsubscribe(&sub);
    }
}
