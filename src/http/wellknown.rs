//! Discovery documents, public and cacheable:
//!
//! - `/.well-known/oauth-authorization-server` (RFC 8414) and
//!   `/.well-known/openid-configuration` (the same metadata, for OIDC-minded clients);
//! - `/.well-known/oauth-protected-resource` and `…/mcp` (and `…/mcp/{server}`) (RFC 9728):
//!   the resource, its authorization servers (Warden and every trusted issuer), scopes;
//! - `/.well-known/jwks.json`: the keys that verify Warden's tokens (the active one and
//!   retired ones whose tokens may still be live).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server),
        )
        .route(
            "/.well-known/openid-configuration",
            get(authorization_server),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource_root),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource_mcp),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp/{server}",
            get(protected_resource_server),
        )
        .route("/.well-known/jwks.json", get(jwks))
}

fn cacheable(body: Value, seconds: u32) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={seconds}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
        .headers_mut()
        .insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

/// RFC 8414 metadata (also served as OpenID Provider metadata).
pub fn authorization_server_metadata(app: &AppState) -> Value {
    let identity = app.identity.config();
    let base = app.config.load().server.public_url.clone();
    json!({
        "issuer": identity.issuer,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "registration_endpoint": format!("{base}/oauth/register"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "scopes_supported": app.policy.load().known_scopes(),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": identity.client_metadata_documents,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
    })
}

async fn authorization_server(State(app): State<AppState>) -> Response {
    cacheable(authorization_server_metadata(&app), 300)
}

fn protected_resource(app: &AppState, path: &str) -> Value {
    let base = app.config.load().server.public_url.clone();
    let mut servers = vec![app.identity.config().issuer];
    servers.extend(app.identity.trusted_issuers());
    json!({
        "resource": format!("{base}{path}"),
        "authorization_servers": servers,
        "scopes_supported": app.policy.load().known_scopes(),
        "bearer_methods_supported": ["header"],
        "resource_name": "Warden",
        "resource_signing_alg_values_supported": ["EdDSA"],
    })
}

async fn protected_resource_root(State(app): State<AppState>) -> Response {
    cacheable(protected_resource(&app, ""), 300)
}

async fn protected_resource_mcp(State(app): State<AppState>) -> Response {
    cacheable(protected_resource(&app, "/mcp"), 300)
}

async fn protected_resource_server(
    State(app): State<AppState>,
    Path(server): Path<String>,
) -> Response {
    cacheable(protected_resource(&app, &format!("/mcp/{server}")), 300)
}

async fn jwks(State(app): State<AppState>) -> Response {
    cacheable(app.identity.jwks(), 60)
}
