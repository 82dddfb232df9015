//! The audit trail, read side and glue: search ([`query`]), the feed in written order
//! for SIEMs ([`feed`]), the tamper check
//! ([`verify`]), the retention job ([`retention`]), lifecycle events from the event bus
//! ([`lifecycle`]), and the redaction rules in force ([`refresh_redaction`]).
//!
//! **Architecture invariant:** the AuditWriter (`warden_actors::audit::writer`) is the only
//! writer of audit rows; everything here reads them, or hands records to the writer
//! through [`warden_actors::audit::Audit`]. The one exception is a CLI command run beside
//! the server (`warden secret set`), which seals its single event with the writer's own
//! batch code ([`record_now`]) because it has no writer of its own.
//!
//! The schema, guarantees and ready SQL are in `docs/audit.md`.

pub mod feed;
pub mod lifecycle;
pub mod query;
pub mod retention;
pub mod verify;

use std::sync::Arc;

use deadpool_postgres::Pool;
use warden_actors::audit::prepare::Preparer;
use warden_actors::audit::scrub::{Scrubber, ScrubberCell};
use warden_actors::audit::store::{self, StoreError};
use warden_actors::audit::{AuditEvent, AuditRecord};

use crate::config::Config;
use crate::secrets::SecretStore;

/// Rebuilds the redaction rules from the profile's `audit.redact` and every value in the
/// secret store. Called at start, when a secret changes and on reload.
pub async fn refresh_redaction(cell: &ScrubberCell, config: &Config, secrets: &SecretStore) {
    let values = match secrets.all_values().await {
        Ok(values) => values,
        Err(error) => {
            tracing::warn!(%error, "cannot read the secret store to redact its values from audit rows; keeping the previous rules");
            return;
        }
    };
    cell.store(Arc::new(Scrubber::new(&config.audit.redact, &values)));
}

/// Writes one event as its own sealed batch, now (for short-lived CLI commands that have
/// no AuditWriter). Redacted with the built-in patterns.
pub async fn record_now(pool: &Pool, event: AuditEvent) -> Result<(), StoreError> {
    record_all_now(pool, vec![event]).await
}

/// [`record_now`] for the events of one command: one sealed batch, all or none.
pub async fn record_all_now(pool: &Pool, events: Vec<AuditEvent>) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let scrubber = Scrubber::builtin();
    let preparer = Preparer {
        scrubber: &scrubber,
        max_payload_bytes: CLI_MAX_PAYLOAD_BYTES,
    };
    let rows: Vec<_> = events
        .into_iter()
        .map(|event| preparer.row(&AuditRecord::Event(Box::new(event))))
        .collect();
    let mut client = pool.get().await?;
    let writer = format!(
        "{} (cli)",
        warden_actors::audit::writer::default_writer_name()
    );
    store::write_batch(&mut client, &rows, &writer, false, false).await?;
    Ok(())
}

/// Payloads of a CLI command's own rows are truncated past this (as the writer's are
/// past `audit.max_payload_bytes`, which a command does not read).
const CLI_MAX_PAYLOAD_BYTES: usize = 64 << 10;

/// The operating-system user running a CLI command, for `actor_id`.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid {}", unsafe { libc::getuid() })
        });
    format!("cli:{user}")
}
