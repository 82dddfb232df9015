//! Audit records and the queue every surface writes them into.
//!
//! This module is the contract between the call paths (gateway, identity, policy, AI
//! proxy, lifecycle) and the AuditWriter actor: the row types, and [`Audit`], the handle
//! that enqueues them. Enqueueing never waits on PostgreSQL. When the queue is full the
//! profile's `audit.on_backlog` decides: `block` (wait up to a timeout) or `fail_closed`
//! (refuse, so the governed call is refused) — a record is never dropped silently.
//!
//! The rest of the trail lives beside it:
//! - [`scrub`]: redaction of secret values and credential patterns;
//! - [`prepare`]: a record turned into the row that is stored (redacted, truncated);
//! - [`store`]: binary COPY into PostgreSQL and the hash chain over batches;
//! - [`spool`]: the append-only local file batches go to while PostgreSQL is down;
//! - [`writer`]: the AuditWriter actor that drives all of the above.

pub mod prepare;
pub mod scrub;
pub mod spool;
pub mod store;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Outcome of a tool call, as stored in `mcp_tool_executions.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    Success,
    /// The tool ran and reported failure (`isError: true`), or the upstream answered
    /// with a JSON-RPC error.
    Error,
    Denied,
    Timeout,
    Cancelled,
    RateLimited,
}

impl ToolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolStatus::Success => "success",
            ToolStatus::Error => "error",
            ToolStatus::Denied => "denied",
            ToolStatus::Timeout => "timeout",
            ToolStatus::Cancelled => "cancelled",
            ToolStatus::RateLimited => "rate_limited",
        }
    }
}

/// One row of `mcp_tool_executions`.
#[derive(Clone, Debug)]
pub struct ToolCallRecord {
    /// UUIDv7: time-ordered, unique, the idempotency key for spool replay.
    pub id: Uuid,
    /// 32 lowercase hex characters.
    pub trace_id: String,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub server_name: String,
    /// The upstream's own tool name.
    pub tool_name: String,
    /// The name the client called (`server__tool` on `/mcp`).
    pub requested_name: String,
    pub input: Option<Box<RawValue>>,
    pub output: Option<Box<RawValue>>,
    pub status: ToolStatus,
    pub error: Option<String>,
    pub started_at: SystemTime,
    pub completed_at: SystemTime,
    pub duration_us: i64,
}

/// One row of `audit_events`: permission decisions, logins, token grants, lifecycle,
/// config and secret changes, hook outcomes, rate-limit rejections.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub id: Uuid,
    pub trace_id: Option<String>,
    pub occurred_at: SystemTime,
    /// Dotted kind: `permission.decision`, `auth.login`, `server.lifecycle`, …
    pub kind: &'static str,
    /// `user`, `client`, `system`.
    pub actor_kind: &'static str,
    pub actor_id: Option<String>,
    /// What the event is about (a tool, a server, a secret's name, a token id).
    pub subject: Option<String>,
    /// `allow`, `deny`, or None where no decision applies.
    pub decision: Option<&'static str>,
    pub reason: Option<String>,
    pub attributes: Value,
}

impl AuditEvent {
    pub fn new(kind: &'static str, actor_kind: &'static str) -> Self {
        AuditEvent {
            id: Uuid::now_v7(),
            trace_id: None,
            occurred_at: SystemTime::now(),
            kind,
            actor_kind,
            actor_id: None,
            subject: None,
            decision: None,
            reason: None,
            attributes: Value::Null,
        }
    }
}

/// One row of `ai_requests`: a model request through the AI gateway.
#[derive(Clone, Debug)]
pub struct AiRequestRecord {
    pub id: Uuid,
    pub trace_id: String,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub session_id: Option<String>,
    /// `openai`, `anthropic`, …
    pub provider: String,
    /// The model that answered.
    pub model: String,
    /// The model the client asked for, when an alias or route changed it.
    pub requested_model: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    pub cost_microdollars: Option<i64>,
    pub latency_ms: Option<i64>,
    /// Time to first token, for streamed answers.
    pub ttft_ms: Option<i64>,
    /// Same vocabulary as tool calls (`success`, `error`, `denied`, …).
    pub status: ToolStatus,
    pub error: Option<String>,
    pub streaming: bool,
    pub created_at: SystemTime,
}

/// Anything the audit trail stores.
#[derive(Clone, Debug)]
pub enum AuditRecord {
    ToolCall(Box<ToolCallRecord>),
    Event(Box<AuditEvent>),
    AiRequest(Box<AiRequestRecord>),
}

/// What the writer reports about its backlog, shared lock-free with every [`Audit`]
/// handle (for `/readyz` and metrics).
#[derive(Debug, Default)]
pub struct WriterStatus {
    /// Bytes in the local spool (batches waiting for PostgreSQL).
    pub spool_bytes: AtomicU64,
    /// True while the last attempt to reach PostgreSQL failed.
    pub database_down: AtomicBool,
    /// True while the writer holds a batch it can place neither in PostgreSQL nor in the
    /// spool (the spool is full): `block` callers wait, `fail_closed` callers are refused.
    pub stalled: AtomicBool,
    /// Rows committed to PostgreSQL by this process (directly or from the spool).
    pub rows_written: AtomicU64,
}

/// A snapshot of the trail's backlog.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Backlogged {
    /// Records queued in memory, not yet taken by the writer.
    pub queued: usize,
    pub spool_bytes: u64,
    pub database_down: bool,
    /// The spool is full and the writer cannot take more.
    pub stalled: bool,
    /// Governed calls are being refused (`fail_closed`).
    pub refusing: bool,
}

impl Backlogged {
    /// True when anything waits for PostgreSQL.
    pub fn any(&self) -> bool {
        self.spool_bytes > 0 || self.database_down || self.stalled || self.refusing
    }
}

/// Why a record was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuditRefused {
    #[error(
        "the audit trail is backlogged (queue and spool full); governed calls are refused until it drains"
    )]
    Backlogged,
    #[error("the audit writer is not running")]
    Stopped,
    #[error("the audit record could not be made durable: {0}")]
    NotDurable(String),
}

/// What happens when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backlog {
    /// Callers wait up to this long for room, then are refused.
    Block(Duration),
    /// Refuse at once.
    FailClosed,
}

/// A queued item: the record, and for durable acknowledgement a reply once the record
/// is in PostgreSQL or the fsynced spool.
pub struct Queued {
    pub record: AuditRecord,
    pub durable: Option<oneshot::Sender<Result<(), AuditRefused>>>,
}

/// The handle every surface holds. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    queue: mpsc::Sender<Queued>,
    backlog: Backlog,
    /// Set by the writer while its spool is full (fail_closed refuses before dispatch).
    refusing: Arc<AtomicBool>,
    status: Arc<WriterStatus>,
}

/// The writer's end of the queue.
pub struct AuditQueue {
    pub receiver: mpsc::Receiver<Queued>,
    pub refusing: Arc<AtomicBool>,
    pub status: Arc<WriterStatus>,
}

impl Audit {
    /// A bounded queue of `capacity` records.
    pub fn channel(capacity: usize, backlog: Backlog) -> (Audit, AuditQueue) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let refusing = Arc::new(AtomicBool::new(false));
        let status = Arc::new(WriterStatus::default());
        (
            Audit {
                queue,
                backlog,
                refusing: refusing.clone(),
                status: status.clone(),
            },
            AuditQueue {
                receiver,
                refusing,
                status,
            },
        )
    }

    /// The backlog as the writer last reported it.
    pub fn backlog(&self) -> Backlogged {
        Backlogged {
            queued: self.queued(),
            spool_bytes: self.status.spool_bytes.load(Ordering::Relaxed),
            database_down: self.status.database_down.load(Ordering::Relaxed),
            stalled: self.status.stalled.load(Ordering::Relaxed),
            refusing: !self.accepting(),
        }
    }

    /// Rows this process has committed to PostgreSQL so far.
    pub fn rows_written(&self) -> u64 {
        self.status.rows_written.load(Ordering::Relaxed)
    }

    /// Whether a governed call may start: false while the trail refuses records
    /// (`fail_closed` with a full spool).
    pub fn accepting(&self) -> bool {
        !self.refusing.load(Ordering::Acquire)
    }

    /// Enqueues a record. Returns at once unless the queue is full and the backlog mode
    /// is `block`.
    ///
    /// # Cancel safety
    /// Cancel safe: a record is either enqueued or handed back as an error; dropping the
    /// future while blocked loses the record only from this caller's point of view (the
    /// call it describes was not completed either).
    pub async fn record(&self, record: AuditRecord) -> Result<(), AuditRefused> {
        if !self.accepting() {
            return Err(AuditRefused::Backlogged);
        }
        self.enqueue(Queued {
            record,
            durable: None,
        })
        .await
    }

    /// Enqueues the record of something that already happened (a tool call's outcome).
    /// Unlike [`Audit::record`] it is not refused because the trail is refusing new
    /// governed calls (`fail_closed`): the call it describes was admitted and ran, so its
    /// row must be kept. It waits for room in the queue up to the `block` timeout (five
    /// seconds under `fail_closed`) and is refused only when there is none.
    ///
    /// # Cancel safety
    /// As [`Audit::record`].
    pub async fn record_completed(&self, record: AuditRecord) -> Result<(), AuditRefused> {
        let item = Queued {
            record,
            durable: None,
        };
        match self.queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditRefused::Stopped),
            Err(mpsc::error::TrySendError::Full(item)) => {
                metrics::counter!("warden_audit_queue_full_total").increment(1);
                let wait = match self.backlog {
                    Backlog::Block(wait) => wait,
                    Backlog::FailClosed => Duration::from_secs(5),
                };
                match tokio::time::timeout(wait, self.queue.send(item)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(AuditRefused::Stopped),
                    Err(_) => Err(AuditRefused::Backlogged),
                }
            }
        }
    }

    /// Enqueues a record and waits until it is durable (`audit.ack: durable`): committed
    /// to PostgreSQL or fsynced in the local spool.
    ///
    /// # Cancel safety
    /// Cancelling after the record was enqueued does not withdraw it: it is still written;
    /// only the acknowledgement is lost.
    pub async fn record_durable(&self, record: AuditRecord) -> Result<(), AuditRefused> {
        if !self.accepting() {
            return Err(AuditRefused::Backlogged);
        }
        let (reply, done) = oneshot::channel();
        self.enqueue(Queued {
            record,
            durable: Some(reply),
        })
        .await?;
        done.await.unwrap_or(Err(AuditRefused::Stopped))
    }

    async fn enqueue(&self, item: Queued) -> Result<(), AuditRefused> {
        match self.queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditRefused::Stopped),
            Err(mpsc::error::TrySendError::Full(item)) => {
                metrics::counter!("warden_audit_queue_full_total").increment(1);
                match self.backlog {
                    Backlog::FailClosed => Err(AuditRefused::Backlogged),
                    Backlog::Block(wait) => {
                        match tokio::time::timeout(wait, self.queue.send(item)).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(_)) => Err(AuditRefused::Stopped),
                            Err(_) => Err(AuditRefused::Backlogged),
                        }
                    }
                }
            }
        }
    }

    /// Records queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}
