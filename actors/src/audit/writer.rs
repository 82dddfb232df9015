//! The AuditWriter actor: takes every record from the bounded queue ([`super::Audit`]),
//! redacts and batches them, and writes each batch into PostgreSQL with binary COPY as
//! one hash-chained batch ([`super::store`]). When PostgreSQL is unreachable, batches go
//! to the local spool ([`super::spool`]) and are replayed, in order and idempotently,
//! when it returns.
//!
//! **Owns:** the queue's receiving end, the spool file and its replay position, the batch
//! being formed, the pipeline of batches placed but not yet settled (and the tasks writing
//! them), and a batch it could place nowhere (the spool being full).
//!
//! **Messages:**
//! - `Pump` (self-sent, no reply): take up to `audit.batch_max_rows` records (waiting at
//!   most `audit.batch_max_delay` after the first; at once when a record asks for durable
//!   acknowledgement and the queue is momentarily empty), redact them into a batch, place
//!   it in the pipeline (below), replay a chunk of the spool if it has one and nothing is
//!   in the pipeline, and send itself `Pump` again. Writes that finish while it waits for
//!   records are settled as they finish.
//! - `Flush(reply)`: place everything queued now, wait until every batch in the pipeline
//!   is settled, replay what it can, and reply with the backlog that is left. Used by
//!   tests and before shutdown.
//!
//! **Placing a batch**, in order of preference: PostgreSQL (unless the spool is not empty:
//! new batches queue up behind it, so the trail stays in order) → the spool, fsynced
//! (unless it would pass `audit.spool_max_bytes`) → held in memory. While a batch is held
//! the writer stops taking records: the queue fills, and `audit.on_backlog` decides —
//! `block` callers wait up to `audit.block_timeout`, `fail_closed` callers are refused at
//! once ([`super::Audit::accepting`] turns false) — until PostgreSQL returns, the spool
//! drains and the held batch is written. Records asking for durable acknowledgement are
//! answered once their batch is committed or fsynced; those of a held batch are answered
//! with a refusal (their record is still written later).
//!
//! **The pipeline.** Batches are placed in the order they are formed into a pipeline of
//! at most `audit.write_concurrency`. A batch that may go to PostgreSQL is written by a
//! task of its own, on its own pooled connection ([`store::write_batch`] turns its rows into
//! COPY data before the transaction begins), while the writer forms and redacts the next
//! one: PostgreSQL's index maintenance for one batch runs while another is being copied,
//! and only the seal (the chain's next position, [`super::store`]) takes turns. Which of
//! them commits first is not determined; the chain records the order they were sealed
//! in. Batches are *settled* strictly in the order they were formed — a written batch's
//! durable waiters answered, one PostgreSQL could not take spooled (or held), one it
//! refused sent to the rejects file — and a new batch waits for a place while
//! `write_concurrency` are unsettled (the oldest is waited for, even when a later one has
//! finished). A batch goes to PostgreSQL only when neither the spool nor a batch in the
//! pipeline bound for it is ahead of it; so when one fails, at most the
//! `write_concurrency - 1` batches already in flight beside it can reach PostgreSQL before
//! it, every later one is spooled behind it, and the spool is replayed in formed order.
//! Replay runs in the writer itself, one batch at a time, once the pipeline is empty.
//!
//! A batch PostgreSQL *refuses* (a value it cannot store) is written again with its
//! payloads stored as JSON strings; if that fails too it is appended to
//! `<spool dir>/rejected.jsonl` with an error in the log and
//! `warden_audit_rows_rejected_total` — never dropped silently.
//!
//! **On failure:** the writer is joined to the root supervisor, which escalates: a crash
//! (always a bug) stops Warden, which exits non-zero for its service manager to restart.
//! What was spooled is replayed at the next start; what was only in memory (at most
//! `audit.queue_capacity` records in the queue, the batch being formed and the
//! `audit.write_concurrency` batches in the pipeline) is lost — the reason
//! `audit.ack: durable` exists. On an orderly stop, [`AuditWriter::shutdown`] unlinks the
//! writer from the tree (so the tree's own shutdown does not kill it), and the writer
//! waits for the batches in flight, then drains the queue into PostgreSQL or, past any
//! size limit, the spool before it exits. A write task that panics (a bug) has its batch
//! spooled, then fails the writer like any crash.
//!
//! **Metrics:** `warden_audit_queue_depth`, `warden_audit_spool_bytes` (gauges);
//! `warden_audit_rows_written_total`, `warden_audit_rows_spooled_total`,
//! `warden_audit_rows_replayed_total`, `warden_audit_rows_rejected_total`,
//! `warden_audit_batches_total{outcome}` (counters); `warden_audit_batch_seconds`
//! (histogram: one batch's write, from its task's start to its commit).

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::prepare::{Payload, Preparer, Row};
use super::scrub::ScrubberCell;
use super::spool::{Spool, SpoolError};
use super::store::{self, StoreError};
use super::{AuditQueue, AuditRefused, Backlog, Backlogged, Queued, WriterStatus};

/// Spool entries replayed per `Pump`, so new records keep flowing during a long replay.
const REPLAY_CHUNK: usize = 16;
/// How long an idle `Pump` waits for a first record before it looks at the spool again.
const IDLE_WAIT: Duration = Duration::from_millis(250);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the writer needs, from the profile and the composition root.
pub struct WriterConfig {
    pub pool: Pool,
    /// `<state_dir>/audit`.
    pub spool_dir: PathBuf,
    pub batch_max_rows: usize,
    pub batch_max_delay: Duration,
    /// Batches written at the same time at most (each on its own connection).
    pub write_concurrency: usize,
    pub spool_max_bytes: u64,
    pub max_payload_bytes: usize,
    /// The profile's `audit.on_backlog`: with `FailClosed`, a stalled writer refuses.
    pub backlog: Backlog,
    pub scrubber: ScrubberCell,
    /// Names this process in `audit_batches.writer` (host and pid by default).
    pub writer_name: String,
}

#[derive(Debug, Error)]
pub enum WriterError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot start the audit writer: {0}")]
    Spawn(String),
    #[error("the audit writer did not answer: {0}")]
    Unresponsive(String),
}

pub enum WriterMsg {
    Pump,
    Flush(RpcReplyPort<Backlogged>),
}

/// The running writer.
pub struct AuditWriter {
    actor: ActorRef<WriterMsg>,
    handle: tokio::task::JoinHandle<()>,
    status: Arc<WriterStatus>,
}

impl AuditWriter {
    /// Opens the spool (cutting off a torn tail), then starts the actor, linked to
    /// `parent` when given. Batches left in the spool by an earlier run are replayed
    /// first.
    pub async fn start(
        config: WriterConfig,
        queue: AuditQueue,
        parent: Option<ActorCell>,
    ) -> Result<AuditWriter, WriterError> {
        let (spool, found) = Spool::open(&config.spool_dir)?;
        if found.dropped_bytes > 0 {
            tracing::error!(
                spool = %spool.path().display(),
                dropped_bytes = found.dropped_bytes,
                "the audit spool ended in a torn entry (a batch being written when Warden stopped, never acknowledged); it was cut off"
            );
        }
        if found.entries > 0 {
            tracing::warn!(
                batches = found.entries,
                bytes = found.bytes,
                "the audit spool holds batches from an earlier run; replaying them into PostgreSQL"
            );
        }
        let status = queue.status.clone();
        status.spool_bytes.store(spool.len(), Ordering::Relaxed);
        metrics::gauge!("warden_audit_spool_bytes").set(spool.len() as f64);
        let args = Args {
            config,
            queue,
            spool,
        };
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(None, Writer, args, parent).await,
            None => Actor::spawn(None, Writer, args).await,
        };
        let (actor, handle) = spawned.map_err(|e| WriterError::Spawn(e.to_string()))?;
        Ok(AuditWriter {
            actor,
            handle,
            status,
        })
    }

    /// Writes or spools everything queued so far; returns the backlog left.
    pub async fn flush(&self, timeout: Duration) -> Result<Backlogged, WriterError> {
        ractor::call_t!(self.actor, WriterMsg::Flush, timeout.as_millis() as u64)
            .map_err(|e| WriterError::Unresponsive(e.to_string()))
    }

    pub fn status(&self) -> &Arc<WriterStatus> {
        &self.status
    }

    /// Leaves the supervision tree (so stopping the tree does not kill the writer), then
    /// — once the caller has stopped everything that records — drains the queue and
    /// stops. Call [`AuditWriter::detach`] before stopping the tree and this after.
    pub async fn shutdown(self, timeout: Duration) {
        self.actor.stop(Some("shutdown".into()));
        if tokio::time::timeout(timeout, self.handle).await.is_err() {
            tracing::error!(
                ?timeout,
                "the audit writer did not finish draining in time; records still queued are lost"
            );
        }
    }

    /// Unlinks the writer from its supervisor.
    pub fn detach(&self) {
        let cell = self.actor.get_cell();
        if let Some(parent) = cell.try_get_supervisor() {
            cell.unlink(parent);
        }
    }
}

/// `hostname/pid`, for `audit_batches.writer`.
pub fn default_writer_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".to_owned()
    };
    format!("{host}/{}", std::process::id())
}

struct Args {
    config: WriterConfig,
    queue: AuditQueue,
    spool: Spool,
}

struct Writer;

/// A prepared batch and who waits for it to be durable.
struct Batch {
    /// Shared with the task writing it; kept here to spool the batch should that fail.
    rows: Arc<Vec<Row>>,
    waiters: Vec<oneshot::Sender<Result<(), AuditRefused>>>,
}

/// A batch placed and not yet settled. The pipeline holds them in the order they were
/// formed, and settles them in that order.
struct Slot {
    id: u64,
    batch: Batch,
    stage: Stage,
}

enum Stage {
    /// A task is writing it into PostgreSQL.
    Writing,
    /// The task finished; [`State::settle`] has recorded the outcome.
    Done(Result<(), StoreError>),
    /// Bound for the spool without trying PostgreSQL (the spool, or a batch bound for it,
    /// is ahead of it, or PostgreSQL is down).
    ToSpool,
    /// The task writing it panicked (a bug): the batch is spooled, then the writer fails.
    Crashed(String),
}

/// A finished write task: its slot, when it started, and what it returned.
type Completion = (
    u64,
    Instant,
    Result<Result<store::Written, StoreError>, tokio::task::JoinError>,
);

/// What [`State::next_event`] woke up for.
enum Event {
    Record(Queued),
    /// Every sender is gone.
    Closed,
    Timeout,
    Finished(Completion),
}

impl Batch {
    fn answer(&mut self, result: Result<(), AuditRefused>) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

pub struct State {
    config: WriterConfig,
    receiver: mpsc::Receiver<Queued>,
    refusing: Arc<AtomicBool>,
    status: Arc<WriterStatus>,
    spool: Option<Spool>,
    /// Offset of the next spool entry to replay.
    replay_offset: u64,
    /// A batch that fit nowhere.
    held: Option<Batch>,
    database_down: bool,
    retry_at: Instant,
    backoff: Duration,
    /// Every sender is gone (the process is ending).
    closed: bool,
    /// Batches placed and not yet settled, oldest first; at most `write_concurrency`.
    pipeline: VecDeque<Slot>,
    /// The tasks writing the pipeline's batches into PostgreSQL.
    writing: FuturesUnordered<BoxFuture<'static, Completion>>,
    next_slot: u64,
    /// `config.writer_name`, shared with the write tasks.
    writer_name: Arc<str>,
    /// Set when a write task panicked; the writer fails once its batch is spooled.
    crashed: Option<String>,
}

impl Actor for Writer {
    type Msg = WriterMsg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<WriterMsg>,
        args: Args,
    ) -> Result<State, ActorProcessingErr> {
        let _ = myself.send_message(WriterMsg::Pump);
        let writer_name: Arc<str> = args.config.writer_name.as_str().into();
        Ok(State {
            receiver: args.queue.receiver,
            refusing: args.queue.refusing,
            status: args.queue.status,
            config: args.config,
            spool: Some(args.spool),
            replay_offset: 0,
            held: None,
            database_down: false,
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
            closed: false,
            pipeline: VecDeque::new(),
            writing: FuturesUnordered::new(),
            next_slot: 0,
            writer_name,
            crashed: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WriterMsg>,
        message: WriterMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WriterMsg::Pump => state.pump(&myself).await,
            WriterMsg::Flush(reply) => {
                state.flush(false).await;
                let _ = reply.send(state.backlog());
            }
        }
        match state.crashed.take() {
            // Its batch is spooled; what else is in flight is replayed at the next start.
            Some(reason) => Err(format!("an audit write task failed: {reason}").into()),
            None => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WriterMsg>,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        state.flush(true).await;
        let left = state.held.as_ref().map_or(0, |b| b.rows.len());
        if left > 0 {
            tracing::error!(
                records = left,
                "audit records could be written neither to PostgreSQL nor to the spool and are lost"
            );
        } else if state.spool.as_ref().is_some_and(|s| !s.is_empty()) {
            tracing::warn!(
                bytes = state.spool.as_ref().map_or(0, Spool::len),
                "audit records wait in the spool; they are replayed at the next start"
            );
        }
        Ok(())
    }
}

impl State {
    fn backlog(&self) -> Backlogged {
        Backlogged {
            queued: self.receiver.len(),
            spool_bytes: self.spool.as_ref().map_or(0, Spool::len),
            database_down: self.database_down,
            stalled: self.held.is_some(),
            refusing: self.refusing.load(Ordering::Acquire),
        }
    }

    fn spool_pending(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| !s.is_empty())
    }

    async fn pump(&mut self, myself: &ActorRef<WriterMsg>) {
        metrics::gauge!("warden_audit_queue_depth").set(self.receiver.len() as f64);
        self.reap(false).await;
        if self.held.is_some() {
            self.drain(false).await;
            self.retry_held().await;
            if self.held.is_some() {
                drop(myself.send_after(self.backoff, || WriterMsg::Pump));
                return;
            }
        }
        // Formed and prepared while up to `write_concurrency` others are in PostgreSQL.
        let items = self.collect().await;
        if !items.is_empty() {
            let batch = self.prepare(items);
            self.submit(batch, false).await;
        }
        if self.spool_pending() && self.held.is_none() && self.pipeline.is_empty() {
            self.replay(REPLAY_CHUNK).await;
        }
        if self.closed {
            // No sender is left; only what is in flight and the spool may need work.
            self.drain(false).await;
            if self.spool_pending() {
                drop(myself.send_after(self.backoff, || WriterMsg::Pump));
            }
            return;
        }
        if self.held.is_some() {
            drop(myself.send_after(self.backoff, || WriterMsg::Pump));
        } else {
            let _ = myself.send_message(WriterMsg::Pump);
        }
    }

    /// Up to `batch_max_rows` records: waits up to [`IDLE_WAIT`] for the first, then up to
    /// `batch_max_delay` for more (not at all once a durable record waits and the queue
    /// is empty). Writes that finish meanwhile are settled as they finish.
    async fn collect(&mut self) -> Vec<Queued> {
        let max = self.config.batch_max_rows.max(1);
        let idle = if self.spool_pending() || self.database_down {
            IDLE_WAIT.min(self.retry_at.saturating_duration_since(Instant::now()))
        } else {
            IDLE_WAIT
        };
        let idle_until = tokio::time::Instant::now() + idle;
        let first = loop {
            match self.next_event(idle_until).await {
                Event::Record(item) => break item,
                Event::Closed => {
                    self.closed = true;
                    return Vec::new();
                }
                Event::Timeout => return Vec::new(),
                Event::Finished(done) => {
                    self.record(done);
                    self.settle_ready(false).await;
                }
            }
        };
        let mut durable = first.durable.is_some();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.config.batch_max_delay;
        while batch.len() < max {
            match self.receiver.try_recv() {
                Ok(item) => {
                    durable |= item.durable.is_some();
                    batch.push(item);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) if durable => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            match self.next_event(deadline).await {
                Event::Record(item) => {
                    durable |= item.durable.is_some();
                    batch.push(item);
                }
                Event::Closed => {
                    self.closed = true;
                    break;
                }
                Event::Timeout => break,
                Event::Finished(done) => {
                    self.record(done);
                    self.settle_ready(false).await;
                }
            }
        }
        batch
    }

    /// The next record, or a write that finished, whichever comes first, until
    /// `deadline`.
    ///
    /// # Cancel safety
    /// Both branches are cancel safe (`mpsc::Receiver::recv`,
    /// `FuturesUnordered::next`): the one that loses keeps its record or its outcome.
    async fn next_event(&mut self, deadline: tokio::time::Instant) -> Event {
        tokio::select! {
            biased;
            done = self.writing.next(), if !self.writing.is_empty() => match done {
                Some(done) => Event::Finished(done),
                None => Event::Timeout,
            },
            item = tokio::time::timeout_at(deadline, self.receiver.recv()) => match item {
                Ok(Some(item)) => Event::Record(item),
                Ok(None) => Event::Closed,
                Err(_) => Event::Timeout,
            },
        }
    }

    fn prepare(&self, items: Vec<Queued>) -> Batch {
        let scrubber = self.config.scrubber.load();
        let preparer = Preparer {
            scrubber: &scrubber,
            max_payload_bytes: self.config.max_payload_bytes,
        };
        let mut rows = Vec::with_capacity(items.len());
        let mut waiters = Vec::new();
        for item in items {
            if let Some(waiter) = item.durable {
                waiters.push(waiter);
            }
            rows.push(preparer.row_owned(item.record));
        }
        Batch {
            rows: Arc::new(rows),
            waiters,
        }
    }

    /// Up to `batch_max_rows` records already queued, without waiting.
    fn take_queued(&mut self) -> Vec<Queued> {
        let max = self.config.batch_max_rows.max(1);
        let mut items = Vec::with_capacity(max.min(self.receiver.len()));
        while items.len() < max {
            match self.receiver.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        items
    }

    /// Batches in the pipeline at most: `write_concurrency`.
    fn window(&self) -> usize {
        self.config.write_concurrency.max(1)
    }

    /// Whether a new batch may go to PostgreSQL: not while the spool, or a batch in the
    /// pipeline bound for it, is ahead of it (the trail stays in order), nor while
    /// PostgreSQL is down and its retry is not due.
    fn to_database(&self) -> bool {
        let spool_ahead = self.spool_pending()
            || self.pipeline.iter().any(|slot| {
                matches!(
                    slot.stage,
                    Stage::ToSpool
                        | Stage::Crashed(_)
                        | Stage::Done(Err(StoreError::Unavailable(_)))
                )
            });
        !spool_ahead && (!self.database_down || Instant::now() >= self.retry_at)
    }

    /// Places a batch behind those in the pipeline: waits for room (the oldest to settle
    /// while `write_concurrency` are unsettled), then starts a task writing it into
    /// PostgreSQL — or, when it may not go there, marks it for the spool — and settles
    /// what is ready. `unbounded` (shutdown) ignores the spool's size limit rather than
    /// lose a batch.
    async fn submit(&mut self, batch: Batch, unbounded: bool) {
        while self.pipeline.len() >= self.window() {
            self.complete_one(unbounded).await;
        }
        // A write that failed meanwhile must be seen before the next batch is sent.
        self.reap(unbounded).await;
        let id = self.next_slot;
        self.next_slot += 1;
        let stage = if self.to_database() {
            self.start_write(id, batch.rows.clone());
            Stage::Writing
        } else {
            Stage::ToSpool
        };
        self.pipeline.push_back(Slot { id, batch, stage });
        self.settle_ready(unbounded).await;
    }

    /// A task writing `rows` into PostgreSQL, on its own pooled connection.
    fn start_write(&mut self, id: u64, rows: Arc<Vec<Row>>) {
        let pool = self.config.pool.clone();
        let writer = self.writer_name.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move { attempt(&pool, &writer, &rows, false).await });
        self.writing
            .push(task.map(move |result| (id, started, result)).boxed());
    }

    /// Books a finished write: metrics and the database's state at once; the batch's
    /// fate (answered, spooled, rejected) in [`State::settle_ready`], in formed order.
    fn record(&mut self, (id, started, result): Completion) {
        let stage = match result {
            Ok(outcome) => Stage::Done(self.settle(outcome, started, false)),
            Err(error) => {
                tracing::error!(%error, "an audit write task failed; its batch is spooled");
                Stage::Crashed(error.to_string())
            }
        };
        if let Some(slot) = self.pipeline.iter_mut().find(|slot| slot.id == id) {
            slot.stage = stage;
        }
    }

    /// Settles the pipeline's batches, oldest first, while their outcome is known: a
    /// written batch's waiters are answered; one PostgreSQL could not take is spooled
    /// (or held); one it refused even degraded goes to the rejects file.
    async fn settle_ready(&mut self, unbounded: bool) {
        while self
            .pipeline
            .front()
            .is_some_and(|slot| !matches!(slot.stage, Stage::Writing))
        {
            let Some(Slot {
                mut batch, stage, ..
            }) = self.pipeline.pop_front()
            else {
                break;
            };
            match stage {
                Stage::Done(Ok(())) => batch.answer(Ok(())),
                Stage::Done(Err(StoreError::Unavailable(_))) | Stage::ToSpool | Stage::Writing => {
                    self.spool_or_hold(batch, unbounded).await
                }
                Stage::Crashed(reason) => {
                    self.spool_or_hold(batch, unbounded).await;
                    self.crashed.get_or_insert(reason);
                }
                Stage::Done(Err(error)) => {
                    // Rejected even after degrading: kept in the rejects file.
                    let result = self.reject(&batch.rows, &error.to_string());
                    batch.answer(result);
                }
            }
        }
    }

    /// Outcomes already in, without waiting.
    async fn reap(&mut self, unbounded: bool) {
        while let Some(Some(done)) = self.writing.next().now_or_never() {
            self.record(done);
        }
        self.settle_ready(unbounded).await;
    }

    /// Waits for one write to finish (if any is running) and settles what is ready.
    async fn complete_one(&mut self, unbounded: bool) {
        if let Some(done) = self.writing.next().await {
            self.record(done);
        }
        self.settle_ready(unbounded).await;
    }

    /// Waits until everything in the pipeline is settled.
    async fn drain(&mut self, unbounded: bool) {
        while !self.pipeline.is_empty() {
            self.complete_one(unbounded).await;
        }
    }

    /// Appends `rows` to the spool as one entry (fsynced), unless that would pass `max`.
    async fn append_to_spool(&mut self, rows: &[Row], max: Option<u64>) -> Result<(), SpoolError> {
        let entry = Spool::encode(rows)?;
        self.with_spool(move |spool| spool.append(&entry, max))
            .await?;
        metrics::counter!("warden_audit_rows_spooled_total").increment(rows.len() as u64);
        metrics::counter!("warden_audit_batches_total", "outcome" => "spooled").increment(1);
        self.update_spool_gauge();
        Ok(())
    }

    async fn spool_or_hold(&mut self, mut batch: Batch, unbounded: bool) {
        let max = (!unbounded).then_some(self.config.spool_max_bytes);
        match self.append_to_spool(&batch.rows, max).await {
            Ok(()) => batch.answer(Ok(())),
            Err(error) => {
                if !matches!(error, SpoolError::Full { .. }) {
                    tracing::error!(%error, "cannot spool audit records");
                } else if self.held.is_none() {
                    tracing::error!(%error, "the audit trail is backlogged: PostgreSQL is unreachable and the spool is full");
                }
                batch.answer(Err(AuditRefused::NotDurable(error.to_string())));
                self.hold(batch);
            }
        }
    }

    /// Keeps a batch that fit nowhere; a second one joins the first (its waiters were
    /// already refused).
    fn hold(&mut self, batch: Batch) {
        match &mut self.held {
            Some(held) => Arc::make_mut(&mut held.rows).extend(Arc::unwrap_or_clone(batch.rows)),
            None => self.held = Some(batch),
        }
        self.status.stalled.store(true, Ordering::Relaxed);
        if self.config.backlog == Backlog::FailClosed {
            self.refusing.store(true, Ordering::Release);
        }
    }

    fn unhold(&mut self) {
        self.status.stalled.store(false, Ordering::Relaxed);
        if self.refusing.swap(false, Ordering::AcqRel) {
            tracing::info!("the audit backlog drained; governed calls are accepted again");
        }
    }

    async fn retry_held(&mut self) {
        if self.spool_pending() {
            self.replay(usize::MAX).await;
        }
        if self.spool_pending() {
            // Still behind the spool: PostgreSQL is down; maybe the spool has room now.
            if let Some(batch) = self.held.take() {
                let max = Some(self.config.spool_max_bytes);
                match self.append_to_spool(&batch.rows, max).await {
                    Ok(()) => self.unhold(),
                    // Its waiters were answered when it was held.
                    Err(_) => self.held = Some(batch),
                }
            }
            return;
        }
        if let Some(batch) = self.held.take() {
            if self.database_down && Instant::now() < self.retry_at {
                self.held = Some(batch);
                return;
            }
            match self.write(&batch.rows, false).await {
                Ok(()) => self.unhold(),
                Err(StoreError::Unavailable(_)) => self.held = Some(batch),
                Err(error) => {
                    let _ = self.reject(&batch.rows, &error.to_string());
                    self.unhold();
                }
            }
        }
    }

    /// Writes rows as one batch, and records the outcome.
    async fn write(&mut self, rows: &[Row], replayed: bool) -> Result<(), StoreError> {
        let started = Instant::now();
        let outcome = attempt(&self.config.pool, &self.writer_name, rows, replayed).await;
        self.settle(outcome, started, replayed)
    }

    /// Metrics and the database's state from one attempt. `Err(Unavailable)` leaves the
    /// database marked down; any other error means the rows could not be stored at all.
    fn settle(
        &mut self,
        result: Result<store::Written, StoreError>,
        started: Instant,
        replayed: bool,
    ) -> Result<(), StoreError> {
        match result {
            Ok(written) => {
                metrics::histogram!("warden_audit_batch_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("warden_audit_rows_written_total").increment(written.rows as u64);
                metrics::counter!("warden_audit_batches_total", "outcome" => "written")
                    .increment(1);
                if replayed {
                    metrics::counter!("warden_audit_rows_replayed_total")
                        .increment(written.rows as u64);
                }
                self.status
                    .rows_written
                    .fetch_add(written.rows as u64, Ordering::Relaxed);
                if self.database_down {
                    tracing::info!("PostgreSQL is reachable again; audit batches are written");
                }
                self.database_down = false;
                self.status.database_down.store(false, Ordering::Relaxed);
                self.backoff = BACKOFF_MIN;
                Ok(())
            }
            Err(StoreError::Unavailable(reason)) => {
                if !self.database_down {
                    tracing::warn!(%reason, "cannot write audit records to PostgreSQL; spooling them locally");
                }
                self.database_down = true;
                self.status.database_down.store(true, Ordering::Relaxed);
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Err(StoreError::Unavailable(reason))
            }
            Err(other) => Err(other),
        }
    }

    /// Replays up to `limit` spool entries; clears the spool once all are in.
    async fn replay(&mut self, limit: usize) {
        if self.database_down && Instant::now() < self.retry_at {
            return;
        }
        let mut done = 0;
        while done < limit {
            let offset = self.replay_offset;
            let read = self.with_spool(move |spool| spool.read(offset)).await;
            let (rows, next) = match read {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(%error, "cannot read the audit spool; it is kept for the next start");
                    return;
                }
            };
            match self.write(&rows, true).await {
                Ok(()) => {}
                Err(StoreError::Unavailable(_)) => return,
                Err(error) => {
                    let _ = self.reject(&rows, &error.to_string());
                }
            }
            self.replay_offset = next;
            done += 1;
        }
        let at_end = self
            .spool
            .as_ref()
            .is_some_and(|s| self.replay_offset >= s.len());
        if at_end {
            match self.with_spool(|spool| spool.clear()).await {
                Ok(()) => {
                    self.replay_offset = 0;
                    tracing::info!("the audit spool is replayed into PostgreSQL and emptied");
                }
                Err(error) => tracing::error!(%error, "cannot empty the replayed audit spool"),
            }
            self.update_spool_gauge();
        }
    }

    /// Everything queued, placed and settled, then the spool. While a batch is held,
    /// records stay queued; at shutdown the held batch and the queue go to the spool with
    /// no size limit rather than be lost.
    async fn flush(&mut self, shutting_down: bool) {
        if self.held.is_some() {
            self.drain(shutting_down).await;
            self.retry_held().await;
        }
        if shutting_down && let Some(batch) = self.held.take() {
            self.spool_or_hold(batch, true).await;
            if self.held.is_none() {
                self.unhold();
            }
        }
        while self.held.is_none() {
            let items = self.take_queued();
            if items.is_empty() {
                break;
            }
            let batch = self.prepare(items);
            self.submit(batch, shutting_down).await;
        }
        self.drain(shutting_down).await;
        if self.spool_pending() && self.held.is_none() {
            self.replay(usize::MAX).await;
        }
    }

    /// Keeps rows PostgreSQL will not store in `rejected.jsonl` beside the spool.
    fn reject(&self, rows: &[Row], reason: &str) -> Result<(), AuditRefused> {
        let path = self.config.spool_dir.join("rejected.jsonl");
        tracing::error!(
            %reason,
            rows = rows.len(),
            file = %path.display(),
            "PostgreSQL refused audit rows even with their payloads as strings; they are kept in the rejects file"
        );
        metrics::counter!("warden_audit_rows_rejected_total").increment(rows.len() as u64);
        let mut text = String::new();
        for row in rows {
            if let Ok(line) = serde_json::to_string(row) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_data()
            })
            .map_err(|e| AuditRefused::NotDurable(format!("{}: {e}", path.display())))
    }

    fn update_spool_gauge(&self) {
        let len = self.spool.as_ref().map_or(0, Spool::len);
        self.status.spool_bytes.store(len, Ordering::Relaxed);
        metrics::gauge!("warden_audit_spool_bytes").set(len as f64);
    }

    /// Runs a spool operation off the async workers (it fsyncs).
    async fn with_spool<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let mut spool = match self.spool.take() {
            Some(spool) => spool,
            None => Spool::open(&self.config.spool_dir)?.0,
        };
        match tokio::task::spawn_blocking(move || {
            let result = f(&mut spool);
            (spool, result)
        })
        .await
        {
            Ok((spool, result)) => {
                self.spool = Some(spool);
                result
            }
            Err(join) => Err(SpoolError::Write {
                path: self.config.spool_dir.clone(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }
}

/// Writes rows as one batch, degrading payloads once if PostgreSQL refuses them. Touches
/// no state of the writer, so several run at once (each in its own task).
async fn attempt(
    pool: &Pool,
    writer: &str,
    rows: &[Row],
    replayed: bool,
) -> Result<store::Written, StoreError> {
    let mut result = write_once(pool, writer, rows, replayed, replayed).await;
    if matches!(result, Err(StoreError::Duplicate)) {
        result = write_once(pool, writer, rows, replayed, true).await;
    }
    if let Err(StoreError::Rejected(reason)) = &result {
        tracing::warn!(%reason, "PostgreSQL refused an audit batch; storing its payloads as JSON strings");
        let degraded: Vec<Row> = rows.iter().map(degrade).collect();
        result = write_once(pool, writer, &degraded, replayed, true).await;
    }
    result
}

async fn write_once(
    pool: &Pool,
    writer: &str,
    rows: &[Row],
    replayed: bool,
    idempotent: bool,
) -> Result<store::Written, StoreError> {
    let mut client = pool.get().await?;
    let result = store::write_batch(&mut client, rows, writer, replayed, idempotent).await;
    if matches!(result, Err(StoreError::Unavailable(_))) {
        // The connection may be broken; do not hand it to anyone else.
        let _ = deadpool_postgres::Object::take(client);
    }
    result
}

/// The row with its JSON payloads stored as JSON strings of their text, for a batch
/// PostgreSQL refused (a value a column could not take).
fn degrade(row: &Row) -> Row {
    let stringify = |p: &Option<Payload>| {
        p.as_ref().map(|p| Payload {
            json: serde_json::to_string(&p.json).unwrap_or_else(|_| "null".into()),
            truncated: p.truncated,
            sha256: p.sha256.clone(),
        })
    };
    match row {
        Row::Tool(t) => {
            let mut t = t.clone();
            t.input = stringify(&t.input);
            t.output = stringify(&t.output);
            Row::Tool(t)
        }
        Row::Event(e) => {
            let mut e = e.clone();
            e.attributes = serde_json::json!({ "unstorable": e.attributes }).to_string();
            Row::Event(e)
        }
        Row::Ai(a) => Row::Ai(a.clone()),
    }
}
