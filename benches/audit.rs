//! Audit trail benchmarks (criterion; `cargo bench --bench audit`). Figures and how they
//! were taken are recorded in docs/benchmarks.md.
//!
//! - `enqueue/record`: what the call path pays to hand a tool-call record to the trail
//!   ([`Audit::record`] on a queue with room). Target: ≤ 1 µs.
//! - `copy/batch_1000`: one batch of 1,000 rows (half tool calls with small payloads,
//!   half permission decisions) written the way the AuditWriter writes it — binary COPY
//!   plus the batch's seal in the hash chain, one transaction — into a local PostgreSQL
//!   the bench starts itself (an embedded cluster with fsync on, in a temp dir). Target:
//!   ≥ 100,000 rows/s.
//! - `writer/sustained_1000`: the AuditWriter actor draining bursts of 20,000 queued
//!   records (same mix) in batches of 1,000, `WRITE_CONCURRENCY` (default 2, the
//!   profile's default) batches in flight: the rate the writer sustains. Target:
//!   ≥ 100,000 rows/s.

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use serde_json::value::RawValue;
use uuid::Uuid;
use warden::db::{ClusterOptions, EmbeddedCluster};
use warden_actors::audit::prepare::{Preparer, Row};
use warden_actors::audit::scrub::Scrubber;
use warden_actors::audit::store::write_batch;
use warden_actors::audit::writer::{AuditWriter, WriterConfig};
use warden_actors::audit::{Audit, AuditEvent, AuditRecord, Backlog, ToolCallRecord, ToolStatus};
use warden_actors::trace::TraceContext;

/// Who made call `i` and with what: the keys the audit indexes are built on, spread the
/// way a deployment spreads them (many users, servers and tools; a fresh trace id per
/// call, shared by the call's tool row and its permission decision), so the bench pays
/// for the B-trees what production pays. Identical keys would let PostgreSQL append
/// where it must search.
///
/// Trace ids are the ones Warden starts for a request without a `traceparent` (they rise
/// with time), or with `TRACES=client` random ones, as clients that send their own do.
/// `KEYS=one` puts every call on one user and one tool (trace ids as above): close to
/// what this bench did before 27 November 2026, and what the spread of users and tools
/// costs.
struct Call {
    trace_id: String,
    user: String,
    session: String,
    server: &'static str,
    tool: &'static str,
}

const USERS: usize = 40;
const SERVERS: [&str; 8] = [
    "github",
    "jira",
    "postgres",
    "slack",
    "filesystem",
    "search",
    "calendar",
    "drive",
];
const TOOLS: [&str; 6] = ["list", "get", "create", "update", "search", "delete"];

impl Call {
    fn new(i: usize) -> Call {
        // Users and tools drawn independently of each other (a multiplicative hash
        // of `i`, then its high and low parts), so every user calls every tool.
        let mixed = if *ONE_KEY {
            0
        } else {
            (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
        } as usize;
        let user = mixed % USERS;
        let tool = (mixed / USERS) % (SERVERS.len() * TOOLS.len());
        Call {
            trace_id: if *CLIENT_TRACES {
                Uuid::new_v4().simple().to_string()
            } else {
                TraceContext::generate().trace_id_hex()
            },
            user: format!("user-{user}@example.com"),
            session: format!("session-{user}-k2nW0pV6dPq8r7s2t9u1v3w5x7y9"),
            server: SERVERS[tool % SERVERS.len()],
            tool: TOOLS[tool / SERVERS.len()],
        }
    }
}

/// `KEYS=one`: every call on one user and one tool.
static ONE_KEY: LazyLock<bool> = LazyLock::new(|| env_is("KEYS", "one"));
/// `TRACES=client`: random trace ids, as clients that send their own.
static CLIENT_TRACES: LazyLock<bool> = LazyLock::new(|| env_is("TRACES", "client"));

/// `PG_SETTINGS="name=value,name=value"`: PostgreSQL settings for the bench's cluster
/// (`-c name=value`), to measure a setting against the defaults.
fn pg_settings() -> Vec<(String, String)> {
    std::env::var("PG_SETTINGS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == value)
}

/// The tool row and the permission decision of call `i`, in the order the call path
/// records them.
fn call_records(i: usize) -> [AuditRecord; 2] {
    let call = Call::new(i);
    [decision_record(&call), tool_record(i, &call)]
}

fn tool_record(i: usize, call: &Call) -> AuditRecord {
    let now = SystemTime::now();
    AuditRecord::ToolCall(Box::new(ToolCallRecord {
        id: Uuid::now_v7(),
        trace_id: call.trace_id.clone(),
        session_id: Some(call.session.clone()),
        user_id: Some(call.user.clone()),
        client_id: Some("claude-desktop".into()),
        server_name: call.server.into(),
        tool_name: call.tool.into(),
        requested_name: format!("{}__{}", call.server, call.tool),
        input: RawValue::from_string(format!(
            r#"{{"repo":"acme/widgets","title":"Issue number {i}","labels":["bug","p2"]}}"#
        ))
        .ok(),
        output: RawValue::from_string(format!(
            r#"{{"content":[{{"type":"text","text":"created issue #{i}"}}],"isError":false}}"#
        ))
        .ok(),
        status: ToolStatus::Success,
        error: None,
        started_at: now,
        completed_at: now,
        duration_us: 1234,
    }))
}

fn decision_record(call: &Call) -> AuditRecord {
    let mut event = AuditEvent::new("permission.decision", "user");
    event.trace_id = Some(call.trace_id.clone());
    event.actor_id = Some(call.user.clone());
    event.subject = Some(format!("{}/{}", call.server, call.tool));
    event.decision = Some("allow");
    event.attributes = serde_json::json!({
        "action": "tools/call", "client_id": "claude-desktop", "scopes": "tools:call",
        "roles": ["developer"], "issuer": "warden",
    });
    AuditRecord::Event(Box::new(event))
}

fn enqueue(c: &mut Criterion) {
    let mut group = c.benchmark_group("enqueue");
    group.throughput(Throughput::Elements(1));
    group.bench_function("record", |b| {
        const CHUNK: usize = 1 << 16;
        let (audit, mut queue) = Audit::channel(CHUNK, Backlog::Block(Duration::from_secs(1)));
        let template = tool_record(1, &Call::new(1));
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(CHUNK);
                let records: Vec<AuditRecord> = (0..n).map(|_| template.clone()).collect();
                let start = Instant::now();
                for record in records {
                    // A queue with room answers on the first poll.
                    let done = audit.record(record).now_or_never();
                    debug_assert!(matches!(done, Some(Ok(()))));
                }
                total += start.elapsed();
                while queue.receiver.try_recv().is_ok() {}
                left -= n;
            }
            total
        });
    });
    group.finish();
}

fn batch_rows(n: usize) -> Vec<Row> {
    let scrubber = Scrubber::builtin();
    let preparer = Preparer {
        scrubber: &scrubber,
        max_payload_bytes: 64 << 10,
    };
    (0..n / 2)
        .flat_map(call_records)
        .map(|record| preparer.row(&record))
        .collect()
}

/// The same rows with fresh ids (a batch must not repeat ids already stored).
fn with_fresh_ids(rows: &[Row]) -> Vec<Row> {
    rows.iter()
        .cloned()
        .map(|mut row| {
            match &mut row {
                Row::Tool(t) => t.id = Uuid::now_v7(),
                Row::Event(e) => e.id = Uuid::now_v7(),
                Row::Ai(a) => a.id = Uuid::now_v7(),
            }
            row
        })
        .collect()
}

fn copy(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut options = ClusterOptions::new(dir.path().join("pg"));
    options.settings = pg_settings();
    options.start_timeout = Duration::from_secs(120);
    let mut cluster = runtime
        .block_on(EmbeddedCluster::start(options))
        .expect("an embedded PostgreSQL cluster (PostgreSQL server binaries installed?)");
    runtime
        .block_on(warden::db::ensure_database(&cluster, "bench"))
        .expect("the bench database");
    let config = cluster.pg_config("bench");
    let copy_pool = warden::db::pool(config.clone(), 1, Duration::from_secs(10)).expect("a pool");
    // A pooled connection, as the writer's: its statements are prepared once.
    let mut client = runtime.block_on(async {
        let mut client = copy_pool
            .get()
            .await
            .expect("connecting to the bench database");
        let registry = warden::extension::Registry::with(&[]);
        warden::db::migrate::run(&mut client, registry.all_migrations())
            .await
            .expect("migrations");
        client
    });
    let rows = batch_rows(1000);
    let mut group = c.benchmark_group("copy");
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("batch_1000", |b| {
        b.iter_batched(
            || with_fresh_ids(&rows),
            |batch| {
                runtime
                    .block_on(write_batch(&mut client, &batch, "bench", false, false))
                    .expect("a written batch")
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
    writer_sustained(c, &runtime, &config);
    drop(client);
    let _ = runtime.block_on(cluster.stop(Duration::from_secs(10)));
}

/// Records a burst is made of, and the writer's batch size (the issue's 1,000).
const BURST: usize = 20_000;
const WRITER_BATCH: usize = 1_000;

/// The AuditWriter itself, as `warden serve` runs it (`audit.write_concurrency` batches
/// of 1,000 in flight): a burst of records is queued as fast as the call path can, and
/// the clock stops when `flush` reports every one of them committed.
fn writer_sustained(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    config: &tokio_postgres::Config,
) {
    let concurrency: usize = std::env::var("WRITE_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let spool = tempfile::tempdir().expect("a temp dir");
    let pool = warden::db::pool(config.clone(), 4, Duration::from_secs(10)).expect("a pool");
    let (audit, queue) = Audit::channel(BURST, Backlog::Block(Duration::from_secs(30)));
    let writer = runtime
        .block_on(AuditWriter::start(
            WriterConfig {
                pool,
                spool_dir: spool.path().to_path_buf(),
                batch_max_rows: WRITER_BATCH,
                batch_max_delay: Duration::from_millis(10),
                write_concurrency: concurrency,
                spool_max_bytes: 1 << 30,
                max_payload_bytes: 64 << 10,
                backlog: Backlog::Block(Duration::from_secs(30)),
                scrubber: Scrubber::builtin().into_cell(),
                writer_name: "bench".into(),
            },
            queue,
            None,
        ))
        .expect("the audit writer");
    let mut group = c.benchmark_group("writer");
    group.throughput(Throughput::Elements(BURST as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("sustained_1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let records: Vec<AuditRecord> = (0..BURST / 2).flat_map(call_records).collect();
                total += runtime.block_on(async {
                    let start = Instant::now();
                    for record in records {
                        audit.record(record).await.expect("room in the queue");
                    }
                    let backlog = writer
                        .flush(Duration::from_secs(120))
                        .await
                        .expect("the writer answers");
                    assert_eq!(backlog.spool_bytes, 0, "the bench database went away");
                    start.elapsed()
                });
            }
            total
        });
    });
    group.finish();
    runtime.block_on(writer.shutdown(Duration::from_secs(30)));
}

/// What the writer does per row before PostgreSQL sees it: redaction and truncation
/// ([`Preparer::row_owned`]) and the row's hash for the batch's seal.
fn prepare(c: &mut Criterion) {
    let scrubber = Scrubber::builtin();
    let preparer = Preparer {
        scrubber: &scrubber,
        max_payload_bytes: 64 << 10,
    };
    let [decision, tool] = call_records(7);
    let mut group = c.benchmark_group("prepare");
    group.throughput(Throughput::Elements(1));
    // The writer gives its records up (`row_owned`); the copy made here is not timed.
    for (name, record) in [("tool_call", &tool), ("decision", &decision)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || record.clone(),
                |record| preparer.row_owned(record),
                BatchSize::SmallInput,
            )
        });
    }
    let rows = batch_rows(1000);
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function("seal_entries_1000", |b| {
        b.iter(|| warden_actors::audit::store::entries(rows.iter()))
    });
    group.finish();
}

criterion_group!(benches, enqueue, prepare, copy);
criterion_main!(benches);
