//! The EventBus actor: typed lifecycle events fanned out to subscribers.
//!
//! **Owns:** the subscriber list.
//! **Messages:** `Publish(event)` (no reply), `Subscribe { name, capacity, reply }`.
//! **On failure:** the root supervisor restarts it; subscribers notice a closed channel
//! and subscribe again. Events published while it is down are lost — they are
//! notifications, not records: anything that must be kept (lifecycle audit rows) is
//! written by its subscriber.
//!
//! Each subscriber has a bounded buffer. A subscriber that falls behind loses events
//! (counted in `warden_events_dropped_total{subscriber}`); it never slows the bus or the
//! publisher.

use std::sync::Arc;
use std::time::SystemTime;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

/// One event. Serialises to the stable JSON shape `/events` streams and SIEMs ingest.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    #[serde(serialize_with = "serialize_time")]
    pub at: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

fn serialize_time<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    s.serialize_u128(millis)
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Starting {
        attempt: u64,
    },
    Ready {
        tools: usize,
        pid: Option<u32>,
    },
    Unhealthy {
        failures: u32,
        error: String,
    },
    Restarting {
        attempt: u32,
        delay_ms: u64,
        reason: String,
    },
    Stopped {
        reason: String,
    },
    Failed {
        reason: String,
    },
    ToolsChanged {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
    },
    ResourcesChanged,
    PromptsChanged,
    /// A notification from an upstream that no single client session caused.
    Notification {
        method: String,
        params: Value,
    },
    ReconciliationStarted,
    ReconciliationCompleted {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        unchanged: Vec<String>,
    },
}

impl Event {
    pub fn server(server: &str, user: Option<&str>, kind: EventKind) -> Event {
        Event {
            at: SystemTime::now(),
            server: Some(server.to_owned()),
            user: user.map(str::to_owned),
            kind,
        }
    }

    pub fn global(kind: EventKind) -> Event {
        Event {
            at: SystemTime::now(),
            server: None,
            user: None,
            kind,
        }
    }

    /// The event's name (`ready`, `tools_changed`, …).
    pub fn name(&self) -> &'static str {
        match self.kind {
            EventKind::Starting { .. } => "starting",
            EventKind::Ready { .. } => "ready",
            EventKind::Unhealthy { .. } => "unhealthy",
            EventKind::Restarting { .. } => "restarting",
            EventKind::Stopped { .. } => "stopped",
            EventKind::Failed { .. } => "failed",
            EventKind::ToolsChanged { .. } => "tools_changed",
            EventKind::ResourcesChanged => "resources_changed",
            EventKind::PromptsChanged => "prompts_changed",
            EventKind::Notification { .. } => "notification",
            EventKind::ReconciliationStarted => "reconciliation_started",
            EventKind::ReconciliationCompleted { .. } => "reconciliation_completed",
        }
    }
}

pub enum BusMsg {
    Publish(Arc<Event>),
    Subscribe {
        name: String,
        capacity: usize,
        reply: RpcReplyPort<mpsc::Receiver<Arc<Event>>>,
    },
}

/// A cheap handle for publishing and subscribing.
#[derive(Clone)]
pub struct EventBus {
    actor: ActorRef<BusMsg>,
}

impl EventBus {
    pub fn new(actor: ActorRef<BusMsg>) -> Self {
        EventBus { actor }
    }

    pub fn publish(&self, event: Event) {
        let _ = self.actor.send_message(BusMsg::Publish(Arc::new(event)));
    }

    /// A receiver of every event from now on, buffered up to `capacity`.
    pub async fn subscribe(
        &self,
        name: &str,
        capacity: usize,
    ) -> Option<mpsc::Receiver<Arc<Event>>> {
        ractor::call_t!(
            self.actor,
            |reply| BusMsg::Subscribe {
                name: name.to_owned(),
                capacity,
                reply
            },
            5_000
        )
        .ok()
    }

    pub fn actor(&self) -> &ActorRef<BusMsg> {
        &self.actor
    }
}

pub struct EventBusActor;

pub struct BusState {
    subscribers: Vec<(String, mpsc::Sender<Arc<Event>>)>,
}

impl Actor for EventBusActor {
    type Msg = BusMsg;
    type State = BusState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<BusMsg>,
        _args: (),
    ) -> Result<BusState, ActorProcessingErr> {
        Ok(BusState {
            subscribers: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BusMsg>,
        message: BusMsg,
        state: &mut BusState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BusMsg::Publish(event) => {
                tracing::debug!(
                    event = event.name(),
                    server = event.server.as_deref().unwrap_or(""),
                    "event"
                );
                state.subscribers.retain(|(name, sender)| match sender.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        metrics::counter!("warden_events_dropped_total", "subscriber" => name.clone()).increment(1);
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
            }
            BusMsg::Subscribe {
                name,
                capacity,
                reply,
            } => {
                let (sender, receiver) = mpsc::channel(capacity.max(1));
                state.subscribers.push((name, sender));
                let _ = reply.send(receiver);
            }
        }
        Ok(())
    }
}
