//! What a run measures, in order, and the bars it checks.
//!
//! | scenario | what | targets |
//! | --- | --- | --- |
//! | `echo` | `tools/call` echo through `/mcp` to one stdio server: closed loop at each concurrency, open loop at each rate (stopping once a target falls behind) | direct stdio, direct HTTP, Warden (both eras), peers with `--compare` |
//! | `governed` | the same with the governed profile (auth always; audit; the `--overlay` sections: rate limits as they land): saturation, and the added p99 over the direct baseline at `--bar-rate` | direct stdio, Warden |
//! | `fanout` | `tools/list` through `/mcp` over `--servers` servers | Warden |
//! | `sessions` | `--sessions` sessions opened and held (RSS idle), then all calling at once | Warden |
//! | `chaos` | closed loop while a child is killed twice and PostgreSQL is restarted; errors, and rows lost = calls made − rows in `mcp_tool_executions` | Warden on a cluster the load test owns |
//! | `ai` | streamed `/v1/chat/completions` through the AI proxy against a stand-in OpenAI-compatible model server (accounting and audit on): closed loop, open loop at `--ai-rates`, added p99 at the first of them | direct to the stand-in, Warden |
//!
//! Each target runs alone: it is started, measured at every point and stopped before the
//! next one starts. Cold start and the binary size are measured once per run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::drive::{self, Client, Op, Plan, Target};
use crate::mcp::{Endpoint, Era, Session};
use crate::model::{ChatEndpoint, MODEL, StandIn};
use crate::peers;
use crate::procs::{self, RssSampler, TreeCpu};
use crate::report::{Bar, Load, Point, Report, Resources};
use crate::stdio::StdioServer;
use crate::warden::{self, TokenSource, Warden};
use crate::{Args, Error};

/// The bars from the issue.
const BAR_SATURATION: f64 = 10_000.0;
const BAR_ADDED_P99_MS: f64 = 0.5;
const BAR_RSS_BYTES: f64 = 60e6;
const BAR_COLD_START_MS: f64 = 1000.0;
const BAR_BINARY_BYTES: u64 = 25_000_000;

/// Where things are.
struct Paths {
    warden: PathBuf,
    fixture: PathBuf,
    state: PathBuf,
    peers: PathBuf,
    out: PathBuf,
}

impl Paths {
    fn discover(args: &Args) -> Result<Paths, Error> {
        let exe = std::env::current_exe().map_err(|source| Error::Io {
            context: "locating the load test binary".into(),
            source,
        })?;
        let profile_dir = exe
            .parent()
            .ok_or_else(|| Error::Start("the load test binary has no directory".into()))?;
        let target = profile_dir.parent().unwrap_or(profile_dir).to_path_buf();
        let warden = profile_dir.join("warden");
        let fixture = profile_dir.join("warden-fixture");
        for bin in [&warden, &fixture] {
            if !bin.exists() {
                return Err(Error::Start(format!(
                    "{} is missing: build it first with `cargo build --release -p warden -p warden-fixture -p warden-loadtest`",
                    bin.display()
                )));
            }
        }
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| target.join("loadtest-results"));
        let paths = Paths {
            warden,
            fixture,
            state: target.join("loadtest-state"),
            peers: target.join("loadtest-peers"),
            out,
        };
        for dir in [
            &paths.state,
            &paths.peers,
            &paths.out,
            &paths.out.join("logs"),
        ] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
        Ok(paths)
    }
}

/// The run's settings after defaults.
struct Settings {
    plan: Plan,
    scenarios: Vec<String>,
    peers: Vec<String>,
    concurrency: Vec<usize>,
    rates: Vec<f64>,
    ai_rates: Vec<f64>,
    sessions: usize,
    chaos: Duration,
}

impl Settings {
    fn from(args: &Args) -> Result<Settings, Error> {
        let quick = args.quick;
        let scenarios = args.scenarios.clone().unwrap_or_else(|| {
            let list: &[&str] = if quick {
                &["echo", "governed", "ai"]
            } else {
                &["echo", "governed", "fanout", "sessions", "chaos", "ai"]
            };
            list.iter().map(|s| (*s).to_owned()).collect()
        });
        for scenario in &scenarios {
            if !["echo", "governed", "fanout", "sessions", "chaos", "ai"]
                .contains(&scenario.as_str())
            {
                return Err(Error::Usage(format!("unknown scenario `{scenario}`")));
            }
        }
        let peers = if args.compare {
            args.peers
                .clone()
                .unwrap_or_else(|| peers::ALL.iter().map(|p| (*p).to_owned()).collect())
        } else {
            Vec::new()
        };
        let concurrency = args
            .concurrency
            .clone()
            .unwrap_or_else(|| if quick { vec![8] } else { vec![1, 16, 64] });
        let rates = args.rates.clone().unwrap_or_else(|| {
            if quick {
                vec![500.0]
            } else {
                vec![500.0, 1000.0, 2000.0, 3000.0, 5000.0, 8000.0]
            }
        });
        let ai_rates = args.ai_rates.clone().unwrap_or_else(|| {
            if quick {
                vec![200.0]
            } else {
                vec![500.0, 1000.0, 2000.0]
            }
        });
        if concurrency.contains(&0) || rates.iter().chain(&ai_rates).any(|&r| r <= 0.0) {
            return Err(Error::Usage(
                "concurrency and rates must be positive".into(),
            ));
        }
        let secs = |v: f64| Duration::from_secs_f64(v.max(0.0));
        Ok(Settings {
            plan: Plan {
                warmup: secs(args.warmup.unwrap_or(if quick { 0.3 } else { 1.0 })),
                measure: secs(args.duration.unwrap_or(if quick { 1.0 } else { 4.0 }))
                    .max(Duration::from_millis(100)),
                call_timeout: secs(args.call_timeout).max(Duration::from_millis(10)),
            },
            scenarios,
            peers,
            concurrency,
            rates,
            ai_rates,
            sessions: args.sessions.unwrap_or(if quick { 100 } else { 1000 }),
            chaos: secs(args.chaos_secs.unwrap_or(if quick { 6.0 } else { 20.0 })),
        })
    }
}

/// One running target and how to account for it.
struct Running {
    name: String,
    target: Target,
    op: Op,
    /// Roots of the process trees whose CPU is counted.
    pids: Vec<u32>,
    /// The upstream itself: its CPU is upstream CPU, not gateway CPU.
    direct: bool,
}

/// One measurement before it is summarised.
struct Measured {
    outcome: drive::Outcome,
    cpu: TreeCpu,
    peak_rss_mib: Option<f64>,
    loadgen_cpu_s: f64,
}

impl Measured {
    /// Two rounds of the same point as one.
    fn merge(mut self, other: Measured) -> Measured {
        self.outcome.samples.merge(other.outcome.samples);
        self.outcome.calls_total += other.outcome.calls_total;
        self.outcome.window += other.outcome.window;
        self.cpu = TreeCpu {
            gateway_s: self.cpu.gateway_s + other.cpu.gateway_s,
            upstream_s: self.cpu.upstream_s + other.cpu.upstream_s,
            postgres_s: self.cpu.postgres_s + other.cpu.postgres_s,
        };
        self.peak_rss_mib = match (self.peak_rss_mib, other.peak_rss_mib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.loadgen_cpu_s += other.loadgen_cpu_s;
        self
    }
}

struct Ctx {
    args: Args,
    paths: Paths,
    settings: Settings,
    report: Report,
    run: String,
    token: TokenSource,
}

/// Runs everything the arguments ask for and writes the report.
pub async fn run(args: Args) -> Result<(), Error> {
    let paths = Paths::discover(&args)?;
    let settings = Settings::from(&args)?;
    if let Some(limit) = args.wait_quiet {
        wait_quiet(limit).await;
    }
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => TokenSource::Literal(token.clone()),
        (None, Some(path)) => TokenSource::File(path.clone()),
        (None, None) => TokenSource::Bootstrap,
    };
    let mut ctx = Ctx {
        report: Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ..Report::default()
        },
        args,
        paths,
        settings,
        run: drive::run_tag(),
        token,
    };
    ctx.machine();
    ctx.binary_size();
    for scenario in ctx.settings.scenarios.clone() {
        eprintln!("loadtest: scenario {scenario}");
        let outcome = match scenario.as_str() {
            "echo" => ctx.echo().await,
            "governed" => ctx.governed().await,
            "fanout" => ctx.many(true, false).await,
            "sessions" => ctx.many(false, true).await,
            "chaos" => ctx.chaos().await,
            "ai" => ctx.ai().await,
            _ => Ok(()),
        };
        if let Err(error) = outcome {
            ctx.report
                .skip(format!("scenario {scenario}"), error.to_string());
        }
    }
    if let Err(error) = ctx.cold_start().await {
        ctx.report.skip("cold start", error.to_string());
    }
    ctx.report
        .machine
        .insert("load average at end".into(), Value::from(load_average()));
    ctx.bars();
    ctx.write()
}

/// Waits up to 10 minutes for the 1-minute load average to drop below `limit`.
async fn wait_quiet(limit: f64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let load = load_average()
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        match load {
            Some(load) if load >= limit && Instant::now() < deadline => {
                eprintln!("loadtest: load average {load:.2} ≥ {limit}; waiting");
                tokio::time::sleep(Duration::from_secs(15)).await;
            }
            _ => return,
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn sum_cpu(pids: &[u32]) -> TreeCpu {
    pids.iter().fold(TreeCpu::default(), |acc, &pid| {
        let cpu = procs::tree_cpu(pid);
        TreeCpu {
            gateway_s: acc.gateway_s + cpu.gateway_s,
            upstream_s: acc.upstream_s + cpu.upstream_s,
            postgres_s: acc.postgres_s + cpu.postgres_s,
        }
    })
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

impl Ctx {
    fn machine(&mut self) {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim)
            .unwrap_or("unknown")
            .to_owned();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map_or_else(String::new, |kib| {
                format!("{:.1} GiB", kib as f64 / 1048576.0)
            });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let m = &mut self.report.machine;
        m.insert("cpu".into(), Value::from(model));
        m.insert("cores".into(), Value::from(cpus));
        m.insert("memory".into(), Value::from(memory));
        m.insert("kernel".into(), Value::from(kernel.trim()));
        m.insert("load average at start".into(), Value::from(load_average()));
        m.insert(
            "load generator threads".into(),
            Value::from(self.args.client_threads),
        );
    }

    fn binary_size(&mut self) {
        if let Ok(meta) = std::fs::metadata(&self.paths.warden) {
            self.report.facts.insert(
                "warden release binary bytes".into(),
                Value::from(meta.len()),
            );
        }
    }

    fn logs(&self, name: &str) -> PathBuf {
        self.paths.out.join("logs").join(name)
    }

    fn warden_state(&self) -> PathBuf {
        self.paths.state.join("warden")
    }

    /// Starts Warden with `servers` (name, fixture args) and optional profile changes.
    async fn start_warden(
        &mut self,
        label: &str,
        servers: &[(String, Vec<String>)],
        extra: Option<&Value>,
    ) -> Result<Warden, Error> {
        let state = self.warden_state();
        let (mut profile, addr) = warden::base_profile(&state)?;
        for (name, args) in servers {
            warden::add_stdio_server(&mut profile, name, &self.paths.fixture, args);
        }
        if let Some(extra) = extra {
            warden::merge(&mut profile, extra);
        }
        let path = self.paths.state.join(format!("warden-{label}.yaml"));
        warden::write_profile(&self.paths.warden, &profile, &path)
            .await
            .map_err(|e| Error::Start(format!("profile rejected: {e}")))?;
        warden::start(
            &self.paths.warden,
            &path,
            addr,
            &state,
            &self.token,
            self.logs(&format!("warden-{label}.log")),
        )
        .await
    }

    fn warden_endpoint(&self, warden: &Warden, era: Era) -> Arc<Endpoint> {
        let mut endpoint = Endpoint::new(warden.addr, "/mcp");
        endpoint.bearer = Some(warden.token.clone());
        endpoint.era = era;
        Arc::new(endpoint)
    }

    /// Measures one point and records it. Returns the clients for reuse.
    async fn measure(
        &mut self,
        scenario: &str,
        running: &Running,
        clients: Vec<Client>,
        load: Load,
    ) -> (Vec<Client>, Point) {
        let (measured, clients) = self
            .measure_raw(running, clients, load, self.settings.plan)
            .await;
        let point = self.record(scenario, running, load, measured);
        (clients, point)
    }

    /// Applies `load` once and takes the process figures around it.
    async fn measure_raw(
        &self,
        running: &Running,
        clients: Vec<Client>,
        load: Load,
        plan: Plan,
    ) -> (Measured, Vec<Client>) {
        let before = sum_cpu(&running.pids);
        let own_before = procs::own_cpu_seconds();
        let sampler = (!running.direct)
            .then(|| running.pids.first().map(|&pid| RssSampler::start(pid)))
            .flatten();
        let (outcome, clients) = match load {
            Load::Closed { .. } => drive::closed_loop(clients, &running.op, plan, &self.run).await,
            Load::Open { rate } => {
                drive::open_loop(clients, &running.op, rate, plan, &self.run).await
            }
        };
        let mut cpu = sum_cpu(&running.pids).since(before);
        if running.direct {
            cpu.upstream_s += cpu.gateway_s;
            cpu.gateway_s = 0.0;
        }
        let measured = Measured {
            outcome,
            cpu,
            peak_rss_mib: sampler.map(RssSampler::finish),
            loadgen_cpu_s: procs::own_cpu_seconds() - own_before,
        };
        (measured, clients)
    }

    /// Summarises a measurement, prints it and adds it to the report.
    fn record(
        &mut self,
        scenario: &str,
        running: &Running,
        load: Load,
        measured: Measured,
    ) -> Point {
        let Measured {
            outcome,
            cpu,
            peak_rss_mib,
            loadgen_cpu_s,
        } = measured;
        let per_call = (!running.direct && !running.pids.is_empty() && outcome.calls_total > 0)
            .then(|| cpu.gateway_s * 1e6 / outcome.calls_total as f64);
        let summary = outcome.samples.summarise(outcome.window);
        eprintln!(
            "loadtest: {scenario:9} {:18} {:14} {:>8.0} calls/s  p50 {:>7} ms  p99 {:>7} ms  errors {}",
            running.name,
            load.label(),
            summary.calls_per_s,
            summary.p50_ms.map_or("–".into(), |v| format!("{v:.3}")),
            summary.p99_ms.map_or("–".into(), |v| format!("{v:.3}")),
            summary.errors_text()
        );
        let point = Point {
            scenario: scenario.to_owned(),
            target: running.name.clone(),
            load,
            summary,
            resources: Resources {
                cpu,
                gateway_cpu_us_per_call: per_call,
                peak_rss_mib,
                loadgen_cpu_s,
            },
        };
        self.report.points.push(point.clone());
        point
    }

    /// Open loop at `rate` on two targets in alternating rounds, so that whatever else
    /// the machine does hits both alike; each target's rounds are merged into one point.
    async fn paired_open(
        &mut self,
        scenario: &str,
        pair: [&Running; 2],
        rate: f64,
        rounds: usize,
    ) -> Result<(), Error> {
        let mut pools = Vec::new();
        for running in pair {
            pools.push(Some(
                running
                    .target
                    .connect(self.args.open_clients, 30_000)
                    .await?,
            ));
        }
        let mut plan = self.settings.plan;
        plan.measure = plan
            .measure
            .mul_f64(1.0 / rounds.max(1) as f64)
            .max(Duration::from_millis(500));
        let load = Load::Open { rate };
        let mut merged: [Option<Measured>; 2] = [None, None];
        for _ in 0..rounds.max(1) {
            for (index, running) in pair.iter().enumerate() {
                let clients = pools[index].take().unwrap_or_default();
                let (measured, clients) = self.measure_raw(running, clients, load, plan).await;
                pools[index] = Some(clients);
                merged[index] = Some(match merged[index].take() {
                    Some(before) => before.merge(measured),
                    None => measured,
                });
            }
        }
        for (index, running) in pair.iter().enumerate() {
            if let Some(measured) = merged[index].take() {
                self.record(scenario, running, load, measured);
            }
        }
        for pool in pools.into_iter().flatten() {
            drive::close_all(pool).await;
        }
        Ok(())
    }

    /// Every closed-loop concurrency, then every open-loop rate until the target falls
    /// behind.
    async fn sweep(
        &mut self,
        scenario: &str,
        running: &Running,
        closed: &[usize],
        rates: &[f64],
    ) -> Result<(), Error> {
        let most = closed
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(if rates.is_empty() {
                0
            } else {
                self.args.open_clients
            });
        let mut pool = running.target.connect(most, 0).await?;
        for &n in closed {
            let rest = pool.split_off(n.min(pool.len()));
            let (used, _) = self
                .measure(scenario, running, pool, Load::Closed { concurrency: n })
                .await;
            pool = used;
            pool.extend(rest);
        }
        for (index, &rate) in rates.iter().enumerate() {
            let rest = pool.split_off(self.args.open_clients.min(pool.len()));
            let (used, point) = self
                .measure(scenario, running, pool, Load::Open { rate })
                .await;
            pool = used;
            pool.extend(rest);
            let s = &point.summary;
            let behind = s.calls_per_s < 0.9 * rate
                || s.p99_ms.is_none_or(|p| p > 1000.0)
                || s.errors as f64 > 0.01 * (s.calls_ok + s.errors) as f64;
            if behind && index + 1 < rates.len() {
                self.report.notes.push(format!(
                    "{scenario}/{}: fell behind at {rate:.0} calls/s offered; higher rates not run",
                    running.name
                ));
                break;
            }
        }
        drive::close_all(pool).await;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // echo
    // -----------------------------------------------------------------------------------

    /// Whether `--targets` lets target `name` run.
    fn wanted(&self, name: &str) -> bool {
        self.args
            .targets
            .as_ref()
            .is_none_or(|list| list.iter().any(|t| t == name))
    }

    async fn echo(&mut self) -> Result<(), Error> {
        let closed = self.settings.concurrency.clone();
        let rates = self.settings.rates.clone();
        let echo = Op::Echo {
            tool: "echo".into(),
        };

        // The upstream by itself, over stdio.
        if self.wanted("direct-stdio") {
            self.direct_stdio(&echo, &closed, &rates).await?;
        }

        // The upstream by itself, over streamable HTTP.
        if self.wanted("direct-http")
            && let Err(error) = self.direct_http(&echo, &closed, &rates).await
        {
            self.report.skip("echo/direct-http", error.to_string());
        }

        // Warden, both eras.
        if self.wanted("warden") || self.wanted("warden-stateless") {
            self.echo_warden(&closed, &rates).await?;
        }

        // An endpoint someone else runs.
        if let Some(url) = self.args.url.clone()
            && let Err(error) = self.echo_url(&url, &closed, &rates).await
        {
            self.report
                .skip(format!("echo/url {url}"), error.to_string());
        }

        // The peers.
        for name in self.settings.peers.clone() {
            if !self.wanted(&name) {
                continue;
            }
            let logs = self.paths.out.join("logs");
            match peers::start(&name, &self.paths.peers, &self.paths.fixture, &logs).await {
                Ok(peer) => {
                    let running = Running {
                        name: peer.name.into(),
                        target: Target::Http(Arc::clone(&peer.endpoint)),
                        op: Op::Echo {
                            tool: peer.tool.clone(),
                        },
                        pids: peer.pids(),
                        direct: false,
                    };
                    let mut info = BTreeMap::new();
                    info.insert("name".into(), peer.name.to_owned());
                    info.insert("version".into(), peer.version.to_owned());
                    info.insert(
                        "endpoint".into(),
                        format!("http://{}{}", peer.endpoint.addr, peer.endpoint.path),
                    );
                    info.insert("tool".into(), peer.tool.clone());
                    info.insert("setup".into(), peer.note.clone());
                    self.report.peers.push(info);
                    if let Err(error) = self.sweep("echo", &running, &closed, &rates).await {
                        self.report.skip(format!("echo/{name}"), error.to_string());
                    }
                    peer.stop().await;
                }
                Err(error) => self.report.skip(format!("peer {name}"), error.to_string()),
            }
        }
        Ok(())
    }

    async fn echo_url(&mut self, url: &str, closed: &[usize], rates: &[f64]) -> Result<(), Error> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| Error::Usage(format!("--url {url}: only http:// URLs")))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let addr = tokio::net::lookup_host(authority)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| Error::Usage(format!("--url {url}: cannot resolve {authority}")))?;
        let mut endpoint = Endpoint::new(addr, &format!("/{path}"));
        endpoint.bearer = match &self.token {
            TokenSource::Literal(token) => Some(token.clone()),
            TokenSource::File(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| Error::Io {
                        context: format!("reading the token file {}", path.display()),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            TokenSource::Bootstrap => None,
        };
        let running = Running {
            name: "url".into(),
            target: Target::Http(Arc::new(endpoint)),
            op: Op::Echo {
                tool: self.args.url_tool.clone(),
            },
            pids: Vec::new(),
            direct: false,
        };
        self.sweep("echo", &running, closed, rates).await
    }

    async fn direct_stdio(
        &mut self,
        echo: &Op,
        closed: &[usize],
        rates: &[f64],
    ) -> Result<(), Error> {
        let stdio = StdioServer::start(&self.paths.fixture.display().to_string(), &[]).await?;
        let running = Running {
            name: "direct-stdio".into(),
            target: Target::Stdio(Arc::clone(&stdio)),
            op: echo.clone(),
            pids: vec![stdio.process.pid],
            direct: true,
        };
        self.sweep("echo", &running, closed, rates).await?;
        let unmatched = stdio.unmatched.load(std::sync::atomic::Ordering::Relaxed);
        if unmatched > 0 {
            self.report.notes.push(format!(
                "direct-stdio: {unmatched} answers matched no request"
            ));
        }
        drop(running);
        if let Ok(stdio) = Arc::try_unwrap(stdio) {
            stdio.process.stop(Duration::from_secs(2)).await;
        }

        Ok(())
    }

    async fn echo_warden(&mut self, closed: &[usize], rates: &[f64]) -> Result<(), Error> {
        let warden = self
            .start_warden("echo", &[("echo".into(), Vec::new())], None)
            .await?;
        for (name, era, rates) in [
            ("warden", Era::Handshake, rates),
            ("warden-stateless", Era::Stateless, &[][..]),
        ] {
            if !self.wanted(name) {
                continue;
            }
            let running = Running {
                name: name.into(),
                target: Target::Http(self.warden_endpoint(&warden, era)),
                op: Op::Echo {
                    tool: "echo__echo".into(),
                },
                pids: vec![warden.process.pid],
                direct: false,
            };
            if let Err(error) = self.sweep("echo", &running, closed, rates).await {
                self.report.skip(format!("echo/{name}"), error.to_string());
            }
        }
        warden.stop().await;
        Ok(())
    }

    async fn direct_http(
        &mut self,
        echo: &Op,
        closed: &[usize],
        rates: &[f64],
    ) -> Result<(), Error> {
        let port = procs::free_port()?;
        let mut command = tokio::process::Command::new(&self.paths.fixture);
        command
            .arg("--http")
            .arg(port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let process = procs::spawn(command, "fixture --http")?;
        let endpoint = Arc::new(Endpoint::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "/mcp",
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut session =
                Session::new(Arc::clone(&endpoint), 1).map_err(|e| Error::Start(e.to_string()))?;
            match session.ensure_ready().await {
                Ok(()) => break,
                Err(error) if Instant::now() > deadline => {
                    return Err(Error::Start(format!(
                        "fixture --http not answering: {error}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let running = Running {
            name: "direct-http".into(),
            target: Target::Http(endpoint),
            op: echo.clone(),
            pids: vec![process.pid],
            direct: true,
        };
        let outcome = self.sweep("echo", &running, closed, rates).await;
        process.stop(Duration::from_secs(2)).await;
        outcome
    }

    // -----------------------------------------------------------------------------------
    // governed
    // -----------------------------------------------------------------------------------

    /// The overlay, minus `_comment`-style keys and any top-level section this build
    /// rejects (each reported).
    async fn governed_overlay(&mut self) -> Result<Value, Error> {
        let path = self.args.overlay.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/governed.json")
        });
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            context: format!("reading the overlay {}", path.display()),
            source,
        })?;
        let overlay: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Usage(format!("overlay {}: {e}", path.display())))?;
        let Value::Object(sections) = overlay else {
            return Err(Error::Usage(format!(
                "overlay {} is not a JSON object",
                path.display()
            )));
        };
        let mut kept = serde_json::Map::new();
        let state = self.warden_state();
        for (key, value) in sections.into_iter().filter(|(k, _)| !k.starts_with('_')) {
            let (mut profile, _) = warden::base_profile(&state)?;
            warden::add_stdio_server(&mut profile, "echo", &self.paths.fixture, &[]);
            let mut probe = serde_json::Map::new();
            probe.insert(key.clone(), value.clone());
            warden::merge(&mut profile, &Value::Object(probe));
            let check = self.paths.state.join("overlay-check.yaml");
            match warden::write_profile(&self.paths.warden, &profile, &check).await {
                Ok(()) => {
                    kept.insert(key, value);
                }
                Err(why) => {
                    let first = why.lines().next().unwrap_or_default().to_owned();
                    self.report.skip(
                        format!("governed overlay section `{key}`"),
                        format!("this build's profile rejects it ({first})"),
                    );
                }
            }
        }
        self.report.facts.insert(
            "governed overlay applied".into(),
            Value::Object(kept.clone()),
        );
        Ok(Value::Object(kept))
    }

    async fn governed(&mut self) -> Result<(), Error> {
        let overlay = self.governed_overlay().await?;
        let rate = self.args.bar_rate;
        let most = self
            .settings
            .concurrency
            .iter()
            .copied()
            .max()
            .unwrap_or(64);
        let stdio = StdioServer::start(&self.paths.fixture.display().to_string(), &[]).await?;
        let direct = Running {
            name: "direct-stdio".into(),
            target: Target::Stdio(Arc::clone(&stdio)),
            op: Op::Echo {
                tool: "echo".into(),
            },
            pids: vec![stdio.process.pid],
            direct: true,
        };
        let warden = match self
            .start_warden("governed", &[("echo".into(), Vec::new())], Some(&overlay))
            .await
        {
            Ok(warden) => warden,
            Err(error) => {
                drop(direct);
                if let Ok(stdio) = Arc::try_unwrap(stdio) {
                    stdio.process.stop(Duration::from_secs(2)).await;
                }
                return Err(error);
            }
        };
        let governed = Running {
            name: "warden".into(),
            target: Target::Http(self.warden_endpoint(&warden, Era::Handshake)),
            op: Op::Echo {
                tool: "echo__echo".into(),
            },
            pids: vec![warden.process.pid],
            direct: false,
        };
        // Saturation, then the added latency at the bar's rate in alternating rounds.
        let mut outcome = self.sweep("governed", &governed, &[most], &[]).await;
        if outcome.is_ok() {
            let rounds = if self.args.quick { 1 } else { 4 };
            outcome = self
                .paired_open("governed", [&direct, &governed], rate, rounds)
                .await;
        }
        warden.stop().await;
        drop(direct);
        if let Ok(stdio) = Arc::try_unwrap(stdio) {
            stdio.process.stop(Duration::from_secs(2)).await;
        }
        outcome
    }

    // -----------------------------------------------------------------------------------
    // fanout and sessions
    // -----------------------------------------------------------------------------------

    async fn many(&mut self, fanout: bool, sessions: bool) -> Result<(), Error> {
        let n_servers = self.args.servers.max(1);
        let servers: Vec<(String, Vec<String>)> = (1..=n_servers)
            .map(|i| (format!("s{i:02}"), vec!["--tools-extra".into(), "5".into()]))
            .collect();
        let n_sessions = self.settings.sessions;
        let limits = json!({
            "sessions": { "max_per_principal": n_sessions + 100, "max_total": n_sessions + 100 },
        });
        let label = if fanout { "fanout" } else { "sessions" };
        let warden = self.start_warden(label, &servers, Some(&limits)).await?;
        let pid = warden.process.pid;
        let outcome = if fanout {
            self.fanout(&warden, n_servers).await
        } else if sessions {
            self.sessions(&warden, n_servers, n_sessions, pid).await
        } else {
            Ok(())
        };
        warden.stop().await;
        outcome
    }

    async fn fanout(&mut self, warden: &Warden, n_servers: usize) -> Result<(), Error> {
        let endpoint = self.warden_endpoint(warden, Era::Handshake);
        let mut probe =
            Session::new(Arc::clone(&endpoint), 1).map_err(|e| Error::Start(e.to_string()))?;
        let names = probe
            .list_tools()
            .await
            .map_err(|e| Error::Run(format!("tools/list: {e}")))?;
        let missing: Vec<String> = (1..=n_servers)
            .map(|i| format!("s{i:02}__"))
            .filter(|prefix| !names.iter().any(|n| n.starts_with(prefix.as_str())))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Run(format!("tools/list lacks servers {missing:?}")));
        }
        self.report
            .facts
            .insert("fanout tools listed".into(), Value::from(names.len()));
        let running = Running {
            name: "warden".into(),
            target: Target::Http(endpoint),
            op: Op::ListTools {
                expect: names.len(),
            },
            pids: vec![warden.process.pid],
            direct: false,
        };
        let closed: Vec<usize> = vec![
            self.settings
                .concurrency
                .iter()
                .copied()
                .max()
                .unwrap_or(16)
                .min(16),
        ];
        self.sweep("fanout", &running, &closed, &[]).await
    }

    async fn sessions(
        &mut self,
        warden: &Warden,
        n_servers: usize,
        n: usize,
        pid: u32,
    ) -> Result<(), Error> {
        let rss = |pid| procs::rss_kib(pid).map_or(0.0, |(rss, _)| rss as f64 / 1024.0);
        let before = rss(pid);
        let endpoint = self.warden_endpoint(warden, Era::Handshake);
        let target = Target::Http(endpoint);
        let opened = Instant::now();
        let clients = target.connect(n, 10_000).await?;
        let open_s = opened.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = rss(pid);
        let facts = &mut self.report.facts;
        facts.insert(
            format!("RSS MiB, {n_servers} servers, no session"),
            Value::from(round(before, 1)),
        );
        facts.insert(
            format!("RSS MiB, {n_servers} servers, {n} idle sessions"),
            Value::from(round(idle, 1)),
        );
        facts.insert(
            format!("seconds to open {n} sessions"),
            Value::from(round(open_s, 2)),
        );
        let running = Running {
            name: "warden".into(),
            target,
            op: Op::Echo {
                tool: "s01__echo".into(),
            },
            pids: vec![pid],
            direct: false,
        };
        let (clients, _) = self
            .measure(
                "sessions",
                &running,
                clients,
                Load::Closed { concurrency: n },
            )
            .await;
        drive::close_all(clients).await;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // chaos
    // -----------------------------------------------------------------------------------

    async fn chaos(&mut self) -> Result<(), Error> {
        use ::warden::db::{ClusterOptions, EmbeddedCluster};
        let mut options = ClusterOptions::new(self.paths.state.join("chaos-pg"));
        options.start_timeout = Duration::from_secs(120);
        let mut cluster = EmbeddedCluster::start(options.clone())
            .await
            .map_err(|e| Error::Start(format!("chaos cluster: {e}")))?;
        let db = format!("chaos_{}", self.run);
        ::warden::db::ensure_database(&cluster, &db)
            .await
            .map_err(|e| Error::Start(format!("chaos database: {e}")))?;
        let url = cluster.url(&db);
        let extra = json!({ "database": { "url": url } });
        let started = self
            .start_warden("chaos", &[("echo".into(), Vec::new())], Some(&extra))
            .await;
        let warden = match started {
            Ok(warden) => warden,
            Err(error) => {
                let _ = cluster.stop(Duration::from_secs(10)).await;
                return Err(error);
            }
        };
        let outcome = self.chaos_run(&warden, &mut cluster, &options, &db).await;
        warden.stop().await;
        if let Err(error) = drop_database(&cluster, &db).await {
            self.report
                .notes
                .push(format!("chaos: could not drop {db}: {error}"));
        }
        let _ = cluster.stop(Duration::from_secs(10)).await;
        outcome
    }

    async fn chaos_run(
        &mut self,
        warden: &Warden,
        cluster: &mut ::warden::db::EmbeddedCluster,
        options: &::warden::db::ClusterOptions,
        db: &str,
    ) -> Result<(), Error> {
        let total = self.settings.chaos;
        let concurrency = 16;
        let endpoint = self.warden_endpoint(warden, Era::Handshake);
        let target = Target::Http(endpoint);
        let clients = target.connect(concurrency, 20_000).await?;
        let plan = Plan {
            warmup: Duration::ZERO,
            measure: total,
            call_timeout: self.settings.plan.call_timeout,
        };
        let op = Op::Echo {
            tool: "echo__echo".into(),
        };
        let run = self.run.clone();
        let before = sum_cpu(&[warden.process.pid]);
        let load = tokio::spawn(async move { drive::closed_loop(clients, &op, plan, &run).await });
        let t0 = Instant::now();
        let mut events: Vec<Value> = Vec::new();
        let at = |fraction: f64| t0 + total.mul_f64(fraction);
        for (when, what) in [(0.2, "kill"), (0.45, "pg"), (0.7, "kill")] {
            tokio::time::sleep_until(at(when).into()).await;
            let offset = t0.elapsed().as_secs_f64();
            match what {
                "kill" => {
                    let pid = warden.server_pid("echo").await.ok().flatten();
                    let killed = pid.is_some_and(|pid| procs::signal_pid(pid, libc::SIGKILL));
                    events.push(json!({"at_s": round(offset, 2), "event": "SIGKILL the echo server's child", "pid": pid, "done": killed}));
                }
                _ => {
                    let stop = cluster.stop(Duration::from_secs(10)).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let restarted = ::warden::db::EmbeddedCluster::start(options.clone()).await;
                    let done = match restarted {
                        Ok(new) => {
                            *cluster = new;
                            stop.is_ok()
                        }
                        Err(error) => {
                            events.push(json!({"event": "PostgreSQL failed to come back", "error": error.to_string()}));
                            false
                        }
                    };
                    events.push(json!({"at_s": round(offset, 2), "event": "PostgreSQL stopped (fast), down 1 s, started again", "back_after_s": round(t0.elapsed().as_secs_f64() - offset, 2), "done": done}));
                }
            }
        }
        let (outcome, _clients) = load
            .await
            .map_err(|e| Error::Run(format!("chaos load task: {e}")))?;
        let cpu = sum_cpu(&[warden.process.pid]).since(before);
        let made = outcome.calls_total;
        let errors = outcome.samples.errors.clone();
        let examples = outcome.samples.examples.clone();
        let ok = outcome.samples.latencies_us.len() as u64;
        let summary = outcome.samples.summarise(outcome.window);
        let rows = count_rows(cluster, db).await;
        let (rows_value, lost_value) = match rows {
            Ok(Some(rows)) => (Value::from(rows), Value::from(made as i64 - rows)),
            Ok(None) => (
                Value::from("n/a"),
                Value::from("n/a (this build has no mcp_tool_executions table)"),
            ),
            Err(error) => (Value::from(format!("error: {error}")), Value::from("n/a")),
        };
        eprintln!(
            "loadtest: chaos     warden: {made} calls made, {ok} ok, errors {}, rows {rows_value}, lost {lost_value}",
            summary.errors_text()
        );
        self.report.facts.insert(
            "chaos".into(),
            json!({
                "seconds": total.as_secs_f64(),
                "concurrency": concurrency,
                "events": events,
                "calls_made": made,
                "calls_ok": ok,
                "errors_by_kind": errors,
                "error_examples": examples,
                "rows_in_mcp_tool_executions": rows_value,
                "rows_lost": lost_value,
            }),
        );
        self.report.points.push(Point {
            scenario: "chaos".into(),
            target: "warden".into(),
            load: Load::Closed { concurrency },
            summary,
            resources: Resources {
                cpu,
                gateway_cpu_us_per_call: (made > 0).then(|| cpu.gateway_s * 1e6 / made as f64),
                peak_rss_mib: None,
                loadgen_cpu_s: 0.0,
            },
        });
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // ai
    // -----------------------------------------------------------------------------------

    /// Streamed chat completions, straight to the stand-in model server and through
    /// Warden's `/v1/chat/completions` (permission check, rate-limit decision, provider
    /// key, accounting row in `ai_requests` with the audit trail on): closed loop at each
    /// concurrency, open loop at each AI rate, then the added p99 at the first AI rate in
    /// alternating rounds.
    async fn ai(&mut self) -> Result<(), Error> {
        let standin = StandIn::start().await?;
        let overlay = json!({
            "ai": {
                "providers": {"standin": {
                    "kind": "openai_compatible",
                    "base_url": format!("http://{}/v1", standin.addr),
                }},
                "models": {MODEL: {"provider": "standin", "model": "m"}},
                "prices": {"m": {"input": 1, "output": 2}},
            },
        });
        let direct = Running {
            name: "direct-model".into(),
            target: Target::Chat(Arc::new(ChatEndpoint {
                addr: standin.addr,
                bearer: None,
            })),
            op: Op::ChatStream,
            pids: Vec::new(),
            direct: true,
        };
        let warden = self.start_warden("ai", &[], Some(&overlay)).await?;
        let proxied = Running {
            name: "warden".into(),
            target: Target::Chat(Arc::new(ChatEndpoint {
                addr: warden.addr,
                bearer: Some(warden.token.clone()),
            })),
            op: Op::ChatStream,
            pids: vec![warden.process.pid],
            direct: false,
        };
        let closed = self.settings.concurrency.clone();
        let rates = self.settings.ai_rates.clone();
        let mut outcome = Ok(());
        for running in [&direct, &proxied] {
            if outcome.is_ok() && self.wanted(&running.name) {
                outcome = self.sweep("ai", running, &closed, &rates).await;
            }
        }
        if let (Ok(()), Some(&rate)) = (&outcome, rates.first()) {
            let rounds = if self.args.quick { 1 } else { 4 };
            outcome = self
                .paired_open("ai", [&direct, &proxied], rate, rounds)
                .await;
        }
        warden.stop().await;
        outcome
    }

    // -----------------------------------------------------------------------------------
    // cold start, bars, output
    // -----------------------------------------------------------------------------------

    async fn cold_start(&mut self) -> Result<(), Error> {
        let runs = if self.args.quick { 1 } else { 3 };
        let mut times = Vec::new();
        for _ in 0..runs {
            let warden = self
                .start_warden("coldstart", &[("echo".into(), Vec::new())], None)
                .await?;
            times.push(warden.ready_after.as_secs_f64() * 1000.0);
            warden.stop().await;
        }
        let median = median(&mut times.clone());
        self.report.facts.insert(
            "cold start to /readyz, ms (embedded database initialised; one stdio server)".into(),
            json!({ "runs": times.iter().map(|t| round(*t, 1)).collect::<Vec<_>>(), "median": median.map(|m| round(m, 1)) }),
        );
        Ok(())
    }

    fn bars(&mut self) {
        let mut bars = Vec::new();
        let r = &self.report;
        // Saturation with the governed profile.
        let saturation = r
            .points
            .iter()
            .filter(|p| {
                p.scenario == "governed"
                    && p.target == "warden"
                    && matches!(p.load, Load::Closed { .. })
            })
            .map(|p| p.summary.calls_per_s)
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            });
        bars.push(Bar {
            name: "tools/call saturation, governed profile".into(),
            target: format!("≥ {BAR_SATURATION:.0} calls/s"),
            measured: saturation.map(|v| format!("{v:.0} calls/s")),
            pass: saturation.map(|v| v >= BAR_SATURATION),
            detail: String::new(),
        });
        // Added p99 at the bar's rate.
        let rate = self.args.bar_rate;
        let load = Load::Open { rate };
        let added = match (
            r.point("governed", "warden", load),
            r.point("governed", "direct-stdio", load),
        ) {
            (Some(w), Some(d)) => match (w.summary.p99_ms, d.summary.p99_ms) {
                (Some(wp), Some(dp)) => Some((wp - dp, wp, dp, w.summary.errors)),
                _ => None,
            },
            _ => None,
        };
        bars.push(Bar {
            name: format!("added p99 over direct stdio at {rate:.0} calls/s, governed profile"),
            target: format!("≤ {BAR_ADDED_P99_MS} ms"),
            measured: added.map(|(a, _, _, _)| format!("{a:.3} ms")),
            pass: added.map(|(a, _, _, errors)| a <= BAR_ADDED_P99_MS && errors == 0),
            detail: added.map_or_else(String::new, |(_, w, d, _)| {
                format!("Warden p99 {w:.3} ms, direct {d:.3} ms")
            }),
        });
        // Ahead of every peer (echo, highest concurrency).
        let most = self.settings.concurrency.iter().copied().max().unwrap_or(0);
        let closed = Load::Closed { concurrency: most };
        if let Some(w) = r.point("echo", "warden", closed) {
            for peer in &self.settings.peers {
                let p = r.point("echo", peer, closed);
                bars.push(Bar {
                    name: format!("ahead of {peer} (echo, closed ×{most})"),
                    target: "more calls/s and lower p99".into(),
                    measured: p.map(|p| {
                        format!(
                            "{:.1}× calls/s, p99 {} vs {} ms",
                            w.summary.calls_per_s / p.summary.calls_per_s.max(f64::MIN_POSITIVE),
                            w.summary.p99_ms.map_or("–".into(), |v| format!("{v:.2}")),
                            p.summary.p99_ms.map_or("–".into(), |v| format!("{v:.2}")),
                        )
                    }),
                    pass: p.map(|p| {
                        w.summary.calls_per_s > p.summary.calls_per_s
                            && w.summary
                                .p99_ms
                                .zip(p.summary.p99_ms)
                                .is_some_and(|(a, b)| a < b)
                    }),
                    detail: String::new(),
                });
            }
        }
        // Memory with idle sessions.
        let rss = r
            .facts
            .iter()
            .find(|(k, _)| k.contains("idle sessions"))
            .and_then(|(k, v)| v.as_f64().map(|v| (k.clone(), v)));
        bars.push(Bar {
            name: "RSS with 1,000 idle sessions and 20 servers (children not counted)".into(),
            target: "≤ 60 MB".into(),
            measured: rss
                .as_ref()
                .map(|(_, v)| format!("{:.1} MB ({v:.1} MiB)", v * 1048576.0 / 1e6)),
            pass: rss.as_ref().map(|(_, v)| v * 1048576.0 <= BAR_RSS_BYTES),
            detail: rss.map(|(k, _)| k).unwrap_or_default(),
        });
        // Cold start.
        let cold = r
            .facts
            .iter()
            .find(|(k, _)| k.starts_with("cold start"))
            .and_then(|(_, v)| v["median"].as_f64());
        bars.push(Bar {
            name: "cold start to ready (embedded database initialised)".into(),
            target: "≤ 1 s".into(),
            measured: cold.map(|v| format!("{v:.0} ms")),
            pass: cold.map(|v| v <= BAR_COLD_START_MS),
            detail: "median".into(),
        });
        // Binary size.
        let size = r
            .facts
            .get("warden release binary bytes")
            .and_then(Value::as_u64);
        bars.push(Bar {
            name: "release binary, stripped".into(),
            target: "≤ 25 MB".into(),
            measured: size.map(|v| format!("{:.1} MB", v as f64 / 1e6)),
            pass: size.map(|v| v <= BAR_BINARY_BYTES),
            detail: String::new(),
        });
        self.report.bars = bars;
    }

    fn write(&self) -> Result<(), Error> {
        let out = &self.paths.out;
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, text).map_err(|source| Error::Io {
                context: format!("writing {}", path.display()),
                source,
            })
        };
        let json =
            serde_json::to_string_pretty(&self.report).map_err(|e| Error::Run(e.to_string()))?;
        write(out.join("report.json"), json)?;
        let markdown = self.report.markdown();
        write(out.join("report.md"), markdown.clone())?;
        let svg = self.plot();
        write(out.join("latency.svg"), svg.clone())?;
        if let Some(path) = &self.args.plot {
            write(path.clone(), svg)?;
        }
        println!("{markdown}");
        eprintln!(
            "loadtest: wrote {}/report.json, report.md and latency.svg",
            out.display()
        );
        Ok(())
    }

    /// Open-loop points of scenario `echo`: offered rate against p50/p99.
    fn plot(&self) -> String {
        let mut series: Vec<crate::plot::Series> = Vec::new();
        for point in self.report.points.iter().filter(|p| p.scenario == "echo") {
            let Load::Open { rate } = point.load else {
                continue;
            };
            let (Some(p50), Some(p99)) = (point.summary.p50_ms, point.summary.p99_ms) else {
                continue;
            };
            match series.iter_mut().find(|s| s.name == point.target) {
                Some(s) => s.points.push((rate, p50, p99)),
                None => series.push(crate::plot::Series {
                    name: point.target.clone(),
                    points: vec![(rate, p50, p99)],
                }),
            }
        }
        crate::plot::latency_vs_load(
            "tools/call echo, open loop: latency vs offered load",
            "offered load, calls/s (latency measured from the intended send time)",
            &series,
        )
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

/// Rows in `mcp_tool_executions`, waiting until the count stops growing (the audit writer
/// batches). `None` when the table does not exist in this build.
async fn count_rows(
    cluster: &::warden::db::EmbeddedCluster,
    db: &str,
) -> Result<Option<i64>, String> {
    let (client, connection) = cluster
        .pg_config(db)
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_one(
            "SELECT to_regclass('public.mcp_tool_executions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get::<_, bool>(0);
    let outcome = if exists {
        let mut last = -1i64;
        let mut stable = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let count: i64 = client
                .query_one("SELECT count(*) FROM mcp_tool_executions", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            stable = if count == last { stable + 1 } else { 0 };
            last = count;
            if stable >= 4 || Instant::now() > deadline {
                break Ok(Some(count));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    } else {
        Ok(None)
    };
    drop(client);
    let _ = driver.await;
    outcome
}

async fn drop_database(cluster: &::warden::db::EmbeddedCluster, db: &str) -> Result<(), String> {
    let (client, connection) = cluster
        .pg_config("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let outcome = client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            db.replace('"', "\"\"")
        ))
        .await
        .map_err(|e| e.to_string());
    drop(client);
    let _ = driver.await;
    outcome
}
