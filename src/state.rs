//! Persisted desired state: which apps should run and which were added at run time.
//!
//! Written as readable JSON on every change, atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash at any instant leaves the old or the new file, never a torn one. Runtime
//! fields (pids, counters) are not persisted: after a restart citrusd starts clean and reconciles.
//! An unreadable file is moved aside (never deleted) and citrusd runs the config's apps.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

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
    /// `state.json.corrupt-<unix time>` and reported in the returned warning.
    pub fn load(&self) -> Result<(PersistedState, Option<String>), StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((PersistedState::default(), None))
            }
            Err(e) => return Err(io_err("read", &self.path)(e)),
        };
        match serde_json::from_slice::<PersistedState>(&bytes) {
            Ok(state) => Ok((state, None)),
            Err(e) => {
                let secs = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = self
                    .path
                    .with_file_name(format!("state.json.corrupt-{secs}"));
                fs::rename(&self.path, &aside).map_err(io_err("move aside", &self.path))?;
                let warning = format!(
                    "state file {} could not be read ({e}); kept a copy at {}; starting the config's apps with their defaults",
                    self.path.display(),
                    aside.display()
                );
                Ok((PersistedState::default(), Some(warning)))
            }
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut json = serde_json::to_vec_pretty(state).expect("state serialises");
        json.push(b'\n');
        write_atomic(&self.path, &json, 0o600).map_err(io_err("write", &self.path))
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content: a temp file
/// in the same directory, fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
    use super::*;

    #[test]
    fn round_trip_and_corrupt_file_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert_eq!(store.load().unwrap(), (PersistedState::default(), None));
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
        let warning = warning.unwrap();
        assert!(warning.contains("kept a copy"), "{warning}");
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
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DirLock::acquire(dir.path()).unwrap();
        match DirLock::acquire(dir.path()) {
            Err(StateError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{:?}", other.err()),
        }
    }
}
