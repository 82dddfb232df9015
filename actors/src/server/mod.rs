//! The McpServer actor: one upstream MCP server (or one user's instance of it).
//!
//! **Owns:** the child process (through a watcher task), the connection, the catalog
//! (tools, resources, templates, prompts as the upstream describes them) and the leased
//! port. It publishes connection and catalog to its [`Instance`] in the directory when
//! ready, and withdraws them when it stops.
//!
//! **Messages:**
//! - `Started(result)` — the start task finished (internal).
//! - `ChildExited { .. }` — the watcher saw the process end (internal).
//! - `Connection(event)` — list changes, unattributed notifications, connection loss.
//! - `Refreshed(kind, result)` — a re-list after `list_changed` finished (internal).
//! - `Stop { reason, reply }` — stop politely (close stdin, SIGTERM, `stop_grace`,
//!   SIGKILL of the group). `reason: None` is a requested stop (normal exit);
//!   `Some(reason)` is an abnormal one (failed health checks), which the supervisor
//!   answers with a restart.
//!
//! **On failure:** an actor is one attempt. Any exit — the child dying, the connection
//! breaking, a failed start, a panic — ends the actor; its final state carries an
//! [`ExitOutcome`] the ServersSupervisor reads to apply the restart policy. In-flight
//! calls fail with "connection closed", which the gateway reports to each caller naming
//! the server; nothing is retried behind the caller's back.

pub mod start;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;

use crate::directory::{Catalog, Instance, ServerEntry};
use crate::events::{Event, EventBus, EventKind};
use crate::ports::PortManager;
use crate::secrets::SecretSource;
use crate::spec::ServerSpec;
use crate::upstream::{ConnectionEvent, ListKind};
use start::{ChildControl, Running, StartContext, StartFailure};

pub enum ServerMsg {
    Started(Box<Result<Running, StartFailure>>),
    ChildExited {
        description: String,
        success: bool,
    },
    Connection(ConnectionEvent),
    Refreshed(ListKind, Result<Catalog, String>),
    Stop {
        reason: Option<String>,
        reply: Option<RpcReplyPort<()>>,
    },
}

/// How an attempt ended, read by the supervisor from the actor's final state.
#[derive(Clone, Debug)]
pub struct ExitOutcome {
    /// A requested stop, or a clean exit (status 0). Transient servers are not
    /// restarted after a normal exit.
    pub normal: bool,
    /// Asked for by the supervisor or an operator: never restarted.
    pub requested: bool,
    pub reason: String,
    pub exit_status: Option<String>,
    pub ran_for: Option<Duration>,
}

/// What the actor needs from the rest of the tree.
#[derive(Clone)]
pub struct ServerDeps {
    pub secrets: Arc<dyn SecretSource>,
    pub ports: PortManager,
    pub events: EventBus,
    pub client_name: String,
    pub client_version: String,
}

pub struct ServerArgs {
    pub spec: Arc<ServerSpec>,
    pub entry: Arc<ServerEntry>,
    pub instance: Arc<Instance>,
    pub deps: ServerDeps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Stopping,
}

pub struct ServerState {
    spec: Arc<ServerSpec>,
    entry: Arc<ServerEntry>,
    instance: Arc<Instance>,
    deps: ServerDeps,
    phase: Phase,
    connection: Option<Arc<crate::upstream::Connection>>,
    child: Option<ChildControl>,
    port: Option<u16>,
    ready_at: Option<Instant>,
    /// Set once the attempt is over; the supervisor reads it.
    pub exit: Option<ExitOutcome>,
    stop_replies: Vec<RpcReplyPort<()>>,
    refresh_in_flight: bool,
    /// The attempt is ending because the connection closed (not by request).
    connection_lost: bool,
}

impl ServerState {
    fn user(&self) -> Option<&str> {
        self.instance.user.as_deref()
    }

    fn publish(&self, kind: EventKind) {
        self.deps
            .events
            .publish(Event::server(&self.spec.name, self.user(), kind));
    }

    fn ran_for(&self) -> Option<Duration> {
        self.ready_at.map(|t| t.elapsed())
    }

    /// Records how the attempt ends (first writer wins) and begins stopping.
    fn finish(&mut self, myself: &ActorRef<ServerMsg>, outcome: ExitOutcome, grace: Duration) {
        if self.exit.is_none() {
            self.exit = Some(outcome);
        }
        self.phase = Phase::Stopping;
        self.instance.withdraw();
        match self.child.as_mut() {
            // The watcher reports the exit with `ChildExited`, which ends the actor (if
            // the child is already gone, that message is on its way).
            Some(child) => child.request_stop(grace),
            // No process (remote): the attempt is over now.
            None => myself.stop(None),
        }
    }
}

pub struct McpServer;

impl Actor for McpServer {
    type Msg = ServerMsg;
    type State = ServerState;
    type Arguments = ServerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ServerMsg>,
        args: ServerArgs,
    ) -> Result<ServerState, ActorProcessingErr> {
        let ctx = StartContext {
            spec: args.spec.clone(),
            user: args.instance.user.clone(),
            secrets: args.deps.secrets.clone(),
            ports: args.deps.ports.clone(),
            myself: myself.clone(),
            client_name: args.deps.client_name.clone(),
            client_version: args.deps.client_version.clone(),
        };
        let reply_to = myself.clone();
        tokio::spawn(async move {
            let result = start::start(ctx).await;
            // If the actor is gone, dropping the result stops whatever was started.
            let _ = reply_to.send_message(ServerMsg::Started(Box::new(result)));
        });
        Ok(ServerState {
            spec: args.spec,
            entry: args.entry,
            instance: args.instance,
            deps: args.deps,
            phase: Phase::Starting,
            connection: None,
            child: None,
            port: None,
            ready_at: None,
            exit: None,
            stop_replies: Vec::new(),
            refresh_in_flight: false,
            connection_lost: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ServerMsg>,
        message: ServerMsg,
        state: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ServerMsg::Started(result) => on_started(&myself, *result, state),
            ServerMsg::ChildExited {
                description,
                success,
            } => {
                if state.phase == Phase::Stopping {
                    if let Some(exit) = state.exit.as_mut() {
                        // A lost connection is usually the child dying: say how it died.
                        if state.connection_lost {
                            exit.reason = format!("the process {description}");
                        }
                        exit.exit_status.get_or_insert(description);
                    }
                } else {
                    let outcome = ExitOutcome {
                        normal: success,
                        requested: false,
                        reason: format!("the process {description}"),
                        exit_status: Some(description),
                        ran_for: state.ran_for(),
                    };
                    state.exit = Some(outcome);
                    state.phase = Phase::Stopping;
                    state.instance.withdraw();
                }
                myself.stop(None);
            }
            ServerMsg::Connection(event) => on_connection_event(&myself, event, state),
            ServerMsg::Refreshed(kind, result) => on_refreshed(kind, result, state),
            ServerMsg::Stop { reason, reply } => {
                if let Some(reply) = reply {
                    state.stop_replies.push(reply);
                }
                if state.phase == Phase::Stopping {
                    return Ok(());
                }
                let outcome = ExitOutcome {
                    normal: reason.is_none(),
                    requested: reason.is_none(),
                    reason: reason.clone().unwrap_or_else(|| "stopped".into()),
                    exit_status: None,
                    ran_for: state.ran_for(),
                };
                let grace = state.spec.stop_grace;
                state.finish(&myself, outcome, grace);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ServerMsg>,
        state: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        state.instance.withdraw();
        if let Some(mut child) = state.child.take() {
            // Normally the child is already gone; if not (a panic, a kill), stop it now
            // and wait, so that "stopped" really means no process is left.
            child.request_stop(Duration::ZERO);
            let _ =
                tokio::time::timeout(state.spec.stop_grace + Duration::from_secs(2), child.task)
                    .await;
        }
        if let Some(connection) = state.connection.take() {
            connection.close("the server stopped".into());
        }
        if let Some(port) = state.port.take() {
            state.deps.ports.release(port);
        }
        if state.exit.is_none() {
            state.exit = Some(ExitOutcome {
                normal: false,
                requested: false,
                reason: "the server actor stopped unexpectedly".into(),
                exit_status: None,
                ran_for: state.ran_for(),
            });
        }
        for reply in state.stop_replies.drain(..) {
            let _ = reply.send(());
        }
        Ok(())
    }
}

fn on_started(
    myself: &ActorRef<ServerMsg>,
    result: Result<Running, StartFailure>,
    state: &mut ServerState,
) {
    match result {
        Ok(running) => {
            state.child = running.child;
            state.port = running.port;
            state.connection = Some(running.connection.clone());
            if state.phase == Phase::Stopping {
                // A stop arrived while starting: finish it now that there is a child.
                let grace = state.spec.stop_grace;
                let outcome = state.exit.clone().unwrap_or(ExitOutcome {
                    normal: true,
                    requested: true,
                    reason: "stopped".into(),
                    exit_status: None,
                    ran_for: None,
                });
                state.finish(myself, outcome, grace);
                return;
            }
            let tools = running.catalog.tools.len();
            state.phase = Phase::Ready;
            state.ready_at = Some(Instant::now());
            state.instance.publish(running.connection, running.catalog);
            state.instance.update_status(|s| {
                s.state = crate::directory::ServerState::Ready;
                s.pid = running.pid;
                s.tools = tools;
                s.running_since = Some(Instant::now());
                s.started_at = Some(SystemTime::now());
            });
            state.entry.catalog_changed();
            state.publish(EventKind::Ready {
                tools,
                pid: running.pid,
            });
            tracing::info!(server = %state.spec.name, user = state.user().unwrap_or(""), tools, pid = ?running.pid, "server ready");
        }
        Err(failure) => {
            state.child = failure.child;
            state.port = failure.port;
            let outcome = ExitOutcome {
                normal: false,
                requested: false,
                reason: format!("start failed: {}", failure.reason),
                exit_status: None,
                ran_for: None,
            };
            tracing::warn!(server = %state.spec.name, reason = %failure.reason, "server failed to start");
            state.finish(myself, outcome, Duration::ZERO);
        }
    }
}

fn on_connection_event(
    myself: &ActorRef<ServerMsg>,
    event: ConnectionEvent,
    state: &mut ServerState,
) {
    match event {
        ConnectionEvent::Closed { reason } => {
            if state.phase == Phase::Ready {
                let outcome = ExitOutcome {
                    normal: false,
                    requested: false,
                    reason: format!("lost the connection: {reason}"),
                    exit_status: None,
                    ran_for: state.ran_for(),
                };
                // The child has usually exited already; give it a moment to say how.
                state.connection_lost = true;
                state.finish(myself, outcome, Duration::from_millis(500));
            }
        }
        ConnectionEvent::ListChanged(kind) => {
            if state.phase != Phase::Ready || state.refresh_in_flight {
                return;
            }
            let Some(connection) = state.connection.clone() else {
                return;
            };
            state.refresh_in_flight = true;
            let mut catalog = (*state.instance.catalog()).clone();
            let myself = myself.clone();
            let timeout = state.spec.call_timeout;
            tokio::spawn(async move {
                let result = start::fill(&mut catalog, kind, &connection, timeout)
                    .await
                    .map(|_| catalog);
                let _ = myself.send_message(ServerMsg::Refreshed(kind, result));
            });
        }
        ConnectionEvent::Unattributed { method, params } => {
            state.publish(EventKind::Notification { method, params });
        }
    }
}

fn on_refreshed(kind: ListKind, result: Result<Catalog, String>, state: &mut ServerState) {
    state.refresh_in_flight = false;
    let catalog = match result {
        Ok(catalog) => catalog,
        Err(error) => {
            tracing::warn!(server = %state.spec.name, %error, "re-listing after list_changed failed");
            return;
        }
    };
    let before = state.instance.catalog();
    let event = match kind {
        ListKind::Tools => {
            let (added, removed, changed) = diff_by_name(&before.tools, &catalog.tools);
            if added.is_empty() && removed.is_empty() && changed.is_empty() {
                None
            } else {
                Some(EventKind::ToolsChanged {
                    added,
                    removed,
                    changed,
                })
            }
        }
        ListKind::Resources => Some(EventKind::ResourcesChanged),
        ListKind::Prompts => Some(EventKind::PromptsChanged),
    };
    let tools = catalog.tools.len();
    state.instance.set_catalog(catalog);
    state.instance.update_status(|s| s.tools = tools);
    state.entry.catalog_changed();
    if let Some(event) = event {
        state.publish(event);
    }
}

/// Names added, removed, and present in both with a different definition.
pub fn diff_by_name(before: &[Value], after: &[Value]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let name = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let old: std::collections::HashMap<String, &Value> =
        before.iter().map(|v| (name(v), v)).collect();
    let new: std::collections::HashMap<String, &Value> =
        after.iter().map(|v| (name(v), v)).collect();
    let mut added: Vec<String> = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .cloned()
        .collect();
    let mut removed: Vec<String> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    let mut changed: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone())
        .collect();
    added.sort();
    removed.sort();
    changed.sort();
    (added, removed, changed)
}
