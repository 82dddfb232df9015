//! `POST /v1/responses` (OpenAI's Responses API) through `warden serve`.
//!
//! Relayed to an `openai` provider's `/responses` as sent (only `model` replaced, Warden's
//! key, never the client's token), answered byte for byte and event for event, and
//! recorded like chat — the exact `ai_requests` row for a complete answer, a stream, an
//! answer cut short by its token limit, a failed response (complete and streamed), a
//! provider's 429 and a client that goes away mid-stream; `background: true` refused.
//!
//! Translated for an `anthropic` provider: a tool round trip complete, text and a tool
//! call streamed, each as a Responses client reads it, with its row; the provider-side
//! conversation state (`previous_response_id`) refused by name.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider, Reply};
use super::{Env, Trace, WAIT, responses_stream_text, sse_events, stream_then_hang_up};

const MODEL: &str = "gpt-test-2026";

/// Answers by the request's `input`.
fn scripted(seen: &fake::Seen) -> Reply {
    let input = seen.body["input"].as_str().unwrap_or_default();
    let usage = fake::responses_usage(120, 20, 30);
    match (input, seen.streaming()) {
        ("slow down", _) => Reply::Json {
            status: 429,
            headers: vec![("retry-after", "9".into())],
            body: json!({"error": {"message": "rate limit reached", "type": "rate_limit_error"}}),
        },
        ("fail", false) => {
            let mut answer = fake::responses_answer(MODEL, "", "failed", usage);
            answer["error"] = json!({"code": "server_error", "message": "the model overheated"});
            fake::json_reply(answer)
        }
        ("fail", true) => fake::responses_stream(MODEL, &["par"], Some("response.failed"), usage),
        ("long", true) => fake::responses_stream(
            MODEL,
            &["cut ", "short"],
            Some("response.incomplete"),
            fake::responses_usage(10, 0, 5),
        ),
        ("hang", true) => fake::responses_stream(MODEL, &["first words"], None, Value::Null),
        (_, true) => {
            fake::responses_stream(MODEL, &["Hel", "lo"], Some("response.completed"), usage)
        }
        (_, false) => fake::json_reply(fake::responses_answer(MODEL, "Hello", "completed", usage)),
    }
}

fn request(model: &str, input: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "input": input,
        "instructions": "Be brief.",
        "previous_response_id": "resp_earlier",
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
        "stream": stream,
    })
}

#[test]
fn responses_requests_are_relayed_and_recorded_like_chat() {
    let openai = FakeProvider::start(scripted);
    let key = "sk-responses-test-key";
    let env = Env::start(
        json!({
            "providers": {
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url),
                           "api_key_secret": "openai_key"},
            },
            "models": {"gpt": {"provider": "openai", "model": "gpt-test"}},
            "prices": {"gpt-test": {"input": 2.5, "output": 10, "cache_read": 1.25}},
        }),
        &[("openai_key", key)],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");
    let post = |body: &Value, trace: &Trace| env.responses(&token, body, trace);
    // A stream relayed event for event: the stand-in's own events for the request.
    let relayed_as_sent = |body: &str| {
        let Reply::Events { events, .. } = scripted(&openai.last()) else {
            panic!("the stand-in streams this request");
        };
        assert_eq!(body, events.concat(), "relayed event for event");
    };

    // Complete: the provider's answer byte for byte; the request as sent, but for `model`.
    let trace = Trace::new();
    let sent = request("gpt", "hi", false);
    let response = post(&sent, &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.json(),
        fake::responses_answer(
            MODEL,
            "Hello",
            "completed",
            fake::responses_usage(120, 20, 30)
        )
    );
    trace.assert_answered(&response);
    let seen = openai.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/responses")
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {key}").as_str()),
        "Warden's key, not the client's token"
    );
    assert!(
        !seen.raw.contains(&token),
        "the client's token reached the provider"
    );
    let mut expected = sent.clone();
    expected["model"] = json!("gpt-test");
    assert_eq!(seen.body, expected);
    let row = env.row(&trace);
    assert_eq!(row["user_id"], "alice", "{row}");
    assert_eq!(row["provider"], "openai");
    assert_eq!(row["model"], MODEL, "the model that answered");
    assert_eq!(row["requested_model"], "gpt");
    assert_eq!(row["input_tokens"], 100, "input less the cached tokens");
    assert_eq!(row["cache_read_tokens"], 20);
    assert_eq!(row["output_tokens"], 30);
    // 100 × $2.50 + 20 × $1.25 + 30 × $10 per million = 250 + 25 + 300 µ$.
    assert_eq!(row["cost_microdollars"], 575);
    assert_eq!(row["status"], "success");
    assert_eq!(row["streaming"], false);
    let decision = env.decision(&trace);
    assert_eq!(decision["subject"], "ai/gpt");
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["attributes"]["action"], "ai/responses");

    // Streamed: the provider's events, each as it sent it.
    let trace = Trace::new();
    let response = post(&request("gpt", "hi", true), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    relayed_as_sent(&response.body);
    let names: Vec<Option<String>> = sse_events(&response.body)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names.last(), Some(&Some("response.completed".to_owned())));
    let row = env.row(&trace);
    assert_eq!(row["status"], "success", "{row}");
    assert_eq!(row["streaming"], true);
    assert_eq!(row["model"], MODEL);
    assert_eq!(
        (
            &row["input_tokens"],
            &row["cache_read_tokens"],
            &row["output_tokens"]
        ),
        (&json!(100), &json!(20), &json!(30))
    );
    assert_eq!(row["cost_microdollars"], 575);
    assert!(row["ttft_ms"].is_i64(), "time to the first text: {row}");

    // Cut short by the token limit: a complete answer, recorded with its usage.
    let trace = Trace::new();
    let response = post(&request("gpt", "long", true), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    relayed_as_sent(&response.body);
    assert!(response.body.contains("response.incomplete"));
    let row = env.row(&trace);
    assert_eq!(row["status"], "success", "{row}");
    assert_eq!(
        (&row["input_tokens"], &row["output_tokens"]),
        (&json!(10), &json!(5))
    );

    // A response that failed, streamed: the client sees the provider's event; the row is
    // an error with the provider's reason and the tokens it had used.
    let trace = Trace::new();
    let response = post(&request("gpt", "fail", true), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    relayed_as_sent(&response.body);
    assert!(response.body.contains("response.failed"));
    let row = env.row(&trace);
    assert_eq!(row["status"], "error", "{row}");
    assert!(
        row["error"]
            .as_str()
            .is_some_and(|e| e.contains("provider `openai` reported: the model overheated")),
        "{row}"
    );
    assert_eq!(row["output_tokens"], 30);

    // … and complete: passed on as the provider sent it, recorded as an error.
    let trace = Trace::new();
    let response = post(&request("gpt", "fail", false), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["status"], "failed");
    let row = env.row(&trace);
    assert_eq!(row["status"], "error", "{row}");
    assert!(
        row["error"]
            .as_str()
            .is_some_and(|e| e.contains("the model overheated")),
        "{row}"
    );
    assert_eq!(
        row["cost_microdollars"], 575,
        "what the failed attempt used"
    );

    // The provider's 429 passes back with its Retry-After, in OpenAI's error shape.
    let trace = Trace::new();
    let response = post(&request("gpt", "slow down", false), &trace);
    assert_eq!(response.status, 429, "{response:?}");
    assert_eq!(response.header("retry-after"), Some("9"));
    assert!(
        response.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rate limit reached")),
        "{response:?}"
    );
    assert_eq!(env.row(&trace)["status"], "error");

    // A client that goes away mid-stream: the upstream connection is closed, and the row
    // says the usage is unknown (the Responses API reports it only at the end).
    let trace = Trace::new();
    let auth = format!("Bearer {token}");
    stream_then_hang_up(
        &env.warden,
        "/v1/responses",
        &[("Authorization", &auth), ("traceparent", &trace.header)],
        &request("gpt", "hang", true),
        "first words",
    );
    assert!(
        openai.wait_for_peer_closes(1, WAIT),
        "Warden never closed the upstream stream after the client left"
    );
    let row = env.row(&trace);
    assert_eq!(row["status"], "cancelled", "{row}");
    assert_eq!(row["input_tokens"], Value::Null);
    assert!(row["ttft_ms"].is_i64(), "{row}");

    // A tool the provider would run itself (here a remote MCP server it would call) is
    // refused unless ai.provider_tools allows it.
    let requests_so_far = openai.seen().len();
    let mut hosted = request("gpt", "hi", false);
    hosted["tools"] =
        json!([{"type": "mcp", "server_label": "x", "server_url": "https://example.com/mcp"}]);
    let response = post(&hosted, &Trace::new());
    assert_eq!(response.status, 400, "{response:?}");
    assert!(
        response
            .body
            .contains("tools[0] of type `mcp` would run at the provider"),
        "{response:?}"
    );

    // A background response, whose usage Warden could never see, is refused.
    let mut background = request("gpt", "hi", false);
    background["background"] = json!(true);
    let trace = Trace::new();
    let response = post(&background, &trace);
    assert_eq!(response.status, 400, "{response:?}");
    assert!(
        response
            .body
            .contains("`background: true` is not supported"),
        "{response:?}"
    );
    // After the permission check: its decision and an error row, like any refusal.
    assert_eq!(env.row(&trace)["status"], "error");
    let decision = env.decision(&trace);
    assert_eq!(decision["decision"], "allow");
    // A caller who may not use the model is told only that.
    let outsider = env.token("mallory", "profile");
    let response = env.post("/v1/responses", &outsider, &background, &[]);
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(
        openai.seen().len(),
        requests_so_far,
        "nothing more reached the provider"
    );
    // `background: false` is the default, and relayed as sent.
    background["background"] = json!(false);
    let response = post(&background, &Trace::new());
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(openai.last().body["background"], false);
}

#[test]
fn responses_clients_are_served_by_an_anthropic_provider() {
    let provider = FakeProvider::start(fake::claude);
    let chat_only = FakeProvider::start(|_| {
        fake::json_reply(fake::openai_answer("llama-test", "From chat", 7, 3, 0))
    });
    let env = Env::start(
        json!({
            "providers": {
                "claude": {"kind": "anthropic", "base_url": provider.url,
                           "api_key_secret": "anthropic_key"},
                "local": {"kind": "openai_compatible", "base_url": format!("{}/v1", chat_only.url),
                          "responses": "translate"},
            },
            "models": {
                "sonnet": {"provider": "claude", "model": "claude-test", "default_max_tokens": 64000},
                "llama": {"provider": "local", "model": "llama-test"},
            },
            "prices": {"claude-test": {"input": 3, "output": 15}},
        }),
        &[("anthropic_key", "sk-ant-responses-test")],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");
    let post = |body: &Value, trace: &Trace| env.responses(&token, body, trace);
    let tools = json!([{"type": "function", "name": "weather", "description": "Weather by city",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);

    // A tool round trip, complete, the way Codex sends one.
    let trace = Trace::new();
    let response = post(
        &json!({
            "model": "sonnet",
            "instructions": "Be brief.",
            "input": [
                {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "weather",
                 "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
                {"role": "user", "content": "And tomorrow?"},
            ],
            "tools": tools,
            "max_output_tokens": 100,
            "store": false,
            "reasoning": {"effort": "low"},
        }),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let sent = provider.last();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-responses-test"));
    assert_eq!(sent.body["model"], "claude-test");
    assert_eq!(sent.body["system"], "Be brief.");
    assert_eq!(sent.body["max_tokens"], 100);
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "rain"},
                {"type": "text", "text": "And tomorrow?"}]},
        ])
    );
    assert_eq!(sent.body["tools"][0]["name"], "weather");
    assert_eq!(
        sent.body["tools"][0]["input_schema"],
        tools[0]["parameters"]
    );
    let answer = response.json();
    assert_eq!(answer["object"], "response", "{answer}");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["model"], "claude-test");
    assert_eq!(answer["output"][0]["type"], "message");
    assert_eq!(answer["output"][0]["content"][0]["text"], "Let me check.");
    assert_eq!(answer["output"][1]["type"], "function_call");
    assert_eq!(answer["output"][1]["call_id"], "toolu_1");
    assert_eq!(answer["output"][1]["name"], "weather");
    assert_eq!(
        serde_json::from_str::<Value>(answer["output"][1]["arguments"].as_str().unwrap_or("")).ok(),
        Some(json!({"city": "Oslo"}))
    );
    assert_eq!(
        (
            &answer["usage"]["input_tokens"],
            &answer["usage"]["output_tokens"]
        ),
        (&json!(60), &json!(20))
    );
    let row = env.row(&trace);
    assert_eq!(
        (&row["provider"], &row["status"]),
        (&json!("claude"), &json!("success"))
    );
    assert_eq!(
        (&row["input_tokens"], &row["output_tokens"]),
        (&json!(60), &json!(20))
    );
    // 60 × $3 + 20 × $15 per million = 180 + 300 µ$.
    assert_eq!(row["cost_microdollars"], 480);

    // Text, streamed: Responses events, ending in `response.completed` with the usage.
    let trace = Trace::new();
    let response = post(
        &json!({"model": "sonnet", "input": "Hi", "stream": true}),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let events = sse_events(&response.body);
    let names: Vec<&str> = events
        .iter()
        .filter_map(|(name, _)| name.as_deref())
        .collect();
    assert_eq!(names.first(), Some(&"response.created"), "{names:?}");
    assert_eq!(names.last(), Some(&"response.completed"), "{names:?}");
    assert_eq!(responses_stream_text(&response.body), "Hello");
    let (_, last) = &events[events.len() - 1];
    let completed: Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        "Hello"
    );
    assert_eq!(completed["response"]["usage"]["output_tokens"], 4);
    assert_eq!(
        provider.last().body["max_tokens"],
        64000,
        "the model's default_max_tokens, as the client named none"
    );
    let row = env.row(&trace);
    assert_eq!(row["streaming"], true, "{row}");
    assert_eq!(
        (&row["input_tokens"], &row["output_tokens"]),
        (&json!(9), &json!(4))
    );
    assert!(row["ttft_ms"].is_i64(), "{row}");

    // A tool call, streamed: its arguments in pieces, then whole.
    let trace = Trace::new();
    let response = post(
        &json!({"model": "sonnet", "input": "Weather?", "tools": tools, "stream": true}),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let done: Vec<Value> = sse_events(&response.body)
        .into_iter()
        .filter(|(name, _)| name.as_deref() == Some("response.function_call_arguments.done"))
        .map(|(_, data)| serde_json::from_str(&data).expect("JSON"))
        .collect();
    assert_eq!(done.len(), 1, "{}", response.body);
    assert_eq!(done[0]["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(env.row(&trace)["status"], "success");

    // An OpenAI-style server without /responses (`responses: translate`): its chat
    // completions, answered as a response.
    let trace = Trace::new();
    let response = post(&json!({"model": "llama", "input": "Hi"}), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    let seen = chat_only.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.body["messages"],
        json!([{"role": "user", "content": "Hi"}])
    );
    let answer = response.json();
    assert_eq!(answer["object"], "response", "{answer}");
    assert_eq!(answer["output"][0]["content"][0]["text"], "From chat");
    assert_eq!(
        (
            &env.row(&trace)["provider"],
            &env.row(&trace)["output_tokens"]
        ),
        (&json!("local"), &json!(3))
    );

    // Conversation state kept at a provider cannot cross over: refused by name, nothing sent.
    let requests_so_far = provider.seen().len();
    let response = post(
        &json!({"model": "sonnet", "input": "And then?", "previous_response_id": "resp_1"}),
        &Trace::new(),
    );
    assert_eq!(response.status, 400, "{response:?}");
    assert!(
        response.body.contains(
            "request field `previous_response_id` cannot be translated for a provider speaking the anthropic format"
        ),
        "{response:?}"
    );
    assert_eq!(provider.seen().len(), requests_so_far);
}
