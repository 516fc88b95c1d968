//! The agent's self-update, by two paths. Releases: download `<engine>/releases/<sha256>`,
//! verifying the SHA-256 while streaming into a temp file beside the running binary, keep the
//! running one as `citrusd.prev` (a hard link, so the binary's path never goes missing), rename
//! the new one into place and fsync the directory. Git: fetch and hard-reset `[fleet.update].repo`
//! through git2 (failures from git2's results, with their class and code, never from reading a
//! command's output). An update in flight is a [`PendingUpdate`], which the agent records in the
//! state directory until the new version confirms it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;

use git2::{Repository, ResetType};
use serde::{Deserialize, Serialize};

/// An update waiting for the new version to confirm it (by reconnecting to the engine).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingUpdate {
    /// The engine's command id.
    pub id: String,
    pub kind: UpdateKind,
    /// For a rollback: the commit asked for.
    pub commit_id: Option<String>,
    /// The commit to go back to when the new version does not confirm.
    pub previous: String,
    /// Wall-clock deadline (ms since the epoch) for the confirmation.
    pub deadline_ms: u64,
    /// Set when this process is the automatic return to `previous`.
    pub reverted: Option<String>,
    /// For a binary update or rollback: what was installed where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<BinaryChange>,
}

/// Whether a [`PendingUpdate`] came from `update_agent` or `rollback_agent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    Update,
    Rollback,
}

impl UpdateKind {
    /// The lowercase name, as stored and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::Update => "update",
            UpdateKind::Rollback => "rollback",
        }
    }
}

/// A binary installed in place of the running one, waiting for confirmation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryChange {
    /// The binary's path (the previous one is beside it as [`previous_of`]).
    pub exe: PathBuf,
    /// SHA-256 of the binary installed.
    pub sha256: String,
    /// SHA-256 of the binary it replaced.
    pub previous_sha256: String,
}

/// Largest release the agent downloads (256 MiB; a citrusd is a few MiB).
pub const MAX_RELEASE: u64 = 256 << 20;
/// In the state directory while a new binary is installed and not yet confirmed; the systemd
/// unit's guard (`systemd/citrusd-guard`) puts `citrusd.prev` back when citrusd is started again
/// while it exists.
pub const MARKER: &str = "binary-update.pending";

/// A binary update that went wrong, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{url} is {size} bytes, over the {limit}-byte limit for a release")]
    TooLarge { url: String, size: u64, limit: u64 },
    #[error(
        "checksum mismatch for {url}: expected {expected}, got {actual} ({size} bytes); \
         nothing was replaced"
    )]
    Checksum {
        url: String,
        expected: String,
        actual: String,
        size: u64,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BinaryError {
    let path = path.to_owned();
    move |source| BinaryError::Io {
        action,
        path,
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path of the binary this process runs (as `current_exe`, without the ` (deleted)` the
/// kernel appends once the file was replaced).
pub fn running_exe() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// `citrusd` → `citrusd.prev`, in the same directory.
pub fn previous_of(exe: &Path) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(".prev");
    exe.with_file_name(name)
}

fn sibling(exe: &Path, what: &str) -> PathBuf {
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    exe.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// SHA-256 (lowercase hex) of a file, e.g. `/proc/self/exe`: what this process runs.
pub fn sha256_file(path: &Path) -> Result<String, BinaryError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match file.read(&mut buf).map_err(io_err("read", path))? {
            0 => break,
            n => ctx.update(&buf[..n]),
        }
    }
    Ok(hex(ctx.finish().as_ref()))
}

fn sync_dir(exe: &Path) -> Result<(), BinaryError> {
    let dir = exe.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory", dir))
}

/// Downloads `url` into a temp file beside `exe` (mode 0755), at most `limit` bytes, hashing as
/// it streams; the file is fsynced and returned only when its SHA-256 is `sha256`. On any
/// failure the temp file is removed and nothing else was touched. `client` carries the agent's
/// TLS settings and timeouts.
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    sha256: &str,
    exe: &Path,
    limit: u64,
) -> Result<PathBuf, BinaryError> {
    let tmp = sibling(exe, "new");
    let result = fetch_into(client, url, sha256, &tmp, limit).await;
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| tmp)
}

async fn fetch_into(
    client: &reqwest::Client,
    url: &str,
    sha256: &str,
    tmp: &Path,
    limit: u64,
) -> Result<(), BinaryError> {
    let failed = |reason: String| BinaryError::Download {
        url: url.to_owned(),
        reason,
    };
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(failed(format!(
            "the engine answered {status}: {}",
            body.chars().take(300).collect::<String>()
        )));
    }
    let too_large = |size| BinaryError::TooLarge {
        url: url.to_owned(),
        size,
        limit,
    };
    if let Some(len) = resp.content_length().filter(|&len| len > limit) {
        return Err(too_large(len));
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut size: u64 = 0;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| failed(format!("{} after {size} bytes", e.without_url())))?
    {
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(size));
        }
        ctx.update(&chunk);
        file.write_all(&chunk).map_err(io_err("write", tmp))?;
    }
    file.sync_all().map_err(io_err("fsync", tmp))?;
    let actual = hex(ctx.finish().as_ref());
    if actual != sha256 {
        return Err(BinaryError::Checksum {
            url: url.to_owned(),
            expected: sha256.to_owned(),
            actual,
            size,
        });
    }
    Ok(())
}

/// Copies `src` (a binary a build made) into a temp file beside `exe` (0755, fsynced), ready for
/// [`install`].
pub fn stage_copy(src: &Path, exe: &Path) -> Result<PathBuf, BinaryError> {
    let tmp = sibling(exe, "new");
    let result = (|| {
        let mut from = File::open(src).map_err(io_err("open", src))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        io::copy(&mut from, &mut to).map_err(io_err("write", &tmp))?;
        to.sync_all().map_err(io_err("fsync", &tmp))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| tmp)
}

/// Puts `new` (a temp file beside `exe`) in place of `exe`, keeping the running binary as
/// `citrusd.prev`: a hard link of `exe` renamed to `.prev`, then `new` renamed over `exe`, then
/// the directory fsynced. `exe` names a complete binary at every moment.
pub fn install(exe: &Path, new: &Path) -> Result<(), BinaryError> {
    let prev = previous_of(exe);
    let link = sibling(exe, "prev");
    let _ = fs::remove_file(&link);
    fs::hard_link(exe, &link).map_err(io_err("keep the running binary as", &link))?;
    if let Err(e) = fs::rename(&link, &prev) {
        let _ = fs::remove_file(&link);
        return Err(io_err("keep the running binary as", &prev)(e));
    }
    fs::rename(new, exe).map_err(io_err("rename the new binary to", exe))?;
    sync_dir(exe)
}

/// `rollback_agent` without a commit: `citrusd.prev` and `citrusd` change places.
pub fn swap_previous(exe: &Path) -> Result<(), BinaryError> {
    let prev = previous_of(exe);
    let new = sibling(exe, "new");
    let _ = fs::remove_file(&new);
    fs::hard_link(&prev, &new).map_err(io_err("stage the previous binary", &prev))?;
    install(exe, &new).inspect_err(|_| {
        let _ = fs::remove_file(&new);
    })
}

/// The revert of an unconfirmed update: `citrusd.prev` renamed back over `citrusd` (the new
/// binary is gone afterwards), the directory fsynced.
pub fn restore_previous(exe: &Path) -> Result<(), BinaryError> {
    let prev = previous_of(exe);
    fs::rename(&prev, exe).map_err(io_err("put back the previous binary from", &prev))?;
    sync_dir(exe)
}

/// The HTTP client of release downloads: the agent's TLS trust, bounded connect and read times.
pub fn client(tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .timeout(Duration::from_secs(30 * 60))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Where HEAD was and where it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub previous: String,
    pub current: String,
}

fn err(action: &str, repo: &Path, e: git2::Error) -> String {
    format!(
        "{action} in {}: {} ({:?}/{:?})",
        repo.display(),
        e.message(),
        e.class(),
        e.code()
    )
}

fn head_of(repo: &Repository) -> Result<String, git2::Error> {
    Ok(repo.head()?.peel_to_commit()?.id().to_string())
}

/// The commit HEAD points at.
pub fn head(path: &Path) -> Result<String, String> {
    let repo = Repository::open(path).map_err(|e| err("open the repository", path, e))?;
    head_of(&repo).map_err(|e| err("read HEAD", path, e))
}

/// Fetches `branch` from `remote` and hard-resets to `remote/branch`.
/// An `https://` remote goes through [`super::git_https`] (TLS as set by its `with_tls`).
pub fn pull(path: &Path, remote: &str, branch: &str) -> Result<Moved, String> {
    super::git_https::register();
    let repo = Repository::open(path).map_err(|e| err("open the repository", path, e))?;
    let previous = head_of(&repo).map_err(|e| err("read HEAD", path, e))?;
    let mut r = repo
        .find_remote(remote)
        .map_err(|e| err(&format!("find remote {remote:?}"), path, e))?;
    r.fetch(&[branch], None, None)
        .map_err(|e| err(&format!("fetch {branch} from {remote}"), path, e))?;
    let target = repo
        .revparse_single(&format!("refs/remotes/{remote}/{branch}"))
        .map_err(|e| err(&format!("find {remote}/{branch}"), path, e))?;
    repo.reset(&target, ResetType::Hard, None)
        .map_err(|e| err("reset", path, e))?;
    let current = head_of(&repo).map_err(|e| err("read HEAD", path, e))?;
    Ok(Moved { previous, current })
}

/// Hard-resets to `commit` (7 to 40 hex digits, validated by the caller).
pub fn reset_to(path: &Path, commit: &str) -> Result<Moved, String> {
    let repo = Repository::open(path).map_err(|e| err("open the repository", path, e))?;
    let previous = head_of(&repo).map_err(|e| err("read HEAD", path, e))?;
    let target = repo
        .revparse_single(commit)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| err(&format!("find commit {commit}"), path, e))?;
    repo.reset(target.as_object(), ResetType::Hard, None)
        .map_err(|e| err("reset", path, e))?;
    let current = head_of(&repo).map_err(|e| err("read HEAD", path, e))?;
    Ok(Moved { previous, current })
}

/// Like [`reset_to`], for the way back after the new version did not confirm: first removes
/// an index lock (`.git/index.lock`) last written before `started`, this process's start. Such a
/// lock was left by a citrusd that died inside the update's hard reset (git2 moves HEAD, then
/// writes the index under that lock); git never takes a lock back, so without this every
/// attempt to go back would fail with "the index is locked". A lock written since `started`
/// belongs to a live git and is left alone.
pub fn reset_back(path: &Path, commit: &str, started: SystemTime) -> Result<Moved, String> {
    let repo = Repository::open(path).map_err(|e| err("open the repository", path, e))?;
    let lock = repo.path().join("index.lock");
    let stale = fs::metadata(&lock)
        .and_then(|m| m.modified())
        .is_ok_and(|at| at < started);
    if stale {
        tracing::warn!(lock = %lock.display(), "removing an index lock left by a crashed update");
        fs::remove_file(&lock).map_err(|e| format!("cannot remove {}: {e}", lock.display()))?;
    }
    reset_to(path, commit)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs the git CLI in `dir` (for tests that build repositories); its trimmed stdout.
    pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@citrus.invalid"])
            .args(args)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn install_keeps_the_previous_binary_and_swap_and_restore_bring_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("citrusd");
        fs::write(&exe, "old").unwrap();
        let new = dir.path().join("incoming");
        fs::write(&new, "new").unwrap();
        install(&exe, &new).unwrap();
        assert_eq!(fs::read_to_string(&exe).unwrap(), "new");
        assert_eq!(fs::read_to_string(previous_of(&exe)).unwrap(), "old");
        assert!(!new.exists());
        swap_previous(&exe).unwrap();
        assert_eq!(fs::read_to_string(&exe).unwrap(), "old");
        assert_eq!(fs::read_to_string(previous_of(&exe)).unwrap(), "new");
        restore_previous(&exe).unwrap();
        assert_eq!(fs::read_to_string(&exe).unwrap(), "new");
        assert!(!previous_of(&exe).exists());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("citrusd")],
            "no temp file left"
        );
        let err = swap_previous(&exe).unwrap_err().to_string();
        assert!(err.contains("citrusd.prev"), "{err}");
    }

    /// The record kept in the state directory, against its literal text.
    #[test]
    fn pending_update_json_literal() {
        use crate::control::assert_json_literal;
        let literal = r#"{"id":"op-7","kind":"rollback","commit_id":"abc123","previous":"def456","deadline_ms":1700000000000,"reverted":null,"binary":{"exe":"/usr/local/bin/citrusd","sha256":"aa","previous_sha256":"bb"}}"#;
        let pending = PendingUpdate {
            id: "op-7".into(),
            kind: UpdateKind::Rollback,
            commit_id: Some("abc123".into()),
            previous: "def456".into(),
            deadline_ms: 1_700_000_000_000,
            reverted: None,
            binary: Some(BinaryChange {
                exe: "/usr/local/bin/citrusd".into(),
                sha256: "aa".into(),
                previous_sha256: "bb".into(),
            }),
        };
        assert_json_literal(&pending, literal);
        for (kind, name) in [
            (UpdateKind::Update, "update"),
            (UpdateKind::Rollback, "rollback"),
        ] {
            assert_json_literal(&kind, &format!("\"{name}\""));
            assert_eq!(kind.as_str(), name);
        }
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, "abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn head_follows_a_branch_that_lives_only_in_packed_refs() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "A"]);
        git(dir.path(), &["pack-refs", "--all", "--prune"]);
        assert!(!dir.path().join(".git/refs/heads/main").exists());
        assert_eq!(
            head(dir.path()).unwrap(),
            git(dir.path(), &["rev-parse", "HEAD"])
        );
    }

    /// An index lock left by a crash in the middle of a hard reset blocks `reset_to`;
    /// `reset_back` removes it when it predates this process, and leaves a newer one alone.
    #[test]
    fn reset_back_removes_an_index_lock_older_than_this_process() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        fs::write(dir.path().join("V"), "a").unwrap();
        git(dir.path(), &["add", "V"]);
        git(dir.path(), &["commit", "-q", "-m", "A"]);
        let a = head(dir.path()).unwrap();
        fs::write(dir.path().join("V"), "b").unwrap();
        git(dir.path(), &["commit", "-q", "-am", "B"]);
        let b = head(dir.path()).unwrap();
        let lock = dir.path().join(".git/index.lock");
        fs::write(&lock, "").unwrap();
        let err = reset_to(dir.path(), &a).unwrap_err();
        assert!(err.contains("locked"), "{err}");
        // A lock taken after this process started: a live git's, kept.
        let before_lock = SystemTime::now() - Duration::from_secs(60);
        let err = reset_back(dir.path(), &a, before_lock).unwrap_err();
        assert!(err.contains("locked"), "{err}");
        assert!(lock.exists());
        assert_eq!(head(dir.path()).unwrap(), b);
        // Left before this process started: a crashed update's, removed.
        let after_lock = SystemTime::now() + Duration::from_secs(1);
        let moved = reset_back(dir.path(), &a, after_lock).unwrap();
        assert_eq!((moved.previous, moved.current), (b, a.clone()));
        assert_eq!(fs::read_to_string(dir.path().join("V")).unwrap(), "a");
        assert!(!lock.exists());
    }

    #[test]
    fn reset_to_an_unknown_commit_is_a_git2_error_and_head_stays() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "A"]);
        let before = head(dir.path()).unwrap();
        let err = reset_to(dir.path(), "0123456789abcdef").unwrap_err();
        assert!(err.contains("find commit 0123456789abcdef"), "{err}");
        assert_eq!(head(dir.path()).unwrap(), before);
    }
}
