//! Capturing the output of a short-lived command (a job, a site operation): both pipes read
//! into one buffer that keeps only the last `limit` bytes, so a chatty command costs bounded
//! memory.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// The last `limit` bytes written to the captured pipes (interleaved as they arrived).
pub struct OutputTail {
    limit: usize,
    bytes: Mutex<VecDeque<u8>>,
}

impl OutputTail {
    /// An empty tail keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Arc<OutputTail> {
        Arc::new(OutputTail {
            limit,
            bytes: Mutex::new(VecDeque::new()),
        })
    }

    fn push(&self, data: &[u8]) {
        let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        b.extend(data);
        let excess = b.len().saturating_sub(self.limit);
        b.drain(..excess);
    }

    /// The captured text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        let b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b.iter().copied().collect::<Vec<u8>>()).into_owned()
    }

    /// Reads `fds` (stdout, stderr) into the tail until their writers close them.
    pub fn capture(self: &Arc<Self>, fds: [OwnedFd; 2]) -> Capture {
        Capture(fds.map(|fd| {
            let tail = self.clone();
            tokio::spawn(async move {
                let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = rx.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    tail.push(&buf[..n]);
                }
            })
        }))
    }
}

/// The readers of a capture.
pub struct Capture([JoinHandle<()>; 2]);

impl Capture {
    /// Waits for the pipes to close, at most `limit` (a straggler holding a pipe open must not
    /// hold up the report).
    pub async fn finish(self, limit: Duration) {
        for reader in self.0 {
            let _ = tokio::time::timeout(limit, reader).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes() {
        let t = OutputTail::new(4096);
        t.push(&[b'a'; 3000]);
        t.push(&[b'b'; 3000]);
        let text = t.text();
        assert_eq!(text.len(), 4096);
        assert!(text.ends_with(&"b".repeat(3000)));
        assert!(text.starts_with('a'));
    }
}
