//! Gemini-format clients (`POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, as Gemini CLI and Google's `genai` SDKs send them)
//! through `warden serve`: relayed to a `gemini` provider as sent — the alias in the URL
//! replaced by the upstream model, Warden's key instead of the client's token — and
//! translated for an Anthropic provider; the exact rows and the decision; errors in
//! Google's shape (an unknown model, a stream without `alt=sse`, a method Warden does not
//! serve, no token).

use serde_json::{Value, json};

use super::fake::{self, FakeProvider};
use super::{Env, Trace, gemini_stream_text, sse_json};

fn ask(text: &str) -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "generationConfig": {"maxOutputTokens": 64, "thinkingConfig": {"thinkingBudget": 0}},
    })
}

#[test]
fn gemini_clients_are_relayed_to_gemini_and_translated_for_others() {
    let usage = json!({"promptTokenCount": 80, "cachedContentTokenCount": 20,
                       "candidatesTokenCount": 12, "thoughtsTokenCount": 8,
                       "totalTokenCount": 100});
    let google = FakeProvider::start(fake::gemini_provider(
        "gemini-test-001",
        "Hello from gemini",
        &["Hel", "lo"],
        usage,
    ));
    let anthropic = FakeProvider::start(fake::claude);
    let key = "gemini-clients-key";
    let env = Env::start(
        json!({
            "providers": {
                "google": {"kind": "gemini", "base_url": format!("{}/v1beta", google.url),
                           "api_key_secret": "gemini_key"},
                "claude": {"kind": "anthropic", "base_url": anthropic.url},
            },
            "models": {
                "flash": {"provider": "google", "model": "gemini-test"},
                "sonnet": {"provider": "claude", "model": "claude-test"},
            },
            "prices": {"gemini-test": {"input": 0.3, "output": 2.5, "cache_read": 0.075}},
        }),
        &[("gemini_key", key)],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");

    // Relayed, complete: the body as sent (Warden's routing fields taken out again), the
    // upstream model in the URL, Warden's key; the answer as the provider sent it.
    let trace = Trace::new();
    let response = env.generate(
        "/v1beta/models/flash:generateContent",
        &token,
        &ask("Hi"),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    trace.assert_answered(&response);
    assert_eq!(
        response.json()["candidates"][0]["content"]["parts"][0]["text"],
        "Hello from gemini"
    );
    let seen = google.last();
    assert_eq!(seen.path, "/v1beta/models/gemini-test:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(key));
    assert!(
        !seen.raw.contains(&token),
        "the client's token reached the provider"
    );
    assert_eq!(seen.body, ask("Hi"), "relayed as sent");
    let row = env.row(&trace);
    assert_eq!(row["provider"], "google", "{row}");
    assert_eq!(row["model"], "gemini-test-001");
    assert_eq!(row["requested_model"], "flash");
    assert_eq!(row["input_tokens"], 60, "the prompt less the cached tokens");
    assert_eq!(row["cache_read_tokens"], 20);
    assert_eq!(row["output_tokens"], 20, "candidates and thoughts");
    // 60 × $0.30 + 20 × $0.075 + 20 × $2.50 per million = 18 + 1.5 + 50 µ$ → 70 (rounded).
    assert_eq!(row["cost_microdollars"], 70);
    let decision = env.decision(&trace);
    assert_eq!(decision["attributes"]["action"], "ai/generateContent");

    // Relayed, streamed.
    let trace = Trace::new();
    let response = env.generate(
        "/v1beta/models/flash:streamGenerateContent?alt=sse",
        &token,
        &ask("Hi"),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        google.last().path,
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    );
    assert_eq!(gemini_stream_text(&response.body), "Hello");
    let row = env.row(&trace);
    assert_eq!(
        (&row["streaming"], &row["status"]),
        (&json!(true), &json!("success"))
    );
    assert_eq!(row["output_tokens"], 20);

    // Translated for Anthropic, complete, with a function call.
    let trace = Trace::new();
    let mut request = ask("Weather in Oslo?");
    request["tools"] = json!([{"functionDeclarations": [{"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}]);
    let response = env.generate(
        "/v1/models/sonnet:generateContent",
        &token,
        &request,
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let sent = anthropic.last().body;
    assert_eq!(sent["model"], "claude-test");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["tools"][0]["name"], "weather");
    let answer = response.json();
    let parts = &answer["candidates"][0]["content"]["parts"];
    assert_eq!(parts[0]["text"], "Let me check.", "{answer}");
    assert_eq!(parts[1]["functionCall"]["name"], "weather");
    assert_eq!(parts[1]["functionCall"]["args"], json!({"city": "Oslo"}));
    assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 20);
    assert_eq!(env.row(&trace)["provider"], "claude");

    // Translated, streamed.
    let trace = Trace::new();
    let response = env.generate(
        "/v1beta/models/sonnet:streamGenerateContent?alt=sse",
        &token,
        &ask("Hi"),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(gemini_stream_text(&response.body), "Hello");
    let chunks = sse_json(&response.body);
    let last = chunks.last().expect("a last chunk");
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 4);
    let row = env.row(&trace);
    assert_eq!(
        (&row["input_tokens"], &row["output_tokens"]),
        (&json!(9), &json!(4))
    );

    // Translated, streamed, with a function call: sent whole, with the finish reason (no
    // chunk without parts: Gemini CLI takes one for a broken stream).
    let trace = Trace::new();
    let response = env.generate(
        "/v1beta/models/sonnet:streamGenerateContent?alt=sse",
        &token,
        &request,
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    let chunks = sse_json(&response.body);
    for chunk in &chunks {
        let parts = &chunk["candidates"][0]["content"]["parts"];
        assert!(parts.as_array().is_some_and(|p| !p.is_empty()), "{chunk}");
    }
    let last = chunks.last().expect("a last chunk");
    assert_eq!(
        last["candidates"][0]["content"]["parts"][0]["functionCall"],
        json!({"id": "toolu_1", "name": "weather", "args": {"city": "Oslo"}}),
        "{}",
        response.body
    );
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(env.row(&trace)["status"], "success");

    // Errors, in Google's shape.
    let requests_so_far = (google.seen().len(), anthropic.seen().len());
    // Each refusal: its status, Google's `status` name, and a phrase of its message.
    let refused = |path: &str, token: &str, (status, name, needle): (u16, &str, &str)| {
        let response = env.generate(path, token, &ask("Hi"), &Trace::new());
        let error = response.json()["error"].clone();
        assert_eq!(response.status, status, "{path}: {error}");
        assert_eq!(
            (&error["code"], &error["status"]),
            (&json!(status), &json!(name)),
            "{path}"
        );
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{path}: {error}"
        );
    };
    refused(
        "/v1beta/models/nope:generateContent",
        &token,
        (404, "NOT_FOUND", "models you may use: flash, sonnet"),
    );
    refused(
        "/v1beta/models/flash:streamGenerateContent",
        &token,
        (400, "INVALID_ARGUMENT", "?alt=sse"),
    );
    refused(
        "/v1beta/models/flash:embedContent",
        &token,
        (404, "NOT_FOUND", ":countTokens"),
    );
    refused(
        "/v1beta/models/flash:generateContent",
        "wrong-token",
        (401, "UNAUTHENTICATED", ""),
    );
    // Who is asking comes first.
    refused(
        "/v1beta/models/flash:embedContent",
        "wrong-token",
        (401, "UNAUTHENTICATED", ""),
    );
    // A tool Google would run itself, relayed: refused unless ai.provider_tools allows it.
    let mut search = ask("Hi");
    search["tools"] = json!([{"googleSearch": {}}]);
    let response = env.generate(
        "/v1beta/models/flash:generateContent",
        &token,
        &search,
        &Trace::new(),
    );
    assert_eq!(response.status, 400, "{response:?}");
    assert!(
        response
            .body
            .contains("tools[0] `googleSearch` would run at the provider"),
        "{response:?}"
    );
    assert_eq!(
        (google.seen().len(), anthropic.seen().len()),
        requests_so_far,
        "nothing refused reached a provider"
    );
}
