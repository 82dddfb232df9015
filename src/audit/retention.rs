//! The retention job (`audit.retention`): deletes audit rows older than the retention
//! period, whole batches at a time, in bounded transactions, and records what it did as
//! an `audit.retention` event (which is itself part of the chain).
//!
//! A batch is deleted once its newest row (`last_at`) is older than the cutoff. Its row
//! in `audit_batches` stays, marked `pruned_at`, so `warden audit verify` still checks
//! the chain across it. Runs under the Scheduler, on one replica at a time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use serde_json::json;
use warden_actors::audit::prepare::micros;
use warden_actors::audit::store::Micros;
use warden_actors::audit::{Audit, AuditEvent, AuditRecord};
use warden_actors::scheduler::Job;

/// Batches deleted per transaction (about this many thousand rows with default batches).
pub const BATCHES_PER_ROUND: i64 = 20;
/// Rounds per run at most; the rest waits for the next run.
pub const MAX_ROUNDS: usize = 500;
/// How often the job runs.
pub const EVERY: Duration = Duration::from_secs(3600);

pub struct RetentionJob {
    pub pool: Pool,
    pub audit: Audit,
    pub retention: Duration,
}

impl RetentionJob {
    pub fn new(pool: Pool, audit: Audit, retention: Duration) -> Arc<RetentionJob> {
        Arc::new(RetentionJob {
            pool,
            audit,
            retention,
        })
    }

    async fn run_once(&self) -> Result<String, String> {
        let cutoff = SystemTime::now()
            .checked_sub(self.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut batches = 0i64;
        let mut rows = [0u64; 3];
        let mut first_seq: Option<i64> = None;
        let mut last_seq: Option<i64> = None;
        for _ in 0..MAX_ROUNDS {
            let mut client = self.pool.get().await.map_err(|e| e.to_string())?;
            let tx = client.transaction().await.map_err(db)?;
            let seqs: Vec<i64> = tx
                .query(
                    "SELECT seq FROM audit_batches WHERE pruned_at IS NULL AND last_at < $1
                     ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&Micros(micros(cutoff)), &BATCHES_PER_ROUND],
                )
                .await
                .map_err(db)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if seqs.is_empty() {
                break;
            }
            for (i, table) in ["mcp_tool_executions", "audit_events", "ai_requests"]
                .iter()
                .enumerate()
            {
                rows[i] += tx
                    .execute(
                        // The range lets the BRIN index on `batch_seq` narrow the scan
                        // (it cannot use `= ANY` alone); `seqs` is sorted.
                        &format!(
                            "DELETE FROM {table}
                             WHERE batch_seq BETWEEN $2 AND $3 AND batch_seq = ANY($1)"
                        ),
                        &[&seqs, &seqs[0], &seqs[seqs.len() - 1]],
                    )
                    .await
                    .map_err(db)?;
            }
            tx.execute(
                "UPDATE audit_batches SET pruned_at = now() WHERE seq = ANY($1)",
                &[&seqs],
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            batches += seqs.len() as i64;
            first_seq = first_seq.or(seqs.first().copied());
            last_seq = seqs.last().copied().or(last_seq);
        }
        if batches == 0 {
            return Ok("nothing older than the retention period".into());
        }
        let total: u64 = rows.iter().sum();
        let mut event = AuditEvent::new("audit.retention", "system");
        event.subject = Some("audit".into());
        event.reason = Some(format!(
            "deleted {total} rows in {batches} batches older than {}",
            humantime::format_duration(self.retention)
        ));
        event.attributes = json!({
            "cutoff": humantime::format_rfc3339_seconds(cutoff).to_string(),
            "retention_secs": self.retention.as_secs(),
            "batches": batches,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "rows": {
                "mcp_tool_executions": rows[0],
                "audit_events": rows[1],
                "ai_requests": rows[2],
            },
        });
        let detail = event.reason.clone().unwrap_or_default();
        if let Err(error) = self.audit.record(AuditRecord::Event(Box::new(event))).await {
            return Err(format!("{detail}, but recording it failed: {error}"));
        }
        Ok(detail)
    }
}

/// The registry's factory: the job when `audit.retention` is set.
pub fn job(app: &Arc<crate::app::App>) -> Option<Arc<dyn Job>> {
    let retention = app.config.load().audit.retention?;
    Some(RetentionJob::new(
        app.db.clone(),
        app.audit.clone(),
        retention,
    ))
}

fn db(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    }
}

impl Job for RetentionJob {
    fn name(&self) -> &str {
        "audit.retention"
    }

    fn every(&self) -> Duration {
        EVERY
    }

    fn run(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.run_once())
    }
}
