//! The one HTTP listener and everything that knows about HTTP: routing, status codes,
//! connection limits, graceful draining. Nothing outside `http/` picks a status code.
//!
//! Layers, outermost first (each may answer without calling the next):
//!
//! ```text
//!   connection limit (server.max_connections; excess connections wait in the backlog)
//!   └─ TCP_NODELAY on every accepted socket
//!      └─ challenge scope: a 401 `Bearer` challenge without `scope=` gets the scopes the
//!         profile requires (RFC 6750 §3), whichever surface answered
//!         └─ router: routes contributed through the registry (built-ins and extensions)
//! ```

pub mod account;
pub mod admin;
pub mod ai;
pub mod audit;
pub mod error;
pub mod health;
pub mod hooks;
pub mod jsonlimits;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod mrtr;
pub mod oauth;
pub mod skills;
pub mod tls;
pub mod wellknown;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, header};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::{Principal, bearer_token};
use crate::extension::Registry;
pub use error::ApiError;
pub use listener::LimitedListener;

/// Shared state every handler receives.
pub type AppState = Arc<App>;

/// Assembles the router from every registered route set.
pub fn router(state: AppState, registry: &Registry) -> Router {
    let mut router = Router::new();
    for (_owner, factory) in &registry.routes {
        router = router.merge(factory());
    }
    router
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            add_challenge_scope,
        ))
        .with_state(state)
}

/// Names the scopes needed in a 401 `Bearer` challenge that does not name any, so a
/// client knows what to ask the authorization server for.
async fn add_challenge_scope(
    axum::extract::State(app): axum::extract::State<AppState>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    if response.status() != axum::http::StatusCode::UNAUTHORIZED {
        return response;
    }
    let Some(challenge) = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("Bearer") && !v.contains("scope="))
    else {
        return response;
    };
    let scopes = app.policy.load().challenge_scopes();
    if scopes.is_empty() {
        return response;
    }
    if let Ok(value) =
        axum::http::HeaderValue::from_str(&format!("{challenge}, scope=\"{scopes}\""))
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Serves until `shutdown` is cancelled, then stops accepting and gives in-flight
/// requests up to `grace` to finish; whatever is still open after that is dropped.
pub async fn serve(
    listener: LimitedListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let signal = shutdown.clone();
    // Routes are finalised once here and each connection gets a cheap clone of the
    // router. Serving the `Router` itself finalises it again per connection — a fresh
    // route table (~10 KiB) for every keep-alive connection (docs/benchmarks.md).
    let service = router.with_state(()).into_make_service();
    let server = axum::serve(listener, service)
        .with_graceful_shutdown(async move { signal.cancelled().await });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => {
            if let Err(error) = result {
                tracing::error!(%error, "HTTP server failed");
            }
            return;
        }
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(())) => tracing::info!("all in-flight requests finished"),
        Ok(Err(error)) => tracing::error!(%error, "HTTP server failed while draining"),
        Err(_) => tracing::warn!(
            ?grace,
            "shutdown grace elapsed; closing the remaining connections"
        ),
    }
}

/// A request body of at most `limit` bytes (`server.max_body_bytes`); a longer one is
/// 413, one that breaks off 400.
pub async fn read_limited(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error)
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(error) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {error}"
        ))),
    }
}

/// Verifies the caller's bearer token (the one authentication step of every governed
/// REST route).
pub async fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    app.authenticator
        .authenticate(bearer_token(header))
        .await
        .map_err(|rejection| ApiError::Unauthorized {
            rejection,
            resource_metadata: app.resource_metadata_url(),
        })
}
