//! The results of a run: every measurement point, the one-off facts (cold start, binary
//! size, idle-session memory, chaos), the bars from the issue with pass/fail, and what was
//! skipped and why. Written as `report.json` and rendered as `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::procs::TreeCpu;
use crate::stats::Summary;

/// How load was applied at one point.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate: f64 },
}

impl Load {
    pub fn label(&self) -> String {
        match self {
            Load::Closed { concurrency } => format!("closed ×{concurrency}"),
            Load::Open { rate } => format!("open {rate:.0}/s"),
        }
    }
}

/// Process figures for one point.
#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    /// CPU seconds over the whole point (warm-up included), split by role.
    pub cpu: TreeCpu,
    /// Gateway CPU per completed call, in microseconds (`None` for the direct baseline).
    pub gateway_cpu_us_per_call: Option<f64>,
    /// Peak resident memory of the gateway process itself, sampled every 100 ms.
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds the load generator used.
    pub loadgen_cpu_s: f64,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub scenario: String,
    pub target: String,
    pub load: Load,
    pub summary: Summary,
    pub resources: Resources,
}

/// A bar from the issue and where this run stands.
#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    pub name: String,
    pub target: String,
    pub measured: Option<String>,
    /// `None` when it could not be measured in this run.
    pub pass: Option<bool>,
    pub detail: String,
}

/// Something a run did not do, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub what: String,
    pub why: String,
}

/// Everything a run produced.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub machine: BTreeMap<String, Value>,
    pub command: String,
    pub started_unix: u64,
    pub points: Vec<Point>,
    /// One-off figures by name (cold start, binary size, idle RSS, chaos, …).
    pub facts: BTreeMap<String, Value>,
    pub bars: Vec<Bar>,
    pub peers: Vec<BTreeMap<String, String>>,
    pub skipped: Vec<Skipped>,
    pub notes: Vec<String>,
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
        None => "–".to_owned(),
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

impl Report {
    pub fn skip(&mut self, what: impl Into<String>, why: impl Into<String>) {
        let (what, why) = (what.into(), why.into());
        eprintln!("loadtest: skipped {what}: {why}");
        self.skipped.push(Skipped { what, why });
    }

    pub fn point(&self, scenario: &str, target: &str, load: Load) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.scenario == scenario && p.target == target && p.load == load)
    }

    /// The markdown rendering: one table per scenario, the ratios, the bars, the facts.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the results are ignored throughout.
        let _ = writeln!(out, "## Load test results\n");
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        let machine: Vec<String> = self
            .machine
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}: {}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect();
        let _ = writeln!(out, "Machine: {}\n", machine.join("; "));
        if !self.bars.is_empty() {
            let _ = writeln!(out, "### The bars\n");
            let _ = writeln!(
                out,
                "| bar | target | measured | verdict |\n| --- | --- | --- | --- |"
            );
            for bar in &self.bars {
                let verdict = match bar.pass {
                    Some(true) => "**met**",
                    Some(false) => "**missed**",
                    None => "not measured",
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {verdict}{} |",
                    bar.name,
                    bar.target,
                    bar.measured.as_deref().unwrap_or("–"),
                    if bar.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", bar.detail)
                    }
                );
            }
            let _ = writeln!(out);
        }
        let mut scenarios: Vec<&str> = Vec::new();
        for point in &self.points {
            if !scenarios.contains(&point.scenario.as_str()) {
                scenarios.push(&point.scenario);
            }
        }
        for scenario in scenarios {
            let _ = writeln!(out, "### Scenario `{scenario}`\n");
            let _ = writeln!(
                out,
                "| target | load | calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | gateway CPU µs/call | gateway peak RSS MiB |\n\
                 | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
            );
            for p in self.points.iter().filter(|p| p.scenario == scenario) {
                let s = &p.summary;
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    p.target,
                    p.load.label(),
                    s.calls_per_s,
                    ms(s.p50_ms),
                    ms(s.p90_ms),
                    ms(s.p99_ms),
                    ms(s.p999_ms),
                    ms(s.max_ms),
                    s.errors_text(),
                    opt(p.resources.gateway_cpu_us_per_call, 0),
                    opt(p.resources.peak_rss_mib, 1),
                );
            }
            let _ = writeln!(out);
        }
        let ratios = self.ratios();
        if !ratios.is_empty() {
            let _ = writeln!(out, "### Side by side (scenario `echo`, same run)\n");
            let _ = writeln!(
                out,
                "Throughput ratio = Warden's calls/s ÷ the other's; p99 ratio = the other's p99 ÷ Warden's \
                 (above 1 means Warden is better on both).\n"
            );
            let _ = writeln!(
                out,
                "| load | compared with | throughput ratio | p99 ratio |\n| --- | --- | ---: | ---: |"
            );
            for (load, other, throughput, p99) in ratios {
                let _ = writeln!(
                    out,
                    "| {load} | {other} | {} | {} |",
                    opt(throughput, 2),
                    opt(p99, 2)
                );
            }
            let _ = writeln!(out);
        }
        if !self.facts.is_empty() {
            let _ = writeln!(out, "### Other figures\n");
            for (name, value) in &self.facts {
                let _ = writeln!(out, "- {name}: `{value}`");
            }
            let _ = writeln!(out);
        }
        if !self.peers.is_empty() {
            let _ = writeln!(out, "### Peers\n");
            for peer in &self.peers {
                let fields: Vec<String> = peer.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(out, "- {}", fields.join("; "));
            }
            let _ = writeln!(out);
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "### Skipped\n");
            for skip in &self.skipped {
                let _ = writeln!(out, "- {}: {}", skip.what, skip.why);
            }
            let _ = writeln!(out);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "### Notes\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }

    /// Warden against every other target of scenario `echo`, at each load both measured.
    pub fn ratios(&self) -> Vec<(String, String, Option<f64>, Option<f64>)> {
        let mut rows = Vec::new();
        for warden in self
            .points
            .iter()
            .filter(|p| p.scenario == "echo" && p.target == "warden")
        {
            for other in self
                .points
                .iter()
                .filter(|p| p.scenario == "echo" && p.load == warden.load && p.target != "warden")
            {
                let throughput = (other.summary.calls_per_s > 0.0)
                    .then(|| warden.summary.calls_per_s / other.summary.calls_per_s);
                let p99 = match (warden.summary.p99_ms, other.summary.p99_ms) {
                    (Some(w), Some(o)) if w > 0.0 => Some(o / w),
                    _ => None,
                };
                rows.push((warden.load.label(), other.target.clone(), throughput, p99));
            }
        }
        rows
    }
}
