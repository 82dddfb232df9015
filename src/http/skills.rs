//! Skill distribution over HTTP (what a skill is: `crate::skills`).
//!
//! Readers (rate limit `rate_limits.skills`; each skill needs its own scopes, see
//! `Permission::ReadSkill`):
//! - `GET /v1/skills` — the skills the caller may read, by name: `name`, `description`,
//!   `version`, `sha256`, `updated_at`. Skills it may not read are left out.
//! - `GET /v1/skills/{name}` — the `SKILL.md` as uploaded (`text/markdown`), its version
//!   in `Warden-Skill-Version` and its SHA-256 as the `ETag` (a matching `If-None-Match`
//!   answers 304); `?version=N` reads an earlier version of a skill that still exists,
//!   for a caller who may read both that version and the current one.
//! - `GET /v1/skills/{name}/versions` — the history, newest first (a removal has no
//!   `sha256`).
//!
//! A skill the caller may not read answers 404 exactly as one that does not exist, so
//! names cannot be probed; the decision is audited (`permission.decision`, subject
//! `skill/<name>`) and a read is refused (503) when the audit trail refuses records.
//!
//! Changes (the admin API, `Permission::Admin { action: "skills.write" }`), each a
//! `skill.changed` row in the audit trail, refused (503) while the trail refuses records:
//! - `PUT /admin/skills/{name}` — the body is the file (at most `server.max_body_bytes`);
//!   201 when the skill is new, 200 when it changed or was already this file.
//! - `DELETE /admin/skills/{name}` — removes it (a version without content).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use warden_actors::audit::AuditRecord;

use super::AppState;
use super::admin::{admin_principal, check_rate};
use super::error::ApiError;
use crate::auth::Principal;
use crate::policy::Denial;
use crate::policy::decision_event;
use crate::policy::limits::Surface;
use crate::skills::store::{self, Put, SkillInfo};
use crate::skills::{Origin, Skill, SkillChange, check_name};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/skills", get(list))
        .route("/v1/skills/{name}", get(read))
        .route("/v1/skills/{name}/versions", get(versions))
        .route(
            "/admin/skills/{name}",
            axum::routing::put(put).delete(remove),
        )
}

/// The header that carries a skill's version.
pub const VERSION_HEADER: &str = "warden-skill-version";

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("the skills cannot be read or written: {error}"))
}

fn audit_refusing() -> ApiError {
    ApiError::Unavailable(
        "the audit trail is refusing records (audit.on_backlog: fail_closed); try again when its backlog drains"
            .into(),
    )
}

async fn reader(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<Principal>, ApiError> {
    let principal = super::authenticate(app, headers).await?;
    check_rate(app, &principal, Surface::Skills).await?;
    Ok(principal)
}

fn may_read(app: &AppState, principal: &Principal, skill: &SkillInfo) -> Result<(), Denial> {
    crate::skills::may_read(&app.policy.load(), principal, skill)
}

async fn list(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let principal = reader(&app, &headers).await?;
    let client = app.db.get().await.map_err(unavailable)?;
    let skills = store::current(&**client).await.map_err(unavailable)?;
    let visible: Vec<Value> = skills
        .iter()
        .filter(|skill| may_read(&app, &principal, skill).is_ok())
        .map(|skill| {
            json!({
                "name": skill.name,
                "description": skill.description,
                "version": skill.version,
                "sha256": skill.sha256,
                "updated_at": skill.updated_at,
            })
        })
        .collect();
    Ok(Json(json!({ "skills": visible })))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<i32>,
}

/// The one answer for a skill that does not exist, was removed, has no such version, or
/// may not be read by the caller.
fn not_found(name: &str, version: Option<i32>) -> ApiError {
    ApiError::NotFound(match version {
        Some(version) => format!("no version {version} of a skill `{name}` you may read"),
        None => format!("no skill `{name}` you may read"),
    })
}

/// Skill `name` as it stands, and `version` of it when asked for, if the caller may read
/// both (an old version is no way around scopes added since, nor around a removal). The
/// decision is audited (`action` names the route); when the trail refuses it, so is the
/// read.
async fn readable(
    app: &AppState,
    principal: &Principal,
    name: &str,
    version: Option<i32>,
    action: &str,
) -> Result<(SkillInfo, String), ApiError> {
    check_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let client = app.db.get().await.map_err(unavailable)?;
    let current = store::get(&**client, name, None)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(name, version))?;
    let wanted = match version {
        Some(version) if version != current.0.version => store::get(&**client, name, Some(version))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| not_found(name, Some(version)))?,
        _ => current.clone(),
    };
    drop(client);
    let decision =
        may_read(app, principal, &current.0).and_then(|()| may_read(app, principal, &wanted.0));
    let mut event = decision_event(principal, &format!("skill/{name}"), action, &decision);
    event.attributes["version"] = json!(wanted.0.version);
    app.audit
        .record(AuditRecord::Event(Box::new(event)))
        .await
        .map_err(|_| audit_refusing())?;
    decision.map_err(|_| not_found(name, version))?;
    Ok(wanted)
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

async fn read(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = reader(&app, &headers).await?;
    let (skill, content) = readable(&app, &principal, &name, query.version, "skills.read").await?;
    let etag = format!("\"{}\"", skill.sha256);
    let mut response = if matches_etag(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(Body::from(content));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/markdown; charset=utf-8"),
        );
        response
    };
    let headers = response.headers_mut();
    // Hex in quotes is always a valid header value.
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(VERSION_HEADER, HeaderValue::from(skill.version));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

async fn versions(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = reader(&app, &headers).await?;
    // Only who may read the skill as it stands may read its history.
    readable(&app, &principal, &name, None, "skills.history").await?;
    let client = app.db.get().await.map_err(unavailable)?;
    let history = store::history(&**client, &name)
        .await
        .map_err(unavailable)?;
    let versions: Vec<Value> = history
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "sha256": v.sha256,
                "description": v.description,
                "created_at": v.created_at,
            })
        })
        .collect();
    Ok(Json(json!({ "name": name, "versions": versions })))
}

/// The `skill.changed` row of a change made through the admin API. The change is
/// committed, so its row is kept even while the trail refuses new governed work.
async fn record(app: &AppState, principal: &Principal, change: &SkillChange<'_>) {
    let event = change.event(principal.actor_kind(), principal.user_id());
    if let Err(refused) = app
        .audit
        .record_completed(AuditRecord::Event(Box::new(event)))
        .await
    {
        tracing::error!(skill = change.name, error = %refused, "a skill change was made but its audit row was refused");
    }
}

/// Makes `change` ([`store::in_transaction`]) after making sure the trail takes
/// records; then the skills served as MCP prompts here are read again.
async fn change<T>(
    app: &AppState,
    change: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, tokio_postgres::Error>,
) -> Result<T, ApiError> {
    if !app.audit.accepting() {
        return Err(audit_refusing());
    }
    let done = store::in_transaction(&app.db, change)
        .await
        .map_err(unavailable)?;
    // This replica serves the change at once, not only when its own notice comes back;
    // if the read fails, that notice's refresh (retried) catches up.
    if let Ok(true) = app.gateway.skills.load(&app.db).await {
        app.gateway.announce_skills_changed();
    }
    Ok(done)
}

async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = admin_principal(&app, &headers, "skills.write").await?;
    check_name(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = app.config.load().server.max_body_bytes;
    let bytes = super::read_limited(body, limit).await?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|e| ApiError::BadRequest(format!("the skill file is not UTF-8: {e}")))?;
    let skill = Skill::parse_named(text, &name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let by = principal.user_id();
    let outcome = change(&app, async |t| store::put(t, &skill, by).await).await?;
    if let Some(change) = SkillChange::stored(&skill, &outcome, Origin::Admin) {
        record(&app, &principal, &change).await;
    }
    let status = if matches!(outcome, Put::Created { .. }) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let answer = json!({
        "name": name,
        "version": outcome.version(),
        "sha256": hex::encode(skill.sha256()),
        "changed": outcome.action().is_some(),
    });
    Ok((status, Json(answer)).into_response())
}

async fn remove(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = admin_principal(&app, &headers, "skills.write").await?;
    check_name(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let by = principal.user_id();
    let removed = change(&app, async |t| store::remove(t, &name, by).await).await?;
    let (version, previous) =
        removed.ok_or_else(|| ApiError::NotFound(format!("no skill `{name}`")))?;
    let change = SkillChange::removed(&name, version, previous, Origin::Admin);
    record(&app, &principal, &change).await;
    Ok(Json(
        json!({ "name": name, "version": version, "removed": true }),
    ))
}
