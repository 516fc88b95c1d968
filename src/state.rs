//! Persisted desired state: which apps should run and which were added at run time.
//!
//! Written as readable JSON on every change, atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash at any instant leaves the old or the new file, never a torn one. Runtime
//! fields (pids, counters) are not persisted: after a restart citrusd starts clean and reconciles.
//! An unreadable file is moved aside (never deleted) and citrusd runs the config's apps; an
//! entry that cannot be taken up (a wrong type here, or an app the validator refuses) is set
//! aside into `state.json.set-aside` with the reason, and the other entries are used.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::sys::fs::write_atomic;

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// What citrusd keeps an app at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

/// The state file's contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub version: u32,
    #[serde(default)]
    pub apps: BTreeMap<String, PersistedApp>,
}

impl Default for PersistedState {
    fn default() -> Self {
        PersistedState {
            version: STATE_VERSION,
            apps: BTreeMap::new(),
        }
    }
}

/// One app's persisted entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistedApp {
    pub desired: Desired,
    /// Present for apps added with `citrusctl start --name`: what is needed to recreate them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeApp>,
}

/// An app added at run time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuntimeApp {
    pub command: Vec<String>,
    pub instances: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another citrusd already uses the state directory {path}{}", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

/// The state file in `state_dir`, with writes serialised.
pub struct StateStore {
    path: PathBuf,
    write: Mutex<()>,
}

impl StateStore {
    /// The store for `<state_dir>/state.json`.
    pub fn new(state_dir: &Path) -> StateStore {
        StateStore {
            path: state_dir.join("state.json"),
            write: Mutex::new(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the state. A missing file is an empty state; an unreadable one is moved aside to
    /// `state.json.corrupt-<unix time>` and reported in the returned warnings; an entry that
    /// does not parse is set aside (see [`StateStore::set_aside`]), reported there too, and the
    /// others are loaded.
    pub fn load(&self) -> Result<(PersistedState, Vec<String>), StateError> {
        /// The file with each entry still unparsed, so that one bad entry spoils only itself.
        #[derive(Deserialize)]
        struct Entries {
            version: u32,
            #[serde(default)]
            apps: BTreeMap<String, serde_json::Value>,
        }
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((PersistedState::default(), Vec::new()))
            }
            Err(e) => return Err(io_err("read", &self.path)(e)),
        };
        let entries = match serde_json::from_slice::<Entries>(&bytes) {
            Ok(entries) => entries,
            Err(e) => {
                let aside = self
                    .path
                    .with_file_name(format!("state.json.corrupt-{}", unix_secs()));
                fs::rename(&self.path, &aside).map_err(io_err("move aside", &self.path))?;
                let warning = format!(
                    "state file {} could not be read ({e}); kept a copy at {}; starting the config's apps with their defaults",
                    self.path.display(),
                    aside.display()
                );
                return Ok((PersistedState::default(), vec![warning]));
            }
        };
        let mut state = PersistedState {
            version: entries.version,
            apps: BTreeMap::new(),
        };
        let mut rejected = Vec::new();
        for (name, entry) in entries.apps {
            match serde_json::from_value::<PersistedApp>(entry.clone()) {
                Ok(app) => {
                    state.apps.insert(name, app);
                }
                Err(e) => rejected.push(SetAside {
                    name,
                    entry,
                    reason: e.to_string(),
                }),
            }
        }
        let warnings = self.set_aside(rejected);
        Ok((state, warnings))
    }

    /// Keeps entries that cannot be used in `state.json.set-aside` (merged with what it holds,
    /// under `apps`, each with its `reason`), so that nothing the user added is lost; returns one
    /// log line per entry. Should that file not be writable, the line carries the entry itself.
    pub fn set_aside(&self, entries: Vec<SetAside>) -> Vec<String> {
        if entries.is_empty() {
            return Vec::new();
        }
        let path = self.path.with_file_name("state.json.set-aside");
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: serde_json::Value = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        if !kept["apps"].is_object() {
            kept["apps"] = serde_json::json!({});
        }
        let at = unix_secs();
        for e in &entries {
            kept["apps"][e.name.as_str()] = serde_json::json!({
                "entry": e.entry,
                "reason": e.reason,
                "set_aside_at": at,
            });
        }
        let mut json = serde_json::to_vec_pretty(&kept).expect("JSON values serialise");
        json.push(b'\n');
        let written = write_atomic(&path, &json, 0o600);
        entries
            .iter()
            .map(|e| {
                let head = format!(
                    "{}: entry {:?} set aside, the other apps run: {}",
                    self.path.display(),
                    e.name,
                    e.reason
                );
                match &written {
                    Ok(()) => format!("{head}; kept in {} (fix it there and add the app again with `citrusctl start --name`)", path.display()),
                    Err(err) => format!("{head}; cannot keep it in {} ({err}), so here it is: {}", path.display(), e.entry),
                }
            })
            .collect()
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut json = serde_json::to_vec_pretty(state).expect("state serialises");
        json.push(b'\n');
        write_atomic(&self.path, &json, 0o600).map_err(io_err("write", &self.path))
    }
}

/// A state entry that was not taken up.
#[derive(Clone, Debug, PartialEq)]
pub struct SetAside {
    /// The app name the entry is under.
    pub name: String,
    /// The entry as it was in the file.
    pub entry: serde_json::Value,
    /// Why it was not taken up.
    pub reason: String,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An exclusive lock on `<state_dir>/citrusd.lock`, held for the daemon's lifetime: two daemons
/// never share a state directory (they would kill each other's apps as orphans).
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock or reports who holds it.
    pub fn acquire(state_dir: &Path) -> Result<DirLock, StateError> {
        let path = state_dir.join("citrusd.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        // SAFETY: flock on an fd we own; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(StateError::Locked {
                path: state_dir.to_path_buf(),
                pid,
            });
        }
        file.set_len(0).map_err(io_err("write", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("write", &path))?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn round_trip_and_corrupt_file_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert_eq!(
            store.load().unwrap(),
            (PersistedState::default(), Vec::new())
        );
        let mut state = PersistedState::default();
        state.apps.insert(
            "api".into(),
            PersistedApp {
                desired: Desired::Stopped,
                runtime: None,
            },
        );
        state.apps.insert(
            "job".into(),
            PersistedApp {
                desired: Desired::Running,
                runtime: Some(RuntimeApp {
                    command: vec!["sleep".into(), "9".into()],
                    instances: 2,
                    cwd: None,
                }),
            },
        );
        store.save(&state).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load().unwrap().0, state);

        let text = fs::read(store.path()).unwrap();
        fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        let (loaded, warning) = store.load().unwrap();
        assert_eq!(loaded, PersistedState::default());
        assert_eq!(warning.len(), 1);
        assert!(warning[0].contains("kept a copy"), "{warning:?}");
        let copies: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            })
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(fs::read(copies[0].path()).unwrap(), &text[..text.len() / 2]);
    }

    /// The fixture from this release keeps loading in later ones.
    #[test]
    fn loads_release_fixture() {
        let text = include_str!("../tests/fixtures/state-v1.json");
        let state: PersistedState = serde_json::from_str(text).unwrap();
        assert_eq!(state.version, 1);
        assert_eq!(state.apps["worker"].desired, Desired::Stopped);
        assert!(state.apps["adhoc"].runtime.is_some());
    }

    #[test]
    fn a_bad_entry_is_set_aside_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let text = r#"{"version": 1, "apps": {
            "ok": {"desired": "stopped"},
            "bad": {"desired": "running", "runtime": {"command": "x", "instances": 1}}}}"#;
        fs::write(store.path(), text).unwrap();
        let (state, warnings) = store.load().unwrap();
        assert_eq!(state.apps.len(), 1);
        assert_eq!(state.apps["ok"].desired, Desired::Stopped);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("\"bad\" set aside"), "{warnings:?}");
        let aside = fs::read_to_string(dir.path().join("state.json.set-aside")).unwrap();
        let aside: serde_json::Value = serde_json::from_str(&aside).unwrap();
        assert_eq!(aside["apps"]["bad"]["entry"]["runtime"]["command"], "x");
        assert!(aside["apps"]["bad"]["reason"].is_string());
        // A second one joins the first.
        let more = SetAside {
            name: "other".into(),
            entry: serde_json::json!({}),
            reason: "because".into(),
        };
        assert_eq!(store.set_aside(vec![more]).len(), 1);
        let aside = fs::read_to_string(dir.path().join("state.json.set-aside")).unwrap();
        let aside: serde_json::Value = serde_json::from_str(&aside).unwrap();
        assert!(aside["apps"]["bad"].is_object() && aside["apps"]["other"].is_object());
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DirLock::acquire(dir.path()).unwrap();
        match DirLock::acquire(dir.path()) {
            Err(StateError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{:?}", other.err()),
        }
    }
}
