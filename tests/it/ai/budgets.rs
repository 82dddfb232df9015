//! Budgets: a user's daily cost budget, spent by the requests before, refuses the next
//! one with 429 and a message naming it; the refusal is an `ai_requests` row and a
//! `rate_limit.rejected` event; other users keep their own budgets; a token budget works
//! the same way; and the counters live in PostgreSQL, so a restart changes nothing.

use serde_json::json;

use super::fake::{self, FakeProvider};
use super::{Env, Trace, ask};

#[test]
fn a_spent_budget_refuses_the_next_request_records_it_and_survives_a_restart() {
    // Each answer costs 200 × $3 + 40 × $15 per million = 1,200 µ$ and 240 tokens.
    let anthropic = FakeProvider::start(|_| {
        fake::json_reply(fake::anthropic_answer(
            "claude-test",
            "fine",
            json!({"input_tokens": 200, "output_tokens": 40}),
        ))
    });
    let mut env = Env::start(
        json!({
            "providers": {"anthropic": {"kind": "anthropic", "base_url": anthropic.url}},
            "models": {"claude": {"provider": "anthropic", "model": "claude-test"}},
            "prices": {"claude-test": {"input": 3, "output": 15}},
            "budgets": [
                {"name": "daily-spend", "per": "day", "max_cost": "0.002"},
                {"name": "carol-tokens", "per": "month", "user": "carol", "max_tokens": 200},
            ],
        }),
        &[],
        |_| {},
    );
    let alice = env.token("alice", "ai:chat");
    let bob = env.token("bob", "ai:chat");
    let carol = env.token("carol", "ai:chat");

    // $0.0012, then $0.0024: both start under the $0.002 line.
    for _ in 0..2 {
        let response = env.chat(&alice, ask("claude", "hi"), &Trace::new());
        assert_eq!(response.status, 200, "{response:?}");
    }
    let trace = Trace::new();
    let refused = env.chat(&alice, ask("claude", "hi"), &trace);
    assert_eq!(refused.status, 429, "{refused:?}");
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    let message = refused.json()["error"]["message"]
        .as_str()
        .expect("a message")
        .to_owned();
    assert!(
        message.starts_with(
            "budget `daily-spend` is spent for user `alice`: $0.002400 of $0.002000 this day (UTC); it renews in"
        ),
        "{message}"
    );
    assert_eq!(
        anthropic.seen().len(),
        2,
        "the refused request never reached the provider"
    );
    let row = env.row(&trace);
    assert_eq!(row["status"], "rate_limited");
    assert_eq!(row["error"], message.as_str());
    assert_eq!(row["cost_microdollars"], serde_json::Value::Null);
    let rejections = env.wait_events(
        &format!("trace_id = '{}' AND kind = 'rate_limit.rejected'", trace.id),
        1,
    );
    assert_eq!(rejections[0]["attributes"]["budget"], "daily-spend");
    assert_eq!(rejections[0]["subject"], "ai/claude");

    // Bob has a budget of his own.
    assert_eq!(
        env.chat(&bob, ask("claude", "hi"), &Trace::new()).status,
        200
    );

    // Carol's token budget: 240 tokens used, over her 200, so the next is refused.
    assert_eq!(
        env.chat(&carol, ask("claude", "hi"), &Trace::new()).status,
        200
    );
    let refused = env.chat(&carol, ask("claude", "hi"), &Trace::new());
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(
        refused.body.contains(
            "budget `carol-tokens` is spent for user `carol`: 240 tokens of 200 tokens this month"
        ),
        "{refused:?}"
    );

    // The counters are in PostgreSQL.
    let usage = env.db.query(
        "SELECT subject, cost_microdollars, tokens, requests FROM ai_budget_usage
         WHERE budget = 'daily-spend' ORDER BY subject",
    );
    let usage: Vec<(String, i64, i64, i64)> = usage
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        usage,
        [
            ("alice".to_owned(), 2400, 480, 2),
            ("bob".to_owned(), 1200, 240, 1),
            ("carol".to_owned(), 1200, 240, 1),
        ]
    );

    // A restart keeps them.
    let status = env.warden.sigterm();
    assert!(status.success(), "{}", env.warden.log());
    env.warden = env.profile.start();
    // A new port is a new issuer URL: a fresh token for the same user.
    let alice = env.token("alice", "ai:chat");
    let refused = env.chat(&alice, ask("claude", "hi"), &Trace::new());
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(
        refused.body.contains("budget `daily-spend` is spent"),
        "{refused:?}"
    );
    assert_eq!(anthropic.seen().len(), 4);
}
