//! Rate limits: GCRA (the `governor` crate), in-process, keyed by principal, on the same
//! call path as the tool call. No I/O: a decision costs a hash lookup and an atomic.
//!
//! Limits come from the profile (`rate_limits`): a base rate per surface (`mcp`, `ai`,
//! `oauth`, `admin`), optional per-server and per-tool rates, scaled by the caller's tier
//! (`tier_multipliers`) and allowed to burst `burst_multiplier` times the rate. A limiter
//! is built lazily per (scope, tier); idle keys are evicted by [`RateLimiter::sweep`], so
//! memory stays bounded by the callers of the last few minutes. A reload builds a new
//! [`RateLimiter`] (counters start afresh under the new limits).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use thiserror::Error;

/// A rate as written in the profile: `100/s`, `10/m`, `500/h`, `10000/d`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub count: f64,
    pub period: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!("expected a rate such as `100/s`, `10/m`, `500/h` or `10000/d`, found `{text}`")
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: f64 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        if !(count.is_finite() && count > 0.0) {
            return Err(bad());
        }
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The surfaces with a base rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Surface {
    Mcp,
    Ai,
    OAuth,
    Admin,
    Skills,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Mcp => "mcp",
            Surface::Ai => "ai",
            Surface::OAuth => "oauth",
            Surface::Admin => "admin",
            Surface::Skills => "skills",
        }
    }

    pub fn parse(text: &str) -> Option<Surface> {
        match text {
            "mcp" => Some(Surface::Mcp),
            "ai" => Some(Surface::Ai),
            "oauth" => Some(Surface::OAuth),
            "admin" => Some(Surface::Admin),
            "skills" => Some(Surface::Skills),
            _ => None,
        }
    }
}

/// The validated `rate_limits` section plus per-server and per-tool rates.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    pub surfaces: BTreeMap<Surface, Rate>,
    pub burst_multiplier: f64,
    pub tier_multipliers: BTreeMap<String, f64>,
    /// Per server (per caller).
    pub servers: BTreeMap<String, Rate>,
    /// Per (server, upstream tool) (per caller).
    pub tools: BTreeMap<(String, String), Rate>,
    /// How often callers whose allowance is full again are forgotten
    /// ([`RateLimiter::sweep`], run by `warden serve`).
    pub sweep_interval: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            surfaces: BTreeMap::new(),
            burst_multiplier: 1.0,
            tier_multipliers: BTreeMap::new(),
            servers: BTreeMap::new(),
            tools: BTreeMap::new(),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// A refusal: which limit, what it is for this caller, and when to retry.
#[derive(Clone, Debug, Error, PartialEq)]
#[error("rate limit {scope} exceeded ({limit} for tier `{tier}`); retry in {retry_after:?}")]
pub struct RateLimited {
    pub scope: String,
    pub limit: String,
    pub tier: String,
    pub retry_after: Duration,
}

impl RateLimited {
    /// Whole seconds for `Retry-After`, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Surface(Surface),
    Server(String),
    Tool(String, String),
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::Surface(s) => format!("`{}`", s.as_str()),
            Scope::Server(s) => format!("of server `{s}`"),
            Scope::Tool(s, t) => format!("of tool `{s}/{t}`"),
        }
    }
}

type Limiter = DefaultKeyedRateLimiter<String>;

/// Every limiter, built lazily. Cheap to share behind an `Arc`.
pub struct RateLimiter {
    config: LimitsConfig,
    limiters: RwLock<HashMap<(Scope, String), Arc<Limiter>>>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(config: LimitsConfig) -> RateLimiter {
        RateLimiter {
            config,
            limiters: RwLock::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Checks (and, when allowed, consumes) the caller's allowance on `surface`, and on
    /// the server and tool when given.
    pub fn check(
        &self,
        surface: Surface,
        subject: &str,
        tier: &str,
        server: Option<&str>,
        tool: Option<&str>,
    ) -> Result<(), RateLimited> {
        if let Some(rate) = self.config.surfaces.get(&surface) {
            self.check_one(Scope::Surface(surface), *rate, subject, tier)?;
        }
        if let Some(server) = server {
            if let Some(rate) = self.config.servers.get(server) {
                self.check_one(Scope::Server(server.to_owned()), *rate, subject, tier)?;
            }
            if let Some(tool) = tool
                && let Some(rate) = self.config.tools.get(&(server.to_owned(), tool.to_owned()))
            {
                self.check_one(
                    Scope::Tool(server.to_owned(), tool.to_owned()),
                    *rate,
                    subject,
                    tier,
                )?;
            }
        }
        Ok(())
    }

    fn check_one(
        &self,
        scope: Scope,
        rate: Rate,
        subject: &str,
        tier: &str,
    ) -> Result<(), RateLimited> {
        let multiplier = self
            .config
            .tier_multipliers
            .get(tier)
            .copied()
            .unwrap_or(1.0);
        let limiter = self.limiter(&scope, tier, rate, multiplier);
        limiter
            .check_key(&subject.to_owned())
            .map_err(|not_until| RateLimited {
                scope: scope.describe(),
                limit: format!("{rate} × {multiplier}"),
                tier: tier.to_owned(),
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    fn limiter(&self, scope: &Scope, tier: &str, rate: Rate, multiplier: f64) -> Arc<Limiter> {
        let key = (scope.clone(), tier.to_owned());
        if let Some(limiter) = self
            .limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return limiter.clone();
        }
        let mut limiters = self.limiters.write().unwrap_or_else(|e| e.into_inner());
        limiters
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Limiter::keyed(quota(
                    rate,
                    multiplier,
                    self.config.burst_multiplier,
                )))
            })
            .clone()
    }

    /// Forgets callers whose allowance is full again (bounded memory). `warden serve`
    /// runs it every `rate_limits.sweep_interval` ([`sweep_every`]).
    pub fn sweep(&self) {
        for limiter in self
            .limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys held across all limiters (for metrics and the memory-bound test).
    pub fn tracked_keys(&self) -> usize {
        self.limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| l.len())
            .sum()
    }
}

/// Sweeps the rate limiter `current` holds now — a reload replaces it — every
/// `rate_limits.sweep_interval` of that limiter's profile, until `stop`; reports the
/// callers still held as `warden_rate_limit_keys`. The sweep runs on a blocking thread:
/// it visits every key held.
pub async fn sweep_every(
    current: impl Fn() -> Arc<RateLimiter>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let interval = current().config().sweep_interval;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let limiter = current();
        let held = tokio::task::spawn_blocking(move || {
            limiter.sweep();
            limiter.tracked_keys()
        })
        .await;
        match held {
            Ok(held) => metrics::gauge!("warden_rate_limit_keys").set(held as f64),
            Err(error) => tracing::error!(%error, "the rate limiter's sweep failed"),
        }
    }
}

/// `rate × multiplier` per period, bursting `burst_multiplier` times that.
fn quota(rate: Rate, multiplier: f64, burst_multiplier: f64) -> Quota {
    let per_period = (rate.count * multiplier).max(f64::MIN_POSITIVE);
    let interval = rate.period.div_f64(per_period).max(Duration::from_nanos(1));
    let burst = (per_period * burst_multiplier)
        .ceil()
        .clamp(1.0, f64::from(u32::MAX)) as u32;
    // `burst` is clamped to at least 1 above.
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(interval)
        .map(|q| q.allow_burst(burst))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(mcp: &str, burst: f64) -> RateLimiter {
        let mut config = LimitsConfig {
            burst_multiplier: burst,
            ..LimitsConfig::default()
        };
        config
            .surfaces
            .insert(Surface::Mcp, Rate::parse(mcp).unwrap());
        config.tier_multipliers.insert("admin".into(), 10.0);
        config.tier_multipliers.insert("anon".into(), 0.5);
        config.tools.insert(
            ("fs".into(), "write_file".into()),
            Rate::parse("1/m").unwrap(),
        );
        RateLimiter::new(config)
    }

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!(Rate::parse("100/s").unwrap().count, 100.0);
        assert_eq!(Rate::parse("10/m").unwrap().period, Duration::from_secs(60));
        for bad in ["", "10", "0/s", "-1/s", "ten/s", "10/week"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn burst_then_refusal_with_a_retry_delay() {
        let limits = limiter("2/m", 2.0);
        for _ in 0..4 {
            limits
                .check(Surface::Mcp, "alice", "user", None, None)
                .unwrap();
        }
        let refused = limits
            .check(Surface::Mcp, "alice", "user", None, None)
            .unwrap_err();
        assert_eq!(refused.scope, "`mcp`");
        assert!(refused.retry_after > Duration::from_secs(20), "{refused:?}");
        assert!(
            refused.retry_after <= Duration::from_secs(30),
            "{refused:?}"
        );
        assert_eq!(
            refused.retry_after_secs(),
            refused.retry_after.as_secs() + 1
        );
        // Another caller has its own allowance.
        limits
            .check(Surface::Mcp, "bob", "user", None, None)
            .unwrap();
    }

    #[test]
    fn tiers_scale_the_rate() {
        let limits = limiter("2/m", 1.0);
        for _ in 0..20 {
            limits
                .check(Surface::Mcp, "root", "admin", None, None)
                .unwrap();
        }
        assert!(
            limits
                .check(Surface::Mcp, "root", "admin", None, None)
                .is_err()
        );
        limits
            .check(Surface::Mcp, "guest", "anon", None, None)
            .unwrap();
        assert!(
            limits
                .check(Surface::Mcp, "guest", "anon", None, None)
                .is_err()
        );
    }

    #[test]
    fn per_tool_limits_apply_only_to_that_tool() {
        let limits = limiter("1000/s", 1.0);
        limits
            .check(Surface::Mcp, "a", "user", Some("fs"), Some("write_file"))
            .unwrap();
        let refused = limits
            .check(Surface::Mcp, "a", "user", Some("fs"), Some("write_file"))
            .unwrap_err();
        assert_eq!(refused.scope, "of tool `fs/write_file`");
        limits
            .check(Surface::Mcp, "a", "user", Some("fs"), Some("read_file"))
            .unwrap();
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limits = limiter("1000/s", 1.0);
        for i in 0..100 {
            limits
                .check(Surface::Mcp, &format!("user-{i}"), "user", None, None)
                .unwrap();
        }
        assert_eq!(limits.tracked_keys(), 100);
        // At 1000/s a spent cell refills within a millisecond; then the key is idle.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            limits.sweep();
            if limits.tracked_keys() == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "keys were never evicted"
            );
            std::thread::yield_now();
        }
    }
}
