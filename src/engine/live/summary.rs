//! [`AgentSummary`]: one agent as the panel's fleet view shows it, and how a status update,
//! a connection and a stored row make one. Pure functions, no locks.

use serde::Serialize;

use crate::engine::store::{AgentRow, AgentStatus};
use crate::fleet::protocol::{AppState, AppStatus, DiskStatus, HostStatus};

/// Above this share of memory or disk used, an agent has a problem.
const FULL_PERCENT: i64 = 90;

/// Weights of [`AgentSummary::problem`]: their sum, so the worst problems sort first.
const PROBLEM_ERRORED: u8 = 8;
const PROBLEM_OFFLINE: u8 = 4;
const PROBLEM_DISK: u8 = 2;
const PROBLEM_MEMORY: u8 = 1;

/// Counts of an agent's app instances by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AppCounts {
    pub total: u32,
    pub online: u32,
    pub errored: u32,
    pub stopped: u32,
    /// Starting, stopping or in backoff.
    pub other: u32,
}

impl AppCounts {
    /// The counts of `apps` (one entry per instance, as `citrusctl status --json` lists them).
    pub fn of(apps: &[AppStatus]) -> Self {
        let mut counts = AppCounts {
            total: apps.len() as u32,
            ..Default::default()
        };
        for app in apps {
            match app.state {
                AppState::Online => counts.online += 1,
                AppState::Errored => counts.errored += 1,
                AppState::Stopped => counts.stopped += 1,
                AppState::Starting | AppState::Stopping | AppState::Backoff => counts.other += 1,
            }
        }
        counts
    }
}

/// One agent in the fleet view (the panel's overview row, the `agent` live message).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSummary {
    pub id: String,
    pub name: String,
    /// `online` or `offline`.
    pub status: AgentStatus,
    pub enrolled: bool,
    pub version: Option<String>,
    pub git_version: Option<String>,
    /// From the latest status update (kept while offline), as are the figures below.
    pub hostname: Option<String>,
    /// The agent's CPU load: busy percent of all cores since its previous sample.
    pub load: Option<f64>,
    pub cores: Option<u32>,
    pub memory_used: Option<i64>,
    pub memory_total: Option<i64>,
    /// The filesystem reported as `/`, else the largest one.
    pub disk_used: Option<i64>,
    pub disk_size: Option<i64>,
    pub apps: AppCounts,
    pub last_seen_at: Option<i64>,
    pub connected_at: Option<i64>,
    pub created_at: i64,
    /// Sort key, 0 when fine, higher is worse: the sum of 8 (an app errored), 4 (enrolled and
    /// offline), 2 (disk over 90 % used), 1 (memory over 90 % used).
    pub problem: u8,
}

/// What a status update says about the host, computed before the live view's lock is taken.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures<'a> {
    pub hostname: &'a str,
    pub load: f64,
    pub cores: u32,
    pub memory_used: i64,
    pub memory_total: i64,
    pub disk_used: i64,
    pub disk_size: i64,
    pub apps: AppCounts,
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The filesystem shown: the one reported as `/`, else the largest (the agent reports devices,
/// so the largest is what a host's figures usually give).
fn main_disk(disks: &[DiskStatus]) -> Option<&DiskStatus> {
    disks
        .iter()
        .find(|d| d.fs == "/")
        .or_else(|| disks.iter().max_by_key(|d| d.size))
}

impl<'a> Figures<'a> {
    /// The figures of `status`.
    pub fn of(status: &'a HostStatus) -> Self {
        let (disk_used, disk_size) =
            main_disk(&status.disk).map_or((0, 0), |d| (clamp(d.used), clamp(d.size)));
        Figures {
            hostname: &status.hostname,
            load: if status.cpu.load.is_finite() {
                status.cpu.load
            } else {
                0.0
            },
            cores: status.cpu.cores,
            memory_used: clamp(status.memory.used),
            memory_total: clamp(status.memory.total),
            disk_used,
            disk_size,
            apps: AppCounts::of(&status.apps),
        }
    }
}

/// Whether `used` is more than [`FULL_PERCENT`] of `size`.
fn full(used: Option<i64>, size: Option<i64>) -> bool {
    match (used, size) {
        (Some(used), Some(size)) if size > 0 => {
            (used as i128) * 100 > (size as i128) * FULL_PERCENT as i128
        }
        _ => false,
    }
}

/// What changed in a summary, for the live stream's coalescing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Something a person must see at once: online/offline, app counts, the problem, names.
    pub urgent: bool,
    /// Only figures (load, memory, disk, last seen): sent at a slower pace.
    pub figures: bool,
}

impl Change {
    pub fn any(self) -> bool {
        self.urgent || self.figures
    }
}

impl AgentSummary {
    /// A summary of a stored agent, with its latest status when there is one.
    pub fn from_row(row: &AgentRow, status: Option<&HostStatus>) -> Self {
        let mut summary = AgentSummary {
            id: row.id.clone(),
            name: row.name.clone(),
            status: row.status,
            enrolled: row.enrolled,
            version: row.version.clone(),
            git_version: row.git_version.clone(),
            hostname: None,
            load: None,
            cores: None,
            memory_used: None,
            memory_total: None,
            disk_used: None,
            disk_size: None,
            apps: AppCounts::default(),
            last_seen_at: row.last_seen_at,
            connected_at: row.connected_at,
            created_at: row.created_at,
            problem: 0,
        };
        if let Some(status) = status {
            summary.apply(&Figures::of(status), None);
        }
        summary.problem = summary.problem_now();
        summary
    }

    /// The sort key of this summary as it is now.
    fn problem_now(&self) -> u8 {
        let mut problem = 0;
        if self.apps.errored > 0 {
            problem += PROBLEM_ERRORED;
        }
        if self.enrolled && self.status == AgentStatus::Offline {
            problem += PROBLEM_OFFLINE;
        }
        if full(self.disk_used, self.disk_size) {
            problem += PROBLEM_DISK;
        }
        if full(self.memory_used, self.memory_total) {
            problem += PROBLEM_MEMORY;
        }
        problem
    }

    /// Recomputes the problem after a change; a different one is urgent.
    fn settle(&mut self, mut change: Change) -> Change {
        let problem = self.problem_now();
        if problem != self.problem {
            self.problem = problem;
            change.urgent = true;
        }
        change
    }

    /// Applies a status update's figures received at `at` (`None`: loading, keep last seen).
    pub fn apply(&mut self, figures: &Figures, at: Option<i64>) -> Change {
        let mut change = Change::default();
        if self.hostname.as_deref() != Some(figures.hostname) {
            self.hostname = Some(figures.hostname.to_owned());
            change.urgent = true;
        }
        if self.apps != figures.apps {
            self.apps = figures.apps;
            change.urgent = true;
        }
        let mut set = |field: &mut Option<i64>, value: i64| {
            if *field != Some(value) {
                *field = Some(value);
                change.figures = true;
            }
        };
        set(&mut self.memory_used, figures.memory_used);
        set(&mut self.memory_total, figures.memory_total);
        set(&mut self.disk_used, figures.disk_used);
        set(&mut self.disk_size, figures.disk_size);
        if let Some(at) = at {
            set(&mut self.last_seen_at, at);
        }
        if self.load != Some(figures.load) || self.cores != Some(figures.cores) {
            self.load = Some(figures.load);
            self.cores = Some(figures.cores);
            change.figures = true;
        }
        self.settle(change)
    }

    /// The agent connected at `at`.
    pub fn online(&mut self, at: i64) -> Change {
        self.status = AgentStatus::Online;
        self.connected_at = Some(at);
        self.last_seen_at = Some(at);
        self.settle(Change {
            urgent: true,
            figures: false,
        })
    }

    /// The agent's connection ended at `at`.
    pub fn offline(&mut self, at: i64) -> Change {
        let urgent = self.status != AgentStatus::Offline;
        self.status = AgentStatus::Offline;
        self.last_seen_at = Some(at);
        self.settle(Change {
            urgent,
            figures: !urgent,
        })
    }

    /// Its `agent_connected` message.
    pub fn version(&mut self, version: &str, git_version: Option<&str>) -> Change {
        let urgent =
            self.version.as_deref() != Some(version) || self.git_version.as_deref() != git_version;
        self.version = Some(version.to_owned());
        self.git_version = git_version.map(str::to_owned);
        Change {
            urgent,
            figures: false,
        }
    }

    /// It enrolled.
    pub fn enrolled(&mut self) -> Change {
        let urgent = !self.enrolled;
        self.enrolled = true;
        self.settle(Change {
            urgent,
            figures: false,
        })
    }

    /// Whether `query` (lowercase) is in its name, id or hostname, ignoring case.
    pub fn matches(&self, query: &str) -> bool {
        let has = |text: &str| text.to_lowercase().contains(query);
        query.is_empty()
            || has(&self.name)
            || has(&self.id)
            || self.hostname.as_deref().is_some_and(has)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::fleet::protocol::{CpuStatus, MemoryStatus};

    /// An app of a status update, in `state`, with no figures.
    pub(in crate::engine::live) fn app(name: &str, state: AppState) -> AppStatus {
        AppStatus {
            name: name.into(),
            instance: 0,
            pid: None,
            state,
            restarts: 0,
            unstable_restarts: 0,
            memory_restarts: 0,
            uptime_ms: 0,
            memory_bytes: 0,
            cpu_percent: 0.0,
            last_exit: None,
            release: None,
        }
    }

    fn disk(fs: &str, size: u64, used: u64) -> DiskStatus {
        DiskStatus {
            fs: fs.into(),
            size,
            used,
            available: size - used,
        }
    }

    fn status(apps: Vec<AppStatus>, disks: Vec<DiskStatus>, memory_used: u64) -> HostStatus {
        HostStatus {
            hostname: "h1".into(),
            uptime: 1,
            git_version: None,
            binary_sha256: None,
            cpu: CpuStatus {
                load: 12.5,
                cores: 4,
            },
            memory: MemoryStatus {
                total: 1000,
                used: memory_used,
                free: 1000 - memory_used,
            },
            disk: disks,
            apps,
            timestamp: 0,
        }
    }

    fn row() -> AgentRow {
        AgentRow {
            id: "a1".into(),
            name: "web-1".into(),
            status: AgentStatus::Online,
            enrolled: true,
            version: Some("0.1.0".into()),
            git_version: None,
            binary_sha256: None,
            connected_at: Some(5),
            last_seen_at: Some(6),
            created_at: 1,
        }
    }

    #[test]
    fn apps_are_counted_by_state_with_backoff_as_other() {
        let apps = [
            app("a", AppState::Online),
            app("b", AppState::Errored),
            app("c", AppState::Backoff),
            app("d", AppState::Stopped),
            app("e", AppState::Starting),
            app("f", AppState::Online),
        ];
        assert_eq!(
            AppCounts::of(&apps),
            AppCounts {
                total: 6,
                online: 2,
                errored: 1,
                stopped: 1,
                other: 2
            }
        );
    }

    #[test]
    fn the_disk_shown_is_root_else_the_largest() {
        let s = status(vec![], vec![disk("/data", 900, 10), disk("/", 100, 50)], 10);
        let f = Figures::of(&s);
        assert_eq!((f.disk_used, f.disk_size), (50, 100));
        let s = status(
            vec![],
            vec![disk("/dev/sda1", 100, 50), disk("/dev/sdb1", 900, 10)],
            10,
        );
        let f = Figures::of(&s);
        assert_eq!((f.disk_used, f.disk_size), (10, 900));
        let s = status(vec![], vec![], 10);
        let f = Figures::of(&s);
        assert_eq!((f.disk_used, f.disk_size), (0, 0));
    }

    #[test]
    fn problems_add_up_worst_first() {
        let fine = status(
            vec![app("a", AppState::Online)],
            vec![disk("/", 100, 50)],
            100,
        );
        let s = AgentSummary::from_row(&row(), Some(&fine));
        assert_eq!(s.problem, 0);
        assert_eq!(s.hostname.as_deref(), Some("h1"));
        assert_eq!((s.load, s.cores), (Some(12.5), Some(4)));

        let bad = status(
            vec![app("a", AppState::Errored)],
            vec![disk("/", 100, 91)],
            901,
        );
        let mut s = AgentSummary::from_row(&row(), Some(&bad));
        assert_eq!(s.problem, 8 + 2 + 1);
        assert!(s.offline(10).urgent);
        assert_eq!(s.problem, 15);
        // Exactly 90 % is not over.
        let edge = status(vec![], vec![disk("/", 100, 90)], 900);
        assert_eq!(AgentSummary::from_row(&row(), Some(&edge)).problem, 0);
        // Never enrolled: offline is expected, not a problem.
        let mut pending = row();
        pending.enrolled = false;
        pending.status = AgentStatus::Offline;
        assert_eq!(AgentSummary::from_row(&pending, None).problem, 0);
        pending.enrolled = true;
        assert_eq!(AgentSummary::from_row(&pending, None).problem, 4);
    }

    #[test]
    fn figures_changes_are_not_urgent_but_states_are() {
        let s1 = status(
            vec![app("a", AppState::Online)],
            vec![disk("/", 100, 50)],
            100,
        );
        let mut s = AgentSummary::from_row(&row(), Some(&s1));
        assert_eq!(s.apply(&Figures::of(&s1), Some(6)), Change::default());
        let mut s2 = s1.clone();
        s2.cpu.load = 50.0;
        let change = s.apply(&Figures::of(&s2), Some(7));
        assert_eq!((change.urgent, change.figures), (false, true));
        assert_eq!(s.last_seen_at, Some(7));
        s2.apps[0].state = AppState::Errored;
        let change = s.apply(&Figures::of(&s2), Some(8));
        assert!(change.urgent);
        assert_eq!(s.apps.errored, 1);
        assert_eq!(s.problem, 8);
        // Memory crossing 90 % changes the problem: urgent.
        let mut s3 = s2.clone();
        s3.memory.used = 950;
        assert!(s.apply(&Figures::of(&s3), Some(9)).urgent);
        assert_eq!(s.problem, 9);
    }

    #[test]
    fn online_offline_version_and_enrolment() {
        let mut r = row();
        r.status = AgentStatus::Offline;
        r.enrolled = false;
        let mut s = AgentSummary::from_row(&r, None);
        assert!(s.enrolled().urgent);
        assert!(!s.enrolled().urgent);
        assert_eq!(s.problem, 4);
        assert!(s.online(20).urgent);
        assert_eq!(
            (s.status, s.connected_at, s.problem),
            (AgentStatus::Online, Some(20), 0)
        );
        assert!(s.version("0.2.0", Some("abc")).urgent);
        assert!(!s.version("0.2.0", Some("abc")).urgent);
        assert!(s.offline(30).urgent);
        assert_eq!((s.status, s.last_seen_at), (AgentStatus::Offline, Some(30)));
    }

    #[test]
    fn filter_matches_name_id_or_hostname_ignoring_case() {
        let s1 = status(vec![], vec![], 10);
        let s = AgentSummary::from_row(&row(), Some(&s1));
        assert!(s.matches(""));
        assert!(s.matches("web"));
        assert!(s.matches("a1"));
        assert!(s.matches("h1"));
        assert!(!s.matches("db"));
        let mut upper = s.clone();
        upper.name = "WEB-Prod".into();
        assert!(upper.matches("prod"));
    }

    #[test]
    fn serialises_with_the_panel_contract_names() {
        let s = AgentSummary::from_row(&row(), None);
        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "id",
            "name",
            "status",
            "enrolled",
            "version",
            "gitVersion",
            "hostname",
            "load",
            "cores",
            "memoryUsed",
            "memoryTotal",
            "diskUsed",
            "diskSize",
            "apps",
            "lastSeenAt",
            "connectedAt",
            "createdAt",
            "problem",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(
            v["apps"],
            serde_json::json!({"total": 0, "online": 0, "errored": 0, "stopped": 0, "other": 0})
        );
    }
}
