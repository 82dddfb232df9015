//! `warden bridge --url URL [--token T | --token-file F]`: a stdio MCP server that
//! forwards everything to a Warden gateway over streamable HTTP, so stdio-only clients
//! (Claude Desktop) can use Warden as a `command`.
//!
//! - Requests run concurrently; their answers (JSON or an SSE stream, whose events are
//!   written out in order) go to stdout one line each, through one writer.
//! - The handshake is remembered: when Warden restarts (the session is unknown, 404, or
//!   the connection is refused), the bridge re-initialises with the client's original
//!   `initialize` and retries the request once; if that fails too, the client gets a
//!   JSON-RPC error for that request — the bridge never exits because Warden blinked.
//! - Requests carrying the 2026-07-28 per-request `_meta` are forwarded statelessly with
//!   the headers that revision requires.
//! - After the handshake a GET stream carries Warden's own notifications (list changes).
//!
//! Diagnostics go to stderr; stdout carries only protocol messages.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};
use warden_actors::jsonrpc::{self, RpcError, code};
use warden_actors::sse::SseReader;
use warden_actors::upstream::http::DEFAULT_MAX_MESSAGE_BYTES;

#[derive(clap::Args)]
pub(crate) struct BridgeArgs {
    /// The gateway endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long)]
    url: String,
    #[command(flatten)]
    token: super::TokenArg,
}

struct Bridge {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    /// The client's `initialize` params and the negotiated version, for re-initialising.
    handshake: Mutex<Option<(Value, String)>>,
    session: Mutex<Option<String>>,
    out: mpsc::UnboundedSender<String>,
}

pub(crate) async fn run(args: BridgeArgs) -> Result<ExitCode> {
    let token = args.token.load()?;
    let client = warden_actors::upstream::http::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let (out, mut lines) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
            {
                break;
            }
            let _ = stdout.flush().await;
        }
    });
    let bridge = Arc::new(Bridge {
        client,
        url: args.url,
        token,
        handshake: Mutex::new(None),
        session: Mutex::new(None),
        out,
    });
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await.context("reading stdin")? {
        if line.trim().is_empty() {
            continue;
        }
        let bridge = bridge.clone();
        tokio::spawn(async move { bridge.handle(line).await });
    }
    // The client closed stdin: end the session politely and flush what is queued.
    bridge.end_session().await;
    drop(bridge);
    let _ = writer.await;
    Ok(ExitCode::SUCCESS)
}

impl Bridge {
    async fn handle(self: Arc<Self>, line: String) {
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(error) => {
                self.error_out(
                    &Value::Null,
                    RpcError::new(code::PARSE_ERROR, format!("not JSON: {error}")),
                );
                return;
            }
        };
        let id = message.get("id").cloned().filter(|id| !id.is_null());
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let modern = message
            .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if method.as_deref() == Some("initialize") {
            self.initialize(message, id).await;
            return;
        }
        let outcome = match self.post(&message, modern.as_deref(), true).await {
            Err(Retry) => {
                if self.reinitialize().await {
                    self.post(&message, modern.as_deref(), false).await
                } else {
                    Err(Retry)
                }
            }
            done => done,
        };
        if outcome.is_err()
            && let Some(id) = id
        {
            self.error_out(
                &id,
                RpcError::new(
                    code::SERVER_UNAVAILABLE,
                    format!("Warden at {} is unreachable", self.url),
                ),
            );
        }
    }

    fn headers(&self, session: Option<&str>, version: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(token) = &self.token
            && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if let Some(session) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
            headers.insert("mcp-session-id", session);
        }
        if let Some(version) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert("mcp-protocol-version", version);
        }
        headers
    }

    /// Posts one message and relays the answer. `Err(Retry)` when the session or the
    /// connection is gone and a fresh handshake may help.
    async fn post(
        &self,
        message: &Value,
        modern: Option<&str>,
        may_retry: bool,
    ) -> Result<(), Retry> {
        let mut headers = match modern {
            Some(version) => {
                let mut headers = self.headers(None, Some(version));
                if let Some(method) = message.get("method").and_then(Value::as_str)
                    && let Ok(value) = HeaderValue::from_str(method)
                {
                    headers.insert("mcp-method", value);
                }
                let name = message
                    .pointer("/params/name")
                    .or_else(|| message.pointer("/params/uri"));
                if let Some(name) = name.and_then(Value::as_str) {
                    let value = if name.is_ascii() && !name.contains(['\r', '\n']) {
                        name.to_owned()
                    } else {
                        use base64::Engine as _;
                        format!(
                            "=?base64?{}?=",
                            base64::engine::general_purpose::STANDARD.encode(name)
                        )
                    };
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert("mcp-name", value);
                    }
                }
                headers
            }
            None => {
                let session = self.session.lock().await.clone();
                let version = self.handshake.lock().await.as_ref().map(|(_, v)| v.clone());
                self.headers(session.as_deref(), version.as_deref())
            }
        };
        headers.remove("content-length");
        let response = self
            .client
            .post(&self.url)
            .headers(headers)
            .json(message)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) if error.is_connect() && may_retry => return Err(Retry),
            Err(error) => {
                eprintln!("warden bridge: {error}");
                return Err(Retry);
            }
        };
        if response.status() == StatusCode::NOT_FOUND
            && modern.is_none()
            && may_retry
            && self.session.lock().await.is_some()
        {
            return Err(Retry);
        }
        self.relay(response).await;
        Ok(())
    }

    /// Writes the answer's JSON body, or each event of its SSE stream, to stdout.
    async fn relay(&self, mut response: reqwest::Response) {
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if response.status() == StatusCode::ACCEPTED {
            return;
        }
        if is_sse {
            let mut reader = SseReader::new(DEFAULT_MAX_MESSAGE_BYTES);
            let mut events = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let pushed = reader.push(&chunk, &mut events);
                for event in events.drain(..).filter(|e| !e.data.is_empty()) {
                    let _ = self.out.send(event.data);
                }
                if pushed.is_err() {
                    break;
                }
            }
        } else if let Ok(body) = response.text().await
            && !body.trim().is_empty()
        {
            // JSON bodies are single messages; keep them on one line.
            let line = serde_json::from_str::<Value>(&body)
                .map(|v| v.to_string())
                .unwrap_or(body);
            let _ = self.out.send(line);
        }
    }

    async fn initialize(&self, message: Value, id: Option<Value>) {
        let params = message.get("params").cloned().unwrap_or_else(|| json!({}));
        match self.handshake_with(&message).await {
            Ok((answer, version)) => {
                *self.handshake.lock().await = Some((params, version));
                let _ = self.out.send(answer);
                self.spawn_listener();
            }
            Err(error) => {
                if let Some(id) = id {
                    self.error_out(&id, RpcError::new(code::SERVER_UNAVAILABLE, error));
                }
            }
        }
    }

    /// Posts an `initialize`, stores the session id, returns the answer and the version.
    async fn handshake_with(&self, message: &Value) -> Result<(String, String), String> {
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers(None, None))
            .json(message)
            .send()
            .await
            .map_err(|e| format!("Warden at {} is unreachable: {e}", self.url))?;
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|_| format!("Warden answered {status}: {body}"))?;
        let version = answer
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        *self.session.lock().await = session;
        Ok((answer.to_string(), version))
    }

    /// Repeats the client's handshake after Warden forgot the session.
    async fn reinitialize(&self) -> bool {
        let Some((params, _)) = self.handshake.lock().await.clone() else {
            return false;
        };
        let message = json!({"jsonrpc": "2.0", "id": "warden-bridge-reinit", "method": "initialize", "params": params});
        match self.handshake_with(&message).await {
            Ok((_, version)) => {
                if let Some(handshake) = self.handshake.lock().await.as_mut() {
                    handshake.1 = version;
                }
                let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                let _ = self.post(&initialized, None, false).await;
                self.spawn_listener();
                eprintln!("warden bridge: re-initialised after Warden restarted");
                true
            }
            Err(error) => {
                eprintln!("warden bridge: {error}");
                false
            }
        }
    }

    /// Relays the GET stream of the current session until stdin closes; reconnects.
    fn spawn_listener(&self) {
        let client = self.client.clone();
        let url = self.url.clone();
        let out = self.out.clone();
        let session = self.session.try_lock().ok().and_then(|s| s.clone());
        let version = self
            .handshake
            .try_lock()
            .ok()
            .and_then(|h| h.as_ref().map(|(_, v)| v.clone()));
        let headers = self.headers(session.as_deref(), version.as_deref());
        if session.is_none() {
            return;
        }
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                let mut headers = headers.clone();
                headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
                headers.remove(CONTENT_TYPE);
                match client.get(&url).headers(headers).send().await {
                    Ok(response) if response.status().is_success() => {
                        delay = Duration::from_millis(500);
                        let mut response = response;
                        let mut reader = SseReader::new(DEFAULT_MAX_MESSAGE_BYTES);
                        let mut events = Vec::new();
                        while let Ok(Some(chunk)) = response.chunk().await {
                            let pushed = reader.push(&chunk, &mut events);
                            for event in events.drain(..).filter(|e| !e.data.is_empty()) {
                                if out.send(event.data).is_err() {
                                    return;
                                }
                            }
                            if pushed.is_err() {
                                break;
                            }
                        }
                    }
                    // The session is gone (Warden restarted): the next request re-initialises
                    // and starts a new listener.
                    Ok(response) if response.status() == StatusCode::NOT_FOUND => return,
                    Ok(response) if response.status() == StatusCode::METHOD_NOT_ALLOWED => return,
                    _ => {}
                }
                if out.is_closed() {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
    }

    async fn end_session(&self) {
        let session = self.session.lock().await.clone();
        if let Some(session) = session {
            let _ = self
                .client
                .delete(&self.url)
                .headers(self.headers(Some(&session), None))
                .send()
                .await;
        }
    }

    fn error_out(&self, id: &Value, error: RpcError) {
        let mut frame = Vec::new();
        jsonrpc::write_error(&mut frame, &id.to_string(), &error);
        let _ = self.out.send(String::from_utf8_lossy(&frame).into_owned());
    }
}

/// The session or connection is gone; a fresh handshake may help.
struct Retry;
