//! Multi round-trip requests (MCP 2026-07-28, "MRTR"): calls of stateless clients that
//! wait in Warden for the client's answer to something the upstream asked.
//!
//! Upstreams speak the handshake era to Warden, so an upstream asks mid-call with a
//! JSON-RPC request (`sampling/createMessage`, `elicitation/create`, `roots/list`) and
//! waits for the answer. A handshake-era client gets that request on the call's event
//! stream. A stateless client cannot be sent a request; instead its request is answered
//! with an `InputRequiredResult` carrying the upstream's request and a fresh
//! `requestState`, and the call — its upstream still waiting — is held here under that
//! state. The client retries the same request with `inputResponses` and the
//! `requestState`; the HTTP layer takes the call back out, gives the upstream its answer,
//! and waits for the call on the retry (see `mcp.rs`).
//!
//! The `requestState` is a key into this process, not a sealed copy of the call: 128
//! random bits, useless to anyone but the principal that made the call, and only for
//! the same method and params. A retry must therefore reach the Warden instance that
//! asked (replicas behind a load balancer need affinity for stateless retries, or the
//! client gets a clear "no call awaiting input" error and calls again).
//!
//! Bounds: at most `gateway.max_awaiting_input` calls are held at once ([`hold`] hands
//! the call back beyond that), and each for `gateway.input_timeout`; then it is dropped,
//! which cancels it (the upstream gets `notifications/cancelled`, the audit row says
//! `cancelled`). At shutdown `warden serve` [`drain`]s the table the same way, after the
//! listener has stopped and before the audit writer drains.
//!
//! [`hold`]: AwaitingInput::hold
//! [`drain`]: AwaitingInput::drain

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::RngCore;
use serde_json::{Map, Value};
use tokio::task::AbortHandle;

/// Params of a retry that may differ from the original request's.
const ROUND_KEYS: [&str; 3] = ["inputResponses", "requestState", "_meta"];
/// Marks Warden's `requestState` values.
const STATE_PREFIX: &str = "warden-input-";

/// What a held call is bound to: who made it, and what they asked.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    owner: String,
    method: String,
    params: Map<String, Value>,
}

impl Binding {
    /// `owner` names the principal (issuer, subject and client); `params` are the
    /// request's, of which the per-round keys are left out.
    pub fn new(owner: String, method: &str, params: &Map<String, Value>) -> Binding {
        let params = params
            .iter()
            .filter(|(key, _)| !ROUND_KEYS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Binding {
            owner,
            method: method.to_owned(),
            params,
        }
    }
}

/// Why a `requestState` brought back no call.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No call is held under it for this principal: it expired, was answered already,
    /// was issued by another Warden instance, or was never issued.
    Unknown,
    /// The call is held, but the retry changed the method or params.
    Changed,
}

struct Held<T> {
    binding: Binding,
    call: T,
    expiry: AbortHandle,
}

/// The calls awaiting a stateless client's input, by `requestState`.
pub struct AwaitingInput<T> {
    held: Arc<Mutex<HashMap<String, Held<T>>>>,
}

impl<T> Default for AwaitingInput<T> {
    fn default() -> Self {
        AwaitingInput {
            held: Arc::default(),
        }
    }
}

impl<T: Send + 'static> AwaitingInput<T> {
    /// Holds `call` until [`take`](Self::take)n or `timeout` passes (then it is dropped),
    /// and returns its `requestState`. Hands `call` back when `max` calls are held
    /// already. Must run inside a tokio runtime (the expiry is a task).
    pub fn hold(
        &self,
        binding: Binding,
        call: T,
        timeout: Duration,
        max: usize,
    ) -> Result<String, T> {
        let mut held = self.lock();
        if held.len() >= max {
            return Err(call);
        }
        let state = new_state();
        let table = Arc::clone(&self.held);
        let key = state.clone();
        let expiry = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let expired = {
                let mut held = lock(&table);
                let expired = held.remove(&key);
                record_size(&held);
                expired
            };
            // Dropped outside the lock: dropping a call cancels it.
            drop(expired);
        })
        .abort_handle();
        held.insert(
            state.clone(),
            Held {
                binding,
                call,
                expiry,
            },
        );
        record_size(&held);
        Ok(state)
    }

    /// Takes back the call held under `state`, if `binding` is the one it was held with.
    /// A call held for another principal is reported [`Refusal::Unknown`] (and stays
    /// held): a `requestState` reveals nothing to anyone else.
    pub fn take(&self, state: &str, binding: &Binding) -> Result<T, Refusal> {
        let mut held = self.lock();
        match held.get(state) {
            Some(entry) if entry.binding.owner != binding.owner => return Err(Refusal::Unknown),
            Some(entry) if entry.binding != *binding => return Err(Refusal::Changed),
            Some(_) => {}
            None => return Err(Refusal::Unknown),
        }
        let entry = held.remove(state).ok_or(Refusal::Unknown)?;
        record_size(&held);
        entry.expiry.abort();
        Ok(entry.call)
    }

    /// Takes out every held call (at shutdown: they will not be answered).
    pub fn drain(&self) -> Vec<T> {
        let mut held = self.lock();
        let calls = held
            .drain()
            .map(|(_, entry)| {
                entry.expiry.abort();
                entry.call
            })
            .collect();
        record_size(&held);
        calls
    }

    /// Calls held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Held<T>>> {
        lock(&self.held)
    }
}

/// Whether `value` looks like a `requestState` Warden issued (anything else in
/// `requestState` is refused as unknown without a lookup).
pub fn is_warden_state(value: &str) -> bool {
    value.starts_with(STATE_PREFIX)
}

fn new_state() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("{STATE_PREFIX}{}", hex::encode(bytes))
}

fn lock<T>(table: &Mutex<HashMap<String, Held<T>>>) -> MutexGuard<'_, HashMap<String, Held<T>>> {
    // The table stays consistent across a panic elsewhere: every change is one insert
    // or one remove.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record_size<T>(held: &HashMap<String, Held<T>>) {
    metrics::gauge!("warden_mcp_calls_awaiting_input").set(held.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(owner: &str, arguments: Value) -> Binding {
        let params = json!({"name": "fix__elicit", "arguments": arguments,
            "requestState": "x", "inputResponses": {"a": 1}, "_meta": {"m": 1}});
        Binding::new(owner.into(), "tools/call", params.as_object().unwrap())
    }

    /// Dropped when the held call is dropped, so a test can wait for the expiry.
    struct Call(Option<tokio::sync::oneshot::Sender<()>>);

    impl Drop for Call {
        fn drop(&mut self) {
            if let Some(dropped) = self.0.take() {
                let _ = dropped.send(());
            }
        }
    }

    #[tokio::test]
    async fn a_call_comes_back_once_and_only_to_its_principal_with_the_same_params() {
        let table = AwaitingInput::default();
        let state = table
            .hold(binding("alice", json!({})), 7, Duration::from_secs(60), 10)
            .unwrap();
        assert!(is_warden_state(&state));
        assert_eq!(
            table.take(&state, &binding("mallory", json!({}))),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            table.take(&state, &binding("alice", json!({"x": 1}))),
            Err(Refusal::Changed)
        );
        assert_eq!(table.len(), 1, "refused retries leave the call held");
        let retry = Binding::new(
            "alice".into(),
            "tools/call",
            json!({"name": "fix__elicit", "arguments": {}, "requestState": state})
                .as_object()
                .unwrap(),
        );
        assert_eq!(table.take(&state, &retry), Ok(7), "round keys may change");
        assert_eq!(table.take(&state, &retry), Err(Refusal::Unknown));
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn beyond_the_limit_the_call_is_handed_back() {
        let table = AwaitingInput::default();
        let minute = Duration::from_secs(60);
        assert!(table.hold(binding("a", json!({})), 1, minute, 2).is_ok());
        assert!(table.hold(binding("a", json!({})), 2, minute, 2).is_ok());
        assert_eq!(table.hold(binding("a", json!({})), 3, minute, 2), Err(3));
        assert_eq!(table.hold(binding("a", json!({})), 4, minute, 0), Err(4));
    }

    #[tokio::test]
    async fn an_unanswered_call_is_dropped_after_the_timeout() {
        let table = AwaitingInput::default();
        let (dropped, on_drop) = tokio::sync::oneshot::channel();
        let state = table
            .hold(
                binding("a", json!({})),
                Call(Some(dropped)),
                Duration::from_millis(20),
                10,
            )
            .unwrap_or_else(|_| panic!("room"));
        tokio::time::timeout(Duration::from_secs(30), on_drop)
            .await
            .expect("dropped before the deadline")
            .expect("dropped, not leaked");
        assert!(table.take(&state, &binding("a", json!({}))).is_err());
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn drain_hands_over_every_held_call() {
        let table = AwaitingInput::default();
        let minute = Duration::from_secs(60);
        let state = table.hold(binding("a", json!({})), 1, minute, 10).unwrap();
        table.hold(binding("b", json!({})), 2, minute, 10).unwrap();
        let mut drained = table.drain();
        drained.sort_unstable();
        assert_eq!(drained, [1, 2]);
        assert!(table.is_empty());
        assert_eq!(
            table.take(&state, &binding("a", json!({}))),
            Err(Refusal::Unknown)
        );
    }
}
