//! `{ git = URL, branch = … }` sources: a bare cache repository per app, fetched (branches and
//! tags) on every deployment, and one commit's tree written into the release through the
//! release writer (no `.git` there). `https://` goes through citrusd's own transport
//! ([`crate::fleet::git_https`]); `file://` URLs and absolute local paths need no network;
//! ssh and everything else is refused.
//!
//! The cache is only a cache: an init or fetch that was interrupted leaves at worst a
//! half-made repository (init is repeated) or stale `*.lock` files (removed before the next
//! fetch), since libgit2 writes packs under temporary names and moves refs last. One checkout
//! at a time per cache: the caller serialises deployments of an app.

use std::path::Path;
use std::sync::Arc;

use git2::{AutotagOption, FetchOptions, FetchPrune, ObjectType, Oid, Repository};

use super::{io_err, plain_name, Limits, RelPath, Release, SourceError, MAX_DEPTH};

/// Where a fetched branch lives in the cache.
const REMOTE_BRANCHES: &str = "refs/remotes/origin/";

/// Fetches `url` into the bare cache repository `cache` (created on first use), resolves
/// `git_ref` — a branch, a tag or a 7–40 hex commit id, in that order — and writes that
/// commit's tree into `dest`, an existing empty directory. Returns the full commit id.
///
/// `tls` is the TLS configuration of an `https://` fetch (build it with
/// [`crate::fleet::tls::client_config`]); `None` trusts the system roots only. The ref must
/// already be validated ([`crate::fleet::protocol::validate_git_ref`]). Symlinks in the tree
/// must stay inside the release, like those of the other sources.
pub fn git_checkout(
    url: &str,
    git_ref: &str,
    cache: &Path,
    dest: &Path,
    tls: Option<Arc<rustls::ClientConfig>>,
    limits: &Limits,
) -> Result<String, SourceError> {
    let https = url.starts_with("https://");
    let shown = &masked(url);
    if !(https || url.starts_with("file://") || url.starts_with('/')) {
        return Err(SourceError::UnsupportedUrl { url: shown.into() });
    }
    let git_err = |action, source| SourceError::Git {
        action,
        url: shown.into(),
        source,
    };
    // The release is checked first: nothing is fetched for a deployment that cannot use it.
    let mut release = Release::open(dest, limits, "git tree entry", Path::new(""))?;
    let repo = open_cache(cache).map_err(|e| git_err("create the cache repository for", e))?;
    remove_stale_locks(cache)?;
    let fetch = || -> Result<(), git2::Error> {
        crate::fleet::git_https::register();
        let mut remote = repo.remote_anonymous(url)?;
        let mut options = FetchOptions::new();
        options
            .prune(FetchPrune::On)
            .download_tags(AutotagOption::None);
        let refspecs = [
            format!("+refs/heads/*:{REMOTE_BRANCHES}*"),
            "+refs/tags/*:refs/tags/*".to_string(),
        ];
        remote.fetch(&refspecs, Some(&mut options), None)
    };
    match (https, tls) {
        (true, Some(tls)) => crate::fleet::git_https::with_tls(tls, fetch),
        _ => fetch(),
    }
    .map_err(|e| git_err("fetch", e))?;

    let commit = resolve(&repo, git_ref)
        .map_err(|e| git_err("resolve the ref in", e))?
        .ok_or_else(|| SourceError::RefNotFound {
            git_ref: git_ref.into(),
            url: shown.into(),
        })?;
    let commit = repo
        .find_commit(commit)
        .map_err(|e| git_err("read the commit from", e))?;
    let tree = commit
        .tree()
        .map_err(|e| git_err("read the tree from", e))?;
    let mut writer = TreeWriter {
        repo: &repo,
        url: shown,
        release: &mut release,
    };
    writer.write(&tree, &RelPath::default(), 0)?;
    release.finish()?;
    Ok(commit.id().to_string())
}

/// `url` with the password or token of a `scheme://user:password@host/…` masked, for messages.
fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[authority.len()..]),
        None => url.to_string(),
    }
}

/// Opens the bare cache, creating it, or finishing an init that was interrupted.
fn open_cache(cache: &Path) -> Result<Repository, git2::Error> {
    match Repository::open_bare(cache) {
        Ok(repo) => Ok(repo),
        Err(_) => Repository::init_bare(cache),
    }
}

/// Removes the `*.lock` files a killed fetch leaves behind (libgit2 would refuse to update
/// those refs). Only the cache's top level and `refs/` hold them.
fn remove_stale_locks(cache: &Path) -> Result<(), SourceError> {
    fn walk(dir: &Path, depth: usize) -> Result<(), SourceError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read cache directory", dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err("read cache directory", dir, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io_err("inspect", &path, e))?;
            if kind.is_file() && entry.file_name().as_encoded_bytes().ends_with(b".lock") {
                std::fs::remove_file(&path).map_err(|e| io_err("remove stale lock", &path, e))?;
            } else if kind.is_dir() && depth > 0 && depth < MAX_DEPTH {
                walk(&path, depth + 1)?;
            }
        }
        Ok(())
    }
    walk(cache, 0)?;
    walk(&cache.join("refs"), 1)
}

/// The commit `git_ref` names in the cache: a fetched branch, a tag, then a commit id.
fn resolve(repo: &Repository, git_ref: &str) -> Result<Option<Oid>, git2::Error> {
    let name = git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref);
    let candidates = if git_ref.starts_with("refs/tags/") {
        vec![git_ref.to_string()]
    } else {
        vec![
            format!("{REMOTE_BRANCHES}{name}"),
            format!("refs/tags/{name}"),
        ]
    };
    for candidate in candidates {
        match repo.find_reference(&candidate) {
            Ok(r) => return Ok(Some(r.peel_to_commit()?.id())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => {}
            Err(e) if e.code() == git2::ErrorCode::InvalidSpec => {}
            Err(e) => return Err(e),
        }
    }
    let hex = (7..=40).contains(&git_ref.len()) && git_ref.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        match repo.find_commit_by_prefix(git_ref) {
            Ok(c) => return Ok(Some(c.id())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Writes a git tree into the release, depth first.
struct TreeWriter<'a> {
    repo: &'a Repository,
    url: &'a str,
    release: &'a mut Release,
}

impl TreeWriter<'_> {
    fn git_err(&self, action: &'static str, source: git2::Error) -> SourceError {
        SourceError::Git {
            action,
            url: self.url.into(),
            source,
        }
    }

    fn write(
        &mut self,
        tree: &git2::Tree<'_>,
        rel: &RelPath,
        depth: usize,
    ) -> Result<(), SourceError> {
        let odb = self
            .repo
            .odb()
            .map_err(|e| self.git_err("open the object database of", e))?;
        for entry in tree.iter() {
            self.release
                .count_entry(&|| format!("the tree of {}", self.url))?;
            let name = entry.name_bytes();
            let refuse = |reason: String| SourceError::Refused {
                what: "git tree entry",
                name: format!("{}/{}", rel.display(), String::from_utf8_lossy(name))
                    .trim_start_matches('/')
                    .to_string(),
                reason,
            };
            plain_name(name).map_err(refuse)?;
            if name == b".git" {
                return Err(refuse("a `.git` entry in a tree is not allowed".into()));
            }
            let child = rel.join(&std::ffi::CString::new(name).expect("checked: no NUL"));
            match entry.filemode() {
                0o040000 => {
                    if depth + 1 > MAX_DEPTH {
                        return Err(refuse(format!(
                            "nested deeper than {MAX_DEPTH} directories"
                        )));
                    }
                    self.release.dir(&child, 0o755)?;
                    let sub = self
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| self.git_err("read a tree from", e))?;
                    self.write(&sub, &child, depth + 1)?;
                }
                mode @ (0o100644 | 0o100664 | 0o100755 | 0o120000) => {
                    let (size, kind) = odb
                        .read_header(entry.id())
                        .map_err(|e| self.git_err("read a blob header from", e))?;
                    if kind != ObjectType::Blob {
                        return Err(refuse(format!("a {kind} where a blob belongs")));
                    }
                    // Checked before the blob is loaded into memory.
                    self.release.file_fits(&child, size as u64)?;
                    let blob = self
                        .repo
                        .find_blob(entry.id())
                        .map_err(|e| self.git_err("read a blob from", e))?;
                    if mode == 0o120000 {
                        self.release.symlink(&child, blob.content())?;
                    } else {
                        let perm = if mode == 0o100755 { 0o755 } else { 0o644 };
                        self.release
                            .file(&child, perm, blob.size() as u64, blob.content())?;
                    }
                }
                // A submodule: an empty directory, as `git clone` leaves it.
                0o160000 => self.release.dir(&child, 0o755)?,
                other => return Err(refuse(format!("unknown file mode {other:o}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use crate::fleet::update::tests::git;

    /// A work repository at `t/repo` with commits on `main`, a branch `next`, an annotated
    /// tag `v1` and a lightweight tag `light`.
    struct Upstream {
        t: tempfile::TempDir,
    }

    impl Upstream {
        fn new() -> Upstream {
            let t = tempfile::tempdir().unwrap();
            let repo = t.path().join("repo");
            std::fs::create_dir(&repo).unwrap();
            git(&repo, &["init", "-q", "-b", "main"]);
            std::fs::write(repo.join("README"), "v1\n").unwrap();
            std::fs::create_dir(repo.join("bin")).unwrap();
            std::fs::write(repo.join("bin/run"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(repo.join("bin/run"), PermissionsExt::from_mode(0o755))
                .unwrap();
            std::os::unix::fs::symlink("../README", repo.join("bin/readme")).unwrap();
            git(&repo, &["add", "-A"]);
            git(&repo, &["commit", "-q", "-m", "one"]);
            git(&repo, &["tag", "-a", "v1", "-m", "release 1"]);
            git(&repo, &["tag", "light"]);
            git(&repo, &["checkout", "-q", "-b", "next"]);
            std::fs::write(repo.join("NEXT"), "next\n").unwrap();
            git(&repo, &["add", "-A"]);
            git(&repo, &["commit", "-q", "-m", "next"]);
            git(&repo, &["checkout", "-q", "main"]);
            Upstream { t }
        }
        fn repo(&self) -> PathBuf {
            self.t.path().join("repo")
        }
        fn url(&self) -> String {
            self.repo().display().to_string()
        }
        fn cache(&self) -> PathBuf {
            self.t.path().join("cache/app.git")
        }
        fn rev(&self, r: &str) -> String {
            git(&self.repo(), &["rev-parse", &format!("{r}^{{commit}}")])
        }
        /// Checks `git_ref` out into a fresh directory.
        fn checkout(&self, url: &str, git_ref: &str) -> Result<(String, PathBuf), SourceError> {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dest = self.t.path().join(format!("releases/{n}"));
            std::fs::create_dir_all(&dest).unwrap();
            let id = git_checkout(url, git_ref, &self.cache(), &dest, None, &Limits::default())?;
            Ok((id, dest))
        }
    }

    #[test]
    fn a_branch_a_tag_and_a_commit_id_check_out_their_tree() {
        let up = Upstream::new();
        let (id, dest) = up.checkout(&up.url(), "main").unwrap();
        assert_eq!(id, up.rev("main"));
        assert_eq!(
            std::fs::read_to_string(dest.join("README")).unwrap(),
            "v1\n"
        );
        let mode = std::fs::metadata(dest.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let mode = std::fs::metadata(dest.join("README"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(
            std::fs::read_link(dest.join("bin/readme")).unwrap(),
            Path::new("../README")
        );
        assert!(!dest.join(".git").exists());
        assert!(!dest.join("NEXT").exists());

        let (id, dest) = up.checkout(&up.url(), "next").unwrap();
        assert_eq!(id, up.rev("next"));
        assert!(dest.join("NEXT").exists());
        let (id, _) = up.checkout(&up.url(), "v1").unwrap();
        assert_eq!(id, up.rev("main"), "an annotated tag peels to its commit");
        let (id, _) = up.checkout(&up.url(), "refs/tags/light").unwrap();
        assert_eq!(id, up.rev("main"));
        let next = up.rev("next");
        let (id, dest) = up.checkout(&up.url(), &next[..7]).unwrap();
        assert_eq!(id, next);
        assert!(dest.join("NEXT").exists());
        let (id, _) = up.checkout(&format!("file://{}", up.url()), &next).unwrap();
        assert_eq!(id, next);
    }

    #[test]
    fn the_cache_is_reused_and_sees_new_commits() {
        let up = Upstream::new();
        let (first, _) = up.checkout(&up.url(), "main").unwrap();
        let cache_head = Repository::open_bare(up.cache()).unwrap().path().to_owned();
        std::fs::write(up.repo().join("README"), "v2\n").unwrap();
        git(&up.repo(), &["commit", "-q", "-am", "two"]);
        let (second, dest) = up.checkout(&up.url(), "main").unwrap();
        assert_ne!(first, second);
        assert_eq!(second, up.rev("main"));
        assert_eq!(
            std::fs::read_to_string(dest.join("README")).unwrap(),
            "v2\n"
        );
        assert_eq!(
            Repository::open_bare(up.cache()).unwrap().path(),
            cache_head
        );
        // The first commit is still in the cache and can be checked out by id.
        let (id, dest) = up.checkout(&up.url(), &first).unwrap();
        assert_eq!(id, first);
        assert_eq!(
            std::fs::read_to_string(dest.join("README")).unwrap(),
            "v1\n"
        );
    }

    #[test]
    fn an_unknown_ref_is_refused_naming_it_and_the_url() {
        let up = Upstream::new();
        for r in ["nope", "deadbeef00", "v9"] {
            let err = up.checkout(&up.url(), r).unwrap_err();
            assert!(matches!(err, SourceError::RefNotFound { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!("ref {r} not found in {}", up.url())
            );
        }
    }

    #[test]
    fn unsupported_urls_and_unreachable_repositories_are_errors() {
        let up = Upstream::new();
        for url in [
            "ssh://host/x.git",
            "git@host:x.git",
            "http://host/x.git",
            "relative/dir",
        ] {
            let err = up.checkout(url, "main").unwrap_err();
            assert!(matches!(err, SourceError::UnsupportedUrl { .. }), "{err}");
        }
        let missing = up.t.path().join("missing").display().to_string();
        let err = up.checkout(&missing, "main").unwrap_err();
        assert!(
            err.to_string().contains(&format!("cannot fetch {missing}")),
            "{err}"
        );
    }

    #[test]
    fn credentials_in_a_url_are_masked_in_messages() {
        assert_eq!(
            masked("https://user:tok@git.example.com/a@b.git"),
            "https://***@git.example.com/a@b.git"
        );
        assert_eq!(
            masked("https://git.example.com/x"),
            "https://git.example.com/x"
        );
        assert_eq!(masked("/srv/repo"), "/srv/repo");
        let up = Upstream::new();
        let err = up
            .checkout("ssh://me:secret@host/x.git", "main")
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn an_escaping_symlink_in_the_tree_is_refused() {
        let up = Upstream::new();
        std::os::unix::fs::symlink("../../etc/passwd", up.repo().join("bin/pw")).unwrap();
        git(&up.repo(), &["add", "-A"]);
        git(&up.repo(), &["commit", "-q", "-m", "evil"]);
        let err = up.checkout(&up.url(), "main").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"bin/pw\"") && msg.contains("leaves the release"),
            "{msg}"
        );
    }

    #[test]
    fn an_interrupted_init_or_fetch_leaves_the_cache_usable() {
        let up = Upstream::new();
        // A cache directory whose init never finished.
        std::fs::create_dir_all(up.cache().join("objects")).unwrap();
        let (id, _) = up.checkout(&up.url(), "main").unwrap();
        assert_eq!(id, up.rev("main"));
        // Locks and a partial pack left by a fetch that was killed.
        std::fs::write(up.cache().join("packed-refs.lock"), "").unwrap();
        std::fs::write(up.cache().join("refs/remotes/origin/main.lock"), "").unwrap();
        std::fs::write(up.cache().join("objects/pack/tmp_pack_XXXX"), "partial").unwrap();
        git(&up.repo(), &["commit", "-q", "--allow-empty", "-m", "more"]);
        let (id, _) = up.checkout(&up.url(), "main").unwrap();
        assert_eq!(id, up.rev("main"));
    }
}
