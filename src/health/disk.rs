//! Disk usage of the filesystem holding a path, via `statvfs(3)`, computed the way `df` does.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::statvfs::statvfs;

/// Space figures for the filesystem that holds [`DiskUsage::path`].
#[derive(Clone, Debug, PartialEq)]
pub struct DiskUsage {
    /// The path that was queried (as given).
    pub path: PathBuf,
    /// Size of the filesystem: `f_blocks * f_frsize`.
    pub total_bytes: u64,
    /// Space in use: `(f_blocks - f_bfree) * f_frsize`.
    pub used_bytes: u64,
    /// Space an unprivileged user can still write: `f_bavail * f_frsize`.
    pub available_bytes: u64,
    /// `used / (used + available) * 100`, as `df` reports it; root-reserved blocks count as
    /// neither. `0.0` when the filesystem reports no blocks at all (e.g. some pseudo filesystems).
    pub percent_used: f64,
}

/// Why [`usage`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `statvfs` on the path failed (missing path, permission denied, ...).
    #[error("statvfs {}: {source}", path.display())]
    Statvfs {
        /// The path that was queried.
        path: PathBuf,
        /// The errno `statvfs` returned.
        #[source]
        source: Errno,
    },
}

/// Returns the disk usage of the filesystem holding `path` (`statvfs(3)`; symlinks are followed).
///
/// `percent_used` is computed like `df`: `used / (used + available) * 100`, where
/// `used = (blocks - bfree) * frsize` and `available = bavail * frsize`.
pub fn usage(path: &Path) -> Result<DiskUsage, DiskError> {
    let st = statvfs(path).map_err(|source| DiskError::Statvfs {
        path: path.to_path_buf(),
        source,
    })?;
    let frsize = to_u64(st.fragment_size());
    let blocks = to_u64(st.blocks());
    // Some filesystems can briefly report bfree > blocks; never underflow.
    let free = to_u64(st.blocks_free()).min(blocks);
    let avail = to_u64(st.blocks_available());

    let total_bytes = blocks.saturating_mul(frsize);
    let used_bytes = (blocks - free).saturating_mul(frsize);
    let available_bytes = avail.saturating_mul(frsize);
    let denom = used_bytes as f64 + available_bytes as f64;
    let percent_used = if denom > 0.0 {
        (used_bytes as f64 / denom * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    Ok(DiskUsage {
        path: path.to_path_buf(),
        total_bytes,
        used_bytes,
        available_bytes,
        percent_used,
    })
}

/// Widens a platform-sized `statvfs` field (`fsblkcnt_t`, `c_ulong`) to `u64`, saturating.
fn to_u64<T: TryInto<u64>>(v: T) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_sane(u: &DiskUsage) {
        assert!(u.total_bytes > 0, "{u:?}");
        assert!(
            u.used_bytes.saturating_add(u.available_bytes) <= u.total_bytes,
            "{u:?}"
        );
        assert!((0.0..=100.0).contains(&u.percent_used), "{u:?}");
    }

    #[test]
    fn root_is_sane() {
        let u = usage(Path::new("/")).unwrap();
        assert_eq!(u.path, PathBuf::from("/"));
        assert_sane(&u);
    }

    #[test]
    fn tempdir_is_sane() {
        let dir = tempfile::tempdir().unwrap();
        let u = usage(dir.path()).unwrap();
        assert_eq!(u.path, dir.path());
        assert_sane(&u);
    }

    #[test]
    fn missing_path_errors_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir");
        let err = usage(&missing).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("statvfs"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        match err {
            DiskError::Statvfs { path, source } => {
                assert_eq!(path, missing);
                assert_eq!(source, Errno::ENOENT);
            }
        }
    }
}
