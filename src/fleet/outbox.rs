//! The outbox: reports for the engine (operation results, error replies) that must not be lost.
//! Every report is queued here first, on disk, before anything else happens; the connection loop
//! sends from the front and then marks what it sent. A report made while disconnected, or before
//! a citrusd restart, is delivered after the next connect. The queue is bounded: past `CAPACITY`
//! the oldest report is dropped and counted. Reports repeat their command's `id` and carry their
//! status, so the engine can drop a duplicate (a report sent just before a connection broke is
//! sent again).
//!
//! On disk, `<state_dir>/fleet-outbox.log` is an append-only log of changes, one line each: a
//! JSON string is a report queued; a number `n` says that every report numbered below `n` is gone
//! (sent, or dropped when full). Reports are numbered in the order they are queued, and keep
//! their numbers when the log is rewritten. Queuing a report, or marking a batch sent, appends
//! one line and syncs it, so a backlog of N reports drains in O(N) bytes written (the previous
//! form, one JSON array rewritten per report sent, took O(N²)). Once the log holds more than
//! twice what is still queued (plus `REWRITE_SLACK`), it is rewritten with only what is
//! queued (`write_atomic`): that costs no more than what was appended since the last rewrite.
//! A crash at any instant loses no report that was queued, and sends again at most the batch
//! that was being sent; a line torn by a crash is ignored.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::sys::fs::write_atomic;

/// Reports kept at most.
pub const CAPACITY: usize = 1000;
/// The log's name in the state directory.
pub const FILE: &str = "fleet-outbox.log";
/// The file of citrusd before the log (the whole queue as one JSON array), taken over at open.
const OLD_FILE: &str = "fleet-outbox.json";
/// The log is rewritten once it is more than twice what is queued and this many bytes.
const REWRITE_SLACK: u64 = 64 * 1024;

/// The persisted queue of reports (each a JSON text frame).
pub struct Outbox {
    path: PathBuf,
    log: Mutex<Log>,
    /// Woken when a report is queued.
    pub ready: Notify,
}

/// Reports from the front of the queue, to send in one go and then pass to [`Outbox::sent`].
#[derive(Debug, PartialEq)]
pub struct Batch {
    pub frames: Vec<String>,
    /// The number after the last report of the batch.
    pub end: u64,
}

/// The queue and its log file.
struct Log {
    /// The number of the report at the front.
    first: u64,
    /// The queued reports with the size of their line in the log.
    queue: VecDeque<(String, u64)>,
    /// Bytes of the queued reports' lines.
    queued_bytes: u64,
    /// Bytes in the log file.
    file_bytes: u64,
    /// The log, open for appending; `None` until it is written whole (at the first change, or
    /// after a failed write).
    file: Option<File>,
    dropped: u64,
    /// Bytes written to the log by this process.
    written: u64,
}

impl Outbox {
    /// Loads what a previous run left in `state_dir` and rewrites the log with it.
    pub fn open(state_dir: &Path) -> Outbox {
        let path = state_dir.join(FILE);
        let old = state_dir.join(OLD_FILE);
        let mut log = Log {
            first: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            file_bytes: 0,
            file: None,
            dropped: 0,
            written: 0,
        };
        let took_over = match std::fs::read(&path) {
            Ok(bytes) => {
                log.replay(&path, &bytes);
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => log.take_over(&old),
            Err(e) => {
                tracing::error!(path = %path.display(), "fleet outbox unreadable ({e}); starting empty");
                false
            }
        };
        if !log.queue.is_empty() {
            log.rewrite(&path);
        }
        // The older file goes once what it held is in the log.
        if took_over && (log.file.is_some() || log.queue.is_empty()) {
            let _ = std::fs::remove_file(&old);
        }
        Outbox {
            path,
            log: Mutex::new(log),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a report (on disk before this returns).
    pub fn push(&self, frame: String) {
        let mut log = self.lock();
        let mut lines = String::new();
        if log.queue.len() >= CAPACITY {
            log.pop_front(1);
            log.dropped += 1;
            tracing::warn!("fleet outbox full: dropped the oldest report");
            lines = format!("{}\n", log.first);
        }
        let line = report_line(&frame);
        lines.push_str(&line);
        log.push_back(frame, line.len() as u64);
        log.commit(&self.path, &lines);
        drop(log);
        self.ready.notify_one();
    }

    /// Up to `max` reports from the front (they stay queued until [`Outbox::sent`]).
    pub fn peek(&self, max: usize) -> Batch {
        let log = self.lock();
        let frames: Vec<String> = log.queue.iter().take(max).map(|(f, _)| f.clone()).collect();
        Batch {
            end: log.first + frames.len() as u64,
            frames,
        }
    }

    /// Removes the reports numbered below `end` (a [`Batch::end`]) after they were sent; those
    /// dropped meanwhile are already gone.
    pub fn sent(&self, end: u64) {
        let mut log = self.lock();
        if end <= log.first {
            return;
        }
        let n = (end - log.first).min(log.queue.len() as u64) as usize;
        log.pop_front(n);
        let line = format!("{}\n", log.first);
        log.commit(&self.path, &line);
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reports dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Bytes this process wrote to the log.
    #[cfg(test)]
    fn written(&self) -> u64 {
        self.lock().written
    }
}

/// A report's line in the log: the frame as a JSON string (so it holds no raw newline).
fn report_line(frame: &str) -> String {
    let mut line = serde_json::to_string(frame).expect("strings serialise");
    line.push('\n');
    line
}

impl Log {
    /// Queues a report whose log line is `line` bytes long.
    fn push_back(&mut self, frame: String, line: u64) {
        self.queued_bytes += line;
        self.queue.push_back((frame, line));
    }

    /// Removes `n` reports from the front.
    fn pop_front(&mut self, n: usize) {
        for (_, bytes) in self.queue.drain(..n) {
            self.queued_bytes -= bytes;
        }
        self.first += n as u64;
    }

    /// Applies the log's lines in order; a last line without its newline was torn by a crash.
    fn replay(&mut self, path: &Path, bytes: &[u8]) {
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let Some(line) = line.strip_suffix(b"\n") else {
                tracing::warn!(path = %path.display(), "fleet outbox: ignoring a torn last line");
                break;
            };
            if line.first() == Some(&b'"') {
                match serde_json::from_slice::<String>(line) {
                    Ok(frame) => self.push_back(frame, line.len() as u64 + 1),
                    Err(e) => {
                        tracing::error!(path = %path.display(), "fleet outbox: unreadable report skipped ({e})")
                    }
                }
                continue;
            }
            match std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.parse::<u64>().ok())
            {
                Some(front) => {
                    let gone = front
                        .saturating_sub(self.first)
                        .min(self.queue.len() as u64);
                    self.pop_front(gone as usize);
                    if self.queue.is_empty() {
                        self.first = self.first.max(front);
                    }
                }
                None => {
                    tracing::error!(path = %path.display(), "fleet outbox: unreadable line skipped")
                }
            }
        }
    }

    /// Queues what the whole-array file of an older citrusd held; false when there is none.
    fn take_over(&mut self, old: &Path) -> bool {
        let Ok(bytes) = std::fs::read(old) else {
            return false;
        };
        match serde_json::from_slice::<Vec<String>>(&bytes) {
            Ok(frames) => {
                for frame in frames {
                    let line = report_line(&frame).len() as u64;
                    self.push_back(frame, line);
                }
            }
            Err(e) => {
                tracing::error!(path = %old.display(), "fleet outbox unreadable ({e}); starting empty")
            }
        }
        true
    }

    /// Writes a change: appends its `lines` and syncs them, or rewrites the log whole when it has
    /// grown past its bound (or was not written yet, or a write failed).
    fn commit(&mut self, path: &Path, lines: &str) {
        let bound = 2 * self.queued_bytes + REWRITE_SLACK;
        let appended = match &mut self.file {
            Some(file) if self.file_bytes + lines.len() as u64 <= bound => file
                .write_all(lines.as_bytes())
                .and_then(|()| file.sync_data()),
            _ => return self.rewrite(path),
        };
        match appended {
            Ok(()) => {
                self.file_bytes += lines.len() as u64;
                self.written += lines.len() as u64;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot append to the fleet outbox: {e}");
                // A partly written line would spoil the next: write it whole next time.
                self.file = None;
            }
        }
    }

    /// Replaces the log with one holding only what is queued.
    fn rewrite(&mut self, path: &Path) {
        let mut text = format!("{}\n", self.first);
        for (frame, _) in &self.queue {
            text.push_str(&report_line(frame));
        }
        let reopened = write_atomic(path, text.as_bytes(), 0o600)
            .and_then(|()| OpenOptions::new().append(true).open(path));
        match reopened {
            Ok(file) => {
                self.file = Some(file);
                self.file_bytes = text.len() as u64;
                self.written += text.len() as u64;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot persist the fleet outbox: {e}");
                self.file = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a citrusd started now would find: the log copied aside (opening rewrites it).
    fn reopened(state_dir: &Path) -> (tempfile::TempDir, Outbox) {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(state_dir.join(FILE), copy.path().join(FILE)).unwrap();
        let o = Outbox::open(copy.path());
        (copy, o)
    }

    #[test]
    fn survives_a_restart_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path());
        o.push("a".into());
        o.push("b".into());
        o.sent(o.peek(1).end);
        let o = Outbox::open(dir.path());
        assert_eq!(o.peek(1).frames, ["b"]);
        for i in 0..CAPACITY + 5 {
            o.push(i.to_string());
        }
        assert_eq!(o.len(), CAPACITY);
        assert_eq!(o.dropped(), 6);
    }

    /// A backlog drains in bytes written proportional to it (not its square), the log stays
    /// bounded (it is rewritten along the way), and a crash at any point leaves exactly what was
    /// not marked sent.
    #[test]
    fn draining_is_linear_and_every_instant_is_recoverable() {
        const N: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path());
        let report = |i: usize| {
            format!(
                r#"{{"type":"event","message":"{i:04} {}"}}"#,
                "x".repeat(600)
            )
        };
        let line_bytes = |i: usize| report_line(&report(i)).len() as u64;
        for i in 0..N {
            o.push(report(i));
        }
        let pushed = o.written();
        let queued: u64 = (0..N).map(line_bytes).sum();
        assert!(
            queued > 2 * REWRITE_SLACK,
            "big enough to be rewritten while draining"
        );
        assert!(
            pushed < queued * 2,
            "pushing wrote {pushed} bytes for {queued}"
        );
        let mut rewrites = 0;
        let mut last_size = u64::MAX;
        // One report per sync: the worst case.
        for sent in 1..=N {
            let batch = o.peek(1);
            assert_eq!(batch.frames, [report(sent - 1)]);
            o.sent(batch.end);
            let size = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
            let left: u64 = (sent..N).map(line_bytes).sum();
            assert!(
                size <= 2 * left + REWRITE_SLACK + 32,
                "log of {size} bytes for {left} queued"
            );
            rewrites += usize::from(size < last_size);
            last_size = size;
            if sent % 29 == 0 || sent == N {
                let (_copy, after_crash) = reopened(dir.path());
                assert_eq!(after_crash.len(), N - sent);
                assert_eq!(
                    after_crash.peek(1).frames,
                    (sent..N.min(sent + 1)).map(report).collect::<Vec<_>>()
                );
            }
        }
        assert!(rewrites > 0, "the log was never rewritten");
        let drained = o.written() - pushed;
        assert!(
            drained < queued * 2,
            "draining wrote {drained} bytes for {queued} queued"
        );
        assert!(o.is_empty());
    }

    /// Reports dropped (queue full) while their batch was being sent are not counted twice: the
    /// batch's end removes only what is left of the batch, never a report after it.
    #[test]
    fn a_batch_end_survives_drops_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path());
        for i in 0..CAPACITY {
            o.push(i.to_string());
        }
        let batch = o.peek(3);
        assert_eq!(batch.frames, ["0", "1", "2"]);
        o.push("new 1".into());
        o.push("new 2".into());
        // "0" and "1" were dropped for the new ones: only "2" goes now.
        o.sent(batch.end);
        assert_eq!(o.len(), CAPACITY - 1);
        assert_eq!(o.peek(1).frames, ["3"]);
        let (_copy, after_crash) = reopened(dir.path());
        assert_eq!(after_crash.len(), CAPACITY - 1);
        assert_eq!(
            after_crash.peek(CAPACITY).frames.last().map(String::as_str),
            Some("new 2")
        );
    }

    #[test]
    fn a_line_torn_by_a_crash_is_ignored_and_odd_reports_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path());
        let odd = "line one\nline \"two\"\t\u{e9}\u{1F34B}".to_string();
        o.push(odd.clone());
        o.push("second".into());
        drop(o);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        log.write_all(b"\"half a rep").unwrap();
        let o = Outbox::open(dir.path());
        assert_eq!(o.peek(10).frames, [odd, "second".to_string()]);
        // Opening rewrote the log without the torn line: new reports append cleanly.
        o.push("third".into());
        let (_copy, again) = reopened(dir.path());
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn takes_over_the_queue_of_an_older_citrusd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OLD_FILE), r#"["a","b"]"#).unwrap();
        let o = Outbox::open(dir.path());
        assert_eq!(o.peek(10).frames, ["a", "b"]);
        assert!(!dir.path().join(OLD_FILE).exists());
        let (_copy, again) = reopened(dir.path());
        assert_eq!(again.peek(10).frames, ["a", "b"]);
    }
}
