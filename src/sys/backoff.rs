//! The crate's one retry schedule: waits that double from a first delay up to a cap, optionally
//! with full jitter. The webhook sender, the DigitalOcean client and the fleet agent's reconnects
//! all wait by it, and so do the supervisor's restart backoff and its retries after a shortage.

use std::time::Duration;

/// Waits that double after each failure: `first`, `2 × first`, `4 × first`, … at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after failure number `failures` (1-based; 0 counts as 1):
    /// `first × 2^(failures − 1)`, at most `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.first.saturating_mul(factor).min(self.max)
    }

    /// A uniformly random wait in `[0, delay(failures)]`, in whole milliseconds (full jitter), so
    /// that many clients failing at once do not retry at once.
    pub fn jittered(&self, failures: u32) -> Duration {
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
        let ms = self.delay(failures).as_millis().max(1) as u64;
        Duration::from_millis(u64::from_ne_bytes(bytes) % (ms + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_first_up_to_max() {
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let waits: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(0), b.first);
        assert_eq!(b.delay(u32::MAX), b.max);
        let huge = Backoff {
            first: Duration::MAX,
            max: Duration::from_secs(5),
        };
        assert_eq!(huge.delay(40), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_the_delay_and_spreads() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(60),
        };
        let waits: Vec<Duration> = (0..200).map(|_| b.jittered(3)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(400)));
        // 200 draws over 401 values: all alike would mean no randomness at all.
        assert!(waits.iter().any(|w| *w != waits[0]));
    }
}
