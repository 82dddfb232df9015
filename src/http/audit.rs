//! - `GET /admin/audit`: the audit trail, searched with the same filters as
//!   `warden audit search` (`user`, `tool`, `trace`, `since`, `until`, `status`, `kind`,
//!   `limit`, `cursor`), newest first, one page at a time (`next_cursor`).
//! - `GET /admin/audit/feed?after=P&limit=N`: the trail in written order, whole batches
//!   after chain position `P`, for a SIEM to follow (`audit::feed`; `warden audit tail`).
//!
//! Both behind the admin permission (`Permission::Admin { action: "audit.read" }`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use super::admin::admin_principal;
use super::error::ApiError;
use serde::Deserialize;

use crate::audit::feed::{self, FeedPage};
use crate::audit::query::{self, Filters, Page, QueryError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/audit", get(search))
        .route("/admin/audit/feed", get(feed))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    #[serde(default)]
    after: i64,
    limit: Option<usize>,
}

async fn feed(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Json<FeedPage>, ApiError> {
    admin_principal(&app, &headers, "audit.read").await?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let client = connect(&app).await?;
    let page = feed::read(&**client, params.after, params.limit)
        .await
        .map_err(query_error)?;
    Ok(Json(page))
}

async fn connect(app: &AppState) -> Result<deadpool_postgres::Object, ApiError> {
    app.db
        .get()
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot reach PostgreSQL: {e}")))
}

fn query_error(error: QueryError) -> ApiError {
    match error {
        QueryError::BadFilter(m) => ApiError::BadRequest(m),
        QueryError::Database(m) => ApiError::Unavailable(format!("database: {m}")),
    }
}

async fn search(
    State(app): State<AppState>,
    headers: HeaderMap,
    filters: Result<Query<Filters>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    admin_principal(&app, &headers, "audit.read").await?;
    let Query(filters) = filters.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let client = connect(&app).await?;
    let page = query::search(&**client, &filters)
        .await
        .map_err(query_error)?;
    Ok(Json(page))
}
