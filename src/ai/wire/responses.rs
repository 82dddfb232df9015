//! OpenAI's Responses API (`POST /v1/responses`): relayed, never translated.
//!
//! Clients such as Codex and OpenAI's Agents SDK speak it; `openai` and
//! `openai_compatible` providers serve it at `<base_url>/responses`. Warden forwards the
//! request as sent (only `model` replaced) and the answer byte for byte, event for event;
//! this module only reads what accounting needs: who answered, the usage report, the
//! first piece of output (time to first token) and how the answer ended.
//!
//! A stream has no `[DONE]` marker: it ends with one of `response.completed`,
//! `response.incomplete` or `response.failed`, each carrying the whole response with its
//! `usage`. An `error` event reports a failure outside a response.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Delta, Finish, StreamDecoder, count, error_message, str_or_empty};
use crate::ai::pricing::Usage;
use crate::ai::sse::SseEvent;

/// A Responses `usage` object: `input_tokens` include the cached ones
/// (`input_tokens_details.cached_tokens`), which Warden counts apart, as for chat
/// completions; `output_tokens` include reasoning tokens (billed as output).
pub fn usage(value: &Value) -> Usage {
    let input = count(value, "input_tokens");
    let cached = value
        .get("input_tokens_details")
        .and_then(|d| count(d, "cached_tokens"));
    Usage {
        input: input.map(|i| i.saturating_sub(cached.unwrap_or(0))),
        output: count(value, "output_tokens"),
        cache_read: cached,
        cache_write: None,
    }
}

/// Why a complete answer failed, from its `status` and `error`: `None` unless the
/// status is `failed` (`incomplete` is an answer cut short by a limit the client set).
pub fn failure(status: Option<&str>, error: Option<&Value>) -> Option<String> {
    (status == Some("failed")).then(|| failure_message(error))
}

fn failure_message(error: Option<&Value>) -> String {
    error
        .filter(|e| !e.is_null())
        .map_or_else(|| "the response failed".to_owned(), error_message)
}

/// An error event in the Responses format (a stream that fails midway).
pub fn error_event(message: &str, code: &str) -> Value {
    serde_json::json!({"type": "error", "code": code, "message": message, "param": null})
}

/// Reads Responses stream events.
#[derive(Default)]
pub struct Decoder {
    started: bool,
}

/// One event, read into borrowed slices: every event of every stream passes here, and
/// most are deltas whose only field of interest is `delta`.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    item: Option<&'a RawValue>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

impl Decoder {
    fn start(&mut self, response: &Value, out: &mut Vec<Delta>) {
        let model = str_or_empty(response, "model");
        if !self.started || !model.is_empty() {
            self.started = true;
            out.push(Delta::Start {
                id: str_or_empty(response, "id"),
                model,
            });
        }
    }
}

impl StreamDecoder for Decoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<Delta>) -> Result<(), String> {
        let not_json =
            |e: serde_json::Error| format!("the provider sent an event that is not JSON: {e}");
        let raw: RawEvent<'_> = serde_json::from_str(event.data.trim()).map_err(not_json)?;
        let response = || -> Result<Value, String> {
            raw.response
                .map_or(Ok(Value::Null), |r| serde_json::from_str(r.get()))
                .map_err(not_json)
        };
        let index = raw.output_index.unwrap_or(0) as usize;
        match raw.kind.as_ref() {
            "response.created" | "response.in_progress" => {
                let response = response()?;
                self.start(&response, out);
            }
            // Output the client is shown: what time to first token waits for.
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.reasoning_text.delta"
            | "response.reasoning_summary_text.delta" => {
                if let Some(text) = raw.delta.filter(|t| !t.is_empty()) {
                    out.push(Delta::Text(text.into_owned()));
                }
            }
            "response.output_item.added" => {
                let item: Value = raw
                    .item
                    .map_or(Ok(Value::Null), |i| serde_json::from_str(i.get()))
                    .map_err(not_json)?;
                if item.get("type").and_then(Value::as_str) == Some("function_call") {
                    out.push(Delta::ToolStart {
                        index,
                        id: str_or_empty(&item, "call_id"),
                        name: str_or_empty(&item, "name"),
                    });
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(json) = raw.delta.filter(|t| !t.is_empty()) {
                    out.push(Delta::ToolArgs {
                        index,
                        json: json.into_owned(),
                    });
                }
            }
            terminal @ ("response.completed" | "response.incomplete" | "response.failed") => {
                let response = response()?;
                self.start(&response, out);
                if let Some(reported) = response.get("usage").filter(|u| u.is_object()) {
                    out.push(Delta::Usage(usage(reported)));
                }
                match terminal {
                    "response.completed" => out.push(Delta::Finish(Finish::Stop)),
                    "response.incomplete" => {
                        let reason = response
                            .pointer("/incomplete_details/reason")
                            .and_then(Value::as_str)
                            .unwrap_or("incomplete");
                        out.push(Delta::Finish(match reason {
                            "max_output_tokens" => Finish::Length,
                            "content_filter" => Finish::ContentFilter,
                            other => Finish::Other(other.to_owned()),
                        }));
                    }
                    _ => {
                        out.push(Delta::Error(failure_message(response.get("error"))));
                        return Ok(());
                    }
                }
                out.push(Delta::Done);
            }
            "error" => out.push(Delta::Error(
                raw.message
                    .map_or_else(|| event.data.clone(), Cow::into_owned),
            )),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decode(decoder: &mut Decoder, data: Value) -> Vec<Delta> {
        let event = SseEvent {
            event: data["type"].as_str().map(str::to_owned),
            data: data.to_string(),
        };
        let mut out = Vec::new();
        decoder.decode(&event, &mut out).unwrap();
        out
    }

    fn completed(status: &str, extra: Value) -> Value {
        let mut response = json!({
            "id": "resp_1", "object": "response", "model": "gpt-test-2026", "status": status,
            "usage": {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 20},
                      "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 10},
                      "total_tokens": 150},
        });
        if let (Some(target), Some(extra)) = (response.as_object_mut(), extra.as_object()) {
            target.extend(extra.clone());
        }
        response
    }

    #[test]
    fn usage_counts_cached_input_apart() {
        let usage = usage(&completed("completed", json!({}))["usage"]);
        assert_eq!(
            usage,
            Usage {
                input: Some(100),
                output: Some(30),
                cache_read: Some(20),
                cache_write: None
            }
        );
        assert!(super::usage(&json!({})).is_empty());
    }

    #[test]
    fn a_stream_is_read_for_its_model_output_usage_and_end() {
        let mut decoder = Decoder::default();
        assert_eq!(
            decode(
                &mut decoder,
                json!({"type": "response.created", "sequence_number": 0,
                       "response": {"id": "resp_1", "model": "gpt-test", "status": "in_progress"}})
            ),
            vec![Delta::Start {
                id: "resp_1".into(),
                model: "gpt-test".into()
            }]
        );
        assert_eq!(
            decode(
                &mut decoder,
                json!({"type": "response.output_text.delta", "output_index": 0,
                       "content_index": 0, "delta": "Hel\"lo"})
            ),
            vec![Delta::Text("Hel\"lo".into())]
        );
        assert_eq!(
            decode(
                &mut decoder,
                json!({"type": "response.output_item.added", "output_index": 1,
                       "item": {"type": "function_call", "call_id": "call_9", "name": "lookup",
                                "arguments": ""}})
            ),
            vec![Delta::ToolStart {
                index: 1,
                id: "call_9".into(),
                name: "lookup".into()
            }]
        );
        assert_eq!(
            decode(
                &mut decoder,
                json!({"type": "response.function_call_arguments.delta", "output_index": 1,
                       "delta": "{\"q\":"})
            ),
            vec![Delta::ToolArgs {
                index: 1,
                json: "{\"q\":".into()
            }]
        );
        assert!(decode(&mut decoder, json!({"type": "response.output_text.done"})).is_empty());
        let end = decode(
            &mut decoder,
            json!({"type": "response.completed", "response": completed("completed", json!({}))}),
        );
        assert_eq!(
            end,
            vec![
                Delta::Start {
                    id: "resp_1".into(),
                    model: "gpt-test-2026".into()
                },
                Delta::Usage(Usage {
                    input: Some(100),
                    output: Some(30),
                    cache_read: Some(20),
                    cache_write: None
                }),
                Delta::Finish(Finish::Stop),
                Delta::Done,
            ]
        );
    }

    #[test]
    fn incomplete_failed_and_error_events_end_the_stream_their_way() {
        let incomplete = decode(
            &mut Decoder::default(),
            json!({"type": "response.incomplete", "response": completed("incomplete",
                   json!({"incomplete_details": {"reason": "max_output_tokens"}}))}),
        );
        assert!(
            incomplete.contains(&Delta::Finish(Finish::Length)),
            "{incomplete:?}"
        );
        assert_eq!(incomplete.last(), Some(&Delta::Done));

        let failed = decode(
            &mut Decoder::default(),
            json!({"type": "response.failed", "response": completed("failed",
                   json!({"error": {"code": "server_error", "message": "the model broke"}}))}),
        );
        assert!(
            failed.iter().any(|d| matches!(d, Delta::Usage(_))),
            "{failed:?}"
        );
        assert_eq!(failed.last(), Some(&Delta::Error("the model broke".into())));
        assert!(!failed.contains(&Delta::Done));

        let error = decode(
            &mut Decoder::default(),
            json!({"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}),
        );
        assert_eq!(error, vec![Delta::Error("slow down".into())]);
    }

    #[test]
    fn events_that_are_not_json_objects_are_refused() {
        let event = SseEvent {
            data: "not json".into(),
            ..SseEvent::default()
        };
        assert!(
            Decoder::default()
                .decode(&event, &mut Vec::new())
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn a_complete_answer_that_failed_says_why() {
        let broke = json!({"code": "server_error", "message": "the model broke"});
        assert_eq!(failure(Some("completed"), None), None);
        assert_eq!(failure(Some("incomplete"), None), None);
        assert_eq!(failure(None, Some(&broke)), None);
        assert_eq!(
            failure(Some("failed"), Some(&broke)).as_deref(),
            Some("the model broke")
        );
        assert_eq!(
            failure(Some("failed"), Some(&Value::Null)).as_deref(),
            Some("the response failed")
        );
    }
}
