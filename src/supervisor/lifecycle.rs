//! The restart decision, kept pure: given the policy, the counters and how a run ended, what
//! happens next. No I/O, so the rules of SPEC 2.2 are unit-tested here as a table.

use std::time::Duration;

use crate::config::{AppConfig, RestartPolicy};
use crate::sys::backoff::Backoff;

use super::reaper::ExitStatus;

/// Backoff never waits longer than this between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// The part of an app's config that decides restarts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub max_restarts: u32,
    pub min_uptime: Duration,
    pub restart_delay: Duration,
    pub exp_backoff_restart_delay: Duration,
}

impl From<&AppConfig> for Policy {
    fn from(app: &AppConfig) -> Policy {
        Policy {
            restart: app.restart,
            max_restarts: app.max_restarts,
            min_uptime: app.min_uptime,
            restart_delay: app.restart_delay,
            exp_backoff_restart_delay: app.exp_backoff_restart_delay,
        }
    }
}

/// Consecutive unstable runs and the current backoff step; reset by a stable run or a manual start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub unstable_restarts: u32,
    pub backoff_step: u32,
}

/// What to do after a run ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Spawn again after this delay.
    Restart { delay: Duration },
    /// Too many unstable runs in a row: stay down until a manual start.
    Errored,
    /// The policy says not to restart.
    Stopped,
}

/// Decides what follows a run of `uptime` that ended with `status`.
pub fn on_exit(
    policy: &Policy,
    counters: &mut Counters,
    uptime: Duration,
    status: ExitStatus,
) -> Decision {
    let stable = uptime >= policy.min_uptime;
    if stable {
        *counters = Counters::default();
    }
    match policy.restart {
        RestartPolicy::Never => return Decision::Stopped,
        RestartPolicy::OnFailure if status.success() => return Decision::Stopped,
        _ => {}
    }
    if !stable {
        counters.unstable_restarts += 1;
        if counters.unstable_restarts > policy.max_restarts {
            return Decision::Errored;
        }
    }
    Decision::Restart {
        delay: next_delay(policy, counters),
    }
}

/// The delay before the next restart; advances the backoff step.
fn next_delay(policy: &Policy, counters: &mut Counters) -> Duration {
    let base = policy.exp_backoff_restart_delay;
    if base.is_zero() {
        return policy.restart_delay;
    }
    counters.backoff_step = counters.backoff_step.saturating_add(1);
    let schedule = Backoff {
        first: base,
        max: MAX_BACKOFF,
    };
    schedule
        .delay(counters.backoff_step)
        .max(policy.restart_delay)
}

/// The first wait before retrying a spawn that failed for lack of descriptors or processes.
pub const SHORTAGE_RETRY: Duration = Duration::from_millis(250);

/// The wait before the `attempt`th (from 1) retry of a spawn that failed for a momentary shortage
/// (EMFILE, ENFILE, EAGAIN): doubling from [`SHORTAGE_RETRY`] up to [`MAX_BACKOFF`]. Such failures
/// are not the app's: they never count towards `max_restarts`.
pub fn shortage_delay(attempt: u32) -> Duration {
    let schedule = Backoff {
        first: SHORTAGE_RETRY,
        max: MAX_BACKOFF,
    };
    schedule.delay(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRASH: ExitStatus = ExitStatus {
        code: Some(1),
        signal: None,
    };
    const CLEAN: ExitStatus = ExitStatus {
        code: Some(0),
        signal: None,
    };
    const KILLED: ExitStatus = ExitStatus {
        code: None,
        signal: Some(9),
    };

    fn policy(restart: RestartPolicy, max: u32) -> Policy {
        Policy {
            restart,
            max_restarts: max,
            min_uptime: Duration::from_secs(1),
            restart_delay: Duration::ZERO,
            exp_backoff_restart_delay: Duration::ZERO,
        }
    }

    const FAST: Duration = Duration::from_millis(10);
    const SLOW: Duration = Duration::from_secs(5);

    #[test]
    fn instant_crashes_spawn_exactly_n_plus_one_times() {
        let p = policy(RestartPolicy::Always, 3);
        let mut c = Counters::default();
        let mut spawns = 1;
        while let Decision::Restart { .. } = on_exit(&p, &mut c, FAST, CRASH) {
            spawns += 1;
            assert!(spawns < 100);
        }
        assert_eq!(spawns, 4);
        assert_eq!(c.unstable_restarts, 4);
    }

    #[test]
    fn a_stable_run_resets_the_count_then_crashes_count_again() {
        let p = policy(RestartPolicy::Always, 2);
        let mut c = Counters {
            unstable_restarts: 2,
            backoff_step: 5,
        };
        assert_eq!(
            on_exit(&p, &mut c, SLOW, CRASH),
            Decision::Restart {
                delay: Duration::ZERO
            }
        );
        assert_eq!(c, Counters::default());
        // After the stable run: N+1 more spawns, then errored.
        let mut spawns = 1;
        while let Decision::Restart { .. } = on_exit(&p, &mut c, FAST, CRASH) {
            spawns += 1;
        }
        assert_eq!(spawns, 3);
    }

    #[test]
    fn table_of_policies() {
        let cases = [
            (RestartPolicy::Never, CRASH, Decision::Stopped),
            (RestartPolicy::Never, CLEAN, Decision::Stopped),
            (RestartPolicy::OnFailure, CLEAN, Decision::Stopped),
            (
                RestartPolicy::OnFailure,
                CRASH,
                Decision::Restart {
                    delay: Duration::ZERO,
                },
            ),
            (
                RestartPolicy::OnFailure,
                KILLED,
                Decision::Restart {
                    delay: Duration::ZERO,
                },
            ),
            (
                RestartPolicy::Always,
                CLEAN,
                Decision::Restart {
                    delay: Duration::ZERO,
                },
            ),
        ];
        for (restart, status, want) in cases {
            let mut c = Counters::default();
            assert_eq!(
                on_exit(&policy(restart, 5), &mut c, SLOW, status),
                want,
                "{restart:?} {status:?}"
            );
        }
    }

    #[test]
    fn max_restarts_zero_never_restarts_an_unstable_run() {
        let mut c = Counters::default();
        assert_eq!(
            on_exit(&policy(RestartPolicy::Always, 0), &mut c, FAST, CRASH),
            Decision::Errored
        );
    }

    #[test]
    fn exponential_backoff_doubles_caps_and_resets() {
        let mut p = policy(RestartPolicy::Always, 100);
        p.exp_backoff_restart_delay = Duration::from_millis(100);
        let mut c = Counters::default();
        let delays: Vec<_> = (0..10)
            .map(|_| match on_exit(&p, &mut c, FAST, CRASH) {
                Decision::Restart { delay } => delay.as_millis(),
                d => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]
        );
        assert_eq!(
            on_exit(&p, &mut c, SLOW, CRASH),
            Decision::Restart {
                delay: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn fixed_restart_delay() {
        let mut p = policy(RestartPolicy::Always, 5);
        p.restart_delay = Duration::from_millis(250);
        let mut c = Counters::default();
        assert_eq!(
            on_exit(&p, &mut c, FAST, CRASH),
            Decision::Restart {
                delay: Duration::from_millis(250)
            }
        );
    }

    #[test]
    fn shortage_retries_double_up_to_the_backoff_cap() {
        let delays: Vec<u128> = (1..=9).map(|a| shortage_delay(a).as_millis()).collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]
        );
        assert_eq!(shortage_delay(0), SHORTAGE_RETRY);
        assert_eq!(shortage_delay(u32::MAX), MAX_BACKOFF);
    }
}
