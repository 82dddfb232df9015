//! The streamable-HTTP transport (MCP 2025-03-26 and later) to an HTTP child on a leased
//! loopback port or to a remote server.
//!
//! Each request is one POST; the answer is either a JSON body or an SSE stream that may
//! carry notifications and server→client requests before the response. Everything on a
//! request's own stream is attributed to that request (so upcalls reach the right
//! client without guessing). The session id from the `initialize` answer is echoed on
//! every later request along with `MCP-Protocol-Version`; after `initialized`, a GET
//! stream carries what the server sends on its own (list changes).
//!
//! A session the server no longer knows (404) closes the connection; the server actor
//! then ends the attempt and the supervisor starts a fresh one (a new handshake). Header
//! values that came from secrets are kept in [`Redacted`] and never logged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;

use super::{CallError, Connection, ConnectionEvent, Outbound};
use crate::redact::Redacted;
use crate::sse::{SseEvent, SseReader};

/// The largest response body or single SSE event accepted where nothing else is
/// configured (the bridge); servers have their own `max_message_bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How much of an error response is read for its excerpt.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

struct HttpOutbound {
    inner: Arc<HttpInner>,
}

struct HttpInner {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    session: Mutex<Option<String>>,
    max_message_bytes: usize,
}

/// Installs the process-wide TLS crypto provider once (ring).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `reqwest` client builder with the crypto provider installed and Nagle off. Every
/// HTTP client in Warden starts here (building one without a provider panics).
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().tcp_nodelay(true)
}

/// A connection to `url`. Nothing is sent until the first call.
pub fn connect(
    server: Arc<str>,
    url: String,
    headers: Vec<(String, Redacted<String>)>,
    max_message_bytes: usize,
    scrub: crate::redact::Scrub,
    events: mpsc::UnboundedSender<ConnectionEvent>,
) -> Result<Arc<Connection>, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        let mut value = HeaderValue::try_from(value.expose().as_str())
            .map_err(|_| format!("the value of header `{name}` is not valid"))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    let client = client_builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let outbound = HttpOutbound {
        inner: Arc::new(HttpInner {
            client,
            url,
            headers: map,
            session: Mutex::new(None),
            max_message_bytes,
        }),
    };
    Ok(Connection::new(server, Box::new(outbound), events, scrub))
}

impl HttpInner {
    fn request(&self, conn: &Connection, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut builder = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(session) = self.session_id() {
            builder = builder.header(SESSION_HEADER, session);
        }
        if let Some(version) = conn.protocol_version() {
            builder = builder.header(VERSION_HEADER, version);
        }
        builder
    }

    fn session_id(&self) -> Option<String> {
        self.session.lock().ok().and_then(|s| s.clone())
    }

    fn after_session(&self, session: Option<String>) {
        if let (Some(session), Ok(mut slot)) = (session, self.session.lock()) {
            *slot = Some(session);
        }
    }

    fn listen_request(&self, conn: &Connection) -> Option<reqwest::RequestBuilder> {
        let session = self.session_id()?;
        let mut builder = self
            .client
            .get(&self.url)
            .headers(self.headers.clone())
            .header(ACCEPT, "text/event-stream")
            .header(SESSION_HEADER, session);
        if let Some(version) = conn.protocol_version() {
            builder = builder.header(VERSION_HEADER, version);
        }
        Some(builder)
    }
}

impl Outbound for HttpOutbound {
    fn send_request(
        &self,
        conn: &Arc<Connection>,
        id: u64,
        frame: Vec<u8>,
    ) -> Result<(), CallError> {
        let request = self.inner.request(conn, frame);
        let conn = conn.clone();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            match request.send().await {
                Ok(response) => {
                    if let Err(error) = read_response(&conn, &inner, id, response).await {
                        conn.fail(id, error);
                    }
                }
                Err(error) => conn.fail(id, CallError::Send(describe(&error))),
            }
        });
        Ok(())
    }

    fn send_frame(&self, conn: &Arc<Connection>, frame: Vec<u8>) -> Result<(), CallError> {
        let initialized = frame.windows(25).any(|w| w == b"notifications/initialized");
        let request = self.inner.request(conn, frame);
        let conn = conn.clone();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    if initialized {
                        tokio::spawn(listen(conn, inner));
                    }
                }
                Ok(response) => {
                    tracing::debug!(server = conn.server(), status = %response.status(), "upstream refused a notification");
                }
                Err(error) => {
                    tracing::debug!(server = conn.server(), error = %describe(&error), "sending a notification failed")
                }
            }
        });
        Ok(())
    }
}

fn describe(error: &reqwest::Error) -> String {
    // reqwest's Display hides the cause chain ("error sending request"); show it.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_response(
    conn: &Arc<Connection>,
    inner: &HttpInner,
    id: u64,
    mut response: reqwest::Response,
) -> Result<(), CallError> {
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND && inner.session_id().is_some() {
        conn.close("the server no longer knows the session (404)".into());
        return Err(CallError::Closed(
            "the server no longer knows the session (404)".into(),
        ));
    }
    if !status.is_success() {
        // What arrived of it is enough for the message, however it ended.
        let (body, _) = read_capped(&mut response, MAX_ERROR_BODY_BYTES).await;
        let excerpt: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        return Err(CallError::Send(format!("HTTP {status}: {excerpt}")));
    }
    let session = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    inner.after_session(session);
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        let mut reader = SseReader::new(inner.max_message_bytes);
        let mut events = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::Send(describe(&e)))?
        {
            let pushed = reader.push(&chunk, &mut events);
            // The events before an oversized one are delivered: one may be the answer.
            dispatch_all(conn, &mut events, Some(id));
            pushed.map_err(|e| CallError::Send(naming_the_limit(conn, e)))?;
            if !conn.is_pending(id) {
                // The response arrived; the rest of the stream is not ours to wait for.
                return Ok(());
            }
        }
        if conn.is_pending(id) {
            return Err(CallError::Send(
                "the event stream ended before the response".into(),
            ));
        }
        Ok(())
    } else {
        let max = inner.max_message_bytes;
        let body = match read_capped(&mut response, max).await {
            (body, BodyEnd::Complete) => body,
            (_, BodyEnd::TooLarge) => {
                let what = format!("a response larger than {max} bytes");
                return Err(CallError::Send(naming_the_limit(conn, what)));
            }
            (_, BodyEnd::Broken(error)) => return Err(CallError::Send(describe(&error))),
        };
        conn.dispatch(&body, Some(id));
        if conn.is_pending(id) {
            return Err(CallError::Send(
                "the server answered without a JSON-RPC response".into(),
            ));
        }
        Ok(())
    }
}

/// The GET stream for what the server sends on its own; reconnects until the connection
/// closes. A server without one (405) is fine: list changes then arrive only on POST
/// streams.
async fn listen(conn: Arc<Connection>, inner: Arc<HttpInner>) {
    let mut delay = Duration::from_millis(250);
    while !conn.is_closed() {
        let Some(request) = inner.listen_request(&conn) else {
            return;
        };
        let response = tokio::select! {
            r = request.send() => r,
            _ = conn.closed() => return,
        };
        match response {
            Ok(response) if response.status().is_success() => {
                let mut response = response;
                let mut reader = SseReader::new(inner.max_message_bytes);
                let mut events = Vec::new();
                // A stream refused for an oversized event is opened again with back-off,
                // not at once: the server may send it again.
                let mut refused = false;
                loop {
                    let chunk = tokio::select! {
                        c = response.chunk() => c,
                        _ = conn.closed() => return,
                    };
                    let Ok(Some(chunk)) = chunk else { break };
                    let pushed = reader.push(&chunk, &mut events);
                    dispatch_all(&conn, &mut events, None);
                    if let Err(error) = pushed {
                        tracing::warn!(
                            server = conn.server(),
                            "{}; the listen stream is opened again",
                            naming_the_limit(&conn, error)
                        );
                        refused = true;
                        break;
                    }
                }
                if !refused {
                    delay = Duration::from_millis(250);
                }
            }
            Ok(response) if response.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => return,
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = conn.closed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// How reading a body ended.
pub enum BodyEnd {
    Complete,
    /// It was longer than the limit; what was read is its first bytes.
    TooLarge,
    Broken(reqwest::Error),
}

/// Reads a body, up to `max` bytes: what was read, and how the reading ended.
pub async fn read_capped(response: &mut reqwest::Response, max: usize) -> (Vec<u8>, BodyEnd) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > max => {
                body.extend_from_slice(&chunk[..max - body.len()]);
                return (body, BodyEnd::TooLarge);
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return (body, BodyEnd::Complete),
            Err(error) => return (body, BodyEnd::Broken(error)),
        }
    }
}

/// Hands each event's data to the connection (an event without data, such as the
/// priming event a server sends first, carries no message).
fn dispatch_all(conn: &Arc<Connection>, events: &mut Vec<SseEvent>, stream_of: Option<u64>) {
    for event in events.drain(..) {
        if !event.data.is_empty() {
            conn.dispatch(event.data.as_bytes(), stream_of);
        }
    }
}

/// What was too large, with the profile key an operator would change.
fn naming_the_limit(conn: &Connection, what: impl std::fmt::Display) -> String {
    format!("{what} (servers.{}.max_message_bytes)", conn.server())
}
