//! Restart arithmetic, kept pure so it is tested without processes: exponential backoff
//! with jitter and a cap, a reset after a stable run, and the OTP restart intensity
//! (at most `max_restarts` in `restart_window`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::spec::RestartSpec;

/// Per-child restart bookkeeping.
#[derive(Debug, Default, Clone)]
pub struct RestartHistory {
    /// Consecutive restarts without a stable run in between (drives the backoff).
    pub attempt: u32,
    /// When recent restarts happened (drives the intensity limit).
    recent: VecDeque<Instant>,
}

/// What the supervisor should do after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Restart {
        attempt: u32,
        delay: Duration,
    },
    /// More than `max_restarts` within `restart_window`.
    GiveUp {
        restarts_in_window: usize,
    },
}

impl RestartHistory {
    /// Records an exit after `ran_for` and decides. `jitter` in [0, 1) spreads restarts of
    /// many servers that crashed together.
    pub fn on_exit(
        &mut self,
        spec: &RestartSpec,
        ran_for: Option<Duration>,
        now: Instant,
        jitter: f64,
    ) -> Verdict {
        if ran_for.is_some_and(|d| d >= spec.backoff_reset_after) {
            self.attempt = 0;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > spec.restart_window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= spec.max_restarts as usize {
            return Verdict::GiveUp {
                restarts_in_window: self.recent.len(),
            };
        }
        self.recent.push_back(now);
        let delay = backoff_delay(spec, self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        Verdict::Restart {
            attempt: self.attempt,
            delay,
        }
    }

    /// An operator restart clears everything.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.recent.clear();
    }
}

/// `initial * 2^attempt`, capped at `max`, with "equal jitter": half fixed, half random,
/// so the delay never collapses to zero yet restarts still spread out.
pub fn backoff_delay(spec: &RestartSpec, attempt: u32, jitter: f64) -> Duration {
    let exponential = spec
        .backoff_initial
        .saturating_mul(2u32.saturating_pow(attempt.min(31)));
    let capped = exponential.min(spec.backoff_max);
    let half = capped / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RestartPolicy;

    fn spec() -> RestartSpec {
        RestartSpec {
            policy: RestartPolicy::Permanent,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            backoff_reset_after: Duration::from_secs(10),
            max_restarts: 3,
            restart_window: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = spec();
        assert_eq!(backoff_delay(&s, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(&s, 1, 1.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(&s, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(&s, 10, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(&s, 10, 0.0), Duration::from_millis(500));
        assert_eq!(backoff_delay(&s, 40, 0.5), Duration::from_millis(750));
    }

    #[test]
    fn intensity_limit_gives_up_then_window_forgives() {
        let s = spec();
        let mut history = RestartHistory::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(matches!(
                history.on_exit(&s, None, t0 + Duration::from_secs(i), 0.5),
                Verdict::Restart { .. }
            ));
        }
        assert_eq!(
            history.on_exit(&s, None, t0 + Duration::from_secs(4), 0.5),
            Verdict::GiveUp {
                restarts_in_window: 3
            }
        );
        // Past the window, restarts are allowed again.
        assert!(matches!(
            history.on_exit(&s, None, t0 + Duration::from_secs(120), 0.5),
            Verdict::Restart { .. }
        ));
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let s = spec();
        let mut history = RestartHistory::default();
        let now = Instant::now();
        history.on_exit(&s, None, now, 1.0);
        history.on_exit(&s, None, now, 1.0);
        let Verdict::Restart { delay, .. } =
            history.on_exit(&s, Some(Duration::from_secs(11)), now, 1.0)
        else {
            panic!("expected a restart");
        };
        assert_eq!(delay, Duration::from_millis(100));
    }
}
