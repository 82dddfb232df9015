//! The HealthMonitor actor: pings every ready upstream on its `health.interval` with
//! `health.timeout`, and reports to the ServersSupervisor, which marks the server
//! unhealthy and, after `failures_before_restart` consecutive failures, restarts it.
//! A server that hangs without exiting is caught here.
//!
//! **Owns:** per-instance check bookkeeping (consecutive failures, next due time, the
//! connection it was measured on — a new connection starts a fresh count).
//! **Messages:** `Tick` (its own timer), `Checked { .. }` (a ping task finished).
//! **On failure:** the root escalates (see `tree.rs`); checks resume with fresh counts.
//!
//! Pings run as tasks; the actor never waits on the network inside `handle`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::directory::{Directory, Instance, ServerState};
use crate::supervisor::{ChildKey, SupervisorMsg};
use crate::upstream::CallOptions;

/// How often the monitor looks at the directory; checks themselves follow each server's
/// own interval.
pub const TICK: Duration = Duration::from_millis(100);

pub enum HealthMsg {
    Tick,
    Checked {
        key: ChildKey,
        connection: usize,
        outcome: Result<(), String>,
    },
}

pub struct HealthArgs {
    pub directory: Arc<Directory>,
    pub supervisor: ActorRef<SupervisorMsg>,
}

struct Check {
    failures: u32,
    next_due: Instant,
    in_flight: bool,
    connection: usize,
}

pub struct HealthState {
    directory: Arc<Directory>,
    supervisor: ActorRef<SupervisorMsg>,
    checks: HashMap<ChildKey, Check>,
}

pub struct HealthMonitor;

impl Actor for HealthMonitor {
    type Msg = HealthMsg;
    type State = HealthState;
    type Arguments = HealthArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HealthMsg>,
        args: HealthArgs,
    ) -> Result<HealthState, ActorProcessingErr> {
        myself.send_interval(TICK, || HealthMsg::Tick);
        Ok(HealthState {
            directory: args.directory,
            supervisor: args.supervisor,
            checks: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HealthMsg>,
        message: HealthMsg,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HealthMsg::Tick => tick(&myself, state),
            HealthMsg::Checked {
                key,
                connection,
                outcome,
            } => {
                let Some(check) = state.checks.get_mut(&key) else {
                    return Ok(());
                };
                check.in_flight = false;
                if check.connection != connection {
                    return Ok(()); // measured on a connection that is gone
                }
                let report = match outcome {
                    Ok(()) if check.failures == 0 => None,
                    Ok(()) => {
                        check.failures = 0;
                        Some((0, None))
                    }
                    Err(error) => {
                        check.failures += 1;
                        Some((check.failures, Some(error)))
                    }
                };
                if let Some((failures, error)) = report {
                    let _ = state.supervisor.send_message(SupervisorMsg::Health {
                        key,
                        failures,
                        error,
                    });
                }
            }
        }
        Ok(())
    }
}

fn tick(myself: &ActorRef<HealthMsg>, state: &mut HealthState) {
    let now = Instant::now();
    let mut seen = Vec::new();
    for entry in state.directory.all().iter() {
        let spec = entry.spec();
        let mut instances: Vec<Arc<Instance>> = vec![entry.shared().clone()];
        instances.extend(entry.user_instances());
        for instance in instances {
            let key = ChildKey {
                server: entry.name.to_string(),
                user: instance.user.clone(),
            };
            let status = instance.status();
            let Some(connection) = instance.connection() else {
                continue;
            };
            if !matches!(status.state, ServerState::Ready | ServerState::Unhealthy) {
                continue;
            }
            seen.push(key.clone());
            let identity = Arc::as_ptr(&connection) as usize;
            let check = state.checks.entry(key.clone()).or_insert(Check {
                failures: 0,
                next_due: now + spec.health.interval,
                in_flight: false,
                connection: identity,
            });
            if check.connection != identity {
                *check = Check {
                    failures: 0,
                    next_due: now + spec.health.interval,
                    in_flight: false,
                    connection: identity,
                };
            }
            if check.in_flight || now < check.next_due {
                continue;
            }
            check.in_flight = true;
            check.next_due = now + spec.health.interval;
            let timeout = spec.health.timeout;
            let myself = myself.clone();
            tokio::spawn(async move {
                let options = CallOptions {
                    timeout: Some(timeout),
                    ..CallOptions::default()
                };
                let outcome = connection
                    .call("ping", None, options)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("ping: {e}"));
                let _ = myself.send_message(HealthMsg::Checked {
                    key,
                    connection: identity,
                    outcome,
                });
            });
        }
    }
    state.checks.retain(|key, _| seen.contains(key));
}
