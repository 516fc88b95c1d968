//! Deletes old files by name pattern: the replacement for
//! `find DIR -name PATTERN -mtime +N -delete`, which Citrus runs as root.
//!
//! The walk is race-free in the way `rm -rf` implementations are: every directory is held open
//! by a file descriptor, and every step is relative to it (`fstatat(AT_SYMLINK_NOFOLLOW)`,
//! `unlinkat`, `openat(O_DIRECTORY | O_NOFOLLOW)`). So no symlink is ever followed, a directory
//! swapped for a symlink mid-walk is refused by the kernel, and only entries of directories that
//! were reached inside a root are ever unlinked. The walk stays on the root's filesystem, stops
//! [`MAX_DEPTH`] levels below a root, and never panics: failures become lines in
//! [`CleanupReport::errors`] and the walk goes on.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// At most this many deleted paths are listed in [`CleanupReport::deleted`] (all are counted).
pub const MAX_LISTED: usize = 100;
/// Directories deeper than this many levels below a root are not entered (reported as an error).
pub const MAX_DEPTH: usize = 32;
/// At most this many error lines are kept; one final line then says how many more were dropped.
pub const MAX_ERRORS: usize = 1000;

/// What [`clean`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Number of files unlinked.
    pub files_deleted: u64,
    /// Sum of `st_size` of the unlinked files (space held by other hard links is not freed).
    pub bytes_freed: u64,
    /// Paths of unlinked files, the first [`MAX_LISTED`] only.
    pub deleted: Vec<PathBuf>,
    /// One line per failure, each naming the path and the action (refused root, permission
    /// denied, vanished entry, ...).
    pub errors: Vec<String>,
}

/// Deletes regular files whose name matches `pattern` (see [`glob_match`]) and whose mtime is
/// older than `now - max_age`, inside each of `dirs`, recursively.
///
/// Never deletes or descends outside `dirs`, never follows a symlink (a symlink is skipped, not
/// deleted, whatever it points to), never crosses into another filesystem (mount points are
/// skipped silently, like `find -xdev`). A `dirs` entry that is itself a symlink (also when
/// written as `link/` or `link/.`), is not a directory, or ends in `..` is refused with an error
/// and nothing in it is touched. Symlinks in the leading components of a `dirs` entry are
/// resolved as usual. If `now - max_age` is before the Unix epoch nothing is old enough.
pub fn clean(dirs: &[PathBuf], pattern: &str, max_age: Duration, now: SystemTime) -> CleanupReport {
    let mut walker = Walker {
        pattern: Glob::new(pattern),
        cutoff: now.checked_sub(max_age),
        root_dev: 0,
        report: CleanupReport::default(),
        errors_dropped: 0,
    };
    for root in dirs {
        match open_root(root) {
            Ok(fd) => walker.walk_root(fd, root),
            Err(msg) => walker.error(msg),
        }
    }
    if walker.errors_dropped > 0 {
        let n = walker.errors_dropped;
        walker
            .report
            .errors
            .push(format!("... and {n} more errors"));
    }
    walker.report
}

/// Flags for every directory the walk opens.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens a `dirs` entry as a directory without following a symlink in its last component.
///
/// `O_NOFOLLOW` alone is not enough: the kernel follows a final symlink when the path has a
/// trailing slash (`link/`), and `link/.` makes the symlink an inner component. So the last
/// component is opened with `openat` relative to its (normally resolved) parent.
fn open_root(root: &Path) -> Result<OwnedFd, String> {
    let shown = root.display();
    match root.components().next_back() {
        Some(Component::Normal(name)) => {
            let parent = match root.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let parent_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let pfd = open(parent, parent_flags, Mode::empty()).map_err(|e| {
                format!("open parent directory {} of {shown}: {e}", parent.display())
            })?;
            openat(&pfd, name, dir_flags(), Mode::empty())
                .map_err(|e| refusal(root, e, fstatat(&pfd, name, AtFlags::AT_SYMLINK_NOFOLLOW)))
        }
        Some(Component::RootDir | Component::CurDir) => open(root, dir_flags(), Mode::empty())
            .map_err(|e| format!("open directory {shown}: {e}")),
        Some(Component::ParentDir) => Err(format!("refusing to clean {shown}: path ends in '..'")),
        Some(Component::Prefix(_)) | None => {
            Err(format!("refusing to clean {shown:?}: not a directory path"))
        }
    }
}

/// Error line for a root that could not be opened; `lstat` (taken after the failure, only to
/// word the message) tells a symlink from a non-directory.
fn refusal(root: &Path, err: Errno, lstat: nix::Result<FileStat>) -> String {
    let shown = root.display();
    let kind = lstat.map(|st| st.st_mode & libc::S_IFMT);
    match (err, kind) {
        (Errno::ELOOP | Errno::ENOTDIR, Ok(libc::S_IFLNK)) => {
            format!("refusing to clean {shown}: is a symlink")
        }
        (Errno::ENOTDIR, _) => format!("refusing to clean {shown}: not a directory"),
        _ => format!("open directory {shown}: {err}"),
    }
}

/// State of one [`clean`] call.
struct Walker {
    pattern: Glob,
    cutoff: Option<SystemTime>,
    /// `st_dev` of the root being walked; directories on another device are not entered.
    root_dev: libc::dev_t,
    report: CleanupReport,
    errors_dropped: u64,
}

impl Walker {
    fn error(&mut self, msg: String) {
        if self.report.errors.len() < MAX_ERRORS {
            self.report.errors.push(msg);
        } else {
            self.errors_dropped += 1;
        }
    }

    fn walk_root(&mut self, fd: OwnedFd, root: &Path) {
        match fstat(&fd) {
            Ok(st) => self.root_dev = st.st_dev,
            Err(e) => return self.error(format!("stat directory {}: {e}", root.display())),
        }
        match Dir::from_fd(fd) {
            Ok(dir) => self.walk_dir(dir, root, 0),
            Err(e) => self.error(format!("read directory {}: {e}", root.display())),
        }
    }

    /// Handles every entry of `dir` (at `path`, `depth` levels below its root).
    fn walk_dir(&mut self, mut dir: Dir, path: &Path, depth: usize) {
        // Names are collected first: the fd is then free for the *at calls, and unlinking never
        // happens under an active readdir.
        let mut names: Vec<CString> = Vec::new();
        for entry in dir.iter() {
            match entry {
                Ok(entry) => {
                    let name = entry.file_name();
                    if name != c"." && name != c".." {
                        names.push(name.to_owned());
                    }
                }
                Err(e) => {
                    self.error(format!("read directory {}: {e}", path.display()));
                    break;
                }
            }
        }
        for name in &names {
            let child = path.join(OsStr::from_bytes(name.to_bytes()));
            let st = match fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    self.error(format!("stat {}: {e}", child.display()));
                    continue;
                }
            };
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => self.consider_file(&dir, name, &child, &st),
                libc::S_IFDIR => self.descend(&dir, name, &child, &st, depth + 1),
                // Symlinks, sockets, FIFOs, devices: never touched.
                _ => {}
            }
        }
    }

    /// Unlinks the regular file `name` in `dir` if it matches and is old enough.
    ///
    /// If the entry is replaced between the `fstatat` and the `unlinkat`, what gets unlinked is
    /// still only that name in `dir` (`unlinkat` never follows symlinks and refuses directories).
    fn consider_file(&mut self, dir: &Dir, name: &CStr, child: &Path, st: &FileStat) {
        let old_enough = match (self.cutoff, mtime(st)) {
            (Some(cutoff), Some(mtime)) => mtime < cutoff,
            _ => false,
        };
        if !old_enough
            || !self
                .pattern
                .matches(&OsStr::from_bytes(name.to_bytes()).to_string_lossy())
        {
            return;
        }
        match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => {
                let r = &mut self.report;
                r.files_deleted += 1;
                r.bytes_freed = r
                    .bytes_freed
                    .saturating_add(u64::try_from(st.st_size).unwrap_or(0));
                if r.deleted.len() < MAX_LISTED {
                    r.deleted.push(child.to_path_buf());
                }
            }
            Err(e) => self.error(format!("delete {}: {e}", child.display())),
        }
    }

    /// Enters subdirectory `name` of `dir` unless it is a mount point or too deep.
    fn descend(&mut self, dir: &Dir, name: &CStr, child: &Path, st: &FileStat, depth: usize) {
        if st.st_dev != self.root_dev {
            return; // Mount point: another filesystem.
        }
        if depth > MAX_DEPTH {
            let msg = format!(
                "not descending into {}: depth limit {MAX_DEPTH} reached",
                child.display()
            );
            return self.error(msg);
        }
        // O_NOFOLLOW | O_DIRECTORY: if the directory was swapped for a symlink since the fstatat,
        // the kernel refuses (ELOOP/ENOTDIR).
        let fd = match openat(dir, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return self.error(format!("open directory {}: {e}", child.display())),
        };
        // It must still be the directory that was stat'ed (not one moved or mounted in since).
        match fstat(&fd) {
            Ok(now) if now.st_dev == st.st_dev && now.st_ino == st.st_ino => {}
            Ok(_) => {
                let msg = format!(
                    "skip directory {}: replaced during the walk",
                    child.display()
                );
                return self.error(msg);
            }
            Err(e) => return self.error(format!("stat directory {}: {e}", child.display())),
        }
        match Dir::from_fd(fd) {
            Ok(sub) => self.walk_dir(sub, child, depth),
            Err(e) => self.error(format!("read directory {}: {e}", child.display())),
        }
    }
}

/// The mtime of `st`, or `None` if it is not representable.
fn mtime(st: &FileStat) -> Option<SystemTime> {
    let secs = Duration::from_secs(st.st_mtime.unsigned_abs());
    let base = if st.st_mtime >= 0 {
        UNIX_EPOCH.checked_add(secs)
    } else {
        UNIX_EPOCH.checked_sub(secs)
    }?;
    base.checked_add(Duration::from_nanos(u64::try_from(st.st_mtime_nsec).ok()?))
}

/// Glob match of a file name: `*` (any run of characters, not `/`), `?` (one character),
/// `[abc]`, `[a-z]`, `[!abc]` (a `]` right after `[` or `[!` is literal; a `[` without a closing
/// `]` is literal); everything else is literal, case-sensitive. No `**`, no escapes. A leading
/// `.` is not special (`*.log` matches `.log`, as with `find -name`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    Glob::new(pattern).matches(name)
}

/// A parsed glob pattern.
struct Glob(Vec<Tok>);

enum Tok {
    Lit(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Tok {
    /// Whether this single-character token matches `c` (never true for [`Tok::Star`]).
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Lit(l) => *l == c,
            Tok::Any => c != '/',
            Tok::Star => false,
            Tok::Class { negated, ranges } => {
                c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

impl Glob {
    fn new(pattern: &str) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    if !matches!(toks.last(), Some(Tok::Star)) {
                        toks.push(Tok::Star);
                    }
                    i += 1;
                }
                '?' => {
                    toks.push(Tok::Any);
                    i += 1;
                }
                '[' => match parse_class(&chars, i + 1) {
                    Some((tok, next)) => {
                        toks.push(tok);
                        i = next;
                    }
                    None => {
                        toks.push(Tok::Lit('['));
                        i += 1;
                    }
                },
                c => {
                    toks.push(Tok::Lit(c));
                    i += 1;
                }
            }
        }
        Glob(toks)
    }

    /// Iterative match, backtracking only to the last `*` (O(pattern × name)).
    fn matches(&self, name: &str) -> bool {
        let toks = &self.0;
        let name: Vec<char> = name.chars().collect();
        let (mut t, mut n) = (0, 0);
        // (token index after the last star, name index that star currently stops at)
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match toks.get(t) {
                Some(Tok::Star) => {
                    star = Some((t + 1, n));
                    t += 1;
                    continue;
                }
                Some(tok) if tok.matches(name[n]) => {
                    t += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((after, from)) if name[from] != '/' => {
                    star = Some((after, from + 1));
                    t = after;
                    n = from + 1;
                }
                _ => return false,
            }
        }
        toks[t..].iter().all(|tok| matches!(tok, Tok::Star))
    }
}

/// Parses a bracket class whose body starts at `chars[i]`; returns it and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Option<(Tok, usize)> {
    let negated = chars.get(i) == Some(&'!');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Tok::Class { negated, ranges }, i + 1));
        }
        first = false;
        match (chars.get(i + 1), chars.get(i + 2)) {
            (Some('-'), Some(&hi)) if hi != ']' => {
                ranges.push((c, hi));
                i += 3;
            }
            _ => {
                ranges.push((c, c));
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::os::unix::fs::symlink;

    const DAY: Duration = Duration::from_secs(86_400);
    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    /// Creates `path` (and its parents) with `size` bytes and an mtime `age` before `now`.
    fn touch(path: &Path, size: usize, age: Duration, now: SystemTime) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![b'x'; size]).unwrap();
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(now - age)
            .unwrap();
    }

    /// Sets the mtime of `path` itself (a symlink or FIFO) to `age` before `now`.
    fn set_mtime_nofollow(path: &Path, age: Duration, now: SystemTime) {
        use nix::sys::stat::{utimensat, UtimensatFlags};
        use nix::sys::time::TimeSpec;
        let t = TimeSpec::from(now.duration_since(UNIX_EPOCH).unwrap() - age);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn run(dirs: &[PathBuf], now: SystemTime) -> CleanupReport {
        clean(dirs, "*.log", WEEK, now)
    }

    #[test]
    fn deletes_old_matching_keeps_new_and_nonmatching() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        let now = SystemTime::now();
        touch(&logs.join("old.log"), 100, 10 * DAY, now);
        touch(&logs.join("new.log"), 100, DAY, now);
        touch(&logs.join("old.txt"), 100, 10 * DAY, now);
        touch(&logs.join("old.log.1"), 100, 10 * DAY, now);

        let r = run(std::slice::from_ref(&logs), now);
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(r.files_deleted, 1);
        assert_eq!(r.bytes_freed, 100);
        assert_eq!(r.deleted, vec![logs.join("old.log")]);
        assert!(!logs.join("old.log").exists());
        assert!(logs.join("new.log").exists());
        assert!(logs.join("old.txt").exists());
        assert!(logs.join("old.log.1").exists());
    }

    #[test]
    fn recurses_into_subdirectories() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        let now = SystemTime::now();
        touch(&logs.join("a/b/c/deep.log"), 10, 10 * DAY, now);
        touch(&logs.join("a/mid.log"), 20, 10 * DAY, now);
        touch(&logs.join("a/b/fresh.log"), 30, DAY, now);

        let r = run(std::slice::from_ref(&logs), now);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.files_deleted, 2);
        assert_eq!(r.bytes_freed, 30);
        assert!(!logs.join("a/b/c/deep.log").exists());
        assert!(!logs.join("a/mid.log").exists());
        assert!(logs.join("a/b/fresh.log").exists());
        assert!(logs.join("a/b/c").is_dir(), "directories are never removed");
    }

    #[test]
    fn root_that_is_a_symlink_is_refused_in_every_spelling() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        // Stands in for "a symlink to /".
        let victim_dir = tmp.path().join("system");
        touch(&victim_dir.join("precious.log"), 5, 10 * DAY, now);
        touch(&victim_dir.join("sub/precious.log"), 5, 10 * DAY, now);
        let link = tmp.path().join("logs");
        symlink(&victim_dir, &link).unwrap();

        let shown = link.display().to_string();
        for spelled in [
            shown.clone(),
            format!("{shown}/"),
            format!("{shown}//"),
            format!("{shown}/."),
        ] {
            let r = run(&[PathBuf::from(&spelled)], now);
            assert_eq!(r.files_deleted, 0, "{spelled}");
            assert_eq!(r.errors.len(), 1, "{spelled}: {:?}", r.errors);
            assert!(r.errors[0].contains("is a symlink"), "{:?}", r.errors);
            assert!(r.errors[0].contains(&spelled), "{:?}", r.errors);
        }
        assert!(victim_dir.join("precious.log").exists());
        assert!(victim_dir.join("sub/precious.log").exists());
    }

    #[test]
    fn symlink_to_old_file_is_neither_followed_nor_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let outside = tmp.path().join("outside/victim.log");
        touch(&outside, 5, 10 * DAY, now);
        let logs = tmp.path().join("logs");
        fs::create_dir(&logs).unwrap();
        let link = logs.join("link.log");
        symlink(&outside, &link).unwrap();
        set_mtime_nofollow(&link, 10 * DAY, now);

        let r = run(std::slice::from_ref(&logs), now);
        assert_eq!(r, CleanupReport::default());
        assert!(outside.exists());
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    }

    #[test]
    fn symlinked_subdirectory_is_not_descended() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let outside = tmp.path().join("outside");
        touch(&outside.join("victim.log"), 5, 10 * DAY, now);
        let logs = tmp.path().join("logs");
        touch(&logs.join("real/old.log"), 7, 10 * DAY, now);
        symlink(&outside, logs.join("sub")).unwrap();

        let r = run(std::slice::from_ref(&logs), now);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.deleted, vec![logs.join("real/old.log")]);
        assert!(outside.join("victim.log").exists());
    }

    #[test]
    fn other_file_types_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let logs = tmp.path().join("logs");
        fs::create_dir(&logs).unwrap();
        let fifo = logs.join("pipe.log");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        set_mtime_nofollow(&fifo, 10 * DAY, now);
        // A directory whose name matches is walked, not deleted.
        fs::create_dir(logs.join("dir.log")).unwrap();
        set_mtime_nofollow(&logs.join("dir.log"), 10 * DAY, now);

        let r = run(std::slice::from_ref(&logs), now);
        assert_eq!(r, CleanupReport::default());
        assert!(fifo.exists());
        assert!(logs.join("dir.log").is_dir());
    }

    #[test]
    fn missing_or_non_directory_roots_are_errors_and_others_still_run() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let missing = tmp.path().join("missing");
        let file = tmp.path().join("file.log");
        touch(&file, 3, 10 * DAY, now);
        let logs = tmp.path().join("logs");
        touch(&logs.join("old.log"), 4, 10 * DAY, now);
        let dotdot = logs.join("..");

        let r = run(&[missing.clone(), file.clone(), dotdot, logs.clone()], now);
        assert_eq!(r.errors.len(), 3, "{:?}", r.errors);
        assert!(r.errors[0].starts_with("open directory"), "{:?}", r.errors);
        assert!(r.errors[0].contains(&missing.display().to_string()));
        assert!(r.errors[0].contains("ENOENT"), "{:?}", r.errors);
        assert!(r.errors[1].contains("not a directory"), "{:?}", r.errors);
        assert!(r.errors[1].contains(&file.display().to_string()));
        assert!(r.errors[2].contains("'..'"), "{:?}", r.errors);
        assert!(file.exists());
        assert_eq!(r.deleted, vec![logs.join("old.log")]);
    }

    #[test]
    fn bytes_freed_is_the_sum_of_deleted_sizes() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let logs = tmp.path().join("logs");
        let sizes = [0usize, 1, 4096, 12_345];
        for (i, size) in sizes.iter().enumerate() {
            touch(&logs.join(format!("d{i}/f{i}.log")), *size, 8 * DAY, now);
        }
        touch(&logs.join("kept.log"), 999, 6 * DAY, now);
        let r = run(std::slice::from_ref(&logs), now);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.files_deleted, sizes.len() as u64);
        assert_eq!(r.bytes_freed, sizes.iter().sum::<usize>() as u64);
    }

    #[test]
    fn deleted_list_is_capped_but_all_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let logs = tmp.path().join("logs");
        for i in 0..(MAX_LISTED + 5) {
            touch(&logs.join(format!("{i}.log")), 1, 10 * DAY, now);
        }
        let r = run(std::slice::from_ref(&logs), now);
        assert_eq!(r.files_deleted, (MAX_LISTED + 5) as u64);
        assert_eq!(r.deleted.len(), MAX_LISTED);
        assert_eq!(fs::read_dir(&logs).unwrap().count(), 0);
    }

    #[test]
    fn depth_is_limited() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let logs = tmp.path().join("logs");
        let mut at_limit = logs.clone();
        for _ in 0..MAX_DEPTH {
            at_limit.push("d");
        }
        touch(&at_limit.join("ok.log"), 1, 10 * DAY, now);
        touch(&at_limit.join("d/too-deep.log"), 1, 10 * DAY, now);

        let r = run(std::slice::from_ref(&logs), now);
        assert_eq!(r.deleted, vec![at_limit.join("ok.log")]);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].contains("depth limit"), "{:?}", r.errors);
        assert!(at_limit.join("d/too-deep.log").exists());
    }

    #[test]
    fn huge_max_age_deletes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let logs = tmp.path().join("logs");
        touch(&logs.join("old.log"), 1, 10 * DAY, now);
        let r = clean(std::slice::from_ref(&logs), "*", Duration::MAX, now);
        assert_eq!(r, CleanupReport::default());
        assert!(logs.join("old.log").exists());
    }

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.log", "a.log", true),
            ("*.log", "a.log.1", false),
            ("*.log", ".log", true),
            ("*.log", "x.LOG", false),
            ("*.log", "log", false),
            ("app-?.log", "app-1.log", true),
            ("app-?.log", "app-12.log", false),
            ("app-?.log", "app-.log", false),
            ("[ab]*", "alpha", true),
            ("[ab]*", "beta", true),
            ("[ab]*", "gamma", false),
            ("[ab]*", "", false),
            ("[!a]*", "beta", true),
            ("[!a]*", "alpha", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[]]", "]", true),
            ("[!]]", "a", true),
            ("[a-]", "-", true),
            ("[abc", "[abc", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("**", "anything", true),
            ("*", "", true),
            ("*", "a/b", false),
            ("a\\b", "a\\b", true),
            ("é?", "éé", true),
            ("", "", true),
            ("", "a", false),
        ];
        for &(pattern, name, want) in cases {
            assert_eq!(
                glob_match(pattern, name),
                want,
                "glob_match({pattern:?}, {name:?})"
            );
        }
    }
}
