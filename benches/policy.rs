//! The per-call cost of governance with no external handler (`cargo bench --bench policy`;
//! figures in docs/benchmarks.md):
//!
//! - `policy/call_path`: the permission check of a `tools/call`, the rate-limit decision
//!   (surface, server and tool limits) and PreToolUse hook dispatch over five compiled
//!   hooks none of which matches — everything a call pays before the upstream (target
//!   ≤ 5 µs);
//! - `policy/rate_limit`: the three GCRA decisions alone;
//! - `policy/hooks_no_match`: hook dispatch alone;
//! - `policy/hooks_none`: dispatch for an event with no hooks at all.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use serde_json::json;
use warden::auth::{Principal, PrincipalKind, Scopes};
use warden::config::Config;
use warden::policy::hooks::{HookContext, HookEvent, Hooks};
use warden::policy::limits::{RateLimiter, Surface};
use warden::policy::{Permission, PolicyEngine};

const PROFILE: &str = r#"
rate_limits: {mcp: 1000000/s, burst_multiplier: 2, tier_multipliers: {user: 1, admin: 10}}
servers:
  fs:
    url: https://example.com/fs
    scopes: [fs:read]
    write_scopes: [fs:write]
    rate_limit: 1000000/s
    tools:
      read_file: {rate_limit: 1000000/s}
hooks:
  - {name: a, event: PreToolUse, match: {tool: "fs__write_*"}, deny: no}
  - {name: b, event: PreToolUse, match: {tool: "re:^github__merge_"}, deny: no}
  - {name: c, event: PreToolUse, match: {server: db, role: intern}, deny: no}
  - {name: d, event: PreToolUse, match: {principal: "bot-*"}, secret_scan: {}}
  - {name: e, event: PreToolUse, match: {scope: "admin"}, deny: no}
"#;

fn bench(c: &mut Criterion) {
    let config = Config::parse(PROFILE, "bench.yaml", &|_| None).expect("the bench profile parses");
    let policy = PolicyEngine::from_config(&config);
    let limits = RateLimiter::new(config.policy.limits.clone());
    let hooks = Hooks::new(config.policy.hooks.clone());
    let http = warden_actors::upstream::http::client_builder()
        .build()
        .expect("a client");
    let principal = Principal {
        subject: "alice".into(),
        name: None,
        issuer: "warden".into(),
        client_id: Some("cli".into()),
        scopes: Scopes::parse("fs:read fs:write"),
        roles: vec!["user".into()],
        tier: "user".into(),
        kind: PrincipalKind::User,
        token_id: None,
        expires_at: None,
    };
    let annotations = json!({"readOnlyHint": true});
    let call = Permission::CallTool {
        server: "fs",
        tool: "read_file",
        annotations: Some(&annotations),
    };
    let context = HookContext {
        event: HookEvent::PreToolUse,
        server: Some("fs".into()),
        tool: Some("read_file".into()),
        exposed_tool: Some("fs__read_file".into()),
        principal: "alice".into(),
        roles: vec!["user".into()],
        scopes: vec!["fs:read".into(), "fs:write".into()],
        session_id: None,
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
    };
    let arguments = json!({"path": "/srv/a.txt"});
    let dispatch = |hooks: &Hooks| {
        hooks
            .run(black_box(&context), black_box(&arguments), &http)
            .now_or_never()
            .expect("no external handler runs, so dispatch never waits")
    };

    c.bench_function("policy/call_path", |b| {
        b.iter(|| {
            policy
                .check(black_box(&principal), black_box(&call))
                .expect("allowed");
            limits
                .check(Surface::Mcp, "alice", "user", Some("fs"), Some("read_file"))
                .expect("within the limit");
            let verdict = dispatch(&hooks);
            assert!(verdict.denied.is_none());
        })
    });
    c.bench_function("policy/rate_limit", |b| {
        b.iter(|| {
            limits.check(
                Surface::Mcp,
                black_box("alice"),
                "user",
                Some("fs"),
                Some("read_file"),
            )
        })
    });
    c.bench_function("policy/hooks_no_match", |b| b.iter(|| dispatch(&hooks)));
    let none = Hooks::new(Vec::new());
    c.bench_function("policy/hooks_none", |b| b.iter(|| dispatch(&none)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
