//! The AI gateway end to end: the real `warden` binary in front of stand-in providers
//! that speak each wire format on loopback (`fake`), model requests from OpenAI- and
//! Anthropic-shaped clients, and the `ai_requests` rows and audit events they leave in
//! real PostgreSQL.
//!
//! - `kinds`: every provider kind, complete and streamed, with the exact row of each;
//! - `cross`: OpenAI-shaped clients served by an Anthropic provider and the reverse, for
//!   text, tools and streams;
//! - `failures`: provider errors passed back with their status, timeouts, broken streams,
//!   and a client that goes away mid-stream;
//! - `leaks`: provider keys never reach clients, logs or the audit trail, and client tokens
//!   never reach providers;
//! - `budgets`: a spent budget refuses the next request, is recorded, and holds across a
//!   restart;
//! - `access`: scopes per model, `/v1/models`, unknown models, rate limits, body limits;
//! - `embeddings`: `/v1/embeddings` governed, recorded and priced like chat;
//! - `count`: token counts (`/v1/messages/count_tokens`, `:countTokens`,
//!   `/v1/responses/input_tokens`) governed like chat and counted by the routed
//!   provider, relayed or translated;
//! - `responses`: `/v1/responses` (OpenAI's Responses API) relayed to OpenAI-format
//!   providers and translated for Anthropic's, recorded and priced like chat;
//! - `gemini`: Gemini-format clients relayed to a Gemini provider and translated for
//!   Anthropic's;
//! - `sdks`: the official OpenAI, Anthropic and Google GenAI Python SDKs read what Warden
//!   relays and translates.
//!
//! Rows are awaited with a deadline (the audit writer batches), never a fixed sleep.

mod access;
mod budgets;
mod count;
mod cross;
mod embeddings;
mod failures;
mod fake;
mod gemini;
mod kinds;
mod leaks;
mod responses;
mod sdks;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::http::{self, Response};
use crate::support::{Profile, TestDb, WardenProcess};

pub const WAIT: Duration = Duration::from_secs(60);

/// A running Warden on its own database.
pub struct Env {
    pub db: TestDb,
    pub profile: Profile,
    pub warden: WardenProcess,
}

impl Env {
    /// Starts Warden with `ai` as its `ai:` section and `secrets` in the secret store.
    pub fn start(ai: Value, secrets: &[(&str, &str)], customize: impl FnOnce(&mut Profile)) -> Env {
        let db = TestDb::new();
        let mut profile = Profile::with_database(db.url());
        profile.set("audit.batch_max_delay", "20ms");
        profile.set("ai", ai);
        customize(&mut profile);
        for (name, value) in secrets {
            let (ok, _, err) =
                crate::identity::cli(&profile, &["secret", "set", name], Some(value));
            assert!(ok, "secret set {name}: {err}");
        }
        let warden = profile.start();
        Env {
            db,
            profile,
            warden,
        }
    }

    /// A token for `user` with `scopes`.
    pub fn token(&self, user: &str, scopes: &str) -> String {
        let (ok, out, err) = crate::identity::cli(
            &self.profile,
            &["token", "issue", "--user", user, "--scopes", scopes],
            None,
        );
        assert!(ok, "token issue: {err}");
        out.trim().to_owned()
    }

    pub fn admin_token(&self) -> String {
        crate::support::mcp::admin_token(&self.warden, &self.profile.state_dir())
    }

    /// `POST path` with a bearer token, JSON `body` and extra headers.
    pub fn post(&self, path: &str, token: &str, body: &Value, extra: &[(&str, &str)]) -> Response {
        let auth = format!("Bearer {token}");
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let body = serde_json::to_vec(body).expect("JSON");
        http::request("POST", &self.warden.url(path), &headers, Some(&body))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub fn chat(&self, token: &str, body: Value, trace: &Trace) -> Response {
        self.post(
            "/v1/chat/completions",
            token,
            &body,
            &[("traceparent", &trace.header)],
        )
    }

    pub fn responses(&self, token: &str, body: &Value, trace: &Trace) -> Response {
        self.post(
            "/v1/responses",
            token,
            body,
            &[("traceparent", &trace.header)],
        )
    }

    /// `POST path` (a Gemini `…:generateContent` URL) the way Google's SDKs send it
    /// (`x-goog-api-key`).
    pub fn generate(&self, path: &str, token: &str, body: &Value, trace: &Trace) -> Response {
        let body = serde_json::to_vec(body).expect("JSON");
        http::request(
            "POST",
            &self.warden.url(path),
            &[
                ("x-goog-api-key", token),
                ("Content-Type", "application/json"),
                ("traceparent", &trace.header),
            ],
            Some(&body),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `POST /v1/messages` the way Anthropic's SDKs send it (`x-api-key`).
    pub fn messages(&self, token: &str, body: Value, trace: &Trace) -> Response {
        self.anthropic("/v1/messages", token, &body, trace)
    }

    /// `POST path` the way Anthropic's SDKs send it.
    pub fn anthropic(&self, path: &str, token: &str, body: &Value, trace: &Trace) -> Response {
        let body = serde_json::to_vec(body).expect("JSON");
        http::request(
            "POST",
            &self.warden.url(path),
            &[
                ("x-api-key", token),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "prompt-caching-2024-07-31"),
                ("Content-Type", "application/json"),
                ("traceparent", &trace.header),
            ],
            Some(&body),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Rows of `ai_requests` matching `condition`, as JSON objects, oldest first.
    pub fn rows(&self, condition: &str) -> Vec<Value> {
        self.db
            .query(&format!(
                "SELECT row_to_json(a)::text FROM ai_requests a WHERE {condition} ORDER BY created_at, id"
            ))
            .iter()
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).expect("row JSON"))
            .collect()
    }

    /// Waits for `n` rows matching `condition`.
    pub fn wait_rows(&self, condition: &str, n: usize) -> Vec<Value> {
        let mut rows = Vec::new();
        eventually(&format!("{n} ai_requests rows where {condition}"), || {
            rows = self.rows(condition);
            rows.len() >= n
        });
        rows
    }

    /// The one row of a trace.
    pub fn row(&self, trace: &Trace) -> Value {
        let mut rows = self.wait_rows(&format!("trace_id = '{}'", trace.id), 1);
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows.remove(0)
    }

    /// `audit_events` matching `condition`, as JSON objects.
    pub fn events(&self, condition: &str) -> Vec<Value> {
        self.db
            .query(&format!(
                "SELECT row_to_json(e)::text FROM audit_events e WHERE {condition} ORDER BY occurred_at, id"
            ))
            .iter()
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).expect("row JSON"))
            .collect()
    }

    /// The one permission decision of a trace.
    pub fn decision(&self, trace: &Trace) -> Value {
        let condition = format!("trace_id = '{}' AND kind = 'permission.decision'", trace.id);
        let mut decisions = self.wait_events(&condition, 1);
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        decisions.remove(0)
    }

    pub fn wait_events(&self, condition: &str, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        eventually(&format!("{n} audit events where {condition}"), || {
            events = self.events(condition);
            events.len() >= n
        });
        events
    }
}

/// Polls `check` until it holds or [`WAIT`] passes.
pub fn eventually(what: &str, check: impl FnMut() -> bool) {
    crate::support::eventually(what, WAIT, check);
}

/// A W3C trace the test starts, to find the rows of one request.
pub struct Trace {
    pub id: String,
    pub header: String,
}

impl Trace {
    pub fn new() -> Trace {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Trace {
            header: format!("00-{id}-00f067aa0ba902b7-01"),
            id,
        }
    }

    /// Asserts that Warden answered on this trace (its `traceparent`).
    pub fn assert_answered(&self, response: &Response) {
        assert!(
            response
                .header("traceparent")
                .is_some_and(|t| t.contains(&self.id)),
            "not answered on trace {}: {response:?}",
            self.id
        );
    }
}

/// The data of each event in an SSE body (`[DONE]` included), with the event's name.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event: ") {
                name = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data.push(value);
            }
        }
        if !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    events
}

/// The JSON events of an SSE body (without `[DONE]`).
pub fn sse_json(body: &str) -> Vec<Value> {
    sse_events(body)
        .into_iter()
        .filter(|(_, data)| data != "[DONE]")
        .map(|(_, data)| serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}")))
        .collect()
}

/// The text an OpenAI chunk stream carries.
pub fn openai_stream_text(body: &str) -> String {
    sse_json(body)
        .iter()
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The text a Gemini event stream carries.
pub fn gemini_stream_text(body: &str) -> String {
    sse_json(body)
        .iter()
        .filter_map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The text a Responses event stream carries (its `response.output_text.delta` events).
pub fn responses_stream_text(body: &str) -> String {
    sse_json(body)
        .iter()
        .filter(|event| event["type"] == "response.output_text.delta")
        .filter_map(|event| event["delta"].as_str().map(str::to_owned))
        .collect()
}

/// The text an Anthropic event stream carries.
pub fn anthropic_stream_text(body: &str) -> String {
    sse_json(body)
        .iter()
        .filter(|event| event["type"] == "content_block_delta")
        .filter_map(|event| event["delta"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// Sends a streaming request and reads until `needle` appears in what arrived, then
/// drops the connection (a client that goes away mid-answer).
pub fn stream_then_hang_up(
    warden: &WardenProcess,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
    needle: &str,
) {
    let authority = warden.base_url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&authority).expect("connect to Warden");
    stream
        .set_read_timeout(Some(WAIT))
        .expect("set a read timeout");
    let body = serde_json::to_vec(body).expect("JSON");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send the request");
    stream.write_all(&body).expect("send the body");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buf).expect("read the stream");
        assert!(
            n > 0,
            "the stream ended before `{needle}`: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
}

/// A user message.
pub fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// An Anthropic-shaped request.
pub fn ask_anthropic(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": text}]})
}

/// Sets `"stream": true` (and more) on a request.
pub fn streamed(mut request: Value, extra: Value) -> Value {
    request["stream"] = Value::Bool(true);
    if let (Some(target), Some(extra)) = (request.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            target.insert(key.clone(), value.clone());
        }
    }
    request
}
