//! An MCP client over streamable HTTP, as thin as a load generator can make it, yet
//! speaking the protocol the way real clients do.
//!
//! - **Handshake era** (2025-11-25): `initialize` → `Mcp-Session-Id` → `notifications/
//!   initialized`; later requests carry the session id and `MCP-Protocol-Version`. A `404`
//!   (session unknown, e.g. after a gateway restart) makes the next call re-initialise,
//!   as the spec tells clients to.
//! - **Stateless era** (2026-07-28): no session; each request carries `_meta` with the
//!   protocol version and client capabilities, and the `MCP-Protocol-Version`,
//!   `Mcp-Method` and `Mcp-Name` headers.
//!
//! Answers are read as JSON or as an SSE stream (the JSON-RPC response is the event whose
//! `id` is ours; notifications before it are skipped). Every `echo` call carries a unique
//! message and a unique id, and the reply must return both: a gateway that hands one
//! caller another caller's answer shows up as `mismatch` errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http::{Conn, HttpError, Reply};

/// The handshake revision the client asks for.
pub const HANDSHAKE_VERSION: &str = "2025-11-25";
/// The stateless revision.
pub const STATELESS_VERSION: &str = "2026-07-28";

/// Which protocol era a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Era {
    Handshake,
    Stateless,
}

/// Where and how to reach one MCP endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The request path, e.g. `/mcp`.
    pub path: String,
    /// `Authorization: Bearer …` when set.
    pub bearer: Option<String>,
    pub era: Era,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, path: &str) -> Endpoint {
        Endpoint {
            addr,
            path: path.to_owned(),
            bearer: None,
            era: Era::Handshake,
        }
    }
}

/// Why a call failed; [`CallError::kind`] is the label counted in reports.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreadable answer: {0}")]
    Protocol(String),
    #[error("JSON-RPC error {code}: {message}")]
    Rpc { code: i64, message: String },
    #[error("tool returned isError: {0}")]
    ToolError(String),
    #[error("answer does not match the request: {0}")]
    Mismatch(String),
    #[error("upstream closed")]
    Closed,
}

impl CallError {
    pub fn kind(&self) -> String {
        match self {
            CallError::Http(error) => error.kind().to_owned(),
            CallError::Status(status) => format!("http_{}", status.as_u16()),
            CallError::Timeout(_) => "timeout".to_owned(),
            CallError::Protocol(_) => "protocol".to_owned(),
            CallError::Rpc { code, .. } => format!("rpc_{code}"),
            CallError::ToolError(_) => "tool_error".to_owned(),
            CallError::Mismatch(_) => "mismatch".to_owned(),
            CallError::Closed => "closed".to_owned(),
        }
    }
}

/// One JSON-RPC answer, borrowed from the response body.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<RpcErrorBody>,
}

#[derive(Deserialize)]
struct RpcErrorBody {
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ToolResult {
    #[serde(default)]
    content: Vec<Content>,
    #[serde(rename = "isError", default)]
    is_error: bool,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ToolList {
    tools: Vec<ToolName>,
    #[serde(rename = "nextCursor", default)]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ToolName {
    name: String,
}

#[derive(Deserialize)]
struct InitializeResult {
    #[serde(rename = "protocolVersion")]
    protocol_version: String,
}

/// Finds the JSON-RPC response with id `id` in a JSON or SSE body and returns its
/// `result` (owned), or the error it carries.
pub fn extract_result(
    body: &[u8],
    event_stream: bool,
    id: &str,
) -> Result<Box<RawValue>, CallError> {
    let take = |answer: Answer<'_>| -> Result<Box<RawValue>, CallError> {
        if let Some(error) = answer.error {
            return Err(CallError::Rpc {
                code: error.code,
                message: error.message,
            });
        }
        answer
            .result
            .map(RawValue::to_owned)
            .ok_or_else(|| CallError::Protocol("response without result or error".into()))
    };
    if !event_stream {
        let answer: Answer<'_> =
            serde_json::from_slice(body).map_err(|e| CallError::Protocol(e.to_string()))?;
        check_id(answer.id, id)?;
        return take(answer);
    }
    let text = std::str::from_utf8(body).map_err(|e| CallError::Protocol(e.to_string()))?;
    let mut other_ids = Vec::new();
    for event in text.split("\n\n").flat_map(|e| e.split("\r\n\r\n")) {
        let data: String = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        if data.trim().is_empty() {
            continue;
        }
        let answer: Answer<'_> =
            serde_json::from_str(&data).map_err(|e| CallError::Protocol(e.to_string()))?;
        if answer.result.is_none() && answer.error.is_none() {
            continue; // a notification or a server→client request
        }
        match answer.id {
            Some(got) if got.get() == id => return take(answer),
            Some(got) => other_ids.push(got.get().to_owned()),
            None => {}
        }
    }
    if other_ids.is_empty() {
        Err(CallError::Protocol(
            "no response in the event stream".into(),
        ))
    } else {
        Err(CallError::Mismatch(format!(
            "expected id {id}, the stream answered {}",
            other_ids.join(",")
        )))
    }
}

fn check_id(got: Option<&RawValue>, want: &str) -> Result<(), CallError> {
    match got {
        Some(got) if got.get() == want => Ok(()),
        Some(got) => Err(CallError::Mismatch(format!(
            "expected id {want}, got {}",
            got.get()
        ))),
        None => Err(CallError::Mismatch(format!("expected id {want}, got none"))),
    }
}

/// Checks that an echo result returned exactly `message`.
pub fn check_echo(result: &RawValue, message: &str) -> Result<(), CallError> {
    let result: ToolResult =
        serde_json::from_str(result.get()).map_err(|e| CallError::Protocol(e.to_string()))?;
    let text = result.content.first().and_then(|c| c.text.as_deref());
    if result.is_error {
        return Err(CallError::ToolError(text.unwrap_or_default().to_owned()));
    }
    match text {
        Some(text) if text == message => Ok(()),
        Some(text) => Err(CallError::Mismatch(format!(
            "sent {message:?}, got {text:?}"
        ))),
        None => Err(CallError::Mismatch("no text in the result".into())),
    }
}

/// One MCP client: a connection, a session when the era has one, and an id counter.
pub struct Session {
    endpoint: Arc<Endpoint>,
    conn: Conn,
    host: HeaderValue,
    bearer: Option<HeaderValue>,
    session_id: Option<HeaderValue>,
    protocol_version: HeaderValue,
    initialised: bool,
    next_id: u64,
}

impl Session {
    /// A client that has not talked to the server yet; ids start at `first_id` so that
    /// every request of a run has its own id.
    pub fn new(endpoint: Arc<Endpoint>, first_id: u64) -> Result<Session, CallError> {
        let host = HeaderValue::from_str(&endpoint.addr.to_string())
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        let bearer = endpoint
            .bearer
            .as_ref()
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|e| CallError::Protocol(format!("bad token: {e}")))?;
        let version = match endpoint.era {
            Era::Handshake => HANDSHAKE_VERSION,
            Era::Stateless => STATELESS_VERSION,
        };
        Ok(Session {
            conn: Conn::new(endpoint.addr),
            endpoint,
            host,
            bearer,
            session_id: None,
            protocol_version: HeaderValue::from_static(version),
            initialised: false,
            next_id: first_id,
        })
    }

    fn request(
        &self,
        body: String,
        method: &str,
        name: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, CallError> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.path.as_str())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        if let Some(bearer) = &self.bearer {
            builder = builder.header(AUTHORIZATION, bearer.clone());
        }
        match self.endpoint.era {
            Era::Handshake => {
                if self.initialised {
                    builder = builder.header("mcp-protocol-version", self.protocol_version.clone());
                }
                if let Some(id) = &self.session_id {
                    builder = builder.header("mcp-session-id", id.clone());
                }
            }
            Era::Stateless => {
                builder = builder
                    .header("mcp-protocol-version", STATELESS_VERSION)
                    .header("mcp-method", method);
                if let Some(name) = name {
                    builder = builder.header("mcp-name", name);
                }
            }
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Http(HttpError::Build(e)))
    }

    /// The `params` prefix every request of this era needs (`_meta` when stateless).
    fn meta(&self) -> &'static str {
        match self.endpoint.era {
            Era::Handshake => "",
            Era::Stateless => {
                r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}},"#
            }
        }
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Reply, CallError> {
        let reply = self.conn.send(request).await?;
        if reply.status == StatusCode::NOT_FOUND && self.session_id.is_some() {
            // The server forgot the session: the next call starts a new one.
            self.initialised = false;
            self.session_id = None;
        }
        if !reply.status.is_success() {
            return Err(CallError::Status(reply.status));
        }
        Ok(reply)
    }

    /// Runs the handshake when the era has one and it has not run yet.
    pub async fn ensure_ready(&mut self) -> Result<(), CallError> {
        if self.initialised || self.endpoint.era == Era::Stateless {
            self.initialised = true;
            return Ok(());
        }
        let id = self.take_id();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{HANDSHAKE_VERSION}","capabilities":{{}},"clientInfo":{{"name":"warden-loadtest","version":"{}"}}}}}}"#,
            env!("CARGO_PKG_VERSION")
        );
        self.session_id = None;
        let request = self.request(body, "initialize", None)?;
        let reply = self.exchange(request).await?;
        self.session_id = reply.headers.get("mcp-session-id").cloned();
        let result = extract_result(&reply.body, is_event_stream(&reply), &id.to_string())?;
        let init: InitializeResult = serde_json::from_str(result.get())
            .map_err(|e| CallError::Protocol(format!("initialize result: {e}")))?;
        self.protocol_version = HeaderValue::from_str(&init.protocol_version)
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        self.initialised = true;
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned();
        let request = self.request(note, "notifications/initialized", None)?;
        self.exchange(request).await?;
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Calls `tool` (a JSON-safe name) with `{"message": message}` and checks that the
    /// answer echoes it. `message` must need no JSON escaping.
    pub async fn echo(&mut self, tool: &str, message: &str) -> Result<(), CallError> {
        self.ensure_ready().await?;
        let id = self.take_id();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{{}"name":"{tool}","arguments":{{"message":"{message}"}}}}}}"#,
            self.meta()
        );
        let request = self.request(body, "tools/call", Some(tool))?;
        let reply = self.exchange(request).await?;
        let result = extract_result(&reply.body, is_event_stream(&reply), &id.to_string())?;
        check_echo(&result, message)
    }

    /// Lists every tool (following cursors) and returns the names.
    pub async fn list_tools(&mut self) -> Result<Vec<String>, CallError> {
        self.ensure_ready().await?;
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let id = self.take_id();
            let cursor_param = cursor
                .as_ref()
                .map(|c| format!(r#""cursor":{},"#, serde_json::Value::from(c.as_str())))
                .unwrap_or_default();
            let params = format!("{}{cursor_param}", self.meta());
            let params = params.trim_end_matches(',');
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{{{params}}}}}"#
            );
            let request = self.request(body, "tools/list", None)?;
            let reply = self.exchange(request).await?;
            let result = extract_result(&reply.body, is_event_stream(&reply), &id.to_string())?;
            let page: ToolList = serde_json::from_str(result.get())
                .map_err(|e| CallError::Protocol(format!("tools/list result: {e}")))?;
            names.extend(page.tools.into_iter().map(|t| t.name));
            match page.next_cursor {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(names),
            }
        }
    }

    /// Ends the session (`DELETE` with its id), as a well-behaved client does; servers
    /// limit sessions per principal. Best effort: failures are ignored.
    pub async fn close(&mut self) {
        let Some(id) = self.session_id.take() else {
            return;
        };
        self.initialised = false;
        let mut builder = Request::builder()
            .method(Method::DELETE)
            .uri(self.endpoint.path.as_str())
            .header(HOST, self.host.clone())
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", self.protocol_version.clone());
        if let Some(bearer) = &self.bearer {
            builder = builder.header(AUTHORIZATION, bearer.clone());
        }
        if let Ok(request) = builder.body(Full::new(Bytes::new())) {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.send(request)).await;
        }
    }

    /// Drops the connection (after a timeout, when the request may still be in flight).
    pub fn reset_connection(&mut self) {
        self.conn.reset();
    }
}

fn is_event_stream(reply: &Reply) -> bool {
    reply
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_answer_with_our_id_in_an_event_stream() {
        let body = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n\
                     data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"m-7\"}]}}\n\n";
        let result = extract_result(body, true, "7").unwrap();
        check_echo(&result, "m-7").unwrap();
    }

    #[test]
    fn another_callers_answer_is_a_mismatch() {
        let body =
            br#"{"jsonrpc":"2.0","id":8,"result":{"content":[{"type":"text","text":"m-8"}]}}"#;
        let error = extract_result(body, false, "7").unwrap_err();
        assert_eq!(error.kind(), "mismatch");
        let result = extract_result(body, false, "8").unwrap();
        assert_eq!(check_echo(&result, "m-7").unwrap_err().kind(), "mismatch");
        let sse = b"data: {\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{}}\n\n";
        assert_eq!(
            extract_result(sse, true, "7").unwrap_err().kind(),
            "mismatch"
        );
    }

    #[test]
    fn rpc_errors_and_tool_errors_are_their_own_kinds() {
        let body = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Unknown tool"}}"#;
        assert_eq!(
            extract_result(body, false, "1").unwrap_err().kind(),
            "rpc_-32602"
        );
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"boom"}],"isError":true}}"#;
        let result = extract_result(body, false, "1").unwrap();
        assert_eq!(check_echo(&result, "x").unwrap_err().kind(), "tool_error");
        assert_eq!(
            extract_result(b"not json", false, "1").unwrap_err().kind(),
            "protocol"
        );
    }

    #[test]
    fn crlf_event_streams_parse() {
        let body = b"data: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{\"tools\":[]}}\r\n\r\n";
        assert!(extract_result(body, true, "\"a\"").is_ok());
    }
}
