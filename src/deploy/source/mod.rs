//! Deployment sources: an app's source written into a fresh, empty release directory from a
//! gzip'd tar archive ([`extract_archive`]), a directory tree ([`copy_tree`]) or a git commit
//! ([`git_checkout`]). Every function blocks: the deployment engine runs them in
//! `spawn_blocking`.
//!
//! Theory of operation. The input is untrusted, so all three write through one [`Release`]
//! writer that holds the release directory open and reaches every entry name by name from
//! that descriptor with `openat(O_DIRECTORY | O_NOFOLLOW)`, creating files with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`: a path through a symlink is refused, never followed, so an
//! earlier entry cannot redirect a later one outside. A symlink is written only if its text
//! alone keeps it inside: relative, with `..` only as a leading run that does not climb above
//! the release. The kernel resolves such a leading run from the link's real directory, and a
//! name below a directory inside stays inside, so every chain of these symlinks stays inside
//! too. A hard link must name a regular file already written into the release.
//!
//! On an error the release is left partly written and the caller removes it. Files are not
//! fsynced one by one: the caller syncs the finished release (`syncfs`) before switching
//! `current` to it.

mod archive;
mod git;
mod tree;

pub use archive::extract_archive;
pub use git::git_checkout;
pub use tree::copy_tree;

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode};
use nix::unistd::{linkat, symlinkat};

/// Files up to this size are copied through a buffer, larger ones with `io::copy`.
const SMALL_FILE: u64 = 64 << 10;

/// Directories nested deeper than this below the release are refused (a walk holds one open
/// descriptor per level).
pub const MAX_DEPTH: usize = 256;

/// Bounds on what one source may write into a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries (files, directories, links) in the source.
    pub max_entries: u64,
    /// Sum of the sizes of the regular files.
    pub max_bytes: u64,
    /// Length in bytes of one path inside the release.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 200_000,
            max_bytes: 4 << 30,
            max_path_len: 4096,
        }
    }
}

/// What a source wrote: regular files (hard links included) and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
}

/// Why a source could not be written into a release.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A system call failed. `source` keeps its kind: a full disk is
    /// [`io::ErrorKind::StorageFull`] (see [`SourceError::is_storage_full`]).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An entry of the source was refused; nothing was written for it.
    #[error("refused {what} {name:?}: {reason}")]
    Refused {
        /// "archive entry", "path" or "git tree entry".
        what: &'static str,
        name: String,
        reason: String,
    },
    /// The source is larger than [`Limits`] allow.
    #[error("{source_name} has more than {limit} {unit}, the limit for a deployment source")]
    TooLarge {
        source_name: String,
        limit: u64,
        /// "entries" or "bytes".
        unit: &'static str,
    },
    /// The release directory already has something in it.
    #[error("release directory {} is not empty: a source is written only into an empty one", path.display())]
    DestNotEmpty { path: PathBuf },
    /// A git URL of a kind citrusd does not fetch from.
    #[error("unsupported git URL {url:?}: use https://, file:// or an absolute local path")]
    UnsupportedUrl { url: String },
    /// A git operation failed. (Git URLs in errors have any `user:password@` masked.)
    #[error("cannot {action} {url}: {}", source.message())]
    Git {
        action: &'static str,
        url: String,
        #[source]
        source: git2::Error,
    },
    /// The ref is neither a branch, a tag, nor a commit of the repository.
    #[error("ref {git_ref} not found in {url}")]
    RefNotFound { git_ref: String, url: String },
}

impl SourceError {
    /// The kind of the underlying I/O error, if this is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            SourceError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// Whether the disk filled up (ENOSPC) while writing the release.
    pub fn is_storage_full(&self) -> bool {
        self.io_kind() == Some(io::ErrorKind::StorageFull)
    }
}

/// An I/O error with what was being done to which path.
fn io_err(action: &'static str, path: &Path, source: impl Into<io::Error>) -> SourceError {
    SourceError::Io {
        action,
        path: path.to_owned(),
        source: source.into(),
    }
}

/// A path inside the release: one plain name (no `/`, `.`, `..` or NUL) per component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RelPath(Vec<CString>);

impl RelPath {
    /// Parses a `/`-separated relative path; empty and `.` components are skipped, so one
    /// leading `./` is fine. Absolute paths and `..` components are refused (with the reason).
    fn parse(raw: &[u8]) -> Result<RelPath, String> {
        if raw.starts_with(b"/") {
            return Err("absolute path".into());
        }
        let mut parts = Vec::new();
        for part in raw.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err("`..` leaves the release directory".into()),
                name => parts.push(CString::new(name).map_err(|_| "NUL byte in the path")?),
            }
        }
        Ok(RelPath(parts))
    }

    /// This path with one more plain `name` (checked by the caller).
    fn join(&self, name: &CStr) -> RelPath {
        let mut parts = self.0.clone();
        parts.push(name.to_owned());
        RelPath(parts)
    }

    /// The release directory itself.
    fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    fn len_bytes(&self) -> usize {
        self.0.iter().map(|p| p.as_bytes().len() + 1).sum::<usize>()
    }

    fn display(&self) -> String {
        let parts: Vec<_> = self.0.iter().map(|p| p.to_string_lossy()).collect();
        parts.join("/")
    }
}

/// Whether a plain name is fit to be one component of a release path.
fn plain_name(name: &[u8]) -> Result<(), String> {
    match name {
        b"" => Err("empty name".into()),
        b"." | b".." => Err(format!(
            "{:?} is not a plain name",
            String::from_utf8_lossy(name)
        )),
        _ if name.contains(&b'/') || name.contains(&0) => {
            Err("a name with `/` or a NUL byte".into())
        }
        _ => Ok(()),
    }
}

/// Checks that a symlink written `depth` directories below the release, with `target`, stays
/// inside: relative, `..` only as a leading run, and not more of them than `depth`.
fn link_inside(depth: usize, target: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(target);
    if target.is_empty() || target.contains(&0) {
        return Err("empty link target or a NUL byte in it".into());
    }
    if target.starts_with(b"/") {
        return Err(format!("absolute link target {shown:?}"));
    }
    let (mut ups, mut named) = (0, false);
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if named => {
                let why = "has `..` after a name (write it without the detour)";
                return Err(format!("link target {shown:?} {why}"));
            }
            b".." => ups += 1,
            _ => named = true,
        }
    }
    if ups > depth {
        return Err(format!(
            "link target {shown:?} leaves the release directory"
        ));
    }
    Ok(())
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The one writer of a release directory (see the module header).
struct Release {
    root: OwnedFd,
    path: PathBuf,
    limits: Limits,
    /// How refused entries are named, and the directory their names are shown under.
    what: &'static str,
    shown_under: PathBuf,
    stats: Stats,
    entries: u64,
    /// The parent directory of the last entry, held open: entries come grouped by directory.
    parent: Option<(RelPath, OwnedFd)>,
    /// Modes of directories, applied at the end so a read-only one can still be filled.
    dir_modes: Vec<(RelPath, u32)>,
    /// Reused for small files.
    buf: Vec<u8>,
}

impl Release {
    /// Opens `dest`, which must be an existing, empty directory.
    fn open(
        dest: &Path,
        limits: &Limits,
        what: &'static str,
        shown_under: &Path,
    ) -> Result<Release, SourceError> {
        let root = open(
            dest,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open release directory", dest, e))?;
        let mut dir = nix::dir::Dir::openat(&root, ".", dir_flags(), Mode::empty())
            .map_err(|e| io_err("open release directory", dest, e))?;
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err("read release directory", dest, e))?;
            if ![&b"."[..], b".."].contains(&entry.file_name().to_bytes()) {
                return Err(SourceError::DestNotEmpty {
                    path: dest.to_owned(),
                });
            }
        }
        Ok(Release {
            root,
            path: dest.to_owned(),
            limits: limits.clone(),
            what,
            shown_under: shown_under.to_owned(),
            stats: Stats::default(),
            entries: 0,
            parent: None,
            dir_modes: Vec::new(),
            buf: Vec::new(),
        })
    }

    /// Counts one entry of the source against [`Limits::max_entries`].
    fn count_entry(&mut self, source_name: &dyn Fn() -> String) -> Result<(), SourceError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(SourceError::TooLarge {
                source_name: source_name(),
                limit: self.limits.max_entries,
                unit: "entries",
            });
        }
        Ok(())
    }

    fn refused(&self, rel: &RelPath, reason: impl Into<String>) -> SourceError {
        SourceError::Refused {
            what: self.what,
            name: self.shown_under.join(rel.display()).display().to_string(),
            reason: reason.into(),
        }
    }

    fn io(&self, action: &'static str, rel: &RelPath, e: impl Into<io::Error>) -> SourceError {
        io_err(action, &self.path.join(rel.display()), e)
    }

    /// Checks a path about to be written: not the release itself, not too long.
    fn check(&self, rel: &RelPath) -> Result<(), SourceError> {
        if rel.is_root() {
            return Err(self.refused(rel, "names the release directory itself"));
        }
        if rel.len_bytes() > self.limits.max_path_len {
            return Err(self.refused(
                rel,
                format!("path longer than {} bytes", self.limits.max_path_len),
            ));
        }
        Ok(())
    }

    /// Opens the directory `dir` (a path of directories, none of them a symlink) on the way to
    /// writing `entry`, creating missing ones with mode 0755 when `create` is set.
    fn open_dir(
        &self,
        entry: &RelPath,
        dir: &[CString],
        create: bool,
    ) -> Result<OwnedFd, SourceError> {
        let mut fd = self
            .root
            .try_clone()
            .map_err(|e| io_err("open release directory", &self.path, e))?;
        for (i, name) in dir.iter().enumerate() {
            let here = || RelPath(dir[..=i].to_vec());
            let mut opened = openat(&fd, name.as_c_str(), dir_flags(), Mode::empty());
            if create && matches!(opened, Err(Errno::ENOENT)) {
                match mkdirat(&fd, name.as_c_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(self.io("create directory", &here(), e)),
                }
                opened = openat(&fd, name.as_c_str(), dir_flags(), Mode::empty());
            }
            fd = match opened {
                Ok(fd) => fd,
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(self.refused(
                        entry,
                        format!(
                            "{:?} is a symlink or a file: nothing is written through it",
                            here().display()
                        ),
                    ))
                }
                Err(Errno::ENOENT) => {
                    return Err(self.refused(
                        entry,
                        format!("no directory {:?} in the release", here().display()),
                    ))
                }
                Err(e) => return Err(self.io("open directory", &here(), e)),
            };
        }
        Ok(fd)
    }

    /// Holds the parent directory of `rel` open (created if missing) as [`Release::parent_fd`];
    /// returns `rel`'s last name.
    fn enter_parent<'a>(&mut self, rel: &'a RelPath) -> Result<&'a CStr, SourceError> {
        let (name, dir) = rel.0.split_last().expect("checked: not the root");
        let cached = matches!(&self.parent, Some((p, _)) if p.0 == dir);
        if !cached {
            self.parent = None;
            let fd = self.open_dir(rel, dir, true)?;
            self.parent = Some((RelPath(dir.to_vec()), fd));
        }
        Ok(name.as_c_str())
    }

    /// The directory entered by the last [`Release::enter_parent`].
    fn parent_fd(&self) -> &OwnedFd {
        &self.parent.as_ref().expect("entered").1
    }

    /// A directory; its `mode` (permission bits only) is applied by [`Release::finish`].
    fn dir(&mut self, rel: &RelPath, mode: u32) -> Result<(), SourceError> {
        self.check(rel)?;
        let name = self.enter_parent(rel)?;
        let pfd = self.parent_fd();
        match mkdirat(pfd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let st = fstatat(pfd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io("inspect", rel, e))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    return Err(self.refused(rel, "already exists and is not a directory"));
                }
            }
            Err(e) => return Err(self.io("create directory", rel, e)),
        }
        self.dir_modes.push((rel.clone(), mode & 0o777));
        Ok(())
    }

    /// Checks that a file of `size` bytes at `rel` may be written.
    fn file_fits(&self, rel: &RelPath, size: u64) -> Result<(), SourceError> {
        self.check(rel)?;
        if self.stats.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(SourceError::TooLarge {
                source_name: format!("the source (at {})", rel.display()),
                limit: self.limits.max_bytes,
                unit: "bytes",
            });
        }
        Ok(())
    }

    /// A regular file of `size` bytes read from `content`, with `mode` minus
    /// setuid/setgid/sticky.
    fn file<R: Read>(
        &mut self,
        rel: &RelPath,
        mode: u32,
        size: u64,
        content: R,
    ) -> Result<(), SourceError> {
        self.file_fits(rel, size)?;
        let name = self.enter_parent(rel)?;
        let pfd = self.parent_fd();
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(pfd, name, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => {
                return Err(self.refused(rel, "already exists (a duplicate entry)"))
            }
            Err(e) => return Err(self.io("create file", rel, e)),
        };
        let mut out = std::fs::File::from(fd);
        let mut content = content.take(size);
        let copied = if size <= SMALL_FILE {
            // Two system calls; `io::copy` spends five on checking for `copy_file_range`.
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            buf.reserve(size as usize);
            let read = content.read_to_end(&mut buf);
            let read = read.map_err(|e| self.io("read the data of", rel, e))?;
            out.write_all(&buf)
                .map_err(|e| self.io("write file", rel, e))?;
            self.buf = buf;
            read as u64
        } else {
            io::copy(&mut content, &mut out).map_err(|e| self.io("write file", rel, e))?
        };
        if copied != size {
            let short = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the source ended after {copied} of {size} bytes"),
            );
            return Err(self.io("write file", rel, short));
        }
        fchmod(out.as_fd(), Mode::from_bits_truncate(mode & 0o777))
            .map_err(|e| self.io("set the mode of", rel, e))?;
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    /// A symlink to `target`, which must stay inside the release (see [`link_inside`]).
    fn symlink(&mut self, rel: &RelPath, target: &[u8]) -> Result<(), SourceError> {
        self.check(rel)?;
        link_inside(rel.0.len() - 1, target).map_err(|why| self.refused(rel, why))?;
        let target = CString::new(target).expect("checked: no NUL");
        let name = self.enter_parent(rel)?;
        let pfd = self.parent_fd();
        match symlinkat(target.as_c_str(), pfd, name) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(self.refused(rel, "already exists (a duplicate entry)")),
            Err(e) => Err(self.io("create symlink", rel, e)),
        }
    }

    /// A hard link to `target`, a regular file already written into the release.
    fn hardlink(&mut self, rel: &RelPath, target: &RelPath) -> Result<(), SourceError> {
        self.check(rel)?;
        let Some((tname, tdir)) = target.0.split_last() else {
            return Err(self.refused(rel, "hard link to the release directory itself"));
        };
        let not_there = |_| {
            self.refused(
                rel,
                format!(
                    "hard link target {:?} is not a file written earlier into the release",
                    target.display()
                ),
            )
        };
        let tfd = self.open_dir(rel, tdir, false).map_err(not_there)?;
        match fstatat(&tfd, tname.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {}
            Ok(_) => {
                return Err(self.refused(
                    rel,
                    format!(
                        "hard link target {:?} is not a regular file",
                        target.display()
                    ),
                ))
            }
            Err(e) => return Err(not_there(self.io("inspect", target, e))),
        }
        let name = self.enter_parent(rel)?;
        let pfd = self.parent_fd();
        match linkat(&tfd, tname.as_c_str(), pfd, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                return Err(self.refused(rel, "already exists (a duplicate entry)"))
            }
            Err(e) => return Err(self.io("create hard link", rel, e)),
        }
        self.stats.files += 1;
        Ok(())
    }

    /// Applies the directory modes and returns what was written.
    fn finish(mut self) -> Result<Stats, SourceError> {
        self.parent = None;
        for (rel, mode) in self.dir_modes.iter().rev() {
            let fd = self.open_dir(rel, &rel.0, false)?;
            fchmod(&fd, Mode::from_bits_truncate(*mode))
                .map_err(|e| self.io("set the mode of", rel, e))?;
        }
        Ok(self.stats)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_names_below_the_release() {
        let ok = |raw: &str| RelPath::parse(raw.as_bytes()).unwrap().display();
        assert_eq!(ok("./a/b"), "a/b");
        assert_eq!(ok("a//./b/"), "a/b");
        assert!(RelPath::parse(b"./").unwrap().is_root());
        for bad in ["../x", "/abs/x", "a/../../x", "a/..", "a\0b"] {
            assert!(RelPath::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_targets_stay_inside_by_their_text() {
        assert!(link_inside(0, b"a/b").is_ok());
        assert!(link_inside(0, b"./a").is_ok());
        assert!(link_inside(2, b"../../x").is_ok());
        assert!(link_inside(1, b"..").is_ok());
        let err = |d, t: &str| link_inside(d, t.as_bytes()).unwrap_err();
        assert!(err(1, "../../x").contains("leaves the release"));
        assert!(err(3, "/etc").contains("absolute"));
        // `s/..` can climb above the release when `s` is a symlink to a higher directory.
        assert!(err(3, "s/../x").contains("after a name"));
        assert!(link_inside(0, b"").is_err());
    }

    #[test]
    fn a_non_empty_release_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        let err = Release::open(dir.path(), &Limits::default(), "path", Path::new(""))
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::DestNotEmpty { .. }), "{err}");
        assert!(err.to_string().contains("not empty"), "{err}");
    }

    /// Unmounts a test's tmpfs on drop.
    pub(crate) struct Mount(pub PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    /// A tmpfs of `size` (`mount -o size=`) at `dir`, or None (with the reason printed) where
    /// mounting is not permitted.
    pub(crate) fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        Some(Mount(dir.to_owned()))
    }
}
