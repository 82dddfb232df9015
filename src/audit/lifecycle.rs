//! Lifecycle events from the event bus, recorded as `server.lifecycle` audit events
//! (starting, ready, unhealthy, restarting, stopped, failed, tools changed, and
//! reconciliations). Upstream notifications are not recorded: they are traffic, not
//! lifecycle.
//!
//! The bus drops events for a subscriber that falls behind (counted in
//! `warden_events_dropped_total{subscriber="audit"}`); the buffer here is large so that
//! only a stalled audit trail can cause that.

use std::sync::Arc;

use warden_actors::audit::{Audit, AuditEvent, AuditRecord};
use warden_actors::events::{EventBus, EventKind};

/// The subscriber's buffer.
pub const BUFFER: usize = 8192;

/// Subscribes and records until the bus goes away. Returns once subscribed.
pub async fn spawn(events: &EventBus, audit: Audit) -> Option<tokio::task::JoinHandle<()>> {
    let mut receiver = events.subscribe("audit", BUFFER).await?;
    Some(tokio::spawn(async move {
        while let Some(event) = receiver.recv().await {
            if matches!(event.kind, EventKind::Notification { .. }) {
                continue;
            }
            let mut record = AuditEvent::new("server.lifecycle", "system");
            record.occurred_at = event.at;
            record.subject = event.server.clone();
            record.reason = Some(event.name().to_owned());
            record.attributes = serde_json::to_value(Arc::as_ref(&event)).unwrap_or_default();
            if let Err(error) = audit.record(AuditRecord::Event(Box::new(record))).await {
                tracing::error!(%error, event = event.name(), "a lifecycle event could not be audited");
            }
        }
    }))
}
