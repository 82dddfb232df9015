//! Client sessions (protocol revisions with the `initialize` handshake) and their actors.
//!
//! **Session actor** — one per session. **Owns:** the session's lifecycle (ending it
//! cancels its in-flight calls and closes its streams). **Messages:** `Notify(json)` —
//! push a notification to the session's GET stream; `End(reason)`. **On failure:** the
//! session is dropped from the table; the client gets 404 on its next request and
//! initialises again, as the protocol prescribes.
//!
//! **SessionsSupervisor** — creates session actors, enforces `sessions.max_total` and
//! `sessions.max_per_principal`, and ends sessions idle for `sessions.idle_timeout`
//! (swept once a second). **Messages:** `Create`, `SetLimits`, `Sweep`. **On failure:**
//! the root escalates.
//!
//! The call path reads [`Session`] state through the shared [`Sessions`] table (one read
//! lock), never through a mailbox.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::RngCore;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warden_actors::jsonrpc::RpcError;

use crate::auth::Principal;

/// How many recent GET-stream events are kept for `Last-Event-ID` resumption.
pub const REPLAY_EVENTS: usize = 256;

/// One connected client session.
pub struct Session {
    pub id: String,
    pub principal: Arc<Principal>,
    pub protocol_version: String,
    pub client_info: Value,
    pub client_capabilities: Value,
    /// `Some(server)` for sessions opened on `/mcp/{server}`.
    pub scope: Option<String>,
    pub created_at: SystemTime,
    last_active: AtomicU64,
    /// Cancelled when the session ends.
    pub closed: CancellationToken,
    stream: Mutex<StreamState>,
    /// Client request id (as JSON text) → its cancellation token.
    inflight: Mutex<HashMap<String, CancellationToken>>,
    /// Server→client requests forwarded on a POST stream, awaiting the client's answer.
    pending_answers: Mutex<HashMap<String, oneshot::Sender<Result<Value, RpcError>>>>,
    next_request_id: AtomicU64,
    pub log_level: Mutex<Option<String>>,
}

#[derive(Default)]
struct StreamState {
    sender: Option<mpsc::Sender<(u64, Arc<str>)>>,
    history: VecDeque<(u64, Arc<str>)>,
    next_event_id: u64,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single map/queue operation; a panic cannot leave
    // the data half-updated, so a poisoned lock is still sound to use.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    fn new(
        principal: Arc<Principal>,
        protocol_version: String,
        client_info: Value,
        client_capabilities: Value,
        scope: Option<String>,
    ) -> Self {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        Session {
            id: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            principal,
            protocol_version,
            client_info,
            client_capabilities,
            scope,
            created_at: SystemTime::now(),
            last_active: AtomicU64::new(now_millis()),
            closed: CancellationToken::new(),
            stream: Mutex::new(StreamState::default()),
            inflight: Mutex::new(HashMap::new()),
            pending_answers: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            log_level: Mutex::new(None),
        }
    }

    pub fn touch(&self) {
        self.last_active.store(now_millis(), Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_millis().saturating_sub(self.last_active.load(Ordering::Relaxed)))
    }

    /// Whether the client declared a capability (`sampling`, `elicitation`, `roots`).
    pub fn client_supports(&self, capability: &str) -> bool {
        self.client_capabilities.get(capability).is_some()
    }

    /// Registers a client request so `notifications/cancelled` can reach it.
    pub fn begin_request(&self, id: &str) -> CancellationToken {
        let token = self.closed.child_token();
        lock(&self.inflight).insert(id.to_owned(), token.clone());
        token
    }

    pub fn end_request(&self, id: &str) {
        lock(&self.inflight).remove(id);
    }

    /// Cancels the client's request `id` (from `notifications/cancelled`).
    pub fn cancel_request(&self, id: &str) -> bool {
        match lock(&self.inflight).remove(id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Allocates an id for a server→client request and remembers where its answer goes.
    pub fn expect_answer(&self, reply: oneshot::Sender<Result<Value, RpcError>>) -> String {
        let id = format!(
            "warden-{}",
            self.next_request_id.fetch_add(1, Ordering::Relaxed)
        );
        lock(&self.pending_answers).insert(id.clone(), reply);
        id
    }

    /// Routes a client's answer (a JSON-RPC response it POSTed). False if nothing waits.
    pub fn deliver_answer(&self, id: &str, answer: Result<Value, RpcError>) -> bool {
        match lock(&self.pending_answers).remove(id) {
            Some(reply) => reply.send(answer).is_ok(),
            None => false,
        }
    }

    /// Opens (or replaces) the GET stream; replays events after `last_event_id`.
    pub fn open_stream(&self, last_event_id: Option<u64>) -> mpsc::Receiver<(u64, Arc<str>)> {
        let (sender, receiver) = mpsc::channel(256);
        let mut stream = lock(&self.stream);
        if let Some(after) = last_event_id {
            for (id, data) in stream.history.iter().filter(|(id, _)| *id > after) {
                let _ = sender.try_send((*id, data.clone()));
            }
        }
        stream.sender = Some(sender);
        receiver
    }

    /// Queues a notification for the GET stream (kept for replay even with no stream
    /// open). Returns false if an open stream is full and the event was not delivered
    /// now (it remains replayable).
    pub fn push(&self, data: Arc<str>) -> bool {
        let mut stream = lock(&self.stream);
        stream.next_event_id += 1;
        let id = stream.next_event_id;
        if stream.history.len() == REPLAY_EVENTS {
            stream.history.pop_front();
        }
        stream.history.push_back((id, data.clone()));
        match &stream.sender {
            Some(sender) => sender.try_send((id, data)).is_ok(),
            None => true,
        }
    }

    fn end(&self) {
        self.closed.cancel();
        lock(&self.stream).sender = None;
        for (_, reply) in lock(&self.pending_answers).drain() {
            let _ = reply.send(Err(RpcError::new(
                warden_actors::jsonrpc::code::CANCELLED,
                "the session ended",
            )));
        }
    }
}

type SessionEntry = (Arc<Session>, ActorRef<SessionMsg>);

/// The shared table of live sessions.
#[derive(Default)]
pub struct Sessions {
    map: RwLock<HashMap<String, SessionEntry>>,
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(s, _)| s.clone())
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live session (for fan-out of list changes).
    pub fn all(&self) -> Vec<SessionEntry> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn count_for(&self, subject: &str) -> usize {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(s, _)| s.principal.subject == subject)
            .count()
    }

    fn insert(&self, session: Arc<Session>, actor: ActorRef<SessionMsg>) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.id.clone(), (session, actor));
    }

    fn remove(&self, id: &str) -> Option<SessionEntry> {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }
}

// ---------------------------------------------------------------------------------------
// Session actor
// ---------------------------------------------------------------------------------------

pub enum SessionMsg {
    Notify(Arc<str>),
    End(String),
}

/// Called once when a session ends (runs `SessionEnd` hooks, records the event).
pub type OnEnd = Arc<std::sync::OnceLock<Box<dyn Fn(Arc<Session>, String) + Send + Sync>>>;

struct SessionActor {
    on_end: OnEnd,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = Arc<Session>;
    type Arguments = Arc<Session>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        session: Arc<Session>,
    ) -> Result<Arc<Session>, ActorProcessingErr> {
        Ok(session)
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        message: SessionMsg,
        session: &mut Arc<Session>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Notify(data) => {
                if !session.push(data) {
                    metrics::counter!("warden_session_notifications_delayed_total").increment(1);
                }
            }
            SessionMsg::End(reason) => {
                tracing::debug!(session = %session.id, %reason, "session ended");
                session.end();
                if let Some(on_end) = self.on_end.get() {
                    on_end(session.clone(), reason.clone());
                }
                myself.stop(Some(reason));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// SessionsSupervisor
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct SessionLimits {
    pub idle_timeout: Duration,
    pub max_total: usize,
    pub max_per_principal: usize,
}

pub struct NewSession {
    pub principal: Arc<Principal>,
    pub protocol_version: String,
    pub client_info: Value,
    pub client_capabilities: Value,
    pub scope: Option<String>,
}

pub enum SupervisorMsg {
    Create {
        new: NewSession,
        reply: RpcReplyPort<Result<Arc<Session>, String>>,
    },
    SetLimits(SessionLimits),
    Sweep,
}

pub struct SessionsSupervisor;

pub struct SupervisorState {
    sessions: Arc<Sessions>,
    limits: SessionLimits,
    on_end: OnEnd,
}

impl Actor for SessionsSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (Arc<Sessions>, SessionLimits, OnEnd);

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        (sessions, limits, on_end): Self::Arguments,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(1), || SupervisorMsg::Sweep);
        Ok(SupervisorState {
            sessions,
            limits,
            on_end,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Create { new, reply } => {
                let result = create(&myself, state, new).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::SetLimits(limits) => state.limits = limits,
            SupervisorMsg::Sweep => {
                let idle: Vec<String> = state
                    .sessions
                    .all()
                    .iter()
                    .filter(|(s, _)| s.idle_for() >= state.limits.idle_timeout)
                    .map(|(s, _)| s.id.clone())
                    .collect();
                for id in idle {
                    if let Some((_, actor)) = state.sessions.remove(&id) {
                        let _ = actor.send_message(SessionMsg::End("idle timeout".into()));
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        _event: ractor::SupervisionEvent,
        _state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // A session actor ending (normally or not) needs nothing more: `End` already
        // removed it from the table, and a crashed one is found missing by its client.
        Ok(())
    }
}

async fn create(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    new: NewSession,
) -> Result<Arc<Session>, String> {
    if state.sessions.len() >= state.limits.max_total {
        return Err(format!(
            "Warden already holds its maximum of {} sessions (sessions.max_total)",
            state.limits.max_total
        ));
    }
    if state.sessions.count_for(&new.principal.subject) >= state.limits.max_per_principal {
        return Err(format!(
            "`{}` already holds its maximum of {} sessions (sessions.max_per_principal)",
            new.principal.subject, state.limits.max_per_principal
        ));
    }
    let session = Arc::new(Session::new(
        new.principal,
        new.protocol_version,
        new.client_info,
        new.client_capabilities,
        new.scope,
    ));
    let actor = SessionActor {
        on_end: state.on_end.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, actor, session.clone(), myself.get_cell())
        .await
        .map_err(|e| format!("cannot start the session actor: {e}"))?;
    state.sessions.insert(session.clone(), actor);
    Ok(session)
}

/// The handle the HTTP layer uses.
#[derive(Clone)]
pub struct SessionManager {
    pub table: Arc<Sessions>,
    supervisor: ActorRef<SupervisorMsg>,
    on_end: OnEnd,
}

impl SessionManager {
    /// Starts the SessionsSupervisor, linked under `parent` (the tree's root).
    pub async fn start(
        limits: SessionLimits,
        parent: Option<ractor::ActorCell>,
    ) -> Result<SessionManager, String> {
        let table = Arc::new(Sessions::default());
        let on_end: OnEnd = Arc::new(std::sync::OnceLock::new());
        let args = (table.clone(), limits, on_end.clone());
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(None, SessionsSupervisor, args, parent).await,
            None => Actor::spawn(None, SessionsSupervisor, args).await,
        };
        let (supervisor, _) =
            spawned.map_err(|e| format!("cannot start the sessions supervisor: {e}"))?;
        Ok(SessionManager {
            table,
            supervisor,
            on_end,
        })
    }

    /// Sets what happens when any session ends (once, at start-up).
    pub fn on_end(&self, callback: impl Fn(Arc<Session>, String) + Send + Sync + 'static) {
        let _ = self.on_end.set(Box::new(callback));
    }

    pub async fn create(&self, new: NewSession) -> Result<Arc<Session>, String> {
        ractor::call_t!(
            self.supervisor,
            |reply| SupervisorMsg::Create { new, reply },
            5_000
        )
        .map_err(|e| format!("the sessions supervisor did not answer: {e}"))?
    }

    /// Ends a session: out of the table before this returns, so no request that follows
    /// (the client's next one, after its `DELETE` was answered) finds it; its actor then
    /// cancels what is in flight.
    pub fn end(&self, id: &str, reason: &str) {
        if let Some((_, actor)) = self.table.remove(id) {
            let _ = actor.send_message(SessionMsg::End(reason.to_owned()));
        }
    }

    pub fn set_limits(&self, limits: SessionLimits) {
        let _ = self
            .supervisor
            .send_message(SupervisorMsg::SetLimits(limits));
    }

    /// Sends a notification to every session `filter` accepts.
    pub fn broadcast(&self, data: Arc<str>, filter: impl Fn(&Session) -> bool) {
        for (session, actor) in self.table.all() {
            if filter(&session) {
                let _ = actor.send_message(SessionMsg::Notify(data.clone()));
            }
        }
    }

    /// Sends each session the messages `pick` chooses for it, in order (none when it
    /// chooses none).
    pub fn notify_each(&self, pick: impl Fn(&Session) -> Vec<Arc<str>>) {
        for (session, actor) in self.table.all() {
            for data in pick(&session) {
                let _ = actor.send_message(SessionMsg::Notify(data));
            }
        }
    }
}
