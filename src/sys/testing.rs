//! Helpers for the crate's unit tests.

use std::time::{Duration, Instant};

/// Polls `f` every 5 ms until it holds, for at most 10 s; whether it did.
pub(crate) fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
