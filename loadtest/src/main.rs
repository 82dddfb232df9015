//! `warden-loadtest`: drives MCP over streamable HTTP against Warden, the upstream called
//! directly, and (with `--compare`) the peer gateways, in one run on one machine, and
//! reports throughput, latency percentiles, errors by kind, CPU and memory as JSON, a
//! markdown table and an SVG latency-vs-load chart.
//!
//! ```text
//! cargo build --release -p warden -p warden-fixture -p warden-loadtest
//! cargo run --release -p warden-loadtest -- --compare          # everything, ~10 minutes
//! cargo run --release -p warden-loadtest -- --quick            # about 30 s, smoke use
//! ```
//!
//! Map of the crate:
//! - `http`: one keep-alive HTTP/1.1 connection per client; `mcp`: the MCP client (both
//!   protocol eras, JSON and SSE answers, reply checking); `stdio`: the direct baseline.
//! - `drive`: closed-loop and open-loop load; `stats`: exact percentiles.
//! - `procs`: child processes and `/proc` figures; `warden`: Warden under test;
//!   `peers`: the peer gateways; `scenarios`: what is measured.
//! - `report`: JSON and markdown; `plot`: the SVG.
//!
//! **Invariant:** every process the load test starts is in a process group of its own
//! with a parent-death signal and is stopped by its id; nothing is left running after a
//! run, whether it ends, fails or is interrupted.

mod drive;
mod http;
mod mcp;
mod model;
mod peers;
mod plot;
mod procs;
mod report;
mod scenarios;
mod stats;
mod stdio;
mod warden;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A process or resource could not be started or prepared.
    #[error("start-up: {0}")]
    Start(String),
    /// Something went wrong while measuring.
    #[error("{0}")]
    Run(String),
    /// A file could not be written or read.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The command line does not make sense.
    #[error("{0}")]
    Usage(String),
}

/// Load test and benchmarks for Warden. See docs/benchmarks.md.
#[derive(Debug, Parser)]
#[command(name = "warden-loadtest", version)]
pub struct Args {
    /// Also run the peer gateways (supergateway, mcp-proxy, ContextForge), installing them
    /// into <target>/loadtest-peers on first use.
    #[arg(long)]
    pub compare: bool,
    /// About half a minute in all: short points, one concurrency, one rate, only the
    /// `echo` and `governed` scenarios, no peers unless --compare. For smoke use.
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run (comma-separated): echo, governed, sessions, fanout, chaos, ai.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Option<Vec<String>>,
    /// Only these targets of the `echo` scenario (comma-separated: direct-stdio,
    /// direct-http, warden, warden-stateless, and peer names).
    #[arg(long, value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// Also drive an MCP endpoint that is already running (target `url` of the `echo`
    /// scenario), e.g. http://127.0.0.1:9000/mcp. No process figures for it.
    #[arg(long)]
    pub url: Option<String>,
    /// The echo tool's name at --url.
    #[arg(long, default_value = "echo")]
    pub url_tool: String,
    /// Peers to run with --compare (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Seconds of warm-up per point (not recorded).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seconds measured per point.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Closed-loop concurrencies (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,
    /// Open-loop rates in calls/s (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,
    /// Open-loop rates of the `ai` scenario in streamed requests/s (comma-separated);
    /// the first is also the rate of its added-p99 comparison.
    #[arg(long, value_delimiter = ',')]
    pub ai_rates: Option<Vec<f64>>,
    /// The open-loop rate of the added-latency bar.
    #[arg(long, default_value_t = 3000.0)]
    pub bar_rate: f64,
    /// Clients kept for open-loop points (calls due while all are busy wait, and that
    /// wait counts).
    #[arg(long, default_value_t = 64)]
    pub open_clients: usize,
    /// Sessions of the many-sessions scenario.
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Upstream servers of the fan-out and many-sessions scenarios.
    #[arg(long, default_value_t = 20)]
    pub servers: usize,
    /// Seconds of the chaos scenario.
    #[arg(long)]
    pub chaos_secs: Option<f64>,
    /// Deadline of one call, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub call_timeout: f64,
    /// Token for Warden's /mcp (default: the bootstrap token in <state_dir>/admin.token).
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the token for Warden's /mcp.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A JSON file merged into the profile of the `governed` scenario (auth, rate limits,
    /// audit). Sections this build rejects are dropped and reported.
    #[arg(long)]
    pub overlay: Option<PathBuf>,
    /// Where report.json, report.md, latency.svg and the logs go
    /// (default: <target>/loadtest-results).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the latency-vs-load chart here (e.g. docs/benchmarks/latency.svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Before starting, wait (up to 10 minutes) until the 1-minute load average is below
    /// this.
    #[arg(long)]
    pub wait_quiet: Option<f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warden-loadtest: cannot build the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = scenarios::run(args) => outcome,
            _ = tokio::signal::ctrl_c() => Err(Error::Run("interrupted".into())),
        }
    });
    // Anything still running belongs to a dropped future; give kills a moment to land.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warden-loadtest: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every source file opens with a `//!` doc saying what it owns.
    #[test]
    fn every_source_file_has_a_module_doc() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs")
                && !std::fs::read_to_string(&path).unwrap().starts_with("//!")
            {
                missing.push(path);
            }
        }
        assert!(
            missing.is_empty(),
            "files without a module doc: {missing:?}"
        );
    }
}
