//! The admin API: server status, restarts, reloads, and the event stream. Every route
//! authenticates the caller and passes the permission check (`Permission::Admin`).
//!
//! - `GET /admin/servers` — name, kind, state, pid, restarts, last error and exit,
//!   uptime, tool count, calls in flight and queued (per-user instances listed under
//!   their server).
//! - `POST /admin/servers/{name}/restart` — restart now; clears a `failed` state.
//! - `POST /admin/reload` — re-read the profile and reconcile (same as SIGHUP).
//! - `POST /admin/tools/{server}/{tool}/approve` — accept a pinned tool's changed
//!   definition (it was withheld since the upstream changed it).
//! - `GET /events` — lifecycle events as Server-Sent Events (stable JSON shape).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use serde_json::{Value, json};
use warden_actors::directory::{Instance, ServerStatus};
use warden_actors::events::{Delivery, Subscription};
use warden_actors::supervisor::RestartReason;

use super::AppState;
use super::error::ApiError;
use crate::auth::Principal;
use crate::policy::Permission;
use crate::policy::limits::Surface;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/servers", get(list_servers))
        .route("/admin/servers/{name}/restart", post(restart_server))
        .route("/admin/reload", post(reload))
        .route("/admin/tools/{server}/{tool}/approve", post(approve_tool))
        .route("/events", get(events))
}

/// Authenticates and checks `Permission::Admin { action }`; the decision is audited
/// (`permission.decision`), allow or deny.
pub async fn admin_principal(
    app: &AppState,
    headers: &HeaderMap,
    action: &str,
) -> Result<Arc<Principal>, ApiError> {
    let principal = super::authenticate(app, headers).await?;
    check_rate(app, &principal, Surface::Admin).await?;
    let decision = app
        .policy
        .load()
        .check(&principal, &Permission::Admin { action });
    let event =
        crate::policy::decision_event(&principal, &format!("admin/{action}"), action, &decision);
    app.identity.record_event(event).await;
    decision.map_err(|denial| ApiError::Forbidden {
        denial,
        resource_metadata: app.resource_metadata_url(),
    })?;
    Ok(principal)
}

/// The caller's rate limit on `surface` (`rate_limits.<surface>`); a refusal is a
/// `rate_limit.rejected` audit event.
pub(crate) async fn check_rate(
    app: &AppState,
    principal: &Principal,
    surface: Surface,
) -> Result<(), ApiError> {
    let checked =
        app.limits
            .load()
            .check(surface, principal.user_id(), &principal.tier, None, None);
    let Err(limited) = checked else {
        return Ok(());
    };
    let mut event =
        crate::policy::rate_limited_event(principal, surface.as_str(), limited.to_string());
    event.attributes["surface"] = json!(surface.as_str());
    app.identity.record_event(event).await;
    Err(ApiError::RateLimited {
        message: limited.to_string(),
        retry_after_secs: limited.retry_after_secs(),
    })
}

fn describe(status: &ServerStatus) -> Value {
    json!({
        "name": status.name,
        "user": status.user,
        "kind": status.kind,
        "state": status.state,
        "pid": status.pid,
        "restarts": status.restarts,
        "last_error": status.last_error,
        "last_exit": status.last_exit,
        "uptime_secs": status.uptime().map(|d| d.as_secs_f64()),
        "tools": status.tools,
    })
}

async fn list_servers(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin_principal(&app, &headers, "servers.read").await?;
    let servers: Vec<Value> = app
        .tree
        .directory
        .all()
        .iter()
        .map(|entry| {
            let mut server = describe(&entry.shared().status());
            server["in_flight"] = Value::from(entry.limiter.in_flight());
            server["queued"] = Value::from(entry.limiter.waiting());
            let instances: Vec<Value> = entry
                .user_instances()
                .iter()
                .map(|i: &Arc<Instance>| describe(&i.status()))
                .collect();
            if !instances.is_empty() {
                server["instances"] = Value::from(instances);
            }
            server
        })
        .collect();
    Ok(Json(json!({ "servers": servers })))
}

async fn restart_server(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let principal = admin_principal(&app, &headers, "servers.restart").await?;
    if app.tree.directory.get(&name).is_none() {
        return Err(ApiError::NotFound(format!("no server named `{name}`")));
    }
    tracing::info!(server = %name, by = %principal.subject, "operator restart");
    app.tree
        .restart(&name, None, RestartReason::Operator)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({"restarting": name})))
}

async fn reload(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    admin_principal(&app, &headers, "config.reload").await?;
    let diff = app.reload().await.map_err(ApiError::BadRequest)?;
    Ok(Json(json!({ "reloaded": true, "servers": diff })))
}

async fn events(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let principal = admin_principal(&app, &headers, "events.read").await?;
    let buffer = app.config.load().server.event_buffer;
    let subscription = app
        .tree
        .events
        .subscribe("sse", buffer)
        .await
        .ok_or_else(|| ApiError::Unavailable("the event bus is not running".into()))?;
    let listener = Listener {
        subscription,
        subject: principal.subject.clone(),
        recheck: super::Recheck::new(app, headers),
    };
    Ok(Sse::new(event_stream(listener)).keep_alive(KeepAlive::default()))
}

/// One open `/events` stream: its subscription, and who opened it with what.
struct Listener {
    subscription: Subscription,
    subject: String,
    recheck: super::Recheck,
}

/// The bus's deliveries as SSE, until the caller may no longer read them (checked every
/// [`super::STREAM_RECHECK`]: the credential, and that it still grants `events.read`). A
/// reader that falls behind gets a `lagged` event with the number of events it missed
/// (`{"lost": n}`) as soon as the loss is counted (possibly ahead of events still
/// buffered from before it).
fn event_stream(listener: Listener) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(listener, |mut listener| async move {
        loop {
            tokio::select! {
                delivery = listener.subscription.recv() => {
                    let sse = match delivery? {
                        Delivery::Event(event) => SseEvent::default()
                            .event(event.name())
                            .data(serde_json::to_string(&*event).unwrap_or_default()),
                        Delivery::Lagged(lost) => SseEvent::default()
                            .event("lagged")
                            .data(json!({ "lost": lost }).to_string()),
                    };
                    return Some((Ok(sse), listener));
                }
                principal = listener.recheck.next() => {
                    let allowed = principal.is_some_and(|principal| {
                        let action = "events.read";
                        let policy = listener.recheck.app().policy.load();
                        policy.check(&principal, &Permission::Admin { action }).is_ok()
                    });
                    if !allowed {
                        tracing::info!(
                            subject = %listener.subject,
                            "an /events stream ended: its caller may no longer read it"
                        );
                        return None;
                    }
                }
            }
        }
    })
}

/// What an approval may say: `hash`, the definition the operator reviewed (its SHA-256 as
/// `warden export` shows it in `pending_hash`).
#[derive(serde::Deserialize)]
struct ApproveQuery {
    hash: Option<String>,
}

/// `POST /admin/tools/{server}/{tool}/approve[?hash=…]`: serves the changed definition
/// withheld since it changed. With `hash`, only if that is still the definition withheld
/// (the upstream may have changed it again since it was reviewed).
async fn approve_tool(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((server, tool)): Path<(String, String)>,
    Query(query): Query<ApproveQuery>,
) -> Result<Json<Value>, ApiError> {
    let principal = admin_principal(&app, &headers, "tools.approve").await?;
    let entry = app
        .tree
        .directory
        .get(&server)
        .ok_or_else(|| ApiError::NotFound(format!("no server named `{server}`")))?;
    let catalog = crate::gateway::routes::catalog_of(&entry)
        .ok_or_else(|| ApiError::Unavailable(format!("server `{server}` is not ready")))?;
    let definition = catalog
        .tool(&tool)
        .ok_or_else(|| ApiError::NotFound(format!("server `{server}` has no tool `{tool}`")))?;
    let current = crate::gateway::pins::definition_hash(definition);
    if let Some(reviewed) = &query.hash
        && !reviewed.eq_ignore_ascii_case(&current)
    {
        return Err(ApiError::Conflict(format!(
            "tool `{tool}` of `{server}` now has the definition {current}, not the {reviewed} \
             reviewed: the server changed it again; review the current one"
        )));
    }
    match app.gateway.pins.approve(&server, &tool, definition).await {
        Ok(()) => {}
        Err(crate::gateway::pins::ApproveError::NothingPending) => {
            return Err(ApiError::Conflict(format!(
                "tool `{tool}` of `{server}` has no change awaiting approval"
            )));
        }
        Err(error) => return Err(ApiError::Unavailable(error.to_string())),
    }
    // The tool is listed again: clients that can see the server hear so.
    app.gateway
        .announce_list_changed(&app.policy.load(), &server, "tools");
    let event = crate::gateway::pins::approval_event(
        principal.actor_kind(),
        principal.user_id(),
        &server,
        &tool,
        definition,
        None,
    );
    // The approval is stored and served: its row is kept like a completed call's, and
    // a refusal is logged rather than answered as if nothing had been approved.
    if let Err(refused) = app
        .audit
        .record_completed(warden_actors::audit::AuditRecord::Event(Box::new(event)))
        .await
    {
        tracing::error!(%server, %tool, error = %refused, "a tool approval was made but its audit row was refused");
    }
    tracing::info!(%server, %tool, by = %principal.subject, "tool definition approved");
    Ok(Json(json!({ "approved": format!("{server}/{tool}") })))
}
