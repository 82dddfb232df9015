//! `POST /v1/responses` (OpenAI's Responses API) through `warden serve`: relayed to an
//! `openai` provider's `/responses` as sent (only `model` replaced, Warden's key, never the
//! client's token), answered byte for byte and event for event, and recorded like chat —
//! the exact `ai_requests` row for a complete answer, a stream, an answer cut short by
//! its token limit, a failed response (complete and streamed), a provider's 429 and a
//! client that goes away mid-stream. Refused with a clear 400: a model whose provider
//! cannot serve the API (nothing reaches that provider) and `background: true`.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider, Reply};
use super::{Env, Trace, WAIT, sse_events, stream_then_hang_up};

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
    let anthropic = FakeProvider::start(|_| fake::json_reply(json!({})));
    let key = "sk-responses-test-key";
    let env = Env::start(
        json!({
            "providers": {
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url),
                           "api_key_secret": "openai_key"},
                "claude": {"kind": "anthropic", "base_url": anthropic.url},
            },
            "models": {
                "gpt": {"provider": "openai", "model": "gpt-test"},
                "sonnet": {"provider": "claude", "model": "claude-test"},
            },
            "prices": {"gpt-test": {"input": 2.5, "output": 10, "cache_read": 1.25}},
        }),
        &[("openai_key", key)],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");
    let post = |body: &Value, trace: &Trace| {
        env.post(
            "/v1/responses",
            &token,
            body,
            &[("traceparent", &trace.header)],
        )
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
    assert!(
        response
            .header("traceparent")
            .is_some_and(|t| t.contains(&trace.id)),
        "{response:?}"
    );
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
    let decisions = env.wait_events(
        &format!("trace_id = '{}' AND kind = 'permission.decision'", trace.id),
        1,
    );
    assert_eq!(decisions[0]["subject"], "ai/gpt");
    assert_eq!(decisions[0]["decision"], "allow");
    assert_eq!(decisions[0]["attributes"]["action"], "ai/responses");

    // Streamed: the provider's events, each as it sent it.
    let trace = Trace::new();
    let response = post(&request("gpt", "hi", true), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let Reply::Events { events, .. } = scripted(&openai.last()) else {
        panic!("the stand-in streams this request");
    };
    assert_eq!(response.body, events.concat(), "relayed event for event");
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
    assert!(
        response.body.contains("response.incomplete"),
        "{}",
        response.body
    );
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
    assert!(
        response.body.contains("response.failed"),
        "{}",
        response.body
    );
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

    // Refused, and nothing sent: a model whose provider does not serve the API …
    let requests_so_far = openai.seen().len();
    let trace = Trace::new();
    let response = post(&request("sonnet", "hi", false), &trace);
    assert_eq!(response.status, 400, "{response:?}");
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("relayed to providers that serve it")
            && message.contains("/v1/chat/completions or /v1/messages"),
        "{message}"
    );
    assert!(anthropic.seen().is_empty(), "{:?}", anthropic.seen());
    let row = env.row(&trace);
    assert_eq!(
        (&row["status"], &row["provider"]),
        (&json!("error"), &json!("claude"))
    );

    // … and a background response, whose usage Warden could never see.
    let mut background = request("gpt", "hi", false);
    background["background"] = json!(true);
    let response = post(&background, &Trace::new());
    assert_eq!(response.status, 400, "{response:?}");
    assert!(
        response
            .body
            .contains("`background: true` is not supported"),
        "{response:?}"
    );
    assert_eq!(
        openai.seen().len(),
        requests_so_far,
        "nothing more reached the provider"
    );
}
