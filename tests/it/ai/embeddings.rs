//! `POST /v1/embeddings` through `warden serve`: what the provider received (its own key,
//! the upstream model name, the client's input as sent), what the client got back, the
//! exact `ai_requests` row (input tokens, no output, cost in microdollars, user, trace)
//! and the permission decision on the same trace; a model whose provider has no
//! embeddings endpoint, a caller without the scope, a spent budget and a provider error.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider};
use super::{Env, Trace};

fn embedding_answer(model: &str, vectors: usize, prompt_tokens: u64) -> Value {
    let data: Vec<Value> = (0..vectors)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.25, -0.5, i as f64]}))
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

/// `POST /v1/embeddings` of `input` to `model` as `token`, with extra `headers`.
fn embed(
    env: &Env,
    token: &str,
    model: &str,
    input: &str,
    headers: &[(&str, &str)],
) -> crate::support::http::Response {
    env.post(
        "/v1/embeddings",
        token,
        &json!({"model": model, "input": input}),
        headers,
    )
}

#[test]
fn embeddings_are_governed_recorded_and_priced_like_chat() {
    let openai = FakeProvider::start(|seen| {
        if seen.body["input"] == "fail" {
            return fake::Reply::Json {
                status: 429,
                headers: vec![("retry-after", "7".into())],
                body: json!({"error": {"message": "slow down", "type": "rate_limit_error"}}),
            };
        }
        if seen.body["input"] == "total only" {
            // A server that reports only the total (which, for embeddings, is the input).
            return fake::json_reply(json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}],
                "model": "text-embed-test-001",
                "usage": {"total_tokens": 5},
            }));
        }
        let vectors = seen.body["input"].as_array().map_or(1, Vec::len);
        fake::json_reply(embedding_answer("text-embed-test-001", vectors, 12))
    });
    let anthropic = FakeProvider::start(|_| fake::json_reply(json!({})));
    let key = "sk-embeddings-test-key";
    let env = Env::start(
        json!({
            "providers": {
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url),
                           "api_key_secret": "openai_key"},
                "claude": {"kind": "anthropic", "base_url": anthropic.url},
            },
            "models": {
                "embed": {"provider": "openai", "model": "text-embed-test"},
                "sonnet": {"provider": "claude", "model": "claude-test"},
            },
            "prices": {"text-embed-test": {"input": "0.13", "output": 0}},
            "budgets": [{"name": "tiny", "per": "day", "user": "bob", "max_tokens": 20}],
        }),
        &[("openai_key", key)],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");

    let trace = Trace::new();
    let request =
        json!({"model": "embed", "input": ["first text", "second text"], "dimensions": 3});
    let response = env.post(
        "/v1/embeddings",
        &token,
        &request,
        &[("traceparent", &trace.header)],
    );
    assert_eq!(response.status, 200, "{response:?}");
    let answer = response.json();
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(2), "{answer}");
    assert_eq!(answer["data"][1]["embedding"], json!([0.25, -0.5, 1.0]));
    trace.assert_answered(&response);
    let seen = openai.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/embeddings")
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    assert_eq!(seen.body["model"], "text-embed-test");
    assert_eq!(seen.body["input"], request["input"]);
    assert_eq!(seen.body["dimensions"], 3);
    let row = env.row(&trace);
    assert_eq!(row["user_id"], "alice", "{row}");
    assert_eq!(row["provider"], "openai");
    assert_eq!(
        row["model"], "text-embed-test-001",
        "the model that answered"
    );
    assert_eq!(row["requested_model"], "embed");
    assert_eq!(row["input_tokens"], 12);
    assert_eq!(row["output_tokens"], 0);
    // 12 tokens × $0.13 per million = 1.56 µ$, rounded.
    assert_eq!(row["cost_microdollars"], 2);
    assert_eq!(row["status"], "success");
    assert_eq!(row["streaming"], false);
    let decision = env.decision(&trace);
    assert_eq!(decision["subject"], "ai/embed");
    assert_eq!(decision["decision"], "allow");
    assert_eq!(
        decision["attributes"]["action"], "ai/embeddings",
        "{}",
        decision
    );

    // A model whose provider has no embeddings endpoint: refused after the permission
    // check (recorded), before anything is sent.
    let trace = Trace::new();
    let refused = embed(
        &env,
        &token,
        "sonnet",
        "x",
        &[("traceparent", &trace.header)],
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no embeddings endpoint")),
        "{refused:?}"
    );
    assert!(anthropic.seen().is_empty());
    let row = env.row(&trace);
    assert_eq!(row["status"], "error", "{row}");
    assert_eq!(row["provider"], "claude");

    // A server that reports only the total: that is the input.
    let trace = Trace::new();
    let total_only = embed(
        &env,
        &token,
        "embed",
        "total only",
        &[("traceparent", &trace.header)],
    );
    assert_eq!(total_only.status, 200, "{total_only:?}");
    let row = env.row(&trace);
    assert_eq!(
        (row["input_tokens"].clone(), row["output_tokens"].clone()),
        (json!(5), json!(0))
    );
    assert_eq!(
        row["cost_microdollars"], 1,
        "5 × $0.13 per million = 0.65 µ$, rounded"
    );

    // Without the scope: 403, and the denial on the trail.
    let outsider = env.token("carol", "tools:read");
    let trace = Trace::new();
    let denied = embed(
        &env,
        &outsider,
        "embed",
        "x",
        &[("traceparent", &trace.header)],
    );
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(env.row(&trace)["status"], "denied");
    // Nor does a model's provider show through to who may not use it.
    let denied = embed(&env, &outsider, "sonnet", "x", &[]);
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(!denied.body.contains("claude"), "{denied:?}");

    // The provider's 429 comes back with its Retry-After, and the row says so.
    let trace = Trace::new();
    let limited = embed(
        &env,
        &token,
        "embed",
        "fail",
        &[("traceparent", &trace.header)],
    );
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.header("retry-after"), Some("7"));
    let row = env.row(&trace);
    assert_eq!(row["status"], "error");
    assert!(
        row["error"].as_str().is_some_and(|e| e.contains("429")),
        "{row}"
    );

    // Budgets count embedding tokens: bob's 20 tokens a day are spent after two requests.
    let bob = env.token("bob", "ai:chat");
    for _ in 0..2 {
        let ok = embed(&env, &bob, "embed", "x", &[]);
        assert_eq!(ok.status, 200, "{ok:?}");
    }
    env.wait_rows("user_id = 'bob' AND status = 'success'", 2);
    let spent = embed(&env, &bob, "embed", "x", &[]);
    assert_eq!(spent.status, 429, "{spent:?}");
    let message = spent.json()["error"]["message"]
        .as_str()
        .expect("a message")
        .to_owned();
    assert!(
        message
            .starts_with("budget `tiny` is spent for user `bob`: 24 tokens of 20 tokens this day"),
        "{message}"
    );
}
