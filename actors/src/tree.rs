//! The RootSupervisor and [`Tree`], the handle the rest of Warden holds.
//!
//! ```text
//! RootSupervisor
//! ├── EventBus           lifecycle events → subscribers
//! ├── PortManager        loopback ports for HTTP children
//! ├── ServersSupervisor  one McpServer per server (and per user, when isolated)
//! ├── HealthMonitor      pings; repeated failure → restart through the supervisor
//! └── Reconciler         profile → running servers
//! ```
//!
//! **Start order** is the list above; **stop order** is the reverse, and the servers are
//! stopped politely (each child gets its `stop_grace`) before anything else goes.
//!
//! **Strategy:** escalate. The core actors hold no state that can be rebuilt piecemeal
//! (handles to them are spread through Warden), so a crash of one — always a bug — stops
//! the tree, [`Tree::failed`] resolves, and `warden serve` exits non-zero for its service
//! manager to restart. Upstream servers, the failures that happen in production, are
//! supervised one level down with restarts and backoff.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::directory::{Directory, Instance};
use crate::events::{EventBus, EventBusActor};
use crate::health::{HealthArgs, HealthMonitor, HealthMsg};
use crate::ports::{PortManager, PortManagerActor};
use crate::reconciler::{Diff, Reconciler, ReconcilerArgs, ReconcilerMsg};
use crate::secrets::SecretSource;
use crate::server::ServerDeps;
use crate::spec::ServerSpec;
use crate::supervisor::{RestartReason, ServersSupervisor, SupervisorArgs, SupervisorMsg};

#[derive(Debug, Error)]
pub enum TreeError {
    #[error("cannot start the {actor}: {error}")]
    Spawn { actor: &'static str, error: String },
    #[error("the {actor} did not answer: {error}")]
    Unresponsive { actor: &'static str, error: String },
    #[error("{0}")]
    Refused(String),
}

pub struct TreeConfig {
    pub specs: Vec<ServerSpec>,
    pub secrets: Arc<dyn SecretSource>,
    /// How Warden introduces itself to upstreams (`clientInfo`).
    pub client_name: String,
    pub client_version: String,
}

/// The running tree. Cloning gives another handle to the same tree.
#[derive(Clone)]
pub struct Tree {
    pub directory: Arc<Directory>,
    pub events: EventBus,
    servers: ActorRef<SupervisorMsg>,
    reconciler: ActorRef<ReconcilerMsg>,
    root: ActorRef<()>,
    failed: CancellationToken,
}

impl Tree {
    pub async fn start(config: TreeConfig) -> Result<Tree, TreeError> {
        let directory = Directory::new();
        let failed = CancellationToken::new();
        let (root, _) = Actor::spawn(None, RootSupervisor, failed.clone())
            .await
            .map_err(|e| spawn_error("root supervisor", e))?;
        let cell = root.get_cell();
        let (bus, _) = Actor::spawn_linked(None, EventBusActor, (), cell.clone())
            .await
            .map_err(|e| spawn_error("event bus", e))?;
        let events = EventBus::new(bus);
        let (ports, _) = Actor::spawn_linked(None, PortManagerActor, (), cell.clone())
            .await
            .map_err(|e| spawn_error("port manager", e))?;
        let deps = ServerDeps {
            secrets: config.secrets,
            ports: PortManager::new(ports),
            events: events.clone(),
            client_name: config.client_name,
            client_version: config.client_version,
        };
        let (servers, _) = Actor::spawn_linked(
            None,
            ServersSupervisor,
            SupervisorArgs {
                specs: config.specs.into_iter().map(Arc::new).collect(),
                directory: directory.clone(),
                deps,
            },
            cell.clone(),
        )
        .await
        .map_err(|e| spawn_error("servers supervisor", e))?;
        let (_health, _): (ActorRef<HealthMsg>, _) = Actor::spawn_linked(
            None,
            HealthMonitor,
            HealthArgs {
                directory: directory.clone(),
                supervisor: servers.clone(),
            },
            cell.clone(),
        )
        .await
        .map_err(|e| spawn_error("health monitor", e))?;
        let (reconciler, _) = Actor::spawn_linked(
            None,
            Reconciler,
            ReconcilerArgs {
                supervisor: servers.clone(),
                directory: directory.clone(),
                events: events.clone(),
            },
            cell,
        )
        .await
        .map_err(|e| spawn_error("reconciler", e))?;
        Ok(Tree {
            directory,
            events,
            servers,
            reconciler,
            root,
            failed,
        })
    }

    /// Applies a new desired set of servers; returns what changed.
    pub async fn reconcile(&self, desired: Vec<ServerSpec>) -> Result<Diff, TreeError> {
        ractor::call_t!(
            self.reconciler,
            |reply| ReconcilerMsg::Reconcile {
                desired,
                reply: Some(reply)
            },
            300_000
        )
        .map_err(|e| TreeError::Unresponsive {
            actor: "reconciler",
            error: e.to_string(),
        })?
        .map_err(TreeError::Refused)
    }

    /// Restarts a server (an operator's request clears a `failed` state).
    pub async fn restart(
        &self,
        server: &str,
        user: Option<&str>,
        reason: RestartReason,
    ) -> Result<(), TreeError> {
        let server = server.to_owned();
        let user = user.map(str::to_owned);
        ractor::call_t!(
            self.servers,
            |reply| SupervisorMsg::Restart {
                server,
                user,
                reason,
                reply: Some(reply)
            },
            10_000
        )
        .map_err(|e| TreeError::Unresponsive {
            actor: "servers supervisor",
            error: e.to_string(),
        })?
        .map_err(TreeError::Refused)
    }

    /// The instance serving `user` on a per-user server (spawned on first use), or the
    /// shared instance otherwise. Does not wait for it to be ready.
    pub async fn instance_for(&self, server: &str, user: &str) -> Result<Arc<Instance>, TreeError> {
        let server = server.to_owned();
        let user = user.to_owned();
        ractor::call_t!(
            self.servers,
            |reply| SupervisorMsg::EnsureUser {
                server,
                user,
                reply
            },
            10_000
        )
        .map_err(|e| TreeError::Unresponsive {
            actor: "servers supervisor",
            error: e.to_string(),
        })?
        .map_err(TreeError::Refused)
    }

    /// The root supervisor, for actors outside this crate that join the tree (the
    /// SessionsSupervisor, the AuditWriter).
    pub fn root_cell(&self) -> ractor::ActorCell {
        self.root.get_cell()
    }

    /// Resolves if a core actor crashed and the tree stopped.
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// Stops the servers in reverse order (each politely), then the rest of the tree.
    pub async fn shutdown(&self) {
        let budget = self
            .directory
            .all()
            .iter()
            .map(|e| e.spec().stop_grace + Duration::from_secs(5))
            .sum::<Duration>()
            + Duration::from_secs(5);
        if ractor::call_t!(
            self.servers,
            SupervisorMsg::StopAll,
            budget.as_millis() as u64
        )
        .is_err()
        {
            tracing::warn!("servers did not all stop in time");
        }
        // The root is stopping on purpose: its children's exits are not failures.
        self.failed.cancel();
        let _ = self
            .root
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await;
    }
}

fn spawn_error(actor: &'static str, error: ractor::SpawnErr) -> TreeError {
    TreeError::Spawn {
        actor,
        error: error.to_string(),
    }
}

struct RootSupervisor;

impl Actor for RootSupervisor {
    type Msg = ();
    type State = CancellationToken;
    type Arguments = CancellationToken;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        failed: CancellationToken,
    ) -> Result<CancellationToken, ActorProcessingErr> {
        Ok(failed)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        failed: &mut CancellationToken,
    ) -> Result<(), ActorProcessingErr> {
        let reason = match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                format!("{:?} panicked: {error}", cell.get_id())
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                format!(
                    "{:?} stopped: {}",
                    cell.get_id(),
                    reason.unwrap_or_default()
                )
            }
            _ => return Ok(()),
        };
        if !failed.is_cancelled() {
            tracing::error!(%reason, "a core actor of the supervision tree stopped; stopping the tree");
            failed.cancel();
            myself.stop(Some(reason));
        }
        Ok(())
    }
}
