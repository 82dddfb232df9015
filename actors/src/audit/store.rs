//! Writing a batch of rows into PostgreSQL: binary COPY, then the batch's seal in
//! `audit_batches`, all in one transaction.
//!
//! **The chain.** Under a transaction-scoped advisory lock (so replicas writing into the
//! same database take turns), the batch gets the next sequence number and the previous
//! batch's hash. After the COPY, `warden_audit_entries(seq)` (schema/0004_audit.sql)
//! computes one entry per row from the rows *as PostgreSQL stored them* — so jsonb
//! normalisation and time precision cannot make a later check disagree — and the seal
//! stores them with `hash = sha256(prev_hash || seq (8 bytes, big-endian) ||
//! sha256(entries))`. [`chain_hash`] is the same function for `warden audit verify`.
//!
//! **Idempotence.** [`write_batch`] with `idempotent` COPYs into a temporary staging table
//! and inserts with `ON CONFLICT (id) DO NOTHING`: rows already present (a spool replayed
//! after a crash, or a commit whose acknowledgement was lost) are skipped, never
//! duplicated. The fast path COPYs straight into the tables and falls back to the
//! idempotent path on a unique violation.

use std::error::Error as StdError;
use std::pin::pin;

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Transaction};

use super::prepare::{AiRow, EventRow, Payload, Row, ToolRow};

/// The advisory-lock key that serialises batch sealing across replicas.
pub const CHAIN_LOCK: i64 = 0x5741_5244_454e_0002;
/// Bytes per entry in `audit_batches.entries`: tag, id, truncated row hash.
pub const ENTRY_BYTES: usize = 33;

/// Why a batch did not land.
#[derive(Debug, Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached or could not take the batch now (connection
    /// lost, shutting down, missing schema, …): spool it and try again later.
    #[error("PostgreSQL is unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL refused the rows themselves (a value it cannot store).
    #[error("PostgreSQL refused the rows: {0}")]
    Rejected(String),
    /// A row with the same id is already stored (the caller retries idempotently).
    #[error("a row of the batch is already stored")]
    Duplicate,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                let text = format!("{code}: {}", db.message());
                if code == "23505" {
                    StoreError::Duplicate
                } else if code.starts_with("22") || code.starts_with("23") {
                    StoreError::Rejected(text)
                } else {
                    StoreError::Unavailable(text)
                }
            }
            None => StoreError::Unavailable(describe(&error)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

/// An error with its causes (tokio-postgres hides the interesting part in `source`).
fn describe(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a written batch became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The batch's sequence number; None when every row was already stored.
    pub seq: Option<i64>,
    /// Rows inserted by this batch.
    pub rows: usize,
    /// Rows skipped because they were already stored (idempotent path).
    pub skipped: usize,
}

/// `sha256(prev || seq.to_be_bytes() || sha256(entries))`: the hash a batch is sealed
/// with.
pub fn chain_hash(prev: &[u8], seq: i64, entries: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(Sha256::digest(entries));
    hasher.finalize().into()
}

/// Writes `rows` as one sealed batch in one transaction.
pub async fn write_batch(
    client: &mut Client,
    rows: &[Row],
    writer: &str,
    replayed: bool,
    idempotent: bool,
) -> Result<Written, StoreError> {
    if rows.is_empty() {
        return Ok(Written {
            seq: None,
            rows: 0,
            skipped: 0,
        });
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK])
        .await?;
    let last = tx
        .query_opt(
            "SELECT seq, hash FROM audit_batches ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    let (seq, prev): (i64, Vec<u8>) = match last {
        Some(row) => (row.get::<_, i64>(0) + 1, row.get(1)),
        None => (1, vec![0u8; 32]),
    };
    let tools: Vec<&ToolRow> = rows
        .iter()
        .filter_map(|r| match r {
            Row::Tool(t) => Some(t),
            _ => None,
        })
        .collect();
    let events: Vec<&EventRow> = rows
        .iter()
        .filter_map(|r| match r {
            Row::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let ais: Vec<&AiRow> = rows
        .iter()
        .filter_map(|r| match r {
            Row::Ai(a) => Some(a),
            _ => None,
        })
        .collect();
    if idempotent {
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS warden_stage_tools (LIKE mcp_tool_executions) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS warden_stage_events (LIKE audit_events) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS warden_stage_ai (LIKE ai_requests) ON COMMIT DELETE ROWS;",
        )
        .await?;
    }
    let (tool_table, event_table, ai_table) = if idempotent {
        ("warden_stage_tools", "warden_stage_events", "warden_stage_ai")
    } else {
        ("mcp_tool_executions", "audit_events", "ai_requests")
    };
    copy_tools(&tx, tool_table, &tools, seq).await?;
    copy_events(&tx, event_table, &events, seq).await?;
    copy_ai(&tx, ai_table, &ais, seq).await?;
    if idempotent {
        for (stage, table) in [
            ("warden_stage_tools", "mcp_tool_executions"),
            ("warden_stage_events", "audit_events"),
            ("warden_stage_ai", "ai_requests"),
        ] {
            tx.execute(
                &format!("INSERT INTO {table} SELECT * FROM {stage} ON CONFLICT (id) DO NOTHING"),
                &[],
            )
            .await?;
        }
    }
    let first = rows.iter().map(Row::at_us).min().unwrap_or(0);
    let last = rows.iter().map(Row::at_us).max().unwrap_or(0);
    let sealed = tx
        .query_opt(
            "INSERT INTO audit_batches
                 (seq, prev_hash, hash, row_count, entries, first_at, last_at, writer, replayed)
             SELECT $1, $2::bytea, sha256($2::bytea || int8send($1::bigint) || sha256(e.entries)),
                    length(e.entries) / 33, e.entries, $3, $4, $5, $6
             FROM (SELECT warden_audit_entries($1) AS entries) e
             WHERE length(e.entries) > 0
             RETURNING row_count",
            &[&seq, &prev, &Micros(first), &Micros(last), &writer, &replayed],
        )
        .await?;
    tx.commit().await?;
    let inserted = sealed.map_or(0, |r| r.get::<_, i32>(0) as usize);
    Ok(Written {
        seq: (inserted > 0).then_some(seq),
        rows: inserted,
        skipped: rows.len().saturating_sub(inserted),
    })
}

const TOOL_COLUMNS: &str = "id, trace_id, session_id, user_id, client_id, server_name, tool_name, \
     requested_name, input, input_truncated, input_sha256, output, output_truncated, output_sha256, \
     status, error, started_at, completed_at, duration_us, batch_seq";
const TOOL_TYPES: &[Type] = &[
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::BOOL,
    Type::BYTEA,
    Type::JSONB,
    Type::BOOL,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::INT8,
];

async fn copy_tools(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[&ToolRow],
    seq: i64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({TOOL_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, TOOL_TYPES));
    for r in rows {
        let (input, input_truncated, input_sha) = payload_parts(&r.input);
        let (output, output_truncated, output_sha) = payload_parts(&r.output);
        writer
            .as_mut()
            .write(&[
                &r.id,
                &r.trace_id,
                &r.session_id,
                &r.user_id,
                &r.client_id,
                &r.server_name,
                &r.tool_name,
                &r.requested_name,
                &input,
                &input_truncated,
                &input_sha,
                &output,
                &output_truncated,
                &output_sha,
                &r.status,
                &r.error,
                &Micros(r.started_at_us),
                &Micros(r.completed_at_us),
                &r.duration_us,
                &seq,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

const EVENT_COLUMNS: &str = "id, trace_id, occurred_at, kind, actor_kind, actor_id, subject, \
     decision, reason, attributes, batch_seq";
const EVENT_TYPES: &[Type] = &[
    Type::UUID,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::INT8,
];

async fn copy_events(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[&EventRow],
    seq: i64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, EVENT_TYPES));
    for r in rows {
        writer
            .as_mut()
            .write(&[
                &r.id,
                &r.trace_id,
                &Micros(r.occurred_at_us),
                &r.kind,
                &r.actor_kind,
                &r.actor_id,
                &r.subject,
                &r.decision,
                &r.reason,
                &JsonText(&r.attributes),
                &seq,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

const AI_COLUMNS: &str = "id, trace_id, user_id, client_id, session_id, provider, model, \
     requested_model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
     cost_microdollars, latency_ms, ttft_ms, status, error, streaming, created_at, batch_seq";
const AI_TYPES: &[Type] = &[
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
    Type::TIMESTAMPTZ,
    Type::INT8,
];

async fn copy_ai(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[&AiRow],
    seq: i64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({AI_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, AI_TYPES));
    for r in rows {
        writer
            .as_mut()
            .write(&[
                &r.id,
                &r.trace_id,
                &r.user_id,
                &r.client_id,
                &r.session_id,
                &r.provider,
                &r.model,
                &r.requested_model,
                &r.input_tokens,
                &r.output_tokens,
                &r.cache_read_tokens,
                &r.cache_write_tokens,
                &r.cost_microdollars,
                &r.latency_ms,
                &r.ttft_ms,
                &r.status,
                &r.error,
                &r.streaming,
                &Micros(r.created_at_us),
                &seq,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

fn payload_parts(payload: &Option<Payload>) -> (Option<JsonText<'_>>, bool, Option<Vec<u8>>) {
    match payload {
        None => (None, false, None),
        Some(p) => (
            Some(JsonText(&p.json)),
            p.truncated,
            p.sha256.as_deref().and_then(|h| hex::decode(h).ok()),
        ),
    }
}

/// JSON text sent as `json`/`jsonb` without parsing it again.
#[derive(Debug)]
pub struct JsonText<'a>(pub &'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if *ty == Type::JSONB {
            // jsonb's binary format: a version byte, then the text.
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }

    to_sql_checked!();
}

/// Microseconds since the Unix epoch, sent as `timestamptz`.
#[derive(Clone, Copy, Debug)]
pub struct Micros(pub i64);

/// 2000-01-01T00:00:00Z (PostgreSQL's epoch) in Unix microseconds.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl ToSql for Micros {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_i64(self.0.saturating_sub(PG_EPOCH_US));
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP)
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_matches_the_sql_definition() {
        // sha256('\x00'*32 || int8send(1) || sha256('')), computed independently.
        let mut expected = Sha256::new();
        expected.update([0u8; 32]);
        expected.update([0, 0, 0, 0, 0, 0, 0, 1]);
        expected.update(Sha256::digest(b""));
        let expected: [u8; 32] = expected.finalize().into();
        assert_eq!(chain_hash(&[0u8; 32], 1, b""), expected);
    }
}
