//! The outbox: reports for the engine (operation results, error replies) that must not be lost.
//! Every report is appended here first and written to `<state_dir>/fleet-outbox.json`
//! atomically; the connection loop sends from the front and removes what was sent. A report made
//! while disconnected, or before a citrusd restart, is delivered after the next connect. The queue
//! is bounded: past `CAPACITY` the oldest report is dropped and counted. Reports repeat their
//! command's `id` and carry their status, so the engine can drop a duplicate (a report sent just
//! before a connection broke is sent again).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::sys::fs::write_atomic;

/// Reports kept at most.
pub const CAPACITY: usize = 1000;

/// The persisted queue of reports (each a JSON text frame).
pub struct Outbox {
    path: PathBuf,
    queue: Mutex<VecDeque<String>>,
    dropped: Mutex<u64>,
    /// Woken when a report is queued.
    pub ready: Notify,
}

impl Outbox {
    /// Loads what a previous run left in `path`.
    pub fn open(path: PathBuf) -> Outbox {
        let queue: VecDeque<String> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), "fleet outbox unreadable ({e}); starting empty");
                VecDeque::new()
            }),
            Err(_) => VecDeque::new(),
        };
        Outbox {
            path,
            queue: Mutex::new(queue),
            dropped: Mutex::new(0),
            ready: Notify::new(),
        }
    }

    fn persist(&self, queue: &VecDeque<String>) {
        let json = serde_json::to_vec(queue).expect("strings serialise");
        if let Err(e) = write_atomic(&self.path, &json, 0o600) {
            tracing::error!(path = %self.path.display(), "cannot persist the fleet outbox: {e}");
        }
    }

    /// Queues a report (persisted before this returns).
    pub fn push(&self, frame: String) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(frame);
        while q.len() > CAPACITY {
            q.pop_front();
            *self.dropped.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            tracing::warn!("fleet outbox full: dropped the oldest report");
        }
        self.persist(&q);
        drop(q);
        self.ready.notify_one();
    }

    /// The oldest report, if any (it stays queued until [`Outbox::sent`]).
    pub fn front(&self) -> Option<String> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .cloned()
    }

    /// Removes the oldest report after it was sent.
    pub fn sent(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.pop_front();
        self.persist(&q);
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reports dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        *self.dropped.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.json");
        let o = Outbox::open(path.clone());
        o.push("a".into());
        o.push("b".into());
        o.sent();
        let o = Outbox::open(path.clone());
        assert_eq!(o.front().as_deref(), Some("b"));
        for i in 0..CAPACITY + 5 {
            o.push(i.to_string());
        }
        assert_eq!(o.len(), CAPACITY);
        assert_eq!(o.dropped(), 6);
    }
}
