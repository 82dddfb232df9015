//! A small blocking MCP client over streamable HTTP for tests: the handshake, requests
//! answered as JSON or as an SSE stream (whose notifications are kept), and raw posts for
//! the edge cases. Plus [`EventStream`], a reader of Warden's `/events` stream that waits
//! for a matching lifecycle event with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{self, Response};
use super::warden::WardenProcess;

/// The bootstrap admin token of a running Warden.
pub fn admin_token(warden: &WardenProcess, state_dir: &std::path::Path) -> String {
    let path = state_dir.join("admin.token");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "no admin token at {} ({e}); log:\n{}",
                path.display(),
                warden.log()
            )
        })
        .trim()
        .to_owned()
}

/// One answered request: the final JSON-RPC message and anything streamed before it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub message: Value,
    pub notifications: Vec<Value>,
    pub response: Response,
}

impl Answer {
    pub fn result(&self) -> &Value {
        assert!(
            self.message.get("result").is_some(),
            "expected a result, got {} (HTTP {})",
            self.message,
            self.status
        );
        &self.message["result"]
    }

    pub fn error(&self) -> &Value {
        assert!(
            self.message.get("error").is_some(),
            "expected an error, got {} (HTTP {})",
            self.message,
            self.status
        );
        &self.message["error"]
    }

    /// The first text content of a tool result.
    pub fn text(&self) -> String {
        self.result()["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text content in {}", self.message))
            .to_owned()
    }
}

pub struct McpClient {
    pub url: String,
    pub token: Option<String>,
    pub session: Option<String>,
    pub protocol_version: String,
    next_id: u64,
}

impl McpClient {
    pub fn new(url: impl Into<String>, token: Option<String>) -> McpClient {
        McpClient {
            url: url.into(),
            token,
            session: None,
            protocol_version: "2025-11-25".into(),
            next_id: 1,
        }
    }

    /// A client that has completed the handshake.
    pub fn connect(url: impl Into<String>, token: &str) -> McpClient {
        let mut client = McpClient::new(url, Some(token.to_owned()));
        let answer = client.initialize(json!({"sampling": {}, "elicitation": {}, "roots": {}}));
        assert_eq!(answer.status, 200, "initialize: {:?}", answer.response);
        client
    }

    pub fn initialize(&mut self, capabilities: Value) -> Answer {
        let answer = self.request(
            "initialize",
            json!({
                "protocolVersion": self.protocol_version,
                "capabilities": capabilities,
                "clientInfo": {"name": "warden-tests", "version": "1"},
            }),
        );
        self.session = answer.response.header("mcp-session-id").map(str::to_owned);
        self.notify("notifications/initialized", json!({}));
        answer
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            (
                "Accept".to_owned(),
                "application/json, text/event-stream".to_owned(),
            ),
        ];
        if let Some(token) = &self.token {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        if let Some(session) = &self.session {
            headers.push(("Mcp-Session-Id".to_owned(), session.clone()));
            headers.push((
                "MCP-Protocol-Version".to_owned(),
                self.protocol_version.clone(),
            ));
        }
        headers
    }

    /// Sends a request and reads its whole answer.
    pub fn request(&mut self, method: &str, params: Value) -> Answer {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.post_json(&body, &[])
    }

    pub fn notify(&mut self, method: &str, params: Value) -> Response {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params});
        self.post_raw(body.to_string().as_bytes(), &[])
    }

    /// `tools/call` of `name` with `arguments`.
    pub fn call(&mut self, name: &str, arguments: Value) -> Answer {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
    }

    pub fn post_json(&mut self, body: &Value, extra: &[(&str, &str)]) -> Answer {
        let response = self.post_raw(body.to_string().as_bytes(), extra);
        parse_answer(response)
    }

    /// Posts bytes with this client's headers plus `extra` (which replace same-named ones).
    pub fn post_raw(&self, body: &[u8], extra: &[(&str, &str)]) -> Response {
        let mut headers = self.headers();
        for (name, value) in extra {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            if !value.is_empty() {
                headers.push(((*name).to_owned(), (*value).to_owned()));
            }
        }
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        http::request("POST", &self.url, &borrowed, Some(body))
            .unwrap_or_else(|e| panic!("POST {}: {e}", self.url))
    }
}

/// Reads a JSON or SSE answer.
pub fn parse_answer(response: Response) -> Answer {
    let is_sse = response
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut messages: Vec<Value> = if is_sse {
        sse_data(&response.body)
            .iter()
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad SSE data {d:?}: {e}")))
            .collect()
    } else if response.body.trim().is_empty() {
        Vec::new()
    } else {
        vec![
            serde_json::from_str(&response.body)
                .unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", response.body)),
        ]
    };
    let message = messages.pop().unwrap_or(Value::Null);
    Answer {
        status: response.status,
        message,
        notifications: messages,
        response,
    }
}

/// The `data` of each event in an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data = String::new();
    for line in body.lines() {
        if line.is_empty() {
            if !data.is_empty() {
                events.push(std::mem::take(&mut data));
            }
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.trim_start());
        }
    }
    if !data.is_empty() {
        events.push(data);
    }
    events
}

/// Warden's `/events` stream, read line by line.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    seen: Vec<Value>,
}

impl EventStream {
    pub fn open(warden: &WardenProcess, token: &str) -> EventStream {
        let authority = warden.base_url().trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&authority).expect("connect to /events");
        let request = format!(
            "GET /events HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .expect("send the /events request");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).expect("read the status line");
        assert!(status.contains(" 200 "), "/events answered {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read a header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        EventStream {
            reader,
            seen: Vec::new(),
        }
    }

    /// Waits for an event `matches` accepts; panics with everything seen on timeout.
    pub fn wait_for(&mut self, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_line(deadline) {
                Line::TimedOut => panic!(
                    "no matching event within {timeout:?}; saw:\n{:#?}",
                    self.seen
                ),
                Line::Ended => panic!("the event stream ended; saw:\n{:#?}", self.seen),
                Line::Text(line) => {
                    // Chunked framing: data lines carry the event JSON; other lines are
                    // framing.
                    if let Some(data) = line.trim_end().strip_prefix("data:") {
                        let event: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                        self.seen.push(event.clone());
                        if matches(&event) {
                            return event;
                        }
                    }
                }
            }
        }
    }

    /// Whether the server ends the stream within `timeout` (events meanwhile are skipped).
    pub fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_line(deadline) {
                Line::TimedOut => return false,
                Line::Ended => return true,
                Line::Text(_) => {}
            }
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Line {
        next_line(&mut self.reader, deadline)
    }
}

/// The next line of an event stream's chunked body, read until `deadline`. The body's
/// last chunk (`0`) counts as the end.
pub fn next_line(reader: &mut BufReader<TcpStream>, deadline: Instant) -> Line {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Line::TimedOut;
        }
        reader
            .get_ref()
            .set_read_timeout(Some(remaining))
            .expect("set a read timeout");
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Line::Ended,
            Ok(_) if line.trim_end() == "0" => return Line::Ended,
            Ok(_) => return Line::Text(line),
            Err(_) => continue,
        }
    }
}

/// One read from an event stream.
pub enum Line {
    Text(String),
    Ended,
    TimedOut,
}

/// An event named `name` about `server`.
pub fn event(name: &'static str, server: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| e["event"] == name && e["server"] == server
}
