//! Token counting through `warden serve`: `POST /v1/messages/count_tokens` (Claude Code)
//! and `models/{model}:countTokens` (Gemini CLI), each counted by the provider the model
//! routes to — relayed in its own format, translated into the other — with the provider's
//! key, the permission decision on the request's trace and no `ai_requests` row; a
//! provider that cannot count (404, nothing sent, no rate spent), a caller without the
//! scope, a spent budget (counts still answered), the rate limit, a provider's error and
//! an unreadable count.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider, Reply, Seen};
use super::{Env, Trace};
use crate::support::http::Response;

/// `POST /v1/messages/count_tokens` the way Claude Code sends it.
fn count_anthropic(env: &Env, token: &str, body: &Value, trace: &Trace) -> Response {
    env.anthropic("/v1/messages/count_tokens", token, body, trace)
}

/// The fields Anthropic's `count_tokens` accepts; it refuses any other.
const COUNT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
];

/// An Anthropic provider that counts 10 tokens per message (and answers chat as
/// `fake::claude`); `"overloaded"` as the first message gets a 529, `"odd"` a count
/// without its number.
fn anthropic(seen: &Seen) -> Reply {
    if !seen.path.ends_with("/count_tokens") {
        return fake::claude(seen);
    }
    let fields = seen
        .body
        .as_object()
        .into_iter()
        .flat_map(|body| body.keys());
    if let Some(extra) = fields
        .into_iter()
        .find(|f| !COUNT_FIELDS.contains(&f.as_str()))
    {
        return Reply::Json {
            status: 400,
            headers: vec![],
            body: json!({"type": "error", "error": {"type": "invalid_request_error",
                         "message": format!("{extra}: Extra inputs are not permitted")}}),
        };
    }
    match seen.body["messages"][0]["content"].as_str() {
        Some("overloaded") => Reply::Json {
            status: 529,
            headers: vec![("retry-after", "3".into())],
            body: json!({"type": "error",
                         "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        },
        Some("odd") => fake::json_reply(json!({"tokens": 5})),
        _ => {
            let messages = seen.body["messages"].as_array().map_or(0, Vec::len) as u64;
            fake::json_reply(json!({"input_tokens": 10 * messages}))
        }
    }
}

/// A Gemini provider that counts 7 tokens per content, with the details Google adds.
fn google(seen: &Seen) -> Reply {
    let request = seen
        .body
        .get("generateContentRequest")
        .unwrap_or(&seen.body);
    let contents = request["contents"].as_array().map_or(0, Vec::len) as u64;
    fake::json_reply(json!({
        "totalTokens": 7 * contents,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7 * contents}],
    }))
}

#[test]
fn counts_are_governed_and_answered_by_the_routed_provider() {
    let claude = FakeProvider::start(anthropic);
    let gemini = FakeProvider::start(google);
    let openai = FakeProvider::start(|_| fake::json_reply(json!({})));
    let env = Env::start(
        json!({
            "providers": {
                "claude": {"kind": "anthropic", "base_url": claude.url,
                           "api_key_secret": "claude_key"},
                "google": {"kind": "gemini", "base_url": format!("{}/v1beta", gemini.url),
                           "api_key_secret": "google_key"},
                "local": {"kind": "openai_compatible", "base_url": format!("{}/v1", openai.url)},
            },
            "models": {
                "sonnet": {"provider": "claude", "model": "claude-test"},
                "flash": {"provider": "google", "model": "gemini-test"},
                "local": {"provider": "local", "model": "llama"},
                "opus": {"provider": "claude", "model": "claude-big", "scopes": ["ai:premium"]},
                "local-big": {"provider": "local", "model": "llama-big", "scopes": ["ai:premium"]},
            },
            "prices": {"claude-test": {"input": 3, "output": 15}},
            "budgets": [{"name": "tiny", "per": "day", "user": "bob", "max_tokens": 1}],
        }),
        &[
            ("claude_key", "sk-ant-count-test"),
            ("google_key", "goog-count-test"),
        ],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");
    let conversation = json!([
        {"role": "user", "content": "What is in this repository?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "user", "content": "Go on."},
    ]);

    // Claude Code to an Anthropic provider: relayed with the upstream model, the body
    // otherwise as sent (thinking included: it changes the count), the client's
    // Anthropic headers and Warden's key; the answer as the provider gave it.
    let trace = Trace::new();
    let request = json!({
        "model": "sonnet",
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": conversation,
        "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    });
    let response = count_anthropic(&env, &token, &request, &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({"input_tokens": 30}));
    trace.assert_answered(&response);
    let seen = claude.last();
    assert_eq!(seen.path, "/v1/messages/count_tokens");
    let mut expected = request.clone();
    expected["model"] = json!("claude-test");
    assert_eq!(seen.body, expected);
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-count-test"));
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    let decision = env.decision(&trace);
    assert_eq!(
        (&decision["subject"], &decision["decision"]),
        (&json!("ai/sonnet"), &json!("allow")),
        "{decision}"
    );
    assert_eq!(decision["attributes"]["action"], "ai/count_tokens");
    assert_eq!(decision["actor_id"], "alice", "{decision}");

    // Claude Code to a model on a Gemini provider: counted by Gemini, in its format.
    let trace = Trace::new();
    let mut request = json!({"model": "flash", "system": "Be brief.", "messages": conversation});
    let response = count_anthropic(&env, &token, &request, &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({"input_tokens": 21}));
    let seen = gemini.last();
    assert_eq!(seen.path, "/v1beta/models/gemini-test:countTokens");
    assert_eq!(seen.header("x-goog-api-key"), Some("goog-count-test"));
    let sent = &seen.body["generateContentRequest"];
    assert_eq!(sent["model"], "models/gemini-test", "{}", seen.body);
    assert_eq!(sent["contents"][1]["role"], "model");
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert!(seen.header("anthropic-beta").is_none(), "{seen:?}");

    // Gemini CLI to a Gemini provider: relayed as sent, answered as Google answered.
    let contents = json!([
        {"role": "user", "parts": [{"text": "Summarise the diff."}]},
        {"role": "model", "parts": [{"text": "It renames a module."}]},
    ]);
    let trace = Trace::new();
    let body = json!({"contents": contents});
    let response = env.generate("/v1beta/models/flash:countTokens", &token, &body, &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.json(),
        json!({"totalTokens": 14,
               "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 14}]})
    );
    assert_eq!(gemini.last().body, body);
    assert_eq!(
        env.decision(&trace)["attributes"]["action"],
        "ai/countTokens"
    );
    // The whole-request form names the model again, in the body: the upstream one goes.
    let whole = json!({"generateContentRequest": {"model": "models/flash", "contents": contents}});
    let response = env.generate(
        "/v1beta/models/flash:countTokens",
        &token,
        &whole,
        &Trace::new(),
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        gemini.last().body["generateContentRequest"]["model"],
        "models/gemini-test"
    );

    // Gemini CLI to a model on an Anthropic provider, the whole-request form: counted
    // by Anthropic, without the generation limits its count endpoint refuses.
    let trace = Trace::new();
    let body = json!({"generateContentRequest": {
        "model": "models/sonnet",
        "contents": contents,
        "generationConfig": {"maxOutputTokens": 100, "temperature": 0.2},
    }});
    let response = env.generate("/v1beta/models/sonnet:countTokens", &token, &body, &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({"totalTokens": 20}));
    let seen = claude.last();
    assert_eq!(
        seen.body,
        json!({"model": "claude-test", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Summarise the diff."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "It renames a module."}]},
        ]})
    );

    // An `openai_compatible` provider cannot count: 404 in the client's shape (Claude Code then
    // estimates locally), after the decision, with nothing sent.
    let trace = Trace::new();
    request["model"] = json!("local");
    let response = count_anthropic(&env, &token, &request, &trace);
    assert_eq!(response.status, 404, "{response:?}");
    let error = response.json();
    assert_eq!(error["error"]["type"], "not_found_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot count tokens")),
        "{error}"
    );
    assert_eq!(env.decision(&trace)["decision"], "allow");
    let response = env.generate(
        "/v1beta/models/local:countTokens",
        &token,
        &json!({"contents": contents}),
        &Trace::new(),
    );
    assert_eq!(response.status, 404, "{response:?}");
    assert_eq!(
        response.json()["error"]["status"],
        "NOT_FOUND",
        "{response:?}"
    );
    assert!(openai.seen().is_empty(), "{:?}", openai.seen());
    // Who is asking comes before what is asked.
    let response = env.generate(
        "/v1beta/models/local:countTokens",
        "wrong-token",
        &json!({"contents": contents}),
        &Trace::new(),
    );
    assert_eq!(response.status, 401, "{response:?}");

    // Without the model's scope: 403, the denial recorded, the provider not asked.
    let counted_so_far = claude.seen().len();
    let trace = Trace::new();
    request["model"] = json!("opus");
    let response = count_anthropic(&env, &token, &request, &trace);
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(env.decision(&trace)["decision"], "deny");
    assert_eq!(claude.seen().len(), counted_so_far);
    // Nor does a model's provider show through to who may not use it.
    request["model"] = json!("local-big");
    let response = count_anthropic(&env, &token, &request, &Trace::new());
    assert_eq!(response.status, 403, "{response:?}");
    assert!(!response.body.contains("cannot count"), "{response:?}");

    // The provider's error passed on with its status and Retry-After; an answer without
    // a count is a bad gateway, not a number made up.
    request["model"] = json!("sonnet");
    request["messages"] = json!([{"role": "user", "content": "overloaded"}]);
    let response = count_anthropic(&env, &token, &request, &Trace::new());
    assert_eq!(response.status, 529, "{response:?}");
    assert_eq!(response.header("retry-after"), Some("3"));
    request["messages"] = json!([{"role": "user", "content": "odd"}]);
    let response = count_anthropic(&env, &token, &request, &Trace::new());
    assert_eq!(response.status, 502, "{response:?}");
    assert!(response.body.contains("no `input_tokens`"), "{response:?}");

    // A spent budget refuses bob's next request but not his counts: they spend nothing.
    let bob = env.token("bob", "ai:chat");
    let chat = json!({"model": "sonnet", "max_tokens": 50,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let trace = Trace::new();
    assert_eq!(env.messages(&bob, chat.clone(), &trace).status, 200);
    let spent = env.row(&trace);
    assert_eq!(spent["input_tokens"], 9, "{spent}");
    let refused = env.messages(&bob, chat.clone(), &Trace::new());
    assert_eq!(refused.status, 429, "{refused:?}");
    let count = json!({"model": "sonnet", "messages": chat["messages"]});
    let response = count_anthropic(&env, &bob, &count, &Trace::new());
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({"input_tokens": 10}));

    // Counts leave decisions, never rows: the only rows are bob's two chat requests.
    let rows = env.wait_rows("true", 2);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|row| row["user_id"] == "bob"), "{rows:?}");
}

#[test]
fn counts_spend_the_ai_rate_only_when_they_can_be_made() {
    let claude = FakeProvider::start(anthropic);
    let openai = FakeProvider::start(|_| fake::json_reply(json!({})));
    let env = Env::start(
        json!({
            "providers": {
                "claude": {"kind": "anthropic", "base_url": claude.url},
                "local": {"kind": "openai_compatible", "base_url": format!("{}/v1", openai.url)},
            },
            "models": {
                "sonnet": {"provider": "claude", "model": "claude-test"},
                "local": {"provider": "local", "model": "llama"},
            },
        }),
        &[],
        |p| {
            p.set("rate_limits.ai", "1/h");
        },
    );
    let token = env.token("alice", "ai:chat");
    let count = |model: &str, trace: &Trace| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
        count_anthropic(&env, &token, &body, trace)
    };
    // Counts the provider cannot make spend nothing, however many.
    for _ in 0..3 {
        assert_eq!(count("local", &Trace::new()).status, 404);
    }
    assert_eq!(count("sonnet", &Trace::new()).status, 200);
    // The hour's one request is spent: the next count is refused, and recorded.
    let trace = Trace::new();
    let refused = count("sonnet", &trace);
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    let condition = format!("trace_id = '{}' AND kind = 'rate_limit.rejected'", trace.id);
    let rejected = env.wait_events(&condition, 1);
    assert_eq!(rejected[0]["subject"], "ai/sonnet", "{rejected:?}");
    assert_eq!(
        claude.seen().len(),
        1,
        "the refused count reached the provider"
    );
}

/// OpenAI's own API counting through `responses/input_tokens`: 5 tokens per input item
/// (1 for a string input).
fn gpt(seen: &Seen) -> Reply {
    assert_eq!(seen.path, "/v1/responses/input_tokens", "{seen:?}");
    let items = seen.body["input"].as_array().map_or(1, Vec::len) as u64;
    fake::json_reply(json!({"object": "response.input_tokens", "input_tokens": 5 * items}))
}

#[test]
fn openai_models_are_counted_through_the_responses_api() {
    let claude = FakeProvider::start(anthropic);
    let openai = FakeProvider::start(gpt);
    let compatible = FakeProvider::start(|_| fake::json_reply(json!({})));
    let env = Env::start(
        json!({
            "providers": {
                "claude": {"kind": "anthropic", "base_url": claude.url},
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url),
                           "api_key_secret": "openai_key"},
                "local": {"kind": "openai_compatible",
                          "base_url": format!("{}/v1", compatible.url)},
            },
            "models": {
                "sonnet": {"provider": "claude", "model": "claude-test"},
                "gpt": {"provider": "openai", "model": "gpt-test"},
                "local": {"provider": "local", "model": "llama"},
            },
        }),
        &[("openai_key", "sk-openai-count-test")],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");

    // Claude Code on a GPT model: its count goes to OpenAI as Responses input items.
    let body = json!({
        "model": "gpt",
        "system": "You are Claude Code.",
        "messages": [
            {"role": "user", "content": "Read main.rs"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "main.rs"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "fn main() {}"}]},
        ],
        "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
    });
    let response = count_anthropic(&env, &token, &body, &Trace::new());
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({"input_tokens": 15}));
    let seen = openai.last();
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-openai-count-test")
    );
    assert_eq!(seen.body["model"], "gpt-test");
    assert_eq!(seen.body["instructions"], "You are Claude Code.");
    let kinds: Vec<&str> = seen.body["input"]
        .as_array()
        .expect("input items")
        .iter()
        .map(|item| item["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["message", "function_call", "function_call_output"]);
    assert_eq!(seen.body["tools"][0]["name"], "Read");

    // A Responses client: relayed to OpenAI as written (the model replaced) ...
    let trace = Trace::new();
    let request = json!({"model": "gpt", "input": "Hi", "reasoning": {"effort": "low"}});
    let response = env.post(
        "/v1/responses/input_tokens",
        &token,
        &request,
        &[("traceparent", &trace.header)],
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.json(),
        json!({"object": "response.input_tokens", "input_tokens": 5})
    );
    assert_eq!(
        openai.last().body,
        json!({"model": "gpt-test", "input": "Hi", "reasoning": {"effort": "low"}})
    );
    let decision = env.decision(&trace);
    assert_eq!(
        decision["attributes"]["action"],
        "ai/responses.input_tokens"
    );

    // ... translated for an Anthropic model ...
    let request = json!({"model": "sonnet", "instructions": "Be brief.", "input": "Hi"});
    let response = env.post("/v1/responses/input_tokens", &token, &request, &[]);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.json(),
        json!({"object": "response.input_tokens", "input_tokens": 10})
    );
    assert_eq!(claude.last().body["system"], "Be brief.");

    // ... and refused in OpenAI's shape where nothing can count.
    let request = json!({"model": "local", "input": "Hi"});
    let response = env.post("/v1/responses/input_tokens", &token, &request, &[]);
    assert_eq!(response.status, 404, "{response:?}");
    assert_eq!(response.json()["error"]["type"], "not_found_error");
    assert!(compatible.seen().is_empty(), "{:?}", compatible.seen());
}
