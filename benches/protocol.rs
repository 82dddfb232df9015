//! The protocol plumbing every call crosses (`cargo bench --bench protocol`; figures in
//! docs/benchmarks.md):
//!
//! - `jsonrpc/parse_value`: a typical `tools/call` request parsed into a JSON tree, as the
//!   HTTP edge reads a client's request;
//! - `jsonrpc/parse_envelope`: the same frame classified through the borrowed envelope, as
//!   the upstream connection reads every message from a server;
//! - `jsonrpc/write_request`: the call re-framed for the upstream (Warden's own id);
//! - `jsonrpc/add_meta`: `_meta.traceparent` added to a typical result, with and without
//!   an existing `_meta`;
//! - `actor/call_round_trip`: one request/reply round trip to a ractor actor on a
//!   two-worker runtime (what asking a Session or McpServer actor costs).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;
use warden_actors::jsonrpc::{self, Envelope};

const CALL: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"github__search_issues","arguments":{"query":"is:open label:bug repo:acme/warden","per_page":20,"sort":"updated"},"_meta":{"progressToken":"p-42"}}}"#;
const RESULT: &str = r#"{"content":[{"type":"text","text":"Found 3 issues: #101 Crash on reload (updated 2 hours ago), #97 Slow tools/list with 400 tools (updated yesterday), #88 Typo in docs (updated last week)"}],"isError":false}"#;
const RESULT_WITH_META: &str = r#"{"content":[{"type":"text","text":"Found 3 issues: #101 Crash on reload (updated 2 hours ago), #97 Slow tools/list with 400 tools (updated yesterday), #88 Typo in docs (updated last week)"}],"isError":false,"_meta":{"server":"github"}}"#;

fn jsonrpc_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("jsonrpc");
    group.bench_function("parse_value", |b| {
        b.iter(|| serde_json::from_str::<Value>(black_box(CALL)).map(|v| v["id"].clone()))
    });
    group.bench_function("parse_envelope", |b| {
        b.iter(|| {
            let envelope: Envelope<'_> = serde_json::from_str(black_box(CALL)).ok()?;
            Some(matches!(envelope.kind(), jsonrpc::Kind::Request))
        })
    });
    let params = serde_json::from_str::<Envelope<'_>>(CALL)
        .ok()
        .and_then(|e| e.params.map(|p| p.get().to_owned()))
        .unwrap_or_default();
    group.bench_function("write_request", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            jsonrpc::write_request(&mut out, "1234567", "tools/call", Some(black_box(&params)));
            out.len()
        })
    });
    let trace = Value::from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    group.bench_function("add_meta/splice", |b| {
        b.iter(|| jsonrpc::add_meta(black_box(RESULT), "traceparent", &trace))
    });
    group.bench_function("add_meta/merge", |b| {
        b.iter(|| jsonrpc::add_meta(black_box(RESULT_WITH_META), "traceparent", &trace))
    });
    group.finish();
}

struct Echo;

impl Actor for Echo {
    type Msg = RpcReplyPort<u64>;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        reply: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(7);
        Ok(())
    }
}

fn actor_benches(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("actor benches skipped: no runtime: {error}");
            return;
        }
    };
    let spawned = runtime.block_on(Actor::spawn(None, Echo, ()));
    let Ok((actor, handle)) = spawned else {
        eprintln!("actor benches skipped: the actor did not start");
        return;
    };
    c.bench_function("actor/call_round_trip", |b| {
        b.to_async(&runtime)
            .iter(|| async { ractor::call!(actor, |reply| reply).ok() })
    });
    actor.stop(None);
    let _ = runtime.block_on(handle);
}

criterion_group!(benches, jsonrpc_benches, actor_benches);
criterion_main!(benches);
