//! Latency samples and their summary: exact percentiles over every recorded call.
//!
//! A run records one `u32` of microseconds per successful call (a million calls is 4 MB),
//! so percentiles are exact (nearest rank on the sorted samples) rather than bucketed.
//! Failed calls are counted by kind and never enter the latency figures; a target that
//! answers fast with errors does not look fast.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// What one driver task (or a whole run, after [`Samples::merge`]) recorded.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Latency of each successful call, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Failed calls by kind (`timeout`, `http_503`, `mismatch`, …).
    pub errors: BTreeMap<String, u64>,
    /// The first message seen of each kind, for the report.
    pub examples: BTreeMap<String, String>,
}

impl Samples {
    pub fn ok(&mut self, latency: Duration) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.push(us);
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
    }

    /// Counts an error and keeps its message if it is the first of its kind.
    pub fn error_with(&mut self, kind: &str, message: impl FnOnce() -> String) {
        if !self.examples.contains_key(kind) {
            let mut text = message();
            text.truncate(300);
            self.examples.insert(kind.to_owned(), text);
        }
        self.error(kind);
    }

    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (kind, text) in other.examples {
            self.examples.entry(kind).or_insert(text);
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Summarises the samples of a measurement window of length `window`.
    pub fn summarise(mut self, window: Duration) -> Summary {
        self.latencies_us.sort_unstable();
        let sorted = &self.latencies_us;
        let ms = |us: Option<u32>| us.map(|v| f64::from(v) / 1000.0);
        let ok = sorted.len() as u64;
        let secs = window.as_secs_f64();
        let mean = if sorted.is_empty() {
            None
        } else {
            let total: u64 = sorted.iter().map(|&v| u64::from(v)).sum();
            Some(total as f64 / sorted.len() as f64 / 1000.0)
        };
        Summary {
            calls_ok: ok,
            errors: self.error_total(),
            errors_by_kind: self.errors,
            error_examples: self.examples,
            window_s: secs,
            calls_per_s: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            mean_ms: mean,
            p50_ms: ms(percentile(sorted, 0.50)),
            p90_ms: ms(percentile(sorted, 0.90)),
            p99_ms: ms(percentile(sorted, 0.99)),
            p999_ms: ms(percentile(sorted, 0.999)),
            max_ms: ms(sorted.last().copied()),
        }
    }
}

/// Nearest-rank percentile of sorted samples: the smallest value with at least `q` of the
/// samples at or below it. `None` when there are no samples.
pub fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied()
}

/// The figures reported for one measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub calls_ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first message of each error kind.
    pub error_examples: BTreeMap<String, String>,
    pub window_s: f64,
    pub calls_per_s: f64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Summary {
    /// `kind×n, kind×n` or `0`.
    pub fn errors_text(&self) -> String {
        if self.errors_by_kind.is_empty() {
            return "0".to_owned();
        }
        self.errors_by_kind
            .iter()
            .map(|(kind, n)| format!("{kind}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.50), Some(50));
        assert_eq!(percentile(&sorted, 0.90), Some(90));
        assert_eq!(percentile(&sorted, 0.99), Some(99));
        assert_eq!(percentile(&sorted, 0.999), Some(100));
        assert_eq!(percentile(&sorted, 0.0), Some(1));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.999), Some(7));
    }

    #[test]
    fn summary_counts_errors_apart_from_latencies() {
        let mut a = Samples::default();
        a.ok(Duration::from_micros(1500));
        a.error("timeout");
        let mut b = Samples::default();
        b.ok(Duration::from_micros(500));
        b.error("timeout");
        b.error("mismatch");
        a.merge(b);
        let summary = a.summarise(Duration::from_secs(2));
        assert_eq!(summary.calls_ok, 2);
        assert_eq!(summary.errors, 3);
        assert_eq!(summary.errors_by_kind["timeout"], 2);
        assert_eq!(summary.calls_per_s, 1.0);
        assert_eq!(summary.p50_ms, Some(0.5));
        assert_eq!(summary.max_ms, Some(1.5));
        assert_eq!(summary.mean_ms, Some(1.0));
        assert_eq!(summary.errors_text(), "mismatch×1, timeout×2");
    }

    #[test]
    fn empty_summary_has_no_percentiles() {
        let summary = Samples::default().summarise(Duration::from_secs(1));
        assert_eq!(summary.calls_ok, 0);
        assert_eq!(summary.p99_ms, None);
        assert_eq!(summary.errors_text(), "0");
    }
}
