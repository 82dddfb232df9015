//! `warden audit verify`: recomputes the hash chain over `audit_batches` and every batch's
//! entries from the rows as they stand, and reports, in order, each batch or row that no
//! longer matches what the AuditWriter sealed.
//!
//! The chain is walked by `position` (consecutive from 1, taken at seal time); a batch's
//! rows are found by its `seq` (their `batch_seq`), which has gaps and may run out of
//! position order when batches were written side by side (schema/0050).
//!
//! What it detects: a row changed (`UPDATE`), deleted, or inserted (into a sealed batch,
//! or with no batch at all); a batch row changed, deleted (a gap in the positions) or
//! re-linked. Batches emptied by retention (`pruned_at`) are checked for their link in the
//! chain only. What it cannot detect on its own: someone who can write to the database
//! rewriting the whole chain from some batch to the end, or cutting the newest batches
//! off. Keep the printed head (sequence number and hash) somewhere else — a later verify
//! must show the same batch with the same hash (docs/audit.md).

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;
use warden_actors::audit::prepare::{AiRow, EventRow, Payload, Row, ToolRow, micros};
use warden_actors::audit::store::{self, ENTRY_BYTES, Micros, chain_hash};

/// Problems listed at most (the first is what an auditor needs; the count is exact up
/// to here).
pub const MAX_PROBLEMS: usize = 100;
/// Batches read per round (their rows are read with them).
const PAGE: i64 = 20;

/// One mismatch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Chain positions with no batch: batches deleted.
    MissingBatches { from: i64, to: i64 },
    /// A batch does not link to the batch before it.
    BrokenLink { seq: i64, position: i64 },
    /// The batch row itself was changed (its hash no longer matches its contents).
    BatchAltered { seq: i64, position: i64 },
    /// A row of a batch was changed.
    RowAltered { seq: i64, table: String, id: Uuid },
    /// A row sealed in a batch is gone.
    RowDeleted { seq: i64, table: String, id: Uuid },
    /// A row claims a batch it was not sealed in, or no batch at all.
    RowInserted {
        seq: Option<i64>,
        table: String,
        id: Uuid,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingBatches { from, to } if from == to => {
                write!(f, "the batch at chain position {from} is missing")
            }
            Problem::MissingBatches { from, to } => write!(
                f,
                "the batches at chain positions {from} to {to} are missing"
            ),
            Problem::BrokenLink { seq, position } => write!(
                f,
                "batch {seq} (chain position {position}) does not link to the batch before it (prev_hash differs)"
            ),
            Problem::BatchAltered { seq, position } => write!(
                f,
                "batch {seq} (chain position {position}) was altered (its hash does not match its entries)"
            ),
            Problem::RowAltered { seq, table, id } => {
                write!(f, "row {table} {id} of batch {seq} was altered")
            }
            Problem::RowDeleted { seq, table, id } => {
                write!(f, "row {table} {id} of batch {seq} was deleted")
            }
            Problem::RowInserted {
                seq: Some(seq),
                table,
                id,
            } => write!(
                f,
                "row {table} {id} claims batch {seq} but was not sealed in it (inserted out of band)"
            ),
            Problem::RowInserted {
                seq: None,
                table,
                id,
            } => write!(
                f,
                "row {table} {id} belongs to no sealed batch (inserted out of band)"
            ),
        }
    }
}

/// What a verification found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub batches: u64,
    pub rows: u64,
    /// Batches whose rows retention deleted (link checked only).
    pub pruned_batches: u64,
    /// The newest batch checked: keep it elsewhere to detect a rewritten tail later.
    pub head_seq: Option<i64>,
    pub head_position: Option<i64>,
    pub head_hash: Option<String>,
    pub problems: Vec<Problem>,
    /// More problems than [`MAX_PROBLEMS`] were found.
    pub truncated: bool,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn push(&mut self, problem: Problem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.truncated = true;
        }
    }
}

fn table_of(tag: u8) -> &'static str {
    match tag {
        1 => "mcp_tool_executions",
        2 => "audit_events",
        3 => "ai_requests",
        _ => "unknown",
    }
}

struct Entry {
    tag: u8,
    id: Uuid,
    hash: [u8; 16],
}

fn entries(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .chunks_exact(ENTRY_BYTES)
        .map(|c| {
            let mut id = [0u8; 16];
            id.copy_from_slice(&c[1..17]);
            let mut hash = [0u8; 16];
            hash.copy_from_slice(&c[17..33]);
            Entry {
                tag: c[0],
                id: Uuid::from_bytes(id),
                hash,
            }
        })
        .collect()
}

/// Verifies every batch (or those with rows at or after `since`) and the rows outside
/// any batch.
pub async fn verify(
    client: &impl GenericClient,
    since: Option<SystemTime>,
) -> Result<Report, tokio_postgres::Error> {
    let mut report = Report::default();
    let start: i64 = match since {
        Some(since) => client
            .query_one(
                "SELECT coalesce(min(position),
                                 (SELECT coalesce(max(position), 0) + 1 FROM audit_batches))
                 FROM audit_batches WHERE last_at >= $1",
                &[&Micros(micros(since))],
            )
            .await?
            .get(0),
        None => 1,
    };
    // The position and hash the first checked batch must link to.
    let mut prev: Option<(i64, Vec<u8>)> = if start > 1 {
        client
            .query_opt(
                "SELECT position, hash FROM audit_batches WHERE position < $1
                 ORDER BY position DESC LIMIT 1",
                &[&start],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)))
    } else {
        Some((0, vec![0u8; 32]))
    };
    let mut next = start;
    loop {
        let rows = client
            .query(
                "SELECT position, seq, prev_hash, hash, row_count, entries, pruned_at IS NOT NULL
                 FROM audit_batches WHERE position >= $1 ORDER BY position LIMIT $2",
                &[&next, &PAGE],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        let mut stored_rows = rows_of_batches(client, &seqs).await?;
        for row in &rows {
            let position: i64 = row.get(0);
            let seq: i64 = row.get(1);
            let prev_hash: Vec<u8> = row.get(2);
            let hash: Vec<u8> = row.get(3);
            let row_count: i32 = row.get(4);
            let stored: Vec<u8> = row.get(5);
            let pruned: bool = row.get(6);
            let current = stored_rows
                .remove(&seq)
                .map(|rows| store::entries(rows.iter()));
            report.batches += 1;
            match &prev {
                Some((prev_position, prev_hash_expected)) => {
                    if position != prev_position + 1 {
                        report.push(Problem::MissingBatches {
                            from: prev_position + 1,
                            to: position - 1,
                        });
                    } else if prev_hash != *prev_hash_expected {
                        report.push(Problem::BrokenLink { seq, position });
                    }
                }
                None => {
                    if position > 1 {
                        report.push(Problem::MissingBatches {
                            from: 1,
                            to: position - 1,
                        });
                    }
                }
            }
            if chain_hash(&prev_hash, position, &stored)[..] != hash[..]
                || stored.len() != row_count.max(0) as usize * ENTRY_BYTES
            {
                report.push(Problem::BatchAltered { seq, position });
            }
            if pruned {
                report.pruned_batches += 1;
            } else {
                let current = current.unwrap_or_default();
                report.rows += (current.len() / ENTRY_BYTES) as u64;
                if current != stored {
                    compare(seq, &entries(&stored), &entries(&current), &mut report);
                }
            }
            report.head_seq = Some(seq);
            report.head_position = Some(position);
            report.head_hash = Some(hex::encode(&hash));
            prev = Some((position, hash));
            next = position + 1;
        }
    }
    // Rows that claim no batch, or a batch that does not exist.
    let since_param = since.map(|t| Micros(micros(t)));
    let outside = client
        .query(
            "SELECT 1::int2, id, batch_seq FROM mcp_tool_executions t
               WHERE ($1::timestamptz IS NULL OR started_at >= $1)
                 AND (batch_seq IS NULL OR NOT EXISTS (SELECT 1 FROM audit_batches b WHERE b.seq = t.batch_seq))
             UNION ALL
             SELECT 2::int2, id, batch_seq FROM audit_events e
               WHERE ($1::timestamptz IS NULL OR occurred_at >= $1)
                 AND (batch_seq IS NULL OR NOT EXISTS (SELECT 1 FROM audit_batches b WHERE b.seq = e.batch_seq))
             UNION ALL
             SELECT 3::int2, id, batch_seq FROM ai_requests a
               WHERE ($1::timestamptz IS NULL OR created_at >= $1)
                 AND (batch_seq IS NULL OR NOT EXISTS (SELECT 1 FROM audit_batches b WHERE b.seq = a.batch_seq))
             LIMIT 101",
            &[&since_param],
        )
        .await?;
    for row in outside {
        let tag: i16 = row.get(0);
        report.push(Problem::RowInserted {
            seq: row.get(2),
            table: table_of(tag as u8).to_owned(),
            id: row.get(1),
        });
    }
    Ok(report)
}

/// The rows of the batches `seqs`, as stored now, by batch. (The range bound lets the
/// BRIN index on `batch_seq` narrow the scan; `= ANY` picks the batches.)
async fn rows_of_batches(
    client: &impl GenericClient,
    seqs: &[i64],
) -> Result<HashMap<i64, Vec<Row>>, tokio_postgres::Error> {
    let first = seqs.iter().copied().min().unwrap_or(0);
    let last = seqs.iter().copied().max().unwrap_or(0);
    let mut by_batch: HashMap<i64, Vec<Row>> = HashMap::new();
    let payload = |json: Option<String>, truncated: bool, sha: Option<Vec<u8>>| {
        json.map(|json| Payload {
            json,
            truncated,
            sha256: sha.map(hex::encode),
        })
    };
    for r in client
        .query(
            "SELECT batch_seq, id, trace_id, session_id, user_id, client_id, server_name, tool_name,
                    requested_name, input::text, input_truncated, input_sha256, output::text,
                    output_truncated, output_sha256, status, error, started_at, completed_at,
                    duration_us
             FROM mcp_tool_executions WHERE batch_seq BETWEEN $1 AND $2 AND batch_seq = ANY($3)",
            &[&first, &last, &seqs],
        )
        .await?
    {
        let row = Row::Tool(ToolRow {
            id: r.get(1),
            trace_id: r.get(2),
            session_id: r.get(3),
            user_id: r.get(4),
            client_id: r.get(5),
            server_name: r.get(6),
            tool_name: r.get(7),
            requested_name: r.get(8),
            input: payload(r.get(9), r.get(10), r.get(11)),
            output: payload(r.get(12), r.get(13), r.get(14)),
            status: r.get(15),
            error: r.get(16),
            started_at_us: micros(r.get(17)),
            completed_at_us: micros(r.get(18)),
            duration_us: r.get(19),
        });
        by_batch.entry(r.get(0)).or_default().push(row);
    }
    for r in client
        .query(
            "SELECT batch_seq, id, trace_id, occurred_at, kind, actor_kind, actor_id, subject,
                    decision, reason, attributes::text
             FROM audit_events WHERE batch_seq BETWEEN $1 AND $2 AND batch_seq = ANY($3)",
            &[&first, &last, &seqs],
        )
        .await?
    {
        let row = Row::Event(EventRow {
            id: r.get(1),
            trace_id: r.get(2),
            occurred_at_us: micros(r.get(3)),
            kind: r.get(4),
            actor_kind: r.get(5),
            actor_id: r.get(6),
            subject: r.get(7),
            decision: r.get(8),
            reason: r.get(9),
            attributes: r.get(10),
        });
        by_batch.entry(r.get(0)).or_default().push(row);
    }
    for r in client
        .query(
            "SELECT batch_seq, id, trace_id, user_id, client_id, session_id, provider, model,
                    requested_model, input_tokens, output_tokens, cache_read_tokens,
                    cache_write_tokens, cost_microdollars, latency_ms, ttft_ms, status, error,
                    streaming, created_at
             FROM ai_requests WHERE batch_seq BETWEEN $1 AND $2 AND batch_seq = ANY($3)",
            &[&first, &last, &seqs],
        )
        .await?
    {
        let row = Row::Ai(AiRow {
            id: r.get(1),
            trace_id: r.get(2),
            user_id: r.get(3),
            client_id: r.get(4),
            session_id: r.get(5),
            provider: r.get(6),
            model: r.get(7),
            requested_model: r.get(8),
            input_tokens: r.get(9),
            output_tokens: r.get(10),
            cache_read_tokens: r.get(11),
            cache_write_tokens: r.get(12),
            cost_microdollars: r.get(13),
            latency_ms: r.get(14),
            ttft_ms: r.get(15),
            status: r.get(16),
            error: r.get(17),
            streaming: r.get(18),
            created_at_us: micros(r.get(19)),
        });
        by_batch.entry(r.get(0)).or_default().push(row);
    }
    Ok(by_batch)
}

/// Merges two entry lists sorted by (tag, id) and reports the differences in order.
fn compare(seq: i64, stored: &[Entry], current: &[Entry], report: &mut Report) {
    let (mut i, mut j) = (0, 0);
    while i < stored.len() || j < current.len() {
        let a = stored.get(i);
        let b = current.get(j);
        match (a, b) {
            (Some(a), Some(b)) if (a.tag, a.id) == (b.tag, b.id) => {
                if a.hash != b.hash {
                    report.push(Problem::RowAltered {
                        seq,
                        table: table_of(a.tag).to_owned(),
                        id: a.id,
                    });
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if (a.tag, a.id) < (b.tag, b.id) => {
                report.push(Problem::RowDeleted {
                    seq,
                    table: table_of(a.tag).to_owned(),
                    id: a.id,
                });
                i += 1;
            }
            (Some(a), None) => {
                report.push(Problem::RowDeleted {
                    seq,
                    table: table_of(a.tag).to_owned(),
                    id: a.id,
                });
                i += 1;
            }
            (_, Some(b)) => {
                report.push(Problem::RowInserted {
                    seq: Some(seq),
                    table: table_of(b.tag).to_owned(),
                    id: b.id,
                });
                j += 1;
            }
            (None, None) => break,
        }
    }
}
