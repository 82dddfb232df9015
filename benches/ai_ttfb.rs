//! Time to first byte of streamed model requests, straight to a local upstream and
//! through `warden serve`, under concurrency (`cargo bench --bench ai_ttfb`; figures in
//! docs/benchmarks.md). The target: Warden adds at most 1 ms at p99 with 200
//! concurrent streams.
//!
//! The harness starts, on this machine:
//! - a stand-in OpenAI-compatible upstream (axum, `TCP_NODELAY`) whose streams send their
//!   first chunk at once, then `EVENTS` more chunks `GAP_MS` apart, then the usage chunk
//!   and `[DONE]` — so every stream of a round is open at the same time;
//! - the release `warden` binary with an embedded PostgreSQL in a temp dir, one
//!   `openai_compatible` provider pointing at the upstream, the audit trail on (every
//!   request writes its permission decision and its `ai_requests` row), rate limits off;
//! - `CONCURRENCY` client tasks (reqwest, one pooled HTTP/1.1 connection each), each of
//!   which records the time from sending a streaming request to its first body bytes.
//!
//! - a bare TCP forwarder in a process of its own (this bench binary again, with
//!   `AI_TTFB_FORWARD_TO` set; a two-worker tokio runtime, `TCP_NODELAY`, bytes copied both
//!   ways, no HTTP parsed): the **floor** — what one more process hop on the path costs on
//!   this machine under the same load, before any gateway does any work.
//!
//! Two ways of loading it (`MODE`):
//! - `steady` (the default, the "under 200 concurrent streams"): each client
//!   sends its next request as soon as its stream ends, and the clients start staggered
//!   over one stream's length, so about `CONCURRENCY` streams are open at every moment and
//!   requests arrive spread out (≈ CONCURRENCY / stream length per second). The first
//!   stream length of each phase is warm-up, not recorded.
//! - `burst`: every client sends one request at the same instant (a thundering herd of
//!   `CONCURRENCY` arrivals), per round.
//!
//! Phases (steady, `PHASE_MS` long) or rounds (burst) rotate over the direct path, the
//! forwarder and Warden, so drift in the machine's load hits all three alike. Settings come
//! from the environment: `MODE` (steady), `CONCURRENCY` (200), `ROUNDS` (10 per path),
//! `PHASE_MS` (2000), `EVENTS` (20), `GAP_MS` (10); `WARDEN_BIN` runs another `warden`
//! binary than the release one (say `target/profiling/warden`, for `perf record`).

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::post;
use axum::serve::ListenerExt;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn chunk(text: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
    ))
}

async fn upstream(events: usize, gap: Duration) -> String {
    let handler = move || async move {
        let stream = futures_util::stream::unfold(0usize, move |i| async move {
            if i > events + 1 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let bytes = match i {
                n if n <= events => chunk("tok"),
                _ => Bytes::from_static(
                    b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20,\"total_tokens\":30}}\n\ndata: [DONE]\n\n",
                ),
            };
            Some((Ok::<_, Infallible>(bytes), i + 1))
        });
        (
            [("content-type", "text/event-stream")],
            Body::from_stream(stream),
        )
    };
    let router = Router::new().route("/v1/chat/completions", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let address = listener.local_addr().expect("address");
    let listener = listener.tap_io(|socket| {
        let _ = socket.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

/// The bare forwarder's process (see the module doc); killed on drop.
struct Forwarder {
    child: std::process::Child,
    url: String,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts this binary again as a forwarder to `upstream` (`http://host:port`).
fn start_forwarder(upstream: &str) -> Forwarder {
    let target = upstream.trim_start_matches("http://");
    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .env(FORWARD_TO, target)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the forwarder");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the forwarder's address");
    Forwarder {
        child,
        url: format!("http://{}", line.trim()),
    }
}

/// The runtime of the bench and of the forwarder: two workers, like `warden serve` here.
fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Set in the forwarder's environment: the `host:port` it forwards to.
const FORWARD_TO: &str = "AI_TTFB_FORWARD_TO";

/// The forwarder's own `main`: accept on a free loopback port, print it, and copy bytes
/// both ways between each client and a fresh connection to `target`.
fn forward(target: String) {
    let runtime = two_worker_runtime();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the forwarder");
        println!("{}", listener.local_addr().expect("address"));
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
}

struct Warden {
    child: std::process::Child,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Warden {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn start_warden(upstream: &str) -> Warden {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let profile = serde_json::json!({
        "server": {"listen": format!("127.0.0.1:{port}"), "state_dir": dir.path().join("state")},
        "logging": {"level": "warn"},
        "ai": {
            "providers": {"local": {"kind": "openai_compatible", "base_url": format!("{upstream}/v1")}},
            "models": {"bench": {"provider": "local", "model": "m"}},
            "prices": {"m": {"input": 1, "output": 2}},
        },
    });
    let path = dir.path().join("warden.yaml");
    std::fs::write(&path, profile.to_string()).expect("write the profile");
    // `WARDEN_BIN` runs another build of the same source (a `profiling` one under perf).
    let binary =
        std::env::var_os("WARDEN_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_warden").into());
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn,warden::cli::serve=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warden");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let ready_tx = ready_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if line.contains("Warden is ready") {
                    let _ = ready_tx.send(());
                }
                if line.contains("ERROR") {
                    eprintln!("warden: {line}");
                }
            }
        });
    }
    ready_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("warden became ready");
    let token = std::fs::read_to_string(dir.path().join("state/admin.token"))
        .expect("the admin token")
        .trim()
        .to_owned();
    Warden {
        child,
        url: format!("http://127.0.0.1:{port}"),
        token,
        _dir: dir,
    }
}

fn chat_body() -> Arc<String> {
    Arc::new(
        serde_json::json!({"model": "bench", "stream": true,
                           "messages": [{"role": "user", "content": "Hello there"}]})
        .to_string(),
    )
}

fn chat_request(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> reqwest::RequestBuilder {
    let request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Sends `request`, reads its whole stream, and returns the time to its first body
/// bytes in µs.
async fn time_first_byte(request: reqwest::RequestBuilder) -> u64 {
    let sent = Instant::now();
    let mut response = request.send().await.expect("a response");
    assert!(response.status().is_success(), "{}", response.status());
    let first = response.chunk().await;
    let ttfb = sent.elapsed();
    assert!(matches!(first, Ok(Some(_))), "no first chunk");
    while let Some(chunk) = response.chunk().await.expect("the rest of the stream") {
        drop(chunk);
    }
    ttfb.as_micros() as u64
}

/// One round: every client sends one streaming request at once; the TTFB of each, in µs.
async fn round(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    concurrency: usize,
) -> Vec<u64> {
    let body = chat_body();
    let start = Arc::new(tokio::sync::Barrier::new(concurrency));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let token = token.map(str::to_owned);
        let body = body.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let request = chat_request(&client, &url, token.as_deref(), &body);
            start.wait().await;
            time_first_byte(request).await
        }));
    }
    let mut out = Vec::with_capacity(concurrency);
    for task in tasks {
        out.push(task.await.expect("a client task"));
    }
    out
}

/// One steady phase: `concurrency` clients back to back for `warmup + measure`, staggered
/// over `warmup`; the TTFB of each request sent after the warm-up, in µs.
async fn steady(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> Vec<u64> {
    let body = chat_body();
    let start = Instant::now();
    let record_from = start + warmup;
    let end = record_from + measure;
    let mut tasks = Vec::with_capacity(concurrency);
    for index in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let token = token.map(str::to_owned);
        let body = body.clone();
        let offset = warmup.mul_f64(index as f64 / concurrency as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((start + offset).into()).await;
            let mut samples = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let request = chat_request(&client, &url, token.as_deref(), &body);
                let ttfb = time_first_byte(request).await;
                if sent >= record_from {
                    samples.push(ttfb);
                }
            }
            samples
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.extend(task.await.expect("a client task"));
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn summary(name: &str, mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let (p50, p90, p99) = (
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
    );
    println!(
        "{name:<8} n={:<6} p50 {p50:>7.3} ms   p90 {p90:>7.3} ms   p99 {p99:>7.3} ms   max {:>7.3} ms",
        samples.len(),
        *samples.last().unwrap_or(&0) as f64 / 1000.0
    );
    (p50, p99)
}

fn main() {
    if let Ok(target) = std::env::var(FORWARD_TO) {
        return forward(target);
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    let concurrency = setting("CONCURRENCY", 200);
    let rounds = setting("ROUNDS", 10);
    let events = setting("EVENTS", 20);
    let gap = Duration::from_millis(setting("GAP_MS", 10) as u64);
    let phase = Duration::from_millis(setting("PHASE_MS", 2000) as u64);
    let burst = std::env::var("MODE").is_ok_and(|m| m == "burst");
    let runtime = two_worker_runtime();
    runtime.block_on(async move {
        let upstream = upstream(events, gap).await;
        let warden = tokio::task::spawn_blocking({
            let upstream = upstream.clone();
            move || start_warden(&upstream)
        })
        .await
        .expect("start warden");
        let client = warden_actors::upstream::http::client_builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(concurrency)
            .build()
            .expect("a client");
        let forwarder = start_forwarder(&upstream);
        let paths = [
            (format!("{upstream}/v1/chat/completions"), None),
            (format!("{}/v1/chat/completions", forwarder.url), None),
            (
                format!("{}/v1/chat/completions", warden.url),
                Some(warden.token.as_str()),
            ),
        ];
        // Warm-up: connections opened on every path, the token verified once.
        for (url, token) in &paths {
            round(&client, url, *token, concurrency).await;
        }
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        let stream_length = gap * events as u32;
        for _ in 0..rounds {
            for ((url, token), samples) in paths.iter().zip(samples.iter_mut()) {
                samples.extend(if burst {
                    round(&client, url, *token, concurrency).await
                } else {
                    steady(&client, url, *token, concurrency, stream_length, phase).await
                });
            }
        }
        if burst {
            println!(
                "burst: {concurrency} requests at once per round, {rounds} rounds per path, {events} events {gap:?} apart"
            );
        } else {
            println!(
                "steady: {concurrency} concurrent streams, {rounds} phases of {phase:?} per path, {events} events {gap:?} apart"
            );
        }
        let [direct_samples, floor_samples, warden_samples] = samples;
        let direct = summary("direct", direct_samples);
        let floor = summary("floor", floor_samples);
        let via = summary("warden", warden_samples);
        for (name, (p50, p99), (base50, base99)) in [
            ("floor added (one bare process hop)", floor, direct),
            ("warden added (the issue's measure)", via, direct),
            ("warden over the floor", via, floor),
        ] {
            println!(
                "{name:<36} p50 {:>7.3} ms   p99 {:>7.3} ms",
                p50 - base50,
                p99 - base99
            );
        }
        drop(forwarder);
        drop(warden);
    });
}
