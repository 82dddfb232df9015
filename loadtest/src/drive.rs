//! The two ways of applying load, over any target.
//!
//! - **Closed loop**: N callers, each with its own client, call back to back for a fixed
//!   time. Gives the saturation throughput and the latency at a given concurrency.
//! - **Open loop**: calls are due at a fixed rate whatever the target does, and each
//!   call's latency is measured from the moment it was *due*, not from when a free client
//!   got round to sending it. A target that stalls cannot hide its tail: the calls that
//!   queued behind the stall carry the wait (no coordinated omission). Calls still unsent
//!   when the drain deadline passes count as `not_sent` errors.
//!
//! Both run a warm-up first (not recorded) and record only calls that *started* (closed)
//! or were *due* (open) inside the measurement window. Every call has a unique payload
//! (`<run>-<caller>-<seq>`), checked on the way back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};

use crate::mcp::{CallError, Endpoint, Session};
use crate::model::{ChatClient, ChatEndpoint};
use crate::stats::Samples;
use crate::stdio::StdioServer;

/// What each call does.
#[derive(Debug, Clone)]
pub enum Op {
    /// `tools/call` of an echo tool with a unique message, checked.
    Echo { tool: String },
    /// `tools/list` (all pages); the answer must list `expect` tools.
    ListTools { expect: usize },
    /// A streamed chat completion echoing a unique text, checked whole.
    ChatStream,
}

/// Something to send calls to.
#[derive(Clone)]
pub enum Target {
    /// Streamable HTTP (a gateway, or the fixture's own HTTP mode).
    Http(Arc<Endpoint>),
    /// The fixture on stdio, shared by all callers.
    Stdio(Arc<StdioServer>),
    /// An OpenAI-shape `/v1/chat/completions` (the stand-in model server, or Warden).
    Chat(Arc<ChatEndpoint>),
}

/// One caller's client.
pub enum Client {
    Http(Box<Session>),
    Stdio(Arc<StdioServer>),
    Chat(ChatClient),
}

/// Timing of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub warmup: Duration,
    pub measure: Duration,
    pub call_timeout: Duration,
}

/// What one measurement produced.
pub struct Outcome {
    pub samples: Samples,
    /// Every call completed during the point, warm-up included (for CPU per call).
    pub calls_total: u64,
    pub window: Duration,
}

/// Ids of caller `n` start at `n * ID_STRIDE + 1`, so every request of a run is unique.
const ID_STRIDE: u64 = 1_000_000_000;

impl Target {
    /// Opens `n` clients (with their MCP handshakes), at most 32 at a time. Fails if any
    /// cannot be opened, naming how many and why.
    pub async fn connect(
        &self,
        n: usize,
        first_caller: usize,
    ) -> Result<Vec<Client>, crate::Error> {
        let mut clients = Vec::with_capacity(n);
        let mut failures: Vec<String> = Vec::new();
        for chunk_start in (0..n).step_by(32) {
            let mut set = tokio::task::JoinSet::new();
            for index in chunk_start..n.min(chunk_start + 32) {
                let target = self.clone();
                let caller = (first_caller + index) as u64;
                set.spawn(async move {
                    match target {
                        Target::Stdio(server) => Ok(Client::Stdio(server)),
                        Target::Chat(endpoint) => Ok(Client::Chat(ChatClient::new(endpoint))),
                        Target::Http(endpoint) => {
                            let mut session = Session::new(endpoint, caller * ID_STRIDE + 1)?;
                            tokio::time::timeout(Duration::from_secs(30), session.ensure_ready())
                                .await
                                .map_err(|_| CallError::Timeout(Duration::from_secs(30)))??;
                            Ok::<_, CallError>(Client::Http(Box::new(session)))
                        }
                    }
                });
            }
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(Ok(client)) => clients.push(client),
                    Ok(Err(error)) => failures.push(error.to_string()),
                    Err(error) => failures.push(error.to_string()),
                }
            }
        }
        if failures.is_empty() {
            Ok(clients)
        } else {
            failures.dedup();
            Err(crate::Error::Run(format!(
                "{} of {n} clients could not connect: {}",
                n - clients.len(),
                failures
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )))
        }
    }
}

impl Client {
    /// One call with a deadline; `tag` makes the payload unique.
    pub async fn call(&mut self, op: &Op, tag: &str, timeout: Duration) -> Result<(), CallError> {
        match (self, op) {
            (Client::Stdio(server), Op::Echo { tool }) => server.echo(tool, tag, timeout).await,
            (Client::Chat(client), Op::ChatStream) => client.stream(tag, timeout).await,
            (Client::Stdio(_) | Client::Chat(_), _) => Err(CallError::Protocol(
                "only tools/call echo goes over stdio, only chat to a chat endpoint".into(),
            )),
            (Client::Http(session), op) => {
                let call = async {
                    match op {
                        Op::Echo { tool } => session.echo(tool, tag).await,
                        Op::ListTools { expect } => {
                            let names = session.list_tools().await?;
                            if names.len() == *expect {
                                Ok(())
                            } else {
                                Err(CallError::Mismatch(format!(
                                    "listed {} tools, expected {expect}",
                                    names.len()
                                )))
                            }
                        }
                        Op::ChatStream => Err(CallError::Protocol(
                            "chat completions are not driven over MCP".into(),
                        )),
                    }
                };
                match tokio::time::timeout(timeout, call).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        session.reset_connection();
                        Err(CallError::Timeout(timeout))
                    }
                }
            }
        }
    }
}

/// Ends every client's session, at most 64 at a time.
pub async fn close_all(clients: Vec<Client>) {
    let mut set = tokio::task::JoinSet::new();
    for client in clients {
        if let Client::Http(mut session) = client {
            if set.len() >= 64 {
                set.join_next().await;
            }
            set.spawn(async move { session.close().await });
        }
    }
    while set.join_next().await.is_some() {}
}

/// A random tag for this run, so payloads differ between runs too.
pub fn run_tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// N callers back to back. Returns the clients for reuse.
pub async fn closed_loop(
    clients: Vec<Client>,
    op: &Op,
    plan: Plan,
    run: &str,
) -> (Outcome, Vec<Client>) {
    let start = Instant::now() + Duration::from_millis(20);
    let measure_start = start + plan.warmup;
    let end = measure_start + plan.measure;
    let total = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for (caller, mut client) in clients.into_iter().enumerate() {
        let op = op.clone();
        let total = Arc::clone(&total);
        let prefix = format!("{run}-{caller}-");
        set.spawn(async move {
            let mut samples = Samples::default();
            tokio::time::sleep_until(start.into()).await;
            let mut tag = String::with_capacity(prefix.len() + 12);
            for seq in 0u64.. {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                tag.clear();
                tag.push_str(&prefix);
                tag.push_str(&seq.to_string());
                let outcome = client.call(&op, &tag, plan.call_timeout).await;
                let t1 = Instant::now();
                total.fetch_add(1, Ordering::Relaxed);
                let recorded = t0 >= measure_start;
                match outcome {
                    Ok(()) if recorded => samples.ok(t1 - t0),
                    Ok(()) => {}
                    Err(error) => {
                        if recorded {
                            samples.error_with(&error.kind(), || error.to_string());
                        }
                        // Do not spin on a target that fails fast.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            (samples, client)
        });
    }
    let mut samples = Samples::default();
    let mut clients = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((s, client)) => {
                samples.merge(s);
                clients.push(client);
            }
            Err(_) => samples.error("driver_panic"),
        }
    }
    let outcome = Outcome {
        samples,
        calls_total: total.load(Ordering::Relaxed),
        window: plan.measure,
    };
    (outcome, clients)
}

/// Calls due at `rate` per second, sent by whichever client is free. Returns the clients.
pub async fn open_loop(
    clients: Vec<Client>,
    op: &Op,
    rate: f64,
    plan: Plan,
    run: &str,
) -> (Outcome, Vec<Client>) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now() + Duration::from_millis(20);
    let measure_start = start + plan.warmup;
    let end = measure_start + plan.measure;
    let drain_deadline = end + plan.call_timeout.max(Duration::from_secs(2));
    let due_total = ((plan.warmup + plan.measure).as_secs_f64() * rate).ceil() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    // A thread of its own with a 1 µs timer slack: tokio's timer wheel has a 1 ms
    // granularity, which would add up to a millisecond to every open-loop latency.
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
            }
            for seq in 0..due_total {
                let due = start + interval.mul_f64(seq as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send((seq, due)).is_err() {
                    return;
                }
            }
        });
    if let Err(error) = pacer {
        let mut samples = Samples::default();
        samples.error(&format!("pacer_thread: {error}"));
        let outcome = Outcome {
            samples,
            calls_total: 0,
            window: plan.measure,
        };
        return (outcome, clients);
    }
    let total = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for mut client in clients {
        let op = op.clone();
        let rx = Arc::clone(&rx);
        let total = Arc::clone(&total);
        let prefix = format!("{run}-o{}-", rate as u64);
        set.spawn(async move {
            let mut samples = Samples::default();
            let mut last_done = measure_start;
            let mut tag = String::with_capacity(prefix.len() + 12);
            loop {
                let next = rx.lock().await.recv().await;
                let Some((seq, due)) = next else { break };
                let recorded = due >= measure_start;
                if Instant::now() >= drain_deadline {
                    if recorded {
                        samples.error("not_sent");
                    }
                    continue;
                }
                tag.clear();
                tag.push_str(&prefix);
                tag.push_str(&seq.to_string());
                let outcome = client.call(&op, &tag, plan.call_timeout).await;
                let done = Instant::now();
                total.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Ok(()) if recorded => {
                        samples.ok(done - due);
                        last_done = last_done.max(done);
                    }
                    Ok(()) => {}
                    Err(error) if recorded => {
                        samples.error_with(&error.kind(), || error.to_string());
                    }
                    Err(_) => {}
                }
            }
            (samples, client, last_done)
        });
    }
    let mut samples = Samples::default();
    let mut clients = Vec::new();
    let mut last_done = measure_start;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((s, client, done)) => {
                samples.merge(s);
                clients.push(client);
                last_done = last_done.max(done);
            }
            Err(_) => samples.error("driver_panic"),
        }
    }
    // A target that fell behind finishes the window's calls late: its throughput is what
    // it completed over the time it took, not the offered rate.
    let outcome = Outcome {
        samples,
        calls_total: total.load(Ordering::Relaxed),
        window: plan.measure.max(last_done - measure_start),
    };
    (outcome, clients)
}
