//! The deployment journal: one JSON file per deployment under
//! `<state_dir>/deployments/<app>/<id>.json`, rewritten atomically (temp file, fsync, rename,
//! fsync of the directory) at every phase change, so a crash at any instant leaves the last phase
//! that was reached, never a torn record.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Phase;
use crate::sys::fs::write_atomic;

/// The output kept per phase, and of a whole deployment: the last 64 KiB.
pub const OUTPUT_TAIL: usize = 64 * 1024;
/// Journal files kept per app (older ones are pruned with their releases).
pub const KEEP_RECORDS: usize = 50;

/// What a deployment record is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new release fetched, built and switched to.
    #[default]
    Deploy,
    /// `current` switched back to an earlier release (`citrusctl rollback`).
    Rollback,
}

/// One phase reached, with when and what it printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub at_ms: u64,
    /// The phase's output (its last 64 KiB), once it has ended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

/// One deployment as journalled and as the control API shows it (`deployments --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Sortable by time: `20261206T042200123Z`.
    pub id: String,
    pub app: String,
    #[serde(default)]
    pub kind: Kind,
    /// The release directory (`releases/<release>`) this deployment made or switched to.
    pub release: String,
    /// The ref asked for (`--ref`), else the configured branch (git sources).
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The commit deployed (git sources), once known.
    pub commit: Option<String>,
    /// The phase it is in, or how it ended.
    pub phase: Phase,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// When the current phase began.
    pub phase_ms: u64,
    /// Why it failed or was rolled back.
    pub error: Option<String>,
    /// The last output of the deployment (the newest phase that printed anything).
    pub output: String,
    /// Every phase reached, in order.
    pub phases: Vec<PhaseRecord>,
    /// The release `current` pointed at before the switch, recorded before it.
    pub previous: Option<String>,
    /// The engine's operation id when the fleet asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// How many times a restarted citrusd took this deployment up again.
    #[serde(default)]
    pub resumed: u32,
}

impl Deployment {
    /// A new deployment in `queued`.
    pub fn new(id: String, app: &str, git_ref: Option<String>, operation: Option<String>) -> Self {
        let now = crate::sys::now_ms();
        Deployment {
            release: id.clone(),
            id,
            app: app.to_owned(),
            kind: Kind::Deploy,
            git_ref,
            commit: None,
            phase: Phase::Queued,
            started_ms: now,
            ended_ms: None,
            phase_ms: now,
            error: None,
            output: String::new(),
            phases: vec![PhaseRecord {
                phase: Phase::Queued,
                at_ms: now,
                output: String::new(),
            }],
            previous: None,
            operation,
            resumed: 0,
        }
    }

    /// Moves to `phase` (ending it if final). `output` is what the phase before printed.
    pub fn enter(&mut self, phase: Phase, output: String) {
        let now = crate::sys::now_ms();
        if !output.is_empty() {
            self.output = tail(output.clone());
        }
        if let Some(last) = self.phases.last_mut() {
            if !output.is_empty() {
                last.output = tail(output);
            }
        }
        self.phase = phase;
        self.phase_ms = now;
        self.phases.push(PhaseRecord {
            phase,
            at_ms: now,
            output: String::new(),
        });
        if phase.is_final() {
            self.ended_ms = Some(now);
        }
    }

    /// How long it took, or has taken so far.
    pub fn duration_ms(&self) -> u64 {
        self.ended_ms
            .unwrap_or_else(crate::sys::now_ms)
            .saturating_sub(self.started_ms)
    }

    /// The commit's first 12 characters, for people.
    pub fn short_commit(&self) -> Option<&str> {
        self.commit.as_deref().map(|c| c.get(..12).unwrap_or(c))
    }

    /// Ends in `phase` (failed or rolled back) with `error`.
    pub fn end(&mut self, phase: Phase, error: String, output: String) {
        self.error = Some(error);
        self.enter(phase, output);
    }
}

/// The last [`OUTPUT_TAIL`] bytes of `s`, cut at a character boundary.
pub fn tail(mut s: String) -> String {
    if s.len() > OUTPUT_TAIL {
        let mut cut = s.len() - OUTPUT_TAIL;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.drain(..cut);
    }
    s
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} the deployment journal {}: {source}", path.display())]
pub struct JournalError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The journal of every app under `<state_dir>/deployments`.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal in `state_dir`.
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            dir: state_dir.join("deployments"),
        }
    }

    fn app_dir(&self, app: &str) -> PathBuf {
        self.dir.join(app)
    }

    /// Writes `d` durably.
    pub fn save(&self, d: &Deployment) -> Result<(), JournalError> {
        let dir = self.app_dir(&d.app);
        let err = |action, path: &Path| {
            let path = path.to_owned();
            move |source| JournalError {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&dir).map_err(err("create", &dir))?;
        let path = dir.join(format!("{}.json", d.id));
        let json = serde_json::to_vec_pretty(d).expect("a deployment serialises");
        write_atomic(&path, &json, 0o600).map_err(err("write", &path))
    }

    /// The apps that have records.
    pub fn apps(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// Every deployment of `app`, newest first. Unreadable records are logged and skipped.
    pub fn list(&self, app: &str) -> Vec<Deployment> {
        let dir = self.app_dir(app);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut all: Vec<Deployment> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".json") && !name.starts_with('.')
            })
            .filter_map(|e| {
                let path = e.path();
                let bytes = std::fs::read(&path).ok()?;
                match serde_json::from_slice::<Deployment>(&bytes) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::error!(path = %path.display(), "unreadable deployment record, skipped: {e}");
                        None
                    }
                }
            })
            .collect();
        all.sort_by(|a, b| b.id.cmp(&a.id));
        all
    }

    /// Deletes the records of `app` past the newest [`KEEP_RECORDS`] that are final.
    pub fn prune(&self, app: &str) {
        let all = self.list(app);
        for old in all.iter().skip(KEEP_RECORDS).filter(|d| d.phase.is_final()) {
            let _ = std::fs::remove_file(self.app_dir(app).join(format!("{}.json", old.id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        let mut a = Deployment::new("20260101T000000000Z".into(), "web", None, None);
        journal.save(&a).unwrap();
        let mut b = Deployment::new("20260102T000000000Z".into(), "web", Some("v2".into()), None);
        b.enter(Phase::PullingSource, String::new());
        b.enter(Phase::Building, "fetched".into());
        journal.save(&b).unwrap();
        a.end(
            Phase::Failed,
            "source vanished".into(),
            "x".repeat(OUTPUT_TAIL + 10),
        );
        journal.save(&a).unwrap();
        let list = journal.list("web");
        assert_eq!(list, vec![b.clone(), a.clone()]);
        assert_eq!(list[1].output.len(), OUTPUT_TAIL);
        assert_eq!(list[0].phases[1].output, "fetched");
        assert!(list[1].ended_ms.is_some() && list[0].ended_ms.is_none());
        assert!(journal.list("other").is_empty());
        assert_eq!(journal.apps(), ["web"]);
        let json: serde_json::Value = serde_json::to_value(&b).unwrap();
        for key in [
            "id",
            "ref",
            "commit",
            "phase",
            "started_ms",
            "ended_ms",
            "error",
            "output",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["phase"], "building");
    }

    #[test]
    fn tail_cuts_at_a_char_boundary() {
        let s = format!("é{}", "a".repeat(OUTPUT_TAIL - 1));
        assert_eq!(tail(s).len(), OUTPUT_TAIL - 1);
    }
}
