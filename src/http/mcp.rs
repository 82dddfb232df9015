//! The MCP endpoint clients connect to: `/mcp` (every permitted tool of every server, as
//! `{server}__{tool}`) and `/mcp/{server}` (one server, names untouched), over streamable
//! HTTP in both protocol eras.
//!
//! - **Handshake era** (2024-11-05 … 2025-11-25): `initialize` creates a session (an
//!   actor) and answers `Mcp-Session-Id`; later requests carry it (missing → 400, unknown
//!   → 404) and `MCP-Protocol-Version` (unsupported → 400). `GET` opens the session's
//!   notification stream (resumable with `Last-Event-ID`); `DELETE` ends the session.
//! - **Stateless era** (2026-07-28): no session; every request carries
//!   `_meta["io.modelcontextprotocol/protocolVersion"]` and client capabilities, and the
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers must agree with the body
//!   (-32020, HTTP 400); `server/discover` describes Warden.
//!
//! Checks before any parsing: `Host` and `Origin` against the profile's allow-lists
//! (403), the body size (413) and nesting depth (400). Then authentication (401 with
//! `WWW-Authenticate` naming the protected-resource metadata), then the gateway.
//!
//! Every request's call runs in its own task, so a client that disconnects mid-call
//! cancels the upstream request and still leaves an audit row. A request is answered as
//! JSON unless the upstream sends something (progress, a log line, a sampling request)
//! before its result; then the answer becomes an SSE stream carrying those first. A
//! stateless client is not sent the upstream's requests: its call is held and answered
//! `input_required`, and its retry resumes the call (multi round-trip requests, `mrtr.rs`).

// Handlers here build complete responses on every early exit; a `Response` as the error
// type is the point, and boxing it would only add an allocation per refusal.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::stream::{self, Stream, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warden_actors::jsonrpc::{self, RpcError, code};
use warden_actors::trace::TraceContext;
use warden_actors::upstream::Upcall;

use super::AppState;
use super::error::{ApiError, www_authenticate};
use super::jsonlimits::exceeds_depth;
use super::mrtr::{self, Binding, Full, Limits, Owner, Refusal};
use crate::auth::{AuthRejection, Principal, bearer_token};
use crate::config::Config;
use crate::gateway::session::{NewSession, Session};
use crate::gateway::{CallContext, GatewayError};
use crate::policy::Permission;
use crate::policy::hooks::{HookContext, HookEvent};
use crate::policy::limits::Surface;

/// Revisions reachable with the `initialize` handshake, oldest first.
pub const HANDSHAKE_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The stateless revision.
pub const MODERN_VERSION: &str = "2026-07-28";
const LATEST_HANDSHAKE: &str = "2025-11-25";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const HEADER_MISMATCH: i64 = -32020;
/// Capacity of a call's upcall channel (progress notifications beyond it are counted
/// and dropped; server→client requests wait).
const UPCALL_BUFFER: usize = 64;
/// How long a stateless client may reuse a listing (it also hears `list_changed` on a
/// `subscriptions/listen` stream).
const LIST_TTL_MS: u64 = 10_000;
/// Requests a stateless client may be answered `input_required` for (2026-07-28).
const INPUT_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];
/// What an upstream may ask a client during a call, and the client capability each needs.
const INPUT_CAPABILITIES: [(&str, &str); 3] = [
    ("sampling/createMessage", "sampling"),
    ("elicitation/create", "elicitation"),
    ("roots/list", "roots"),
];
/// The key of the one request in Warden's `InputRequiredResult`s: an upstream asks one
/// thing at a time and waits for it.
const INPUT_KEY: &str = "upstream";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/mcp",
            post(post_aggregate)
                .get(get_aggregate)
                .delete(delete_aggregate),
        )
        .route(
            "/mcp/{server}",
            post(post_server).get(get_server).delete(delete_server),
        )
}

async fn post_aggregate(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle_post(app, None, headers, body).await
}

async fn post_server(
    State(app): State<AppState>,
    Path(server): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle_post(app, Some(server), headers, body).await
}

async fn get_aggregate(State(app): State<AppState>, headers: HeaderMap) -> Response {
    handle_get(app, None, headers).await
}

async fn get_server(
    State(app): State<AppState>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle_get(app, Some(server), headers).await
}

async fn delete_aggregate(State(app): State<AppState>, headers: HeaderMap) -> Response {
    handle_delete(app, None, headers).await
}

async fn delete_server(
    State(app): State<AppState>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle_delete(app, Some(server), headers).await
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// A JSON-RPC error answer with its HTTP status.
fn rpc_error(status: StatusCode, id: Option<&Value>, error: RpcError) -> Response {
    let id = id.map_or_else(|| "null".to_owned(), Value::to_string);
    let mut body = Vec::with_capacity(128);
    jsonrpc::write_error(&mut body, &id, &error);
    json_response(status, body)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn auth_failure(app: &AppState, rejection: AuthRejection, id: Option<&Value>) -> Response {
    let error = ApiError::Unauthorized {
        rejection: rejection.clone(),
        resource_metadata: app.resource_metadata_url(),
    };
    let mut response = rpc_error(
        StatusCode::UNAUTHORIZED,
        id,
        RpcError::new(
            code::FORBIDDEN,
            format!("authentication required: {rejection}"),
        ),
    );
    if let Some(value) = www_authenticate(&error).and_then(|v| HeaderValue::from_str(&v).ok()) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn scope_failure(app: &AppState, error: &GatewayError, id: Option<&Value>) -> Response {
    let GatewayError::Denied(denial) = error else {
        return rpc_error(StatusCode::OK, id, error.to_rpc());
    };
    let api = ApiError::Forbidden {
        denial: denial.clone(),
        resource_metadata: app.resource_metadata_url(),
    };
    let mut response = rpc_error(StatusCode::FORBIDDEN, id, error.to_rpc());
    if let Some(value) = www_authenticate(&api).and_then(|v| HeaderValue::from_str(&v).ok()) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Host` must be one Warden answers to, and a browser `Origin` one the profile allows
/// (DNS-rebinding protection).
fn check_host_and_origin(config: &Config, headers: &HeaderMap) -> Result<(), Response> {
    if let Some(host) = header_str(headers, "host") {
        let name = if host.starts_with('[') {
            host.split_inclusive(']').next().unwrap_or(host)
        } else {
            host.split(':').next().unwrap_or(host)
        };
        if !config
            .server
            .allowed_hosts
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(name))
        {
            return Err(rpc_error(
                StatusCode::FORBIDDEN,
                None,
                RpcError::new(
                    code::INVALID_REQUEST,
                    format!("Host `{name}` is not allowed (server.allowed_hosts)"),
                ),
            ));
        }
    }
    if let Some(origin) = header_str(headers, "origin") {
        let same_origin = origin.eq_ignore_ascii_case(&config.server.public_url);
        if !same_origin
            && !config
                .server
                .allowed_origins
                .iter()
                .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
        {
            return Err(rpc_error(
                StatusCode::FORBIDDEN,
                None,
                RpcError::new(
                    code::INVALID_REQUEST,
                    format!("Origin `{origin}` is not allowed (server.allowed_origins)"),
                ),
            ));
        }
    }
    Ok(())
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    None,
                    RpcError::new(
                        code::INVALID_REQUEST,
                        format!("request body larger than {limit} bytes (server.max_body_bytes)"),
                    ),
                ))
            } else {
                Err(rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    RpcError::new(
                        code::PARSE_ERROR,
                        format!("could not read the request body: {error}"),
                    ),
                ))
            }
        }
    }
}

/// One JSON-RPC message from a client.
#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    jsonrpc: Option<String>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

fn trace_of(headers: &HeaderMap) -> TraceContext {
    header_str(headers, "traceparent")
        .and_then(TraceContext::parse)
        .map(|parent| parent.child())
        .unwrap_or_else(TraceContext::generate)
}

/// Sets the `traceparent` header, unless the answer carries one already (a resumed
/// call answers with its own trace).
fn with_trace(mut response: Response, trace: &TraceContext) -> Response {
    if let Ok(value) = HeaderValue::from_str(&trace.header()) {
        response.headers_mut().entry("traceparent").or_insert(value);
    }
    response
}

// ---------------------------------------------------------------------------------------
// POST
// ---------------------------------------------------------------------------------------

/// How a request is being served.
enum Era {
    /// In a handshake-era session.
    Session(Arc<Session>),
    /// A 2026-07-28 request on its own.
    Stateless { capabilities: Value },
    /// `initialize`, before the session exists.
    Initialize,
}

async fn handle_post(
    app: AppState,
    scope: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let config = app.config.load_full();
    if let Err(response) = check_host_and_origin(&config, &headers) {
        return response;
    }
    let body = match read_body(body, config.server.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if exceeds_depth(&body, config.server.max_json_depth) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            RpcError::new(
                code::INVALID_REQUEST,
                format!(
                    "JSON nested deeper than {} levels (server.max_json_depth)",
                    config.server.max_json_depth
                ),
            ),
        );
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            RpcError::new(
                code::INVALID_REQUEST,
                "JSON-RPC batches are not supported; send one message per request",
            ),
        );
    }
    let message: Incoming = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(error) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                RpcError::new(
                    code::PARSE_ERROR,
                    format!("the body is not a JSON-RPC message: {error}"),
                ),
            );
        }
    };
    if message.jsonrpc.as_deref() != Some("2.0") {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            message.id.as_ref(),
            RpcError::new(code::INVALID_REQUEST, "`jsonrpc` must be \"2.0\""),
        );
    }
    let trace = trace_of(&headers);
    let bearer = bearer_token(header_str(&headers, "authorization"));
    let principal = match app.authenticator.authenticate(bearer).await {
        Ok(principal) => principal,
        Err(rejection) => {
            return with_trace(auth_failure(&app, rejection, message.id.as_ref()), &trace);
        }
    };
    if let Some(server) = &scope
        && app.gateway.directory.get(server).is_none()
    {
        return with_trace(
            rpc_error(
                StatusCode::NOT_FOUND,
                message.id.as_ref(),
                RpcError::new(code::INVALID_PARAMS, format!("no server named `{server}`")),
            ),
            &trace,
        );
    }
    let era = match classify(&app, &scope, &headers, &message, &principal) {
        Ok(era) => era,
        Err(response) => return with_trace(response, &trace),
    };
    if let Era::Session(session) = &era {
        session.touch();
    }
    let response = match (&message.method, &message.id) {
        (Some(method), Some(id)) if !id.is_null() => {
            let params = match &message.params {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(map)) => map.clone(),
                Some(_) => {
                    return with_trace(
                        rpc_error(
                            StatusCode::OK,
                            Some(id),
                            RpcError::new(code::INVALID_PARAMS, "`params` must be an object"),
                        ),
                        &trace,
                    );
                }
            };
            request(
                app.clone(),
                config,
                scope,
                era,
                principal,
                trace,
                id.clone(),
                method.clone(),
                params,
                &headers,
            )
            .await
        }
        (Some(method), _) => notification(&era, method, message.params.as_ref()),
        (None, Some(id)) if message.result.is_some() || message.error.is_some() => {
            answer(&era, id, message.result, message.error)
        }
        _ => rpc_error(
            StatusCode::BAD_REQUEST,
            message.id.as_ref(),
            RpcError::new(
                code::INVALID_REQUEST,
                "not a request, notification or response",
            ),
        ),
    };
    with_trace(response, &trace)
}

/// Decides the protocol era and validates its headers.
fn classify(
    app: &AppState,
    scope: &Option<String>,
    headers: &HeaderMap,
    message: &Incoming,
    principal: &Principal,
) -> Result<Era, Response> {
    let id = message.id.as_ref();
    let version_header = header_str(headers, "mcp-protocol-version");
    let meta = message.params.as_ref().and_then(|p| p.get("_meta"));
    let meta_version = meta.and_then(|m| m.get(META_VERSION));
    let session_header = header_str(headers, "mcp-session-id");
    let modern = version_header == Some(MODERN_VERSION)
        || (session_header.is_none() && meta_version.is_some());
    if message.method.as_deref() == Some("initialize") && !modern {
        return Ok(Era::Initialize);
    }
    if modern {
        return stateless(headers, message, meta, meta_version)
            .map(|capabilities| Era::Stateless { capabilities });
    }
    let Some(session_id) = session_header else {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            RpcError::new(
                code::INVALID_REQUEST,
                "missing Mcp-Session-Id header: send `initialize` first, or use protocol 2026-07-28 with per-request `_meta`",
            ),
        ));
    };
    let session = app
        .gateway
        .sessions
        .table
        .get(session_id)
        .filter(|s| {
            s.principal.subject == principal.subject && s.scope.as_deref() == scope.as_deref()
        })
        .ok_or_else(|| {
            rpc_error(
                StatusCode::NOT_FOUND,
                id,
                RpcError::new(
                    code::INVALID_REQUEST,
                    "unknown or expired session; initialize a new one",
                ),
            )
        })?;
    if let Some(version) = version_header
        && version != session.protocol_version
        && !HANDSHAKE_VERSIONS.contains(&version)
    {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            RpcError::new(
                code::INVALID_REQUEST,
                format!(
                    "unsupported MCP-Protocol-Version `{version}`; this session speaks {}",
                    session.protocol_version
                ),
            ),
        ));
    }
    Ok(Era::Session(session))
}

/// The 2026-07-28 validation ladder: envelope keys, then header agreement, then version.
fn stateless(
    headers: &HeaderMap,
    message: &Incoming,
    meta: Option<&Value>,
    meta_version: Option<&Value>,
) -> Result<Value, Response> {
    let id = message.id.as_ref();
    let bad = |status, code, text: String| Err(rpc_error(status, id, RpcError::new(code, text)));
    let Some(meta) = meta.and_then(Value::as_object) else {
        return bad(
            StatusCode::BAD_REQUEST,
            code::INVALID_PARAMS,
            format!(
                "params._meta must be an object carrying `{META_VERSION}` and `{META_CAPABILITIES}`"
            ),
        );
    };
    let missing: Vec<&str> = [META_VERSION, META_CAPABILITIES]
        .into_iter()
        .filter(|key| !meta.contains_key(*key))
        .collect();
    if !missing.is_empty() && message.method.is_some() && message.id.is_some() {
        return bad(
            StatusCode::BAD_REQUEST,
            code::INVALID_PARAMS,
            format!("params._meta is missing {}", missing.join(", ")),
        );
    }
    let version = meta_version.and_then(Value::as_str);
    if header_str(headers, "mcp-protocol-version") != version {
        return bad(
            StatusCode::BAD_REQUEST,
            HEADER_MISMATCH,
            "MCP-Protocol-Version header does not match params._meta's protocol version".into(),
        );
    }
    if header_str(headers, "mcp-method") != message.method.as_deref() {
        return bad(
            StatusCode::BAD_REQUEST,
            HEADER_MISMATCH,
            "Mcp-Method header does not match the request's method".into(),
        );
    }
    let name_key = match message.method.as_deref() {
        Some("tools/call") | Some("prompts/get") => Some("name"),
        Some("resources/read") => Some("uri"),
        _ => None,
    };
    if let Some(key) = name_key
        && let Some(body_value) = message
            .params
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
        && decode_header_value(header_str(headers, "mcp-name")).as_deref() != Some(body_value)
    {
        return bad(
            StatusCode::BAD_REQUEST,
            HEADER_MISMATCH,
            format!("Mcp-Name header does not match the request's `{key}`"),
        );
    }
    if version != Some(MODERN_VERSION) {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            RpcError::new(
                code::UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
            )
            .with_data(json!({
                "supported": [MODERN_VERSION],
                "requested": version,
            })),
        ));
    }
    Ok(meta
        .get(META_CAPABILITIES)
        .cloned()
        .unwrap_or_else(|| json!({})))
}

/// `Mcp-Name` values may be sent as `=?base64?…?=` when they are not plain ASCII.
fn decode_header_value(value: Option<&str>) -> Option<String> {
    use base64::Engine as _;
    let value = value?;
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(payload) => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        None => Some(value.to_owned()),
    }
}

fn notification(era: &Era, method: &str, params: Option<&Value>) -> Response {
    if let ("notifications/cancelled", Era::Session(session)) = (method, era)
        && let Some(request_id) = params.and_then(|p| p.get("requestId"))
    {
        session.cancel_request(&request_id.to_string());
    }
    accepted()
}

fn answer(era: &Era, id: &Value, result: Option<Value>, error: Option<RpcError>) -> Response {
    if let Era::Session(session) = era
        && let Some(id) = id.as_str()
    {
        let outcome = match error {
            Some(error) => Err(error),
            None => Ok(result.unwrap_or(Value::Null)),
        };
        session.deliver_answer(id, outcome);
    }
    accepted()
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// The capabilities Warden offers on `scope`: what the upstreams really support.
fn capabilities(app: &AppState, scope: &Option<String>) -> Value {
    let catalogs: Vec<_> = app
        .gateway
        .directory
        .all()
        .iter()
        .filter(|e| scope.as_deref().is_none_or(|s| s == &*e.name))
        .filter_map(|e| crate::gateway::routes::catalog_of(e))
        .collect();
    let any = |key: &str| catalogs.iter().any(|c| c.capabilities.get(key).is_some());
    let mut capabilities = json!({ "tools": { "listChanged": true } });
    if any("resources") || scope.is_none() {
        let subscribe = app
            .gateway
            .directory
            .all()
            .iter()
            .filter(|e| scope.as_deref().is_none_or(|s| s == &*e.name))
            .any(|e| crate::gateway::supports_subscriptions(e));
        capabilities["resources"] = json!({ "listChanged": true, "subscribe": subscribe });
    }
    if any("prompts") || scope.is_none() {
        capabilities["prompts"] = json!({ "listChanged": true });
    }
    if any("completions") {
        capabilities["completions"] = json!({});
    }
    capabilities["logging"] = json!({});
    capabilities
}

fn server_info() -> Value {
    json!({ "name": "warden", "title": "Warden", "version": crate::VERSION })
}

#[allow(clippy::too_many_arguments)]
async fn request(
    app: AppState,
    config: Arc<Config>,
    scope: Option<String>,
    era: Era,
    principal: Arc<Principal>,
    trace: TraceContext,
    id: Value,
    method: String,
    params: Map<String, Value>,
    headers: &HeaderMap,
) -> Response {
    let modern = matches!(era, Era::Stateless { .. });
    let ok = |result: Value| result_response(&id, &result_text(result), &trace, modern);
    // Acknowledgements are answered exactly `{}` (strict clients compare them), without
    // the trace in `_meta`; the `traceparent` header still carries it.
    let empty = || {
        let body = if modern {
            r#"{"resultType":"complete"}"#
        } else {
            "{}"
        };
        let mut frame = Vec::with_capacity(64);
        jsonrpc::write_result(&mut frame, &id.to_string(), body);
        json_response(StatusCode::OK, frame)
    };
    // tools/call checks the surface limit with its server's and tool's; every other
    // request is checked here.
    if method != "tools/call"
        && let Err(limited) = app.limits.load().check(
            Surface::Mcp,
            principal.user_id(),
            &principal.tier,
            None,
            None,
        )
    {
        return rpc_error(
            StatusCode::OK,
            Some(&id),
            GatewayError::RateLimited(limited).to_rpc(),
        );
    }
    match method.as_str() {
        "initialize" => return initialize(&app, scope, principal, &id, &params, &trace).await,
        "ping" => return empty(),
        "server/discover" => {
            return ok(json!({
                "supportedVersions": [MODERN_VERSION],
                "capabilities": capabilities(&app, &scope),
                "serverInfo": server_info(),
                "ttlMs": 60_000,
                "cacheScope": "private",
            }));
        }
        "logging/setLevel" => {
            if let Era::Session(session) = &era
                && let Ok(mut level) = session.log_level.lock()
            {
                *level = params
                    .get("level")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            return empty();
        }
        "resources/subscribe" | "resources/unsubscribe" => {
            let Era::Session(session) = &era else {
                // 2026-07-28 subscribes through `subscriptions/listen`.
                return rpc_error(
                    StatusCode::NOT_FOUND,
                    Some(&id),
                    RpcError::new(
                        code::METHOD_NOT_FOUND,
                        format!(
                            "`{method}` is not part of protocol 2026-07-28: name the resources in `subscriptions/listen`"
                        ),
                    ),
                );
            };
            let ctx = CallContext::without_stream(
                principal,
                Some(session.clone()),
                trace,
                scope.as_deref().map(Arc::from),
            );
            return match subscription(&app, &config, &ctx, &method, params).await {
                Ok(()) => empty(),
                Err(error) => error_response(&app, error, &id, modern),
            };
        }
        "subscriptions/listen" if modern => {
            let credential = headers.clone();
            return listen(
                &app,
                &config,
                (scope, principal, credential),
                trace,
                id,
                &params,
            )
            .await;
        }
        _ => {}
    }
    let session = match &era {
        Era::Session(session) => Some(session.clone()),
        _ => None,
    };
    let client_capabilities = match &era {
        Era::Session(session) => session.client_capabilities.clone(),
        Era::Stateless { capabilities } => capabilities.clone(),
        Era::Initialize => Value::Null,
    };
    let accepts_sse = header_str(headers, "accept")
        .is_none_or(|a| a.contains("text/event-stream") || a.contains("*/*"));
    // A stateless call that may be answered `input_required` (see `mrtr.rs`): bound to
    // who made it and what it asked, so only the same request can take it back. Only a
    // client that can be asked (it hears the event stream and declared sampling,
    // elicitation or roots) pays for the binding's copy of the params; a retry is
    // recognised whatever it accepts.
    let retry = params.contains_key("requestState");
    let askable = accepts_sse
        && INPUT_CAPABILITIES
            .iter()
            .any(|(_, capability)| client_capabilities.get(capability).is_some());
    let binding = (modern && INPUT_METHODS.contains(&method.as_str()) && (retry || askable))
        .then(|| Binding::new(owner_of(&principal), scope.as_deref(), &method, &params));
    let caller = Caller {
        session: session.clone(),
        client_capabilities,
        id,
        trace,
        modern,
        binding,
    };
    if caller.binding.is_some() && retry {
        return resume(app, caller, &params).await;
    }
    let (sink, upcalls) = if accepts_sse {
        let (sink, upcalls) = mpsc::channel(UPCALL_BUFFER);
        (Some(sink), Some(upcalls))
    } else {
        (None, None)
    };
    let cancel = match &session {
        Some(session) => session.begin_request(&caller.id.to_string()),
        None => CancellationToken::new(),
    };
    let ctx = CallContext {
        principal,
        session: session.clone(),
        trace,
        scope: scope.as_deref().map(Arc::from),
        sink,
        cancel: cancel.clone(),
    };
    let rules = app.rules();
    let policy = rules.policy.clone();
    let task_app = app.clone();
    // Watched while the call is held for input (`mrtr.rs`); only such calls need it.
    let ended = caller.binding.is_some().then(CancellationToken::new);
    let task_ended = ended.clone();
    let call = tokio::spawn(async move {
        let _ended = task_ended.map(CancellationToken::drop_guard);
        let gateway = &task_app.gateway;
        let outcome = match method.as_str() {
            "tools/list" => gateway
                .list_tools(&config, &policy, &ctx)
                .await
                .map(|tools| result_text(json!({ "tools": tools }))),
            "tools/call" => gateway.call_tool(&config, &rules, &ctx, params).await,
            "prompts/list" => gateway
                .list_prompts(&config, &policy, &ctx)
                .await
                .map(|prompts| result_text(json!({ "prompts": prompts }))),
            "prompts/get" => gateway.get_prompt(&config, &policy, &ctx, params).await,
            "resources/list" => gateway
                .list_resources(&config, &policy, &ctx, false)
                .await
                .map(|resources| result_text(json!({ "resources": resources }))),
            "resources/templates/list" => gateway
                .list_resources(&config, &policy, &ctx, true)
                .await
                .map(|templates| result_text(json!({ "resourceTemplates": templates }))),
            "resources/read" => gateway.read_resource(&config, &policy, &ctx, params).await,
            "completion/complete" => gateway.complete(&config, &policy, &ctx, params).await,
            other => Err(GatewayError::Upstream(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!("method `{other}` is not supported by Warden"),
            ))),
        };
        // The sink closes here, which ends an SSE answer after the result.
        drop(ctx);
        let cacheable = matches!(
            method.as_str(),
            "tools/list"
                | "prompts/list"
                | "resources/list"
                | "resources/templates/list"
                | "resources/read"
        );
        if modern && cacheable {
            outcome.map(|result| with_cache_hints(&result))
        } else {
            outcome
        }
    });
    let guard = RequestGuard {
        session,
        id: caller.id.to_string(),
        cancel,
    };
    respond(app, call, upcalls, guard, ended, caller).await
}

/// Who a held call belongs to: the token's issuer and subject, and the client it was
/// issued to.
fn owner_of(principal: &Principal) -> Owner {
    Owner {
        issuer: principal.issuer.clone(),
        subject: principal.subject.clone(),
        client: principal.client_id.clone(),
    }
}

/// `resources/subscribe` or `resources/unsubscribe` of a session.
async fn subscription(
    app: &AppState,
    config: &Config,
    ctx: &CallContext,
    method: &str,
    params: Map<String, Value>,
) -> Result<(), GatewayError> {
    if method == "resources/subscribe" {
        let policy = app.policy.load();
        app.gateway
            .subscribe_resource(config, &policy, ctx, params)
            .await
    } else {
        app.gateway.unsubscribe_resource(config, ctx, params).await
    }
}

/// Cancels the call if the client goes away before the answer, and unregisters it.
struct RequestGuard {
    session: Option<Arc<Session>>,
    id: String,
    cancel: CancellationToken,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(session) = &self.session {
            session.end_request(&self.id);
        }
    }
}

pub type CallTask = tokio::task::JoinHandle<Result<Box<RawValue>, GatewayError>>;

/// Who is waiting for a call's answer, and how it must be written.
struct Caller {
    session: Option<Arc<Session>>,
    client_capabilities: Value,
    /// The JSON-RPC id of the request being answered.
    id: Value,
    /// The call's trace (on a retry, the original request's: the audit row's).
    trace: TraceContext,
    modern: bool,
    /// Set when the call may wait for the client's input (`mrtr.rs`).
    binding: Option<Binding>,
}

impl Caller {
    /// Whether an upstream's `method` goes back to this client as `input_required`.
    fn takes_input_for(&self, method: &str) -> bool {
        self.binding.is_some() && self.declared(method)
    }

    /// Whether the client declared the capability that `method` needs.
    fn declared(&self, method: &str) -> bool {
        INPUT_CAPABILITIES
            .iter()
            .find(|(asked, _)| *asked == method)
            .is_some_and(|(_, capability)| self.client_capabilities.get(capability).is_some())
    }
}

/// A call in flight, apart from the request that is waiting for it.
struct CallParts {
    call: CallTask,
    upcalls: mpsc::Receiver<Upcall>,
    guard: RequestGuard,
    /// Cancelled when the call's task ends, however it ends (for calls that may be
    /// held for input).
    ended: Option<CancellationToken>,
}

/// A stateless client's call held until the client answers the upstream's request.
pub struct Suspended {
    parts: CallParts,
    trace: TraceContext,
    /// Where the client's answer goes: the upstream is waiting on it.
    reply: oneshot::Sender<Result<Value, RpcError>>,
}

impl Suspended {
    /// Cancels the held call (its upstream hears `notifications/cancelled`); the task
    /// ends once it has recorded the call.
    pub fn cancel(self) -> CallTask {
        let Suspended { parts, .. } = self;
        drop(parts.guard);
        parts.call
    }
}

/// Holds the call until the client answers `method` (see `mrtr.rs`); returns the
/// `InputRequiredResult` to answer with. When no more calls can be held, the upstream's
/// request is refused and the parts come back: the call goes on without the answer.
fn suspend(
    app: &AppState,
    caller: &Caller,
    parts: CallParts,
    method: &str,
    params: Value,
    reply: oneshot::Sender<Result<Value, RpcError>>,
) -> Result<Box<RawValue>, CallParts> {
    let (Some(binding), Some(ended)) = (caller.binding.clone(), parts.ended.clone()) else {
        let _ = reply.send(Err(unsupported(method)));
        return Err(parts);
    };
    if app.gateway.closing.is_cancelled() {
        // The listener is closing: no retry could reach the call.
        let _ = reply.send(Err(RpcError::new(
            code::INTERNAL_ERROR,
            format!("Warden is shutting down; `{method}` was not sent to the client"),
        )));
        return Err(parts);
    }
    let config = app.config.load();
    let gateway = &config.gateway;
    let limits = Limits {
        timeout: gateway.input_timeout,
        max: gateway.max_awaiting_input,
        max_per_owner: gateway.max_awaiting_input_per_principal,
    };
    let ended = ended.cancelled_owned();
    let suspended = Suspended {
        parts,
        trace: caller.trace,
        reply,
    };
    match app.awaiting_input.hold(binding, suspended, ended, limits) {
        Ok(state) => Ok(result_text(json!({
            "resultType": "input_required",
            "inputRequests": { INPUT_KEY: { "method": method, "params": params } },
            "requestState": state,
        }))),
        Err((suspended, full)) => {
            let why = match full {
                Full::Total(0) => "calls do not wait for a stateless client's input here (gateway.max_awaiting_input: 0)".to_owned(),
                Full::Total(max) => format!("Warden holds {max} calls awaiting their clients' input already (gateway.max_awaiting_input)"),
                Full::PerOwner(max) => format!("this principal has {max} calls awaiting its input already (gateway.max_awaiting_input_per_principal)"),
            };
            // With the rounds turned off this is the operator's choice, not a limit hit.
            if matches!(full, Full::Total(0)) {
                tracing::debug!(method, reason = %why, "an upstream's request was refused");
            } else {
                tracing::warn!(method, reason = %why, "an upstream's request was refused");
            }
            let _ = suspended.reply.send(Err(RpcError::new(
                code::INTERNAL_ERROR,
                format!("{why}; `{method}` was not sent to the client"),
            )));
            Err(suspended.parts)
        }
    }
}

/// What an upstream hears when the client cannot be asked `method`.
fn unsupported(method: &str) -> RpcError {
    RpcError::new(
        code::METHOD_NOT_FOUND,
        format!("the client does not support `{method}`"),
    )
}

/// A stateless client's retry with its input: the held call gets the answer and is
/// waited for on this request.
async fn resume(app: AppState, caller: Caller, params: &Map<String, Value>) -> Response {
    let refuse = |message: String| {
        rpc_error(
            StatusCode::OK,
            Some(&caller.id),
            RpcError::new(code::INVALID_PARAMS, message),
        )
    };
    let Some(state) = params.get("requestState").and_then(Value::as_str) else {
        return refuse("`requestState` must be a string".into());
    };
    let Some(Value::Object(mut answer)) = params
        .get("inputResponses")
        .and_then(|responses| responses.get(INPUT_KEY))
        .cloned()
    else {
        return refuse(format!(
            "`inputResponses` must carry `{INPUT_KEY}`, the answer this call waits for, as an object"
        ));
    };
    // The upstream speaks the handshake era, which has no `resultType`.
    answer.remove("resultType");
    let Some(binding) = &caller.binding else {
        return refuse("this request cannot carry `requestState`".into());
    };
    let taken = if mrtr::is_warden_state(state) {
        app.awaiting_input.take(state, binding)
    } else {
        Err(Refusal::Unknown)
    };
    let suspended = match taken {
        Ok(suspended) => suspended,
        Err(Refusal::Unknown) => {
            return refuse(
                "`requestState` names no call awaiting input on this Warden: it was answered \
                 already, ended at its deadline, waited longer than gateway.input_timeout, or \
                 comes from another instance; send the request again without it"
                    .into(),
            );
        }
        Err(Refusal::Changed) => {
            return refuse(
                "a retry must repeat its request on the same endpoint: only \
                 `inputResponses`, `requestState` and `_meta` may change"
                    .into(),
            );
        }
    };
    // If the upstream stopped waiting (its call ended), the outcome is in the call.
    let _ = suspended.reply.send(Ok(Value::Object(answer)));
    let trace = suspended.trace;
    let caller = Caller { trace, ..caller };
    let CallParts {
        call,
        upcalls,
        guard,
        ended,
    } = suspended.parts;
    let response = respond(app, call, Some(upcalls), guard, ended, caller).await;
    // The call's trace, in the header as in `_meta`.
    with_trace(response, &trace)
}

/// Waits for the result; switches to SSE if the upstream sends anything first.
async fn respond(
    app: AppState,
    mut call: CallTask,
    upcalls: Option<mpsc::Receiver<Upcall>>,
    mut guard: RequestGuard,
    ended: Option<CancellationToken>,
    caller: Caller,
) -> Response {
    let Some(mut upcalls) = upcalls else {
        let outcome = (&mut call).await;
        drop(guard);
        return finish(&app, outcome, &caller);
    };
    loop {
        // Upcalls first: when both are ready, the notifications must not be lost to a
        // JSON answer that has no room for them.
        let first = tokio::select! {
            biased;
            upcall = upcalls.recv() => upcall,
            outcome = &mut call => {
                match upcalls.try_recv() {
                    Ok(upcall) => {
                        let parts = CallParts { call, upcalls, guard, ended };
                        return sse_answer(app, parts, upcall, caller, Some(outcome));
                    }
                    Err(_) => {
                        drop(guard);
                        return finish(&app, outcome, &caller);
                    }
                }
            }
        };
        let Some(first) = first else {
            let outcome = (&mut call).await;
            drop(guard);
            return finish(&app, outcome, &caller);
        };
        let parts = CallParts {
            call,
            upcalls,
            guard,
            ended: ended.clone(),
        };
        match first {
            Upcall::Request {
                method,
                params,
                reply,
            } if caller.takes_input_for(&method) => {
                match suspend(&app, &caller, parts, &method, params, reply) {
                    Ok(result) => {
                        return result_response(&caller.id, &result, &caller.trace, true);
                    }
                    // Refused to the upstream; the call goes on.
                    Err(back) => {
                        CallParts {
                            call,
                            upcalls,
                            guard,
                            ..
                        } = back
                    }
                }
            }
            first => return sse_answer(app, parts, first, caller, None),
        }
    }
}

type CallOutcome = Result<Result<Box<RawValue>, GatewayError>, tokio::task::JoinError>;

/// Answers with an event stream: `first`, then further upcalls, then the result.
fn sse_answer(
    app: AppState,
    parts: CallParts,
    first: Upcall,
    caller: Caller,
    finished: Option<CallOutcome>,
) -> Response {
    let state = SseState {
        app,
        call: Some(parts.call),
        upcalls: parts.upcalls,
        pending: Some(first),
        finished,
        caller,
        guard: Some(parts.guard),
        ended: parts.ended,
    };
    let events = stream::unfold(state, next_event);
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct SseState {
    app: AppState,
    call: Option<CallTask>,
    upcalls: mpsc::Receiver<Upcall>,
    pending: Option<Upcall>,
    /// The call's outcome once it is known; sent after every queued upcall.
    finished: Option<CallOutcome>,
    caller: Caller,
    guard: Option<RequestGuard>,
    ended: Option<CancellationToken>,
}

async fn next_event(mut state: SseState) -> Option<(Result<Bytes, Infallible>, SseState)> {
    loop {
        if let Some(upcall) = state.pending.take() {
            match upcall_event(&mut state, upcall) {
                Some(Event::Upcall(event)) => return Some((Ok(event), state)),
                Some(Event::Last(event)) => return Some((Ok(event), finish_state(state))),
                None => continue,
            }
        }
        if state.finished.is_some() {
            // Everything queued before the result goes out first, in order.
            if let Ok(upcall) = state.upcalls.try_recv() {
                state.pending = Some(upcall);
                continue;
            }
            let outcome = state.finished.take()?;
            return Some((Ok(final_event(outcome, &state)), finish_state(state)));
        }
        let call = state.call.as_mut()?;
        tokio::select! {
            biased;
            upcall = state.upcalls.recv() => match upcall {
                Some(upcall) => state.pending = Some(upcall),
                // The call dropped its sink: only the result is left.
                None => state.finished = Some(call.await),
            },
            outcome = &mut *call => state.finished = Some(outcome),
        }
    }
}

fn finish_state(mut state: SseState) -> SseState {
    state.call = None;
    state.guard = None;
    state
}

fn sse_bytes(data: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(data.len() + 24);
    event.extend_from_slice(b"event: message\ndata: ");
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// What an upcall turns into on the stream.
enum Event {
    /// A notification or a request for the client; more follows.
    Upcall(Bytes),
    /// The stream's last event: the call waits for the client's input (`mrtr.rs`).
    Last(Bytes),
}

fn upcall_event(state: &mut SseState, upcall: Upcall) -> Option<Event> {
    match upcall {
        Upcall::Notification { method, params } => {
            let mut frame = Vec::new();
            jsonrpc::write_notification(&mut frame, &method, Some(&params.to_string()));
            Some(Event::Upcall(sse_bytes(&frame)))
        }
        Upcall::Request {
            method,
            params,
            reply,
        } => {
            if state.caller.takes_input_for(&method) && state.finished.is_none() {
                return input_required_event(state, &method, params, reply);
            }
            let Some(session) = state
                .caller
                .session
                .as_ref()
                .filter(|_| state.caller.declared(&method))
            else {
                let _ = reply.send(Err(unsupported(&method)));
                return None;
            };
            let request_id = session.expect_answer(reply);
            let mut frame = Vec::new();
            jsonrpc::write_request(
                &mut frame,
                &Value::from(request_id).to_string(),
                &method,
                Some(&params.to_string()),
            );
            Some(Event::Upcall(sse_bytes(&frame)))
        }
    }
}

/// Holds the stream's call for the client's input, and ends the stream with the
/// `InputRequiredResult`; `None` when it cannot be held (the call goes on).
fn input_required_event(
    state: &mut SseState,
    method: &str,
    params: Value,
    reply: oneshot::Sender<Result<Value, RpcError>>,
) -> Option<Event> {
    if state.call.is_none() || state.guard.is_none() {
        let _ = reply.send(Err(unsupported(method)));
        return None;
    }
    let (call, guard) = (state.call.take()?, state.guard.take()?);
    // The stream ends with this event; its receiver goes with the held call.
    let (_, closed) = mpsc::channel(1);
    let parts = CallParts {
        call,
        upcalls: std::mem::replace(&mut state.upcalls, closed),
        guard,
        ended: state.ended.clone(),
    };
    match suspend(&state.app, &state.caller, parts, method, params, reply) {
        Ok(result) => {
            let result = decorate(result.get(), &state.caller.trace, true);
            let mut frame = Vec::new();
            jsonrpc::write_result(&mut frame, &state.caller.id.to_string(), &result);
            Some(Event::Last(sse_bytes(&frame)))
        }
        Err(back) => {
            state.call = Some(back.call);
            state.upcalls = back.upcalls;
            state.guard = Some(back.guard);
            None
        }
    }
}

fn final_event(outcome: CallOutcome, state: &SseState) -> Bytes {
    let caller = &state.caller;
    let mut frame = Vec::new();
    match flatten(outcome) {
        Ok(result) => {
            let result = decorate(result.get(), &caller.trace, caller.modern);
            jsonrpc::write_result(&mut frame, &caller.id.to_string(), &result);
        }
        Err(error) => jsonrpc::write_error(&mut frame, &caller.id.to_string(), &error.to_rpc()),
    }
    sse_bytes(&frame)
}

fn flatten(
    outcome: Result<Result<Box<RawValue>, GatewayError>, tokio::task::JoinError>,
) -> Result<Box<RawValue>, GatewayError> {
    outcome.unwrap_or_else(|join| {
        Err(GatewayError::Upstream(RpcError::new(
            code::INTERNAL_ERROR,
            format!("the request failed inside Warden: {join}"),
        )))
    })
}

fn finish(app: &AppState, outcome: CallOutcome, caller: &Caller) -> Response {
    let (id, trace, modern) = (&caller.id, &caller.trace, caller.modern);
    match flatten(outcome) {
        Ok(result) => result_response(id, &result, trace, modern),
        Err(error) => error_response(app, error, id, modern),
    }
}

/// How a gateway error is answered.
fn error_response(app: &AppState, error: GatewayError, id: &Value, modern: bool) -> Response {
    if let GatewayError::Denied(_) = error {
        return scope_failure(app, &error, Some(id));
    }
    let status = if modern && error.to_rpc().code == code::METHOD_NOT_FOUND {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    rpc_error(status, Some(id), error.to_rpc())
}

fn result_text(value: Value) -> Box<RawValue> {
    // Serialising a Value cannot fail.
    serde_json::value::to_raw_value(&value)
        .unwrap_or_else(|_| RawValue::from_string("{}".into()).unwrap_or_default())
}

/// 2026-07-28 makes listings and reads cacheable and requires the hints: what Warden
/// lists is filtered per caller, so it may only be cached per authorisation context.
fn with_cache_hints(result: &RawValue) -> Box<RawValue> {
    let mut value: Map<String, Value> = serde_json::from_str(result.get()).unwrap_or_default();
    value.entry("ttlMs").or_insert(Value::from(LIST_TTL_MS));
    value.entry("cacheScope").or_insert(Value::from("private"));
    result_text(Value::Object(value))
}

/// Adds `_meta.traceparent` (and `resultType` for the stateless era) to a result.
fn decorate(result: &str, trace: &TraceContext, modern: bool) -> String {
    let mut text = jsonrpc::add_meta(result, "traceparent", &Value::from(trace.header()))
        .unwrap_or_else(|| result.to_owned());
    if modern && !text.contains("\"resultType\"") && text.trim_start().starts_with('{') {
        let body = text.trim_start()[1..].trim_start().to_owned();
        text = if body.starts_with('}') {
            format!("{{\"resultType\":\"complete\"{body}")
        } else {
            format!("{{\"resultType\":\"complete\",{body}")
        };
    }
    text
}

fn result_response(id: &Value, result: &RawValue, trace: &TraceContext, modern: bool) -> Response {
    let result = decorate(result.get(), trace, modern);
    let mut body = Vec::with_capacity(result.len() + 48);
    jsonrpc::write_result(&mut body, &id.to_string(), &result);
    json_response(StatusCode::OK, body)
}

async fn initialize(
    app: &AppState,
    scope: Option<String>,
    principal: Arc<Principal>,
    id: &Value,
    params: &Map<String, Value>,
    trace: &TraceContext,
) -> Response {
    let requested = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or(LATEST_HANDSHAKE);
    let version = if HANDSHAKE_VERSIONS.contains(&requested) {
        requested
    } else {
        LATEST_HANDSHAKE
    };
    let policy = app.policy.load();
    if let Some(server) = &scope
        && let Err(denial) = policy.check(&principal, &Permission::List { server })
    {
        return scope_failure(app, &GatewayError::Denied(denial), Some(id));
    }
    let created = app
        .gateway
        .sessions
        .create(NewSession {
            principal,
            protocol_version: version.to_owned(),
            client_info: params.get("clientInfo").cloned().unwrap_or(Value::Null),
            client_capabilities: params
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({})),
            scope: scope.clone(),
        })
        .await;
    let session = match created {
        Ok(session) => session,
        Err(message) => {
            return rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(id),
                RpcError::new(code::SERVER_UNAVAILABLE, message),
            );
        }
    };
    if let Err(error) = session_start_hooks(app, &session, trace).await {
        app.gateway
            .sessions
            .end(&session.id, "refused by a SessionStart hook");
        return rpc_error(StatusCode::OK, Some(id), error.to_rpc());
    }
    let instructions = scope.as_ref().and_then(|server| {
        app.gateway
            .directory
            .get(server)
            .and_then(|e| crate::gateway::routes::catalog_of(&e))
            .and_then(|c| c.instructions.clone())
    });
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": capabilities(app, &scope),
        "serverInfo": server_info(),
    });
    if let Some(instructions) = instructions {
        result["instructions"] = Value::from(instructions);
    }
    let mut response = result_response(id, &result_text(result), trace, false);
    if let Ok(value) = HeaderValue::from_str(&session.id) {
        response.headers_mut().insert("mcp-session-id", value);
    }
    response
}

// ---------------------------------------------------------------------------------------
// GET and DELETE
// ---------------------------------------------------------------------------------------

async fn session_of(
    app: &AppState,
    scope: &Option<String>,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Arc<Session>, Response> {
    let config = app.config.load_full();
    check_host_and_origin(&config, headers)?;
    if header_str(headers, "mcp-protocol-version") == Some(MODERN_VERSION) {
        return Err(rpc_error(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            RpcError::new(
                code::INVALID_REQUEST,
                format!("{method} is not part of protocol {MODERN_VERSION}"),
            ),
        ));
    }
    let bearer = bearer_token(header_str(headers, "authorization"));
    let principal = app
        .authenticator
        .authenticate(bearer)
        .await
        .map_err(|rejection| auth_failure(app, rejection, None))?;
    let id = header_str(headers, "mcp-session-id").ok_or_else(|| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            RpcError::new(code::INVALID_REQUEST, "missing Mcp-Session-Id header"),
        )
    })?;
    app.gateway
        .sessions
        .table
        .get(id)
        .filter(|s| {
            s.principal.subject == principal.subject && s.scope.as_deref() == scope.as_deref()
        })
        .ok_or_else(|| {
            rpc_error(
                StatusCode::NOT_FOUND,
                None,
                RpcError::new(code::INVALID_REQUEST, "unknown or expired session"),
            )
        })
}

async fn handle_get(app: AppState, scope: Option<String>, headers: HeaderMap) -> Response {
    let session = match session_of(&app, &scope, &headers, &Method::GET).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let last_event_id = header_str(&headers, "last-event-id").and_then(|v| v.parse().ok());
    let receiver = session.open_stream(last_event_id);
    let closed = session.closed.clone();
    let events = stream::unfold((receiver, closed), |(mut receiver, closed)| async move {
        tokio::select! {
            item = receiver.recv() => {
                let (id, data) = item?;
                let event = format!("id: {id}\nevent: message\ndata: {data}\n\n");
                Some((Ok::<_, Infallible>(Bytes::from(event)), (receiver, closed)))
            }
            _ = closed.cancelled() => None,
        }
    });
    // A comment first, so the headers go out at once and the client sees the stream open.
    let events =
        stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b": stream open\n\n")) })
            .chain(events);
    let mut response = Response::new(Body::from_stream(keep_alive(events)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Interleaves a comment every 15 s so proxies keep an idle stream open.
fn keep_alive(
    events: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let ticks = tokio_stream_interval(std::time::Duration::from_secs(15))
        .map(|_| Ok(Bytes::from_static(b": keep-alive\n\n")));
    futures_util::stream::select(
        events.map(Some).chain(stream::once(async { None })),
        ticks.map(Some),
    )
    .take_while(|item| std::future::ready(item.is_some()))
    .filter_map(std::future::ready)
}

fn tokio_stream_interval(period: std::time::Duration) -> impl Stream<Item = ()> + Send + 'static {
    stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + period, period),
        |mut interval| async move {
            interval.tick().await;
            Some(((), interval))
        },
    )
}

async fn handle_delete(app: AppState, scope: Option<String>, headers: HeaderMap) -> Response {
    match session_of(&app, &scope, &headers, &Method::DELETE).await {
        Ok(session) => {
            app.gateway.sessions.end(&session.id, "ended by the client");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(response) => response,
    }
}

/// `subscriptions/listen` (2026-07-28): an SSE stream that first acknowledges the
/// notification types Warden will honour, then carries them, each tagged with the
/// subscription id, until the client leaves, Warden shuts down (then a final result
/// closes it gracefully), or the credential that opened it (`headers`) stops verifying —
/// checked every [`super::STREAM_RECHECK`].
async fn listen(
    app: &AppState,
    config: &Config,
    (scope, principal, headers): (Option<String>, Arc<Principal>, HeaderMap),
    trace: TraceContext,
    id: Value,
    params: &Map<String, Value>,
) -> Response {
    let requested = params.get("notifications").cloned().unwrap_or(Value::Null);
    let flag = |key: &str| requested.get(key).and_then(Value::as_bool).unwrap_or(false);
    let filter = crate::gateway::ListenFilter {
        tools: flag("toolsListChanged"),
        prompts: flag("promptsListChanged"),
        resources: flag("resourcesListChanged"),
    };
    // The stream is registered before its resources are subscribed, so an update that
    // comes while the later ones are still being subscribed reaches it (after the
    // acknowledgement, which the stream sends first whatever is queued).
    let wants_resources = requested
        .get("resourceSubscriptions")
        .is_some_and(Value::is_array);
    let subscriber = wants_resources.then(|| format!("listen-{}", uuid::Uuid::new_v4().simple()));
    let (sender, receiver) = mpsc::channel::<Arc<str>>(64);
    app.gateway.add_listener(crate::gateway::Listener {
        id: id.clone(),
        principal: principal.clone(),
        scope: scope.as_deref().map(Arc::from),
        filter,
        sender,
        subscriber: subscriber.clone(),
    });
    let resources = match subscriber {
        Some(key) => Some(
            listen_subscriptions(app, config, &scope, &principal, trace, &requested, key).await,
        ),
        None => None,
    };
    let mut honoured = Map::new();
    for (key, on) in [
        ("toolsListChanged", filter.tools),
        ("promptsListChanged", filter.prompts),
        ("resourcesListChanged", filter.resources),
    ] {
        if on {
            honoured.insert(key.into(), Value::Bool(true));
        }
    }
    if let Some(resources) = &resources {
        honoured.insert("resourceSubscriptions".into(), json!(resources.uris));
    }
    let ack = json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": honoured, "_meta": {"io.modelcontextprotocol/subscriptionId": id}},
    });
    let closing = app.gateway.closing.clone();
    let first =
        stream::once(async move { Ok::<_, Infallible>(sse_bytes(ack.to_string().as_bytes())) });
    // The stream's resource subscriptions end when it does, however it ends.
    let subscribed = resources.map(|resources| resources.guard);
    let credential = super::Recheck::new(app.clone(), headers);
    let rest = stream::unfold(
        (receiver, closing, Some(id), subscribed, credential),
        |(mut receiver, closing, id, subscribed, mut credential)| async move {
            let id = id?;
            loop {
                tokio::select! {
                    item = receiver.recv() => {
                        let data = item?;
                        let state = (receiver, closing, Some(id), subscribed, credential);
                        return Some((Ok(sse_bytes(data.as_bytes())), state));
                    }
                    _ = closing.cancelled() => {
                        let result = json!({
                            "resultType": "complete",
                            "_meta": {"io.modelcontextprotocol/subscriptionId": id},
                        });
                        let mut frame = Vec::new();
                        jsonrpc::write_result(&mut frame, &id.to_string(), &result.to_string());
                        let state = (receiver, closing, None, subscribed, credential);
                        return Some((Ok(sse_bytes(&frame)), state));
                    }
                    principal = credential.next() => {
                        // Revoked, expired, disabled or signed out: the stream ends (and
                        // with it its subscriptions).
                        principal?;
                    }
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(keep_alive(first.chain(rest))));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The resources a listen stream subscribed to, under one subscriber key.
struct ListenResources {
    /// The URIs honoured: each one the caller may read, on a server that offers
    /// subscriptions.
    uris: Vec<String>,
    guard: Unsubscribe,
}

/// Ends a subscriber's subscriptions when dropped.
struct Unsubscribe {
    gateway: Arc<crate::gateway::Gateway>,
    key: String,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.gateway.forget_subscriber(&self.key);
    }
}

/// Subscribes the listen stream registered as subscriber `key` to its
/// `resourceSubscriptions`. A URI that cannot be subscribed (unknown, not permitted, not
/// offered) is left out of the acknowledgement, and so is every one after the first
/// `gateway.max_resource_subscriptions` distinct ones.
async fn listen_subscriptions(
    app: &AppState,
    config: &Config,
    scope: &Option<String>,
    principal: &Arc<Principal>,
    trace: TraceContext,
    requested: &Value,
    key: String,
) -> ListenResources {
    // In the client's order, once each, and no more than one stream may hold: a long
    // list costs no more checks (and audit rows) than the cap.
    let mut asked: Vec<&str> = Vec::new();
    for uri in requested["resourceSubscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if asked.len() == config.gateway.max_resource_subscriptions {
            break;
        }
        if !asked.contains(&uri) {
            asked.push(uri);
        }
    }
    let guard = Unsubscribe {
        gateway: app.gateway.clone(),
        key: key.clone(),
    };
    let ctx = CallContext::without_stream(
        principal.clone(),
        None,
        trace,
        scope.as_deref().map(Arc::from),
    );
    let policy = app.policy.load();
    let mut uris = Vec::new();
    for uri in asked {
        let mut params = Map::new();
        params.insert("uri".into(), Value::from(uri));
        match app
            .gateway
            .subscribe(config, &policy, &ctx, &key, &params)
            .await
        {
            Ok(()) => uris.push(uri.to_owned()),
            Err(error) => {
                tracing::debug!(%uri, %error, "a listen stream's resource subscription was not honoured")
            }
        }
    }
    ListenResources { uris, guard }
}

/// Runs `SessionStart` hooks for a new session; a denial refuses the session.
async fn session_start_hooks(
    app: &AppState,
    session: &Arc<Session>,
    trace: &TraceContext,
) -> Result<(), GatewayError> {
    let hooks = app.hooks.load_full();
    if !hooks.any(HookEvent::SessionStart) {
        return Ok(());
    }
    let context = session_hook_context(HookEvent::SessionStart, session, trace);
    let payload =
        json!({"client_info": session.client_info, "protocol_version": session.protocol_version});
    let verdict = hooks.run(&context, &payload, app.gateway.http()).await;
    let call = CallContext::without_stream(
        session.principal.clone(),
        Some(session.clone()),
        *trace,
        None,
    );
    app.gateway
        .record_hooks(&call, &verdict.reports, HookEvent::SessionStart)
        .await;
    match verdict.denied {
        Some((hook, reason)) => Err(GatewayError::HookDenied { hook, reason }),
        None => Ok(()),
    }
}

/// The facts session hooks match on.
pub fn session_hook_context(
    event: HookEvent,
    session: &Session,
    trace: &TraceContext,
) -> HookContext {
    HookContext {
        event,
        server: session.scope.clone(),
        tool: None,
        exposed_tool: None,
        principal: session.principal.user_id().to_owned(),
        roles: session.principal.roles.clone(),
        scopes: session.principal.scopes.iter().map(str::to_owned).collect(),
        session_id: Some(session.id.clone()),
        trace_id: trace.trace_id_hex(),
    }
}

/// Runs `SessionEnd` hooks when a session ends (called by the session actor; the
/// outcome is audited, the session is gone either way).
pub fn on_session_end(
    app: std::sync::Weak<crate::app::App>,
) -> impl Fn(Arc<Session>, String) + Send + Sync + 'static {
    move |session: Arc<Session>, reason: String| {
        let Some(app) = app.upgrade() else {
            return;
        };
        let hooks = app.hooks.load_full();
        if !hooks.any(HookEvent::SessionEnd) {
            return;
        }
        tokio::spawn(async move {
            let trace = TraceContext::generate();
            let context = session_hook_context(HookEvent::SessionEnd, &session, &trace);
            let verdict = hooks
                .run(&context, &json!({ "reason": reason }), app.gateway.http())
                .await;
            let call = CallContext::without_stream(
                session.principal.clone(),
                Some(session.clone()),
                trace,
                None,
            );
            app.gateway
                .record_hooks(&call, &verdict.reports, HookEvent::SessionEnd)
                .await;
        });
    }
}
