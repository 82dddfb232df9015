//! Login attempts, limited per username with a token bucket: `per_minute` attempts in a
//! burst, refilled evenly over a minute. A limited attempt is refused before the password
//! is looked at, so guessing costs the attacker time, not Warden CPU. In memory, per
//! process: replicas each apply the limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys kept at most; beyond it, full buckets are forgotten.
const MAX_KEYS: usize = 100_000;

pub struct LoginLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::new()
    }
}

impl LoginLimiter {
    pub fn new() -> LoginLimiter {
        LoginLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `key`; `Err(wait)` when none is left.
    pub fn attempt(&self, key: &str, per_minute: u32) -> Result<(), Duration> {
        let capacity = f64::from(per_minute.max(1));
        let rate = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < capacity
            });
        }
        let (tokens, at) = buckets.entry(key.to_lowercase()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_per_key() {
        let limiter = LoginLimiter::new();
        for _ in 0..3 {
            assert!(limiter.attempt("Alice", 3).is_ok());
        }
        let wait = limiter.attempt("alice", 3).unwrap_err();
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.attempt("bob", 3).is_ok());
    }
}
