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
pub fn pull(path: &Path, remote: &str, branch: &str) -> Result<Moved, String> {
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
