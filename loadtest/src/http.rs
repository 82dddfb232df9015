//! One keep-alive HTTP/1.1 connection, the way a single MCP client holds one.
//!
//! Each simulated client owns its own [`Conn`] (hyper's connection-level client: no pool,
//! no shared lock between callers). `TCP_NODELAY` is set, as a real client should: with
//! Nagle and delayed ACK a server that writes an answer in two pieces costs ~40 ms per call
//! (see docs/benchmarks.md). A connection that failed is reopened on the next request.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why an HTTP exchange failed below the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("request: {0}")]
    Request(#[source] hyper::Error),
    #[error("response body: {0}")]
    Body(#[source] hyper::Error),
    #[error("building the request: {0}")]
    Build(#[from] hyper::http::Error),
}

impl HttpError {
    /// The error-kind label used in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect { .. } => "connect",
            HttpError::Handshake(_) => "handshake",
            HttpError::Request(_) => "transport",
            HttpError::Body(_) => "body",
            HttpError::Build(_) => "build",
        }
    }
}

/// A complete response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One HTTP/1.1 connection to `addr`, reopened on demand.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn { addr, sender: None }
    }

    /// Sends `request` and reads the whole answer. On any failure the connection is
    /// dropped, so the next request opens a fresh one.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Reply, HttpError> {
        let outcome = self.exchange(request).await;
        if outcome.is_err() {
            self.sender = None;
        }
        outcome
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Reply, HttpError> {
        let mut sender = match self.sender.take() {
            Some(mut sender) => match sender.ready().await {
                Ok(()) => sender,
                Err(_) => connect(self.addr).await?,
            },
            None => connect(self.addr).await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(HttpError::Request)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(HttpError::Body)?.to_bytes();
        self.sender = Some(sender);
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Forgets the connection (after a timeout the request may still be in flight on it).
    pub fn reset(&mut self) {
        self.sender = None;
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, HttpError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect { addr, source })?;
    // Failing to set it only costs latency, which the figures would show.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::Handshake)?;
    tokio::spawn(async move {
        // Ends when the server closes or the sender is dropped; nothing to report.
        let _ = connection.await;
    });
    Ok(sender)
}
