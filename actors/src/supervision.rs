//! The restart policy of the node agent: exponential backoff, and a limit on failures within a
//! window.
//!
//! ractor has no restart strategies of its own and the third-party `ractor-supervisor` does not
//! build with the `cluster` feature (see ARCHITECTURE.md, Decisions), so the policy is ours.
//! It is pure: callers pass the current [`Instant`] in, so tests drive time by hand and the
//! decision never depends on when a test happens to run.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a supervisor treats an actor that keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait before the first restart of a burst; each further failure doubles it.
    pub initial_backoff: Duration,
    /// The longest wait between restarts.
    pub max_backoff: Duration,
    /// How many restarts are allowed within `window`; one more failure and the supervisor
    /// gives up.
    pub max_restarts: u32,
    /// Failures older than this are forgotten, so an actor that has been healthy for a while
    /// starts again from `initial_backoff` and a full restart budget.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after waiting `after`; `attempt` counts the failures in the current window
    /// (1 for the first).
    Restart { after: Duration, attempt: u32 },
    /// Too many failures: `failures` happened within `window`. Do not restart until someone
    /// changes what is asked for (a new generation).
    GiveUp { failures: u32, window: Duration },
}

/// The recent failures of one actor.
#[derive(Debug, Clone, Default)]
pub struct RestartHistory {
    failures: VecDeque<Instant>,
}

impl RestartHistory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a failure at `now` and decides what to do about it.
    pub fn on_failure(&mut self, policy: &RestartPolicy, now: Instant) -> RestartDecision {
        self.forget_before(policy, now);
        self.failures.push_back(now);
        // Bounded memory even for a caller that keeps reporting after a give-up.
        let keep = policy.max_restarts as usize + 1;
        while self.failures.len() > keep {
            self.failures.pop_front();
        }
        let failures = u32::try_from(self.failures.len()).unwrap_or(u32::MAX);
        if failures > policy.max_restarts {
            return RestartDecision::GiveUp {
                failures,
                window: policy.window,
            };
        }
        RestartDecision::Restart {
            after: backoff(policy, failures),
            attempt: failures,
        }
    }

    /// The failures still within the window at `now`.
    pub fn recent_failures(&self, policy: &RestartPolicy, now: Instant) -> u32 {
        let n = self
            .failures
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < policy.window)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Forgets everything: used when a new generation replaces the actor.
    pub fn reset(&mut self) {
        self.failures.clear();
    }

    fn forget_before(&mut self, policy: &RestartPolicy, now: Instant) {
        while let Some(&oldest) = self.failures.front() {
            if now.saturating_duration_since(oldest) >= policy.window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The wait before restart number `attempt` (1-based): `initial * 2^(attempt-1)`, capped.
fn backoff(policy: &RestartPolicy, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    policy
        .initial_backoff
        .checked_mul(1u32 << doublings)
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_then_caps_then_gives_up() {
        let policy = RestartPolicy::default();
        let mut history = RestartHistory::new();
        let t0 = Instant::now();
        let waits: Vec<_> = (1..=5)
            .map(|i| match history.on_failure(&policy, t0 + ms(i)) {
                RestartDecision::Restart { after, attempt } => {
                    assert_eq!(attempt as u64, i);
                    after
                }
                other => panic!("failure {i}: {other:?}"),
            })
            .collect();
        assert_eq!(waits, vec![ms(200), ms(400), ms(800), ms(1600), ms(3200)]);
        assert_eq!(
            history.on_failure(&policy, t0 + ms(6)),
            RestartDecision::GiveUp {
                failures: 6,
                window: policy.window
            }
        );
    }

    #[test]
    fn cap_applies() {
        let policy = RestartPolicy {
            max_restarts: 100,
            ..RestartPolicy::default()
        };
        let mut history = RestartHistory::new();
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for i in 0..100 {
            if let RestartDecision::Restart { after, .. } = history.on_failure(&policy, t0 + ms(i))
            {
                last = after;
            }
        }
        assert_eq!(last, policy.max_backoff);
    }

    #[test]
    fn a_long_healthy_actor_starts_over() {
        let policy = RestartPolicy::default();
        let mut history = RestartHistory::new();
        let t0 = Instant::now();
        for i in 0..5 {
            history.on_failure(&policy, t0 + ms(i));
        }
        assert_eq!(history.recent_failures(&policy, t0 + ms(10)), 5);
        let later = t0 + policy.window + ms(10);
        assert_eq!(history.recent_failures(&policy, later), 0);
        assert_eq!(
            history.on_failure(&policy, later),
            RestartDecision::Restart {
                after: policy.initial_backoff,
                attempt: 1
            }
        );
    }

    #[test]
    fn reset_forgets() {
        let policy = RestartPolicy::default();
        let mut history = RestartHistory::new();
        let t0 = Instant::now();
        for i in 0..6 {
            history.on_failure(&policy, t0 + ms(i));
        }
        history.reset();
        assert!(matches!(
            history.on_failure(&policy, t0 + ms(7)),
            RestartDecision::Restart { attempt: 1, .. }
        ));
    }

    proptest! {
        #[test]
        fn burst_properties(
            initial_ms in 1u64..2_000,
            max_ms in 1u64..20_000,
            max_restarts in 0u32..20,
            gaps in proptest::collection::vec(0u64..100, 1..40),
        ) {
            let policy = RestartPolicy {
                initial_backoff: ms(initial_ms),
                max_backoff: ms(max_ms),
                max_restarts,
                // Longer than any burst below, so every failure counts.
                window: Duration::from_secs(3600),
            };
            let mut history = RestartHistory::new();
            let mut now = Instant::now();
            let mut last = Duration::ZERO;
            for (i, gap) in gaps.iter().enumerate() {
                now += ms(*gap);
                let failures = i as u32 + 1;
                match history.on_failure(&policy, now) {
                    RestartDecision::Restart { after, attempt } => {
                        prop_assert!(failures <= max_restarts);
                        prop_assert_eq!(attempt, failures);
                        prop_assert!(after <= policy.max_backoff);
                        prop_assert!(after >= last);
                        last = after;
                    }
                    RestartDecision::GiveUp { failures: f, .. } => {
                        prop_assert_eq!(failures, max_restarts + 1);
                        prop_assert_eq!(f, max_restarts + 1);
                        break;
                    }
                }
            }
        }

        #[test]
        fn failures_spread_beyond_the_window_never_give_up(
            max_restarts in 1u32..10,
            n in 1usize..50,
        ) {
            let policy = RestartPolicy { max_restarts, ..RestartPolicy::default() };
            let mut history = RestartHistory::new();
            let t0 = Instant::now();
            for i in 0..n {
                let now = t0 + policy.window * i as u32;
                let decision = history.on_failure(&policy, now);
                prop_assert_eq!(
                    decision,
                    RestartDecision::Restart { after: policy.initial_backoff, attempt: 1 }
                );
            }
        }
    }
}
