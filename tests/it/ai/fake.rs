//! Stand-ins for model providers: a small HTTP/1.1 server on loopback (std threads, one
//! per connection) that records every request it sees (method, path, headers, body) and
//! answers with what the test's handler returns — a JSON answer with any status, an
//! event stream (chunked, optionally held open until the peer closes), or nothing at all.
//! The builders below write each provider's wire format: OpenAI chat completions (with
//! the usage chunk when `stream_options.include_usage` asks for it), Anthropic messages
//! and their named events, Gemini `generateContent` and `streamGenerateContent?alt=sse`.
//!
//! Nothing of Warden's is faked: these are the upstreams Warden calls.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One request the provider received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub raw: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request was for a streamed answer.
    pub fn streaming(&self) -> bool {
        self.body["stream"] == true || self.path.contains("streamGenerateContent")
    }
}

/// What the provider answers.
pub enum Reply {
    Json {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Value,
    },
    /// Events (each already in SSE form), then the end of the stream — or, with
    /// `hold_open`, nothing more until the peer closes the connection.
    Events {
        events: Vec<String>,
        hold_open: bool,
    },
    /// Never answers; waits for the peer to close.
    Hang,
    /// Events `before`, then — once the test opens `gate` — events `after` and the end of
    /// the stream (a provider still generating when its client goes away).
    Gated {
        before: Vec<String>,
        gate: Gate,
        after: Vec<String>,
    },
}

/// A gate a [`Reply::Gated`] stream waits at until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.0.1.notify_all();
    }

    /// Waits until the gate opens or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut open = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        while !*open && Instant::now() < deadline {
            open = self
                .0
                .1
                .wait_timeout(open, deadline - Instant::now())
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    /// Connections the peer closed while the provider was holding them open.
    peer_closes: Mutex<usize>,
    changed: Condvar,
}

pub struct FakeProvider {
    pub url: String,
    shared: Arc<Shared>,
}

impl FakeProvider {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let shared = Arc::new(Shared::default());
        let handler: Arc<Handler> = Arc::new(handler);
        let accept_shared = shared.clone();
        std::thread::Builder::new()
            .name("fake-provider".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let shared = accept_shared.clone();
                    let handler = handler.clone();
                    std::thread::spawn(move || serve(stream, handler.as_ref(), &shared));
                }
            })
            .expect("start the fake provider");
        FakeProvider { url, shared }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last request.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the provider received a request")
    }

    /// Waits until the peer has closed `n` held connections.
    pub fn wait_for_peer_closes(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut closes = self
            .shared
            .peer_closes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *closes < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            closes = self
                .shared
                .changed
                .wait_timeout(closes, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

fn serve(stream: TcpStream, handler: &Handler, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().expect("clone the socket"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let raw = String::from_utf8_lossy(&body).into_owned();
    let seen = Seen {
        method,
        path,
        headers,
        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
    };
    shared
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(seen.clone());
    shared.changed.notify_all();
    let mut stream = stream;
    match handler(&seen) {
        Reply::Json {
            status,
            headers,
            body,
        } => {
            let body = body.to_string();
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
        Reply::Events { events, hold_open } => {
            write_events(&mut stream, &events, true);
            if hold_open {
                wait_for_close(&mut reader, shared);
            } else {
                let _ = stream.write_all(b"0\r\n\r\n");
            }
        }
        Reply::Hang => wait_for_close(&mut reader, shared),
        Reply::Gated {
            before,
            gate,
            after,
        } => {
            write_events(&mut stream, &before, true);
            gate.wait(Duration::from_secs(60));
            write_events(&mut stream, &after, false);
            let _ = stream.write_all(b"0\r\n\r\n");
        }
    }
}

/// Writes `events` as chunks of an event stream (after the response head when `head`).
fn write_events(stream: &mut TcpStream, events: &[String], head: bool) {
    if head {
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
    }
    for event in events {
        let _ = stream.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
        let _ = stream.flush();
    }
}

/// Blocks until the peer closes the connection, then counts it.
fn wait_for_close(reader: &mut BufReader<TcpStream>, shared: &Shared) {
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    *shared.peer_closes.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    shared.changed.notify_all();
}

fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

fn named(event: &str, value: &Value) -> String {
    format!("event: {event}\ndata: {value}\n\n")
}

pub fn json_reply(body: Value) -> Reply {
    Reply::Json {
        status: 200,
        headers: Vec::new(),
        body,
    }
}

// ---------------------------------------------------------------------------------------
// OpenAI (and OpenAI-compatible servers)
// ---------------------------------------------------------------------------------------

/// A chat completion with `text` and usage (`cached` of the prompt tokens from cache).
pub fn openai_answer(model: &str, text: &str, prompt: u64, completion: u64, cached: u64) -> Value {
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    })
}

/// A tool call answer.
pub fn openai_tool_answer(model: &str, name: &str, arguments: &str) -> Value {
    json!({
        "id": "chatcmpl-tool", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_abc", "type": "function",
                            "function": {"name": name, "arguments": arguments}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    })
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

/// A stream of `pieces`; the usage chunk only when the request asked for it.
pub fn openai_stream(
    request: &Seen,
    model: &str,
    pieces: &[&str],
    prompt: u64,
    completion: u64,
) -> Reply {
    let mut events = vec![data(&chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    ))];
    for piece in pieces {
        events.push(data(&chunk(model, json!({"content": piece}), None)));
    }
    events.push(data(&chunk(model, json!({}), Some("stop"))));
    if request.body["stream_options"]["include_usage"] == true {
        events.push(data(
            &json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": 1, "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}),
        ));
    }
    events.push("data: [DONE]\n\n".into());
    Reply::Events {
        events,
        hold_open: false,
    }
}

/// A streamed tool call (arguments in two pieces).
pub fn openai_tool_stream(model: &str, name: &str, first: &str, second: &str) -> Reply {
    let events = vec![
        data(&chunk(
            model,
            json!({"role": "assistant", "content": null}),
            None,
        )),
        data(&chunk(
            model,
            json!({"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                                                   "function": {"name": name, "arguments": ""}}]}),
            None,
        )),
        data(&chunk(
            model,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": first}}]}),
            None,
        )),
        data(&chunk(
            model,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": second}}]}),
            None,
        )),
        data(&chunk(model, json!({}), Some("tool_calls"))),
        data(
            &json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                     "model": model, "choices": [],
                     "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}}),
        ),
        "data: [DONE]\n\n".into(),
    ];
    Reply::Events {
        events,
        hold_open: false,
    }
}

// ---------------------------------------------------------------------------------------
// OpenAI's Responses API
// ---------------------------------------------------------------------------------------

/// A Responses `usage` (`cached` of the input tokens from cache).
pub fn responses_usage(input: u64, cached: u64, output: u64) -> Value {
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": cached},
           "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": input + output})
}

/// A complete Responses answer with `text`, in `status`, with `usage` (`null` for none).
pub fn responses_answer(model: &str, text: &str, status: &str, usage: Value) -> Value {
    json!({
        "id": "resp_fake", "object": "response", "created_at": 1, "status": status,
        "model": model, "error": null, "incomplete_details": null,
        "output": [{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": usage,
    })
}

/// A Responses event stream of `pieces`, ended by `terminal` (`response.completed`,
/// `response.incomplete` or `response.failed`) carrying `usage` — or, with `terminal`
/// `None`, held open after the pieces (a provider still generating).
pub fn responses_stream(
    model: &str,
    pieces: &[&str],
    terminal: Option<&str>,
    usage: Value,
) -> Reply {
    let mut sequence = 0;
    let mut event = |kind: &str, mut body: Value| {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(sequence);
        sequence += 1;
        named(kind, &body)
    };
    let mut created = responses_answer(model, "", "in_progress", Value::Null);
    created["output"] = json!([]);
    let text = pieces.concat();
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let at = |extra: Value| {
        let mut body = json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0});
        if let (Some(target), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            target.extend(extra.clone());
        }
        body
    };
    let mut events = vec![
        event("response.created", json!({"response": created})),
        event(
            "response.output_item.added",
            json!({"output_index": 0, "item": {"type": "message", "id": "msg_fake",
                   "role": "assistant", "status": "in_progress", "content": []}}),
        ),
        event("response.content_part.added", at(json!({"part": part("")}))),
    ];
    for piece in pieces {
        events.push(event(
            "response.output_text.delta",
            at(json!({"delta": piece})),
        ));
    }
    let hold_open = terminal.is_none();
    if let Some(terminal) = terminal {
        let status = terminal.trim_start_matches("response.");
        let mut done = responses_answer(model, &text, status, usage);
        if status == "failed" {
            done["error"] = json!({"code": "server_error", "message": "the model overheated"});
        }
        events.push(event(
            "response.output_text.done",
            at(json!({"text": text})),
        ));
        events.push(event(
            "response.content_part.done",
            at(json!({"part": part(&text)})),
        ));
        events.push(event(
            "response.output_item.done",
            json!({"output_index": 0, "item": done["output"][0].clone()}),
        ));
        events.push(event(terminal, json!({"response": done})));
    }
    Reply::Events { events, hold_open }
}

// ---------------------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------------------

/// An Anthropic provider as most tests want it (model `claude-test`): with tools, a
/// `weather` call for Oslo (complete, or streamed in two pieces of arguments); without,
/// "Hello" (complete, 9 input and 4 output tokens; streamed in two pieces, input reported
/// at the start and output at the end).
pub fn claude(seen: &Seen) -> Reply {
    match (seen.streaming(), seen.body["tools"].is_array()) {
        (true, true) => anthropic_tool_stream("claude-test", "weather", "{\"city\":", "\"Oslo\"}"),
        (false, true) => json_reply(anthropic_tool_answer(
            "claude-test",
            "weather",
            json!({"city": "Oslo"}),
        )),
        (true, false) => anthropic_stream(
            "claude-test",
            &["Hel", "lo"],
            json!({"input_tokens": 9, "output_tokens": 1}),
            json!({"output_tokens": 4}),
            None,
        ),
        (false, false) => json_reply(anthropic_answer(
            "claude-test",
            "Hello",
            json!({"input_tokens": 9, "output_tokens": 4}),
        )),
    }
}

pub fn anthropic_answer(model: &str, text: &str, usage: Value) -> Value {
    json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
           "content": [{"type": "text", "text": text}],
           "stop_reason": "end_turn", "stop_sequence": null, "usage": usage})
}

pub fn anthropic_tool_answer(model: &str, name: &str, input: Value) -> Value {
    json!({"id": "msg_tool", "type": "message", "role": "assistant", "model": model,
           "content": [{"type": "text", "text": "Let me check."},
                       {"type": "tool_use", "id": "toolu_1", "name": name, "input": input}],
           "stop_reason": "tool_use", "stop_sequence": null,
           "usage": {"input_tokens": 60, "output_tokens": 20}})
}

/// The events of a streamed text answer, in order: message_start (with `start_usage`),
/// a text block with `pieces`, message_delta (with `end_usage`), message_stop. With
/// `cut_after`, only that many text pieces are sent and the stream is held open.
pub fn anthropic_stream(
    model: &str,
    pieces: &[&str],
    start_usage: Value,
    end_usage: Value,
    cut_after: Option<usize>,
) -> Reply {
    let mut events = vec![
        named(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
        ),
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        named("ping", &json!({"type": "ping"})),
    ];
    for (i, piece) in pieces.iter().enumerate() {
        if cut_after == Some(i) {
            return Reply::Events {
                events,
                hold_open: true,
            };
        }
        events.push(named(
            "content_block_delta",
            &json!({"type": "content_block_delta",
            "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    if cut_after.is_some() {
        return Reply::Events {
            events,
            hold_open: true,
        };
    }
    events.push(named(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named(
        "message_delta",
        &json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": end_usage}),
    ));
    events.push(named("message_stop", &json!({"type": "message_stop"})));
    Reply::Events {
        events,
        hold_open: false,
    }
}

/// A streamed tool use: text, then a tool_use block with its input in two pieces.
pub fn anthropic_tool_stream(model: &str, name: &str, first: &str, second: &str) -> Reply {
    let events = vec![
        named(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": "msg_tool", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 60, "output_tokens": 1}}}),
        ),
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Let me check."}}),
        ),
        named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}}),
        ),
        named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": first}}),
        ),
        named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": second}}),
        ),
        named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 1}),
        ),
        named(
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 20}}),
        ),
        named("message_stop", &json!({"type": "message_stop"})),
    ];
    Reply::Events {
        events,
        hold_open: false,
    }
}

// ---------------------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------------------

/// A Gemini provider answering `model_version`: `text` complete, or streamed in `pieces`,
/// with `usage` (`usageMetadata`) either way.
pub fn gemini_provider(
    model_version: &'static str,
    text: &'static str,
    pieces: &'static [&'static str],
    usage: Value,
) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |seen| {
        if seen.streaming() {
            gemini_stream(model_version, pieces, usage.clone())
        } else {
            json_reply(gemini_answer(model_version, text, usage.clone()))
        }
    }
}

pub fn gemini_answer(model_version: &str, text: &str, usage: Value) -> Value {
    json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                           "finishReason": "STOP", "index": 0}],
           "usageMetadata": usage, "modelVersion": model_version, "responseId": "resp-fake"})
}

pub fn gemini_stream(model_version: &str, pieces: &[&str], usage: Value) -> Reply {
    let mut events = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let mut candidate =
            json!({"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0});
        if last {
            candidate["finishReason"] = json!("STOP");
        }
        let mut chunk = json!({"candidates": [candidate], "modelVersion": model_version,
                               "responseId": "resp-fake"});
        if last {
            chunk["usageMetadata"] = usage.clone();
        }
        events.push(format!("data: {chunk}\r\n\r\n"));
    }
    Reply::Events {
        events,
        hold_open: false,
    }
}
