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
//! random bits, useless to anyone but the principal (issuer, subject, client) that made
//! the call, and only for the same method and params. A retry must therefore reach the Warden instance that
//! asked (replicas behind a load balancer need affinity for stateless retries, or the
//! client gets a clear "no call awaiting input" error and calls again).
//!
//! Bounds: at most `gateway.max_awaiting_input` calls are held at once, and
//! `gateway.max_awaiting_input_per_principal` of one principal ([`hold`] hands the call
//! back beyond either). A call is held until its own deadline ends it (it is then
//! dropped at once, freeing its place) or for `gateway.input_timeout`; then it is
//! dropped, which cancels it (the upstream gets `notifications/cancelled`, the audit row
//! says `cancelled`). At shutdown `warden serve` [`drain`]s the table the same way, after the
//! listener has stopped and before the audit writer drains.
//!
//! [`hold`]: AwaitingInput::hold
//! [`drain`]: AwaitingInput::drain

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::RngCore;
use serde_json::{Map, Value};
use tokio::task::AbortHandle;

/// Params of a retry that may differ from the original request's.
const ROUND_KEYS: [&str; 3] = ["inputResponses", "requestState", "_meta"];
/// Marks Warden's `requestState` values.
const STATE_PREFIX: &str = "warden-input-";

/// The principal a held call belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub issuer: String,
    pub subject: String,
    /// The OAuth client the token was issued to.
    pub client: Option<String>,
}

/// What a held call is bound to: who made it, and what they asked where.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    owner: Owner,
    /// The endpoint's server (`/mcp/{server}`), `None` on `/mcp`: a retry elsewhere is
    /// another request.
    scope: Option<String>,
    method: String,
    params: Map<String, Value>,
}

impl Binding {
    /// `params` are the request's, of which the per-round keys are left out.
    pub fn new(
        owner: Owner,
        scope: Option<&str>,
        method: &str,
        params: &Map<String, Value>,
    ) -> Binding {
        let params = params
            .iter()
            .filter(|(key, _)| !ROUND_KEYS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Binding {
            owner,
            scope: scope.map(str::to_owned),
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

/// How many calls may be held, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub max: usize,
    pub max_per_owner: usize,
}

/// Which bound a call that could not be held met.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    Total(usize),
    PerOwner(usize),
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
    /// Holds `call` until it is [`take`](Self::take)n, `ended` completes (the call
    /// finished on its own) or `limits.timeout` passes — then it is dropped — and returns
    /// its `requestState`. Hands `call` back when a limit is reached. Must run inside a
    /// tokio runtime (the expiry is a task).
    pub fn hold(
        &self,
        binding: Binding,
        call: T,
        ended: impl Future<Output = ()> + Send + 'static,
        limits: Limits,
    ) -> Result<String, (T, Full)> {
        let mut held = self.lock();
        if held.len() >= limits.max {
            return Err((call, Full::Total(limits.max)));
        }
        let owners = held
            .values()
            .filter(|entry| entry.binding.owner == binding.owner)
            .count();
        if owners >= limits.max_per_owner {
            return Err((call, Full::PerOwner(limits.max_per_owner)));
        }
        let state = new_state();
        let table = Arc::clone(&self.held);
        let key = state.clone();
        let timeout = limits.timeout;
        let expiry = tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(timeout) => {}
                () = ended => {}
            }
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

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
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

    fn owner(subject: &str) -> Owner {
        Owner {
            issuer: "warden".into(),
            subject: subject.into(),
            client: None,
        }
    }

    fn binding(subject: &str, arguments: Value) -> Binding {
        let params = json!({"name": "fix__elicit", "arguments": arguments,
            "requestState": "x", "inputResponses": {"a": 1}, "_meta": {"m": 1}});
        Binding::new(
            owner(subject),
            None,
            "tools/call",
            params.as_object().unwrap(),
        )
    }

    fn limits(max: usize, max_per_owner: usize) -> Limits {
        Limits {
            timeout: Duration::from_secs(60),
            max,
            max_per_owner,
        }
    }

    /// An `ended` that never completes.
    fn running() -> std::future::Pending<()> {
        std::future::pending()
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
            .hold(binding("alice", json!({})), 7, running(), limits(10, 10))
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
        let mut other_client = owner("alice");
        other_client.client = Some("another-app".into());
        let elsewhere = Binding::new(
            other_client,
            None,
            "tools/call",
            json!({"name": "fix__elicit", "arguments": {}})
                .as_object()
                .unwrap(),
        );
        assert_eq!(table.take(&state, &elsewhere), Err(Refusal::Unknown));
        let other_endpoint = Binding::new(
            owner("alice"),
            Some("fix"),
            "tools/call",
            json!({"name": "fix__elicit", "arguments": {}})
                .as_object()
                .unwrap(),
        );
        assert_eq!(
            table.take(&state, &other_endpoint),
            Err(Refusal::Changed),
            "a retry on /mcp/fix is not the call held on /mcp"
        );
        let retry = Binding::new(
            owner("alice"),
            None,
            "tools/call",
            json!({"name": "fix__elicit", "arguments": {}, "requestState": state})
                .as_object()
                .unwrap(),
        );
        assert_eq!(table.take(&state, &retry), Ok(7), "round keys may change");
        assert_eq!(table.take(&state, &retry), Err(Refusal::Unknown));
        assert_eq!(table.len(), 0);
    }

    #[tokio::test]
    async fn beyond_a_limit_the_call_is_handed_back() {
        let table = AwaitingInput::default();
        let hold = |who: &str, call: i32| {
            table.hold(binding(who, json!({})), call, running(), limits(3, 2))
        };
        assert!(hold("a", 1).is_ok());
        assert!(hold("a", 2).is_ok());
        assert_eq!(hold("a", 3), Err((3, Full::PerOwner(2))));
        assert!(hold("b", 4).is_ok());
        assert_eq!(hold("c", 5), Err((5, Full::Total(3))));
        let none = table.hold(binding("d", json!({})), 6, running(), limits(0, 0));
        assert_eq!(none, Err((6, Full::Total(0))));
    }

    #[tokio::test]
    async fn an_unanswered_call_is_dropped_after_the_timeout() {
        let table = AwaitingInput::default();
        let (dropped, on_drop) = tokio::sync::oneshot::channel();
        let state = table
            .hold(
                binding("a", json!({})),
                Call(Some(dropped)),
                running(),
                Limits {
                    timeout: Duration::from_millis(20),
                    ..limits(10, 10)
                },
            )
            .unwrap_or_else(|_| panic!("room"));
        tokio::time::timeout(Duration::from_secs(30), on_drop)
            .await
            .expect("dropped before the deadline")
            .expect("dropped, not leaked");
        assert!(table.take(&state, &binding("a", json!({}))).is_err());
        assert_eq!(table.len(), 0);
    }

    #[tokio::test]
    async fn a_call_that_ends_on_its_own_is_dropped_at_once() {
        let table = AwaitingInput::default();
        let (dropped, on_drop) = tokio::sync::oneshot::channel();
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        let ended = async move {
            let _ = ended.await;
        };
        table
            .hold(
                binding("a", json!({})),
                Call(Some(dropped)),
                ended,
                limits(10, 1),
            )
            .unwrap_or_else(|_| panic!("room"));
        drop(end);
        tokio::time::timeout(Duration::from_secs(30), on_drop)
            .await
            .expect("dropped long before the input timeout")
            .expect("dropped, not leaked");
        assert_eq!(table.len(), 0);
        assert!(
            table
                .hold(
                    binding("a", json!({})),
                    Call(None),
                    running(),
                    limits(10, 1)
                )
                .is_ok(),
            "its principal's place is free again"
        );
    }

    #[tokio::test]
    async fn drain_hands_over_every_held_call() {
        let table = AwaitingInput::default();
        let state = table
            .hold(binding("a", json!({})), 1, running(), limits(10, 10))
            .unwrap();
        table
            .hold(binding("b", json!({})), 2, running(), limits(10, 10))
            .unwrap();
        let mut drained = table.drain();
        drained.sort_unstable();
        assert_eq!(drained, [1, 2]);
        assert_eq!(table.len(), 0);
        assert_eq!(
            table.take(&state, &binding("a", json!({}))),
            Err(Refusal::Unknown)
        );
    }
}
