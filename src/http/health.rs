//! `/healthz` (the process answers) and `/readyz` (the database answers, the actor tree
//! is up, and Warden is not draining). `/readyz` answers 503 with a JSON list of reasons,
//! so a load balancer and an operator read the same thing. Both answers carry the audit
//! trail's backlog under `audit` (queued records, spool bytes, whether PostgreSQL is
//! down for the writer); a trail that refuses records (`fail_closed` with a full spool)
//! makes Warden not ready.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "alive"}))).into_response()
}

async fn readyz(State(app): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    if app.readiness.is_draining() {
        reasons.push("shutting down".to_owned());
    }
    if !app.readiness.is_tree_up() {
        reasons.push("the actor tree is still starting".to_owned());
    }
    let database_ok = tokio::time::timeout(Duration::from_secs(2), app.database_reachable())
        .await
        .unwrap_or(false);
    if !database_ok {
        reasons.push("the database is unreachable".to_owned());
    }
    let audit = app.audit.backlog();
    if audit.refusing {
        reasons.push(
            "the audit trail is backlogged and refuses records (audit.on_backlog: fail_closed)"
                .to_owned(),
        );
    }
    if reasons.is_empty() {
        (
            StatusCode::OK,
            Json(json!({"ready": true, "audit": audit, "audit_backlog": audit.any()})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reasons": reasons, "audit": audit, "audit_backlog": audit.any()})),
        )
            .into_response()
    }
}
