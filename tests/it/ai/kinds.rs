//! Every provider kind, complete and streamed, through `warden serve`: what the provider
//! received (its own key, the upstream model name, the usage report asked for), what the
//! client got back, and the exact `ai_requests` row — tokens, cost in microdollars, user,
//! trace — plus the permission decision on the same trace.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider};
use super::{
    Env, Trace, anthropic_stream_text, ask, ask_anthropic, openai_stream_text, sse_events, streamed,
};

#[test]
fn openai_and_openai_compatible_kinds_answer_complete_and_streamed_requests() {
    let openai = FakeProvider::start(|seen| {
        if seen.streaming() {
            fake::openai_stream(seen, "gpt-test-2025", &["Hel", "lo"], 40, 12)
        } else {
            fake::json_reply(fake::openai_answer(
                "gpt-test-2025",
                "Hello from openai",
                120,
                30,
                20,
            ))
        }
    });
    let local = FakeProvider::start(|seen| {
        if seen.streaming() {
            fake::openai_stream(seen, "llama-test", &["lo", "cal"], 7, 3)
        } else {
            fake::json_reply(fake::openai_answer(
                "llama-test",
                "Hello from local",
                7,
                3,
                0,
            ))
        }
    });
    let key = "sk-openai-kinds-key";
    let env = Env::start(
        json!({
            "providers": {
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url),
                           "api_key_secret": "openai_key", "headers": {"OpenAI-Organization": "org-test"}},
                "local": {"kind": "openai_compatible", "base_url": format!("{}/v1", local.url)},
            },
            "models": {
                "gpt": {"provider": "openai", "model": "gpt-test"},
                "llama": {"provider": "local", "model": "llama-test"},
            },
            "prices": {
                "gpt-test": {"input": 2.5, "output": 10, "cache_read": 1.25},
                "llama-test": {"input": "0.075", "output": "0.3"},
            },
        }),
        &[("openai_key", key)],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");

    // Complete.
    let trace = Trace::new();
    let response = env.chat(&token, ask("gpt", "Hi"), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    let answer = response.json();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from openai"
    );
    trace.assert_answered(&response);
    let seen = openai.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    assert_eq!(seen.header("openai-organization"), Some("org-test"));
    assert_eq!(seen.body["model"], "gpt-test");
    assert_eq!(
        seen.body["messages"],
        json!([{"role": "user", "content": "Hi"}])
    );
    let row = env.row(&trace);
    assert_eq!(row["user_id"], "alice", "{row}");
    assert_eq!(row["provider"], "openai");
    assert_eq!(row["model"], "gpt-test-2025", "the model that answered");
    assert_eq!(row["requested_model"], "gpt");
    assert_eq!(
        row["input_tokens"], 100,
        "prompt tokens less the cached ones"
    );
    assert_eq!(row["output_tokens"], 30);
    assert_eq!(row["cache_read_tokens"], 20);
    assert_eq!(row["cache_write_tokens"], Value::Null);
    // 100 × $2.50 + 30 × $10 + 20 × $1.25 per million = 250 + 300 + 25 µ$.
    assert_eq!(row["cost_microdollars"], 575);
    assert_eq!(row["status"], "success");
    assert_eq!(row["streaming"], false);
    assert_eq!(row["ttft_ms"], Value::Null);
    assert!(row["latency_ms"].is_i64(), "{row}");
    let decision = env.decision(&trace);
    assert_eq!(decision["subject"], "ai/gpt");
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["attributes"]["action"], "ai/chat.completions");
    assert_eq!(decision["actor_id"], "alice");

    // Streamed, without asking for usage: Warden asks on the client's behalf and keeps
    // the usage chunk to itself.
    let trace = Trace::new();
    let response = env.chat(&token, streamed(ask("gpt", "Hi"), json!({})), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(openai_stream_text(&response.body), "Hello");
    assert!(!response.body.contains("\"usage\""), "{}", response.body);
    assert_eq!(
        sse_events(&response.body).last().map(|(_, d)| d.as_str()),
        Some("[DONE]")
    );
    assert_eq!(
        openai.last().body["stream_options"],
        json!({"include_usage": true})
    );
    let row = env.row(&trace);
    assert_eq!(row["streaming"], true);
    assert_eq!(
        (row["input_tokens"].clone(), row["output_tokens"].clone()),
        (json!(40), json!(12))
    );
    assert_eq!(row["cost_microdollars"], 40 * 5 / 2 + 12 * 10);
    assert!(row["ttft_ms"].is_i64(), "{row}");

    // Streamed, asking for usage: the client gets the chunk.
    let trace = Trace::new();
    let response = env.chat(
        &token,
        streamed(
            ask("gpt", "Hi"),
            json!({"stream_options": {"include_usage": true}}),
        ),
        &trace,
    );
    assert!(
        response.body.contains("\"prompt_tokens\":40"),
        "{}",
        response.body
    );
    env.row(&trace);

    // OpenAI-compatible: no key configured, none sent; rounding to whole microdollars.
    let trace = Trace::new();
    let response = env.chat(&token, ask("llama", "Hi"), &trace);
    assert_eq!(
        response.json()["choices"][0]["message"]["content"],
        "Hello from local"
    );
    let seen = local.last();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.body["model"], "llama-test");
    let row = env.row(&trace);
    // 7 × $0.075 + 3 × $0.30 per million = 1.425 µ$ → 1.
    assert_eq!(row["cost_microdollars"], 1);
    assert_eq!(row["provider"], "local");

    let trace = Trace::new();
    let response = env.chat(&token, streamed(ask("llama", "Hi"), json!({})), &trace);
    assert_eq!(openai_stream_text(&response.body), "local");
    let row = env.row(&trace);
    assert_eq!(row["input_tokens"], 7);
    assert_eq!(row["status"], "success");

    // A key rotated from the command line (another process) is used from then on: the
    // change is announced to the running Warden, which drops the cached one.
    let rotated = "sk-openai-rotated-key";
    let (ok, _, err) = crate::identity::cli(
        &env.profile,
        &["secret", "set", "openai_key"],
        Some(rotated),
    );
    assert!(ok, "secret set: {err}");
    let wanted = format!("Bearer {rotated}");
    super::eventually("the rotated key on upstream requests", || {
        env.chat(&token, ask("gpt", "Hi"), &Trace::new());
        openai.last().header("authorization") == Some(wanted.as_str())
    });
}

#[test]
fn anthropic_kind_answers_messages_complete_and_streamed() {
    let usage = json!({"input_tokens": 200, "output_tokens": 40,
                       "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 100});
    let answer = fake::anthropic_answer("claude-test", "Hello from anthropic", usage.clone());
    let complete = answer.clone();
    let anthropic = FakeProvider::start(move |seen| {
        if seen.streaming() {
            fake::anthropic_stream(
                "claude-test",
                &["Hel", "lo"],
                json!({"input_tokens": 200, "output_tokens": 1,
                       "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 100}),
                json!({"output_tokens": 40}),
                None,
            )
        } else {
            fake::json_reply(complete.clone())
        }
    });
    let key = "sk-ant-kinds-key";
    let env = Env::start(
        json!({
            "providers": {"anthropic": {"kind": "anthropic", "base_url": anthropic.url,
                                        "api_key_secret": "anthropic_key"}},
            "models": {"claude": {"provider": "anthropic", "model": "claude-test"}},
            "prices": {"claude-test": {"input": 3, "output": 15, "cache_read": "0.30", "cache_write": 3.75}},
        }),
        &[("anthropic_key", key)],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");

    let trace = Trace::new();
    let response = env.messages(&token, ask_anthropic("claude", "Hi"), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.json(),
        answer,
        "passed through as the provider sent it"
    );
    let seen = anthropic.last();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(key));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.body["model"], "claude-test");
    assert_eq!(seen.body["max_tokens"], 256);
    let row = env.row(&trace);
    assert_eq!(
        [
            &row["input_tokens"],
            &row["output_tokens"],
            &row["cache_read_tokens"],
            &row["cache_write_tokens"]
        ],
        [&json!(200), &json!(40), &json!(1000), &json!(100)]
    );
    // 200 × $3 + 40 × $15 + 1000 × $0.30 + 100 × $3.75 per million.
    assert_eq!(row["cost_microdollars"], 600 + 600 + 300 + 375);
    assert_eq!(row["user_id"], "alice");

    let trace = Trace::new();
    let response = env.messages(
        &token,
        streamed(ask_anthropic("claude", "Hi"), json!({})),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let names: Vec<String> = sse_events(&response.body)
        .into_iter()
        .filter_map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(anthropic_stream_text(&response.body), "Hello");
    let row = env.row(&trace);
    assert_eq!(row["output_tokens"], 40, "the final report wins");
    assert_eq!(row["cost_microdollars"], 1875);
    assert_eq!(row["streaming"], true);
    assert!(row["ttft_ms"].is_i64());
}

#[test]
fn gemini_kind_serves_openai_and_anthropic_clients() {
    let usage = json!({"promptTokenCount": 80, "candidatesTokenCount": 12,
                       "thoughtsTokenCount": 8, "totalTokenCount": 100});
    let gemini = FakeProvider::start(fake::gemini_provider(
        "gemini-test-001",
        "Hello from gemini",
        &["Hel", "lo"],
        usage,
    ));
    let key = "gemini-kinds-key";
    let env = Env::start(
        json!({
            "providers": {"google": {"kind": "gemini", "base_url": format!("{}/v1beta", gemini.url),
                                     "api_key_secret": "gemini_key"}},
            "models": {"flash": {"provider": "google", "model": "gemini-test"}},
            "prices": {"gemini-test": {"input": 0.3, "output": 2.5}},
        }),
        &[("gemini_key", key)],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");
    let mut request = ask("flash", "Hi");
    request["messages"] =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]);
    request["max_tokens"] = json!(64);

    let trace = Trace::new();
    let response = env.chat(&token, request.clone(), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    let answer = response.json();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from gemini"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 80);
    assert_eq!(answer["usage"]["completion_tokens"], 20);
    let seen = gemini.last();
    assert_eq!(seen.path, "/v1beta/models/gemini-test:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(key));
    assert_eq!(
        seen.body["systemInstruction"]["parts"][0]["text"],
        "Be brief."
    );
    assert_eq!(
        seen.body["contents"],
        json!([{"role": "user", "parts": [{"text": "Hi"}]}])
    );
    assert_eq!(seen.body["generationConfig"]["maxOutputTokens"], 64);
    let row = env.row(&trace);
    assert_eq!(row["model"], "gemini-test-001");
    assert_eq!(
        (row["input_tokens"].clone(), row["output_tokens"].clone()),
        (json!(80), json!(20))
    );
    // Priced by the route's model: 80 × $0.30 + 20 × $2.50 per million.
    assert_eq!(row["cost_microdollars"], 24 + 50);

    let trace = Trace::new();
    let response = env.chat(&token, streamed(request, json!({})), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(openai_stream_text(&response.body), "Hello");
    let chunks = super::sse_json(&response.body);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"),
        "{chunks:?}"
    );
    assert_eq!(
        sse_events(&response.body).last().map(|(_, d)| d.as_str()),
        Some("[DONE]")
    );
    assert_eq!(
        gemini.last().path,
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    );
    let row = env.row(&trace);
    assert_eq!(row["cost_microdollars"], 74);
    assert_eq!(row["streaming"], true);

    let trace = Trace::new();
    let response = env.messages(
        &token,
        streamed(ask_anthropic("flash", "Hi"), json!({})),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(anthropic_stream_text(&response.body), "Hello");
    let events = super::sse_json(&response.body);
    let end = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .expect("a message_delta");
    assert_eq!(end["delta"]["stop_reason"], "end_turn");
    assert_eq!(end["usage"]["output_tokens"], 20);
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some(json!("message_stop"))
    );
    assert_eq!(env.row(&trace)["cost_microdollars"], 74);
}
