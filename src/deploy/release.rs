//! The deploy root on disk: `releases/<id>/` (one directory per release), `shared/` (paths kept
//! across releases and linked into each) and `current`, a relative symlink to `releases/<id>`
//! that is only ever replaced atomically (a new symlink under a temp name, `rename` over it, fsync
//! of the root), so it always names a whole release.

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::config::DeployConfig;

/// `current`'s temp name during a switch.
const CURRENT_TMP: &str = ".current.tmp";

/// A new release id: the UTC time to the millisecond (`20261206T042200123Z`), sortable; a suffix
/// `-N` if `taken` says the plain one is in use.
pub fn new_id(taken: impl Fn(&str) -> bool) -> String {
    let base = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string();
    if !taken(&base) {
        return base;
    }
    (1..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !taken(id))
        .expect("some suffix is free")
}

/// Whether `id` looks like a release id (so it can be joined to `releases/` safely).
pub fn valid_id(id: &str) -> bool {
    (1..=40).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_digit())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The directory of release `id`.
pub fn dir(config: &DeployConfig, id: &str) -> PathBuf {
    config.releases().join(id)
}

/// Creates `releases/` and `shared/` under the root.
pub fn prepare(config: &DeployConfig) -> io::Result<()> {
    std::fs::create_dir_all(config.releases())?;
    std::fs::create_dir_all(config.shared_dir())
}

/// Where `current` points: `Ok(None)` if it does not exist; the release id even if that release
/// is gone (dangling). An error if `current` is not a symlink into `releases/`.
pub fn current(config: &DeployConfig) -> io::Result<Option<String>> {
    let path = config.current();
    let target = match std::fs::read_link(&path) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            return Err(io::Error::other(format!(
                "{} is not a symlink; move it away so that deployments can manage it",
                path.display()
            )))
        }
        Err(e) => return Err(e),
    };
    let id = if target.is_absolute() {
        target.strip_prefix(config.releases()).ok()
    } else {
        target.strip_prefix("releases").ok()
    };
    match id.and_then(Path::to_str).filter(|id| valid_id(id)) {
        Some(id) => Ok(Some(id.to_owned())),
        None => Ok(Some(String::new())),
    }
}

/// Points `current` at release `id`, atomically.
pub fn switch(config: &DeployConfig, id: &str) -> io::Result<()> {
    let current = config.current();
    if let Ok(meta) = std::fs::symlink_metadata(&current) {
        if !meta.file_type().is_symlink() {
            return Err(io::Error::other(format!(
                "{} is a real {} , not a symlink; move it away so that deployments can manage it",
                current.display(),
                if meta.is_dir() { "directory" } else { "file" }
            )));
        }
    }
    let tmp = config.root.join(CURRENT_TMP);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    symlink(Path::new("releases").join(id), &tmp)?;
    std::fs::rename(&tmp, &current)?;
    std::fs::File::open(&config.root)?.sync_all()
}

/// Links every `shared` path of the config into `release` (a directory): a path missing from
/// `shared/` is seeded from the release's own copy, or made an empty directory; the release's
/// copy is replaced by an absolute symlink to `shared/<path>`. Idempotent. Returns what it did,
/// a line per path.
pub fn link_shared(config: &DeployConfig, release: &Path) -> io::Result<String> {
    let mut lines = Vec::new();
    for path in &config.shared {
        let shared = config.shared_dir().join(path);
        let inside = release.join(path);
        let inside_meta = std::fs::symlink_metadata(&inside).ok();
        if std::fs::symlink_metadata(&shared).is_err() {
            if let Some(parent) = shared.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match &inside_meta {
                Some(meta) if !meta.file_type().is_symlink() => {
                    std::fs::rename(&inside, &shared)?;
                    lines.push(format!(
                        "shared/{}: seeded from the release",
                        path.display()
                    ));
                }
                _ => {
                    std::fs::create_dir_all(&shared)?;
                    lines.push(format!("shared/{}: created empty", path.display()));
                }
            }
        }
        if links_to(&inside, &shared) {
            continue;
        }
        match std::fs::symlink_metadata(&inside) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&inside)?,
            Ok(_) => std::fs::remove_file(&inside)?,
            Err(_) => {}
        }
        if let Some(parent) = inside.parent() {
            std::fs::create_dir_all(parent)?;
        }
        symlink(&shared, &inside)?;
        lines.push(format!("{} -> shared/{}", path.display(), path.display()));
    }
    Ok(lines.join("\n"))
}

/// The `shared` paths of `release` that are not a symlink to their `shared/` path.
pub fn broken_shared(config: &DeployConfig, release: &Path) -> Vec<PathBuf> {
    config
        .shared
        .iter()
        .filter(|path| !links_to(&release.join(path), &config.shared_dir().join(path)))
        .cloned()
        .collect()
}

fn links_to(link: &Path, target: &Path) -> bool {
    std::fs::read_link(link).is_ok_and(|t| t == target)
}

/// Release directories under `releases/`, by id (oldest first).
pub fn list(config: &DeployConfig) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(config.releases())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| valid_id(id))
        .collect();
    ids.sort();
    ids
}

/// Removes release `id`'s directory.
pub fn remove(config: &DeployConfig, id: &str) -> io::Result<()> {
    match std::fs::remove_dir_all(dir(config, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Gives every file under `root` (not following symlinks) to `uid:gid`, for a build that runs as
/// the app's `user`.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let own = |path: &Path| {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
    };
    own(root)?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            own(&path)?;
            if entry.file_type()?.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeploySource;

    fn config(root: &Path, shared: &[&str]) -> DeployConfig {
        DeployConfig {
            root: root.to_owned(),
            source: DeploySource::Path("/nonexistent".into()),
            build: None,
            build_timeout: std::time::Duration::from_secs(1),
            shared: shared.iter().map(PathBuf::from).collect(),
            keep: 5,
            health: None,
        }
    }

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let a = new_id(|_| false);
        let b = new_id(|id| id == a);
        assert!(valid_id(&a) && valid_id(&b), "{a} {b}");
        assert!(b > a || b.starts_with(&a));
        for bad in ["", "../x", "a/b", "-1", "x".repeat(41).as_str()] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn switch_is_atomic_and_readable() {
        let root = tempfile::tempdir().unwrap();
        let c = config(root.path(), &[]);
        prepare(&c).unwrap();
        assert_eq!(current(&c).unwrap(), None);
        std::fs::create_dir(dir(&c, "1")).unwrap();
        std::fs::create_dir(dir(&c, "2")).unwrap();
        switch(&c, "1").unwrap();
        assert_eq!(current(&c).unwrap().as_deref(), Some("1"));
        switch(&c, "2").unwrap();
        assert_eq!(current(&c).unwrap().as_deref(), Some("2"));
        assert_eq!(
            std::fs::read_link(c.current()).unwrap(),
            Path::new("releases/2")
        );
        assert!(!root.path().join(CURRENT_TMP).exists());
        assert_eq!(list(&c), ["1", "2"]);
        // A real directory in the way is refused, not replaced.
        std::fs::remove_file(c.current()).unwrap();
        std::fs::create_dir(c.current()).unwrap();
        let err = switch(&c, "1").unwrap_err().to_string();
        assert!(err.contains("not a symlink"), "{err}");
        assert!(current(&c).is_err());
    }

    #[test]
    fn shared_paths_are_seeded_then_linked() {
        let root = tempfile::tempdir().unwrap();
        let c = config(root.path(), &["storage", ".env", "var/cache"]);
        prepare(&c).unwrap();
        let r1 = dir(&c, "1");
        std::fs::create_dir_all(r1.join("storage")).unwrap();
        std::fs::write(r1.join("storage/kept"), "from release 1").unwrap();
        std::fs::write(r1.join(".env"), "A=1").unwrap();
        let out = link_shared(&c, &r1).unwrap();
        assert!(out.contains("shared/storage: seeded"), "{out}");
        assert!(out.contains("shared/var/cache: created empty"), "{out}");
        assert_eq!(
            std::fs::read_to_string(r1.join("storage/kept")).unwrap(),
            "from release 1"
        );
        assert!(broken_shared(&c, &r1).is_empty());
        // The next release's own copies are replaced by the shared ones.
        let r2 = dir(&c, "2");
        std::fs::create_dir_all(r2.join("storage")).unwrap();
        std::fs::write(r2.join(".env"), "A=2").unwrap();
        link_shared(&c, &r2).unwrap();
        assert_eq!(std::fs::read_to_string(r2.join(".env")).unwrap(), "A=1");
        assert_eq!(link_shared(&c, &r2).unwrap(), "", "idempotent");
        std::fs::remove_file(r2.join(".env")).unwrap();
        assert_eq!(broken_shared(&c, &r2), [PathBuf::from(".env")]);
    }
}
