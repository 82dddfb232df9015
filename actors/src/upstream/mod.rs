//! One long-lived client connection to an upstream MCP server, shared by every caller.
//!
//! Many client sessions multiplex onto one upstream, so the connection owns the id space
//! on the upstream side: every request gets a fresh numeric id, and a reply map sends
//! each response to exactly the caller that made the request (a gateway that gets this
//! wrong hands one user another user's result). Progress tokens are rewritten the same
//! way — to the upstream request id — and restored on the way back, so two clients that
//! both use `progressToken: 1` never see each other's progress.
//!
//! What an upstream sends on its own is routed by [`Connection::dispatch`]:
//! - responses → the waiting caller;
//! - `notifications/progress` → the caller whose request carries that token;
//! - logging messages and server→client requests (sampling, elicitation, roots) → the
//!   calling client when it can be known: over HTTP they arrive on the call's own stream;
//!   over stdio they are attributed only when every call in flight belongs to the same
//!   session, and otherwise refused (a request) or logged (a message) — never delivered
//!   to a session that did not cause them;
//! - `*/list_changed` → [`ConnectionEvent::ListChanged`] for the owning server actor;
//! - `notifications/resources/updated` → [`ConnectionEvent::Unattributed`], always: it
//!   belongs to a subscription (held by the gateway for all subscribers), not a call.
//!
//! Transports: [`stdio`] (newline-delimited JSON on a child's stdin/stdout) and [`http`]
//! (streamable HTTP to an HTTP child or a remote server).

pub mod http;
pub mod stdio;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::jsonrpc::{self, Envelope, Kind, RpcError, code};

/// Something the upstream sends towards the client during a call.
#[derive(Debug)]
pub enum Upcall {
    /// A notification (`notifications/progress`, `notifications/message`, …) with params
    /// already translated back to the client's terms.
    Notification { method: String, params: Value },
    /// A request the client must answer (`sampling/createMessage`, `elicitation/create`,
    /// `roots/list`). The answer goes back through `reply`.
    Request {
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value, RpcError>>,
    },
}

/// Where a call's upcalls go. Bounded: a client that stops reading loses progress
/// notifications (counted) rather than stalling the upstream's reader.
pub type UpcallSink = mpsc::Sender<Upcall>;

/// How to make one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    pub timeout: Option<Duration>,
    pub sink: Option<UpcallSink>,
    /// The client session the call belongs to (for a stateless request, a key of its own),
    /// for attributing stdio upcalls.
    pub session: Option<Arc<str>>,
    /// Cancelling it abandons the call and tells the upstream (`notifications/cancelled`).
    pub cancel: Option<CancellationToken>,
}

#[derive(Debug, Error)]
pub enum CallError {
    /// The upstream answered with a JSON-RPC error.
    #[error("{0}")]
    Rpc(RpcError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cancelled")]
    Cancelled,
    /// The connection is gone (the child exited, the stream broke).
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("cannot send to the upstream: {0}")]
    Send(String),
}

/// Events for the server actor that owns the connection.
#[derive(Debug)]
pub enum ConnectionEvent {
    ListChanged(ListKind),
    /// A notification nobody in particular asked for (a log line from a stdio server
    /// with calls from several sessions in flight, `resources/updated`, …).
    Unattributed {
        method: String,
        params: Value,
    },
    /// The transport ended; `reason` says how.
    Closed {
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Resources,
    Prompts,
}

/// How frames leave the connection.
pub(crate) trait Outbound: Send + Sync + 'static {
    /// Sends one request frame. `id` is the upstream id (its response and upcalls are
    /// matched by it).
    fn send_request(
        &self,
        conn: &Arc<Connection>,
        id: u64,
        frame: Vec<u8>,
    ) -> Result<(), CallError>;
    /// Sends a notification or a response frame.
    fn send_frame(&self, conn: &Arc<Connection>, frame: Vec<u8>) -> Result<(), CallError>;
}

struct Pending {
    reply: oneshot::Sender<Result<Box<RawValue>, CallError>>,
    sink: Option<UpcallSink>,
    /// The client's own progress token, restored on the way back.
    progress_token: Option<Value>,
    session: Option<Arc<str>>,
}

/// A live connection to one upstream. Cheap to share (`Arc`); closing it fails every
/// pending call with [`CallError::Closed`].
pub struct Connection {
    server: Arc<str>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    outbound: Box<dyn Outbound>,
    events: mpsc::UnboundedSender<ConnectionEvent>,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
    protocol_version: Mutex<Option<String>>,
    /// The secrets the server was given, taken out of its answers and notifications.
    scrub: crate::redact::Scrub,
}

impl Connection {
    /// A connection whose answers and notifications reach no one with `scrub`'s secrets.
    pub(crate) fn new(
        server: Arc<str>,
        outbound: Box<dyn Outbound>,
        events: mpsc::UnboundedSender<ConnectionEvent>,
        scrub: crate::redact::Scrub,
    ) -> Arc<Connection> {
        Arc::new(Connection {
            server,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            outbound,
            events,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            protocol_version: Mutex::new(None),
            scrub,
        })
    }

    /// `result` without the server's secrets.
    fn scrubbed(&self, result: &RawValue) -> Box<RawValue> {
        match self.scrub.apply(result.get()) {
            std::borrow::Cow::Borrowed(_) => result.to_owned(),
            // The replacement is plain JSON string content: still valid JSON.
            std::borrow::Cow::Owned(text) => {
                RawValue::from_string(text).unwrap_or_else(|_| result.to_owned())
            }
        }
    }

    /// `error` without the server's secrets.
    fn scrubbed_error(&self, error: &RpcError) -> RpcError {
        if self.scrub.is_empty() {
            return error.clone();
        }
        RpcError {
            code: error.code,
            message: self.scrub.apply(&error.message).into_owned(),
            data: error.data.as_ref().map(|data| {
                serde_json::from_str(&self.scrub.apply(&data.to_string())).unwrap_or(Value::Null)
            }),
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// The protocol revision the upstream agreed to in its handshake.
    pub fn protocol_version(&self) -> Option<String> {
        self.protocol_version.lock().ok().and_then(|v| v.clone())
    }

    pub(crate) fn set_protocol_version(&self, version: &str) {
        if let Ok(mut slot) = self.protocol_version.lock() {
            *slot = Some(version.to_owned());
        }
    }

    /// Whether call `id` still waits for its answer.
    pub(crate) fn is_pending(&self, id: u64) -> bool {
        self.lock_pending().contains_key(&id)
    }

    /// Fails call `id` (a transport error that belongs to one request).
    pub(crate) fn fail(&self, id: u64, error: CallError) {
        if let Some(pending) = self.lock_pending().remove(&id) {
            let _ = pending.reply.send(Err(error));
        }
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        self.lock_pending().len()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when the connection closes.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/remove operations), so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a request and waits for its result.
    ///
    /// `params` is taken by value because `_meta.progressToken` is rewritten.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the call: the reply-map entry is removed and the
    /// upstream is told with `notifications/cancelled`.
    pub async fn call(
        self: &Arc<Self>,
        method: &str,
        params: Option<Map<String, Value>>,
        options: CallOptions,
    ) -> Result<Box<RawValue>, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (params, progress_token) = rewrite_progress_token(params, id);
        let params_text = match &params {
            Some(p) => Some(serde_json::to_string(p).map_err(|e| CallError::Send(e.to_string()))?),
            None => None,
        };
        let mut frame =
            Vec::with_capacity(64 + method.len() + params_text.as_ref().map_or(0, |p| p.len()));
        jsonrpc::write_request(&mut frame, &id.to_string(), method, params_text.as_deref());

        let (reply, answer) = oneshot::channel();
        {
            if self.closed.is_cancelled() {
                return Err(CallError::Closed(self.close_reason()));
            }
            self.lock_pending().insert(
                id,
                Pending {
                    reply,
                    sink: options.sink,
                    progress_token,
                    session: options.session,
                },
            );
        }
        let guard = AbandonGuard {
            conn: self,
            id,
            armed: true,
        };
        if let Err(error) = self.outbound.send_request(self, id, frame) {
            self.lock_pending().remove(&id);
            let mut guard = guard;
            guard.armed = false;
            return Err(error);
        }
        let cancel = options.cancel.unwrap_or_default();
        let timeout = options.timeout.unwrap_or(Duration::from_secs(24 * 3600));
        let mut guard = guard;
        // Cancellation first: once the caller gave up, the call ends cancelled even if
        // an answer is ready in the same poll. Cancelling often provokes that answer —
        // a call held for its client's input is cancelled by dropping the pending
        // question, to which the upstream answers with an error — and an unbiased
        // select then recorded `error` instead of `cancelled` at random (seen under load).
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(CallError::Cancelled),
            answer = answer => answer.unwrap_or_else(|_| Err(CallError::Closed(self.close_reason()))),
            _ = tokio::time::sleep(timeout) => Err(CallError::Timeout(timeout)),
        };
        match &outcome {
            Err(CallError::Timeout(_)) | Err(CallError::Cancelled) => {} // guard notifies
            _ => guard.armed = false,
        }
        drop(guard);
        outcome
    }

    /// Sends a notification (no answer expected).
    pub fn notify(self: &Arc<Self>, method: &str, params: Option<&Value>) -> Result<(), CallError> {
        let params_text = params.map(|p| p.to_string());
        let mut frame = Vec::with_capacity(64 + params_text.as_ref().map_or(0, |p| p.len()));
        jsonrpc::write_notification(&mut frame, method, params_text.as_deref());
        self.outbound.send_frame(self, frame)
    }

    fn abandon(self: &Arc<Self>, id: u64, reason: &str) {
        if self.lock_pending().remove(&id).is_some() && !self.closed.is_cancelled() {
            let params = serde_json::json!({"requestId": id, "reason": reason});
            let _ = self.notify("notifications/cancelled", Some(&params));
        }
    }

    fn close_reason(&self) -> String {
        self.close_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "the connection closed".into())
    }

    /// Marks the connection closed and fails every pending call.
    pub(crate) fn close(&self, reason: String) {
        if self.closed.is_cancelled() {
            return;
        }
        if let Ok(mut slot) = self.close_reason.lock() {
            slot.get_or_insert(reason.clone());
        }
        self.closed.cancel();
        let pending: Vec<Pending> = self.lock_pending().drain().map(|(_, p)| p).collect();
        for call in pending {
            let _ = call.reply.send(Err(CallError::Closed(reason.clone())));
        }
        let _ = self.events.send(ConnectionEvent::Closed { reason });
    }

    /// Routes one incoming frame. `stream_of` is the upstream request id whose HTTP
    /// response stream carried it (None on stdio).
    pub(crate) fn dispatch(self: &Arc<Self>, frame: &[u8], stream_of: Option<u64>) {
        let envelope: Envelope = match serde_json::from_slice(frame) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(server = %self.server, %error, "upstream sent something that is not JSON-RPC; ignored");
                return;
            }
        };
        match envelope.kind() {
            Kind::Response => self.on_response(&envelope),
            Kind::Notification => self.on_notification(&envelope, stream_of),
            Kind::Request => self.on_request(&envelope, stream_of),
            Kind::Invalid => {
                tracing::warn!(server = %self.server, "upstream sent an invalid JSON-RPC message; ignored");
            }
        }
    }

    fn on_response(&self, envelope: &Envelope) {
        let Some(id) = envelope.numeric_id() else {
            tracing::warn!(server = %self.server, "upstream answered an id Warden never sent");
            return;
        };
        let Some(pending) = self.lock_pending().remove(&id) else {
            // Late answer to an abandoned call.
            return;
        };
        let outcome = match (&envelope.error, envelope.result) {
            (Some(error), _) => Err(CallError::Rpc(self.scrubbed_error(error))),
            (None, Some(result)) => Ok(self.scrubbed(result)),
            (None, None) => Err(CallError::Rpc(RpcError::new(
                code::INTERNAL_ERROR,
                "upstream sent an empty response",
            ))),
        };
        let _ = pending.reply.send(outcome);
    }

    fn on_notification(self: &Arc<Self>, envelope: &Envelope, stream_of: Option<u64>) {
        let method = envelope.method.as_deref().unwrap_or_default();
        let params: Value = envelope
            .params
            .and_then(|p| serde_json::from_str(&self.scrub.apply(p.get())).ok())
            .unwrap_or(Value::Null);
        match method {
            "notifications/tools/list_changed" => self.list_changed(ListKind::Tools),
            "notifications/resources/list_changed" => self.list_changed(ListKind::Resources),
            "notifications/prompts/list_changed" => self.list_changed(ListKind::Prompts),
            "notifications/progress" => self.on_progress(params),
            // Subscribers get it, whoever's call is in flight (Warden holds one
            // subscription for all of them).
            "notifications/resources/updated" => {
                let _ = self.events.send(ConnectionEvent::Unattributed {
                    method: method.to_owned(),
                    params,
                });
            }
            _ => {
                let target = stream_of.or_else(|| self.sole_session_call());
                match target.and_then(|id| self.sink_of(id)) {
                    Some(sink) => {
                        if sink
                            .try_send(Upcall::Notification {
                                method: method.to_owned(),
                                params,
                            })
                            .is_err()
                        {
                            metrics::counter!("warden_upcalls_dropped_total", "server" => self.server.to_string())
                                .increment(1);
                        }
                    }
                    None => {
                        let _ = self.events.send(ConnectionEvent::Unattributed {
                            method: method.to_owned(),
                            params,
                        });
                    }
                }
            }
        }
    }

    fn list_changed(&self, kind: ListKind) {
        let _ = self.events.send(ConnectionEvent::ListChanged(kind));
    }

    fn on_progress(&self, mut params: Value) {
        let Some(id) = params.get("progressToken").and_then(Value::as_u64) else {
            return;
        };
        let pending = self.lock_pending();
        let Some(call) = pending.get(&id) else {
            return;
        };
        let (Some(sink), Some(token)) = (&call.sink, &call.progress_token) else {
            return;
        };
        params["progressToken"] = token.clone();
        if sink
            .try_send(Upcall::Notification {
                method: "notifications/progress".into(),
                params,
            })
            .is_err()
        {
            metrics::counter!("warden_upcalls_dropped_total", "server" => self.server.to_string())
                .increment(1);
        }
    }

    fn on_request(self: &Arc<Self>, envelope: &Envelope, stream_of: Option<u64>) {
        let method = envelope.method.as_deref().unwrap_or_default().to_owned();
        let Some(request_id) = envelope.id.map(|id| id.get().to_owned()) else {
            return;
        };
        if method == "ping" {
            let mut frame = Vec::with_capacity(48);
            jsonrpc::write_result(&mut frame, &request_id, "{}");
            let _ = self.outbound.send_frame(self, frame);
            return;
        }
        let params: Value = envelope
            .params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        let target = stream_of.or_else(|| self.sole_session_call());
        let Some(sink) = target.and_then(|id| self.sink_of(id)) else {
            let error = RpcError::new(
                code::INTERNAL_ERROR,
                format!(
                    "Warden cannot tell which client session `{method}` is meant for, so it was not forwarded"
                ),
            );
            let mut frame = Vec::new();
            jsonrpc::write_error(&mut frame, &request_id, &error);
            let _ = self.outbound.send_frame(self, frame);
            return;
        };
        let conn = self.clone();
        tokio::spawn(async move {
            let (reply, answer) = oneshot::channel();
            let forwarded = sink
                .send(Upcall::Request {
                    method: method.clone(),
                    params,
                    reply,
                })
                .await;
            let outcome = match forwarded {
                Ok(()) => answer.await.unwrap_or_else(|_| {
                    Err(RpcError::new(code::INTERNAL_ERROR, "the client went away"))
                }),
                Err(_) => Err(RpcError::new(code::INTERNAL_ERROR, "the client went away")),
            };
            let mut frame = Vec::new();
            match outcome {
                Ok(result) => jsonrpc::write_result(&mut frame, &request_id, &result.to_string()),
                Err(error) => jsonrpc::write_error(&mut frame, &request_id, &error),
            }
            let _ = conn.outbound.send_frame(&conn, frame);
        });
    }

    fn sink_of(&self, id: u64) -> Option<UpcallSink> {
        self.lock_pending().get(&id).and_then(|p| p.sink.clone())
    }

    /// The call to attribute an unrouted upcall to: only when every call in flight
    /// belongs to one session (any of them then reaches the right client).
    fn sole_session_call(&self) -> Option<u64> {
        let pending = self.lock_pending();
        let mut chosen: Option<(u64, &Arc<str>)> = None;
        for (id, call) in pending.iter() {
            let session = call.session.as_ref()?;
            match chosen {
                None => chosen = Some((*id, session)),
                Some((_, other)) if other == session => {}
                Some(_) => return None,
            }
        }
        chosen
            .filter(|(id, _)| pending.get(id).is_some_and(|p| p.sink.is_some()))
            .map(|(id, _)| id)
    }
}

/// Abandons a call whose future is dropped before the answer arrived.
struct AbandonGuard<'a> {
    conn: &'a Arc<Connection>,
    id: u64,
    armed: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.abandon(self.id, "cancelled by Warden");
        }
    }
}

/// Replaces `_meta.progressToken` with the upstream request id; returns the original.
fn rewrite_progress_token(
    params: Option<Map<String, Value>>,
    id: u64,
) -> (Option<Map<String, Value>>, Option<Value>) {
    let Some(mut params) = params else {
        return (None, None);
    };
    let original = params
        .get_mut("_meta")
        .and_then(Value::as_object_mut)
        .and_then(|meta| meta.insert("progressToken".into(), Value::from(id)));
    if original.is_none() {
        // There was no token: undo the insert we may have made.
        if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
            meta.remove("progressToken");
        }
    }
    (Some(params), original)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_token_is_rewritten_and_restorable() {
        let params: Map<String, Value> =
            serde_json::from_str(r#"{"name":"x","_meta":{"progressToken":"abc","other":1}}"#)
                .unwrap();
        let (params, original) = rewrite_progress_token(Some(params), 42);
        let params = params.unwrap();
        assert_eq!(original, Some(Value::from("abc")));
        assert_eq!(params["_meta"]["progressToken"], 42);
        assert_eq!(params["_meta"]["other"], 1);

        let params: Map<String, Value> = serde_json::from_str(r#"{"_meta":{"other":1}}"#).unwrap();
        let (params, original) = rewrite_progress_token(Some(params), 42);
        assert_eq!(original, None);
        assert!(params.unwrap()["_meta"].get("progressToken").is_none());
    }
}
