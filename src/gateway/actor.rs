//! The Gateway actor: the control plane of the MCP gateway.
//!
//! **Owns:** the reaction to catalog changes — when a server becomes ready, stops, fails,
//! or its tools, resources or prompts change, it tells every session and listen stream
//! that may see that server (`notifications/*/list_changed`) and rebuilds the routing
//! table ahead of the next call. It also passes an upstream's
//! `notifications/resources/updated` to the sessions subscribed to that resource, and
//! renews Warden's resource subscriptions at a server that (re)started. The data plane (a tool call) never goes through its
//! mailbox: calls read the published table and the directory directly (see `mod.rs`).
//!
//! **Messages:** `Event(event)` — a lifecycle event from the EventBus (forwarded from a
//! bounded subscription, one at a time: the forwarding task waits until each is handled,
//! wrapped in `Forwarded`, so a slow gateway's backlog stays in that subscription's
//! `server.event_buffer` and not in the unbounded mailbox); `Lagged(n)` — the bus dropped `n` events for it, so it
//! catches up from current state (`Gateway::catch_up`): every client hears that its
//! lists may have changed and every subscribed resource that it may have been updated,
//! and the subscriptions of a server that restarted unseen are renewed — at most once a
//! second, further gaps folded into one catch-up put off until then (`CatchUp`). A
//! lagging gateway costs clients a re-list and a re-read; calls never depend on it.
//!
//! **On failure:** it is linked under the root supervisor, which escalates (Warden exits
//! for its service manager to restart it). Routing never depends on it: the table is
//! also rebuilt lazily when it is stale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use warden_actors::events::{Delivery, Event, EventBus, EventKind};

use super::{Gateway, LIST_KINDS};
use crate::config::Config;
use crate::policy::PolicyEngine;

pub enum GatewayMsg {
    Event(Arc<Event>),
    /// The bus dropped this many events for the gateway: catch up from current state.
    Lagged(u64),
    /// A catch-up put off to keep them [`CATCH_UP_INTERVAL`] apart.
    CatchUp,
    /// An `Event` or `Lagged` from the bus subscription, answered once handled: the
    /// forwarding task waits for it, so a gateway that falls behind leaves its backlog
    /// in the bounded subscription (`server.event_buffer`), where the bus counts what it
    /// drops, and not in the actor's unbounded mailbox.
    Forwarded {
        delivery: Delivery,
        handled: RpcReplyPort<()>,
    },
}

/// Catch-ups are at least this far apart: under a load that makes the gateway lag again
/// and again, clients re-list and re-read once a second, not once per gap. Gaps in the
/// meantime are covered by the one put off, which runs when the interval is over.
const CATCH_UP_INTERVAL: Duration = Duration::from_secs(1);

pub struct GatewayState {
    args: GatewayArgs,
    last_catch_up: Option<Instant>,
    catch_up_due: bool,
}

impl GatewayState {
    fn catch_up(&mut self) {
        self.catch_up_due = false;
        self.last_catch_up = Some(Instant::now());
        self.args.gateway.catch_up(&self.args.policy.load());
    }

    /// Catches up now, or once [`CATCH_UP_INTERVAL`] has passed since the last time.
    fn catch_up_soon(&mut self, myself: &ActorRef<GatewayMsg>) {
        let since = self.last_catch_up.map(|at| at.elapsed());
        match since {
            Some(since) if since < CATCH_UP_INTERVAL => {
                if !self.catch_up_due {
                    self.catch_up_due = true;
                    drop(myself.send_after(CATCH_UP_INTERVAL - since, || GatewayMsg::CatchUp));
                }
            }
            _ => self.catch_up(),
        }
    }
}

pub struct GatewayArgs {
    pub gateway: Arc<Gateway>,
    pub policy: Arc<ArcSwap<PolicyEngine>>,
    pub config: Arc<ArcSwap<Config>>,
}

pub struct GatewayActor;

impl Actor for GatewayActor {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        args.gateway.note_running_instances();
        Ok(GatewayState {
            args,
            last_catch_up: None,
            catch_up_due: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GatewayMsg>,
        message: GatewayMsg,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        react(&myself, message, state)
    }
}

/// Handles one message (the body of `handle`); a forwarded delivery is handled as the
/// message it carries, then answered.
fn react(
    myself: &ActorRef<GatewayMsg>,
    message: GatewayMsg,
    state: &mut GatewayState,
) -> Result<(), ActorProcessingErr> {
    let event = match message {
        GatewayMsg::Event(event) => event,
        GatewayMsg::Lagged(lost) => {
            tracing::warn!(
                lost,
                "the gateway fell behind the event bus; catching up from current state"
            );
            state.catch_up_soon(myself);
            return Ok(());
        }
        GatewayMsg::Forwarded { delivery, handled } => {
            let message = match delivery {
                Delivery::Event(event) => GatewayMsg::Event(event),
                Delivery::Lagged(lost) => GatewayMsg::Lagged(lost),
            };
            let outcome = react(myself, message, state);
            let _ = handled.send(());
            return outcome;
        }
        GatewayMsg::CatchUp => {
            // A gap handled after this one's time came may have caught up already.
            if state.catch_up_due {
                state.catch_up();
            }
            return Ok(());
        }
    };
    let state = &mut state.args;
    let Some(server) = event.server.as_deref() else {
        return Ok(());
    };
    // Subscriptions live on shared instances only: a per-user instance's update
    // says nothing about anyone else's resource.
    if let EventKind::Notification { method, params } = &event.kind
        && method == "notifications/resources/updated"
        && event.user.is_none()
    {
        state
            .gateway
            .announce_resource_updated(&state.policy.load(), server, params);
        return Ok(());
    }
    if let EventKind::Ready { .. } = event.kind
        && event.user.is_none()
    {
        state.gateway.renew_subscriptions(server);
    }
    let kinds: &[&str] = match event.kind {
        EventKind::ToolsChanged { .. } => &["tools"],
        EventKind::ResourcesChanged => &["resources"],
        EventKind::PromptsChanged => &["prompts"],
        EventKind::Ready { .. } | EventKind::Stopped { .. } | EventKind::Failed { .. } => {
            &LIST_KINDS
        }
        _ => &[],
    };
    if kinds.is_empty() {
        return Ok(());
    }
    // Rebuild now, so the next call does not pay for it.
    state.gateway.routes(&state.config.load());
    let policy = state.policy.load();
    for kind in kinds {
        state.gateway.announce_list_changed(&policy, server, kind);
    }
    Ok(())
}

/// Starts the Gateway actor under `parent` and feeds it the EventBus, through a
/// subscription holding up to `server.event_buffer` events.
pub async fn start(
    args: GatewayArgs,
    events: &EventBus,
    parent: ActorCell,
) -> Result<ActorRef<GatewayMsg>, String> {
    let buffer = args.config.load().server.event_buffer;
    let (actor, _) = Actor::spawn_linked(None, GatewayActor, args, parent)
        .await
        .map_err(|e| format!("cannot start the gateway actor: {e}"))?;
    let mut subscription = events
        .subscribe("gateway", buffer)
        .await
        .ok_or_else(|| "the event bus is not running".to_owned())?;
    let forward_to = actor.clone();
    tokio::spawn(async move {
        while let Some(delivery) = subscription.recv().await {
            let handled = forward_to
                .call(|handled| GatewayMsg::Forwarded { delivery, handled }, None)
                .await;
            if handled.is_err() {
                return;
            }
        }
    });
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use warden_actors::audit::{Audit, Backlog};
    use warden_actors::secrets::NoSecrets;
    use warden_actors::tree::{Tree, TreeConfig};

    use super::*;
    use crate::auth::{Principal, PrincipalKind, Scopes};
    use crate::gateway::pins::Pins;
    use crate::gateway::session::{NewSession, Session, SessionLimits, SessionManager};
    use crate::gateway::subscriptions::Resource;

    const WAIT: Duration = Duration::from_secs(10);

    fn principal(subject: &str, scopes: &str) -> Arc<Principal> {
        Arc::new(Principal {
            subject: subject.into(),
            scopes: Scopes::parse(scopes),
            kind: PrincipalKind::User,
            ..Principal::anonymous()
        })
    }

    /// The method of the next message on a session's stream.
    async fn next_method(stream: &mut mpsc::Receiver<(u64, Arc<str>)>) -> String {
        let (_, data) = tokio::time::timeout(WAIT, stream.recv())
            .await
            .expect("a message in time")
            .expect("the stream is open");
        let message: Value = serde_json::from_str(&data).expect("JSON");
        let method = message["method"].as_str().unwrap_or_default().to_owned();
        if method == "notifications/resources/updated" {
            format!(
                "{method} {}",
                message["params"]["uri"].as_str().unwrap_or_default()
            )
        } else {
            method
        }
    }

    async fn next_methods(stream: &mut mpsc::Receiver<(u64, Arc<str>)>, n: usize) -> Vec<String> {
        let mut methods = Vec::with_capacity(n);
        for _ in 0..n {
            methods.push(next_method(stream).await);
        }
        methods.sort();
        methods
    }

    /// What the bus does only when the gateway falls behind (not on cue), sent straight
    /// to the actor: a lost-events report, and another one within the catch-up interval. Each is caught up (the second one later; that
    /// it waits is not asserted, which would take an injectable clock).
    #[tokio::test]
    async fn a_gap_in_the_events_is_caught_up_from_current_state_and_so_is_a_second_one() {
        let config = Config::parse(
            "servers:\n  srv:\n    command: x\n    scopes: [files:read]\n",
            "t.yaml",
            &|_| None,
        )
        .expect("a valid profile");
        let policy = PolicyEngine::from_config(&config);
        let tree = Tree::start(TreeConfig {
            specs: Vec::new(),
            secrets: Arc::new(NoSecrets),
            client_name: "test".into(),
            client_version: "0".into(),
        })
        .await
        .expect("the tree starts");
        let sessions = SessionManager::start(
            SessionLimits {
                idle_timeout: Duration::from_secs(600),
                max_total: 10,
                max_per_principal: 10,
            },
            None,
        )
        .await
        .expect("the sessions supervisor starts");
        let (audit, _queue) = Audit::channel(16, Backlog::FailClosed);
        let pool = crate::db::pool(tokio_postgres::Config::new(), 1, Duration::from_secs(1))
            .expect("a pool (never used: no quotas here)");
        let gateway = Arc::new(Gateway::new(
            tree.clone(),
            Arc::new(Pins::in_memory()),
            sessions.clone(),
            audit,
            pool,
        ));
        let open = |subject: &'static str, scopes: &'static str| {
            let sessions = sessions.clone();
            async move {
                sessions
                    .create(NewSession {
                        principal: principal(subject, scopes),
                        protocol_version: "2025-11-25".into(),
                        client_info: json!({}),
                        client_capabilities: json!({}),
                        scope: None,
                    })
                    .await
                    .expect("a session")
            }
        };
        let reader = open("alice", "files:read").await;
        let outsider = open("mallory", "other").await;
        let neighbour = open("bob", "files:read").await;
        let mut alice = reader.open_stream(None);
        let mut mallory = outsider.open_stream(None);
        let mut bob = neighbour.open_stream(None);
        let resource = |uri: &str| Resource {
            server: "srv".into(),
            uri: uri.into(),
        };
        let subscribe = |uri: &str, session: &Session| {
            gateway
                .subscriptions
                .add(&resource(uri), &session.id, 10)
                .expect("room for a subscription");
        };
        subscribe("file:///doc", &reader);
        subscribe("file:///doc", &outsider);
        // Alice holds a folder, Bob a file in it: each hears of what it holds, and
        // Alice not of Bob's file.
        subscribe("file:///dir/", &reader);
        subscribe("file:///dir/notes", &neighbour);

        let actor = start(
            GatewayArgs {
                gateway: gateway.clone(),
                policy: Arc::new(ArcSwap::from_pointee(policy)),
                config: Arc::new(ArcSwap::from_pointee(config)),
            },
            &tree.events,
            tree.root_cell(),
        )
        .await
        .expect("the gateway actor starts");
        actor.send_message(GatewayMsg::Lagged(5)).expect("sent");
        actor.send_message(GatewayMsg::Lagged(7)).expect("sent");

        // At once: every list may have changed, and the subscribed resource may have
        // been updated — told only to whoever may read it.
        let lists = [
            "notifications/prompts/list_changed",
            "notifications/resources/list_changed",
            "notifications/tools/list_changed",
        ];
        let updated = |uris: &[&str]| {
            let mut methods: Vec<String> = lists.iter().map(|m| m.to_string()).collect();
            methods.extend(
                uris.iter()
                    .map(|uri| format!("notifications/resources/updated {uri}")),
            );
            methods.sort();
            methods
        };
        let to_alice = updated(&["file:///doc", "file:///dir/"]);
        let to_bob = updated(&["file:///dir/notes"]);
        // Read as many as each should get, twice: a message too many in the first gap
        // shows up in the second's.
        assert_eq!(next_methods(&mut alice, 5).await, to_alice);
        assert_eq!(next_methods(&mut bob, 4).await, to_bob);
        assert_eq!(next_methods(&mut mallory, 3).await, lists);
        // The second gap, within the interval, is caught up too: put off until the
        // interval is over (which this test, on the real clock, does not time).
        assert_eq!(next_methods(&mut alice, 5).await, to_alice);
        assert_eq!(next_methods(&mut bob, 4).await, to_bob);
        assert_eq!(next_methods(&mut mallory, 3).await, lists);
        // Nothing more: a marker sent now is what each stream hears next.
        let marker = json!({"jsonrpc": "2.0", "method": "test/marker"}).to_string();
        sessions.broadcast(Arc::from(marker), |_| true);
        for stream in [&mut alice, &mut bob, &mut mallory] {
            assert_eq!(next_method(stream).await, "test/marker");
        }

        actor.stop(None);
        tree.shutdown().await;
    }
}
