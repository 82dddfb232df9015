//! One model request, from the permission check to its `ai_requests` row.
//!
//! [`Ai::chat`] runs the fixed order: route the requested model → **the permission check**
//! (a `permission.decision` event, allow or deny) → the `ai` rate limit → budgets → the
//! provider's key → the upstream request → the answer, complete or streamed → the row and
//! the budget charge. Refusals on the way are `rate_limit.rejected` events, and every
//! request that reached the permission check leaves exactly one row, written by
//! [`Accounting`]: on completion, on failure, or — when the client goes away mid-stream or
//! the request is abandoned — from its `Drop`, with the tokens the provider had reported
//! up to then and status `cancelled`.
//!
//! Streams are relayed event by event as they arrive ([`Relay`]): untouched when client
//! and provider speak the same format (only an OpenAI usage chunk the client did not ask
//! for is held back), translated through [`Delta`]s otherwise. Dropping the relay (the
//! client disconnected) closes the upstream connection, so the provider stops generating —
//! or, with `on_client_gone: finish`, hands it to a [`Drain`] task that reads the rest of
//! the answer for its usage before the row is written.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use indexmap::IndexMap;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use warden_actors::audit::{AiRequestRecord, Audit, AuditRecord, AuditRefused, ToolStatus};
use warden_actors::trace::TraceContext;

use super::budgets::{self, Applied, BudgetError};
use super::keys::{AuthHeaders, KeyError};
use super::pricing::{self, Usage};
use super::provider::ResponsesMode;
use super::sse::{SseEvent, SseReader, event_bytes, write_event};
use super::wire::{
    self, Delta, StreamDecoder, StreamEncoder, Wire, WireError, anthropic, gemini, openai,
    responses,
};
use super::{Ai, AiState, Route};
use crate::auth::Principal;
use crate::policy::limits::{RateLimited, RateLimiter, Surface};
use crate::policy::{Denial, Permission, PolicyEngine};

/// The most of an error answer Warden reads (for its message).
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Who is asking, and what of their request travels on.
pub struct Caller {
    pub principal: Arc<Principal>,
    pub trace: TraceContext,
    pub session_id: Option<String>,
    /// `anthropic-version` and `anthropic-beta` as the client sent them: forwarded to an
    /// Anthropic provider when the client speaks the Anthropic format, never elsewhere.
    pub anthropic_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Caller {
    /// The client's own headers that travel with a request in `format` to a provider
    /// speaking `provider`: its Anthropic headers, Anthropic to Anthropic only.
    pub(super) fn forwarded_headers(
        &self,
        format: Wire,
        provider: Wire,
    ) -> &[(HeaderName, HeaderValue)] {
        if format == Wire::Anthropic && provider == Wire::Anthropic {
            &self.anthropic_headers
        } else {
            &[]
        }
    }
}

/// A streamed answer: event-stream bytes in the client's format.
pub type AnswerStream = Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

/// What the client gets.
pub enum Answer {
    /// A complete JSON answer.
    Complete(Bytes),
    /// An event stream.
    Stream(AnswerStream),
}

/// Why a model request was refused or failed. `http/ai.rs` maps each to a status.
#[derive(Debug, Error)]
pub enum AiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Translation(WireError),
    /// The request is understood, but the model's provider offers nothing to serve it.
    #[error("{0}")]
    NotServed(String),
    #[error("unknown model `{model}`; {}", allowed_list(.allowed))]
    UnknownModel { model: String, allowed: Vec<String> },
    #[error("permission denied for model `{model}`: {denial}")]
    Denied { model: String, denial: Denial },
    #[error("{0}")]
    RateLimited(RateLimited),
    #[error("{0}")]
    Budget(Box<BudgetError>),
    #[error("{0}")]
    Audit(AuditRefused),
    #[error("{0}")]
    Key(KeyError),
    /// The provider answered with an error status.
    #[error("provider `{provider}` answered {status}: {message}")]
    Upstream {
        provider: String,
        status: u16,
        message: String,
        retry_after_secs: Option<u64>,
    },
    #[error("provider `{provider}` cannot be reached: {reason}")]
    Unreachable { provider: String, reason: String },
    #[error(
        "provider `{provider}` did not answer within {} (ai.providers.{provider}.timeout)",
        humantime::format_duration(*after)
    )]
    Timeout { provider: String, after: Duration },
    #[error("provider `{provider}` sent an answer Warden cannot read: {reason}")]
    BadAnswer { provider: String, reason: String },
}

fn allowed_list(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "there are no models you may use (ai.models, and the scopes they require)".to_owned()
    } else {
        format!("models you may use: {}", allowed.join(", "))
    }
}

impl AiError {
    /// The row's status.
    fn row_status(&self) -> ToolStatus {
        match self {
            AiError::Denied { .. } => ToolStatus::Denied,
            AiError::RateLimited(_) => ToolStatus::RateLimited,
            AiError::Budget(budget) if matches!(**budget, BudgetError::Exhausted { .. }) => {
                ToolStatus::RateLimited
            }
            AiError::Timeout { .. } => ToolStatus::Timeout,
            _ => ToolStatus::Error,
        }
    }
}

impl Ai {
    /// Serves one model request whose body is in `format`.
    ///
    /// `from_url`: the model and whether to stream, for a format that says them in the
    /// URL instead of the body (Gemini's).
    pub async fn chat(
        &self,
        policy: &PolicyEngine,
        limits: &RateLimiter,
        caller: &Caller,
        (format, from_url): (Wire, Option<(&str, bool)>),
        body: &[u8],
    ) -> Result<Answer, AiError> {
        let started = (Instant::now(), SystemTime::now());
        let state = self.state.load_full();
        let requested = from_url.map(|(model, _)| model);
        let (top, requested, route) = self.route_for(policy, caller, &state, body, requested)?;
        let stream = match from_url {
            Some((_, stream)) => stream,
            None => top.get("stream").is_some_and(|v| v.get().trim() == "true"),
        };
        let mut account = Some(self.account(caller, &state, &route, requested, stream, started));
        let result = self
            .run(
                policy,
                limits,
                caller,
                format,
                body,
                top,
                stream,
                &route,
                &state,
                &mut account,
            )
            .await;
        settle(result, &mut account).await
    }

    /// Serves one embeddings request (`POST /v1/embeddings`, OpenAI format) with the
    /// checks, accounting and audit of a chat request (the decision's action is
    /// `ai/embeddings`). The provider must offer an OpenAI-style embeddings endpoint; the
    /// row counts the input tokens the provider reports, and no output tokens.
    pub async fn embed(
        &self,
        policy: &PolicyEngine,
        limits: &RateLimiter,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Bytes, AiError> {
        let started = (Instant::now(), SystemTime::now());
        let state = self.state.load_full();
        let (mut top, requested, route) = self.route_for(policy, caller, &state, body, None)?;
        let no_endpoint = || {
            AiError::BadRequest(format!(
                "model `{}` is served by provider `{}` (kind `{}`), which has no embeddings \
                 endpoint Warden can call; route embedding models to an `openai` or \
                 `openai_compatible` provider",
                route.alias, route.provider_name, route.settings.kind
            ))
        };
        let mut account = Some(self.account(caller, &state, &route, requested, false, started));
        let result: Result<Bytes, AiError> = async {
            let auth = self
                .admit(
                    (policy, limits),
                    caller,
                    &route,
                    &state,
                    &mut account,
                    "ai/embeddings",
                )
                .await?;
            // After the permission check: who may not use the model learns nothing of
            // its provider.
            let url = route
                .provider
                .embeddings_url(&route.model)
                .ok_or_else(no_endpoint)?;
            let (body, _) = passthrough_body(&mut top, &route.model, Wire::OpenAi, false)?;
            let (response, deadline) = self
                .send(caller, &route, auth.as_ref(), (url, body.into()), &[])
                .await?;
            let answer = Self::read_answer(&route, response, deadline).await?;
            let probe: AnswerProbe =
                serde_json::from_slice(&answer).map_err(|e| AiError::BadAnswer {
                    provider: route.provider_name.clone(),
                    reason: format!("the answer is not a JSON object: {e}"),
                })?;
            let mut usage = probe
                .usage
                .as_ref()
                .map_or_else(Usage::default, openai::usage);
            if usage.input.is_none() {
                // Some servers report only the total, which for embeddings is the input.
                usage.input = probe
                    .usage
                    .as_ref()
                    .and_then(|u| u.get("total_tokens"))
                    .and_then(Value::as_u64);
            }
            if usage.input.is_some() {
                // Embeddings generate no tokens; the count is known, not missing.
                usage.output = Some(0);
            }
            if let Some(mut account) = account.take() {
                account.usage = usage;
                account.answered_model = probe.model;
                account.finish(ToolStatus::Success, None).await;
            }
            Ok(answer)
        }
        .await;
        settle(result, &mut account).await
    }

    /// The request's top-level fields (the rest stays unparsed, forwarded as written
    /// where no translation is needed), the model it names (`requested`, or the body's
    /// `model`) and that model's route.
    pub(super) fn route_for(
        &self,
        policy: &PolicyEngine,
        caller: &Caller,
        state: &AiState,
        body: &[u8],
        requested: Option<&str>,
    ) -> Result<(TopLevel, String, Arc<Route>), AiError> {
        let top: TopLevel = json_object(body)?;
        let requested: String = match requested {
            Some(model) => model.to_owned(),
            None => top
                .get("model")
                .and_then(|v| serde_json::from_str(v.get()).ok())
                .ok_or_else(|| {
                    AiError::BadRequest("`model` must be a string naming a model".into())
                })?,
        };
        let Some(route) = state.routes.get(&requested).cloned() else {
            return Err(AiError::UnknownModel {
                allowed: self
                    .models_for(policy, &caller.principal)
                    .into_iter()
                    .map(|(alias, _)| alias)
                    .collect(),
                model: requested,
            });
        };
        Ok((top, requested, route))
    }

    /// The accounting of a request for `requested` that reached its route: the row it
    /// will leave, however it ends. `started`: when the request arrived, by the
    /// monotonic clock (for its latency) and the wall clock (the row's `created_at`).
    fn account(
        &self,
        caller: &Caller,
        state: &Arc<AiState>,
        route: &Arc<Route>,
        requested: String,
        streaming: bool,
        (started, created_at): (Instant, SystemTime),
    ) -> Accounting {
        Accounting {
            row: Some(AiRequestRecord {
                id: Uuid::now_v7(),
                trace_id: caller.trace.trace_id_hex(),
                user_id: Some(caller.principal.user_id().to_owned()),
                client_id: caller.principal.client_id.clone(),
                session_id: caller.session_id.clone(),
                provider: route.provider_name.clone(),
                model: route.model.clone(),
                requested_model: Some(requested),
                input_tokens: None,
                output_tokens: None,
                cache_read_tokens: None,
                cache_write_tokens: None,
                cost_microdollars: None,
                latency_ms: None,
                ttft_ms: None,
                status: ToolStatus::Error,
                error: None,
                streaming,
                created_at,
            }),
            started,
            usage: Usage::default(),
            answered_model: None,
            ttft: None,
            content_deltas: 0,
            audit: self.audit.clone(),
            pool: self.pool.clone(),
            state: state.clone(),
            route: route.clone(),
            budgets: Vec::new(),
            tasks: self.tasks.clone(),
            closing: self.closing.clone(),
        }
    }

    /// The checks before the provider is asked, in order: the permission check
    /// (audited as `action`), the `ai` rate limit, the budgets; then the provider's key.
    async fn admit(
        &self,
        (policy, limits): (&PolicyEngine, &RateLimiter),
        caller: &Caller,
        route: &Route,
        state: &AiState,
        account: &mut Option<Accounting>,
        action: &str,
    ) -> Result<Option<AuthHeaders>, AiError> {
        self.decide(policy, caller, route, action).await?;
        self.limit(limits, caller, route).await?;
        let principal = &caller.principal;
        let applied = budgets::applicable(
            &state.budgets,
            principal.user_id(),
            &principal.roles,
            &route.alias,
        );
        if !applied.is_empty() {
            if let Err(refusal) = budgets::check(&self.pool, &applied).await {
                let budget = match &refusal {
                    BudgetError::Exhausted { budget, .. } => Some(budget.clone()),
                    BudgetError::Unavailable { .. } => None,
                };
                let error = AiError::Budget(Box::new(refusal));
                if budget.is_some() {
                    self.record_rejection(caller, route, &error, budget.as_deref())
                        .await?;
                }
                return Err(error);
            }
            if let Some(account) = account.as_mut() {
                account.budgets = applied;
            }
        }
        self.provider_key(route).await
    }

    /// The permission check, audited as `action`.
    pub(super) async fn decide(
        &self,
        policy: &PolicyEngine,
        caller: &Caller,
        route: &Route,
        action: &str,
    ) -> Result<(), AiError> {
        let decision = policy.check(
            &caller.principal,
            &Permission::UseModel {
                model: &route.alias,
            },
        );
        self.record_decision(caller, route, action, &decision)
            .await?;
        decision.map_err(|denial| AiError::Denied {
            model: route.alias.clone(),
            denial,
        })
    }

    /// The `ai` rate limit (a refusal audited).
    pub(super) async fn limit(
        &self,
        limits: &RateLimiter,
        caller: &Caller,
        route: &Route,
    ) -> Result<(), AiError> {
        let principal = &caller.principal;
        if let Err(limited) = limits.check(
            Surface::Ai,
            principal.user_id(),
            &principal.tier,
            None,
            None,
        ) {
            let error = AiError::RateLimited(limited);
            self.record_rejection(caller, route, &error, None).await?;
            return Err(error);
        }
        Ok(())
    }

    /// The headers carrying the provider's key, when it has one.
    pub(super) async fn provider_key(&self, route: &Route) -> Result<Option<AuthHeaders>, AiError> {
        match &route.settings.api_key_secret {
            Some(secret) => Ok(Some(
                self.keys
                    .headers(
                        &self.secrets,
                        &route.provider_name,
                        secret,
                        route.provider.as_ref(),
                    )
                    .await
                    .map_err(AiError::Key)?,
            )),
            None => Ok(None),
        }
    }

    /// Posts `body` to the provider at `url` with the request's headers (`extra`: the
    /// client's own Anthropic headers, when they apply); the response once its status
    /// is a success, and the deadline its body must arrive by.
    pub(super) async fn send(
        &self,
        caller: &Caller,
        route: &Route,
        auth: Option<&AuthHeaders>,
        (url, body): (String, Bytes),
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<(reqwest::Response, tokio::time::Instant), AiError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(traceparent) = HeaderValue::from_str(&caller.trace.header()) {
            headers.insert("traceparent", traceparent);
        }
        for (name, value) in route.provider.fixed_headers() {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in extra {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in auth.iter().flat_map(|a| a.iter()) {
            headers.insert(name.clone(), value.clone());
        }
        let request = self.http.post(url).headers(headers).body(body);
        let timeout = route.settings.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let provider = || route.provider_name.clone();
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_) => {
                return Err(AiError::Timeout {
                    provider: provider(),
                    after: timeout,
                });
            }
            Ok(Err(error)) => {
                return Err(AiError::Unreachable {
                    provider: provider(),
                    reason: describe(&error),
                });
            }
            Ok(Ok(response)) => response,
        };
        if !response.status().is_success() {
            return Err(upstream_error(route, response, auth, deadline).await);
        }
        Ok((response, deadline))
    }

    /// A complete answer's body, within the provider's size limit and deadline.
    pub(super) async fn read_answer(
        route: &Route,
        response: reqwest::Response,
        deadline: tokio::time::Instant,
    ) -> Result<Bytes, AiError> {
        let provider = || route.provider_name.clone();
        let max_answer_bytes = route.settings.max_answer_bytes;
        read_body(response, max_answer_bytes, deadline)
            .await
            .map_err(|failure| match failure {
                ReadFailure::TimedOut => AiError::Timeout {
                    provider: provider(),
                    after: route.settings.timeout,
                },
                ReadFailure::Broken(reason) => AiError::Unreachable {
                    provider: provider(),
                    reason,
                },
                ReadFailure::TooLarge => AiError::BadAnswer {
                    provider: provider(),
                    reason: format!(
                        "the answer is larger than {max_answer_bytes} bytes (ai.providers.{}.max_answer_bytes)",
                        route.provider_name
                    ),
                },
            })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        policy: &PolicyEngine,
        limits: &RateLimiter,
        caller: &Caller,
        format: Wire,
        body: &[u8],
        mut top: IndexMap<String, Box<RawValue>>,
        stream: bool,
        route: &Arc<Route>,
        state: &AiState,
        account: &mut Option<Accounting>,
    ) -> Result<Answer, AiError> {
        let action = match format {
            Wire::Anthropic => "ai/messages",
            Wire::Responses => "ai/responses",
            Wire::Gemini => "ai/generateContent",
            Wire::OpenAi => "ai/chat.completions",
        };
        let auth = self
            .admit((policy, limits), caller, route, state, account, action)
            .await?;
        if format == Wire::Responses {
            refuse_background(&top)?;
        }

        // The request in the provider's format. A provider serving OpenAI's Responses API
        // takes a Responses request as sent; for the others it is translated.
        let relays = route.settings.responses != Some(ResponsesMode::Translate);
        let responses_url = (format == Wire::Responses && relays)
            .then(|| route.provider.responses_url())
            .flatten();
        let provider_wire = if responses_url.is_some() {
            Wire::Responses
        } else {
            route.wire()
        };
        // Relayed requests are not read whole: tools the provider would run itself are
        // looked for here (a translated request cannot carry them).
        if provider_wire == format {
            check_relayed_tools(format, &top, &state.provider_tools)?;
        }
        let (upstream_body, client_usage) = if provider_wire == format {
            passthrough_body(&mut top, &route.model, format, stream)?
        } else {
            let full: Map<String, Value> = json_object(body)?;
            let asked = format == Wire::OpenAi
                && full
                    .get("stream_options")
                    .and_then(|o| o.get("include_usage"))
                    .and_then(Value::as_bool)
                    == Some(true);
            let upstream = Upstream {
                wire: provider_wire,
                model: &route.model,
                dialect: route.provider.dialect(),
                default_max_tokens: route.default_max_tokens,
                stream,
            };
            (translate_body(&full, format, &upstream)?, asked)
        };

        let extra = caller.forwarded_headers(format, provider_wire);
        let url = responses_url.unwrap_or_else(|| route.provider.url(&route.model, stream));
        let (response, deadline) = self
            .send(
                caller,
                route,
                auth.as_ref(),
                (url, upstream_body.into()),
                extra,
            )
            .await?;
        let timeout = route.settings.timeout;
        let provider = || route.provider_name.clone();

        if stream {
            let is_sse = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if !is_sse {
                return Err(AiError::BadAnswer {
                    provider: provider(),
                    reason: "it answered a streaming request without an event stream".into(),
                });
            }
            let Some(account) = account.take() else {
                return Err(AiError::BadRequest(
                    "the request was already answered".into(),
                ));
            };
            let mode = if provider_wire == format {
                Mode::Passthrough {
                    hold_usage_chunks: format == Wire::OpenAi && !client_usage,
                }
            } else {
                Mode::Translate(wire::encoder(format, client_usage))
            };
            let relay = Relay {
                upstream: response,
                reader: SseReader::new(route.settings.max_event_bytes),
                decoder: wire::decoder(provider_wire),
                client_wire: format,
                mode,
                idle: timeout,
                idle_timer: Box::pin(tokio::time::sleep(timeout)),
                waiting_since: tokio::time::Instant::now(),
                account,
                events: Vec::new(),
                deltas: Vec::new(),
                closed: false,
                finished: false,
                saw_finish: false,
                gone_after: None,
            };
            let stream =
                futures_util::stream::unfold(RelayGuard(Some(relay)), |mut guard| async move {
                    let bytes = match guard.0.as_mut() {
                        Some(relay) => relay.next().await,
                        None => None,
                    };
                    bytes.map(|bytes| (Ok(bytes), guard))
                });
            return Ok(Answer::Stream(Box::pin(stream)));
        }

        let answer = Self::read_answer(route, response, deadline).await?;
        let bad = |reason: String| AiError::BadAnswer {
            provider: provider(),
            reason,
        };
        let mut failed = None;
        let (bytes, usage, model) = if provider_wire == format {
            let probe: AnswerProbe = serde_json::from_slice(&answer)
                .map_err(|e| bad(format!("the answer is not a JSON object: {e}")))?;
            let usage = match provider_wire {
                Wire::Anthropic => probe.usage.as_ref().map(anthropic::usage),
                Wire::Responses => probe.usage.as_ref().map(responses::usage),
                Wire::Gemini => probe.usage_metadata.as_ref().map(gemini::usage),
                Wire::OpenAi => probe.usage.as_ref().map(openai::usage),
            }
            .unwrap_or_default();
            if provider_wire == Wire::Responses {
                let status = probe.status.as_ref().and_then(Value::as_str);
                failed = responses::failure(status, probe.error.as_ref());
            }
            (answer, usage, probe.model.or(probe.model_version))
        } else {
            let value: Value = serde_json::from_slice(&answer)
                .map_err(|e| bad(format!("the answer is not JSON: {e}")))?;
            let mut neutral = match provider_wire {
                Wire::OpenAi => openai::parse_response(&value),
                Wire::Anthropic => anthropic::parse_response(&value),
                Wire::Gemini => gemini::parse_response(&value),
                // Never: `translate_body` refused the request.
                Wire::Responses => Err(wire::invalid("a Responses answer is not translated")),
            }
            .map_err(|e| bad(e.to_string()))?;
            let answered = Some(neutral.model.clone()).filter(|m| !m.is_empty());
            if neutral.model.is_empty() {
                neutral.model = route.model.clone();
            }
            let rendered = match format {
                Wire::Anthropic => anthropic::render_response(&neutral),
                Wire::Responses => responses::render_response(&neutral),
                Wire::Gemini => gemini::render_response(&neutral),
                Wire::OpenAi => openai::render_response(&neutral),
            };
            (Bytes::from(rendered.to_string()), neutral.usage, answered)
        };
        if let Some(mut account) = account.take() {
            account.usage = usage;
            account.answered_model = model;
            let provider_said = failed
                .map(|message| format!("provider `{}` reported: {message}", route.provider_name));
            let status = match provider_said {
                Some(_) => ToolStatus::Error,
                None => ToolStatus::Success,
            };
            account.finish(status, provider_said).await;
        }
        Ok(Answer::Complete(bytes))
    }

    /// The `permission.decision` event. When the trail refuses it (`fail_closed` with a
    /// full spool), the request is refused too.
    async fn record_decision(
        &self,
        caller: &Caller,
        route: &Route,
        action: &str,
        decision: &Result<(), Denial>,
    ) -> Result<(), AiError> {
        let subject = format!("ai/{}", route.alias);
        let mut event =
            crate::policy::decision_event(&caller.principal, &subject, action, decision);
        event.trace_id = Some(caller.trace.trace_id_hex());
        event.attributes["provider"] = json!(route.provider_name);
        event.attributes["model"] = json!(route.model);
        event.attributes["session_id"] = json!(caller.session_id);
        self.audit
            .record(AuditRecord::Event(Box::new(event)))
            .await
            .map_err(AiError::Audit)
    }

    /// A `rate_limit.rejected` event (rate limits and spent budgets).
    async fn record_rejection(
        &self,
        caller: &Caller,
        route: &Route,
        error: &AiError,
        budget: Option<&str>,
    ) -> Result<(), AiError> {
        let principal = &caller.principal;
        let subject = format!("ai/{}", route.alias);
        let mut event = crate::policy::rate_limited_event(principal, &subject, error.to_string());
        event.trace_id = Some(caller.trace.trace_id_hex());
        event.attributes["surface"] = json!("ai");
        event.attributes["budget"] = json!(budget);
        self.audit
            .record(AuditRecord::Event(Box::new(event)))
            .await
            .map_err(AiError::Audit)
    }
}

/// `result`, after finishing the request's row with the error's status when it failed
/// and the row is still open.
async fn settle<T>(
    result: Result<T, AiError>,
    account: &mut Option<Accounting>,
) -> Result<T, AiError> {
    if let Err(error) = &result
        && let Some(mut account) = account.take()
    {
        account
            .finish(error.row_status(), Some(error.to_string()))
            .await;
    }
    result
}

/// A request's top-level fields, their values unparsed.
pub(super) type TopLevel = IndexMap<String, Box<RawValue>>;

/// What Warden reads of a complete answer in the client's own format: who answered and
/// the usage report (and, for the Responses API, whether it failed); the rest is passed
/// on untouched.
#[derive(serde::Deserialize)]
struct AnswerProbe {
    model: Option<String>,
    usage: Option<Value>,
    /// Read as any JSON: only the Responses API gives it a meaning (other servers may
    /// put anything there).
    status: Option<Value>,
    error: Option<Value>,
    /// Gemini's names for who answered and the usage report.
    #[serde(rename = "modelVersion")]
    model_version: Option<String>,
    #[serde(rename = "usageMetadata")]
    usage_metadata: Option<Value>,
}

/// Refuses a request relayed in `format` that names tools the provider would run itself
/// (or servers it would call), unless `allowed` (`ai.provider_tools`) lists them.
pub(super) fn check_relayed_tools(
    format: Wire,
    top: &TopLevel,
    allowed: &[String],
) -> Result<(), AiError> {
    let field = |name: &str| top.get(name).map(|v| &**v);
    match format {
        Wire::Responses => responses::check_tools(field("tools"), allowed),
        Wire::Gemini => gemini::check_tools(field("tools"), allowed),
        Wire::Anthropic => anthropic::check_tools(field("tools"), field("mcp_servers"), allowed),
        Wire::OpenAi => openai::check_tools(field("web_search_options"), allowed),
    }
    .map_err(AiError::BadRequest)
}

/// A Responses request with `background: true` is refused: its answer is fetched later
/// from the provider by id, past Warden, so its usage could never be recorded or charged.
fn refuse_background(top: &TopLevel) -> Result<(), AiError> {
    if top
        .get("background")
        .is_some_and(|v| v.get().trim() == "true")
    {
        return Err(AiError::BadRequest(
            "`background: true` is not supported: the answer would be collected from the \
             provider past Warden, so its tokens and cost could not be recorded; send the \
             request without it (streaming if it is long)"
                .into(),
        ));
    }
    Ok(())
}

/// The client's body with `model` replaced (and, for an OpenAI stream, its usage report
/// asked for); everything else as the client wrote it. Also returns whether the client
/// itself asked for the usage report.
pub fn passthrough_body(
    top: &mut IndexMap<String, Box<RawValue>>,
    model: &str,
    format: Wire,
    stream: bool,
) -> Result<(Vec<u8>, bool), AiError> {
    let internal =
        |e: serde_json::Error| AiError::BadRequest(format!("cannot re-encode the request: {e}"));
    // Gemini's format names the model in the URL, not the body.
    if format != Wire::Gemini {
        top.insert(
            "model".into(),
            serde_json::value::to_raw_value(model).map_err(internal)?,
        );
    }
    let mut client_usage = false;
    if format == Wire::OpenAi && stream {
        let options: Option<Value> = top
            .get("stream_options")
            .and_then(|v| serde_json::from_str(v.get()).ok());
        client_usage = options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        if !client_usage {
            let mut options = options
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            options["include_usage"] = Value::Bool(true);
            top.insert(
                "stream_options".into(),
                serde_json::value::to_raw_value(&options).map_err(internal)?,
            );
        }
    }
    Ok((serde_json::to_vec(top).map_err(internal)?, client_usage))
}

/// Where a translated request goes: the provider's format and how it names things.
pub struct Upstream<'a> {
    pub wire: Wire,
    pub model: &'a str,
    pub dialect: openai::Dialect,
    /// The output limit when the client named none (`ai.models.<alias>.default_max_tokens`).
    pub default_max_tokens: Option<u64>,
    /// Whether the answer is streamed (Gemini's format says so in the URL, not the body).
    pub stream: bool,
}

/// The client's request (in `format`) translated into the provider's format.
pub fn translate_body(
    full: &Map<String, Value>,
    format: Wire,
    upstream: &Upstream<'_>,
) -> Result<Vec<u8>, AiError> {
    let target = upstream.wire;
    let mut neutral =
        wire::parse_request(format, full).map_err(|e| AiError::Translation(e.toward(target)))?;
    if neutral.max_tokens.is_none() {
        neutral.max_tokens = upstream.default_max_tokens;
    }
    neutral.stream = upstream.stream;
    let model = upstream.model;
    let rendered = match target {
        Wire::OpenAi => openai::render_request(&neutral, model, upstream.dialect),
        Wire::Anthropic => anthropic::render_request(&neutral, model),
        Wire::Gemini => gemini::render_request(&neutral).map_err(AiError::Translation)?,
        // A provider that speaks only the Responses API (an extension's kind): the built-in
        // kinds that serve it also serve chat completions, so nothing is translated into it.
        Wire::Responses => {
            return Err(AiError::Translation(WireError::Untranslatable {
                what: format!("a request in the {} format", format.as_str()),
                target: target.as_str(),
            }));
        }
    };
    encode_request(&rendered)
}

/// A client's body read as a JSON object (of `T`'s shape).
pub(super) fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AiError> {
    serde_json::from_slice(body)
        .map_err(|e| AiError::BadRequest(format!("the body is not a JSON object: {e}")))
}

/// A request for a provider, encoded.
pub(super) fn encode_request(request: &Value) -> Result<Vec<u8>, AiError> {
    serde_json::to_vec(request)
        .map_err(|e| AiError::BadRequest(format!("cannot encode the request: {e}")))
}

enum ReadFailure {
    TimedOut,
    Broken(String),
    TooLarge,
}

async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, ReadFailure> {
    let mut body = BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => return Err(ReadFailure::TimedOut),
            Ok(Err(error)) => return Err(ReadFailure::Broken(describe(&error))),
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(ReadFailure::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// An error answer from the provider, with its message (never the provider's key).
async fn upstream_error(
    route: &Route,
    response: reqwest::Response,
    auth: Option<&AuthHeaders>,
    deadline: tokio::time::Instant,
) -> AiError {
    let status = response.status().as_u16();
    let retry_after_secs = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = read_body(response, MAX_ERROR_BYTES, deadline)
        .await
        .unwrap_or_default();
    let message = if matches!(status, 401 | 403) {
        // Such an answer is about Warden's own credentials and may quote part of them.
        format!(
            "it refused Warden's credentials (check the secret in ai.providers.{}.api_key_secret)",
            route.provider_name
        )
    } else {
        scrub(&error_message(&body), auth)
    };
    AiError::Upstream {
        provider: route.provider_name.clone(),
        status,
        message,
        retry_after_secs,
    }
}

/// The message of an error answer in any of the three formats, or an excerpt of it.
fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        for pointer in ["/error/message", "/message", "/error", "/detail"] {
            if let Some(text) = value.pointer(pointer).and_then(Value::as_str) {
                return text.chars().take(500).collect();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.trim().chars().take(300).collect();
    if excerpt.is_empty() {
        "no details".to_owned()
    } else {
        excerpt
    }
}

/// Removes the provider's key from a message should the provider have echoed it.
fn scrub(message: &str, auth: Option<&AuthHeaders>) -> String {
    let mut message = message.to_owned();
    for (_, value) in auth.iter().flat_map(|a| a.iter()) {
        if let Ok(text) = value.to_str() {
            let key = text.strip_prefix("Bearer ").unwrap_or(text);
            if key.len() >= 4 && message.contains(key) {
                message = message.replace(key, "[redacted]");
            }
        }
    }
    message
}

/// A reqwest error with its causes (the URL it names never holds a key).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An error event in the client's format, sent when a stream fails midway.
fn stream_error(format: Wire, message: &str) -> Bytes {
    match format {
        Wire::Anthropic => event_bytes(
            Some("error"),
            &anthropic::error_body(message, "api_error").to_string(),
        ),
        Wire::Responses => event_bytes(
            Some("error"),
            &responses::error_event(message, "upstream_error").to_string(),
        ),
        Wire::Gemini => event_bytes(None, &gemini::stream_error_body(message).to_string()),
        Wire::OpenAi => event_bytes(
            None,
            &openai::error_body(message, "api_error", "upstream_error").to_string(),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Accounting
// ---------------------------------------------------------------------------------------

/// The `ai_requests` row of one request, and the budgets it is charged to. Written once:
/// by [`Accounting::finish`], or by `Drop` when the request is abandoned.
pub(crate) struct Accounting {
    row: Option<AiRequestRecord>,
    started: Instant,
    usage: Usage,
    /// The model the provider says answered.
    answered_model: Option<String>,
    ttft: Option<Duration>,
    content_deltas: u64,
    audit: Audit,
    pool: deadpool_postgres::Pool,
    state: Arc<AiState>,
    route: Arc<Route>,
    budgets: Vec<Applied>,
    /// Where the row's writing runs, so that neither a client leaving nor shutdown cuts
    /// it off halfway (shutdown waits for these tasks).
    tasks: TaskTracker,
    closing: CancellationToken,
}

/// A charge to the budgets, made after the row is queued.
struct Charge {
    pool: deadpool_postgres::Pool,
    budgets: Vec<Applied>,
    cost: i64,
    tokens: i64,
}

impl Charge {
    async fn run(self) {
        if let Err(error) = budgets::charge(&self.pool, &self.budgets, self.cost, self.tokens).await
        {
            tracing::error!(%error, "a model request could not be charged to its budgets");
        }
    }
}

impl Accounting {
    /// Takes note of what a stream delivered.
    fn observe(&mut self, deltas: &[Delta]) {
        for delta in deltas {
            match delta {
                Delta::Start { model, .. } if !model.is_empty() => {
                    self.answered_model = Some(model.clone())
                }
                Delta::Usage(usage) => self.usage.merge(*usage),
                d if d.is_content() => {
                    self.content_deltas += 1;
                    if self.ttft.is_none() {
                        self.ttft = Some(self.started.elapsed());
                    }
                }
                _ => {}
            }
        }
    }

    /// The finished row and the charge it implies; `None` once taken.
    fn close(
        &mut self,
        status: ToolStatus,
        error: Option<String>,
    ) -> Option<(AuditRecord, Option<Charge>)> {
        let mut row = self.row.take()?;
        let usage = self.usage;
        let price = self
            .state
            .price(self.answered_model.as_deref(), &self.route);
        let cost = price.and_then(|p| pricing::cost_microdollars(&usage, &p));
        let as_i64 = |t: Option<u64>| t.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        row.input_tokens = as_i64(usage.input);
        row.output_tokens = as_i64(usage.output);
        row.cache_read_tokens = as_i64(usage.cache_read);
        row.cache_write_tokens = as_i64(usage.cache_write);
        row.cost_microdollars = cost;
        row.latency_ms =
            Some(i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX));
        row.ttft_ms = self
            .ttft
            .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        if let Some(model) = self.answered_model.take() {
            row.model = model;
        }
        record_metrics(
            &self.route,
            status,
            &usage,
            cost,
            self.started.elapsed(),
            self.ttft,
        );
        row.status = status;
        row.error = error;
        let charge = (!self.budgets.is_empty() && !usage.is_empty()).then(|| Charge {
            pool: self.pool.clone(),
            budgets: std::mem::take(&mut self.budgets),
            cost: cost.unwrap_or(0),
            tokens: i64::try_from(usage.total()).unwrap_or(i64::MAX),
        });
        Some((AuditRecord::AiRequest(Box::new(row)), charge))
    }

    /// Writes the row and charges the budgets (before the client sees the end of the
    /// answer, so its next request is checked against this one's usage).
    async fn finish(&mut self, status: ToolStatus, error: Option<String>) {
        let Some((record, charge)) = self.close(status, error) else {
            return;
        };
        // A task of its own: a client that leaves while this waits on PostgreSQL drops
        // the wait, not the writing.
        let written = self
            .tasks
            .spawn(write_row(self.audit.clone(), record, charge));
        let _ = written.await;
    }

    fn abandoned_message(&self) -> String {
        let tokens = if self.usage.is_empty() {
            "the provider had reported no usage yet, so tokens and cost are unknown"
        } else {
            "tokens are the provider's last report before then (output may be undercounted)"
        };
        gone_message(self.content_deltas, tokens)
    }
}

/// What a row says of a client that went away mid-answer, after `relayed` content events;
/// `then`: what became of the rest.
fn gone_message(relayed: u64, then: &str) -> String {
    format!(
        "the client went away before the answer was complete ({relayed} content events relayed); {then}"
    )
}

/// Prometheus figures for one finished request (labels bounded by the profile: provider
/// names and model aliases).
fn record_metrics(
    route: &Route,
    status: ToolStatus,
    usage: &Usage,
    cost: Option<i64>,
    latency: Duration,
    ttft: Option<Duration>,
) {
    let provider = route.provider_name.clone();
    let model = route.alias.clone();
    metrics::counter!("warden_ai_requests_total", "provider" => provider.clone(),
        "model" => model.clone(), "status" => status.as_str())
    .increment(1);
    for (class, tokens) in [
        ("input", usage.input),
        ("output", usage.output),
        ("cache_read", usage.cache_read),
        ("cache_write", usage.cache_write),
    ] {
        if let Some(tokens) = tokens {
            metrics::counter!("warden_ai_tokens_total", "provider" => provider.clone(),
                "model" => model.clone(), "class" => class)
            .increment(tokens);
        }
    }
    if let Some(cost) = cost {
        metrics::counter!("warden_ai_cost_microdollars_total", "provider" => provider.clone(),
            "model" => model.clone())
        .increment(u64::try_from(cost).unwrap_or(0));
    }
    metrics::histogram!("warden_ai_request_seconds", "provider" => provider.clone())
        .record(latency.as_secs_f64());
    if let Some(ttft) = ttft {
        metrics::histogram!("warden_ai_ttft_seconds", "provider" => provider)
            .record(ttft.as_secs_f64());
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if self.row.is_none() {
            return;
        }
        let message = self.abandoned_message();
        let Some((record, charge)) = self.close(ToolStatus::Cancelled, Some(message)) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.tasks
                    .spawn_on(write_row(self.audit.clone(), record, charge), &runtime);
            }
            Err(_) => {
                tracing::error!("a cancelled model request could not be recorded: no runtime")
            }
        }
    }
}

/// Queues a finished request's row and charges its budgets.
async fn write_row(audit: Audit, record: AuditRecord, charge: Option<Charge>) {
    // `record_completed`: the request was admitted and ran, so its row is kept even while
    // the trail refuses new requests.
    if let Err(refused) = audit.record_completed(record).await {
        tracing::error!(error = %refused, "a model request's audit row was refused");
    }
    if let Some(charge) = charge {
        charge.run().await;
    }
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

enum Mode {
    /// Same format: events go out as they came.
    Passthrough {
        /// An OpenAI client that did not ask for `include_usage` does not get the usage
        /// chunk Warden asked for on its behalf.
        hold_usage_chunks: bool,
    },
    Translate(Box<dyn StreamEncoder>),
}

/// Relays one upstream event stream to the client. Dropped before the answer ended (the
/// client went away), it closes the upstream connection — or, with
/// `ai.providers.<name>.on_client_gone: finish`, [`RelayGuard`] hands it to [`drain`].
struct Relay {
    upstream: reqwest::Response,
    reader: SseReader,
    decoder: Box<dyn StreamDecoder>,
    client_wire: Wire,
    mode: Mode,
    /// The longest wait for the next piece of the answer.
    idle: Duration,
    /// Fires at the earliest `idle` after `waiting_since` (see [`Relay::next_chunk`]).
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    /// When the current wait for the upstream began.
    waiting_since: tokio::time::Instant,
    account: Accounting,
    events: Vec<SseEvent>,
    deltas: Vec<Delta>,
    /// Nothing more goes to the client.
    closed: bool,
    /// The provider's end marker arrived.
    finished: bool,
    /// The provider said why the answer ended (`finish_reason`, `stop_reason`, …).
    saw_finish: bool,
    /// Set when the client went away and the rest is read for its usage only: the
    /// content events it had received.
    gone_after: Option<u64>,
}

/// No upstream bytes for the provider's `timeout`.
struct Elapsed;

enum Failure {
    Provider(String),
    Warden(ToolStatus, String),
}

impl Relay {
    /// The next bytes for the client; `None` when the answer is over.
    async fn next(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        while !self.closed {
            let chunk = self.next_chunk().await;
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            let mut failure = None;
            let mut oversized = None;
            let mut ended = false;
            match chunk {
                Err(_) => {
                    failure = Some(Failure::Warden(
                        ToolStatus::Timeout,
                        format!(
                            "provider `{}` sent nothing for {} (ai.providers.{}.timeout); the answer was cut off",
                            self.account.route.provider_name,
                            humantime::format_duration(self.idle),
                            self.account.route.provider_name
                        ),
                    ))
                }
                Ok(Err(error)) => {
                    failure = Some(Failure::Warden(
                        ToolStatus::Error,
                        format!(
                            "the connection to provider `{}` broke mid-answer: {}",
                            self.account.route.provider_name,
                            describe(&error)
                        ),
                    ))
                }
                Ok(Ok(None)) => {
                    self.reader.finish(&mut events);
                    ended = true;
                }
                Ok(Ok(Some(bytes))) => {
                    if let Err(too_large) = self.reader.push(&bytes, &mut events) {
                        oversized = Some(too_large);
                    }
                }
            }
            if failure.is_none() {
                failure = self.relay(&events, &mut out);
            }
            if failure.is_none()
                && let Some(message) = oversized
            {
                let provider = &self.account.route.provider_name;
                failure = Some(Failure::Warden(
                    ToolStatus::Error,
                    format!(
                        "the provider sent {message} (ai.providers.{provider}.max_event_bytes)"
                    ),
                ));
            }
            self.events = events;
            if failure.is_none() && ended && !self.finished {
                failure = self.end_without_marker(&mut out);
            }
            match failure {
                Some(Failure::Provider(message)) => {
                    let provider = &self.account.route.provider_name;
                    let message = format!("provider `{provider}` reported: {message}");
                    self.end(ToolStatus::Error, Some(message)).await;
                }
                Some(Failure::Warden(status, message)) => {
                    match &mut self.mode {
                        // The encoder writes it in the client's format, numbered and
                        // closed as the rest of its stream.
                        Mode::Translate(encoder) => {
                            encoder.encode(&Delta::Error(message.clone()), &mut out)
                        }
                        Mode::Passthrough { .. } => {
                            out.extend_from_slice(&stream_error(self.client_wire, &message))
                        }
                    }
                    self.end(status, Some(message)).await;
                }
                None if self.finished => self.end(ToolStatus::Success, None).await,
                None => {}
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
        }
        None
    }

    /// The answer is over: its row, with `status` and `error` — or, when its client had
    /// gone and the rest was read for its usage, `cancelled` and how the reading went.
    async fn end(&mut self, status: ToolStatus, error: Option<String>) {
        self.closed = true;
        let (status, error) = match self.gone_after {
            None => (status, error),
            Some(relayed) => {
                let then = match (status, &error) {
                    (ToolStatus::Success, _) => {
                        "Warden read the rest of the answer for its usage".to_owned()
                    }
                    (ToolStatus::Cancelled, Some(why)) => {
                        format!("Warden read what it could of the rest for its usage ({why})")
                    }
                    (_, why) => format!(
                        "Warden read the rest for its usage until it failed: {}",
                        why.as_deref().unwrap_or("no reason given")
                    ),
                };
                let provider = &self.account.route.provider_name;
                let then = format!("{then} (ai.providers.{provider}.on_client_gone: finish)");
                (ToolStatus::Cancelled, Some(gone_message(relayed, &then)))
            }
        };
        self.account.finish(status, error).await;
    }

    /// The next piece of the upstream answer, or `Err` when none came for `idle`.
    ///
    /// One timer serves the whole stream: it is armed for `idle` after the wait began
    /// and, when it fires, re-armed for the time left if a later wait began since. A timeout per read
    /// would put a timer into (and take it out of) the runtime's wheel for every event
    /// of every stream — with a stream's events milliseconds apart and its `idle` in
    /// seconds, it fires only when the provider really went quiet.
    ///
    /// # Cancel safety
    /// Not used in `select!`; dropping it loses no upstream bytes (`chunk` is cancel
    /// safe), and the timer keeps its deadline.
    async fn next_chunk(&mut self) -> Result<reqwest::Result<Option<Bytes>>, Elapsed> {
        self.waiting_since = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                chunk = self.upstream.chunk() => return Ok(chunk),
                () = self.idle_timer.as_mut() => {
                    let deadline = self.waiting_since + self.idle;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Elapsed);
                    }
                    self.idle_timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Sends on what `events` hold; a failure stops the stream.
    fn relay(&mut self, events: &[SseEvent], out: &mut BytesMut) -> Option<Failure> {
        for event in events {
            if self.finished {
                break;
            }
            self.deltas.clear();
            if let Err(message) = self.decoder.decode(event, &mut self.deltas) {
                return Some(Failure::Warden(ToolStatus::Error, message));
            }
            self.account.observe(&self.deltas);
            match &mut self.mode {
                Mode::Passthrough { hold_usage_chunks } => {
                    let usage_only = self.deltas.iter().any(|d| matches!(d, Delta::Usage(_)))
                        && self
                            .deltas
                            .iter()
                            .all(|d| matches!(d, Delta::Usage(_) | Delta::Start { .. }));
                    if !(*hold_usage_chunks && usage_only) {
                        write_event(out, event.event.as_deref(), &event.data);
                    }
                }
                Mode::Translate(encoder) => {
                    for delta in &self.deltas {
                        encoder.encode(delta, out);
                    }
                }
            }
            for delta in &self.deltas {
                match delta {
                    Delta::Done => self.finished = true,
                    Delta::Finish(_) => self.saw_finish = true,
                    Delta::Error(message) => return Some(Failure::Provider(message.clone())),
                    _ => {}
                }
            }
        }
        None
    }

    /// The connection ended without the provider's end marker: Gemini streams end that
    /// way; for the others it means the answer was cut off, unless it had finished.
    fn end_without_marker(&mut self, out: &mut BytesMut) -> Option<Failure> {
        // Gemini's streams always end so: complete when an event gave a finish reason.
        if !self.saw_finish {
            return Some(Failure::Warden(
                ToolStatus::Error,
                format!(
                    "provider `{}` closed the stream before the answer was complete",
                    self.account.route.provider_name
                ),
            ));
        }
        if let Mode::Translate(encoder) = &mut self.mode {
            encoder.encode(&Delta::Done, out);
        }
        self.finished = true;
        None
    }
}

/// The relay as the response body owns it: dropped while the answer is still coming
/// (the client went away), it hands the relay to [`drain`] when the provider has
/// `on_client_gone: finish`, a drain slot is free and Warden is not shutting down;
/// otherwise the relay drops, closing the upstream, and its row says `cancelled`.
struct RelayGuard(Option<Relay>);

impl Drop for RelayGuard {
    fn drop(&mut self) {
        let Some(relay) = self.0.take() else {
            return;
        };
        let account = &relay.account;
        if relay.closed
            || !account.route.settings.finish_when_client_gone
            || account.closing.is_cancelled()
        {
            return;
        }
        let provider = account.route.provider_name.clone();
        let trace_id = account
            .row
            .as_ref()
            .map_or_else(String::new, |r| r.trace_id.clone());
        let Ok(permit) = account.state.drains.clone().try_acquire_owned() else {
            tracing::warn!(
                %provider,
                %trace_id,
                "the client went away mid-answer and every drain is busy \
                 (ai.max_draining_streams): closing the stream, its usage stays unknown"
            );
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::info!(
            %provider,
            %trace_id,
            "the client went away mid-answer; reading the rest for its usage (on_client_gone: finish)"
        );
        let tasks = account.tasks.clone();
        tasks.spawn_on(drain(relay, permit), &runtime);
    }
}

/// The rest of an answer whose client went away, relayed to no one for its usage
/// (`on_client_gone: finish`): providers that report usage at the end of a stream would
/// otherwise leave the request's tokens and cost unknown, and its budgets uncharged.
///
/// Bounded as a complete answer is — the provider's `timeout` for all of it, its
/// `max_answer_bytes` — besides the relay's own limits; holds one of
/// `ai.max_draining_streams`' permits; stopped at shutdown, recording what it read.
async fn drain(mut relay: Relay, _permit: tokio::sync::OwnedSemaphorePermit) {
    relay.gone_after = Some(relay.account.content_deltas);
    let settings = &relay.account.route.settings;
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let max_bytes = settings.max_answer_bytes;
    let closing = relay.account.closing.clone();
    let read_on = async {
        let mut read = 0usize;
        while let Some(bytes) = relay.next().await {
            read = read.saturating_add(bytes.len());
            if read > max_bytes {
                return Some("the answer outgrew its max_answer_bytes");
            }
        }
        None
    };
    let stopped = tokio::select! {
        () = closing.cancelled() => Some("Warden shut down"),
        ended = tokio::time::timeout_at(deadline, read_on) => {
            ended.unwrap_or(Some("the provider's timeout passed"))
        }
    };
    if let Some(why) = stopped
        && !relay.closed
    {
        relay.end(ToolStatus::Cancelled, Some(why.to_owned())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_found_in_every_format_and_keys_are_scrubbed() {
        assert_eq!(
            error_message(br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#),
            "slow down"
        );
        assert_eq!(
            error_message(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#
            ),
            "busy"
        );
        assert_eq!(error_message(b"upstream exploded"), "upstream exploded");
        assert_eq!(error_message(b""), "no details");
        let mut value = HeaderValue::from_static("Bearer sk-secret-123");
        value.set_sensitive(true);
        let auth: AuthHeaders = vec![(HeaderName::from_static("authorization"), value)].into();
        assert_eq!(
            scrub("bad key sk-secret-123 given", Some(&auth)),
            "bad key [redacted] given"
        );
    }

    #[test]
    fn unknown_models_list_what_the_caller_may_use() {
        let error = AiError::UnknownModel {
            model: "gpt-9".into(),
            allowed: vec!["claude".into(), "llama".into()],
        };
        assert_eq!(
            error.to_string(),
            "unknown model `gpt-9`; models you may use: claude, llama"
        );
    }
}
