//! `POST /hooks/{event}`: clients report the lifecycle moments that happen on their side
//! (`UserPromptSubmit`, `Notification`, `Stop`, `SubagentStart`, `SubagentStop`) and get the
//! hooks' decision back, so a Claude Code-style client can be governed by the same hooks
//! as tool calls. Authenticated, permission-checked (`hooks:report`), rate-limited, and
//! every hook's outcome is audited on the request's trace.
//!
//! Body: any JSON (the event's payload). Answer: `{"decision": "allow"|"deny",
//! "reason": …, "payload": …}` — `payload` when a hook rewrote it.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use warden_actors::trace::TraceContext;

use super::AppState;
use super::error::ApiError;
use crate::gateway::CallContext;
use crate::policy::Permission;
use crate::policy::hooks::{HookContext, HookEvent};
use crate::policy::limits::Surface;

pub fn routes() -> Router<AppState> {
    Router::new().route("/hooks/{event}", post(report))
}

async fn report(
    State(app): State<AppState>,
    Path(event): Path<String>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let principal = super::authenticate(&app, &headers).await?;
    let rules = app.rules();
    rules
        .policy
        .check(&principal, &Permission::ReportEvent { event: &event })
        .map_err(|denial| ApiError::Forbidden {
            denial,
            resource_metadata: app.resource_metadata_url(),
        })?;
    rules
        .limits
        .check(
            Surface::Mcp,
            principal.user_id(),
            &principal.tier,
            None,
            None,
        )
        .map_err(|limited| ApiError::RateLimited {
            message: limited.to_string(),
            retry_after_secs: limited.retry_after_secs(),
        })?;
    let hook_event = HookEvent::parse(&event)
        .filter(|e| e.client_reported())
        .ok_or_else(|| {
            let names: Vec<&str> = HookEvent::ALL
                .iter()
                .filter(|e| e.client_reported())
                .map(|e| e.as_str())
                .collect();
            ApiError::NotFound(format!(
                "`{event}` is not an event clients report; expected one of {}",
                names.join(", ")
            ))
        })?;
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .map(|t| t.child())
        .unwrap_or_else(TraceContext::generate);
    let session_id = super::claimed_session(&app, &headers, &principal);
    let context = HookContext {
        event: hook_event,
        server: None,
        tool: None,
        exposed_tool: None,
        principal: principal.user_id().to_owned(),
        roles: principal.roles.clone(),
        scopes: principal.scopes.iter().map(str::to_owned).collect(),
        session_id: session_id.clone(),
        trace_id: trace.trace_id_hex(),
    };
    let verdict = rules
        .hooks
        .run(&context, &payload, app.gateway.http())
        .await;
    let call = CallContext::without_stream(
        principal.clone(),
        session_id.and_then(|id| app.gateway.sessions.table.get(&id)),
        trace,
        None,
    );
    app.gateway
        .record_hooks(&call, &verdict.reports, hook_event)
        .await;
    let mut answer = match &verdict.denied {
        Some((hook, reason)) => json!({"decision": "deny", "hook": hook, "reason": reason}),
        None => json!({"decision": "allow"}),
    };
    if let Some(rewritten) = verdict.rewritten {
        answer["payload"] = rewritten;
    }
    answer["trace_id"] = Value::from(trace.trace_id_hex());
    Ok(Json(answer))
}
