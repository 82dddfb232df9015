//! The ServersSupervisor actor: OTP-style supervision of every McpServer.
//!
//! **Children, in start order:** one McpServer per enabled server in profile order
//! (spawned in order; each becomes ready on its own time, so one slow `npx` does not hold
//! back the rest), plus per-user instances of `isolation: per_user` servers, spawned on
//! first use. Children stop in reverse order.
//!
//! **Strategy:** one-for-one. A child's exit is judged by its restart type:
//! `permanent` — always restarted; `transient` — restarted after an abnormal exit only;
//! `temporary` — never. Restarts wait an exponential backoff with jitter (capped at
//! `backoff_max`, reset after `backoff_reset_after` of stable running). **Intensity:**
//! more than `max_restarts` within `restart_window` marks the server `failed` with its
//! last error and exit status, emits `Failed`, and stops restarting it until the profile
//! changes it or an operator restarts it. A failing server never affects its siblings.
//!
//! **Owns:** each child's spec, restart history, generation and status (published to the
//! directory), and what is pending for it (a removal, a replacement, a timer).
//!
//! **Messages:** `Add`, `Remove`, `Replace`, `Specs` (from the reconciler); `Restart`
//! (operator or health monitor); `Health` (health monitor reports); `StartChild` (a
//! backoff timer); `EnsureUser` (the gateway, for per-user instances); `IdleSweep`;
//! `StopAll` (shutdown). None waits on I/O inside `handle` except `StopAll`, which runs
//! once, at the end.
//!
//! **On failure:** the root supervisor restarts it with the current desired specs;
//! children of the failed supervisor are killed with it (their process groups go with
//! them), so the restart begins from a clean slate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::backoff::{RestartHistory, Verdict};
use crate::directory::{Directory, Instance, ServerEntry, ServerState};
use crate::events::{Event, EventKind};
use crate::server::{
    ExitOutcome, McpServer, ServerArgs, ServerDeps, ServerMsg, ServerState as ActorState,
};
use crate::spec::{Isolation, RestartPolicy, ServerSpec};

/// A child: a server's shared instance (`user: None`) or one user's instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChildKey {
    pub server: String,
    pub user: Option<String>,
}

impl ChildKey {
    fn shared(server: &str) -> Self {
        ChildKey {
            server: server.to_owned(),
            user: None,
        }
    }
}

/// Why a restart was asked for.
#[derive(Clone, Debug)]
pub enum RestartReason {
    /// An operator (`POST /admin/servers/{name}/restart`): clears a failure and the
    /// restart history, restarts at once.
    Operator,
    /// Failed health checks: an abnormal exit, subject to backoff and intensity.
    Health(String),
    /// A secret the server uses changed: restart at once so it picks up the new value.
    SecretChanged(String),
}

pub enum SupervisorMsg {
    Add(Arc<ServerSpec>),
    Remove {
        name: String,
        reply: Option<RpcReplyPort<()>>,
    },
    Replace {
        spec: Arc<ServerSpec>,
        reply: Option<RpcReplyPort<()>>,
    },
    /// The specs currently supervised, in order.
    Specs(RpcReplyPort<Vec<Arc<ServerSpec>>>),
    Restart {
        server: String,
        user: Option<String>,
        reason: RestartReason,
        reply: Option<RpcReplyPort<Result<(), String>>>,
    },
    Health {
        key: ChildKey,
        failures: u32,
        error: Option<String>,
    },
    StartChild {
        key: ChildKey,
        generation: u64,
    },
    /// Makes sure `user` has an instance of `server`, spawning it if needed. Answers at
    /// once with the instance; wait for it with [`Instance::wait_ready`].
    EnsureUser {
        server: String,
        user: String,
        reply: RpcReplyPort<Result<Arc<Instance>, String>>,
    },
    IdleSweep,
    StopAll(RpcReplyPort<()>),
}

pub struct SupervisorArgs {
    pub specs: Vec<Arc<ServerSpec>>,
    pub directory: Arc<Directory>,
    pub deps: ServerDeps,
}

enum Pending {
    None,
    /// A backoff timer for this generation is running.
    Timer(u64),
    Removing(Vec<RpcReplyPort<()>>),
    Replacing(Arc<ServerSpec>, Vec<RpcReplyPort<()>>),
    /// Stop, then start again at once (operator restart, secret change).
    Restarting,
    Shutdown,
}

struct Child {
    spec: Arc<ServerSpec>,
    entry: Arc<ServerEntry>,
    instance: Arc<Instance>,
    actor: Option<ActorRef<ServerMsg>>,
    generation: u64,
    history: RestartHistory,
    pending: Pending,
}

pub struct SupervisorState {
    directory: Arc<Directory>,
    deps: ServerDeps,
    /// Shared children in profile order; per-user children after them.
    order: Vec<ChildKey>,
    children: HashMap<ChildKey, Child>,
    by_actor: HashMap<ActorId, ChildKey>,
    shutting_down: bool,
}

pub struct ServersSupervisor;

impl Actor for ServersSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            directory: args.directory,
            deps: args.deps,
            order: Vec::new(),
            children: HashMap::new(),
            by_actor: HashMap::new(),
            shutting_down: false,
        };
        for spec in args.specs {
            add(&myself, &mut state, spec).await;
        }
        myself.send_interval(Duration::from_secs(1), || SupervisorMsg::IdleSweep);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Add(spec) => add(&myself, state, spec).await,
            SupervisorMsg::Remove { name, reply } => remove_server(state, &name, reply),
            SupervisorMsg::Replace { spec, reply } => replace(&myself, state, spec, reply).await,
            SupervisorMsg::Specs(reply) => {
                let specs = state
                    .order
                    .iter()
                    .filter(|k| k.user.is_none())
                    .filter_map(|k| state.children.get(k).map(|c| c.spec.clone()))
                    .collect();
                let _ = reply.send(specs);
            }
            SupervisorMsg::Restart {
                server,
                user,
                reason,
                reply,
            } => {
                let result = restart(&myself, state, ChildKey { server, user }, reason).await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            SupervisorMsg::Health {
                key,
                failures,
                error,
            } => health(&myself, state, key, failures, error).await,
            SupervisorMsg::StartChild { key, generation } => {
                let due = state.children.get(&key).is_some_and(|c| {
                    matches!(c.pending, Pending::Timer(g) if g == generation) && c.actor.is_none()
                });
                if due && !state.shutting_down {
                    spawn_child(&myself, state, &key).await;
                }
            }
            SupervisorMsg::EnsureUser {
                server,
                user,
                reply,
            } => {
                let result = ensure_user(&myself, state, &server, &user).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::IdleSweep => idle_sweep(state),
            SupervisorMsg::StopAll(reply) => {
                stop_all(state).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, outcome) = match event {
            SupervisionEvent::ActorTerminated(cell, last_state, reason) => {
                let outcome = last_state
                    .and_then(|mut boxed| boxed.take::<ActorState>().ok())
                    .and_then(|s| s.exit)
                    .unwrap_or(ExitOutcome {
                        normal: false,
                        requested: false,
                        reason: reason.unwrap_or_else(|| "the server actor was killed".into()),
                        exit_status: None,
                        ran_for: None,
                    });
                (cell, outcome)
            }
            SupervisionEvent::ActorFailed(cell, error) => (
                cell,
                ExitOutcome {
                    normal: false,
                    requested: false,
                    reason: format!("the server actor panicked: {error}"),
                    exit_status: None,
                    ran_for: None,
                },
            ),
            _ => return Ok(()),
        };
        if let Some(key) = state.by_actor.remove(&cell.get_id()) {
            on_child_exit(&myself, state, key, outcome).await;
        }
        Ok(())
    }
}

async fn add(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState, spec: Arc<ServerSpec>) {
    let key = ChildKey::shared(&spec.name);
    if state.children.contains_key(&key) {
        return;
    }
    let entry = state.directory.upsert(&spec);
    let instance = entry.shared().clone();
    instance.reset_status(&spec);
    state.children.insert(
        key.clone(),
        Child {
            spec: spec.clone(),
            entry,
            instance,
            actor: None,
            generation: 0,
            history: RestartHistory::default(),
            pending: Pending::None,
        },
    );
    let position = state
        .order
        .iter()
        .position(|k| k.user.is_some())
        .unwrap_or(state.order.len());
    state.order.insert(position, key.clone());
    match spec.isolation {
        // Per-user servers have no shared process: instances start on first use.
        Isolation::PerUser { .. } => set_state(state, &key, ServerState::Stopped),
        Isolation::Shared => spawn_child(myself, state, &key).await,
    }
}

/// Starts one attempt for `key`.
async fn spawn_child(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    key: &ChildKey,
) {
    let Some(child) = state.children.get_mut(key) else {
        return;
    };
    child.generation += 1;
    child.pending = Pending::None;
    let args = ServerArgs {
        spec: child.spec.clone(),
        entry: child.entry.clone(),
        instance: child.instance.clone(),
        deps: state.deps.clone(),
    };
    let attempt = child.generation;
    child.instance.update_status(|s| {
        s.state = ServerState::Starting;
        s.pid = None;
        s.running_since = None;
    });
    state.deps.events.publish(Event::server(
        &key.server,
        key.user.as_deref(),
        EventKind::Starting { attempt },
    ));
    match Actor::spawn_linked(None, McpServer, args, myself.get_cell()).await {
        Ok((actor, _)) => {
            state.by_actor.insert(actor.get_id(), key.clone());
            if let Some(child) = state.children.get_mut(key) {
                child.actor = Some(actor);
            }
        }
        Err(error) => {
            let outcome = ExitOutcome {
                normal: false,
                requested: false,
                reason: format!("could not start the server actor: {error}"),
                exit_status: None,
                ran_for: None,
            };
            Box::pin(on_child_exit(myself, state, key.clone(), outcome)).await;
        }
    }
}

async fn on_child_exit(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    key: ChildKey,
    outcome: ExitOutcome,
) {
    let Some(child) = state.children.get_mut(&key) else {
        return;
    };
    child.actor = None;
    child.instance.withdraw();
    let previous_uptime = outcome.ran_for;
    child.instance.update_status(|s| {
        s.pid = None;
        s.running_since = None;
        if !outcome.requested {
            s.last_error = Some(outcome.reason.clone());
        }
        if let Some(exit) = &outcome.exit_status {
            s.last_exit = Some(exit.clone());
        }
    });
    let events = state.deps.events.clone();
    let publish =
        |kind: EventKind| events.publish(Event::server(&key.server, key.user.as_deref(), kind));

    match std::mem::replace(&mut child.pending, Pending::None) {
        Pending::Removing(replies) => {
            publish(EventKind::Stopped {
                reason: "removed from the profile".into(),
            });
            finish_removal(state, &key);
            for reply in replies {
                let _ = reply.send(());
            }
            return;
        }
        Pending::Replacing(spec, replies) => {
            child.spec = spec;
            child.history.reset();
            publish(EventKind::Stopped {
                reason: "definition changed; restarting".into(),
            });
            spawn_child(myself, state, &key).await;
            for reply in replies {
                let _ = reply.send(());
            }
            return;
        }
        Pending::Restarting => {
            child.history.reset();
            publish(EventKind::Stopped {
                reason: "restart requested".into(),
            });
            spawn_child(myself, state, &key).await;
            return;
        }
        Pending::Shutdown => {
            set_state(state, &key, ServerState::Stopped);
            publish(EventKind::Stopped {
                reason: "Warden is shutting down".into(),
            });
            return;
        }
        Pending::None | Pending::Timer(_) => {}
    }

    let per_user_idle = key.user.is_some() && outcome.requested;
    if per_user_idle {
        publish(EventKind::Stopped {
            reason: outcome.reason,
        });
        finish_removal(state, &key);
        return;
    }
    let policy = child.spec.restart.policy;
    let restart = !outcome.requested
        && !state.shutting_down
        && match policy {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => !outcome.normal,
            RestartPolicy::Temporary => false,
        };
    if !restart {
        tracing::info!(server = %key.server, reason = %outcome.reason, policy = policy.as_str(), "server stopped; not restarting");
        publish(EventKind::Stopped {
            reason: outcome.reason,
        });
        set_state(state, &key, ServerState::Stopped);
        return;
    }
    let jitter: f64 = rand::random();
    match child
        .history
        .on_exit(&child.spec.restart, previous_uptime, Instant::now(), jitter)
    {
        Verdict::Restart { attempt, delay } => {
            let generation = child.generation;
            child.pending = Pending::Timer(generation);
            child.instance.update_status(|s| {
                s.state = ServerState::Restarting;
                s.restarts += 1;
            });
            tracing::warn!(server = %key.server, reason = %outcome.reason, attempt, delay_ms = delay.as_millis() as u64, "server exited; restarting");
            publish(EventKind::Restarting {
                attempt,
                delay_ms: delay.as_millis() as u64,
                reason: outcome.reason,
            });
            let timer_key = key.clone();
            myself.send_after(delay, move || SupervisorMsg::StartChild {
                key: timer_key,
                generation,
            });
        }
        Verdict::GiveUp { restarts_in_window } => {
            let window = child.spec.restart.restart_window;
            let reason = format!(
                "restarted {restarts_in_window} times within {window:?} (restart.max_restarts); last error: {}",
                outcome.reason
            );
            tracing::error!(server = %key.server, %reason, "server failed; no more restarts until the profile changes or an operator restarts it");
            child.instance.update_status(|s| {
                s.state = ServerState::Failed;
                s.last_error = Some(reason.clone());
            });
            publish(EventKind::Failed { reason });
        }
    }
}

fn finish_removal(state: &mut SupervisorState, key: &ChildKey) {
    state.children.remove(key);
    state.order.retain(|k| k != key);
    match &key.user {
        None => {
            state.directory.remove(&key.server);
        }
        Some(user) => {
            if let Some(entry) = state.directory.get(&key.server) {
                entry.remove_user_instance(user);
                entry.catalog_changed();
            }
        }
    }
}

fn remove_server(state: &mut SupervisorState, name: &str, reply: Option<RpcReplyPort<()>>) {
    let keys: Vec<ChildKey> = state
        .order
        .iter()
        .filter(|k| k.server == name)
        .cloned()
        .collect();
    let mut reply = reply;
    // Per-user instances first, then the shared entry (which carries the reply).
    for key in keys.iter().rev() {
        let replies: Vec<RpcReplyPort<()>> = if key.user.is_none() {
            reply.take().into_iter().collect()
        } else {
            Vec::new()
        };
        let Some(child) = state.children.get_mut(key) else {
            continue;
        };
        match &child.actor {
            Some(actor) => {
                child.pending = Pending::Removing(replies);
                set_status(&child.instance, ServerState::Stopping);
                let _ = actor.send_message(ServerMsg::Stop {
                    reason: None,
                    reply: None,
                });
            }
            None => {
                finish_removal(state, key);
                for r in replies {
                    let _ = r.send(());
                }
            }
        }
    }
    if let Some(reply) = reply {
        let _ = reply.send(());
    }
}

async fn replace(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    spec: Arc<ServerSpec>,
    reply: Option<RpcReplyPort<()>>,
) {
    let key = ChildKey::shared(&spec.name);
    if !state.children.contains_key(&key) {
        add(myself, state, spec).await;
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
        return;
    }
    // Per-user instances run the old definition: stop them; they start anew on next use.
    let user_keys: Vec<ChildKey> = state
        .order
        .iter()
        .filter(|k| k.server == spec.name && k.user.is_some())
        .cloned()
        .collect();
    for user_key in user_keys {
        if let Some(child) = state.children.get_mut(&user_key) {
            match &child.actor {
                Some(actor) => {
                    child.pending = Pending::Removing(Vec::new());
                    let _ = actor.send_message(ServerMsg::Stop {
                        reason: None,
                        reply: None,
                    });
                }
                None => finish_removal(state, &user_key),
            }
        }
    }
    state.directory.upsert(&spec);
    let Some(child) = state.children.get_mut(&key) else {
        return;
    };
    let replies: Vec<RpcReplyPort<()>> = reply.into_iter().collect();
    match (&child.actor, &spec.isolation) {
        (Some(actor), _) => {
            child.pending = Pending::Replacing(spec, replies);
            set_status(&child.instance, ServerState::Stopping);
            let _ = actor.send_message(ServerMsg::Stop {
                reason: None,
                reply: None,
            });
        }
        (None, Isolation::PerUser { .. }) => {
            child.spec = spec;
            child.history.reset();
            for r in replies {
                let _ = r.send(());
            }
        }
        (None, Isolation::Shared) => {
            child.spec = spec;
            child.history.reset();
            spawn_child(myself, state, &key).await;
            for r in replies {
                let _ = r.send(());
            }
        }
    }
}

async fn restart(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    key: ChildKey,
    reason: RestartReason,
) -> Result<(), String> {
    let Some(child) = state.children.get_mut(&key) else {
        return Err(format!("no server named `{}`", key.server));
    };
    match (&child.actor, reason) {
        (Some(actor), RestartReason::Health(why)) => {
            let _ = actor.send_message(ServerMsg::Stop {
                reason: Some(why),
                reply: None,
            });
        }
        (Some(actor), RestartReason::Operator | RestartReason::SecretChanged(_)) => {
            child.pending = Pending::Restarting;
            set_status(&child.instance, ServerState::Stopping);
            let _ = actor.send_message(ServerMsg::Stop {
                reason: None,
                reply: None,
            });
        }
        (None, RestartReason::Health(_)) => {}
        (None, RestartReason::Operator | RestartReason::SecretChanged(_)) => {
            if matches!(child.spec.isolation, Isolation::PerUser { .. }) && key.user.is_none() {
                return Ok(());
            }
            child.history.reset();
            child.instance.update_status(|s| s.last_error = None);
            spawn_child(myself, state, &key).await;
        }
    }
    Ok(())
}

async fn health(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    key: ChildKey,
    failures: u32,
    error: Option<String>,
) {
    let Some(child) = state.children.get(&key) else {
        return;
    };
    if child.actor.is_none() {
        return;
    }
    let current = child.instance.status().state;
    let threshold = child.spec.health.failures_before_restart;
    match error {
        None if current == ServerState::Unhealthy => set_state(state, &key, ServerState::Ready),
        None => {}
        Some(error) => {
            if current == ServerState::Ready || current == ServerState::Unhealthy {
                set_state(state, &key, ServerState::Unhealthy);
            }
            state.deps.events.publish(Event::server(
                &key.server,
                key.user.as_deref(),
                EventKind::Unhealthy {
                    failures,
                    error: error.clone(),
                },
            ));
            if failures >= threshold {
                let reason = format!("{failures} health checks failed in a row; last: {error}");
                let _ = restart(myself, state, key, RestartReason::Health(reason)).await;
            }
        }
    }
}

async fn ensure_user(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    server: &str,
    user: &str,
) -> Result<Arc<Instance>, String> {
    let shared_key = ChildKey::shared(server);
    let Some(shared) = state.children.get(&shared_key) else {
        return Err(format!("no server named `{server}`"));
    };
    let Isolation::PerUser { max_instances, .. } = shared.spec.isolation else {
        return Ok(shared.instance.clone());
    };
    let key = ChildKey {
        server: server.to_owned(),
        user: Some(user.to_owned()),
    };
    if let Some(child) = state.children.get(&key) {
        return Ok(child.instance.clone());
    }
    let running = state
        .order
        .iter()
        .filter(|k| k.server == server && k.user.is_some())
        .count();
    if running >= max_instances {
        return Err(format!(
            "server `{server}` already runs its maximum of {max_instances} per-user instances (max_instances)"
        ));
    }
    let spec = shared.spec.clone();
    let entry = shared.entry.clone();
    let instance = entry.insert_user_instance(user);
    state.children.insert(
        key.clone(),
        Child {
            spec,
            entry,
            instance: instance.clone(),
            actor: None,
            generation: 0,
            history: RestartHistory::default(),
            pending: Pending::None,
        },
    );
    state.order.push(key.clone());
    spawn_child(myself, state, &key).await;
    Ok(instance)
}

/// Stops per-user instances idle for longer than their `idle_timeout`.
fn idle_sweep(state: &mut SupervisorState) {
    for (key, child) in state.children.iter_mut() {
        let Isolation::PerUser { idle_timeout, .. } = child.spec.isolation else {
            continue;
        };
        if key.user.is_none() || !matches!(child.pending, Pending::None) {
            continue;
        }
        let busy = child
            .instance
            .connection()
            .is_some_and(|c| c.in_flight() > 0);
        if let Some(actor) = &child.actor
            && !busy
            && child.instance.idle_for() >= idle_timeout
        {
            tracing::info!(server = %key.server, user = key.user.as_deref().unwrap_or(""), "stopping an idle per-user instance");
            let _ = actor.send_message(ServerMsg::Stop {
                reason: None,
                reply: None,
            });
        }
    }
}

/// Stops every child in reverse start order, each politely, one after the other.
async fn stop_all(state: &mut SupervisorState) {
    state.shutting_down = true;
    for key in state.order.clone().iter().rev() {
        let Some(child) = state.children.get_mut(key) else {
            continue;
        };
        child.pending = Pending::Shutdown;
        let Some(actor) = child.actor.clone() else {
            continue;
        };
        set_status(&child.instance, ServerState::Stopping);
        let wait_ms = (child.spec.stop_grace + Duration::from_secs(5)).as_millis() as u64;
        let stopped = ractor::call_t!(
            actor,
            |reply| ServerMsg::Stop {
                reason: None,
                reply: Some(reply)
            },
            wait_ms
        );
        if stopped.is_err() {
            tracing::warn!(server = %key.server, "server did not stop in time; killing it");
            actor.kill();
        }
    }
}

fn set_status(instance: &Instance, to: ServerState) {
    instance.update_status(|s| s.state = to);
}

fn set_state(state: &SupervisorState, key: &ChildKey, to: ServerState) {
    if let Some(child) = state.children.get(key) {
        set_status(&child.instance, to);
    }
}
