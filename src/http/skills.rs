//! Skill distribution over HTTP (what a skill is: `crate::skills`).
//!
//! Readers (rate limit `rate_limits.skills`; each skill needs its own scopes, see
//! `Permission::ReadSkill`):
//! - `GET /v1/skills` — the skills the caller may read, by name: `name`, `description`,
//!   `version`, `sha256`, `updated_at`, `updated_by`. Skills it may not read are left
//!   out.
//! - `GET /v1/skills/{name}` — the `SKILL.md` as uploaded (`text/markdown`), its version
//!   in `Warden-Skill-Version` and its SHA-256 as the `ETag` (a matching `If-None-Match`
//!   answers 304); `?version=N` reads an earlier version. The decision is audited.
//! - `GET /v1/skills/{name}/versions` — the history, newest first (a removal has no
//!   `sha256`).
//!
//! Changes (the admin API, `Permission::Admin { action: "skills.write" }`), each a
//! `skill.changed` row in the audit trail:
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

use super::AppState;
use super::admin::{admin_principal, check_rate, decision_event};
use super::error::ApiError;
use crate::auth::{Principal, PrincipalKind};
use crate::policy::Permission;
use crate::policy::limits::Surface;
use crate::skills::store::{self, Put, SkillInfo};
use crate::skills::{Skill, SkillChange, check_name};

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

async fn reader(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<Principal>, ApiError> {
    let principal = super::authenticate(app, headers).await?;
    check_rate(app, &principal, Surface::Skills)?;
    Ok(principal)
}

fn may_read(
    app: &AppState,
    principal: &Principal,
    skill: &SkillInfo,
) -> Result<(), crate::policy::Denial> {
    app.policy.load().check(
        principal,
        &Permission::ReadSkill {
            name: &skill.name,
            scopes: &skill.scopes,
        },
    )
}

fn describe(skill: &SkillInfo) -> Value {
    json!({
        "name": skill.name,
        "description": skill.description,
        "version": skill.version,
        "sha256": skill.sha256,
        "updated_at": skill.updated_at,
        "updated_by": skill.updated_by,
    })
}

async fn list(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let principal = reader(&app, &headers).await?;
    let client = app.db.get().await.map_err(unavailable)?;
    let skills = store::current(&**client).await.map_err(unavailable)?;
    let visible: Vec<Value> = skills
        .iter()
        .filter(|skill| may_read(&app, &principal, skill).is_ok())
        .map(describe)
        .collect();
    Ok(Json(json!({ "skills": visible })))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<i32>,
}

fn not_found(name: &str, version: Option<i32>) -> ApiError {
    ApiError::NotFound(match version {
        Some(version) => format!("skill `{name}` has no version {version} (or it is a removal)"),
        None => format!("no skill `{name}`"),
    })
}

/// Looks up skill `name` (the current version, or `version`) and checks the caller may
/// read it; the decision is audited.
async fn readable(
    app: &AppState,
    principal: &Principal,
    name: &str,
    version: Option<i32>,
) -> Result<(SkillInfo, String), ApiError> {
    check_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let client = app.db.get().await.map_err(unavailable)?;
    let (skill, content) = store::get(&**client, name, version)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(name, version))?;
    drop(client);
    let decision = may_read(app, principal, &skill);
    let event = decision_event(principal, format!("skill/{name}"), "skills.read", &decision);
    app.identity.record_event(event).await;
    decision.map_err(|denial| ApiError::Forbidden {
        denial,
        resource_metadata: app.resource_metadata_url(),
    })?;
    Ok((skill, content))
}

async fn read(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = reader(&app, &headers).await?;
    let (skill, content) = readable(&app, &principal, &name, query.version).await?;
    let etag = format!("\"{}\"", skill.sha256);
    let version = HeaderValue::from(skill.version);
    // An ETag is hex in quotes: always a valid header value.
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.to_string()))?;
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| matches!(tag.trim(), "*") || tag.trim() == etag);
    let mut response = if unchanged {
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
    headers.insert(header::ETAG, etag_value);
    headers.insert(VERSION_HEADER, version);
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
    readable(&app, &principal, &name, None).await?;
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
                "created_by": v.created_by,
            })
        })
        .collect();
    Ok(Json(json!({ "name": name, "versions": versions })))
}

/// The `skill.changed` row of a change made through the admin API.
async fn record(app: &AppState, principal: &Principal, change: &SkillChange<'_>) {
    let actor_kind = if principal.kind == PrincipalKind::Service {
        "client"
    } else {
        "user"
    };
    let event = change.event(actor_kind, principal.user_id());
    app.identity.record_event(event).await;
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
    let mut client = app.db.get().await.map_err(unavailable)?;
    let transaction = client.transaction().await.map_err(unavailable)?;
    let outcome = store::put(&*transaction, &skill, principal.user_id())
        .await
        .map_err(unavailable)?;
    transaction.commit().await.map_err(unavailable)?;
    drop(client);
    let sha256 = hex::encode(skill.sha256());
    if !matches!(outcome, Put::Unchanged { .. }) {
        let change = SkillChange {
            name: &name,
            action: outcome.action(),
            version: outcome.version(),
            sha256: Some(sha256.clone()),
            previous_sha256: outcome.previous(),
            origin: "admin",
        };
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
        "sha256": sha256,
        "changed": !matches!(outcome, Put::Unchanged { .. }),
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
    let mut client = app.db.get().await.map_err(unavailable)?;
    let transaction = client.transaction().await.map_err(unavailable)?;
    let removed = store::remove(&*transaction, &name, principal.user_id())
        .await
        .map_err(unavailable)?;
    transaction.commit().await.map_err(unavailable)?;
    drop(client);
    let (version, previous) = removed.ok_or_else(|| not_found(&name, None))?;
    let change = SkillChange {
        name: &name,
        action: "removed",
        version,
        sha256: None,
        previous_sha256: Some(previous),
        origin: "admin",
    };
    record(&app, &principal, &change).await;
    Ok(Json(
        json!({ "name": name, "version": version, "removed": true }),
    ))
}
