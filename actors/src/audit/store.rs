//! Writing a batch of rows into PostgreSQL: binary COPY, then the batch's seal in
//! `audit_batches`, all in one transaction.
//!
//! **Numbers.** A batch draws its `seq` from the `audit_batch_seq` sequence before its
//! rows are copied (each row carries it in `batch_seq`), with no lock held: batches on
//! different connections — the writer's own, or another replica's — copy their rows at the
//! same time. Only the seal takes turns.
//!
//! **The chain.** At seal time, under a transaction-scoped advisory lock held to the
//! commit, the batch takes the next `position` in the chain and the hash of the batch at
//! the position before. Its seal in `audit_batches` holds one 33-byte entry per row —
//! table tag, id, and the first 16 bytes of [`row_hash`] — sorted by (tag, id), and
//! `hash = sha256(prev_hash || position (8 bytes, big-endian) || sha256(entries))`
//! ([`chain_hash`]). Rows are hashed here, in the writer, over a length-prefixed encoding
//! of exactly the values stored (payloads are `json`, which keeps the text byte for byte,
//! and times are whole microseconds), so PostgreSQL does no hashing on the write path and
//! `warden audit verify` recomputes the same bytes from the rows as they stand.
//!
//! **Idempotence.** [`write_batch`] with `idempotent` COPYs into a temporary staging table
//! and inserts with `ON CONFLICT (id) DO NOTHING`: rows already present (a spool replayed
//! after a crash, or a commit whose acknowledgement was lost) are skipped, never
//! duplicated. The fast path COPYs straight into the tables and falls back to the
//! idempotent path on a unique violation.

use std::error::Error as StdError;
use std::pin::pin;

use bytes::{BufMut, Bytes, BytesMut};
use deadpool_postgres::ClientWrapper;
use futures_util::SinkExt as _;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::prepare::{AiRow, EventRow, Payload, Row, ToolRow};

/// The advisory-lock key that serialises batch sealing (across connections and replicas).
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

/// Table tags in batch entries.
pub const TAG_TOOL: u8 = 1;
pub const TAG_EVENT: u8 = 2;
pub const TAG_AI: u8 = 3;

/// A length-prefixed, unambiguous encoding of a row's values, built in one buffer and
/// hashed once (many small `Sha256::update` calls cost twice as much per row).
struct Canon<'b>(&'b mut Vec<u8>);

impl<'b> Canon<'b> {
    fn new(tag: u8, buf: &'b mut Vec<u8>) -> Canon<'b> {
        buf.clear();
        buf.push(tag);
        Canon(buf)
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn text(&mut self, value: Option<&str>) {
        match value {
            None => self.0.push(0),
            Some(text) => {
                self.0.push(1);
                self.bytes(&(text.len() as u64).to_be_bytes());
                self.bytes(text.as_bytes());
            }
        }
    }
    fn int(&mut self, value: Option<i64>) {
        match value {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                self.bytes(&v.to_be_bytes());
            }
        }
    }
    fn flag(&mut self, value: bool) {
        self.bytes(&[2, u8::from(value)]);
    }
    fn payload(&mut self, payload: &Option<Payload>) {
        self.text(payload.as_ref().map(|p| p.json.as_str()));
        self.flag(payload.as_ref().is_some_and(|p| p.truncated));
        self.text(payload.as_ref().and_then(|p| p.sha256.as_deref()));
    }
    fn finish(self) -> [u8; 16] {
        let digest = Sha256::digest(&self.0[..]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }
}

/// The table tag of a row.
pub fn tag(row: &Row) -> u8 {
    match row {
        Row::Tool(_) => TAG_TOOL,
        Row::Event(_) => TAG_EVENT,
        Row::Ai(_) => TAG_AI,
    }
}

/// The first 16 bytes of the SHA-256 of a row's canonical encoding: every stored column
/// but `batch_seq`, in column order.
pub fn row_hash(row: &Row) -> [u8; 16] {
    row_hash_with(row, &mut Vec::with_capacity(1024))
}

/// [`row_hash`] with a scratch buffer the caller keeps across rows.
fn row_hash_with(row: &Row, buf: &mut Vec<u8>) -> [u8; 16] {
    let mut c = Canon::new(tag(row), buf);
    match row {
        Row::Tool(t) => {
            c.bytes(t.id.as_bytes());
            c.text(Some(&t.trace_id));
            c.text(t.session_id.as_deref());
            c.text(t.user_id.as_deref());
            c.text(t.client_id.as_deref());
            c.text(Some(&t.server_name));
            c.text(Some(&t.tool_name));
            c.text(Some(&t.requested_name));
            c.payload(&t.input);
            c.payload(&t.output);
            c.text(Some(&t.status));
            c.text(t.error.as_deref());
            c.int(Some(t.started_at_us));
            c.int(Some(t.completed_at_us));
            c.int(Some(t.duration_us));
        }
        Row::Event(e) => {
            c.bytes(e.id.as_bytes());
            c.text(e.trace_id.as_deref());
            c.int(Some(e.occurred_at_us));
            c.text(Some(&e.kind));
            c.text(Some(&e.actor_kind));
            c.text(e.actor_id.as_deref());
            c.text(e.subject.as_deref());
            c.text(e.decision.as_deref());
            c.text(e.reason.as_deref());
            c.text(Some(&e.attributes));
        }
        Row::Ai(a) => {
            c.bytes(a.id.as_bytes());
            c.text(Some(&a.trace_id));
            c.text(a.user_id.as_deref());
            c.text(a.client_id.as_deref());
            c.text(a.session_id.as_deref());
            c.text(Some(&a.provider));
            c.text(Some(&a.model));
            c.text(a.requested_model.as_deref());
            for v in [
                a.input_tokens,
                a.output_tokens,
                a.cache_read_tokens,
                a.cache_write_tokens,
                a.cost_microdollars,
                a.latency_ms,
                a.ttft_ms,
            ] {
                c.int(v);
            }
            c.text(Some(&a.status));
            c.text(a.error.as_deref());
            c.flag(a.streaming);
            c.int(Some(a.created_at_us));
        }
    }
    c.finish()
}

/// The entries of a batch: one per row, sorted by (tag, id).
pub fn entries<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Vec<u8> {
    let mut scratch = Vec::with_capacity(1024);
    let mut list: Vec<(u8, uuid::Uuid, [u8; 16])> = rows
        .into_iter()
        .map(|r| (tag(r), r.id(), row_hash_with(r, &mut scratch)))
        .collect();
    list.sort_unstable_by_key(|e| (e.0, e.1));
    let mut out = Vec::with_capacity(list.len() * ENTRY_BYTES);
    for (tag, id, hash) in list {
        out.push(tag);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&hash);
    }
    out
}

/// `sha256(prev || position.to_be_bytes() || sha256(entries))`: the hash a batch is
/// sealed with.
pub fn chain_hash(prev: &[u8], position: i64, entries: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(position.to_be_bytes());
    hasher.update(Sha256::digest(entries));
    hasher.finalize().into()
}

/// A batch's rows in PostgreSQL's binary COPY format (one stream per table) and the
/// entries of its seal: all of the batch that needs no connection, computed before its
/// transaction begins so that the connection only waits on PostgreSQL.
struct Encoded {
    /// Tool calls, events, AI requests: the order of [`COPY_TARGETS`].
    streams: [CopyStream; 3],
    entries: Vec<u8>,
    first_at_us: i64,
    last_at_us: i64,
}

impl Encoded {
    /// Encodes `rows`; fails (as [`StoreError::Rejected`]) only on a value longer than
    /// the COPY format can carry.
    fn new(rows: &[Row]) -> Result<Encoded, StoreError> {
        let mut streams = [CopyStream::new(), CopyStream::new(), CopyStream::new()];
        for row in rows {
            match row {
                Row::Tool(t) => streams[0].tool(t)?,
                Row::Event(e) => streams[1].event(e)?,
                Row::Ai(a) => streams[2].ai(a)?,
            }
        }
        for stream in &mut streams {
            stream.finish();
        }
        Ok(Encoded {
            streams,
            entries: entries(rows),
            first_at_us: rows.iter().map(Row::at_us).min().unwrap_or(0),
            last_at_us: rows.iter().map(Row::at_us).max().unwrap_or(0),
        })
    }
}

/// Where each stream of [`Encoded`] goes: the table, the staging table of the idempotent
/// path, and the columns in the order the stream holds them.
const COPY_TARGETS: [(&str, &str, &str); 3] = [
    ("mcp_tool_executions", "warden_stage_tools", TOOL_COLUMNS),
    ("audit_events", "warden_stage_events", EVENT_COLUMNS),
    ("ai_requests", "warden_stage_ai", AI_COLUMNS),
];

/// Bytes per COPY data message, about: a chunk is closed at the first row boundary past
/// this. Chunks are allocated at this size and never grown or copied.
const COPY_CHUNK: usize = 64 << 10;

const NEXT_SEQ: &str = "SELECT nextval('audit_batch_seq')";
const LOCK_CHAIN: &str = "SELECT pg_advisory_xact_lock($1)";
const CHAIN_HEAD: &str = "SELECT position, hash FROM audit_batches ORDER BY position DESC LIMIT 1";
const INSERT_SEAL: &str = "INSERT INTO audit_batches
     (seq, position, prev_hash, hash, row_count, entries, first_at, last_at, writer, replayed)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Writes `rows` as one sealed batch in one transaction. The rows are encoded into COPY
/// data before the transaction begins, so the transaction only waits on PostgreSQL;
/// statements are prepared once per connection; the batch's number is drawn in the same
/// round trip as its first COPY starts, and the chain's lock and head in one more.
pub async fn write_batch(
    client: &mut ClientWrapper,
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
    let Encoded {
        streams,
        entries: all_entries,
        first_at_us,
        last_at_us,
    } = Encoded::new(rows)?;
    let tx = client.transaction().await?;
    if idempotent {
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS warden_stage_tools (LIKE mcp_tool_executions) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS warden_stage_events (LIKE audit_events) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS warden_stage_ai (LIKE ai_requests) ON COMMIT DELETE ROWS;",
        )
        .await?;
    }
    let mut statements = Vec::with_capacity(3);
    let mut filled = Vec::with_capacity(3);
    for (stream, (table, stage, columns)) in streams.into_iter().zip(COPY_TARGETS) {
        if stream.rows > 0 {
            let table = if idempotent { stage } else { table };
            statements.push(
                tx.prepare_cached(&format!(
                    "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
                ))
                .await?,
            );
            filled.push(stream);
        }
    }
    let next = tx.prepare_cached(NEXT_SEQ).await?;
    let Some((first_statement, rest)) = statements.split_first() else {
        // Cannot happen: `rows` is not empty, so some stream holds a row.
        return Err(StoreError::Rejected(format!(
            "a batch of {} rows encoded to no COPY data",
            rows.len()
        )));
    };
    // The number and the first COPY's start in one round trip; the rows carry the number,
    // so they are sent once it is known.
    let (number, first_sink) = futures_util::future::try_join(
        tx.query_one(&next, &[]),
        tx.copy_in::<_, Bytes>(first_statement),
    )
    .await?;
    let seq: i64 = number.get(0);
    let mut data = filled.into_iter().map(|stream| stream.into_chunks(seq));
    let first_data = data.next().unwrap_or_default();
    // The next COPY is queued behind the first one's data, so it starts without a
    // round trip of its own.
    let rest_done = async {
        for (statement, data) in rest.iter().zip(data) {
            let sink = tx.copy_in::<_, Bytes>(statement).await?;
            send_copy(sink, data).await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    futures_util::future::try_join(send_copy(first_sink, first_data), rest_done).await?;
    let inserted: Option<std::collections::HashSet<uuid::Uuid>> = if idempotent {
        let mut inserted = std::collections::HashSet::new();
        for (stage, table) in [
            ("warden_stage_tools", "mcp_tool_executions"),
            ("warden_stage_events", "audit_events"),
            ("warden_stage_ai", "ai_requests"),
        ] {
            for row in tx
                .query(
                    &format!(
                        "INSERT INTO {table} SELECT * FROM {stage} ON CONFLICT (id) DO NOTHING RETURNING id"
                    ),
                    &[],
                )
                .await?
            {
                inserted.insert(row.get::<_, uuid::Uuid>(0));
            }
        }
        Some(inserted)
    } else {
        None
    };
    // What the seal covers: every row, or on the idempotent path those inserted now.
    let recomputed;
    let (count, entries, first, last): (usize, &[u8], i64, i64) = match &inserted {
        None => (rows.len(), &all_entries, first_at_us, last_at_us),
        Some(inserted) => {
            let stored: Vec<&Row> = rows.iter().filter(|r| inserted.contains(&r.id())).collect();
            recomputed = entries(stored.iter().copied());
            (
                stored.len(),
                &recomputed,
                stored.iter().map(|r| r.at_us()).min().unwrap_or(0),
                stored.iter().map(|r| r.at_us()).max().unwrap_or(0),
            )
        }
    };
    if count == 0 {
        tx.commit().await?;
        return Ok(Written {
            seq: None,
            rows: 0,
            skipped: rows.len(),
        });
    }
    let lock = tx.prepare_cached(LOCK_CHAIN).await?;
    let head = tx.prepare_cached(CHAIN_HEAD).await?;
    let insert = tx.prepare_cached(INSERT_SEAL).await?;
    // The seal: from here to the commit, other writers wait for the chain. The head is
    // read by a statement of its own, sent behind the lock's: PostgreSQL runs it once the
    // lock is held, so its snapshot sees the previous seal.
    let (_, head) =
        futures_util::future::try_join(tx.execute(&lock, &[&CHAIN_LOCK]), tx.query_opt(&head, &[]))
            .await?;
    let (position, prev): (i64, Vec<u8>) = match head {
        Some(row) => (row.get::<_, i64>(0) + 1, row.get(1)),
        None => (1, vec![0u8; 32]),
    };
    let hash = chain_hash(&prev, position, entries);
    let row_count = i32::try_from(count)
        .map_err(|_| StoreError::Rejected(format!("a batch of {count} rows")))?;
    tx.execute(
        &insert,
        &[
            &seq,
            &position,
            &prev,
            &hash.as_slice(),
            &row_count,
            &entries,
            &Micros(first),
            &Micros(last),
            &writer,
            &replayed,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Written {
        seq: Some(seq),
        rows: count,
        skipped: rows.len() - count,
    })
}

/// Sends one table's COPY data, a message per chunk, and completes the COPY.
async fn send_copy(
    sink: tokio_postgres::CopyInSink<Bytes>,
    chunks: Vec<Bytes>,
) -> Result<u64, tokio_postgres::Error> {
    let mut sink = pin!(sink);
    for chunk in chunks {
        sink.as_mut().feed(chunk).await?;
    }
    sink.as_mut().finish().await
}

/// One table's rows in PostgreSQL's binary COPY format: the header, per row the field
/// count and per field its length (-1 for NULL) and its binary send format, then the
/// trailer. The rows' `batch_seq` (the last column) is written as zero and filled in once
/// the batch has its number.
struct CopyStream {
    /// Chunks filled, then the one being filled.
    full: Vec<BytesMut>,
    buf: BytesMut,
    /// Where each row's `batch_seq` value is: chunk, offset.
    seq_at: Vec<(usize, usize)>,
    rows: usize,
}

/// The binary COPY signature, then flags and header-extension length (both zero).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl CopyStream {
    fn new() -> CopyStream {
        CopyStream {
            full: Vec::new(),
            buf: BytesMut::new(),
            seq_at: Vec::new(),
            rows: 0,
        }
    }

    fn start_row(&mut self, fields: i16) {
        if self.rows == 0 {
            self.buf.reserve(COPY_CHUNK + (4 << 10));
            self.buf.put_slice(COPY_HEADER);
        } else if self.buf.len() >= COPY_CHUNK {
            let next = BytesMut::with_capacity(COPY_CHUNK + (4 << 10));
            self.full.push(std::mem::replace(&mut self.buf, next));
        }
        self.rows += 1;
        self.buf.put_i16(fields);
    }

    fn finish(&mut self) {
        if self.rows > 0 {
            self.buf.put_i16(-1);
        }
    }

    /// `text`, `json` (its binary format is the text), `bytea`.
    fn bytes(&mut self, value: &[u8]) -> Result<(), StoreError> {
        let len = i32::try_from(value.len()).map_err(|_| {
            StoreError::Rejected(format!(
                "a value of {} bytes is too large to transmit",
                value.len()
            ))
        })?;
        self.buf.put_i32(len);
        self.buf.put_slice(value);
        Ok(())
    }

    fn text(&mut self, value: &str) -> Result<(), StoreError> {
        self.bytes(value.as_bytes())
    }

    fn opt_text(&mut self, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(text) => self.text(text),
            None => {
                self.null();
                Ok(())
            }
        }
    }

    fn null(&mut self) {
        self.buf.put_i32(-1);
    }

    fn uuid(&mut self, id: &uuid::Uuid) {
        self.buf.put_i32(16);
        self.buf.put_slice(id.as_bytes());
    }

    fn int8(&mut self, value: i64) {
        self.buf.put_i32(8);
        self.buf.put_i64(value);
    }

    fn opt_int8(&mut self, value: Option<i64>) {
        match value {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    fn bool(&mut self, value: bool) {
        self.buf.put_i32(1);
        self.buf.put_u8(u8::from(value));
    }

    /// `timestamptz`: microseconds since 2000-01-01.
    fn time(&mut self, unix_us: i64) {
        self.int8(unix_us.saturating_sub(PG_EPOCH_US));
    }

    fn seq(&mut self) {
        self.buf.put_i32(8);
        self.seq_at.push((self.full.len(), self.buf.len()));
        self.buf.put_i64(0);
    }

    /// `json`, `truncated`, `sha256` (bytea of the hex digest, NULL unless it is hex).
    fn payload(&mut self, payload: &Option<Payload>) -> Result<(), StoreError> {
        match payload {
            None => {
                self.null();
                self.bool(false);
                self.null();
            }
            Some(p) => {
                self.text(&p.json)?;
                self.bool(p.truncated);
                match p.sha256.as_deref().and_then(|h| hex::decode(h).ok()) {
                    Some(digest) => self.bytes(&digest)?,
                    None => self.null(),
                }
            }
        }
        Ok(())
    }

    /// The columns of [`TOOL_COLUMNS`].
    fn tool(&mut self, r: &ToolRow) -> Result<(), StoreError> {
        self.start_row(TOOL_FIELDS);
        self.uuid(&r.id);
        self.text(&r.trace_id)?;
        self.opt_text(r.session_id.as_deref())?;
        self.opt_text(r.user_id.as_deref())?;
        self.opt_text(r.client_id.as_deref())?;
        self.text(&r.server_name)?;
        self.text(&r.tool_name)?;
        self.text(&r.requested_name)?;
        self.payload(&r.input)?;
        self.payload(&r.output)?;
        self.text(&r.status)?;
        self.opt_text(r.error.as_deref())?;
        self.time(r.started_at_us);
        self.time(r.completed_at_us);
        self.int8(r.duration_us);
        self.seq();
        Ok(())
    }

    /// The columns of [`EVENT_COLUMNS`].
    fn event(&mut self, r: &EventRow) -> Result<(), StoreError> {
        self.start_row(EVENT_FIELDS);
        self.uuid(&r.id);
        self.opt_text(r.trace_id.as_deref())?;
        self.time(r.occurred_at_us);
        self.text(&r.kind)?;
        self.text(&r.actor_kind)?;
        self.opt_text(r.actor_id.as_deref())?;
        self.opt_text(r.subject.as_deref())?;
        self.opt_text(r.decision.as_deref())?;
        self.opt_text(r.reason.as_deref())?;
        self.text(&r.attributes)?;
        self.seq();
        Ok(())
    }

    /// The columns of [`AI_COLUMNS`].
    fn ai(&mut self, r: &AiRow) -> Result<(), StoreError> {
        self.start_row(AI_FIELDS);
        self.uuid(&r.id);
        self.text(&r.trace_id)?;
        self.opt_text(r.user_id.as_deref())?;
        self.opt_text(r.client_id.as_deref())?;
        self.opt_text(r.session_id.as_deref())?;
        self.text(&r.provider)?;
        self.text(&r.model)?;
        self.opt_text(r.requested_model.as_deref())?;
        for v in [
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            r.cache_write_tokens,
            r.cost_microdollars,
            r.latency_ms,
            r.ttft_ms,
        ] {
            self.opt_int8(v);
        }
        self.text(&r.status)?;
        self.opt_text(r.error.as_deref())?;
        self.bool(r.streaming);
        self.time(r.created_at_us);
        self.seq();
        Ok(())
    }

    /// The stream's chunks with every row's `batch_seq` set to `seq`, in place.
    fn into_chunks(mut self, seq: i64) -> Vec<Bytes> {
        self.full.push(self.buf);
        let seq = seq.to_be_bytes();
        for (chunk, at) in self.seq_at {
            self.full[chunk][at..at + 8].copy_from_slice(&seq);
        }
        self.full.into_iter().map(BytesMut::freeze).collect()
    }
}

/// The number of columns in a COPY column list (a row's field count in the binary
/// format), so the count cannot drift from the list.
const fn column_count(columns: &str) -> i16 {
    let bytes = columns.as_bytes();
    let mut count = 1;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b',' {
            count += 1;
        }
        i += 1;
    }
    count
}

// Evaluated at compile time (a const item; a `const fn` called at run time would count
// the commas of every row).
const TOOL_FIELDS: i16 = column_count(TOOL_COLUMNS);
const EVENT_FIELDS: i16 = column_count(EVENT_COLUMNS);
const AI_FIELDS: i16 = column_count(AI_COLUMNS);

const TOOL_COLUMNS: &str = "id, trace_id, session_id, user_id, client_id, server_name, tool_name, \
     requested_name, input, input_truncated, input_sha256, output, output_truncated, output_sha256, \
     status, error, started_at, completed_at, duration_us, batch_seq";

const EVENT_COLUMNS: &str = "id, trace_id, occurred_at, kind, actor_kind, actor_id, subject, \
     decision, reason, attributes, batch_seq";

const AI_COLUMNS: &str = "id, trace_id, user_id, client_id, session_id, provider, model, \
     requested_model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
     cost_microdollars, latency_ms, ttft_ms, status, error, streaming, created_at, batch_seq";

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

    use crate::audit::prepare::{EventRow, Row};

    fn event(subject: &str) -> Row {
        Row::Event(EventRow {
            id: uuid::Uuid::now_v7(),
            trace_id: None,
            occurred_at_us: 1,
            kind: "k".into(),
            actor_kind: "system".into(),
            actor_id: None,
            subject: Some(subject.into()),
            decision: None,
            reason: None,
            attributes: "{}".into(),
        })
    }

    #[test]
    fn row_hash_covers_every_value_and_tells_null_from_empty() {
        let a = event("x");
        let Row::Event(mut e) = a.clone() else {
            unreachable!()
        };
        e.subject = Some(String::new());
        let empty = Row::Event(e.clone());
        e.subject = None;
        let null = Row::Event(e.clone());
        e.subject = Some("x".into());
        e.attributes = "{ }".into();
        let spaced = Row::Event(e);
        let hashes = [
            row_hash(&a),
            row_hash(&empty),
            row_hash(&null),
            row_hash(&spaced),
        ];
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn row_hash_is_the_documented_encoding() {
        // Computed independently (Python's hashlib over the encoding in the module doc):
        // rows sealed by earlier versions must verify unchanged.
        let Row::Event(mut e) = event("x") else {
            unreachable!()
        };
        e.id = uuid::Uuid::from_bytes(std::array::from_fn(|i| i as u8));
        assert_eq!(
            hex::encode(row_hash(&Row::Event(e))),
            "2ef76c93d381e4cf355ff4380bd617d3"
        );
    }

    #[test]
    fn entries_are_sorted_and_fixed_size() {
        let rows = [event("b"), event("a")];
        let bytes = entries(rows.iter().rev());
        assert_eq!(bytes.len(), 2 * ENTRY_BYTES);
        assert_eq!(bytes, entries(rows.iter()));
        assert_eq!(&bytes[1..17], rows[0].id().as_bytes());
    }

    #[test]
    fn chain_hash_is_prev_position_and_the_entries_digest() {
        // sha256('\x00'*32 || int8send(1) || sha256('')), computed independently.
        let mut expected = Sha256::new();
        expected.update([0u8; 32]);
        expected.update([0, 0, 0, 0, 0, 0, 0, 1]);
        expected.update(Sha256::digest(b""));
        let expected: [u8; 32] = expected.finalize().into();
        assert_eq!(chain_hash(&[0u8; 32], 1, b""), expected);
    }
}
