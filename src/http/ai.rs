//! The AI gateway's endpoints: `POST /v1/chat/completions` (OpenAI format),
//! `POST /v1/messages` (Anthropic format), `POST /v1/responses` (OpenAI's Responses API,
//! relayed to the providers that serve it), `POST /v1beta/models/{model}:generateContent`
//! and `:streamGenerateContent?alt=sse` (Gemini's format, as Gemini CLI and Google's
//! `genai` SDKs send it; also under `/v1/models/…`), streaming or not; token counts
//! (`POST /v1/messages/count_tokens`, `models/{model}:countTokens`,
//! `POST /v1/responses/input_tokens`); `POST /v1/embeddings`
//! (OpenAI format; providers with an OpenAI-style embeddings endpoint), and
//! `GET /v1/models` (the
//! models the caller may use, in the OpenAI shape, or the Anthropic one when the request
//! carries `anthropic-version`).
//!
//! This file knows HTTP: the caller's token (`Authorization: Bearer`, or `x-api-key` as
//! Anthropic's SDKs send it, or `x-goog-api-key` as Google's do; never a URL's `?key=`,
//! which proxies and access logs keep), the body limit (`server.max_body_bytes`) and depth limit,
//! `traceparent` in and out, and the status of every failure — answered in the client's
//! own error shape so its SDK reads it. The request itself is `ai::Ai::chat` (or `count_tokens`,
//! `embed`).
//!
//! | Failure | Status |
//! | --- | --- |
//! | no or bad token | 401 with `WWW-Authenticate` |
//! | malformed body, or a field the provider's format cannot express | 400 |
//! | the model is not configured (the message lists the ones the caller may use), or its provider cannot count tokens | 404 |
//! | missing scope | 403 (`insufficient_scope`) |
//! | body over `server.max_body_bytes` | 413 |
//! | rate limit or spent budget | 429 with `Retry-After` |
//! | provider answered 4xx/5xx | the same status (401/403 from the provider become 502: they are about Warden's key, not the caller's token); the provider's `Retry-After` kept |
//! | provider unreachable, or its answer unreadable | 502 |
//! | provider did not answer within its `timeout` | 504 |
//! | audit trail refusing, budget counters or key unreachable | 503 |

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use warden_actors::trace::TraceContext;

use super::AppState;
use super::error::ApiError;
use crate::ai::budgets::BudgetError;
use crate::ai::wire::{Wire, anthropic, gemini, openai};
use crate::ai::{AiError, Answer, Caller};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/responses", post(responses))
        .route("/v1/responses/input_tokens", post(input_tokens))
        .route("/v1beta/models/{target}", post(gemini))
        .route("/v1/models/{target}", post(gemini).get(model))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
}

async fn chat_completions(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    serve(app, headers, body, (Wire::OpenAi, Operation::Chat)).await
}

async fn messages(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    serve(app, headers, body, (Wire::Anthropic, Operation::Chat)).await
}

/// `POST /v1/messages/count_tokens` (Anthropic format).
async fn count_tokens(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    serve(app, headers, body, (Wire::Anthropic, Operation::Count)).await
}

async fn responses(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    serve(app, headers, body, (Wire::Responses, Operation::Chat)).await
}

/// `POST /v1/responses/input_tokens` (OpenAI's Responses format).
async fn input_tokens(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    serve(app, headers, body, (Wire::Responses, Operation::Count)).await
}

/// `POST /v1/embeddings` (OpenAI format).
async fn embeddings(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    serve(app, headers, body, (Wire::OpenAi, Operation::Embed)).await
}

/// `POST …/models/{model}:generateContent`, `:streamGenerateContent?alt=sse` or
/// `:countTokens`: the model and what to do with it come from the URL in this format.
async fn gemini(
    State(app): State<AppState>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let operation = Operation::Gemini {
        target: &target,
        query: query.as_deref(),
    };
    serve(app, headers, body, (Wire::Gemini, operation)).await
}

/// What a request body in some format is for.
enum Operation<'a> {
    Chat,
    Count,
    Embed,
    /// A Gemini URL's `{model}:{method}` and query, read once the caller is known.
    Gemini {
        target: &'a str,
        query: Option<&'a str>,
    },
}

/// Serves one request whose body is in `format`: the caller, the body, the operation, the
/// answer in the client's format on the request's trace.
async fn serve(
    app: AppState,
    headers: HeaderMap,
    body: Body,
    (format, operation): (Wire, Operation<'_>),
) -> Response {
    let trace = trace_of(&headers);
    let result = async {
        let (caller, bytes) = read_request(&app, &headers, body, trace).await?;
        let policy = app.policy.load_full();
        let limits = app.limits.load_full();
        let ai = &app.ai;
        let result = match operation {
            Operation::Chat => {
                ai.chat(&policy, &limits, &caller, (format, None), &bytes)
                    .await
            }
            Operation::Count => ai
                .count_tokens(&policy, &limits, &caller, (format, None), &bytes)
                .await
                .map(Answer::Complete),
            Operation::Embed => ai
                .embed(&policy, &limits, &caller, &bytes)
                .await
                .map(Answer::Complete),
            Operation::Gemini { target, query } => {
                let (model, method) = gemini_method(target, query)?;
                match method {
                    GeminiMethod::Generate { stream } => {
                        let from_url = (format, Some((model, stream)));
                        ai.chat(&policy, &limits, &caller, from_url, &bytes).await
                    }
                    GeminiMethod::CountTokens => ai
                        .count_tokens(&policy, &limits, &caller, (format, Some(model)), &bytes)
                        .await
                        .map(Answer::Complete),
                }
            }
        };
        result.map_err(|error| api_error(&app, error))
    }
    .await;
    with_traceparent(answer(result, format), &trace)
}

/// What a Gemini URL asks for.
#[derive(Debug, PartialEq)]
enum GeminiMethod {
    Generate { stream: bool },
    CountTokens,
}

/// The method a Gemini URL names; an error names what Warden serves instead.
fn gemini_method<'a>(
    target: &'a str,
    query: Option<&str>,
) -> Result<(&'a str, GeminiMethod), ApiError> {
    let (model, method) = match target.rsplit_once(':') {
        Some((model, method)) => (model, Some(method)),
        None => ("", None),
    };
    let sse = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|pair| pair == "alt=sse");
    let method = match method {
        Some("generateContent") => GeminiMethod::Generate { stream: false },
        Some("streamGenerateContent") if sse => GeminiMethod::Generate { stream: true },
        Some("countTokens") => GeminiMethod::CountTokens,
        Some("streamGenerateContent") => {
            return Err(ApiError::BadRequest(
                "Warden streams Gemini answers as server-sent events only: add `?alt=sse` \
                 (as Google's SDKs do)"
                    .into(),
            ));
        }
        _ => {
            return Err(ApiError::NotFound(format!(
                "`{target}`: Warden serves `models/{{model}}:generateContent`, \
                 `:streamGenerateContent?alt=sse` and `:countTokens`"
            )));
        }
    };
    Ok((model, method))
}

/// `response` carrying the request's trace (`traceparent`), as every AI answer does.
fn with_traceparent(mut response: Response, trace: &TraceContext) -> Response {
    if let Ok(value) = HeaderValue::from_str(&trace.header()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

fn trace_of(headers: &HeaderMap) -> TraceContext {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .map(|t| t.child())
        .unwrap_or_else(TraceContext::generate)
}

/// The caller (authenticated) and the request body (within the size and depth limits).
async fn read_request(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
    trace: TraceContext,
) -> Result<(Caller, bytes::Bytes), ApiError> {
    let principal = authenticate(app, headers).await?;
    let (limit, depth) = {
        let config = app.config.load();
        (config.server.max_body_bytes, config.server.max_json_depth)
    };
    let bytes = super::read_limited(body, limit).await?;
    if super::jsonlimits::exceeds_depth(&bytes, depth) {
        return Err(ApiError::BadRequest(format!(
            "the body nests deeper than {depth} levels (server.max_json_depth)"
        )));
    }
    let session_id = super::claimed_session(app, headers, &principal);
    let caller = Caller {
        principal,
        trace,
        session_id,
        anthropic_headers: ["anthropic-version", "anthropic-beta"]
            .iter()
            .filter_map(|name| {
                headers
                    .get(*name)
                    .map(|v| (HeaderName::from_static(name), v.clone()))
            })
            .collect(),
    };
    Ok((caller, bytes))
}

/// The HTTP answer: JSON, an event stream, or the error in the client's format.
fn answer(result: Result<Answer, ApiError>, format: Wire) -> Response {
    match result {
        Ok(Answer::Complete(bytes)) => {
            ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
        Ok(Answer::Stream(stream)) => (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(stream),
        )
            .into_response(),
        Err(error) => error_response(format, error),
    }
}

/// The models the caller may use, as (alias, provider), and whether to answer in
/// Anthropic's shape (the request carries `anthropic-version`); an error is answered.
async fn usable_models(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<(bool, Vec<(String, String)>), Response> {
    let anthropic = headers.contains_key("anthropic-version");
    let principal = authenticate(app, headers)
        .await
        .map_err(|error| error_response(list_format(anthropic), error))?;
    Ok((anthropic, app.ai.models_for(&app.policy.load(), &principal)))
}

/// `GET /v1/models`: the models the caller may use, in the OpenAI shape, or Anthropic's
/// when the request carries `anthropic-version`.
async fn models(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let (anthropic, models) = match usable_models(&app, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let entries: Vec<Value> = models
        .iter()
        .map(|(alias, provider)| model_entry(anthropic, alias, provider))
        .collect();
    let body = if anthropic {
        json!({
            "data": entries,
            "has_more": false,
            "first_id": models.first().map(|(a, _)| a),
            "last_id": models.last().map(|(a, _)| a),
        })
    } else {
        json!({"object": "list", "data": entries})
    };
    axum::Json(body).into_response()
}

/// `GET /v1/models/{id}`: one of the models the caller may use (the SDKs' `retrieve`).
async fn model(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (anthropic, models) = match usable_models(&app, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match models.iter().find(|(alias, _)| *alias == id) {
        Some((alias, provider)) => {
            axum::Json(model_entry(anthropic, alias, provider)).into_response()
        }
        None => {
            let missing = ApiError::NotFound(format!("no model `{id}` you may use"));
            error_response(list_format(anthropic), missing)
        }
    }
}

/// The format a model list answers in.
fn list_format(anthropic: bool) -> Wire {
    if anthropic {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    }
}

/// One model as a model list shows it.
fn model_entry(anthropic: bool, alias: &str, provider: &str) -> Value {
    if anthropic {
        json!({
            "type": "model",
            "id": alias,
            "display_name": alias,
            "created_at": "1970-01-01T00:00:00Z",
        })
    } else {
        json!({"id": alias, "object": "model", "created": 0, "owned_by": provider})
    }
}

/// The caller's token: `Authorization: Bearer …`, or `x-api-key` / `x-goog-api-key` (what
/// Anthropic's and Google's SDKs send; it carries a Warden token here, never a provider
/// key).
async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<crate::auth::Principal>, ApiError> {
    let key = ["x-api-key", "x-goog-api-key"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()));
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(key) = key
    {
        let mut with_bearer = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {key}")) {
            with_bearer.insert(header::AUTHORIZATION, value);
        }
        return super::authenticate(app, &with_bearer).await;
    }
    super::authenticate(app, headers).await
}

/// The HTTP answer for an AI gateway failure.
fn api_error(app: &AppState, error: AiError) -> ApiError {
    let message = error.to_string();
    match error {
        AiError::BadRequest(_) | AiError::Translation(_) => ApiError::BadRequest(message),
        AiError::UnknownModel { .. } | AiError::NotServed(_) => ApiError::NotFound(message),
        AiError::Denied { denial, .. } => ApiError::Forbidden {
            denial,
            resource_metadata: app.resource_metadata_url(),
        },
        AiError::RateLimited(limited) => ApiError::RateLimited {
            retry_after_secs: limited.retry_after_secs(),
            message,
        },
        AiError::Budget(budget) => match *budget {
            BudgetError::Exhausted { .. } => ApiError::RateLimited {
                retry_after_secs: budget.retry_after_secs().unwrap_or(60),
                message,
            },
            BudgetError::Unavailable { .. } => ApiError::Unavailable(message),
        },
        AiError::Audit(_) | AiError::Key(_) => ApiError::Unavailable(message),
        AiError::Upstream {
            status,
            retry_after_secs,
            ..
        } => ApiError::Upstream {
            status: passed_on(status),
            message,
            retry_after_secs,
        },
        AiError::Unreachable { .. } | AiError::BadAnswer { .. } => ApiError::Upstream {
            status: StatusCode::BAD_GATEWAY,
            message,
            retry_after_secs: None,
        },
        AiError::Timeout { .. } => ApiError::Upstream {
            status: StatusCode::GATEWAY_TIMEOUT,
            message,
            retry_after_secs: None,
        },
    }
}

/// The status a provider's error answer is passed on with: its own, except that a
/// refusal of Warden's credentials (401, 403) is a bad gateway for the caller, and a
/// provider-side request timeout (408) a gateway timeout.
fn passed_on(upstream: u16) -> StatusCode {
    match upstream {
        401 | 403 => StatusCode::BAD_GATEWAY,
        408 => StatusCode::GATEWAY_TIMEOUT,
        400..=599 => StatusCode::from_u16(upstream).unwrap_or(StatusCode::BAD_GATEWAY),
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// `error` answered in the client's format (headers such as `WWW-Authenticate` and
/// `Retry-After` as `ApiError` sets them).
fn error_response(format: Wire, error: ApiError) -> Response {
    let status = error.status();
    let message = error.message();
    let code = error.code();
    let body: Value = match format {
        Wire::Anthropic => anthropic::error_body(&message, anthropic_type(status)),
        Wire::Gemini => gemini::error_body(&message, status.as_u16(), gemini_status(status)),
        Wire::OpenAi | Wire::Responses => openai::error_body(&message, openai_type(status), code),
    };
    let mut response = error.into_response();
    *response.body_mut() = Body::from(body.to_string());
    response
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The `status` Google's APIs give an HTTP status.
fn gemini_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_statuses_pass_on_except_credential_refusals() {
        assert_eq!(passed_on(429), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(passed_on(500), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(passed_on(529).as_u16(), 529);
        assert_eq!(passed_on(400), StatusCode::BAD_REQUEST);
        assert_eq!(passed_on(401), StatusCode::BAD_GATEWAY);
        assert_eq!(passed_on(403), StatusCode::BAD_GATEWAY);
        assert_eq!(passed_on(408), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(passed_on(302), StatusCode::BAD_GATEWAY);
    }
}
