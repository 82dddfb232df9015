//! Lifecycle events from the event bus, recorded as `server.lifecycle` audit events
//! (starting, ready, unhealthy, restarting, stopped, failed, tools changed, and
//! reconciliations). Upstream notifications are not recorded: they are traffic, not
//! lifecycle.
//!
//! The bus drops events for a subscriber that falls behind (counted in
//! `warden_events_dropped_total{subscriber="audit"}`); the buffer (`audit.event_buffer`,
//! 8192 by default) is large so that only a stalled audit trail can cause that. A loss is not silent: it is recorded as a
//! `server.lifecycle` event with reason `events lost` and the count in `attributes.lost`,
//! at the time it was noticed (possibly ahead of rows for events that came before the
//! lost ones, which were still in the buffer).

use std::sync::Arc;

use warden_actors::audit::{Audit, AuditEvent, AuditRecord};
use warden_actors::events::{Delivery, Event, EventBus, EventKind};

/// Subscribes with a buffer of `buffer` events and records until the bus goes away.
/// Returns once subscribed.
pub async fn spawn(
    events: &EventBus,
    audit: Audit,
    buffer: usize,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut subscription = events.subscribe("audit", buffer).await?;
    Some(tokio::spawn(async move {
        while let Some(delivery) = subscription.recv().await {
            let record = match delivery {
                Delivery::Event(event) => match lifecycle_record(&event) {
                    Some(record) => record,
                    None => continue,
                },
                Delivery::Lagged(lost) => lost_record(lost),
            };
            let reason = record.reason.clone().unwrap_or_default();
            if let Err(error) = audit.record(AuditRecord::Event(Box::new(record))).await {
                tracing::error!(%error, event = %reason, "a lifecycle event could not be audited");
            }
        }
    }))
}

/// The row of one event; `None` for upstream notifications (traffic, not lifecycle).
fn lifecycle_record(event: &Arc<Event>) -> Option<AuditEvent> {
    if matches!(event.kind, EventKind::Notification { .. }) {
        return None;
    }
    let mut record = AuditEvent::new("server.lifecycle", "system");
    record.occurred_at = event.at;
    record.subject = event.server.clone();
    record.reason = Some(event.name().to_owned());
    record.attributes = serde_json::to_value(Arc::as_ref(event)).unwrap_or_default();
    Some(record)
}

/// The row that says `lost` events never reached the trail.
fn lost_record(lost: u64) -> AuditEvent {
    let mut record = AuditEvent::new("server.lifecycle", "system");
    record.reason = Some("events lost".to_owned());
    record.attributes = serde_json::json!({ "lost": lost });
    record
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ractor::Actor;
    use warden_actors::audit::Backlog;
    use warden_actors::events::EventBusActor;

    use super::*;

    #[tokio::test]
    async fn events_the_trail_could_not_take_in_time_are_counted_in_a_row_of_their_own() {
        let (actor, _) = Actor::spawn(None, EventBusActor, ()).await.unwrap();
        let bus = EventBus::new(actor.clone());
        // A trail that takes one record and then stalls until the test reads.
        let (audit, mut queue) = Audit::channel(1, Backlog::Block(Duration::from_secs(60)));
        // The smallest buffer the profile allows (`audit.event_buffer`).
        const BUFFER: usize = 16;
        let task = spawn(&bus, audit, BUFFER).await.unwrap();
        let published = BUFFER as u64 + 10;
        for attempt in 0..published {
            bus.publish(Event::server("s", None, EventKind::Starting { attempt }));
        }
        // Answered after the bus has fanned out every publish before it.
        let _barrier = bus.subscribe("barrier", 1).await.unwrap();
        let (mut recorded, mut lost) = (0, 0);
        while recorded + lost < published {
            let queued = tokio::time::timeout(Duration::from_secs(10), queue.receiver.recv())
                .await
                .expect("every event accounted for in time")
                .expect("the trail is open");
            let AuditRecord::Event(row) = queued.record else {
                panic!("not an event row");
            };
            assert_eq!(row.kind, "server.lifecycle");
            match row.reason.as_deref() {
                Some("events lost") => lost += row.attributes["lost"].as_u64().unwrap(),
                Some("starting") => recorded += 1,
                other => panic!("unexpected row: {other:?}"),
            }
        }
        assert!(lost > 0, "the buffer of {BUFFER} must have overflowed");
        assert_eq!(recorded + lost, published);
        actor.stop(None);
        task.await.unwrap();
    }
}
