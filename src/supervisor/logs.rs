//! Per-instance log file writer: write-through appends, optional per-line
//! RFC 3339 timestamps, size-based rotation with background gzip/pruning,
//! drop accounting on write failure, live followers and `tail_lines`; on the reading side,
//! the filter of `logs --since/--grep` ([`LineFilter`]) and the line splitting of followed
//! output ([`LineBuffer`]).
//!
//! All `LogFile` methods are synchronous and cheap (one `write(2)` per chunk
//! in the common case) so they can be called from async tasks while holding
//! a `std::sync::Mutex`. Slow work (gzip, deletions, renumbering rotated
//! files) runs on a background thread per log path.
//!
//! # Rotation design
//! Rotation renames the live file to a unique staging name
//! (`<path>.rotating.<seq>`) and opens a fresh `<path>` inline: one rename and
//! one open, nothing else. The staged file is queued to a single worker thread
//! per log path (spawned on demand, exiting when its queue is empty), which
//! processes jobs strictly in order: gzip the staged file to `<path>.1.gz.tmp`
//! (fsync), shift existing `<path>.k[.gz]` → `.k+1`, rename the new file into
//! slot 1, then delete files beyond `keep` or older than `max_age`. Because
//! only the worker ever touches numbered files, and it handles one job at a
//! time, a gzip can never race with the next shift. Staged files left by a
//! crash are picked up after `open`, so rotation loses no bytes.
//!
//! # Bounded disk use
//! At most one rotation is in flight per log path: while the worker has not finished it, the
//! live file is not rotated again. A writer that fills the live file meanwhile is held back
//! ([`LogFile::read_limit`] and [`LogFile::backlog`] let the pipe reader stop reading, so the app
//! blocks on its own `write`), and output that arrives anyway (the reader gave up waiting after
//! [`BACKPRESSURE_MAX`], or a citrusd event line) is dropped and counted in `bytes_dropped`. So
//! one stream's files never hold much more than `(keep + 2) × max_size`: `keep` rotated files,
//! one staged file and the live one, however fast the app writes. A live file that cannot be
//! rotated at all (its directory read-only) is full too: output past `max_size` is dropped and
//! counted, and every chunk tries the rotation again.
//!
//! # Symlinks
//! The live file is opened with `openat(O_NOFOLLOW)` relative to its directory, and rotated
//! files are read and written without following a symlink either: a symlink planted at a log
//! path is refused (the error is kept as `last_error`, output is dropped and counted, the open is
//! retried), never followed, so citrusd running as root cannot be made to append to, truncate or
//! copy another file.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use tokio::sync::broadcast;

use crate::sys::time::rfc3339;

/// Capacity of the follower broadcast channel (in chunks).
const FOLLOW_CAPACITY: usize = 256;
/// Block size used by [`tail_lines`] when reading backwards.
const TAIL_BLOCK: usize = 64 * 1024;
/// Minimum delay between attempts to reopen a log file that failed to open.
const REOPEN_RETRY: Duration = Duration::from_secs(1);
/// Infix of staged (rotated but not yet numbered) files.
const STAGED_INFIX: &str = ".rotating.";
/// The longest a pipe reader holds an app back waiting for the rotation in flight to finish;
/// past it, output that does not fit is dropped (and counted) until the worker catches up.
pub const BACKPRESSURE_MAX: Duration = Duration::from_secs(5);
/// Bytes a timestamp prefix adds to a line at most per byte of output (a chunk of empty lines:
/// 25 bytes of stamp and space per newline).
const STAMP_EXPANSION: u64 = 26;

/// Log behaviour for one app (shared by its out/err streams).
#[derive(Clone, Debug, PartialEq)]
pub struct LogSettings {
    /// Rotate when the file would exceed this many bytes (`None` = never by size).
    pub max_size: Option<u64>,
    /// Rotated files kept: `<path>.1` … `<path>.<keep>` (`.N.gz` when compressed).
    pub keep: u32,
    /// Rotated files older than this (mtime) are deleted at each rotation and at open.
    pub max_age: Option<Duration>,
    /// Gzip rotated files in the background (`<path>.1.gz`).
    pub compress: bool,
    /// Prefix each line of app output with an RFC 3339 UTC timestamp and a space.
    pub timestamps: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            max_size: None,
            keep: 5,
            max_age: None,
            compress: false,
            timestamps: false,
        }
    }
}

/// One log file (one instance, one stream).
pub struct LogFile {
    path: PathBuf,
    settings: LogSettings,
    /// `None` when (re)opening failed; writes are dropped until a retry works.
    file: Option<File>,
    /// Earliest time to retry opening when `file` is `None`.
    next_open_retry: Option<Instant>,
    /// Only regular files are rotated (never `/dev/null`, FIFOs, ...).
    regular: bool,
    /// Current size of the file at `path` as far as we wrote it.
    size: u64,
    /// Whether the logical stream is at the start of a line.
    at_line_start: bool,
    bytes_written: u64,
    bytes_dropped: u64,
    last_error: Option<String>,
    /// Inside a write-failure episode (one warning per episode).
    failing: bool,
    /// Number of write-failure episodes (for tests/diagnostics).
    episodes: u64,
    /// Inside a rotation-failure episode.
    rotate_failing: bool,
    /// Inside an episode of output dropped because the rotation in flight had not finished.
    behind: bool,
    /// Inside an episode of opens refused because the log path is a symlink.
    refusing: bool,
    /// Next staging sequence number.
    seq: u64,
    /// Reused buffer for timestamped output.
    scratch: Vec<u8>,
    /// Created on the first `subscribe`: a broadcast channel preallocates its slots, and most
    /// of a host's logs are never followed.
    tx: Option<broadcast::Sender<Bytes>>,
    worker: Arc<Worker>,
}

impl LogFile {
    /// Opens (creating, append, mode 0640) the file and its parent directory if missing.
    ///
    /// Opening lists no directory and starts no thread (a host opens two logs per instance at
    /// start): staged files left by an interrupted rotation, and rotated files past `max_age`,
    /// are dealt with by the next rotation's background job.
    ///
    /// A symlink at `path` is not an error here: the log starts closed, with the refusal as its
    /// [`last_error`](Self::last_error) and a warning logged, drops (and counts) output, and
    /// retries the open every second, so the app runs and the problem shows in `describe`.
    pub fn open(path: PathBuf, settings: LogSettings) -> io::Result<LogFile> {
        let (file, last_error) = match open_log(&path) {
            Ok(file) => (Some(file), None),
            Err(e) if is_symlink_refusal(&e) => {
                tracing::warn!(path = %path.display(), "{e}");
                (None, Some(e.to_string()))
            }
            Err(e) => return Err(e),
        };
        let meta = file.as_ref().map(File::metadata).transpose()?;
        let regular = meta.as_ref().is_none_or(|m| m.file_type().is_file());
        let size = meta.as_ref().filter(|_| regular).map_or(0, |m| m.len());
        let at_line_start = size == 0
            || file
                .as_ref()
                .is_some_and(|f| last_byte(f, size) == Some(b'\n'));
        let log = LogFile {
            path: path.clone(),
            settings,
            next_open_retry: file.is_none().then(|| Instant::now() + REOPEN_RETRY),
            refusing: file.is_none(),
            file,
            regular,
            size,
            at_line_start,
            bytes_written: 0,
            bytes_dropped: 0,
            last_error,
            failing: false,
            episodes: 0,
            rotate_failing: false,
            behind: false,
            // Staged names sort after any left by an earlier run, which the next rotation's job
            // numbers first.
            seq: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            scratch: Vec::new(),
            tx: None,
            worker: worker_for(&path),
        };
        Ok(log)
    }

    /// App output. With timestamps, a prefix goes at the start of every line;
    /// a line split across chunks gets one prefix. All lines of one chunk
    /// share the chunk's arrival time.
    pub fn write_output(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if !self.settings.timestamps {
            self.at_line_start = data.ends_with(b"\n");
            self.emit_raw(data, false);
            return;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let stamp = rfc3339(SystemTime::now());
        for line in data.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                buf.extend_from_slice(stamp.as_bytes());
                buf.push(b' ');
            }
            buf.extend_from_slice(line);
            self.at_line_start = line.ends_with(b"\n");
        }
        self.emit_raw(&buf, false);
        self.scratch = buf;
    }

    /// citrusd's own line, e.g. `"[citrus] spawned pid 4242"`; always written
    /// as `"<rfc3339> [citrus] ...\n"`. If the app's last output did not end
    /// in a newline, a newline is written first.
    pub fn write_event(&mut self, line: &str) {
        let line = line.trim_end_matches(['\n', '\r']);
        let stamp = rfc3339(SystemTime::now());
        let mut buf = Vec::with_capacity(stamp.len() + line.len() + 3);
        if !self.at_line_start {
            buf.push(b'\n');
        }
        buf.extend_from_slice(stamp.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.at_line_start = true;
        self.emit_raw(&buf, true);
    }

    /// Reopen the path (SIGUSR1 / external logrotate moved the file). On
    /// failure the previous handle is kept so output is not lost.
    pub fn reopen(&mut self) -> io::Result<()> {
        let opened = open_log(&self.path).and_then(|f| f.metadata().map(|m| (f, m)));
        match opened {
            Ok((file, meta)) => {
                self.regular = meta.file_type().is_file();
                self.size = if self.regular { meta.len() } else { 0 };
                self.file = Some(file);
                self.next_open_retry = None;
                Ok(())
            }
            Err(e) => {
                self.last_error = Some(format!("reopen {}: {e}", self.path.display()));
                Err(e)
            }
        }
    }

    /// Apply new settings (config reload) without reopening. A lower `keep`
    /// or a new `max_age` is applied in the background right away.
    pub fn set_settings(&mut self, settings: LogSettings) {
        let prune = settings.keep < self.settings.keep
            || (settings.max_age.is_some() && settings.max_age != self.settings.max_age);
        self.settings = settings;
        if prune && self.regular {
            self.worker.submit(Job::Prune {
                base: self.path.clone(),
                settings: self.settings.clone(),
            });
        }
    }

    /// Current settings.
    pub fn settings(&self) -> &LogSettings {
        &self.settings
    }

    /// Path of the live log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written to the file since open (timestamps and events included).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Bytes lost to write errors since open.
    pub fn bytes_dropped(&self) -> u64 {
        self.bytes_dropped
    }

    /// The most a caller should hand to one `write_output`: with a size cap, a read larger than
    /// the cap would make a file overshoot it (chunks are never split across files).
    pub fn chunk_limit(&self) -> usize {
        self.settings
            .max_size
            .map_or(usize::MAX, |max| max.max(4096) as usize)
    }

    /// The most a pipe reader should read for the next `write_output`: [`chunk_limit`]
    /// (Self::chunk_limit), or less while a rotation is in flight — only what still fits in the
    /// live file, since it cannot be rotated again yet. `0`: nothing fits, wait for
    /// [`backlog`](Self::backlog).
    pub fn read_limit(&self) -> usize {
        match self.room_while_rotating() {
            Some(room) => room.min(self.chunk_limit() as u64) as usize,
            None => self.chunk_limit(),
        }
    }

    /// `Some` when the live file is full and the previous rotation has not finished: the reader
    /// should stop reading (back-pressure on the app) and [`Backlog::wait`] for the worker.
    pub fn backlog(&self) -> Option<Backlog> {
        (self.room_while_rotating() == Some(0)).then(|| Backlog(Arc::clone(&self.worker)))
    }

    /// Bytes of app output that surely fit in the live file while a rotation is in flight
    /// (`None`: no limit, nothing is in flight or the file is never rotated by size).
    fn room_while_rotating(&self) -> Option<u64> {
        let max = self.settings.max_size?;
        if !self.regular || self.size == 0 || !self.worker.rotating() {
            return None;
        }
        let room = max.saturating_sub(self.size);
        Some(match self.settings.timestamps {
            true => room / STAMP_EXPANSION,
            false => room,
        })
    }

    /// Whether the log path is a symlink, refused: nothing is written until it is removed.
    pub fn refused(&self) -> bool {
        self.refusing
    }

    /// The most recent write/open/rotation error, kept after recovery.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.clone()
    }

    /// Live followers: every byte written to the file is also sent here.
    /// A lagging receiver loses chunks (`RecvError::Lagged`).
    pub fn subscribe(&mut self) -> broadcast::Receiver<Bytes> {
        self.tx
            .get_or_insert_with(|| broadcast::channel(FOLLOW_CAPACITY).0)
            .subscribe()
    }

    /// Blocks until all queued background work (gzip, renumbering, pruning)
    /// has finished. Meant for tests and shutdown, never for the hot path.
    pub fn wait_background(&self) {
        self.worker.wait_idle();
    }

    /// Rotate if needed, write `buf` with write-through, account and broadcast. While a
    /// rotation is in flight, a chunk that does not fit is dropped — unless it is one of
    /// citrusd's own event lines (`overshoot`): those are short and rare, and go past the cap.
    fn emit_raw(&mut self, buf: &[u8], overshoot: bool) {
        let len = buf.len() as u64;
        if let Some(max) = self.settings.max_size {
            if self.regular && self.size > 0 && self.size.saturating_add(len) > max {
                match self.worker.rotating() {
                    // One rotation in flight at most: the disk bound holds, this chunk is lost.
                    true if !overshoot => {
                        self.drop_behind(len);
                        return;
                    }
                    // An event line goes past the cap; the next chunk rotates.
                    true => {}
                    false => {
                        if self.behind {
                            self.behind = false;
                            tracing::info!(
                                path = %self.path.display(),
                                dropped = self.bytes_dropped,
                                "log rotation caught up; writing again"
                            );
                        }
                        // A file that cannot be rotated (read-only directory) is full: the disk
                        // bound holds, this chunk is lost and counted, the next one retries.
                        if !self.rotate() && !overshoot {
                            self.bytes_dropped += len;
                            return;
                        }
                    }
                }
            }
        }
        if self.file.is_none() {
            self.retry_open();
        }
        let (written, err) = match &self.file {
            Some(file) => write_all_counted(file, buf),
            None => (0, Some(io::Error::other("log file is not open"))),
        };
        self.size += written as u64;
        self.bytes_written += written as u64;
        if let Some(tx) = self
            .tx
            .as_ref()
            .filter(|tx| written > 0 && tx.receiver_count() > 0)
        {
            let _ = tx.send(Bytes::copy_from_slice(&buf[..written]));
        }
        match err {
            None => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(
                        path = %self.path.display(),
                        dropped = self.bytes_dropped,
                        "log writes resumed"
                    );
                }
            }
            Some(e) => {
                self.bytes_dropped += (buf.len() - written) as u64;
                if !self.failing {
                    self.failing = true;
                    self.episodes += 1;
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "log write failed; dropping output until writes succeed"
                    );
                }
                // A file that could not be opened keeps the open's error, which says why.
                if self.file.is_some() || self.last_error.is_none() {
                    self.last_error = Some(format!("write {}: {e}", self.path.display()));
                }
            }
        }
    }

    /// Counts `len` bytes dropped because the live file is full and the rotation in flight has
    /// not finished (one warning per episode).
    fn drop_behind(&mut self, len: u64) {
        self.bytes_dropped += len;
        self.worker.kick();
        if !self.behind {
            self.behind = true;
            tracing::warn!(
                path = %self.path.display(),
                "log rotation is behind the app's output: dropping output until it catches up"
            );
        }
        self.last_error = Some(format!(
            "{}: output dropped while the previous rotation was still being processed \
             (the app writes faster than rotated files are compressed and numbered)",
            self.path.display()
        ));
    }

    /// Try to open the log file again (rate-limited) after an open failure.
    fn retry_open(&mut self) {
        let now = Instant::now();
        if self.next_open_retry.is_some_and(|t| now < t) {
            return;
        }
        match open_log(&self.path) {
            Ok(file) => {
                self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(file);
                self.next_open_retry = None;
                self.refusing = false;
            }
            Err(e) => {
                self.next_open_retry = Some(now + REOPEN_RETRY);
                if is_symlink_refusal(&e) {
                    if !self.refusing {
                        self.refusing = true;
                        tracing::warn!(path = %self.path.display(), "{e}");
                    }
                    self.last_error = Some(e.to_string());
                } else {
                    self.last_error = Some(format!("open {}: {e}", self.path.display()));
                }
            }
        }
    }

    /// Move the live file to a staging name, open a fresh one and queue the
    /// rest (numbering, gzip, pruning) to the background worker. `false` when the live file
    /// could not be moved (e.g. a read-only directory): it stays, full, and the next chunk
    /// retries.
    fn rotate(&mut self) -> bool {
        let staged = staged_path(&self.path, self.seq);
        match fs::rename(&self.path, &staged) {
            Ok(()) => {
                self.seq += 1;
                self.worker.submit(Job::Rotate {
                    base: self.path.clone(),
                    staged,
                    settings: self.settings.clone(),
                });
            }
            // Moved away externally: just start a fresh file.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                if !self.rotate_failing {
                    self.rotate_failing = true;
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "log rotation failed; dropping output until the file can be rotated"
                    );
                }
                self.last_error = Some(format!(
                    "rotate {}: {e}; output is dropped (and counted) until the log can be rotated",
                    self.path.display()
                ));
                return false;
            }
        }
        if self.rotate_failing {
            self.rotate_failing = false;
            tracing::info!(
                path = %self.path.display(),
                dropped = self.bytes_dropped,
                "log rotation works again"
            );
        }
        self.size = 0;
        self.file = None;
        self.next_open_retry = None;
        self.retry_open();
        true
    }
}

/// Open (creating dirs 0750 and the file 0640) for appending and reading: the file by name
/// relative to its directory's descriptor with `O_NOFOLLOW`, so a symlink at `path` is refused
/// (see [`is_symlink_refusal`]), never followed.
fn open_log(path: &Path) -> io::Result<File> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)?;
    }
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("log path {} names no file", path.display()),
        )
    })?;
    let dir = open_dir(parent)?;
    let flags = OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NOFOLLOW;
    openat_file(&dir, name.as_bytes(), flags, 0o640)
        .map_err(|e| refusal(path, e, &dir, name.as_bytes()))
}

/// The directory `dir`, opened to open files relative to it.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("open log directory {}: {e}", dir.display()),
        )
    })
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)` as a `File`.
fn openat_file(dir: &impl AsFd, name: &[u8], flags: OFlag, mode: u32) -> nix::Result<File> {
    let name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    nix::fcntl::openat(
        dir,
        name.as_c_str(),
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map(File::from)
}

/// The error of a failed open of `name` in `dir`: a symlink is a [`SymlinkRefused`] (`lstat`
/// taken only to word the message).
fn refusal(path: &Path, err: Errno, dir: &impl AsFd, name: &[u8]) -> io::Error {
    let is_link = std::ffi::CString::new(name)
        .ok()
        .and_then(|n| fstatat(dir, n.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok())
        .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
    match err {
        Errno::ELOOP if is_link => {
            io::Error::new(io::ErrorKind::InvalidInput, SymlinkRefused(path.to_owned()))
        }
        _ => io::Error::from(err),
    }
}

/// A log path that is a symlink: refused, never followed.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to open log file {}: it is a symlink (remove it: a log file must be a regular \
     file or a device, never a link)",
    .0.display()
)]
pub struct SymlinkRefused(pub PathBuf);

/// Whether `e` is an open refused because the log path is a symlink.
pub fn is_symlink_refusal(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<SymlinkRefused>())
}

fn last_byte(file: &File, size: u64) -> Option<u8> {
    let mut b = [0u8; 1];
    match file.read_at(&mut b, size - 1) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// Write all of `buf`, returning how much was written and the error, if any.
fn write_all_counted(mut file: &File, buf: &[u8]) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < buf.len() {
        match file.write(&buf[done..]) {
            Ok(0) => return (done, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// `<path><suffix>` (appending to the file name, not replacing an extension).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn staged_path(base: &Path, seq: u64) -> PathBuf {
    with_suffix(base, &format!("{STAGED_INFIX}{seq}"))
}

fn numbered_path(base: &Path, n: u64, gz: bool) -> PathBuf {
    with_suffix(base, &format!(".{n}{}", if gz { ".gz" } else { "" }))
}

/// Directory entries of `base`'s parent whose names start with `<name>.`,
/// as (rest-of-name, full path).
fn siblings(base: &Path) -> Vec<(String, PathBuf)> {
    let Some(name) = base.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let dir = match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let fname = e.file_name();
            let rest = fname.to_str()?.strip_prefix(&prefix)?.to_owned();
            Some((rest, e.path()))
        })
        .collect()
}

/// Staged files `<base>.rotating.<seq>` as (seq, path).
fn list_staged(base: &Path) -> Vec<(u64, PathBuf)> {
    siblings(base)
        .into_iter()
        .filter_map(|(rest, p)| {
            let seq = rest.strip_prefix(&STAGED_INFIX[1..])?.parse().ok()?;
            Some((seq, p))
        })
        .collect()
}

/// Rotated files `<base>.N` / `<base>.N.gz` as (N, gz, path).
fn list_rotated(base: &Path) -> Vec<(u64, bool, PathBuf)> {
    siblings(base)
        .into_iter()
        .filter_map(|(rest, p)| {
            let (num, gz) = match rest.strip_suffix(".gz") {
                Some(n) => (n, true),
                None => (rest.as_str(), false),
            };
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = num.parse().ok()?;
            (n >= 1).then_some((n, gz, p))
        })
        .collect()
}

/// Background job for the worker thread.
enum Job {
    /// Number `staged` into slot 1 (gzipping if asked), after any staged file an interrupted
    /// earlier rotation left (those sort before it), then prune.
    Rotate {
        base: PathBuf,
        staged: PathBuf,
        settings: LogSettings,
    },
    /// Delete rotated files beyond `keep` or older than `max_age`.
    Prune {
        base: PathBuf,
        settings: LogSettings,
    },
}

/// The worker for `path`, shared by every `LogFile` of that path in this
/// process, so a re-created `LogFile` queues behind its predecessor's jobs.
fn worker_for(path: &Path) -> Arc<Worker> {
    static WORKERS: OnceLock<Mutex<HashMap<PathBuf, Weak<Worker>>>> = OnceLock::new();
    let mut map = WORKERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(worker) = map.get(path).and_then(Weak::upgrade) {
        return worker;
    }
    map.retain(|_, w| w.strong_count() > 0);
    let worker = Arc::new(Worker::default());
    map.insert(path.to_owned(), Arc::downgrade(&worker));
    worker
}

#[derive(Default)]
struct WorkerState {
    queue: VecDeque<Job>,
    running: bool,
    /// `Rotate` jobs queued or running: each one is a staged file on disk.
    rotations: usize,
}

/// Serialises background jobs of one log path on at most one thread, which
/// is spawned on demand and exits when the queue is empty.
#[derive(Default)]
struct Worker {
    state: Mutex<WorkerState>,
    idle: Condvar,
    /// Woken each time a `Rotate` job ends, for [`Backlog::wait`].
    rotated: tokio::sync::Notify,
}

/// A full live file waiting for the rotation in flight (see [`LogFile::backlog`]).
pub struct Backlog(Arc<Worker>);

impl Backlog {
    /// Waits until the rotation in flight has finished, at most `limit`; `false` when it had
    /// not by then.
    pub async fn wait(self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let rotated = self.0.rotated.notified();
            tokio::pin!(rotated);
            rotated.as_mut().enable();
            if !self.0.rotating() {
                return true;
            }
            self.0.kick();
            if tokio::time::timeout_at(deadline, rotated).await.is_err() {
                return !self.0.rotating();
            }
        }
    }
}

impl Worker {
    fn lock(&self) -> MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a rotation is queued or running.
    fn rotating(&self) -> bool {
        self.lock().rotations > 0
    }

    fn submit(self: &Arc<Self>, job: Job) {
        let mut st = self.lock();
        if matches!(job, Job::Rotate { .. }) {
            st.rotations += 1;
        }
        st.queue.push_back(job);
        self.start(st);
    }

    /// Starts the thread again if jobs wait and none runs (an earlier spawn failed).
    fn kick(self: &Arc<Self>) {
        let st = self.lock();
        if !st.queue.is_empty() {
            self.start(st);
        }
    }

    fn start(self: &Arc<Self>, mut st: MutexGuard<'_, WorkerState>) {
        if st.running {
            return;
        }
        st.running = true;
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("citrus-logs".into())
            .spawn(move || me.run());
        if let Err(e) = spawned {
            // The job stays queued and runs with the next successful spawn.
            st.running = false;
            tracing::warn!(error = %e, "cannot spawn log background thread");
        }
    }

    fn run(&self) {
        loop {
            let job = {
                let mut st = self.lock();
                match st.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        st.running = false;
                        self.idle.notify_all();
                        return;
                    }
                }
            };
            let rotation = matches!(job, Job::Rotate { .. });
            // A panic must not leave `running` set forever.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(job)));
            if rotation {
                self.lock().rotations -= 1;
                self.rotated.notify_waiters();
            }
        }
    }

    fn wait_idle(&self) {
        let mut st = self.lock();
        while st.running {
            st = self.idle.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn run_job(job: Job) {
    match job {
        Job::Rotate {
            base,
            staged,
            settings,
        } => {
            let mut leftovers = list_staged(&base);
            leftovers.sort();
            for (_, left) in leftovers.into_iter().take_while(|(_, p)| *p != staged) {
                finish_rotation(&base, &left, &settings);
            }
            finish_rotation(&base, &staged, &settings);
            prune(&base, &settings);
        }
        Job::Prune { base, settings } => prune(&base, &settings),
    }
}

/// Gzip (optionally) `staged`, shift numbered files up by one and move the
/// result into slot 1. Runs on the worker thread only.
fn finish_rotation(base: &Path, staged: &Path, settings: &LogSettings) {
    if fs::symlink_metadata(staged).is_err() {
        return; // Already handled by an `Adopt` job.
    }
    if settings.keep == 0 {
        if let Err(e) = fs::remove_file(staged) {
            tracing::warn!(path = %staged.display(), error = %e, "cannot delete rotated log");
        }
        return;
    }
    // What the shift would push past `keep` goes first: the gzip being written then never
    // coexists with it, and the disk bound stays `keep` rotated + staged + live.
    for (n, _, path) in list_rotated(base) {
        if n >= u64::from(settings.keep) {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete old log");
            }
        }
    }
    let tmp = with_suffix(base, ".1.gz.tmp");
    let gzipped = settings.compress
        && match gzip_file(staged, &tmp) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %staged.display(), error = %e, "log compression failed; keeping it uncompressed");
                let _ = fs::remove_file(&tmp);
                false
            }
        };
    let mut rotated = list_rotated(base);
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (n, gz, path) in rotated {
        if let Err(e) = fs::rename(&path, numbered_path(base, n + 1, gz)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot shift rotated log");
        }
    }
    if gzipped {
        match fs::rename(&tmp, numbered_path(base, 1, true)) {
            Ok(()) => {
                let _ = fs::remove_file(staged);
                return;
            }
            Err(e) => {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot rename compressed log");
                let _ = fs::remove_file(&tmp);
            }
        }
    }
    if let Err(e) = fs::rename(staged, numbered_path(base, 1, false)) {
        // The staged file stays and is picked up again at the next open.
        tracing::warn!(path = %staged.display(), error = %e, "cannot rename rotated log");
    }
}

/// Gzip `src` into `dst` (fsynced), carrying over `src`'s mtime.
///
/// Neither path is followed if it is a symlink (`O_NOFOLLOW`): a link planted there makes the
/// compression fail (the file is kept uncompressed), never reads or truncates its target.
fn gzip_file(src: &Path, dst: &Path) -> io::Result<()> {
    let input = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)?;
    let mtime = input.metadata()?.modified()?;
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    io::copy(&mut BufReader::with_capacity(256 * 1024, input), &mut enc)?;
    let mut out = enc.finish()?;
    out.flush()?;
    out.sync_all()?;
    out.set_modified(mtime)?;
    Ok(())
}

/// Delete rotated files beyond `keep` or older than `max_age`.
fn prune(base: &Path, settings: &LogSettings) {
    let cutoff = settings
        .max_age
        .and_then(|age| SystemTime::now().checked_sub(age));
    for (n, _, path) in list_rotated(base) {
        let too_old = cutoff.is_some_and(|cutoff| {
            fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|mtime| mtime < cutoff)
        });
        if n > u64::from(settings.keep) || too_old {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete old log");
                }
            }
        }
    }
}

/// Lines a filtered read (`--since`, `--grep`) scans back from the end of each file, at most.
pub const MAX_SCAN_LINES: usize = 100_000;
/// The longest `grep` pattern, in bytes.
pub const MAX_PATTERN: usize = 1024;
/// The compiled `grep` pattern's size limit, in bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// A followed line longer than this is passed on in pieces of this size.
pub const MAX_LINE: usize = 64 * 1024;
/// Length of the stamp [`LogFile::write_output`] and [`LogFile::write_event`] put before a line
/// (`2026-11-23T16:14:01.123Z`); a space follows it.
const STAMP_LEN: usize = 24;

/// Which lines a read keeps: those at or after `since` and matching `grep` (a regular
/// expression, `regex-lite` syntax, searched in the line without its stamp).
#[derive(Debug, Default)]
pub struct LineFilter {
    since: Option<SystemTime>,
    grep: Option<regex_lite::Regex>,
}

impl LineFilter {
    /// The filter; `Err` names what is wrong with the pattern.
    pub fn new(since: Option<SystemTime>, grep: Option<&str>) -> Result<LineFilter, String> {
        let grep = grep
            .map(|pattern| {
                if pattern.len() > MAX_PATTERN {
                    return Err(format!(
                        "grep pattern of {} bytes is too long: at most {MAX_PATTERN}",
                        pattern.len()
                    ));
                }
                regex_lite::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        format!("grep pattern {pattern:?} is not a regular expression: {e}")
                    })
            })
            .transpose()?;
        Ok(LineFilter { since, grep })
    }

    /// Whether it keeps every line.
    pub fn is_empty(&self) -> bool {
        self.since.is_none() && self.grep.is_none()
    }

    /// Whether the line with `time` (`None`: it has none, and `since` then drops it) and
    /// `text` is kept.
    pub fn keeps(&self, time: Option<SystemTime>, text: &str) -> bool {
        if let Some(since) = self.since {
            if time.is_none_or(|time| time < since) {
                return false;
            }
        }
        self.grep.as_ref().is_none_or(|re| re.is_match(text))
    }
}

/// A line's time and text: the stamp citrusd put before it (app output with `log_timestamps`,
/// and citrusd's own `[citrus]` lines), parsed, and the line after it; a line without a stamp
/// is all text.
pub fn split_stamp(line: &[u8]) -> (Option<SystemTime>, &[u8]) {
    let stamped = line.len() > STAMP_LEN
        && line[STAMP_LEN] == b' '
        && line[10] == b'T'
        && line[STAMP_LEN - 1] == b'Z';
    let time = stamped
        .then(|| std::str::from_utf8(&line[..STAMP_LEN]).ok())
        .flatten()
        .and_then(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok());
    match time {
        Some(time) => (Some(time.into()), &line[STAMP_LEN + 1..]),
        None => (None, line),
    }
}

/// Splits a followed stream into lines: [`LineBuffer::push`] hands on each complete line
/// (without its newline) and keeps the unfinished rest, at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Adds `chunk`, calling `each` with every line it completes.
    pub fn push(&mut self, chunk: &[u8], mut each: impl FnMut(&[u8])) {
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            match piece.strip_suffix(b"\n") {
                Some(end) if self.partial.is_empty() => each(end),
                Some(end) => {
                    self.partial.extend_from_slice(end);
                    each(&self.partial);
                    self.partial.clear();
                }
                None => {
                    self.partial.extend_from_slice(piece);
                    while self.partial.len() >= MAX_LINE {
                        let rest = self.partial.split_off(MAX_LINE);
                        each(&self.partial);
                        self.partial = rest;
                    }
                }
            }
        }
    }
}

/// The last `n` lines of the file at `path` (read backwards in blocks from
/// the end), ending in `'\n'` when the file does. A missing file → empty; a symlink is not
/// followed (an error).
pub fn tail_lines(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if n == 0 || len == 0 {
        return Ok(Vec::new());
    }
    // Blocks read so far, last block first; `pos` is the offset of the earliest.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut pos = len;
    let mut newlines = 0;
    let mut start = None;
    while pos > 0 && start.is_none() {
        let size = (pos.min(TAIL_BLOCK as u64)) as usize;
        pos -= size as u64;
        let mut block = vec![0u8; size];
        file.read_exact_at(&mut block, pos)?;
        for i in (0..size).rev() {
            let off = pos + i as u64;
            // The file's final newline terminates the last line; don't count it.
            if block[i] == b'\n' && off != len - 1 {
                newlines += 1;
                if newlines == n {
                    start = Some(off + 1);
                    break;
                }
            }
        }
        blocks.push(block);
    }
    let skip = (start.unwrap_or(0) - pos) as usize;
    let mut out = Vec::with_capacity((len - pos) as usize - skip);
    for (i, block) in blocks.iter().rev().enumerate() {
        out.extend_from_slice(if i == 0 { &block[skip..] } else { block });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn stamps_are_split_off_and_filters_apply() {
        let (time, text) = split_stamp(b"2026-11-23T16:14:01.123Z GET /health 200");
        let at = UNIX_EPOCH + Duration::from_millis(1_795_450_441_123);
        assert_eq!(time, Some(at));
        assert_eq!(text, b"GET /health 200");
        for plain in [
            &b"no stamp here"[..],
            b"",
            b"2026-11-23T16:14:01.123Z",
            b"2026-11-23 16:14:01.123Z x",
        ] {
            assert_eq!(split_stamp(plain), (None, plain));
        }
        let filter = LineFilter::new(Some(at), Some("^GET .* 200$")).unwrap();
        assert!(!filter.is_empty());
        assert!(filter.keeps(Some(at), "GET /health 200"));
        assert!(!filter.keeps(Some(at - Duration::from_millis(1)), "GET /health 200"));
        assert!(!filter.keeps(None, "GET /health 200"));
        assert!(!filter.keeps(Some(at), "POST /x 200"));
        assert!(LineFilter::new(None, None).unwrap().is_empty());
        let err = LineFilter::new(None, Some("(unclosed")).unwrap_err();
        assert!(
            err.contains("\"(unclosed\" is not a regular expression"),
            "{err}"
        );
        let err = LineFilter::new(None, Some(&"a".repeat(MAX_PATTERN + 1))).unwrap_err();
        assert!(err.contains("too long"), "{err}");
        // A pattern whose compiled form is too big is refused, not built.
        assert!(LineFilter::new(None, Some("(\\w{1,100}){1,100}")).is_err());
    }

    #[test]
    fn line_buffer_joins_split_lines_and_caps_long_ones() {
        let mut buf = LineBuffer::default();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        buf.push(b"one\ntw", |l| seen.push(l.to_vec()));
        buf.push(b"o\nthree", |l| seen.push(l.to_vec()));
        assert_eq!(seen, [b"one".to_vec(), b"two".to_vec()]);
        buf.push(b"\n", |l| seen.push(l.to_vec()));
        assert_eq!(seen[2], b"three");
        seen.clear();
        buf.push(&vec![b'x'; MAX_LINE * 2 + 3], |l| seen.push(l.to_vec()));
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|l| l.len() == MAX_LINE));
        seen.clear();
        buf.push(b"\n", |l| seen.push(l.to_vec()));
        assert_eq!(seen, [b"xxx".to_vec()]);
    }

    fn settings() -> LogSettings {
        LogSettings::default()
    }

    fn read(path: &Path) -> Vec<u8> {
        fs::read(path).unwrap()
    }

    fn gunzip(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Checks that `line` starts with a well-formed timestamp and a space.
    fn has_stamp(line: &[u8]) -> bool {
        line.len() > 25
            && line[4] == b'-'
            && line[10] == b'T'
            && line[19] == b'.'
            && line[23] == b'Z'
            && line[24] == b' '
    }

    #[test]
    fn plain_write_creates_dirs_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/app-out.log");
        let mut log = LogFile::open(path.clone(), settings()).unwrap();
        log.write_output(b"hello ");
        log.write_output(b"world\n");
        assert_eq!(read(&path), b"hello world\n");
        assert_eq!(log.bytes_written(), 12);
        assert_eq!(log.bytes_dropped(), 0);
        assert!(log.last_error().is_none());
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 & !0o640,
            0
        );
        drop(log);
        // Re-open appends and tracks the existing size.
        let mut log = LogFile::open(path.clone(), settings()).unwrap();
        assert_eq!(log.size, 12);
        log.write_output(b"again\n");
        assert_eq!(read(&path), b"hello world\nagain\n");
    }

    #[test]
    fn timestamps_one_prefix_per_line_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let s = LogSettings {
            timestamps: true,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        log.write_output(b"first li");
        log.write_output(b"ne\nsecond\nthi");
        log.write_output(b"rd\n");
        log.write_output(b"\nlast");
        let data = read(&path);
        let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 5, "{}", String::from_utf8_lossy(&data));
        let want: [&[u8]; 5] = [b"first line", b"second", b"third", b"", b"last"];
        for (line, want) in lines.iter().zip(want) {
            assert!(has_stamp(line) || (want.is_empty() && line.len() == 25));
            assert_eq!(&line[25..], want);
            assert_eq!(line.windows(2).filter(|w| w == b"Z ").count(), 1);
        }
        assert_eq!(log.bytes_written(), data.len() as u64);
    }

    #[test]
    fn event_after_partial_line_starts_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::open(path.clone(), settings()).unwrap();
        log.write_output(b"partial");
        log.write_event("[citrus] exited with code 1");
        log.write_event("[citrus] spawned pid 4242\n");
        log.write_output(b"next\n");
        let text = String::from_utf8(read(&path)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "partial");
        assert!(has_stamp(lines[1].as_bytes()));
        assert!(lines[1].ends_with(" [citrus] exited with code 1"));
        assert!(lines[2].ends_with(" [citrus] spawned pid 4242"));
        assert_eq!(lines[3], "next");
        assert!(text.ends_with('\n'));

        // A file that ended mid-line before a restart also gets a newline.
        drop(log);
        fs::write(&path, b"no newline").unwrap();
        let mut log = LogFile::open(path.clone(), settings()).unwrap();
        log.write_event("[citrus] spawned");
        assert!(read(&path).starts_with(b"no newline\n"));
    }

    /// Concatenate rotated files oldest first, then the live file.
    fn all_content(path: &Path, keep: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for n in (1..=keep).rev() {
            let plain = numbered_path(path, n, false);
            let gz = numbered_path(path, n, true);
            if gz.exists() {
                out.extend(gunzip(&gz));
            } else if plain.exists() {
                out.extend(read(&plain));
            }
        }
        out.extend(read(path));
        out
    }

    fn chunk(i: usize) -> Vec<u8> {
        format!("line {i:05} {}\n", "x".repeat(i % 37)).into_bytes()
    }

    #[test]
    fn rotation_by_size_keeps_exactly_keep_files_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app-out.log");
        let s = LogSettings {
            max_size: Some(1000),
            keep: 3,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        let mut all = Vec::new();
        // Write just enough for 3 full rotated files and a live file.
        let mut i = 0;
        while all.len() < 3500 {
            let c = chunk(i);
            log.write_waiting(&c);
            all.extend_from_slice(&c);
            i += 1;
        }
        log.wait_background();
        assert_eq!(all_content(&path, 3), all);
        for n in 1..=3 {
            let size = fs::metadata(numbered_path(&path, n, false)).unwrap().len();
            assert!(size <= 1000 && size > 900, "{size}");
        }
        // Keep going: older files are deleted, exactly `keep` remain.
        for j in 0..500 {
            log.write_waiting(&chunk(i + j));
        }
        log.wait_background();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "app-out.log",
                "app-out.log.1",
                "app-out.log.2",
                "app-out.log.3"
            ]
        );
        assert_eq!(
            log.bytes_written(),
            (all.len() + (i..i + 500).map(|k| chunk(k).len()).sum::<usize>()) as u64
        );
    }

    #[test]
    fn oversized_chunk_goes_whole_into_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let s = LogSettings {
            max_size: Some(100),
            keep: 2,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        log.write_waiting(b"small\n");
        let big = vec![b'b'; 500];
        log.write_waiting(&big);
        log.write_waiting(b"after\n");
        log.wait_background();
        assert_eq!(read(&numbered_path(&path, 2, false)), b"small\n");
        assert_eq!(read(&numbered_path(&path, 1, false)), big);
        assert_eq!(read(&path), b"after\n");
    }

    #[test]
    fn compression_produces_valid_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app-err.log");
        let s = LogSettings {
            max_size: Some(4096),
            keep: 4,
            compress: true,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        let mut all = Vec::new();
        let mut i = 0;
        while all.len() < 4096 * 4 + 100 {
            let c = chunk(i);
            log.write_waiting(&c);
            all.extend_from_slice(&c);
            i += 1;
        }
        log.wait_background();
        for n in 1..=4 {
            assert!(numbered_path(&path, n, true).exists(), "missing .{n}.gz");
            assert!(!numbered_path(&path, n, false).exists());
        }
        assert!(!with_suffix(&path, ".1.gz.tmp").exists());
        assert!(list_staged(&path).is_empty());
        assert_eq!(all_content(&path, 4), all);
    }

    #[test]
    fn settings_change_compress_and_keep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut s = LogSettings {
            max_size: Some(10),
            keep: 5,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s.clone()).unwrap();
        log.write_waiting(b"one\n");
        log.write_waiting(b"two.......\n");
        s.compress = true;
        log.set_settings(s.clone());
        log.write_waiting(b"three.....\n");
        log.write_waiting(b"four\n");
        log.wait_background();
        assert_eq!(read(&numbered_path(&path, 3, false)), b"one\n");
        // Settings apply from the next rotation on: "two" was rotated out after the change.
        assert_eq!(gunzip(&numbered_path(&path, 2, true)), b"two.......\n");
        assert_eq!(gunzip(&numbered_path(&path, 1, true)), b"three.....\n");
        s.keep = 1;
        log.set_settings(s);
        log.wait_background();
        assert!(!numbered_path(&path, 2, true).exists());
        assert!(!numbered_path(&path, 3, false).exists());
        assert!(numbered_path(&path, 1, true).exists());
    }

    #[test]
    fn keep_zero_deletes_rotated_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let s = LogSettings {
            max_size: Some(5),
            keep: 0,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        log.write_waiting(b"aaaa\n");
        log.write_waiting(b"bbbb\n");
        log.wait_background();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(read(&path), b"bbbb\n");
    }

    #[test]
    fn max_age_deletes_old_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
        for (n, gz, is_old) in [(1, false, false), (2, true, true), (3, false, true)] {
            let p = numbered_path(&path, n, gz);
            fs::write(&p, b"x").unwrap();
            if is_old {
                File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        let unrelated = dir.path().join("a.log.bak");
        fs::write(&unrelated, b"keep me").unwrap();
        let s = LogSettings {
            max_age: Some(Duration::from_secs(86_400)),
            keep: 10,
            ..settings()
        };
        let mut log = LogFile::open(
            path.clone(),
            LogSettings {
                max_size: Some(2),
                ..s
            },
        )
        .unwrap();
        // Pruning runs with the next rotation (opening starts no work).
        log.write_waiting(b"y\n");
        log.write_waiting(b"z\n");
        log.wait_background();
        assert_eq!(read(&numbered_path(&path, 1, false)), b"y\n");
        assert!(
            numbered_path(&path, 2, false).exists(),
            "the recent file is kept (shifted)"
        );
        assert!(!numbered_path(&path, 3, true).exists());
        assert!(!numbered_path(&path, 4, false).exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn staged_leftovers_are_numbered_by_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        fs::write(numbered_path(&path, 1, false), b"oldest\n").unwrap();
        fs::write(staged_path(&path, 7), b"older\n").unwrap();
        fs::write(staged_path(&path, 8), b"newer\n").unwrap();
        let s = LogSettings {
            max_size: Some(100),
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        assert!(log.seq > 8, "new staged names sort after leftovers");
        log.write_waiting(b"live\n");
        log.write_waiting(&[b'x'; 99]);
        log.wait_background();
        let mut want = b"oldest\nolder\nnewer\nlive\n".to_vec();
        want.extend_from_slice(&[b'x'; 99]);
        assert_eq!(all_content(&path, 5), want);
    }

    #[test]
    fn recreated_log_file_queues_behind_pending_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let s = LogSettings {
            max_size: Some(64 * 1024),
            keep: 10,
            compress: true,
            ..settings()
        };
        let mut all = Vec::new();
        let big: Vec<u8> = (0..2000).flat_map(chunk).collect();
        for _ in 0..3 {
            // Dropped without waiting: the next LogFile adopts nothing twice.
            let mut log = LogFile::open(path.clone(), s.clone()).unwrap();
            for _ in 0..2 {
                log.write_waiting(&big);
                all.extend_from_slice(&big);
            }
        }
        let log = LogFile::open(path.clone(), s).unwrap();
        log.wait_background();
        assert!(list_staged(&path).is_empty());
        assert_eq!(all_content(&path, 10), all);
    }

    #[test]
    fn reopen_after_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let moved = dir.path().join("moved.log");
        let mut log = LogFile::open(path.clone(), settings()).unwrap();
        log.write_waiting(b"before\n");
        fs::rename(&path, &moved).unwrap();
        log.write_waiting(b"still old handle\n");
        log.reopen().unwrap();
        log.write_waiting(b"after\n");
        assert_eq!(read(&moved), b"before\nstill old handle\n");
        assert_eq!(read(&path), b"after\n");
        assert_eq!(log.size, 6);
    }

    #[test]
    fn rotation_after_external_move_starts_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let s = LogSettings {
            max_size: Some(10),
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        log.write_waiting(b"12345678\n");
        fs::remove_file(&path).unwrap();
        log.write_waiting(b"abc\n");
        log.wait_background();
        assert_eq!(read(&path), b"abc\n");
        assert!(log.last_error().is_none());
    }

    fn naive_tail(data: &[u8], n: usize) -> Vec<u8> {
        let body = data.strip_suffix(b"\n").unwrap_or(data);
        let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        let mut out = lines[lines.len().saturating_sub(n)..].join(&b'\n');
        if data.ends_with(b"\n") {
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn tail_small_and_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        assert_eq!(tail_lines(&p, 10).unwrap(), b"");
        fs::write(&p, b"").unwrap();
        assert_eq!(tail_lines(&p, 10).unwrap(), b"");
        fs::write(&p, b"a\nb\nc\n").unwrap();
        assert_eq!(tail_lines(&p, 2).unwrap(), b"b\nc\n");
        assert_eq!(tail_lines(&p, 3).unwrap(), b"a\nb\nc\n");
        assert_eq!(tail_lines(&p, 100).unwrap(), b"a\nb\nc\n");
        assert_eq!(tail_lines(&p, 0).unwrap(), b"");
        fs::write(&p, b"a\nb\nc").unwrap();
        assert_eq!(tail_lines(&p, 1).unwrap(), b"c");
        assert_eq!(tail_lines(&p, 2).unwrap(), b"b\nc");
        fs::write(&p, b"\n\n").unwrap();
        assert_eq!(tail_lines(&p, 1).unwrap(), b"\n");
        assert_eq!(tail_lines(&p, 5).unwrap(), b"\n\n");
    }

    #[test]
    fn tail_large_file_spanning_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        let mut data = Vec::new();
        for i in 0..20_000 {
            data.extend(chunk(i));
        }
        assert!(data.len() > 5 * TAIL_BLOCK);
        fs::write(&p, &data).unwrap();
        for n in [1, 10, 2000, 9_999, 19_999, 20_000, 50_000] {
            assert_eq!(tail_lines(&p, n).unwrap(), naive_tail(&data, n), "n={n}");
        }
        data.extend_from_slice(b"unterminated");
        fs::write(&p, &data).unwrap();
        for n in [1, 3000, 20_001] {
            assert_eq!(tail_lines(&p, n).unwrap(), naive_tail(&data, n), "n={n}");
        }
    }

    #[test]
    fn subscribers_receive_exactly_the_written_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let s = LogSettings {
            timestamps: true,
            max_size: Some(200),
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        log.write_waiting(b"before subscribe\n");
        let mut rx = log.subscribe();
        let start = log.bytes_written();
        let mut i = 0;
        while log.bytes_written() - start < 1000 {
            log.write_waiting(&chunk(i)[..10]);
            if i % 7 == 0 {
                log.event_waiting("[citrus] tick");
            }
            i += 1;
        }
        log.wait_background();
        let mut got = Vec::new();
        while let Ok(b) = rx.try_recv() {
            got.extend_from_slice(&b);
        }
        let all = all_content(&path, 5);
        assert_eq!(got, &all[start as usize..]);
        assert_eq!(all.len() as u64, log.bytes_written());
    }

    #[test]
    fn write_failures_are_counted_not_fatal() {
        let mut log = LogFile::open(PathBuf::from("/dev/full"), settings()).unwrap();
        log.write_output(b"hello\n");
        log.write_output(&vec![b'x'; 100_000]);
        log.write_event("[citrus] spawned pid 1");
        assert_eq!(log.bytes_written(), 0);
        assert!(log.bytes_dropped() >= 100_006 + 25);
        assert!(log.last_error().is_some());
        assert_eq!(log.episodes, 1, "one warning per failure episode");
        // Never rotated: /dev/full is not a regular file.
        let mut log = LogFile::open(
            PathBuf::from("/dev/full"),
            LogSettings {
                max_size: Some(1),
                ..settings()
            },
        )
        .unwrap();
        log.write_output(b"a\nb\n");
        log.wait_background();
        assert!(Path::new("/dev/full").exists());
    }

    #[test]
    fn writes_resume_after_failure_episode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = LogFile::open(path.clone(), settings()).unwrap();
        log.write_output(b"ok1\n");
        let real = log
            .file
            .replace(File::options().append(true).open("/dev/full").unwrap());
        log.write_output(b"lost\n");
        log.write_output(b"lost too\n");
        assert_eq!(log.bytes_dropped(), 14);
        log.file = real;
        log.write_output(b"ok2\n");
        assert_eq!(read(&path), b"ok1\nok2\n");
        assert_eq!(log.bytes_written(), 8);
        assert!(!log.failing);
        log.file = Some(File::options().append(true).open("/dev/full").unwrap());
        log.write_output(b"lost\n");
        assert_eq!(log.episodes, 2);
    }

    #[test]
    fn missing_directory_after_rotation_retries_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.log");
        let mut log = LogFile::open(path.clone(), settings()).unwrap();
        log.file = None;
        log.next_open_retry = Some(Instant::now() + Duration::from_secs(3600));
        log.write_output(b"dropped\n");
        assert_eq!(log.bytes_dropped(), 8);
        log.next_open_retry = None;
        log.write_output(b"kept\n");
        assert_eq!(read(&path), b"kept\n");
    }

    #[test]
    fn a_log_that_cannot_be_rotated_drops_and_counts_what_is_past_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let small = LogSettings {
            max_size: Some(10),
            keep: 2,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), small).unwrap();
        log.write_output(b"0123456789");
        // A directory at the staging name: the rename fails (EISDIR), as in a read-only dir.
        let blocker = staged_path(&path, log.seq);
        fs::create_dir(&blocker).unwrap();
        log.write_output(b"dropped\n");
        log.write_output(b"again\n");
        assert_eq!(log.bytes_dropped(), 14);
        assert_eq!(read(&path), b"0123456789");
        let error = log.last_error().unwrap();
        assert!(
            error.contains("rotate") && error.contains("a.log"),
            "{error}"
        );
        // citrusd's own lines still go past the cap.
        log.write_event("[citrus] still here");
        assert!(read(&path).ends_with(b"[citrus] still here\n"));
        // Once the rename works, the next chunk rotates and is written.
        fs::remove_dir(&blocker).unwrap();
        log.write_output(b"kept\n");
        log.wait_background();
        assert_eq!(read(&path), b"kept\n");
        assert_eq!(log.bytes_dropped(), 14);
        assert!(!log.rotate_failing);
        assert!(read(&numbered_path(&path, 1, false)).starts_with(b"0123456789"));
    }

    impl LogFile {
        /// `write_output` as a pipe reader does it: waiting for the rotation in flight first.
        fn write_waiting(&mut self, data: &[u8]) {
            if self.worker.rotating() {
                self.wait_background();
            }
            self.write_output(data);
        }

        /// `write_event`, waiting for the rotation in flight first.
        fn event_waiting(&mut self, line: &str) {
            if self.worker.rotating() {
                self.wait_background();
            }
            self.write_event(line);
        }
    }

    /// Bytes held by `path`'s live, staged and rotated files (and a compression in progress).
    fn disk_use(path: &Path) -> u64 {
        let mut seen = std::collections::HashSet::new();
        let mut total = 0;
        for (_, p) in siblings(path)
            .into_iter()
            .chain([(String::new(), path.to_owned())])
        {
            if let Ok(m) = fs::symlink_metadata(&p) {
                if seen.insert(std::os::unix::fs::MetadataExt::ino(&m)) {
                    total += m.len();
                }
            }
        }
        total
    }

    #[test]
    fn a_writer_faster_than_rotation_stays_within_the_disk_bound_and_counts_drops() {
        // Synchronous writes with no back-pressure outrun the worker (gzip + fsync per 4 KiB):
        // before the bound, every rotation staged one more file (31,550 of them in a probe).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fast-out.log");
        let (max, keep) = (4096u64, 3u32);
        let s = LogSettings {
            max_size: Some(max),
            keep,
            compress: true,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        let chunk = vec![b'y'; 1000];
        let mut total = 0u64;
        let mut worst = 0;
        for i in 0..20_000 {
            log.write_output(&chunk);
            total += chunk.len() as u64;
            if i % 50 == 0 {
                worst = worst.max(disk_use(&path));
                assert!(list_staged(&path).len() <= 1, "{:?}", list_staged(&path));
            }
        }
        // keep rotated + one staged + the live file (+ the gzip being written, smaller).
        assert!(
            worst <= (u64::from(keep) + 3) * max,
            "{worst} bytes on disk, bound {}",
            (u64::from(keep) + 2) * max
        );
        assert!(log.bytes_dropped() > 0, "the writer outran the worker");
        assert_eq!(log.bytes_written() + log.bytes_dropped(), total);
        assert!(log.last_error().unwrap().contains("previous rotation"));
        log.wait_background();
        assert!(list_staged(&path).is_empty());
        // Once the worker caught up, writing and rotating resume.
        let before = log.bytes_written();
        log.write_output(&chunk);
        log.write_output(&chunk);
        assert_eq!(log.bytes_written(), before + 2000);
    }

    #[tokio::test]
    async fn read_limit_and_backlog_hold_a_reader_until_the_rotation_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bp.log");
        let s = LogSettings {
            max_size: Some(4096),
            keep: 2,
            compress: true,
            ..settings()
        };
        let mut log = LogFile::open(path.clone(), s).unwrap();
        assert_eq!(log.read_limit(), 4096);
        assert!(log.backlog().is_none());
        log.write_output(&[b'a'; 4000]);
        log.write_output(&[b'b'; 1000]); // rotates
        log.wait_background();
        // As if that rotation were still in flight (a slow gzip).
        log.worker.lock().rotations += 1;
        assert_eq!(log.read_limit(), 3096, "only what fits while rotating");
        log.write_output(&[b'c'; 3096]);
        assert_eq!(log.read_limit(), 0);
        let backlog = log.backlog().expect("full while rotating");
        assert!(!backlog.wait(Duration::from_millis(50)).await);
        let backlog = log.backlog().expect("still rotating");
        let worker = Arc::clone(&log.worker);
        let waiter = tokio::spawn(backlog.wait(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        worker.lock().rotations -= 1;
        worker.rotated.notify_waiters();
        assert!(waiter.await.unwrap());
        assert!(log.backlog().is_none());
        assert_eq!(log.read_limit(), 4096);
        assert_eq!(log.bytes_dropped(), 0);
        log.wait_background();
        assert_eq!(gunzip(&numbered_path(&path, 1, true)), [b'a'; 4000]);
    }

    #[test]
    fn a_symlink_at_the_log_path_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, b"keep me\n").unwrap();
        let path = dir.path().join("app-out.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let mut log = LogFile::open(path.clone(), settings()).unwrap();
        log.write_output(b"app output\n");
        log.write_event("[citrus] spawned pid 1");
        assert_eq!(read(&target), b"keep me\n");
        assert_eq!(log.bytes_written(), 0);
        assert!(log.bytes_dropped() > 11);
        let err = log.last_error().unwrap();
        assert!(
            err.contains("is a symlink") && err.contains("app-out.log"),
            "{err}"
        );
        assert!(
            tail_lines(&path, 10).is_err(),
            "tail does not follow it either"
        );
        // Once the link is removed, the next retry opens a real file.
        fs::remove_file(&path).unwrap();
        log.next_open_retry = None;
        log.write_output(b"now\n");
        assert_eq!(read(&path), b"now\n");
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        // A link planted at the compression's temporary name is not followed either.
        std::os::unix::fs::symlink(&target, with_suffix(&path, ".1.gz.tmp")).unwrap();
        assert!(gzip_file(&path, &with_suffix(&path, ".1.gz.tmp")).is_err());
        assert_eq!(read(&target), b"keep me\n");
    }

    #[test]
    #[ignore]
    fn bench_500mb_64k_chunks() {
        let dir = tempfile::tempdir().unwrap();
        for timestamps in [false, true] {
            let path = dir.path().join(format!("bench-{timestamps}.log"));
            let s = LogSettings {
                timestamps,
                max_size: Some(100 << 20),
                keep: 2,
                ..settings()
            };
            let mut log = LogFile::open(path, s).unwrap();
            let mut chunk = Vec::with_capacity(64 * 1024);
            while chunk.len() + 100 <= 64 * 1024 {
                chunk.extend_from_slice(&super::tests::chunk(chunk.len() % 97));
            }
            let total: u64 = 500 << 20;
            let start = Instant::now();
            let mut n = 0u64;
            while n < total {
                log.write_output(&chunk);
                n += chunk.len() as u64;
            }
            let secs = start.elapsed().as_secs_f64();
            log.wait_background();
            println!(
                "timestamps={timestamps}: {:.0} MB/s ({} MB in {secs:.2}s, dropped {})",
                n as f64 / 1e6 / secs,
                n / 1_000_000,
                log.bytes_dropped()
            );
        }
    }
}
