//! The feed: the audit trail in the order it was written, for a SIEM or log shipper to
//! follow (`GET /admin/audit/feed`, `warden audit tail`).
//!
//! A reader passes the chain position it has read up to (`after`, 0 at first) and gets
//! the rows of the next whole batches, oldest first, each carrying its batch's position
//! (`batch`), and the position to pass next time. Positions are consecutive and taken
//! under the chain's lock held to the commit (`warden_actors::audit::store`), so a batch
//! becomes visible only after every batch before it: a reader resuming after position P
//! misses nothing and sees nothing twice. Batches whose rows retention deleted are
//! stepped over.
//!
//! The documents are the search's (`audit::query`), plus `batch`.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;

use super::query::{QueryError, ai_doc, event_doc, tool_doc};

/// Rows per read by default, and at most. A read returns whole batches: past the first
/// batch it stops before one that would take it over the limit, so a single batch
/// larger than the limit (up to `audit.batch_max_rows`) is returned whole.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// Batches looked at per read, at most (a read of pruned or tiny batches stops here).
const MAX_BATCHES: i64 = 1000;

/// One read of the feed.
#[derive(Debug, Serialize)]
pub struct FeedPage {
    /// Oldest first; each with `batch`, its batch's chain position.
    pub items: Vec<Value>,
    /// The position to pass as `after` next time (the last batch read, or `after` when
    /// nothing new was written).
    pub next_after: i64,
    /// Whether this read reached the newest batch: false means more is waiting now.
    pub caught_up: bool,
}

const BATCHES: &str = "SELECT seq, position, row_count, pruned_at IS NOT NULL FROM audit_batches \
     WHERE position > $1 ORDER BY position LIMIT $2";

const ROWS: &str = concat!(
    "SELECT batch_seq, at, id, doc FROM (
  SELECT t.batch_seq, t.started_at AS at, t.id, ",
    tool_doc!(),
    " AS doc FROM mcp_tool_executions t WHERE t.batch_seq = ANY($1) AND t.batch_seq BETWEEN $2 AND $3
  UNION ALL
  SELECT e.batch_seq, e.occurred_at, e.id, ",
    event_doc!(),
    " FROM audit_events e WHERE e.batch_seq = ANY($1) AND e.batch_seq BETWEEN $2 AND $3
  UNION ALL
  SELECT a.batch_seq, a.created_at, a.id, ",
    ai_doc!(),
    " FROM ai_requests a WHERE a.batch_seq = ANY($1) AND a.batch_seq BETWEEN $2 AND $3
) r ORDER BY at, id"
);

/// Reads the rows of the batches after chain position `after`, up to about `limit` rows.
pub async fn read(
    client: &impl GenericClient,
    after: i64,
    limit: Option<usize>,
) -> Result<FeedPage, QueryError> {
    if after < 0 {
        return Err(QueryError::BadFilter(format!(
            "`after` is a chain position (0 or more), found {after}"
        )));
    }
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(QueryError::BadFilter(format!(
                "`limit` is 1 to {MAX_LIMIT} rows, found {n}"
            )));
        }
    };
    let batches = client.query(BATCHES, &[&after, &MAX_BATCHES]).await?;
    if batches.is_empty() {
        check_not_past_head(client, after).await?;
    }
    let mut chosen: Vec<(i64, i64)> = Vec::new();
    let mut rows = 0usize;
    let mut next_after = after;
    for batch in &batches {
        let (seq, position, count, pruned): (i64, i64, i32, bool) =
            (batch.get(0), batch.get(1), batch.get(2), batch.get(3));
        let count = if pruned {
            0
        } else {
            usize::try_from(count).unwrap_or(0)
        };
        if !chosen.is_empty() && rows + count > limit {
            break;
        }
        next_after = position;
        if count > 0 {
            chosen.push((seq, position));
            rows += count;
        }
    }
    let caught_up = next_after == batches.last().map_or(after, |b| b.get(1))
        && batches.len() < MAX_BATCHES as usize;
    let items = documents(client, &chosen, rows).await?;
    Ok(FeedPage {
        items,
        next_after,
        caught_up,
    })
}

/// A reader whose position is past the newest batch would wait forever for rows that
/// were written elsewhere (another database, or one restored from a backup older than
/// the reader's position): refused, saying so.
async fn check_not_past_head(client: &impl GenericClient, after: i64) -> Result<(), QueryError> {
    let head: Option<i64> = client
        .query_one("SELECT max(position) FROM audit_batches", &[])
        .await?
        .get(0);
    let head = head.unwrap_or(0);
    if after > head {
        return Err(QueryError::BadFilter(format!(
            "`after` is {after}, past the newest batch ({head}): this position is from another database or from before a restore"
        )));
    }
    Ok(())
}

/// The documents of the rows of `batches` (seq, position), each with `batch` set to its
/// batch's position, in batch order and within a batch by time.
async fn documents(
    client: &impl GenericClient,
    batches: &[(i64, i64)],
    expected: usize,
) -> Result<Vec<Value>, QueryError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = batches.iter().map(|(seq, _)| *seq).collect();
    let index: HashMap<i64, usize> = seqs.iter().enumerate().map(|(i, seq)| (*seq, i)).collect();
    // The range lets the BRIN indexes on `batch_seq` narrow the scan (`= ANY` alone
    // does not).
    let low = seqs.iter().min().copied().unwrap_or_default();
    let high = seqs.iter().max().copied().unwrap_or_default();
    let found = client.query(ROWS, &[&seqs, &low, &high]).await?;
    let mut by_batch: Vec<Vec<Value>> = vec![Vec::new(); batches.len()];
    for row in &found {
        let Some(&i) = index.get(&row.get::<_, i64>(0)) else {
            continue;
        };
        let mut doc: Value = row.get(3);
        doc["batch"] = Value::from(batches[i].1);
        by_batch[i].push(doc);
    }
    let mut items = Vec::with_capacity(expected);
    for docs in by_batch {
        items.extend(docs);
    }
    Ok(items)
}
