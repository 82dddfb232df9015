//! When providers fail: their error statuses passed back (429 with its `Retry-After`, 5xx
//! as sent, a refusal of Warden's own key as 502) in the client's error shape; a provider
//! that never answers (504); a stream that breaks off (an error event); and a client that
//! goes away mid-stream — Warden closes the upstream connection and still records what
//! the provider had reported.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider, Reply};
use super::{Env, Trace, WAIT, ask, ask_anthropic, sse_json, stream_then_hang_up, streamed};

/// Answers by the first user message: `429`, `500`, `hang`, `cut`, or text.
fn scripted(seen: &fake::Seen) -> Reply {
    let text = seen.body["messages"][0]["content"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            seen.body["messages"][0]["content"][0]["text"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    match text.as_str() {
        "429" => Reply::Json {
            status: 429,
            headers: vec![("Retry-After", "7".into())],
            body: json!({"error": {"message": "Rate limit reached for requests", "type": "requests",
                                   "code": "rate_limit_exceeded"}}),
        },
        "500" => Reply::Json {
            status: 500,
            headers: Vec::new(),
            body: json!({"error": {"message": "The server had an error while processing your request."}}),
        },
        "529" => Reply::Json {
            status: 529,
            headers: Vec::new(),
            body: json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        },
        "hang" => Reply::Hang,
        "cut" => Reply::Events {
            events: vec![format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                       "choices": [{"index": 0, "delta": {"content": "par"}, "finish_reason": null}]})
            )],
            hold_open: false,
        },
        _ => fake::json_reply(fake::openai_answer("m", "ok", 1, 1, 0)),
    }
}

#[test]
fn provider_errors_pass_back_with_their_status_and_silence_times_out() {
    let openai = FakeProvider::start(scripted);
    let anthropic = FakeProvider::start(scripted);
    // A port nothing listens on.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let env = Env::start(
        json!({
            "providers": {
                "flaky": {"kind": "openai_compatible", "base_url": format!("{}/v1", openai.url), "timeout": "1s"},
                "busy": {"kind": "anthropic", "base_url": anthropic.url},
                "gone": {"kind": "openai_compatible", "base_url": format!("http://127.0.0.1:{closed_port}/v1")},
            },
            "models": {
                "flaky": {"provider": "flaky", "model": "m"},
                "busy": {"provider": "busy", "model": "claude-test"},
                "gone": {"provider": "gone", "model": "m"},
            },
        }),
        &[],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");

    // 429: status, Retry-After and message passed on, in OpenAI's error shape.
    let trace = Trace::new();
    let response = env.chat(&token, ask("flaky", "429"), &trace);
    assert_eq!(response.status, 429, "{response:?}");
    assert_eq!(response.header("retry-after"), Some("7"));
    let error = &response.json()["error"];
    assert_eq!(error["type"], "rate_limit_error");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("provider `flaky` answered 429: Rate limit reached")),
        "{error}"
    );
    let row = env.row(&trace);
    assert_eq!(row["status"], "error");
    assert!(
        row["error"].as_str().is_some_and(|e| e.contains("429")),
        "{row}"
    );
    assert_eq!(row["input_tokens"], Value::Null);

    // Streamed requests fail the same way before any event.
    let trace = Trace::new();
    let response = env.chat(&token, streamed(ask("flaky", "429"), json!({})), &trace);
    assert_eq!(response.status, 429, "{response:?}");
    assert_eq!(env.row(&trace)["streaming"], true);

    let trace = Trace::new();
    let response = env.chat(&token, ask("flaky", "500"), &trace);
    assert_eq!(response.status, 500, "{response:?}");
    assert_eq!(response.json()["error"]["type"], "api_error");
    env.row(&trace);

    // Anthropic's 529 (overloaded) reaches an Anthropic client in Anthropic's shape.
    let trace = Trace::new();
    let response = env.messages(&token, ask_anthropic("busy", "529"), &trace);
    assert_eq!(response.status, 529, "{response:?}");
    let body = response.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Overloaded"))
    );

    // A provider that never answers: 504 once its timeout passes; the row says timeout.
    let trace = Trace::new();
    let response = env.chat(&token, ask("flaky", "hang"), &trace);
    assert_eq!(response.status, 504, "{response:?}");
    assert!(
        response.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not answer within 1s (ai.providers.flaky.timeout)")),
        "{response:?}"
    );
    assert!(
        openai.wait_for_peer_closes(1, WAIT),
        "Warden gave up the connection"
    );
    assert_eq!(env.row(&trace)["status"], "timeout");

    // A stream that ends before the answer did: an error event, and an error row.
    let trace = Trace::new();
    let response = env.chat(&token, streamed(ask("flaky", "cut"), json!({})), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    let events = sse_json(&response.body);
    assert_eq!(events[0]["choices"][0]["delta"]["content"], "par");
    assert!(
        events
            .last()
            .and_then(|e| e["error"]["message"].as_str())
            .is_some_and(|m| m.contains("closed the stream before the answer was complete")),
        "{events:?}"
    );
    let row = env.row(&trace);
    assert_eq!(row["status"], "error");
    assert!(row["ttft_ms"].is_i64());

    // And a provider that cannot be reached at all: 502.
    let trace = Trace::new();
    let response = env.chat(&token, ask("gone", "hello"), &trace);
    assert_eq!(response.status, 502, "{response:?}");
    assert!(
        response.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("provider `gone` cannot be reached")),
        "{response:?}"
    );
    assert_eq!(env.row(&trace)["status"], "error");
}

#[test]
fn a_client_that_goes_away_mid_stream_closes_the_upstream_and_leaves_its_row() {
    let anthropic = FakeProvider::start(|_| {
        fake::anthropic_stream(
            "claude-test",
            &["one ", "two ", "three"],
            json!({"input_tokens": 30, "output_tokens": 1}),
            json!({"output_tokens": 3}),
            Some(2),
        )
    });
    let openai = FakeProvider::start(|_| Reply::Events {
        events: vec![format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-test",
                   "choices": [{"index": 0, "delta": {"content": "first words"}, "finish_reason": null}]})
        )],
        hold_open: true,
    });
    let env = Env::start(
        json!({
            "providers": {
                "anthropic": {"kind": "anthropic", "base_url": anthropic.url},
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url)},
            },
            "models": {
                "claude": {"provider": "anthropic", "model": "claude-test"},
                "gpt": {"provider": "openai", "model": "gpt-test"},
            },
            "prices": {
                "claude-test": {"input": 3, "output": 15},
                "gpt-test": {"input": 2.5, "output": 10},
            },
        }),
        &[],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");

    // Anthropic reports input tokens at the start: they are recorded.
    let trace = Trace::new();
    stream_then_hang_up(
        &env.warden,
        "/v1/messages",
        &[("x-api-key", &token), ("traceparent", &trace.header)],
        &streamed(ask_anthropic("claude", "count"), json!({})),
        "two ",
    );
    assert!(
        anthropic.wait_for_peer_closes(1, WAIT),
        "Warden never closed the upstream stream after the client left"
    );
    let row = env.row(&trace);
    assert_eq!(row["status"], "cancelled", "{row}");
    assert_eq!(row["input_tokens"], 30);
    assert_eq!(row["output_tokens"], 1, "the provider's last report");
    assert_eq!(row["cost_microdollars"], 30 * 3 + 15);
    assert!(row["ttft_ms"].is_i64());
    assert!(
        row["error"].as_str().is_some_and(
            |e| e.contains("the client went away") && e.contains("output may be undercounted")
        ),
        "{row}"
    );

    // OpenAI reports usage only at the end: the row says the usage is unknown.
    let trace = Trace::new();
    let auth = format!("Bearer {token}");
    stream_then_hang_up(
        &env.warden,
        "/v1/chat/completions",
        &[("Authorization", &auth), ("traceparent", &trace.header)],
        &streamed(ask("gpt", "count"), json!({})),
        "first words",
    );
    assert!(openai.wait_for_peer_closes(1, WAIT));
    let row = env.row(&trace);
    assert_eq!(row["status"], "cancelled");
    assert_eq!(row["input_tokens"], Value::Null);
    assert_eq!(row["cost_microdollars"], Value::Null);
    assert!(
        row["error"]
            .as_str()
            .is_some_and(|e| e.contains("reported no usage yet, so tokens and cost are unknown")),
        "{row}"
    );
}

#[test]
fn answers_and_events_over_the_providers_limits_are_refused_naming_the_key() {
    let big = "b".repeat(2000);
    let reply_big = big.clone();
    let provider = FakeProvider::start(move |seen| {
        let text = if seen.body["messages"][0]["content"] == "big" {
            reply_big.as_str()
        } else {
            "small"
        };
        if seen.streaming() {
            fake::openai_stream(seen, "m", &["first", text], 1, 1)
        } else {
            fake::json_reply(fake::openai_answer("m", text, 1, 1, 0))
        }
    });
    let env = Env::start(
        json!({
            "providers": {
                "tight": {"kind": "openai_compatible", "base_url": format!("{}/v1", provider.url),
                          "max_answer_bytes": "1KiB", "max_event_bytes": "1KiB"},
            },
            "models": {"tight": {"provider": "tight", "model": "m"}},
        }),
        &[],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");

    // Under the limits, both kinds of answer pass.
    let response = env.chat(&token, ask("tight", "hello"), &Trace::new());
    assert_eq!(response.status, 200, "{response:?}");
    let response = env.chat(
        &token,
        streamed(ask("tight", "hello"), json!({})),
        &Trace::new(),
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.body.contains("small"), "{response:?}");

    // A whole answer over `max_answer_bytes`: 502, and the row says why.
    let trace = Trace::new();
    let response = env.chat(&token, ask("tight", "big"), &trace);
    assert_eq!(response.status, 502, "{response:?}");
    assert!(
        response.json()["error"]["message"].as_str().is_some_and(
            |m| m.contains("larger than 1024 bytes (ai.providers.tight.max_answer_bytes)")
        ),
        "{response:?}"
    );
    let row = env.row(&trace);
    assert_eq!(row["status"], "error");
    assert!(
        row["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_answer_bytes")),
        "{row}"
    );

    // An event over `max_event_bytes`: what came before it is relayed, then an error event.
    let trace = Trace::new();
    let response = env.chat(&token, streamed(ask("tight", "big"), json!({})), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        !response.body.contains(&big),
        "the large event must not be relayed"
    );
    let events = sse_json(&response.body);
    assert!(
        events
            .iter()
            .any(|e| e["choices"][0]["delta"]["content"] == "first"),
        "{events:?}"
    );
    assert!(
        events
            .last()
            .and_then(|e| e["error"]["message"].as_str())
            .is_some_and(|m| m
                .contains("an event larger than 1024 bytes (ai.providers.tight.max_event_bytes)")),
        "{events:?}"
    );
    assert_eq!(env.row(&trace)["status"], "error");
}

#[test]
fn on_client_gone_finish_reads_the_rest_for_its_usage_within_its_limits() {
    // Each request's stream waits at its own gate after its first words: "count" at
    // `rest`, the others at `never` (a provider still generating at shutdown).
    let rest = fake::Gate::default();
    let never = fake::Gate::default();
    let (provider_rest, provider_never) = (rest.clone(), never.clone());
    // The stand-in's usual stream, held after its first words.
    let openai = FakeProvider::start(move |seen| {
        let pieces = ["first words", " and the rest"];
        let Reply::Events { events, .. } = fake::openai_stream(seen, "gpt-test", &pieces, 30, 12)
        else {
            return Reply::Hang;
        };
        let (before, after) = events.split_at(2);
        Reply::Gated {
            before: before.to_vec(),
            gate: if seen.body["messages"][0]["content"] == "count" {
                provider_rest.clone()
            } else {
                provider_never.clone()
            },
            after: after.to_vec(),
        }
    });
    let mut env = Env::start(
        json!({
            "providers": {"openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url),
                                     "on_client_gone": "finish"}},
            "models": {"gpt": {"provider": "openai", "model": "gpt-test"}},
            "prices": {"gpt-test": {"input": 2, "output": 10}},
            "budgets": [{"name": "daily", "per": "day", "max_tokens": 1000000}],
            "max_draining_streams": 1,
        }),
        &[],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");
    let auth = format!("Bearer {token}");
    let hang_up = |env: &Env, trace: &Trace, text: &str, needle: &str| {
        let mark = env.warden.log_mark();
        stream_then_hang_up(
            &env.warden,
            "/v1/chat/completions",
            &[("Authorization", &auth), ("traceparent", &trace.header)],
            &streamed(ask("gpt", text), json!({})),
            "first words",
        );
        assert!(
            env.warden
                .wait_for_line_since(mark, &[needle, &trace.id], WAIT),
            "no `{needle}` for trace {}",
            trace.id
        );
    };

    // The first client leaves: its stream is read on for its usage (the only drain).
    let first = Trace::new();
    hang_up(&env, &first, "count", "reading the rest for its usage");
    // A second leaves while the first drains: over ai.max_draining_streams, it is closed
    // and its usage stays unknown.
    let second = Trace::new();
    hang_up(&env, &second, "more", "every drain is busy");
    let row = env.row(&second);
    assert_eq!(row["status"], "cancelled", "{row}");
    assert_eq!(row["input_tokens"], Value::Null, "{row}");

    // Only then does the provider send the rest of the first answer.
    rest.open();
    let row = env.row(&first);
    assert_eq!(row["status"], "cancelled", "{row}");
    assert_eq!(
        (&row["input_tokens"], &row["output_tokens"]),
        (&json!(30), &json!(12)),
        "the usage the provider reported at the end"
    );
    // 30 × $2 + 12 × $10 per million.
    assert_eq!(row["cost_microdollars"], 180);
    assert!(
        row["error"]
            .as_str()
            .is_some_and(|e| e.contains("1 content events relayed")
                && e.contains("Warden read the rest of the answer for its usage")),
        "{row}"
    );
    let charged = || {
        env.db
            .query("SELECT coalesce(sum(tokens), 0)::bigint FROM ai_budget_usage")
            .first()
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    super::eventually("the budget charged with 42 tokens", || charged() == 42);

    // A drain still waiting when Warden stops is stopped, and its row written first.
    let third = Trace::new();
    hang_up(&env, &third, "stop", "reading the rest for its usage");
    assert!(env.warden.sigterm().success());
    let row = env.row(&third);
    assert!(
        row["error"]
            .as_str()
            .is_some_and(|e| e.contains("Warden shut down")),
        "{row}"
    );
    never.open();
}
