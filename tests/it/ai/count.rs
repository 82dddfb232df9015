//! Token counting through `warden serve`: `POST /v1/messages/count_tokens` (Claude Code)
//! and `models/{model}:countTokens` (Gemini CLI), each counted by the provider the model
//! routes to — relayed in its own format, translated into the other — with the provider's
//! key, the permission decision on the request's trace and no `ai_requests` row; a
//! provider that cannot count (404, nothing sent), a caller without the scope, a spent
//! budget (counts still answered), a provider's error and an unreadable count.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider, Reply, Seen};
use super::{Env, Trace};
use crate::support::http::Response;

/// `POST /v1/messages/count_tokens` the way Claude Code sends it.
fn count_anthropic(env: &Env, token: &str, body: &Value, trace: &Trace) -> Response {
    env.anthropic("/v1/messages/count_tokens", token, body, trace)
}

/// An Anthropic provider that counts 10 tokens per message (and answers chat as
/// `fake::claude`); `"overloaded"` as the first message gets a 529, `"odd"` a count
/// without its number.
fn anthropic(seen: &Seen) -> Reply {
    if !seen.path.ends_with("/count_tokens") {
        return fake::claude(seen);
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

    // An OpenAI-format provider cannot count: 404 in the client's shape (Claude Code then
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
    assert!(openai.seen().is_empty(), "{:?}", openai.seen());

    // Without the model's scope: 403, the denial recorded, the provider not asked.
    let counted_so_far = claude.seen().len();
    let trace = Trace::new();
    request["model"] = json!("opus");
    let response = count_anthropic(&env, &token, &request, &trace);
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(env.decision(&trace)["decision"], "deny");
    assert_eq!(claude.seen().len(), counted_so_far);

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
    let response = count_anthropic(&env, &bob, &chat, &Trace::new());
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({"input_tokens": 10}));

    // Counts leave decisions, never rows: the only rows are bob's two chat requests.
    let rows = env.wait_rows("true", 2);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|row| row["user_id"] == "bob"), "{rows:?}");
}
