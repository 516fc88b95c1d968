//! The live streams' plumbing: one bounded queue per open `GET /admin/live`, fed by
//! [`Streams::publish`] and drained by the stream's response body.
//!
//! Theory of operation. A message is serialised once into a [`Frame`] (shared bytes) and pushed
//! onto the queue of every stream it is for; publishing never waits. A stream's body pops its
//! queue as fast as the client reads (hyper polls it only when the socket takes more). When a
//! queue would hold more than [`QUEUE_BYTES`], it is emptied and holds `reload` alone until the
//! client reads that: frames published meanwhile are dropped, since the page refetches after a
//! `reload` anyway. So a slow client costs at most its budget and never slows the publisher or
//! the other streams; a stopped one is ended by the listener's write-stall timeout.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

/// Streams open at once; one more gets 503.
pub const MAX_STREAMS: usize = 256;
/// Bytes queued for one stream before it is told to `reload`: a client that keeps up holds a
/// frame or two (a tick is at most about 450 KB); all streams together hold at most
/// [`MAX_STREAMS`] times this, and only while their clients lag.
pub const QUEUE_BYTES: usize = 1 << 20;
/// A comment line this often keeps an idle stream (and proxies) alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The `reload` message.
pub const RELOAD: &[u8] = b"event: reload\ndata: {}\n\n";
const PING: &[u8] = b": keep-alive\n\n";
/// The first bytes of every stream: the browser's reconnect delay.
pub const HELLO: &[u8] = b"retry: 3000\n\n";

/// One or more SSE messages, and which streams they are for.
#[derive(Clone, Debug)]
pub struct Frame {
    /// For streams opened without `?agent=`.
    pub fleet: bool,
    /// For streams opened with `?agent=` this agent.
    pub agent: Option<Arc<str>>,
    pub bytes: Bytes,
}

impl Frame {
    /// The SSE text of one message named `event` with `data` (one JSON line) appended to `buf`.
    pub fn push(buf: &mut Vec<u8>, event: &str, data: &impl serde::Serialize) {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(event.as_bytes());
        buf.extend_from_slice(b"\ndata: ");
        // Strings, numbers and maps with string keys: cannot fail.
        serde_json::to_writer(&mut *buf, data).expect("live message serialises to JSON");
        buf.extend_from_slice(b"\n\n");
    }

    /// One message for the fleet streams and the streams of `agent` (when given).
    pub fn message(event: &str, data: &impl serde::Serialize, agent: Option<&str>) -> Frame {
        let mut buf = Vec::with_capacity(256);
        Frame::push(&mut buf, event, data);
        Frame {
            fleet: true,
            agent: agent.map(Arc::from),
            bytes: buf.into(),
        }
    }
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// `reload` is queued and not yet read: drop what comes.
    reloading: bool,
    closed: bool,
}

/// One open stream.
pub struct Subscriber {
    /// `Some` for a stream opened with `?agent=`.
    pub agent: Option<Arc<str>>,
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Subscriber {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wants(&self, frame: &Frame) -> bool {
        match &self.agent {
            None => frame.fleet,
            Some(agent) => frame.agent.as_ref() == Some(agent),
        }
    }

    /// Queues `bytes`; `true` when the queue overflowed (and now holds `reload`).
    fn push(&self, bytes: &Bytes) -> bool {
        let mut queue = self.lock();
        if queue.reloading || queue.closed {
            return false;
        }
        let overflow = queue.bytes + bytes.len() > QUEUE_BYTES;
        if overflow {
            queue.frames.clear();
            queue.frames.push_back(Bytes::from_static(RELOAD));
            queue.bytes = RELOAD.len();
            queue.reloading = true;
        } else {
            queue.bytes += bytes.len();
            queue.frames.push_back(bytes.clone());
        }
        drop(queue);
        self.wake.notify_one();
        overflow
    }

    /// The next bytes to send: queued frames, or a keep-alive comment after `keep_alive` of
    /// nothing; `None` once closed.
    pub async fn next(&self, keep_alive: Duration) -> Option<Bytes> {
        loop {
            {
                let mut queue = self.lock();
                if queue.closed {
                    return None;
                }
                if let Some(bytes) = queue.frames.pop_front() {
                    queue.bytes -= bytes.len();
                    if queue.frames.is_empty() {
                        queue.reloading = false;
                    }
                    return Some(bytes);
                }
            }
            if tokio::time::timeout(keep_alive, self.wake.notified())
                .await
                .is_err()
            {
                return Some(Bytes::from_static(PING));
            }
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

/// Why a stream was not opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "{MAX_STREAMS} live streams are open, the most the engine serves; close a panel tab and retry"
)]
pub struct TooMany;

/// The open streams.
#[derive(Default)]
pub struct Streams {
    subs: Mutex<Vec<Arc<Subscriber>>>,
    /// Times a stream was told to `reload`.
    pub reloads: AtomicU64,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Subscriber>>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a stream (for `agent`'s messages only, when given).
    pub fn open(&self, agent: Option<&str>) -> Result<Arc<Subscriber>, TooMany> {
        let mut subs = self.lock();
        if subs.len() >= MAX_STREAMS {
            return Err(TooMany);
        }
        let sub = Arc::new(Subscriber {
            agent: agent.map(Arc::from),
            queue: Mutex::default(),
            wake: Notify::new(),
        });
        subs.push(sub.clone());
        Ok(sub)
    }

    /// Forgets a stream.
    pub fn close(&self, sub: &Arc<Subscriber>) {
        self.lock().retain(|s| !Arc::ptr_eq(s, sub));
        sub.close();
    }

    /// Ends every stream (engine shutdown).
    pub fn close_all(&self) {
        for sub in self.lock().drain(..) {
            sub.close();
        }
    }

    /// Number of open streams.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Whether any stream is open (nothing needs to be built for the live view otherwise).
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Whether a fleet stream (without `?agent=`) is open.
    pub fn any_fleet(&self) -> bool {
        self.lock().iter().any(|s| s.agent.is_none())
    }

    /// Queues `frame` on every stream it is for; never waits.
    pub fn publish(&self, frame: &Frame) {
        for sub in self.lock().iter().filter(|s| s.wants(frame)) {
            if sub.push(&frame.bytes) {
                self.reloads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(agent: Option<&str>, fleet: bool, len: usize) -> Frame {
        Frame {
            fleet,
            agent: agent.map(Arc::from),
            bytes: Bytes::from(vec![b'x'; len]),
        }
    }

    #[tokio::test]
    async fn frames_reach_the_streams_they_are_for() {
        let streams = Streams::default();
        let fleet = streams.open(None).unwrap();
        let a = streams.open(Some("a")).unwrap();
        streams.publish(&frame(None, true, 1));
        streams.publish(&frame(Some("a"), false, 2));
        streams.publish(&frame(Some("b"), true, 3));
        assert_eq!(fleet.next(KEEP_ALIVE).await.unwrap().len(), 1);
        assert_eq!(fleet.next(KEEP_ALIVE).await.unwrap().len(), 3);
        assert_eq!(a.next(KEEP_ALIVE).await.unwrap().len(), 2);
        streams.close(&a);
        assert!(a.next(KEEP_ALIVE).await.is_none());
        assert_eq!(streams.count(), 1);
    }

    #[tokio::test]
    async fn an_overflowing_queue_holds_reload_alone_until_read() {
        let streams = Streams::default();
        let slow = streams.open(None).unwrap();
        let chunk = QUEUE_BYTES / 4;
        for _ in 0..4 {
            streams.publish(&frame(None, true, chunk));
        }
        assert_eq!(streams.reloads.load(Ordering::Relaxed), 0);
        streams.publish(&frame(None, true, chunk));
        assert_eq!(streams.reloads.load(Ordering::Relaxed), 1);
        // Dropped while the reload waits.
        streams.publish(&frame(None, true, 10));
        assert_eq!(slow.next(KEEP_ALIVE).await.unwrap(), RELOAD);
        streams.publish(&frame(None, true, 11));
        assert_eq!(slow.next(KEEP_ALIVE).await.unwrap().len(), 11);
    }

    #[tokio::test]
    async fn the_cap_refuses_one_more_and_frees_on_close() {
        let streams = Streams::default();
        let subs: Vec<_> = (0..MAX_STREAMS)
            .map(|_| streams.open(None).unwrap())
            .collect();
        assert!(streams.open(None).is_err());
        streams.close(&subs[0]);
        assert!(streams.open(None).is_ok());
    }

    #[tokio::test]
    async fn an_idle_stream_gets_a_keep_alive_comment() {
        let streams = Streams::default();
        let sub = streams.open(None).unwrap();
        let ms = Duration::from_millis(10);
        assert_eq!(sub.next(ms).await.unwrap(), PING);
        streams.publish(&frame(None, true, 3));
        assert_eq!(sub.next(ms).await.unwrap().len(), 3);
    }
}
