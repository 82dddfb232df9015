//! The Gemini API format (`models/{model}:generateContent`, and
//! `:streamGenerateContent?alt=sse` whose events are each a partial answer). Spoken by
//! `gemini` providers only: requests always arrive in the OpenAI or Anthropic format and
//! are translated.
//!
//! Gemini function calls may carry no id; Warden then gives each one an id of its own
//! (`call_<random>_<n>`), and maps tool results back to the function's name (which is what
//! Gemini's `functionResponse` wants) by finding the call with that id earlier in the
//! conversation. `usageMetadata.promptTokenCount` includes cached tokens and
//! `thoughtsTokenCount` is billed as output; both are converted to Warden's token classes.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{
    ChatRequest, ChatResponse, Delta, Finish, Image, Part, Role, StreamDecoder, ToolCall,
    ToolChoice, WireError, count, error_message, invalid, merge_turns, str_or_empty,
};
use crate::ai::pricing::Usage;
use crate::ai::sse::SseEvent;

/// Renders a request for a Gemini provider (the model goes in the URL).
pub fn render_request(request: &ChatRequest) -> Result<Value, WireError> {
    let untranslatable = |what: String| WireError::Untranslatable {
        what,
        target: "gemini",
    };
    // Tool results name the function; find it by the call's id.
    let mut names: HashMap<&str, &str> = HashMap::new();
    for message in &request.messages {
        for part in &message.parts {
            if let Part::ToolCall(call) = part {
                names.insert(call.id.as_str(), call.name.as_str());
            }
        }
    }
    let mut contents = Vec::new();
    for message in merge_turns(&request.messages) {
        let mut parts = Vec::new();
        for part in &message.parts {
            parts.push(match part {
                Part::Text(text) => json!({"text": text}),
                Part::Image(Image::Base64 { media_type, data }) => {
                    json!({"inlineData": {"mimeType": media_type, "data": data}})
                }
                Part::Image(Image::Url(_)) => {
                    return Err(untranslatable(
                        "an image given by URL (send it inline, as base64)".into(),
                    ));
                }
                Part::ToolCall(call) => json!({"functionCall": {
                    "id": call.id,
                    "name": call.name,
                    "args": serde_json::from_str::<Value>(&call.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({})),
                }}),
                Part::ToolResult(result) => {
                    let name = names.get(result.id.as_str()).ok_or_else(|| {
                        invalid(format!(
                            "the tool result for `{}` answers no tool call in the conversation",
                            result.id
                        ))
                    })?;
                    let response = serde_json::from_str::<Value>(&result.content)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| {
                            if result.is_error {
                                json!({"error": result.content})
                            } else {
                                json!({"content": result.content})
                            }
                        });
                    json!({"functionResponse": {"id": result.id, "name": name, "response": response}})
                }
            });
        }
        contents.push(json!({
            "role": match message.role { Role::User => "user", Role::Assistant => "model" },
            "parts": parts,
        }));
    }
    let mut body = json!({"contents": contents});
    if !request.system.is_empty() {
        body["systemInstruction"] = json!({"parts": [{"text": request.system.join("\n\n")}]});
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut declaration =
                    json!({"name": tool.name, "parameters": schema(&tool.parameters)});
                if let Some(description) = &tool.description {
                    declaration["description"] = Value::from(description.clone());
                }
                declaration
            })
            .collect();
        body["tools"] = json!([{"functionDeclarations": declarations}]);
    }
    if let Some(choice) = &request.tool_choice {
        body["toolConfig"] = json!({"functionCallingConfig": match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        }});
    }
    let mut generation = serde_json::Map::new();
    if let Some(max) = request.max_tokens {
        generation.insert("maxOutputTokens".into(), Value::from(max));
    }
    if let Some(t) = &request.temperature {
        generation.insert("temperature".into(), t.clone());
    }
    if let Some(p) = &request.top_p {
        generation.insert("topP".into(), p.clone());
    }
    if !request.stop.is_empty() {
        generation.insert("stopSequences".into(), json!(request.stop));
    }
    if !generation.is_empty() {
        body["generationConfig"] = Value::Object(generation);
    }
    Ok(body)
}

/// Gemini takes an OpenAPI subset of JSON Schema: drops the keys it refuses.
fn schema(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "$schema" | "additionalProperties" | "$id"))
                .map(|(k, v)| (k.clone(), schema(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(schema).collect()),
        other => other.clone(),
    }
}

/// Gemini's `usageMetadata`, in Warden's token classes.
pub fn usage(value: &Value) -> Usage {
    let prompt = count(value, "promptTokenCount");
    let cached = count(value, "cachedContentTokenCount");
    let candidates = count(value, "candidatesTokenCount");
    let thoughts = count(value, "thoughtsTokenCount");
    Usage {
        input: prompt.map(|p| p.saturating_sub(cached.unwrap_or(0))),
        output: match (candidates, thoughts) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or(0) + t.unwrap_or(0)),
        },
        cache_read: cached,
        cache_write: None,
    }
}

fn parse_finish(reason: &str, called_tools: bool) -> Finish {
    match reason {
        "STOP" if called_tools => Finish::ToolCalls,
        "STOP" => Finish::Stop,
        "MAX_TOKENS" => Finish::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            Finish::ContentFilter
        }
        other => Finish::Other(other.to_ascii_lowercase()),
    }
}

fn call_id(part: &Value, prefix: &str, n: usize) -> String {
    part.get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map_or_else(|| format!("call_{prefix}_{n}"), str::to_owned)
}

fn random_prefix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Reads a provider's complete answer.
pub fn parse_response(body: &Value) -> Result<ChatResponse, WireError> {
    let prefix = random_prefix();
    let mut parts = Vec::new();
    let candidate = body.pointer("/candidates/0");
    for part in candidate
        .and_then(|c| c.pointer("/content/parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            parts.push(Part::Text(text.to_owned()));
        } else if let Some(call) = part.get("functionCall") {
            let n = parts
                .iter()
                .filter(|p| matches!(p, Part::ToolCall(_)))
                .count();
            parts.push(Part::ToolCall(ToolCall {
                id: call_id(call, &prefix, n),
                name: str_or_empty(call, "name"),
                arguments: call
                    .get("args")
                    .map_or_else(|| "{}".to_owned(), Value::to_string),
            }));
        }
    }
    let called = parts.iter().any(|p| matches!(p, Part::ToolCall(_)));
    let finish = match candidate {
        Some(c) => c
            .get("finishReason")
            .and_then(Value::as_str)
            .map(|r| parse_finish(r, called)),
        None if body.pointer("/promptFeedback/blockReason").is_some() => {
            Some(Finish::ContentFilter)
        }
        None => return Err(invalid("the provider's answer has no `candidates`")),
    };
    Ok(ChatResponse {
        id: str_or_empty(body, "responseId"),
        model: str_or_empty(body, "modelVersion"),
        parts,
        finish,
        usage: body.get("usageMetadata").map(usage).unwrap_or_default(),
    })
}

/// Reads `streamGenerateContent?alt=sse` events (each a partial answer; the stream ends
/// when the connection does, so the exchange adds [`Delta::Done`] at the end).
pub struct Decoder {
    started: bool,
    tools: usize,
    prefix: String,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            started: false,
            tools: 0,
            prefix: random_prefix(),
        }
    }
}

impl StreamDecoder for Decoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<Delta>) -> Result<(), String> {
        let chunk: Value = serde_json::from_str(&event.data)
            .map_err(|e| format!("the provider sent an event that is not JSON: {e}"))?;
        if let Some(error) = chunk.get("error") {
            out.push(Delta::Error(error_message(error)));
            return Ok(());
        }
        if !self.started {
            self.started = true;
            out.push(Delta::Start {
                id: str_or_empty(&chunk, "responseId"),
                model: str_or_empty(&chunk, "modelVersion"),
            });
        }
        let candidate = chunk.pointer("/candidates/0");
        for part in candidate
            .and_then(|c| c.pointer("/content/parts"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                if !text.is_empty() {
                    out.push(Delta::Text(text.to_owned()));
                }
            } else if let Some(call) = part.get("functionCall") {
                let index = self.tools;
                self.tools += 1;
                out.push(Delta::ToolStart {
                    index,
                    id: call_id(call, &self.prefix, index),
                    name: str_or_empty(call, "name"),
                });
                out.push(Delta::ToolArgs {
                    index,
                    json: call
                        .get("args")
                        .map_or_else(|| "{}".to_owned(), Value::to_string),
                });
            }
        }
        if let Some(reason) = candidate
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            out.push(Delta::Finish(parse_finish(reason, self.tools > 0)));
        } else if candidate.is_none() && chunk.pointer("/promptFeedback/blockReason").is_some() {
            out.push(Delta::Finish(Finish::ContentFilter));
        }
        if let Some(reported) = chunk.get("usageMetadata") {
            out.push(Delta::Usage(usage(reported)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::wire::{Message, Tool, ToolResult};

    #[test]
    fn tool_results_find_their_function_name_and_schemas_are_trimmed() {
        let request = ChatRequest {
            system: vec!["Be brief.".into()],
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![Part::Text("Weather?".into())],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![Part::ToolCall(ToolCall {
                        id: "call_1".into(),
                        name: "weather".into(),
                        arguments: "{\"city\":\"Oslo\"}".into(),
                    })],
                },
                Message {
                    role: Role::User,
                    parts: vec![Part::ToolResult(ToolResult {
                        id: "call_1".into(),
                        content: "rain".into(),
                        is_error: false,
                    })],
                },
            ],
            tools: vec![Tool {
                name: "weather".into(),
                description: None,
                parameters: json!({"$schema": "x", "type": "object", "additionalProperties": false}),
            }],
            max_tokens: Some(10),
            ..ChatRequest::default()
        };
        let body = render_request(&request).unwrap();
        assert_eq!(body["contents"][1]["role"], "model");
        assert_eq!(
            body["contents"][1]["parts"][0]["functionCall"]["args"]["city"],
            "Oslo"
        );
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"],
            json!({"id": "call_1", "name": "weather", "response": {"content": "rain"}})
        );
        assert_eq!(
            body["tools"][0]["functionDeclarations"][0]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 10);
        assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
    }

    #[test]
    fn usage_separates_cached_input_and_counts_thoughts_as_output() {
        let u = usage(
            &json!({"promptTokenCount": 100, "cachedContentTokenCount": 40,
                              "candidatesTokenCount": 7, "thoughtsTokenCount": 3}),
        );
        assert_eq!(
            u,
            Usage {
                input: Some(60),
                output: Some(10),
                cache_read: Some(40),
                cache_write: None
            }
        );
    }
}
