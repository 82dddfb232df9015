//! The Reconciler actor: drives the running servers to the profile's desired set.
//!
//! On a reload (SIGHUP or `POST /admin/reload`) it compares desired specs with the
//! supervised ones by name: new names are added, missing names removed, names whose spec
//! differs in any way replaced (stopped, then started with the new definition). Servers
//! whose spec is equal are left alone, in-flight calls included. It emits
//! `ReconciliationStarted` and `ReconciliationCompleted` with the diff.
//!
//! **Owns:** nothing but the order of work: reconciliations run one at a time, so two
//! quick reloads cannot interleave.
//! **Messages:** `Reconcile { desired, reply }` → the [`Diff`] that was applied.
//! **On failure:** the root escalates (see `tree.rs`); a reload can be repeated safely
//! because reconciling is idempotent.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::directory::Directory;
use crate::events::{Event, EventBus, EventKind};
use crate::spec::ServerSpec;
use crate::supervisor::SupervisorMsg;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Compares by name; order of the result follows the desired order.
pub fn diff(current: &[Arc<ServerSpec>], desired: &[ServerSpec]) -> Diff {
    let mut result = Diff::default();
    for spec in desired {
        match current.iter().find(|c| c.name == spec.name) {
            None => result.added.push(spec.name.clone()),
            Some(existing) if **existing == *spec => result.unchanged.push(spec.name.clone()),
            Some(_) => result.changed.push(spec.name.clone()),
        }
    }
    for spec in current {
        if !desired.iter().any(|d| d.name == spec.name) {
            result.removed.push(spec.name.clone());
        }
    }
    result
}

pub enum ReconcilerMsg {
    Reconcile {
        desired: Vec<ServerSpec>,
        reply: Option<RpcReplyPort<Result<Diff, String>>>,
    },
}

pub struct ReconcilerArgs {
    pub supervisor: ActorRef<SupervisorMsg>,
    pub directory: Arc<Directory>,
    pub events: EventBus,
}

pub struct Reconciler;

/// Generous bound on one step: a removal waits for the child's stop grace.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

impl Actor for Reconciler {
    type Msg = ReconcilerMsg;
    type State = ReconcilerArgs;
    type Arguments = ReconcilerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ReconcilerMsg>,
        args: ReconcilerArgs,
    ) -> Result<ReconcilerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ReconcilerMsg>,
        message: ReconcilerMsg,
        state: &mut ReconcilerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let ReconcilerMsg::Reconcile { desired, reply } = message;
        let result = reconcile(state, desired).await;
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        Ok(())
    }
}

async fn reconcile(state: &ReconcilerArgs, desired: Vec<ServerSpec>) -> Result<Diff, String> {
    let timeout_ms = STEP_TIMEOUT.as_millis() as u64;
    let current = ractor::call_t!(state.supervisor, SupervisorMsg::Specs, timeout_ms)
        .map_err(|e| format!("the servers supervisor did not answer: {e}"))?;
    let diff = diff(&current, &desired);
    state
        .events
        .publish(Event::global(EventKind::ReconciliationStarted));
    tracing::info!(added = ?diff.added, removed = ?diff.removed, changed = ?diff.changed, "reconciling servers");
    for name in &diff.removed {
        let name = name.clone();
        ractor::call_t!(
            state.supervisor,
            |reply| SupervisorMsg::Remove {
                name,
                reply: Some(reply)
            },
            timeout_ms
        )
        .map_err(|e| format!("removing a server failed: {e}"))?;
    }
    for spec in &desired {
        if diff.changed.contains(&spec.name) {
            let spec = Arc::new(spec.clone());
            ractor::call_t!(
                state.supervisor,
                |reply| SupervisorMsg::Replace {
                    spec,
                    reply: Some(reply)
                },
                timeout_ms
            )
            .map_err(|e| format!("replacing a server failed: {e}"))?;
        } else if diff.added.contains(&spec.name) {
            state
                .supervisor
                .send_message(SupervisorMsg::Add(Arc::new(spec.clone())))
                .map_err(|e| format!("adding a server failed: {e}"))?;
        }
    }
    let order: Vec<String> = desired.iter().map(|s| s.name.clone()).collect();
    // The supervisor processes Add before anything sent later, so a Specs round trip
    // guarantees the directory holds every added entry before it is reordered.
    let _ = ractor::call_t!(state.supervisor, SupervisorMsg::Specs, timeout_ms);
    state.directory.reorder(&order);
    state
        .events
        .publish(Event::global(EventKind::ReconciliationCompleted {
            added: diff.added.clone(),
            removed: diff.removed.clone(),
            changed: diff.changed.clone(),
            unchanged: diff.unchanged.clone(),
        }));
    Ok(diff)
}
