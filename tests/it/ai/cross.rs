//! Cross-format: an OpenAI-shaped client served by an Anthropic provider, and an
//! Anthropic-shaped client served by an OpenAI provider — text, a tool round trip and
//! streams (text and tool calls) — so a team can switch providers without changing
//! clients. The provider receives a request in its own format; the client gets an answer
//! in its own.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider};
use super::{Env, Trace, anthropic_stream_text, openai_stream_text, sse_json, streamed};

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn env(anthropic: &FakeProvider, openai: &FakeProvider) -> Env {
    Env::start(
        json!({
            "providers": {
                "anthropic": {"kind": "anthropic", "base_url": anthropic.url, "api_key_secret": "ant"},
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url), "api_key_secret": "oai"},
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
        &[("ant", "sk-ant-cross"), ("oai", "sk-oai-cross")],
        |_| {},
    )
}

#[test]
fn openai_shaped_clients_are_served_by_an_anthropic_provider() {
    let anthropic = FakeProvider::start(fake::claude);
    let unused = FakeProvider::start(|_| fake::Reply::Hang);
    let env = env(&anthropic, &unused);
    let token = env.token("alice", "ai:chat");

    // A tool round trip, complete.
    let request = json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": weather_tool_openai(),
        "tool_choice": "auto",
        "max_tokens": 100,
        "temperature": 0.2,
        "stop": ["END"],
    });
    let trace = Trace::new();
    let response = env.chat(&token, request.clone(), &trace);
    assert_eq!(response.status, 200, "{response:?}");
    let sent = anthropic.last().body;
    assert_eq!(sent["model"], "claude-test");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "rain"},
                {"type": "text", "text": "And tomorrow?"}]},
        ])
    );
    assert_eq!(sent["tools"][0]["name"], "weather");
    assert_eq!(
        sent["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    assert_eq!(sent["tool_choice"], json!({"type": "auto"}));
    let answer = response.json();
    assert_eq!(answer["object"], "chat.completion");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], "Let me check.");
    assert_eq!(message["tool_calls"][0]["id"], "toolu_1");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "weather");
    let arguments: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .expect("arguments are a string"),
    )
    .expect("arguments are JSON");
    assert_eq!(arguments, json!({"city": "Oslo"}));
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(answer["usage"]["prompt_tokens"], 60);
    assert_eq!(answer["usage"]["completion_tokens"], 20);
    let row = env.row(&trace);
    assert_eq!(row["cost_microdollars"], 60 * 3 + 20 * 15);

    // A streamed text answer, with the usage chunk asked for.
    let trace = Trace::new();
    let response = env.chat(
        &token,
        streamed(
            json!({"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}),
            json!({"stream_options": {"include_usage": true}}),
        ),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(anthropic.last().body["stream"], true);
    assert_eq!(openai_stream_text(&response.body), "Hello");
    let chunks = sse_json(&response.body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    let usage = chunks.last().expect("chunks")["usage"].clone();
    assert_eq!(usage["prompt_tokens"], 9);
    assert_eq!(usage["completion_tokens"], 4);
    assert!(
        response.body.ends_with("data: [DONE]\n\n"),
        "{}",
        response.body
    );
    let row = env.row(&trace);
    assert_eq!(row["output_tokens"], 4);
    assert_eq!(row["cost_microdollars"], 9 * 3 + 4 * 15);

    // A streamed tool call.
    let trace = Trace::new();
    let mut request = streamed(
        json!({"model": "claude", "messages": [{"role": "user", "content": "Weather in Oslo?"}]}),
        json!({}),
    );
    request["tools"] = weather_tool_openai();
    let response = env.chat(&token, request, &trace);
    assert_eq!(response.status, 200, "{response:?}");
    let chunks = sse_json(&response.body);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "toolu_1");
    assert_eq!(calls[0]["function"]["name"], "weather");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{\"city\":\"Oslo\"}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    assert_eq!(openai_stream_text(&response.body), "Let me check.");
    assert!(!response.body.contains("\"usage\""), "not asked for");
    let row = env.row(&trace);
    assert_eq!(
        (row["input_tokens"].clone(), row["output_tokens"].clone()),
        (json!(60), json!(20))
    );
}

#[test]
fn anthropic_shaped_clients_are_served_by_an_openai_provider() {
    let openai = FakeProvider::start(|seen| {
        let tools = seen.body["tools"].is_array();
        match (seen.streaming(), tools) {
            (false, _) => fake::json_reply(fake::openai_tool_answer(
                "gpt-test",
                "weather",
                "{\"city\":\"Oslo\"}",
            )),
            (true, false) => fake::openai_stream(seen, "gpt-test", &["Hel", "lo"], 11, 5),
            (true, true) => {
                fake::openai_tool_stream("gpt-test", "weather", "{\"city\":", "\"Oslo\"}")
            }
        }
    });
    let unused = FakeProvider::start(|_| fake::Reply::Hang);
    let env = env(&unused, &openai);
    let token = env.token("alice", "ai:chat");
    let tools = json!([{"name": "weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);

    let request = json!({
        "model": "gpt",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": "rain"},
                {"type": "text", "text": "And tomorrow?"}]},
        ],
        "tools": tools,
        "tool_choice": {"type": "any"},
    });
    let trace = Trace::new();
    let response = env.messages(&token, request, &trace);
    assert_eq!(response.status, 200, "{response:?}");
    let seen = openai.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-oai-cross"));
    assert_eq!(
        seen.header("anthropic-beta"),
        None,
        "Anthropic headers stay with Anthropic"
    );
    let sent = seen.body;
    assert_eq!(sent["model"], "gpt-test");
    assert_eq!(sent["max_completion_tokens"], 100);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_9", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_9", "content": "rain"},
            {"role": "user", "content": "And tomorrow?"},
        ])
    );
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(
        sent["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(sent["tool_choice"], "required");
    let answer = response.json();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["stop_reason"], "tool_use");
    assert_eq!(
        answer["content"],
        json!([{"type": "tool_use", "id": "call_abc", "name": "weather", "input": {"city": "Oslo"}}])
    );
    assert_eq!(
        answer["usage"],
        json!({"input_tokens": 50, "output_tokens": 10})
    );
    assert_eq!(env.row(&trace)["cost_microdollars"], 50 * 5 / 2 + 10 * 10);

    // A streamed text answer: Warden asks the provider for its usage report.
    let trace = Trace::new();
    let response = env.messages(
        &token,
        streamed(json!({"model": "gpt", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}), json!({})),
        &trace,
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(openai.last().body["stream_options"]["include_usage"], true);
    assert_eq!(anthropic_stream_text(&response.body), "Hello");
    let names: Vec<String> = super::sse_events(&response.body)
        .into_iter()
        .filter_map(|(name, _)| name)
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    let events = sse_json(&response.body);
    let end = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .expect("message_delta");
    assert_eq!(end["delta"]["stop_reason"], "end_turn");
    assert_eq!(end["usage"]["input_tokens"], 11);
    assert_eq!(end["usage"]["output_tokens"], 5);
    let row = env.row(&trace);
    assert_eq!(
        (row["input_tokens"].clone(), row["output_tokens"].clone()),
        (json!(11), json!(5))
    );

    // A streamed tool call.
    let trace = Trace::new();
    let mut request = streamed(
        json!({"model": "gpt", "max_tokens": 50, "messages": [{"role": "user", "content": "Weather?"}]}),
        json!({}),
    );
    request["tools"] = json!([{"name": "weather", "input_schema": {"type": "object"}}]);
    let response = env.messages(&token, request, &trace);
    assert_eq!(response.status, 200, "{response:?}");
    let events = sse_json(&response.body);
    let start = events
        .iter()
        .find(|e| e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(start["content_block"]["id"], "call_abc");
    assert_eq!(start["content_block"]["name"], "weather");
    let input: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(input, "{\"city\":\"Oslo\"}");
    let end = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .expect("message_delta");
    assert_eq!(end["delta"]["stop_reason"], "tool_use");
    assert_eq!(env.row(&trace)["status"], "success");
}
