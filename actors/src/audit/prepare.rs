//! A record turned into the row that is stored: redacted ([`super::scrub`]), payloads
//! above `audit.max_payload_bytes` truncated (flagged, with the SHA-256 of the full
//! redacted payload), text made storable (PostgreSQL rejects NUL characters), times in
//! microseconds since the Unix epoch.
//!
//! [`Row`] is owned and serialisable: the same value goes into a COPY batch or into the
//! spool file, so nothing is redacted twice and nothing unredacted touches the disk.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::scrub::Scrubber;
use super::{AiRequestRecord, AuditEvent, AuditRecord, ToolCallRecord};

/// Longest `error` / `reason` text stored (longer ones are cut, marked with `…`).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// A JSON payload as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Valid JSON text: the redacted payload, or (truncated) a JSON string holding the
    /// payload's first `max_payload_bytes` bytes.
    pub json: String,
    pub truncated: bool,
    /// SHA-256 (hex) of the full redacted payload; only when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRow {
    pub id: Uuid,
    pub trace_id: String,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub server_name: String,
    pub tool_name: String,
    pub requested_name: String,
    pub input: Option<Payload>,
    pub output: Option<Payload>,
    pub status: String,
    pub error: Option<String>,
    pub started_at_us: i64,
    pub completed_at_us: i64,
    pub duration_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub id: Uuid,
    pub trace_id: Option<String>,
    pub occurred_at_us: i64,
    pub kind: String,
    pub actor_kind: String,
    pub actor_id: Option<String>,
    pub subject: Option<String>,
    pub decision: Option<String>,
    pub reason: Option<String>,
    /// JSON text of an object (redacted).
    pub attributes: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiRow {
    pub id: Uuid,
    pub trace_id: String,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub session_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub requested_model: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    pub cost_microdollars: Option<i64>,
    pub latency_ms: Option<i64>,
    pub ttft_ms: Option<i64>,
    pub status: String,
    pub error: Option<String>,
    pub streaming: bool,
    pub created_at_us: i64,
}

/// One stored row of any of the three tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Row {
    Tool(ToolRow),
    Event(EventRow),
    Ai(AiRow),
}

impl Row {
    pub fn id(&self) -> Uuid {
        match self {
            Row::Tool(r) => r.id,
            Row::Event(r) => r.id,
            Row::Ai(r) => r.id,
        }
    }

    /// When it happened, in microseconds since the Unix epoch.
    pub fn at_us(&self) -> i64 {
        match self {
            Row::Tool(r) => r.started_at_us,
            Row::Event(r) => r.occurred_at_us,
            Row::Ai(r) => r.created_at_us,
        }
    }
}

/// Microseconds since the Unix epoch (negative before it).
pub fn micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The inverse of [`micros`].
pub fn time_of(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

/// Turns records into rows.
pub struct Preparer<'a> {
    pub scrubber: &'a Scrubber,
    pub max_payload_bytes: usize,
}

impl Preparer<'_> {
    /// The row of a record the caller keeps (one copy of it; the writer's path,
    /// [`Preparer::row_owned`], moves the record's text instead).
    pub fn row(&self, record: &AuditRecord) -> Row {
        self.row_owned(record.clone())
    }

    /// The row of a record the caller gives up: its text moves into the row.
    pub fn row_owned(&self, record: AuditRecord) -> Row {
        match record {
            AuditRecord::ToolCall(r) => Row::Tool(self.tool(*r)),
            AuditRecord::Event(e) => Row::Event(self.event(*e)),
            AuditRecord::AiRequest(a) => Row::Ai(self.ai(*a)),
        }
    }

    fn tool(&self, r: ToolCallRecord) -> ToolRow {
        ToolRow {
            id: r.id,
            input: r.input.map(|v| self.payload_owned(v.into())),
            output: r.output.map(|v| self.payload_owned(v.into())),
            status: r.status.as_str().to_owned(),
            error: r.error.as_deref().map(|e| self.text(e)),
            started_at_us: micros(r.started_at),
            completed_at_us: micros(r.completed_at),
            duration_us: r.duration_us,
            trace_id: clean_owned(r.trace_id),
            session_id: r.session_id.map(clean_owned),
            user_id: r.user_id.map(clean_owned),
            client_id: r.client_id.map(clean_owned),
            server_name: clean_owned(r.server_name),
            tool_name: clean_owned(r.tool_name),
            // The client's own words: redacted and bounded like an error text.
            requested_name: self.text(&r.requested_name),
        }
    }

    fn event(&self, e: AuditEvent) -> EventRow {
        let attributes = if e.attributes.is_null() {
            "{}".to_owned()
        } else {
            let text = serde_json::to_string(&e.attributes).unwrap_or_else(|_| "{}".into());
            match self.scrubber.scrub_json(&text) {
                Cow::Owned(scrubbed) => scrubbed,
                Cow::Borrowed(_) => text,
            }
        };
        EventRow {
            id: e.id,
            trace_id: e.trace_id.map(clean_owned),
            occurred_at_us: micros(e.occurred_at),
            kind: clean(e.kind),
            actor_kind: clean(e.actor_kind),
            actor_id: e.actor_id.map(clean_owned),
            subject: e.subject.as_deref().map(|s| self.text(s)),
            decision: e.decision.map(clean),
            reason: e.reason.as_deref().map(|s| self.text(s)),
            attributes,
        }
    }

    fn ai(&self, a: AiRequestRecord) -> AiRow {
        AiRow {
            id: a.id,
            error: a.error.as_deref().map(|e| self.text(e)),
            status: a.status.as_str().to_owned(),
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens,
            cache_read_tokens: a.cache_read_tokens,
            cache_write_tokens: a.cache_write_tokens,
            cost_microdollars: a.cost_microdollars,
            latency_ms: a.latency_ms,
            ttft_ms: a.ttft_ms,
            streaming: a.streaming,
            created_at_us: micros(a.created_at),
            trace_id: clean_owned(a.trace_id),
            user_id: a.user_id.map(clean_owned),
            client_id: a.client_id.map(clean_owned),
            session_id: a.session_id.map(clean_owned),
            provider: clean_owned(a.provider),
            model: clean_owned(a.model),
            requested_model: a.requested_model.map(clean_owned),
        }
    }

    /// A redacted, storable, bounded JSON payload.
    pub fn payload(&self, json: &str) -> Payload {
        self.payload_owned(Box::from(json))
    }

    /// [`Preparer::payload`] of text the caller gives up: kept as it is when nothing in
    /// it is redacted or cut (the common case), not copied.
    fn payload_owned(&self, json: Box<str>) -> Payload {
        let scrubbed = match self.scrubber.scrub_json(&json) {
            Cow::Owned(scrubbed) => scrubbed,
            Cow::Borrowed(_) => String::from(json),
        };
        if scrubbed.len() <= self.max_payload_bytes {
            return Payload {
                json: scrubbed,
                truncated: false,
                sha256: None,
            };
        }
        let sha256 = hex::encode(Sha256::digest(scrubbed.as_bytes()));
        let prefix = &scrubbed[..floor_char_boundary(&scrubbed, self.max_payload_bytes)];
        Payload {
            json: serde_json::to_string(prefix).unwrap_or_else(|_| "null".into()),
            truncated: true,
            sha256: Some(sha256),
        }
    }

    /// Redacted, storable, bounded free text.
    fn text(&self, text: &str) -> String {
        let scrubbed = self.scrubber.scrub_text(text);
        let mut out = clean(&scrubbed);
        if out.len() > MAX_TEXT_BYTES {
            out.truncate(floor_char_boundary(&out, MAX_TEXT_BYTES));
            out.push('…');
        }
        out
    }
}

/// Text PostgreSQL accepts: NUL characters become U+FFFD.
fn clean(text: &str) -> String {
    clean_owned(text.to_owned())
}

/// [`clean`] of text the caller gives up: moved, not copied, when it holds no NUL.
fn clean_owned(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{fffd}")
    } else {
        text
    }
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ToolStatus;
    use crate::redact::Redacted;
    use serde_json::value::RawValue;

    fn tool(input: &str) -> AuditRecord {
        let now = SystemTime::now();
        AuditRecord::ToolCall(Box::new(ToolCallRecord {
            id: Uuid::now_v7(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            session_id: None,
            user_id: Some("alice".into()),
            client_id: None,
            server_name: "fx".into(),
            tool_name: "echo".into(),
            requested_name: "fx__echo".into(),
            input: Some(RawValue::from_string(input.to_owned()).unwrap()),
            output: None,
            status: ToolStatus::Success,
            error: Some("upstream said tok_supersecret\0".into()),
            started_at: now,
            completed_at: now,
            duration_us: 5,
        }))
    }

    #[test]
    fn large_payloads_are_truncated_with_flag_and_hash_of_the_whole() {
        let scrubber = Scrubber::builtin();
        let preparer = Preparer {
            scrubber: &scrubber,
            max_payload_bytes: 16,
        };
        let input = r#"{"message":"ééééééééééééééé"}"#;
        let Row::Tool(row) = preparer.row(&tool(input)) else {
            panic!("a tool row")
        };
        let payload = row.input.unwrap();
        assert!(payload.truncated);
        assert_eq!(
            payload.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(input.as_bytes())).as_str())
        );
        let prefix: String = serde_json::from_str(&payload.json).unwrap();
        assert!(prefix.len() <= 16 && input.starts_with(&prefix), "{prefix}");
    }

    #[test]
    fn secrets_never_reach_the_row_and_nul_is_replaced() {
        let scrubber = Scrubber::new(&[], &[Redacted::new("tok_supersecret".to_owned())]);
        let preparer = Preparer {
            scrubber: &scrubber,
            max_payload_bytes: 1 << 20,
        };
        let row = preparer.row(&tool(r#"{"message":"my tok_supersecret"}"#));
        let text = serde_json::to_string(&row).unwrap();
        assert!(!text.contains("tok_supersecret"), "{text}");
        let Row::Tool(row) = row else { panic!() };
        assert_eq!(
            row.error.as_deref(),
            Some("upstream said [redacted]\u{fffd}")
        );

        // The name a client asked for is its own text: redacted and bounded too.
        let AuditRecord::ToolCall(mut record) = tool("{}") else {
            panic!()
        };
        record.requested_name = format!("tok_supersecret{}", "x".repeat(MAX_TEXT_BYTES));
        let Row::Tool(row) = preparer.row(&AuditRecord::ToolCall(record)) else {
            panic!()
        };
        assert!(row.requested_name.starts_with("[redacted]xxx"));
        assert!(row.requested_name.ends_with('…'));
        assert!(row.requested_name.len() <= MAX_TEXT_BYTES + '…'.len_utf8());
    }

    #[test]
    fn every_text_of_every_kind_of_row_is_redacted_and_storable() {
        let scrubber = Scrubber::new(&[], &[Redacted::new("tok_supersecret".to_owned())]);
        let preparer = Preparer {
            scrubber: &scrubber,
            max_payload_bytes: 24,
        };
        let mut event = AuditEvent::new("permission.decision", "user");
        event.trace_id = Some("t\0race".into());
        event.actor_id = Some("alice\0".into());
        event.subject = Some("tok_supersecret".into());
        event.decision = Some("deny");
        event.reason = Some("because".into());
        event.attributes = serde_json::json!({"token": "tok_supersecret", "n": 1});
        let now = SystemTime::now();
        let ai = AuditRecord::AiRequest(Box::new(AiRequestRecord {
            id: Uuid::now_v7(),
            trace_id: "trace\0".into(),
            user_id: Some("alice".into()),
            client_id: None,
            session_id: Some("s".into()),
            provider: "openai".into(),
            model: "gpt\0".into(),
            requested_model: Some("fast".into()),
            input_tokens: Some(1),
            output_tokens: None,
            cache_read_tokens: Some(2),
            cache_write_tokens: None,
            cost_microdollars: Some(3),
            latency_ms: Some(4),
            ttft_ms: None,
            status: ToolStatus::Error,
            error: Some("tok_supersecret failed".into()),
            streaming: true,
            created_at: now,
        }));
        for record in [
            tool(r#"{"message":"my tok_supersecret, and more than 24 bytes"}"#),
            tool(r#"{"a":1}"#),
            AuditRecord::Event(Box::new(event)),
            ai,
        ] {
            let text = serde_json::to_string(&preparer.row_owned(record)).unwrap();
            assert!(!text.contains("tok_supersecret"), "{text}");
            assert!(!text.contains("\\u0000"), "{text}");
        }
    }

    #[test]
    fn micros_round_trip() {
        let at = SystemTime::now();
        let us = micros(at);
        let back = time_of(us);
        let diff = at.duration_since(back).unwrap_or_default();
        assert!(diff < Duration::from_micros(1));
        assert_eq!(micros(time_of(-5)), -5);
    }
}
