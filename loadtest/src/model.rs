//! The `ai` scenario's two halves: a stand-in OpenAI-compatible model server, and the
//! client that streams chat completions from it (directly or through Warden).
//!
//! The stand-in answers `POST /v1/chat/completions` with `stream: true` by echoing the
//! last message's text back as [`CHUNKS`] content chunks (one HTTP body frame each, no
//! pauses, so the figures are the proxy's cost and not the model's), then a usage chunk
//! and `data: [DONE]`. It runs inside the load test process on a free loopback port; its
//! CPU therefore counts as load-generator CPU, not as Warden's.
//!
//! The client sends the request with a unique text, reads the whole stream, and checks
//! that the text came back and the stream ended with `[DONE]`: a proxy that dropped or
//! reordered chunks would fail the check.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::http::Conn;
use crate::mcp::CallError;

/// Content chunks per streamed answer.
pub const CHUNKS: usize = 16;

/// The model name clients ask for, and the upstream model it maps to.
pub const MODEL: &str = "loadtest";

/// A running stand-in model server; stops when dropped.
pub struct StandIn {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    pub async fn start() -> Result<StandIn, crate::Error> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| crate::Error::Io {
                context: "binding the stand-in model server".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| crate::Error::Io {
            context: "reading the stand-in model server's address".into(),
            source,
        })?;
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of descriptors, most likely: say so, and do not spin.
                        eprintln!("loadtest: the stand-in model server cannot accept: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Failing to set it only costs latency, which the figures would show.
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(answer);
                    // A client that hangs up mid-stream is not the server's problem.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(StandIn { addr, task })
    }
}

type StreamedBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn answer(request: Request<Incoming>) -> Result<Response<StreamedBody>, Infallible> {
    let text = match request.into_body().collect().await {
        Ok(body) => serde_json::from_slice::<Value>(&body.to_bytes())
            .ok()
            .and_then(|v| {
                v["messages"].as_array()?.last()?["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut frames = Vec::with_capacity(CHUNKS + 2);
    let piece = text.len().div_ceil(CHUNKS).max(1);
    let mut rest = text.as_str();
    for _ in 0..CHUNKS {
        let cut = floor_char_boundary(rest, piece);
        let (now, later) = rest.split_at(cut);
        rest = later;
        let chunk = json!({
            "id": "lt", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": now}, "finish_reason": null}],
        });
        frames.push(Ok(Frame::data(Bytes::from(format!("data: {chunk}\n\n")))));
    }
    let usage = json!({
        "id": "lt", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS},
    });
    frames.push(Ok(Frame::data(Bytes::from(format!(
        "data: {usage}\n\ndata: [DONE]\n\n"
    )))));
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(response)
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Where streamed chat completions go: the stand-in itself or Warden's `/v1`.
pub struct ChatEndpoint {
    pub addr: SocketAddr,
    pub bearer: Option<String>,
}

/// One client: one keep-alive connection.
pub struct ChatClient {
    endpoint: Arc<ChatEndpoint>,
    conn: Conn,
}

impl ChatClient {
    pub fn new(endpoint: Arc<ChatEndpoint>) -> ChatClient {
        let conn = Conn::new(endpoint.addr);
        ChatClient { endpoint, conn }
    }

    /// Streams one completion of `tag` and checks it came back whole.
    pub async fn stream(&mut self, tag: &str, timeout: Duration) -> Result<(), CallError> {
        let body = json!({
            "model": MODEL,
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": tag}],
        });
        let mut request = Request::builder()
            .method(hyper::Method::POST)
            .uri("/v1/chat/completions")
            .header(hyper::header::HOST, self.endpoint.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(bearer) = &self.endpoint.bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        let reply = match tokio::time::timeout(timeout, self.conn.send(request)).await {
            Ok(reply) => reply?,
            Err(_) => {
                self.conn.reset();
                return Err(CallError::Timeout(timeout));
            }
        };
        if reply.status != StatusCode::OK {
            return Err(CallError::Status(reply.status));
        }
        check_stream(&reply.body, tag)
    }
}

/// The content deltas of an OpenAI-shape stream, joined, must equal `tag`, and the
/// stream must end with `[DONE]`.
fn check_stream(body: &[u8], tag: &str) -> Result<(), CallError> {
    let text = std::str::from_utf8(body).map_err(|e| CallError::Protocol(e.to_string()))?;
    let mut content = String::new();
    let mut done = false;
    for data in text.lines().filter_map(|l| l.strip_prefix("data:")) {
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let event: Value =
            serde_json::from_str(data).map_err(|e| CallError::Protocol(format!("{e}: {data}")))?;
        if let Some(delta) = event["choices"][0]["delta"]["content"].as_str() {
            content.push_str(delta);
        }
    }
    if !done {
        return Err(CallError::Mismatch(
            "the stream did not end with [DONE]".into(),
        ));
    }
    if content != tag {
        return Err(CallError::Mismatch(format!(
            "streamed `{content}`, expected `{tag}`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_stream_passes_and_a_cut_one_fails() {
        let whole = "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\n\ndata: [DONE]\n\n";
        assert!(check_stream(whole.as_bytes(), "abc").is_ok());
        assert!(check_stream(whole.as_bytes(), "abd").is_err());
        let cut = &whole[..whole.len() - "data: [DONE]\n\n".len()];
        assert!(check_stream(cut.as_bytes(), "abc").is_err());
    }
}
