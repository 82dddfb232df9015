//! Token counting: `POST /v1/messages/count_tokens` (Anthropic's format — Claude Code asks
//! it every turn to size its context), `models/{model}:countTokens` (Gemini's — Gemini
//! CLI asks it before compressing a conversation) and `POST /v1/responses/input_tokens`
//! (OpenAI's Responses API).
//!
//! A count sends the whole prompt to a provider, so it is governed like a model request:
//! the route, **the permission check** (a `permission.decision` event, action
//! `ai/count_tokens`, `ai/countTokens` or `ai/responses.input_tokens`, on the request's
//! trace), the `ai` rate limit,
//! the provider's key. It generates nothing and costs nothing, so it leaves no
//! `ai_requests` row (whose tokens would read as used) and is not held to budgets: its
//! decision event is its record.
//!
//! The count comes from the provider the model routes to, in that provider's format
//! (Anthropic's `count_tokens`, Gemini's `countTokens`, OpenAI's `responses/input_tokens`;
//! translated between them, so the number is the routed model's own). A provider that
//! cannot count — kind `openai_compatible` — gives 404, never an invented number: clients then estimate locally (Claude
//! Code does on any error; a made-up 0 would stop it from ever compacting its context).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::exchange::{
    AiError, Caller, TopLevel, check_relayed_tools, encode_request, json_object, passthrough_body,
};
use super::wire::{self, ChatRequest, Wire, WireError, anthropic, gemini, responses};
use super::{Ai, Route};
use crate::policy::PolicyEngine;
use crate::policy::limits::RateLimiter;

/// The fields Anthropic's `count_tokens` takes; the rest of a translated request (limits,
/// sampling) does not change the count and would be refused there.
const ANTHROPIC_COUNT_FIELDS: &[&str] = &["model", "messages", "system", "tools", "tool_choice"];

impl Ai {
    /// Counts the input tokens of a request whose body is in `format` (Anthropic's,
    /// Gemini's or OpenAI's Responses); `from_url`: the model, for a format that names it
    /// in the URL. The answer is in the client's format: `{"input_tokens": n}`,
    /// `{"totalTokens": n}` or `{"object": "response.input_tokens", "input_tokens": n}`.
    pub async fn count_tokens(
        &self,
        policy: &PolicyEngine,
        limits: &RateLimiter,
        caller: &Caller,
        (format, from_url): (Wire, Option<&str>),
        body: &[u8],
    ) -> Result<Bytes, AiError> {
        let state = self.state.load_full();
        let (top, _, route) = self.route_for(policy, caller, &state, body, from_url)?;
        let action = match format {
            Wire::Gemini => "ai/countTokens",
            Wire::Responses => "ai/responses.input_tokens",
            Wire::Anthropic | Wire::OpenAi => "ai/count_tokens",
        };
        self.decide(policy, caller, &route, action).await?;
        // After the permission check (who may not use the model learns nothing of its
        // provider), before the rate limit (a count that cannot be made spends none).
        let endpoint = route
            .provider
            .count_tokens_url(&route.model)
            .ok_or_else(|| cannot_count(&route))?;
        // A relayed count may name what the provider would reach out to (Anthropic's
        // `mcp_servers` are connected to, to count their tools): the same limits as chat.
        if endpoint.1 == format {
            check_relayed_tools(format, &top, &state.provider_tools)?;
        }
        self.limit(limits, caller, &route).await?;
        let counted = self
            .ask_count(caller, &route, (format, top, body), endpoint)
            .await;
        if let Err(error) = &counted {
            // Nothing else keeps a failed count: counts leave no row.
            tracing::warn!(
                model = %route.alias,
                provider = %route.provider_name,
                trace_id = %caller.trace.trace_id_hex(),
                %error,
                "token count failed"
            );
        }
        counted
    }

    /// Asks the route's provider at its count `endpoint` (the URL, and the format it
    /// reads) for the count of the client's request (its format, top-level fields and
    /// body); the answer in the client's format.
    async fn ask_count(
        &self,
        caller: &Caller,
        route: &Route,
        (format, mut top, body): (Wire, TopLevel, &[u8]),
        endpoint: (String, Wire),
    ) -> Result<Bytes, AiError> {
        let auth = self.provider_key(route).await?;
        let (url, provider_wire) = endpoint;
        let upstream_body = count_request(format, provider_wire, &mut top, body, &route.model)?;
        let extra = caller.forwarded_headers(format, provider_wire);
        let (response, deadline) = self
            .send(
                caller,
                route,
                auth.as_ref(),
                (url, upstream_body.into()),
                extra,
            )
            .await?;
        let answer = Self::read_answer(route, response, deadline).await?;
        let tokens = counted(provider_wire, &answer).map_err(|reason| AiError::BadAnswer {
            provider: route.provider_name.clone(),
            reason,
        })?;
        tracing::debug!(
            model = %route.alias,
            provider = %route.provider_name,
            tokens,
            "tokens counted"
        );
        if format == provider_wire {
            return Ok(answer);
        }
        Ok(Bytes::from(count_answer(format, tokens).to_string()))
    }
}

fn cannot_count(route: &Route) -> AiError {
    AiError::NotServed(format!(
        "model `{}` is served by provider `{}` (kind `{}`), which cannot count tokens; \
         estimate them locally",
        route.alias, route.provider_name, route.settings.kind
    ))
}

/// The client's count request (in `format`) in the provider's count format (`target`).
fn count_request(
    format: Wire,
    target: Wire,
    top: &mut TopLevel,
    body: &[u8],
    model: &str,
) -> Result<Vec<u8>, AiError> {
    match (format, target) {
        (Wire::Anthropic, Wire::Anthropic) | (Wire::Responses, Wire::Responses) => {
            Ok(passthrough_body(top, model, format, false)?.0)
        }
        // The model is in the URL — and in a whole request's own `model`, which the
        // client wrote as the alias.
        (Wire::Gemini, Wire::Gemini) => {
            if !top.contains_key("generateContentRequest") {
                return Ok(body.to_vec());
            }
            let mut full = json_object::<Map<String, Value>>(body)?;
            match full.get_mut("generateContentRequest") {
                Some(Value::Object(request)) => {
                    request.insert("model".into(), json!(format!("models/{model}")));
                }
                _ => return Err(not_an_object()),
            }
            encode_request(&Value::Object(full))
        }
        _ => {
            let neutral =
                client_request(format, body).map_err(|e| AiError::Translation(e.toward(target)))?;
            encode_request(&render_count(target, &neutral, model)?)
        }
    }
}

/// A client's count request in neutral form.
fn client_request(format: Wire, body: &[u8]) -> Result<ChatRequest, WireError> {
    let mut full: Map<String, Value> =
        json_object(body).map_err(|e| WireError::Invalid(e.to_string()))?;
    if format == Wire::Gemini {
        // Either the contents alone, or a whole request (whose model the URL names).
        let mut request = match full.remove("generateContentRequest") {
            Some(Value::Object(request)) => request,
            Some(_) => return Err(WireError::Invalid(not_an_object().to_string())),
            None => full,
        };
        request.remove("model");
        return gemini::parse_request(&request);
    }
    wire::parse_request(format, &full)
}

/// A count request for a provider whose count endpoint speaks `target`.
fn render_count(target: Wire, neutral: &ChatRequest, model: &str) -> Result<Value, AiError> {
    match target {
        Wire::Anthropic => {
            let mut rendered = anthropic::render_request(neutral, model);
            if let Some(fields) = rendered.as_object_mut() {
                fields.retain(|key, _| ANTHROPIC_COUNT_FIELDS.contains(&key.as_str()));
            }
            Ok(rendered)
        }
        Wire::Gemini => {
            let mut request = gemini::render_request(neutral).map_err(AiError::Translation)?;
            request["model"] = json!(format!("models/{model}"));
            Ok(json!({ "generateContentRequest": request }))
        }
        Wire::Responses => Ok(responses::render_input(neutral, model)),
        Wire::OpenAi => Err(AiError::Translation(WireError::Untranslatable {
            what: "a token count".into(),
            target: target.as_str(),
        })),
    }
}

fn not_an_object() -> AiError {
    AiError::BadRequest("`generateContentRequest` must be an object".into())
}

/// The count in a provider's answer.
fn counted(provider: Wire, answer: &[u8]) -> Result<u64, String> {
    let value: Value =
        serde_json::from_slice(answer).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let field = match provider {
        Wire::Gemini => "totalTokens",
        Wire::Anthropic | Wire::Responses | Wire::OpenAi => "input_tokens",
    };
    match value.get(field) {
        Some(count) => count
            .as_u64()
            .ok_or_else(|| format!("`{field}` is not a non-negative integer")),
        // Gemini's answers are protobuf JSON, which leaves a zero out — and with it
        // every other field: only an empty object is a count of zero.
        None if provider == Wire::Gemini && value.as_object().is_some_and(Map::is_empty) => Ok(0),
        None => Err(format!("the answer has no `{field}`")),
    }
}

/// A count in the client's format.
fn count_answer(format: Wire, tokens: u64) -> Value {
    match format {
        Wire::Gemini => json!({ "totalTokens": tokens }),
        Wire::Responses => json!({ "object": "response.input_tokens", "input_tokens": tokens }),
        Wire::Anthropic | Wire::OpenAi => json!({ "input_tokens": tokens }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(body: &Value) -> TopLevel {
        serde_json::from_value(body.clone()).unwrap()
    }

    fn translated(format: Wire, target: Wire, body: Value) -> Value {
        let bytes = serde_json::to_vec(&body).unwrap();
        let out = count_request(format, target, &mut top(&body), &bytes, "upstream-1").unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn anthropic_counts_become_gemini_requests_with_the_model() {
        let out = translated(
            Wire::Anthropic,
            Wire::Gemini,
            json!({"model": "alias", "system": "Be brief.",
                   "messages": [{"role": "user", "content": "Hi"}],
                   "thinking": {"type": "enabled", "budget_tokens": 1024}}),
        );
        let request = &out["generateContentRequest"];
        assert_eq!(request["model"], "models/upstream-1");
        assert_eq!(request["contents"][0]["parts"][0]["text"], "Hi");
        assert_eq!(
            request["systemInstruction"]["parts"][0]["text"],
            "Be brief."
        );
    }

    #[test]
    fn gemini_counts_become_anthropic_requests_without_limits() {
        let contents = json!([{"role": "user", "parts": [{"text": "Hi"}]}]);
        for body in [
            json!({"contents": contents}),
            json!({"generateContentRequest": {"model": "models/alias", "contents": contents,
                    "generationConfig": {"maxOutputTokens": 10}}}),
        ] {
            let out = translated(Wire::Gemini, Wire::Anthropic, body);
            assert_eq!(
                out,
                json!({"model": "upstream-1",
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
            );
        }
        let body = json!({"generateContentRequest": "contents"});
        let bytes = serde_json::to_vec(&body).unwrap();
        let err = count_request(Wire::Gemini, Wire::Anthropic, &mut top(&body), &bytes, "m");
        assert!(
            matches!(err, Err(ref e) if e.to_string().contains("generateContentRequest")),
            "{err:?}"
        );
    }

    #[test]
    fn counts_for_openai_become_responses_input_in_order() {
        let out = translated(
            Wire::Anthropic,
            Wire::Responses,
            json!({"model": "alias", "system": "Be brief.",
                   "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
                   "tool_choice": {"type": "tool", "name": "weather"},
                   "messages": [
                       {"role": "user", "content": "Weather in Oslo?"},
                       {"role": "assistant", "content": [
                           {"type": "text", "text": "Looking."},
                           {"type": "tool_use", "id": "t1", "name": "weather",
                            "input": {"city": "Oslo"}}]},
                       {"role": "user", "content": [
                           {"type": "tool_result", "tool_use_id": "t1", "content": "Sunny"},
                           {"type": "text", "text": "Thanks"}]}]}),
        );
        assert_eq!(
            out,
            json!({
                "model": "upstream-1",
                "instructions": "Be brief.",
                "input": [
                    {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
                    {"type": "message", "role": "assistant",
                     "content": [{"type": "output_text", "text": "Looking."}]},
                    {"type": "function_call", "call_id": "t1", "name": "weather",
                     "arguments": "{\"city\":\"Oslo\"}"},
                    {"type": "function_call_output", "call_id": "t1", "output": "Sunny"},
                    {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "Thanks"}]},
                ],
                "tools": [{"type": "function", "name": "weather",
                           "parameters": {"type": "object"}}],
                "tool_choice": {"type": "function", "name": "weather"},
            })
        );
        // And the other way: a Responses count for an Anthropic model.
        let out = translated(
            Wire::Responses,
            Wire::Anthropic,
            json!({"model": "alias", "instructions": "Be brief.", "input": "Hi",
                   "max_output_tokens": 100}),
        );
        assert_eq!(
            out,
            json!({"model": "upstream-1", "system": "Be brief.",
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
        );
    }

    #[test]
    fn same_format_counts_keep_the_body_with_the_upstream_model() {
        let body = json!({"model": "alias", "messages": [], "thinking": {"type": "enabled"}});
        let out = translated(Wire::Anthropic, Wire::Anthropic, body);
        assert_eq!(
            out,
            json!({"model": "upstream-1", "messages": [], "thinking": {"type": "enabled"}})
        );
        let body = json!({"contents": []});
        assert_eq!(translated(Wire::Gemini, Wire::Gemini, body.clone()), body);
        let body = json!({"model": "alias", "input": "Hi", "reasoning": {"effort": "low"}});
        assert_eq!(
            translated(Wire::Responses, Wire::Responses, body),
            json!({"model": "upstream-1", "input": "Hi", "reasoning": {"effort": "low"}})
        );
        let whole = json!({"generateContentRequest": {"model": "models/alias", "contents": []}});
        assert_eq!(
            translated(Wire::Gemini, Wire::Gemini, whole),
            json!({"generateContentRequest": {"model": "models/upstream-1", "contents": []}})
        );
    }

    #[test]
    fn counts_are_read_strictly_except_gemini_zeroes() {
        assert_eq!(counted(Wire::Anthropic, br#"{"input_tokens": 12}"#), Ok(12));
        assert_eq!(counted(Wire::Gemini, br#"{"totalTokens": 7}"#), Ok(7));
        assert_eq!(counted(Wire::Gemini, b"{}"), Ok(0));
        let renamed = counted(Wire::Gemini, br#"{"total_tokens": 4}"#).unwrap_err();
        assert!(renamed.contains("no `totalTokens`"), "{renamed}");
        let missing = counted(Wire::Anthropic, b"{}").unwrap_err();
        assert!(missing.contains("no `input_tokens`"), "{missing}");
        let negative = counted(Wire::Anthropic, br#"{"input_tokens": -1}"#).unwrap_err();
        assert!(negative.contains("non-negative"), "{negative}");
        assert!(counted(Wire::Gemini, b"[]").is_err());
        assert_eq!(count_answer(Wire::Gemini, 3), json!({"totalTokens": 3}));
        assert_eq!(count_answer(Wire::Anthropic, 3), json!({"input_tokens": 3}));
        assert_eq!(
            count_answer(Wire::Responses, 3),
            json!({"object": "response.input_tokens", "input_tokens": 3})
        );
        let answer = br#"{"object": "response.input_tokens", "input_tokens": 8}"#;
        assert_eq!(counted(Wire::Responses, answer), Ok(8));
    }
}
