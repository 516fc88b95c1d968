//! Secrets of the engine: random keys and tokens, their SHA-256 hashes (what is stored),
//! constant-time comparison, and the per-address limit on failed attempts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::{constant_time, digest, rand};

/// `n` random bytes from the system's CSPRNG, in lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes).expect("the system random generator works");
    hex(&bytes)
}

/// A new agent key: 32 random bytes, hex (SPEC 4).
pub fn new_key() -> String {
    random_hex(32)
}

/// A random UUID v4.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `bytes` in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `secret`, hex. Keys and tokens are 256-bit random values, so a fast hash is
/// enough: there is nothing to brute-force.
pub fn hash(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub fn matches(secret: &str, stored: &str) -> bool {
    constant_time::verify_slices_are_equal(hash(secret).as_bytes(), stored.as_bytes()).is_ok()
}

/// How many times `auth_max_failures` an address may fail in a window before it is refused
/// without its credential being checked at all: the bound on guesses from one address.
pub const HARD_FACTOR: u32 = 10;

/// Counts failed attempts per address in a fixed window. Past `max` failures, a wrong credential
/// from the address is answered 429 for the rest of the window but a right one is still accepted
/// (so a misconfigured client does not lock out the right token or the other agents behind the
/// same address); past `max` × [`HARD_FACTOR`], nothing from the address is checked until the
/// window ends, which bounds guessing.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` while `addr` has `at_least` failures in its window.
    fn over(&self, addr: IpAddr, at_least: u32) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let &(start, count) = seen.get(&addr)?;
        let elapsed = start.elapsed();
        (count >= at_least && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// `Some(wait)` if `addr` is refused before its credential is checked (a guessing run).
    pub fn refused(&self, addr: IpAddr) -> Option<Duration> {
        self.over(addr, self.max.saturating_mul(HARD_FACTOR))
    }

    /// `Some(wait)` if a wrong credential from `addr` gets 429 for now.
    pub fn blocked(&self, addr: IpAddr) -> Option<Duration> {
        self.over(addr, self.max)
    }

    /// Records a failure from `addr`; `Some(wait)` if the address is now [`Self::blocked`].
    pub fn failed(&self, addr: IpAddr) -> Option<Duration> {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let entry = seen.entry(addr).or_insert((now, 0));
            if now.duration_since(entry.0) >= self.window {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
            // Bound the table: forget addresses whose window is over.
            if seen.len() > 10_000 {
                let window = self.window;
                seen.retain(|_, (start, _)| now.duration_since(*start) < window);
            }
        }
        self.blocked(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hashes() {
        let key = new_key();
        assert_eq!(key.len(), 64);
        assert_ne!(key, new_key());
        let stored = hash(&key);
        assert_eq!(stored.len(), 64);
        assert_ne!(stored, key);
        assert!(matches(&key, &stored));
        assert!(!matches("wrong", &stored));
        assert!(!matches(&key, ""));
        assert_eq!(new_uuid().len(), 36);
    }

    #[test]
    fn limiter_blocks_after_max_failures_for_the_window() {
        let limiter = FailureLimiter::new(3, Duration::from_millis(200));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..2 {
            assert!(limiter.failed(a).is_none());
            assert!(limiter.blocked(a).is_none());
        }
        assert!(limiter.failed(a).is_some());
        assert!(limiter.blocked(a).is_some());
        assert!(
            limiter.refused(a).is_none(),
            "only wrong credentials are refused yet"
        );
        for _ in 3..29 {
            limiter.failed(a);
        }
        assert!(limiter.refused(a).is_none());
        limiter.failed(a);
        assert!(
            limiter.refused(a).is_some(),
            "30 failures: nothing more is checked"
        );
        assert!(limiter.blocked(b).is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        while limiter.blocked(a).is_some() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
