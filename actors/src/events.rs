//! The EventBus actor: typed lifecycle events fanned out to subscribers.
//!
//! **Owns:** the subscriber list.
//! **Messages:** `Publish(event)` (no reply), `Subscribe { name, capacity, reply }`.
//! **On failure:** it is linked under the root supervisor, which escalates (a crash is a
//! bug; the tree stops and Warden exits for its service manager to restart it).
//! Subscribers see their channel close.
//!
//! Each subscriber has a bounded buffer. A subscriber that falls behind loses events
//! (counted in `warden_events_dropped_total{subscriber}`); it never slows the bus or the
//! publisher. It is told, though: its next [`Subscription::recv`] returns
//! [`Delivery::Lagged`] with the number lost, so it can catch up from the state the
//! events describe (the gateway re-announces and renews everything) or record the gap
//! (the audit trail does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

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
        reply: RpcReplyPort<Subscription>,
    },
}

/// What a subscriber receives.
#[derive(Debug)]
pub enum Delivery {
    Event(Arc<Event>),
    /// This many events were lost because the subscriber's buffer was full. Reported
    /// as soon as it is counted, so possibly ahead of events buffered before the lost
    /// ones: a subscriber that catches up should do so from current state, not from
    /// the events around the gap.
    Lagged(u64),
}

/// One subscriber's end: every event from the moment of subscribing, and word of any
/// that were lost.
pub struct Subscription {
    receiver: mpsc::Receiver<Arc<Event>>,
    lost: Arc<Lost>,
}

/// The events a subscriber lost since it last heard, and the bell the bus rings after
/// counting one: the count can land after the subscriber emptied its buffer and began
/// to wait, and must not wait for the next event to be seen.
#[derive(Default)]
struct Lost {
    count: AtomicU64,
    rung: Notify,
}

impl Subscription {
    /// The next delivery; `None` once the bus is gone.
    ///
    /// A loss is reported as soon as it is counted: before the next event, or by
    /// waking a subscriber that waits on an empty buffer.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            match self.lost.count.swap(0, Ordering::Relaxed) {
                0 => {}
                lost => return Some(Delivery::Lagged(lost)),
            }
            tokio::select! {
                // Events first: a ring left over from a loss already reported only
                // costs a turn of the loop.
                biased;
                event = self.receiver.recv() => return event.map(Delivery::Event),
                () = self.lost.rung.notified() => {}
            }
        }
    }
}

struct Subscriber {
    name: String,
    sender: mpsc::Sender<Arc<Event>>,
    lost: Arc<Lost>,
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

    /// Every event from now on, buffered up to `capacity`.
    pub async fn subscribe(&self, name: &str, capacity: usize) -> Option<Subscription> {
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
    subscribers: Vec<Subscriber>,
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
                state.subscribers.retain(|subscriber| {
                    match subscriber.sender.try_send(event.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            subscriber.lost.count.fetch_add(1, Ordering::Relaxed);
                            // Stores a permit if nobody waits: the ring is never missed.
                            subscriber.lost.rung.notify_one();
                            metrics::counter!("warden_events_dropped_total", "subscriber" => subscriber.name.clone()).increment(1);
                            true
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    }
                });
            }
            BusMsg::Subscribe {
                name,
                capacity,
                reply,
            } => {
                let (sender, receiver) = mpsc::channel(capacity.max(1));
                let lost = Arc::new(Lost::default());
                state.subscribers.push(Subscriber {
                    name,
                    sender,
                    lost: lost.clone(),
                });
                let _ = reply.send(Subscription { receiver, lost });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starting(attempt: u64) -> Event {
        Event::server("s", None, EventKind::Starting { attempt })
    }

    fn attempt(delivery: Option<Delivery>) -> Result<u64, String> {
        match delivery {
            Some(Delivery::Event(event)) => match event.kind {
                EventKind::Starting { attempt } => Ok(attempt),
                _ => Err(format!("{event:?}")),
            },
            other => Err(format!("{other:?}")),
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_many_events_it_lost() {
        let (actor, handle) = Actor::spawn(None, EventBusActor, ()).await.unwrap();
        let bus = EventBus::new(actor.clone());
        let mut slow = bus.subscribe("slow", 2).await.unwrap();
        for n in 1..=5 {
            bus.publish(starting(n));
        }
        // The bus handles its mailbox in order: once this subscribe is answered, the
        // five publishes have been fanned out.
        let mut fast = bus.subscribe("fast", 16).await.unwrap();
        assert!(matches!(slow.recv().await, Some(Delivery::Lagged(3))));
        assert_eq!(attempt(slow.recv().await), Ok(1));
        assert_eq!(attempt(slow.recv().await), Ok(2));
        // Caught up: nothing more is reported lost.
        bus.publish(starting(6));
        assert_eq!(attempt(slow.recv().await), Ok(6));
        assert_eq!(attempt(fast.recv().await), Ok(6));
        actor.stop(None);
        handle.await.unwrap();
        assert!(slow.recv().await.is_none());
    }

    /// The bus counts a loss just after `try_send` failed; by then the subscriber may
    /// have emptied its buffer and begun to wait. The count must wake it.
    #[tokio::test]
    async fn a_loss_counted_while_the_subscriber_waits_wakes_it() {
        let (_sender, receiver) = mpsc::channel(1);
        let lost = Arc::new(Lost::default());
        let mut subscription = Subscription {
            receiver,
            lost: lost.clone(),
        };
        let waiting = tokio::spawn(async move { subscription.recv().await });
        tokio::task::yield_now().await;
        lost.count.fetch_add(2, Ordering::Relaxed);
        lost.rung.notify_one();
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the waiting subscriber was woken")
            .unwrap();
        assert!(
            matches!(delivery, Some(Delivery::Lagged(2))),
            "{delivery:?}"
        );
    }
}
