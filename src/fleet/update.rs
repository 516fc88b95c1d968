//! The agent's self-update through git2 on `[fleet.update].repo`: fetch and hard-reset to
//! `remote/branch`, or hard-reset to a given commit. Failures come from git2's results (with
//! their class and code), never from reading a command's output. An update in flight is a
//! [`PendingUpdate`], which the agent records in the state directory until the new version
//! confirms it.

use std::path::Path;

use git2::{Repository, ResetType};
use serde::{Deserialize, Serialize};

/// An update waiting for the new version to confirm it (by reconnecting to the engine).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingUpdate {
    /// The engine's command id.
    pub id: String,
    /// `"update"` or `"rollback"`.
    pub kind: String,
    /// For a rollback: the commit asked for.
    pub commit_id: Option<String>,
    /// The commit to go back to when the new version does not confirm.
    pub previous: String,
    /// Wall-clock deadline (ms since the epoch) for the confirmation.
    pub deadline_ms: u64,
    /// Set when this process is the automatic return to `previous`.
    pub reverted: Option<String>,
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
