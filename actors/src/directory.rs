//! The directory: the live view of every server that the call path reads without a
//! mailbox hop.
//!
//! Actors own state; the directory *publishes* it. The ServersSupervisor writes each
//! server's [`ServerStatus`]; each McpServer actor publishes its connection and catalog
//! when it becomes ready and withdraws them when it stops. Readers (the gateway, the
//! admin API, the health monitor) take lock-free snapshots. This keeps a tool call to
//! one map lookup and one semaphore instead of three actor round trips, while every
//! change still happens in exactly one actor.
//!
//! The per-server [`CallLimiter`] lives here too, so its count survives restarts of the
//! server actor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::spec::ServerSpec;
use crate::upstream::Connection;

/// Lifecycle states, as `/admin/servers` and the metrics show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Starting,
    Ready,
    Unhealthy,
    Restarting,
    Stopping,
    Stopped,
    Failed,
}

impl ServerState {
    pub const ALL: [ServerState; 7] = [
        ServerState::Starting,
        ServerState::Ready,
        ServerState::Unhealthy,
        ServerState::Restarting,
        ServerState::Stopping,
        ServerState::Stopped,
        ServerState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Starting => "starting",
            ServerState::Ready => "ready",
            ServerState::Unhealthy => "unhealthy",
            ServerState::Restarting => "restarting",
            ServerState::Stopping => "stopping",
            ServerState::Stopped => "stopped",
            ServerState::Failed => "failed",
        }
    }
}

/// What an operator sees about one server (or one per-user instance).
#[derive(Clone, Debug, Serialize)]
pub struct ServerStatus {
    pub name: String,
    /// Set for per-user instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub kind: &'static str,
    pub state: ServerState,
    pub pid: Option<u32>,
    /// Restarts since Warden started (or since an operator restart cleared a failure).
    pub restarts: u64,
    pub last_error: Option<String>,
    pub last_exit: Option<String>,
    #[serde(skip)]
    pub running_since: Option<Instant>,
    pub started_at: Option<SystemTime>,
    pub tools: usize,
}

impl ServerStatus {
    pub fn new(spec: &ServerSpec, user: Option<String>) -> Self {
        ServerStatus {
            name: spec.name.clone(),
            user,
            kind: spec.transport.kind(),
            state: ServerState::Starting,
            pid: None,
            restarts: 0,
            last_error: None,
            last_exit: None,
            running_since: None,
            started_at: None,
            tools: 0,
        }
    }

    pub fn uptime(&self) -> Option<Duration> {
        self.running_since.map(|t| t.elapsed())
    }
}

/// Everything an upstream offers, as it described it (raw JSON objects, so fields Warden
/// does not model — annotations, `_meta`, output schemas — pass through untouched).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub protocol_version: String,
    pub server_info: Value,
    pub capabilities: Value,
    pub instructions: Option<String>,
    pub tools: Vec<Value>,
    pub resources: Vec<Value>,
    pub resource_templates: Vec<Value>,
    pub prompts: Vec<Value>,
}

impl Catalog {
    pub fn tool(&self, name: &str) -> Option<&Value> {
        self.tools
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
    }
}

/// One running upstream: the shared instance of a server, or one user's instance.
pub struct Instance {
    pub user: Option<String>,
    connection: ArcSwapOption<Connection>,
    catalog: ArcSwap<Catalog>,
    status: ArcSwap<ServerStatus>,
    /// The state alone, for waiters ([`Instance::wait_ready`]).
    state: tokio::sync::watch::Sender<ServerState>,
    /// Unix millis of the last call, for idle expiry of per-user instances.
    last_used: AtomicU64,
}

impl Instance {
    fn new(spec: &ServerSpec, user: Option<String>) -> Self {
        Instance {
            status: ArcSwap::from_pointee(ServerStatus::new(spec, user.clone())),
            state: tokio::sync::watch::Sender::new(ServerState::Starting),
            user,
            connection: ArcSwapOption::empty(),
            catalog: ArcSwap::from_pointee(Catalog::default()),
            last_used: AtomicU64::new(now_millis()),
        }
    }

    /// The connection, while the instance is ready.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.connection.load_full().filter(|c| !c.is_closed())
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub fn status(&self) -> Arc<ServerStatus> {
        self.status.load_full()
    }

    pub fn touch(&self) {
        self.last_used.store(now_millis(), Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_millis().saturating_sub(self.last_used.load(Ordering::Relaxed)))
    }

    pub(crate) fn publish(&self, connection: Arc<Connection>, catalog: Catalog) {
        self.catalog.store(Arc::new(catalog));
        self.connection.store(Some(connection));
    }

    pub(crate) fn set_catalog(&self, catalog: Catalog) {
        self.catalog.store(Arc::new(catalog));
    }

    pub(crate) fn withdraw(&self) {
        self.connection.store(None);
    }

    pub(crate) fn update_status(&self, change: impl FnOnce(&mut ServerStatus)) {
        let mut status = (*self.status.load_full()).clone();
        change(&mut status);
        let state = status.state;
        self.status.store(Arc::new(status));
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    /// Starts a server's status afresh (a server added by the profile).
    pub(crate) fn reset_status(&self, spec: &ServerSpec) {
        self.update_status(|s| *s = ServerStatus::new(spec, self.user.clone()));
    }

    /// Waits until the instance is ready, up to `timeout`. Fails at once when it is
    /// `failed` or `stopped`, and with its status when the time runs out.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Arc<ServerStatus>> {
        let mut watch = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let state = *watch.borrow_and_update();
            match state {
                ServerState::Ready | ServerState::Unhealthy if self.connection().is_some() => {
                    return Ok(());
                }
                ServerState::Failed | ServerState::Stopped => return Err(self.status()),
                _ => {}
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Err(self.status());
            }
        }
    }

    /// A receiver of state changes (tests and the admin event stream).
    pub fn watch_state(&self) -> tokio::sync::watch::Receiver<ServerState> {
        self.state.subscribe()
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One server as the profile defines it, with its shared instance or its per-user ones.
pub struct ServerEntry {
    pub name: Arc<str>,
    spec: ArcSwap<ServerSpec>,
    pub limiter: CallLimiter,
    shared: Arc<Instance>,
    users: Mutex<HashMap<String, Arc<Instance>>>,
    /// Bumped whenever any instance's catalog changes.
    catalog_version: AtomicU64,
    /// The directory's generation, bumped with it (one load tells readers to rebuild).
    generation: Arc<AtomicU64>,
}

impl ServerEntry {
    pub fn spec(&self) -> Arc<ServerSpec> {
        self.spec.load_full()
    }

    /// The shared instance (for `isolation: shared` servers).
    pub fn shared(&self) -> &Arc<Instance> {
        &self.shared
    }

    pub fn user_instance(&self, user: &str) -> Option<Arc<Instance>> {
        self.lock_users().get(user).cloned()
    }

    pub fn user_instances(&self) -> Vec<Arc<Instance>> {
        self.lock_users().values().cloned().collect()
    }

    pub(crate) fn insert_user_instance(&self, user: &str) -> Arc<Instance> {
        let spec = self.spec();
        self.lock_users()
            .entry(user.to_owned())
            .or_insert_with(|| Arc::new(Instance::new(&spec, Some(user.to_owned()))))
            .clone()
    }

    pub(crate) fn remove_user_instance(&self, user: &str) {
        self.lock_users().remove(user);
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Instance>>> {
        // Single insert/remove/get operations cannot leave the map inconsistent.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn catalog_version(&self) -> u64 {
        self.catalog_version.load(Ordering::Acquire)
    }

    pub(crate) fn catalog_changed(&self) {
        self.catalog_version.fetch_add(1, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// All servers, by name, in profile order.
#[derive(Default)]
pub struct Directory {
    entries: ArcSwap<Vec<Arc<ServerEntry>>>,
    /// Bumped when servers are added, removed or reordered, or any catalog changes.
    generation: Arc<AtomicU64>,
}

impl Directory {
    pub fn new() -> Arc<Directory> {
        Arc::new(Directory::default())
    }

    pub fn get(&self, name: &str) -> Option<Arc<ServerEntry>> {
        self.entries
            .load()
            .iter()
            .find(|e| &*e.name == name)
            .cloned()
    }

    /// Every server, in profile order.
    pub fn all(&self) -> Arc<Vec<Arc<ServerEntry>>> {
        self.entries.load_full()
    }

    /// Changes whenever the set of servers or any catalog changes.
    pub fn version(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds or replaces the entry for `spec.name`, keeping its limiter's in-flight count.
    pub(crate) fn upsert(&self, spec: &ServerSpec) -> Arc<ServerEntry> {
        let mut entries = (*self.entries.load_full()).clone();
        let entry = match entries.iter().position(|e| *e.name == spec.name) {
            Some(index) => {
                let entry = entries[index].clone();
                entry.spec.store(Arc::new(spec.clone()));
                entry
                    .limiter
                    .resize(spec.max_concurrent_calls, spec.max_queued_calls);
                entry
            }
            None => {
                let entry = Arc::new(ServerEntry {
                    name: Arc::from(spec.name.as_str()),
                    spec: ArcSwap::from_pointee(spec.clone()),
                    limiter: CallLimiter::new(spec.max_concurrent_calls, spec.max_queued_calls),
                    shared: Arc::new(Instance::new(spec, None)),
                    users: Mutex::new(HashMap::new()),
                    catalog_version: AtomicU64::new(0),
                    generation: self.generation.clone(),
                });
                entries.push(entry.clone());
                entry
            }
        };
        self.entries.store(Arc::new(entries));
        self.bump();
        entry
    }

    /// Puts entries in the order of `names` (profile order after a reload).
    pub(crate) fn reorder(&self, names: &[String]) {
        let mut entries = (*self.entries.load_full()).clone();
        entries.sort_by_key(|e| {
            names
                .iter()
                .position(|n| *n == *e.name)
                .unwrap_or(usize::MAX)
        });
        self.entries.store(Arc::new(entries));
    }

    pub(crate) fn remove(&self, name: &str) {
        let mut entries = (*self.entries.load_full()).clone();
        entries.retain(|e| &*e.name != name);
        self.entries.store(Arc::new(entries));
        self.bump();
    }
}

/// The per-server concurrency bound: at most `max_concurrent` calls in flight and at most
/// `max_queued` waiting for a slot. Beyond that a call is refused at once — the queue
/// never grows without bound.
pub struct CallLimiter {
    semaphore: Arc<Semaphore>,
    limits: Mutex<(usize, usize)>,
    waiting: AtomicUsize,
}

/// Why a call did not get a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// In flight and queue both full.
    Full {
        max_concurrent: usize,
        max_queued: usize,
    },
    /// The deadline passed while queued.
    TimedOut,
}

impl CallLimiter {
    pub fn new(max_concurrent: usize, max_queued: usize) -> Self {
        CallLimiter {
            semaphore: Arc::new(Semaphore::new(max_concurrent)),
            limits: Mutex::new((max_concurrent, max_queued)),
            waiting: AtomicUsize::new(0),
        }
    }

    fn limits(&self) -> (usize, usize) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot until `deadline`.
    pub async fn acquire(&self, deadline: Duration) -> Result<OwnedSemaphorePermit, LimitError> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let (max_concurrent, max_queued) = self.limits();
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= max_queued {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitError::Full {
                max_concurrent,
                max_queued,
            });
        }
        let result = tokio::time::timeout(deadline, self.semaphore.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(LimitError::TimedOut),
        }
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        self.limits()
            .0
            .saturating_sub(self.semaphore.available_permits())
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Applies new limits from a reloaded profile; calls in flight keep their permits.
    fn resize(&self, max_concurrent: usize, max_queued: usize) {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let (old, _) = *limits;
        if max_concurrent > old {
            self.semaphore.add_permits(max_concurrent - old);
        } else if max_concurrent < old {
            self.semaphore.forget_permits(old - max_concurrent);
        }
        *limits = (max_concurrent, max_queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_queues_then_refuses() {
        let limiter = Arc::new(CallLimiter::new(1, 1));
        let first = limiter.acquire(Duration::from_secs(1)).await.unwrap();
        let queued = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(Duration::from_secs(5)).await.map(|_| ()) })
        };
        // Wait until the second call is queued.
        while limiter.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = limiter.acquire(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(
            refused,
            LimitError::Full {
                max_concurrent: 1,
                max_queued: 1
            }
        );
        drop(first);
        assert!(queued.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn limiter_times_out_in_queue() {
        let limiter = CallLimiter::new(1, 4);
        let _held = limiter.acquire(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            limiter.acquire(Duration::from_millis(1)).await.unwrap_err(),
            LimitError::TimedOut
        );
        assert_eq!(limiter.waiting(), 0);
    }
}
