//! Searching the trail: one set of [`Filters`] for `warden audit search` and
//! `GET /admin/audit`, newest first, paginated with an opaque cursor.
//!
//! A search spans the three tables: tool calls (`type: tool_call`), events (`type:
//! event`, with their `kind`) and model requests (`type: ai_request`). Filters apply where
//! they make sense: `tool` matches a tool call's upstream or requested name and an
//! event's subject (`server/tool`); `status` matches tool calls and model requests, and
//! for events `denied` means a `deny` decision and `success` an `allow`.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;
use tokio_postgres::GenericClient;
use uuid::Uuid;
use warden_actors::audit::prepare::micros;
use warden_actors::audit::store::Micros;

/// Results per page by default, and at most.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

const STATUSES: &[&str] = &[
    "success",
    "error",
    "denied",
    "timeout",
    "cancelled",
    "rate_limited",
];

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    pub user: Option<String>,
    pub tool: Option<String>,
    pub trace: Option<String>,
    /// `1h` (that long ago) or an RFC 3339 time.
    pub since: Option<String>,
    pub until: Option<String>,
    pub status: Option<String>,
    /// `tool_call`, `ai_request`, or an event kind (`permission.decision`, …).
    pub kind: Option<String>,
    pub limit: Option<usize>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("{0}")]
    BadFilter(String),
    #[error("database: {0}")]
    Database(String),
}

impl From<tokio_postgres::Error> for QueryError {
    fn from(e: tokio_postgres::Error) -> Self {
        QueryError::Database(match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        })
    }
}

/// One page, newest first.
#[derive(Debug, serde::Serialize)]
pub struct Page {
    pub items: Vec<Value>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `1h`, `30m`, `7d` (that long before `now`) or an RFC 3339 time.
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, QueryError> {
    let text = text.trim();
    if let Ok(ago) = crate::config::units::parse_duration(text) {
        return Ok(now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        QueryError::BadFilter(format!(
            "expected a duration such as `1h` or `7d`, or an RFC 3339 time such as `2026-11-26T09:00:00Z`, found `{text}`"
        ))
    })
}

fn parse_cursor(cursor: &str) -> Result<(i64, Uuid), QueryError> {
    let bad = || QueryError::BadFilter(format!("`{cursor}` is not a cursor from a previous page"));
    let (at, id) = cursor.split_once('_').ok_or_else(bad)?;
    Ok((
        at.parse().map_err(|_| bad())?,
        Uuid::parse_str(id).map_err(|_| bad())?,
    ))
}

// The JSON document of each kind of row, as the search and the feed (`audit::feed`)
// return it: one shape for both, built in SQL. Macros rather than constants, so that
// `concat!` can splice them into the statements at compile time. Table aliases: `t` tool
// calls, `e` events, `a` model requests.
macro_rules! tool_doc {
    () => {
        "jsonb_build_object(
      'type', 'tool_call', 'id', t.id, 'at', warden_audit_ts(t.started_at) || 'Z',
      'trace_id', t.trace_id, 'user', t.user_id, 'client_id', t.client_id,
      'session_id', t.session_id, 'server', t.server_name, 'tool', t.tool_name,
      'requested_name', t.requested_name, 'status', t.status, 'error', t.error,
      'duration_us', t.duration_us, 'input', t.input, 'input_truncated', t.input_truncated,
      'output', t.output, 'output_truncated', t.output_truncated, 'batch_seq', t.batch_seq)"
    };
}
macro_rules! event_doc {
    () => {
        "jsonb_build_object(
      'type', 'event', 'id', e.id, 'at', warden_audit_ts(e.occurred_at) || 'Z',
      'trace_id', e.trace_id, 'kind', e.kind, 'actor_kind', e.actor_kind, 'user', e.actor_id,
      'subject', e.subject, 'decision', e.decision, 'reason', e.reason,
      'attributes', e.attributes, 'batch_seq', e.batch_seq)"
    };
}
macro_rules! ai_doc {
    () => {
        "jsonb_build_object(
      'type', 'ai_request', 'id', a.id, 'at', warden_audit_ts(a.created_at) || 'Z',
      'trace_id', a.trace_id, 'user', a.user_id, 'client_id', a.client_id,
      'session_id', a.session_id, 'provider', a.provider, 'model', a.model,
      'requested_model', a.requested_model, 'input_tokens', a.input_tokens,
      'output_tokens', a.output_tokens, 'cost_microdollars', a.cost_microdollars,
      'latency_ms', a.latency_ms, 'status', a.status, 'error', a.error,
      'streaming', a.streaming, 'batch_seq', a.batch_seq)"
    };
}
pub(crate) use {ai_doc, event_doc, tool_doc};

const SEARCH: &str = concat!(
    "
SELECT at, id, doc FROM (
  (SELECT t.started_at AS at, t.id, ",
    tool_doc!(),
    " AS doc
   FROM mcp_tool_executions t
   WHERE ($7::text IS NULL OR $7 = 'tool_call')
     AND ($1::text IS NULL OR t.user_id = $1)
     AND ($2::text IS NULL OR t.tool_name = $2 OR t.requested_name = $2)
     AND ($3::text IS NULL OR t.trace_id = $3)
     AND ($4::timestamptz IS NULL OR t.started_at >= $4)
     AND ($5::timestamptz IS NULL OR t.started_at < $5)
     AND ($6::text IS NULL OR t.status = $6)
     AND ($8::timestamptz IS NULL OR (t.started_at, t.id) < ($8, $9::uuid))
   ORDER BY t.started_at DESC, t.id DESC LIMIT $10)
  UNION ALL
  (SELECT e.occurred_at, e.id, ",
    event_doc!(),
    "
   FROM audit_events e
   WHERE ($7::text IS NULL OR e.kind = $7)
     AND ($1::text IS NULL OR e.actor_id = $1)
     AND ($2::text IS NULL OR e.subject = $2 OR right(e.subject, length($2) + 1) = '/' || $2)
     AND ($3::text IS NULL OR e.trace_id = $3)
     AND ($4::timestamptz IS NULL OR e.occurred_at >= $4)
     AND ($5::timestamptz IS NULL OR e.occurred_at < $5)
     AND ($6::text IS NULL OR ($6 = 'denied' AND e.decision = 'deny')
                           OR ($6 = 'success' AND e.decision = 'allow'))
     AND ($8::timestamptz IS NULL OR (e.occurred_at, e.id) < ($8, $9::uuid))
   ORDER BY e.occurred_at DESC, e.id DESC LIMIT $10)
  UNION ALL
  (SELECT a.created_at, a.id, ",
    ai_doc!(),
    "
   FROM ai_requests a
   WHERE ($7::text IS NULL OR $7 = 'ai_request')
     AND ($2::text IS NULL)
     AND ($1::text IS NULL OR a.user_id = $1)
     AND ($3::text IS NULL OR a.trace_id = $3)
     AND ($4::timestamptz IS NULL OR a.created_at >= $4)
     AND ($5::timestamptz IS NULL OR a.created_at < $5)
     AND ($6::text IS NULL OR a.status = $6)
     AND ($8::timestamptz IS NULL OR (a.created_at, a.id) < ($8, $9::uuid))
   ORDER BY a.created_at DESC, a.id DESC LIMIT $10)
) r
ORDER BY at DESC, id DESC
LIMIT $10"
);

/// Runs a search.
pub async fn search(client: &impl GenericClient, filters: &Filters) -> Result<Page, QueryError> {
    let now = SystemTime::now();
    let since = filters
        .since
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()?;
    let until = filters
        .until
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()?;
    if let Some(status) = filters.status.as_deref()
        && !STATUSES.contains(&status)
    {
        return Err(QueryError::BadFilter(format!(
            "unknown status `{status}`; expected one of {}",
            STATUSES.join(", ")
        )));
    }
    if let Some(trace) = filters.trace.as_deref()
        && !(trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(QueryError::BadFilter(format!(
            "a trace id is 32 hex characters, found `{trace}`"
        )));
    }
    let limit = filters.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let cursor = filters.cursor.as_deref().map(parse_cursor).transpose()?;
    let since = since.map(|t| Micros(micros(t)));
    let until = until.map(|t| Micros(micros(t)));
    let cursor_at = cursor.map(|(at, _)| Micros(at));
    let cursor_id = cursor.map(|(_, id)| id);
    let fetch = (limit + 1) as i64;
    let trace = filters.trace.as_deref().map(str::to_ascii_lowercase);
    let rows = client
        .query(
            SEARCH,
            &[
                &filters.user,
                &filters.tool,
                &trace,
                &since,
                &until,
                &filters.status,
                &filters.kind,
                &cursor_at,
                &cursor_id,
                &fetch,
            ],
        )
        .await?;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut next_cursor = None;
    for (i, row) in rows.iter().enumerate() {
        if i == limit {
            let last = &rows[i - 1];
            let at: SystemTime = last.get(0);
            let id: Uuid = last.get(1);
            next_cursor = Some(format!("{}_{id}", micros(at)));
            break;
        }
        items.push(row.get::<_, Value>(2));
    }
    Ok(Page { items, next_cursor })
}

/// A one-line summary of an item, for `warden audit search` without `--json`.
pub fn summary_line(item: &Value) -> String {
    let s = |key: &str| item.get(key).and_then(Value::as_str).unwrap_or("-");
    let (what, outcome) = match s("type") {
        "tool_call" => (s("requested_name").to_owned(), s("status").to_owned()),
        "event" => (
            format!("{} {}", s("kind"), s("subject")),
            item.get("decision")
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned(),
        ),
        _ => (
            format!("{}/{}", s("provider"), s("model")),
            s("status").to_owned(),
        ),
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        s("at"),
        s("type"),
        s("user"),
        what,
        outcome,
        s("trace_id")
    )
}

/// `--since` for verify: when the check starts.
pub fn since_for_verify(text: Option<&str>) -> Result<Option<SystemTime>, QueryError> {
    text.map(|t| parse_time(t, SystemTime::now())).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        use std::time::Duration;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            parse_time("1h", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(6_400)
        );
        assert_eq!(
            parse_time("1970-01-01T00:00:10Z", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(10)
        );
        assert!(parse_time("yesterday-ish", now).is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(parse_cursor(&format!("123_{id}")).unwrap(), (123, id));
        assert!(parse_cursor("nope").is_err());
    }
}
