//! The official OpenAI, Anthropic and Google GenAI Python SDKs against `warden serve`
//! (`tests/python/ai_sdks.py`): chat completions, the Responses API, messages and
//! `generateContent`, each complete and streamed, relayed to a provider of the client's
//! own format and translated for another — read by the SDKs' own types and stream
//! helpers, which raise on a malformed answer or an event out of order; token counts
//! (`messages.count_tokens`, `models.count_tokens`) relayed and translated. Unknown models
//! raise the SDKs' own errors.

use std::process::Command;

use serde_json::{Value, json};

use super::Env;
use super::fake::{self, FakeProvider, Reply};
use crate::support::external;

/// An OpenAI-format provider: chat completions, the Responses API and its token counts.
fn gpt(seen: &fake::Seen) -> Reply {
    if seen.path.ends_with("/responses/input_tokens") {
        return fake::json_reply(json!({"object": "response.input_tokens", "input_tokens": 12}));
    }
    let responses = seen.path.ends_with("/responses");
    match (responses, seen.streaming()) {
        (true, true) => fake::responses_stream(
            "gpt-test",
            &["Hi ", "there"],
            Some("response.completed"),
            fake::responses_usage(12, 0, 5),
        ),
        (true, false) => fake::json_reply(fake::responses_answer(
            "gpt-test",
            "Hi there",
            "completed",
            fake::responses_usage(12, 0, 5),
        )),
        (false, true) => fake::openai_stream(seen, "gpt-test", &["Hi ", "there"], 12, 5),
        (false, false) => fake::json_reply(fake::openai_answer("gpt-test", "Hi there", 12, 5, 0)),
    }
}

/// An Anthropic provider: `fake::claude`, and 9 tokens for any count.
fn claude(seen: &fake::Seen) -> Reply {
    if seen.path.ends_with("/v1/messages/count_tokens") {
        return fake::json_reply(json!({"input_tokens": 9}));
    }
    fake::claude(seen)
}

fn run_sdks(env: &Env, token: &str) -> Value {
    let output = Command::new(external::python())
        .arg(external::script("ai_sdks.py"))
        .args([env.warden.base_url(), token])
        .output()
        .expect("run the Python SDKs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad report {last:?}: {e}"))
}

#[test]
fn official_sdks_read_what_warden_relays_and_translates() {
    let anthropic = FakeProvider::start(claude);
    let openai = FakeProvider::start(gpt);
    let gemini = fake::gemini_provider(
        "gemini-test",
        "Hey you",
        &["Hey ", "you"],
        json!({"promptTokenCount": 11, "candidatesTokenCount": 6, "totalTokenCount": 17}),
    );
    let google = FakeProvider::start(move |seen| {
        if seen.path.ends_with(":countTokens") {
            return fake::json_reply(json!({"totalTokens": 11}));
        }
        gemini(seen)
    });
    let env = Env::start(
        json!({
            "providers": {
                "claude": {"kind": "anthropic", "base_url": anthropic.url},
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url)},
                "google": {"kind": "gemini", "base_url": format!("{}/v1beta", google.url)},
            },
            "models": {
                "sonnet": {"provider": "claude", "model": "claude-test"},
                "gpt": {"provider": "openai", "model": "gpt-test"},
                "flash": {"provider": "google", "model": "gemini-test"},
            },
        }),
        &[],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");
    let report = run_sdks(&env, &token);
    let scenario = |name: &str| {
        let observed = &report[name];
        assert!(
            observed.get("raised").is_none() || name.ends_with("unknown_model"),
            "{name} raised: {observed}"
        );
        observed.clone()
    };

    // OpenAI's SDK: chat completions.
    assert_eq!(
        scenario("openai_chat_translated"),
        json!({"text": "Hello", "prompt_tokens": 9})
    );
    assert_eq!(
        scenario("openai_chat_relayed"),
        json!({"text": "Hi there", "prompt_tokens": 12})
    );
    assert_eq!(
        scenario("openai_chat_stream_translated"),
        json!({"text": "Hello", "completion_tokens": 4})
    );

    // OpenAI's SDK: the Responses API, complete and through its stream helper.
    for (name, text, input, output) in [
        ("responses_create_translated", "Hello", 9, 4),
        ("responses_create_relayed", "Hi there", 12, 5),
    ] {
        assert_eq!(
            scenario(name),
            json!({"status": "completed", "text": text, "input_tokens": input,
                   "output_tokens": output}),
            "{name}"
        );
    }
    for (name, text, output) in [
        ("responses_stream_translated", "Hello", 4),
        ("responses_stream_relayed", "Hi there", 5),
    ] {
        assert_eq!(
            scenario(name),
            json!({"deltas": text, "final_text": text, "status": "completed",
                   "first": "response.created", "last": "response.completed",
                   "output_tokens": output, "calls": []}),
            "{name}"
        );
    }
    let tool = scenario("responses_stream_tool_translated");
    assert_eq!(
        tool["calls"],
        json!([{"name": "weather", "call_id": "toolu_1", "arguments": {"city": "Oslo"}}]),
        "{tool}"
    );

    // Anthropic's SDK: messages, complete and through its stream helper.
    for (name, text, output) in [
        ("anthropic_create_relayed", "Hello", 4),
        ("anthropic_create_translated", "Hi there", 5),
    ] {
        assert_eq!(
            scenario(name),
            json!({"text": text, "stop_reason": "end_turn", "output_tokens": output}),
            "{name}"
        );
    }
    for (name, text, output) in [
        ("anthropic_stream_relayed", "Hello", 4),
        ("anthropic_stream_translated", "Hi there", 5),
    ] {
        assert_eq!(
            scenario(name),
            json!({"text": text, "final_text": text, "output_tokens": output}),
            "{name}"
        );
    }

    // Both SDKs list the models the caller may use, and retrieve one.
    assert_eq!(
        scenario("openai_models"),
        json!({"list": ["flash", "gpt", "sonnet"], "retrieved": "gpt"})
    );
    assert_eq!(
        scenario("anthropic_models"),
        json!({"list": ["flash", "gpt", "sonnet"], "retrieved": "sonnet"})
    );

    // Google's SDK: generateContent, complete and streamed.
    for (name, text, output) in [
        ("genai_create_relayed", "Hey you", 6),
        ("genai_create_translated", "Hello", 4),
        ("genai_stream_relayed", "Hey you", 6),
        ("genai_stream_translated", "Hello", 4),
    ] {
        assert_eq!(
            scenario(name),
            json!({"text": text, "output_tokens": output}),
            "{name}"
        );
    }

    // Token counts, by the provider the model routes to.
    for (name, expected) in [
        ("anthropic_count_relayed", json!({"input_tokens": 9})),
        ("anthropic_count_translated", json!({"input_tokens": 11})),
        // Through OpenAI's `responses/input_tokens`.
        ("anthropic_count_openai", json!({"input_tokens": 12})),
        ("genai_count_relayed", json!({"total_tokens": 11})),
        ("genai_count_translated", json!({"total_tokens": 9})),
        (
            "responses_input_tokens_relayed",
            json!({"object": "response.input_tokens", "input_tokens": 12}),
        ),
        (
            "responses_input_tokens_translated",
            json!({"object": "response.input_tokens", "input_tokens": 9}),
        ),
    ] {
        assert_eq!(scenario(name), expected, "{name}");
    }

    // Unknown models: each SDK's own error, with the models the caller may use.
    for name in [
        "openai_unknown_model",
        "anthropic_unknown_model",
        "genai_unknown_model",
    ] {
        let refused = scenario(name);
        let expected = if name.starts_with("genai") {
            "ClientError"
        } else {
            "NotFoundError"
        };
        assert_eq!(refused["raised"], expected, "{name}: {refused}");
        assert!(
            refused["message"]
                .as_str()
                .is_some_and(|m| m.contains("models you may use: flash, gpt, sonnet")),
            "{name}: {refused}"
        );
    }
}
