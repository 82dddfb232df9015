//! The one HTTP listener and everything that knows about HTTP: routing, status codes,
//! connection limits, graceful draining. Nothing outside `http/` picks a status code.
//!
//! Layers, outermost first (each may answer without calling the next):
//!
//! ```text
//!   connection limit (server.max_connections; excess connections wait in the backlog)
//!   └─ TCP_NODELAY on every accepted socket; TLS when server.tls is set (tls.rs)
//!      └─ header read timeout (server.header_read_timeout), graceful drain (serve)
//!         └─ challenge scope: a 401 `Bearer` challenge without `scope=` gets the scopes
//!            the profile requires (RFC 6750 §3), whichever surface answered
//!            └─ router: routes contributed through the registry (built-ins and
//!               extensions)
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

/// Serves until `shutdown` is cancelled, then stops accepting, lets every connection
/// finish the request it is serving (idle ones close at once) and gives them up to
/// `grace`; whatever is still open after that is dropped.
///
/// The loop is axum's `serve` with one addition: a timer, so that a client must send a
/// request's headers within `header_read_timeout` (a connection trickling them, or
/// idle between requests that long, is closed) instead of holding a connection slot
/// forever.
pub async fn serve(
    mut listener: LimitedListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    header_read_timeout: Duration,
) {
    use axum::serve::Listener as _;
    // Routes are finalised once here and each connection gets a cheap clone of the
    // router. Serving the `Router` itself finalises it again per connection — a fresh
    // route table (~10 KiB) for every keep-alive connection (docs/benchmarks.md).
    let service = router.with_state(());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections as they end, so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(service.clone());
        let stop = shutdown.clone();
        connections.spawn(async move {
            // HTTP/1.1 only (no cleartext HTTP/2 either), as the TLS listener announces.
            // (With hyper's bare HTTP/1 builder instead, a stateless call held for input
            // at shutdown was recorded as an error rather than cancelled in 1 run of 3 of
            // gateway::calls_awaiting_input_are_bounded…; the cause was not found.)
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .http1_only();
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let io = hyper_util::rt::TokioIo::new(io);
            let mut connection =
                std::pin::pin!(builder.serve_connection_with_upgrades(io, service));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            if let Err(error) = connection.await {
                tracing::trace!(%error, "connection ended with an error while draining");
            }
        });
    }
    // No new connections from here on.
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("all in-flight requests finished"),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "shutdown grace elapsed; closing the remaining connections"
            );
            connections.abort_all();
            // Aborted requests finish as they are dropped (a model request's row is
            // handed to a task then): wait for that, so whatever they start exists before
            // shutdown looks for it.
            while connections.join_next().await.is_some() {}
        }
    }
}

/// How often a long-lived stream (`/events`, `subscriptions/listen`) re-checks the
/// credential that opened it: a revoked, expired, disabled or signed-out caller loses the
/// stream within this.
pub const STREAM_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// The credential an open stream was opened with, checked again every
/// [`STREAM_RECHECK`] (a cached verification: no database read unless the cache dropped
/// it).
pub struct Recheck {
    app: AppState,
    headers: axum::http::HeaderMap,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Recheck {
    pub fn new(app: AppState, headers: axum::http::HeaderMap) -> Recheck {
        Recheck {
            app,
            headers,
            timer: Box::pin(tokio::time::sleep(STREAM_RECHECK)),
        }
    }

    /// Waits for the next check; the caller as the credential now verifies, or `None`.
    /// (Cancel-safe: dropped mid-check, the next call checks at once.)
    pub async fn next(&mut self) -> Option<std::sync::Arc<crate::auth::Principal>> {
        (&mut self.timer).await;
        let principal = authenticate(&self.app, &self.headers).await.ok();
        let next = tokio::time::Instant::now() + STREAM_RECHECK;
        self.timer.as_mut().reset(next);
        principal
    }

    pub fn app(&self) -> &AppState {
        &self.app
    }
}

/// The MCP session a request names (`Mcp-Session-Id`), for its audit rows — unless this
/// replica holds that session for someone else: a caller cannot put their requests in
/// another's session. A session this replica does not know (another replica's, or none)
/// is kept as the client asserted it, like `traceparent`.
pub fn claimed_session(
    app: &AppState,
    headers: &axum::http::HeaderMap,
    principal: &crate::auth::Principal,
) -> Option<String> {
    let id = headers.get("mcp-session-id")?.to_str().ok()?;
    match app.gateway.sessions.table.get(id) {
        Some(session) if session.principal.subject != principal.subject => {
            tracing::warn!(
                subject = %principal.subject,
                "a request named another caller's MCP session; its rows carry none"
            );
            None
        }
        _ => Some(id.to_owned()),
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
