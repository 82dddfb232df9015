//! `GET /admin/audit`: the audit trail, searched with the same filters as
//! `warden audit search` (`user`, `tool`, `trace`, `since`, `until`, `status`, `kind`,
//! `limit`, `cursor`), newest first, one page at a time (`next_cursor`). Behind the admin
//! permission (`Permission::Admin { action: "audit.read" }`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use super::admin::admin_principal;
use super::error::ApiError;
use crate::audit::query::{self, Filters, Page, QueryError};

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/audit", get(search))
}

async fn search(
    State(app): State<AppState>,
    headers: HeaderMap,
    filters: Result<Query<Filters>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    admin_principal(&app, &headers, "audit.read").await?;
    let Query(filters) = filters.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let client = app
        .db
        .get()
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot reach PostgreSQL: {e}")))?;
    let page = query::search(&**client, &filters)
        .await
        .map_err(|e| match e {
            QueryError::BadFilter(m) => ApiError::BadRequest(m),
            QueryError::Database(m) => ApiError::Unavailable(format!("database: {m}")),
        })?;
    Ok(Json(page))
}
