//! The AI gateway's per-request work, measured with criterion (`cargo bench --bench ai`;
//! figures in docs/benchmarks.md). What Warden adds to a model request besides the
//! network hops and the checks measured in `auth`:
//!
//! - `ai/request/passthrough`: the top level of a ~4 KB OpenAI chat request parsed, its
//!   `model` replaced and `stream_options.include_usage` added, re-encoded (client and
//!   provider speak the same format);
//! - `ai/request/openai_to_anthropic`: the same request parsed whole and rendered in the
//!   Anthropic format;
//! - `ai/event/passthrough`: one streamed OpenAI chunk read from the provider's bytes,
//!   decoded for usage and time to first token, and written on (per event);
//! - `ai/request/responses_to_anthropic`: a ~4 KB Responses API request (instructions
//!   and input items) parsed whole and rendered in the Anthropic format;
//! - `ai/event/anthropic_to_openai`: one Anthropic `content_block_delta` decoded and
//!   written as an OpenAI chunk (per event); `…_to_responses` and `…_to_gemini`: the
//!   same, written as a Responses `response.output_text.delta` event and as a Gemini
//!   chunk;
//! - `ai/answer/usage_probe`: the usage of a complete ~2 KB answer read without parsing
//!   the rest;
//! - `ai/cost`: the cost of a usage report in integer microdollars.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use indexmap::IndexMap;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use warden::ai::exchange::{Upstream, passthrough_body, translate_body};
use warden::ai::pricing::{Price, Usage, cost_microdollars};
use warden::ai::sse::{SseReader, write_event};
use warden::ai::wire::openai::Dialect;
use warden::ai::wire::{self, Delta, Wire};

fn request() -> Value {
    let mut messages =
        vec![json!({"role": "system", "content": "You are a careful assistant. ".repeat(10)})];
    for i in 0..10 {
        messages.push(
            json!({"role": "user", "content": format!("Question {i}: {}", "words ".repeat(40))}),
        );
        messages.push(json!({"role": "assistant", "content": format!("Answer {i}: {}", "tokens ".repeat(20))}));
    }
    json!({
        "model": "gpt",
        "stream": true,
        "messages": messages,
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Weather for a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "search", "description": "Search the web",
             "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}},
        ],
        "max_tokens": 512,
        "temperature": 0.2,
    })
}

/// The conversation of [`request`] as a Responses API request.
fn responses_request() -> Value {
    let mut input = Vec::new();
    for i in 0..10 {
        input.push(json!({"role": "user", "content": [{"type": "input_text",
            "text": format!("Question {i}: {}", "words ".repeat(40))}]}));
        input.push(json!({"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": format!("Answer {i}: {}", "tokens ".repeat(20))}]}));
    }
    json!({
        "model": "claude",
        "stream": true,
        "instructions": "You are a careful assistant. ".repeat(10),
        "input": input,
        "tools": [
            {"type": "function", "name": "weather", "description": "Weather for a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"type": "function", "name": "search", "description": "Search the web",
             "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}},
        ],
        "max_output_tokens": 512,
        "store": false,
    })
}

fn benches(c: &mut Criterion) {
    let body = serde_json::to_vec(&request()).expect("JSON");
    c.bench_function("ai/request/passthrough", |b| {
        b.iter(|| {
            let mut top: IndexMap<String, Box<RawValue>> =
                serde_json::from_slice(black_box(&body)).expect("JSON");
            black_box(passthrough_body(&mut top, "gpt-4o", Wire::OpenAi, true).expect("body"))
        })
    });
    let to_anthropic = Upstream {
        wire: Wire::Anthropic,
        model: "claude",
        dialect: Dialect {
            max_tokens_field: "max_tokens",
        },
        default_max_tokens: None,
        stream: true,
    };
    let responses_body = serde_json::to_vec(&responses_request()).expect("JSON");
    for (name, format, body) in [
        ("ai/request/openai_to_anthropic", Wire::OpenAi, &body),
        (
            "ai/request/responses_to_anthropic",
            Wire::Responses,
            &responses_body,
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let full: Map<String, Value> =
                    serde_json::from_slice(black_box(body)).expect("JSON");
                black_box(translate_body(&full, format, &to_anthropic).expect("body"))
            })
        });
    }

    let openai_chunk = format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
               "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}]})
    );
    let mut reader = SseReader::default();
    let mut decoder = wire::decoder(Wire::OpenAi);
    let mut events = Vec::new();
    let mut deltas: Vec<Delta> = Vec::new();
    let mut out = BytesMut::new();
    c.bench_function("ai/event/passthrough", |b| {
        b.iter(|| {
            events.clear();
            deltas.clear();
            out.clear();
            reader
                .push(black_box(openai_chunk.as_bytes()), &mut events)
                .expect("event");
            for event in &events {
                decoder.decode(event, &mut deltas).expect("decode");
                write_event(&mut out, event.event.as_deref(), &event.data);
            }
            black_box(deltas.iter().any(Delta::is_content))
        })
    });

    let anthropic_delta = format!(
        "event: content_block_delta\ndata: {}\n\n",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}})
    );
    let mut reader = SseReader::default();
    let mut decoder = wire::decoder(Wire::Anthropic);
    for (client, name) in [
        (Wire::OpenAi, "ai/event/anthropic_to_openai"),
        (Wire::Responses, "ai/event/anthropic_to_responses"),
        (Wire::Gemini, "ai/event/anthropic_to_gemini"),
    ] {
        let mut encoder = wire::encoder(client, false);
        // Mid-answer: the stream started and its first text is out.
        for delta in [
            Delta::Start {
                id: "msg_1".into(),
                model: "claude".into(),
            },
            Delta::Text("Hi".into()),
        ] {
            encoder.encode(&delta, &mut BytesMut::new());
        }
        c.bench_function(name, |b| {
            b.iter(|| {
                events.clear();
                deltas.clear();
                out.clear();
                reader
                    .push(black_box(anthropic_delta.as_bytes()), &mut events)
                    .expect("event");
                for event in &events {
                    decoder.decode(event, &mut deltas).expect("decode");
                }
                for delta in &deltas {
                    encoder.encode(delta, &mut out);
                }
                black_box(out.len())
            })
        });
    }

    let answer = serde_json::to_vec(&json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "words ".repeat(300)},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                  "prompt_tokens_details": {"cached_tokens": 1000}},
    }))
    .expect("JSON");
    c.bench_function("ai/answer/usage_probe", |b| {
        #[derive(serde::Deserialize)]
        struct Probe {
            #[allow(dead_code)]
            model: Option<String>,
            usage: Option<Value>,
        }
        b.iter(|| {
            let probe: Probe = serde_json::from_slice(black_box(&answer)).expect("JSON");
            black_box(probe.usage.as_ref().map(wire::openai::usage))
        })
    });

    let price = Price {
        input: 3_000_000,
        output: 15_000_000,
        cache_read: 300_000,
        cache_write: 3_750_000,
    };
    let usage = Usage {
        input: Some(1200),
        output: Some(300),
        cache_read: Some(1000),
        cache_write: Some(50),
    };
    c.bench_function("ai/cost", |b| {
        b.iter(|| black_box(cost_microdollars(black_box(&usage), black_box(&price))))
    });
}

criterion_group!(ai, benches);
criterion_main!(ai);
