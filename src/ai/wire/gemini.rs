//! The Gemini API format (`models/{model}:generateContent`, and
//! `:streamGenerateContent?alt=sse` whose events are each a partial answer). Spoken by
//! `gemini` providers, and by clients on `/v1beta/models/{model}:…` (Gemini CLI, Google's
//! `genai` SDKs): relayed as sent to a `gemini` provider, translated for the others
//! ([`parse_request`], [`render_response`], [`Encoder`]).
//!
//! Gemini function calls may carry no id; Warden then gives each one an id of its own
//! (`call_<random>_<n>`), and maps tool results back to the function's name (which is what
//! Gemini's `functionResponse` wants) by finding the call with that id earlier in the
//! conversation. `usageMetadata.promptTokenCount` includes cached tokens and
//! `thoughtsTokenCount` is billed as output; both are converted to Warden's token classes.

use std::collections::HashMap;

use bytes::BytesMut;
use serde_json::{Map, Value, json};

use super::{
    ChatRequest, ChatResponse, Delta, Finish, Image, Message, Part, Role, StreamDecoder,
    StreamEncoder, Tool, ToolCall, ToolChoice, ToolResult, WireError, count, error_message,
    invalid, merge_turns, refuse_fields, str_or_empty, string,
};
use crate::ai::pricing::Usage;
use crate::ai::sse::{SseEvent, write_event};

/// Request fields dropped when translating to another format: safety and sampling hints
/// with no equivalent, and thinking settings (as `thinking` is dropped from Anthropic
/// requests).
const DROPPED_GENERATION: &[&str] = &[
    "topK",
    "seed",
    "thinkingConfig",
    "presencePenalty",
    "frequencyPenalty",
    "responseModalities",
    "mediaResolution",
];

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

// -----------------------------------------------------------------------------------
// Clients: requests in
// -----------------------------------------------------------------------------------

/// Reads a Gemini client's request, for a provider of another format (the model and
/// whether to stream come from its URL).
///
/// Function calls without an id get `call_<n>` (the nth call of the conversation); a
/// function response without one answers the earliest call of that name not yet answered.
pub fn parse_request(body: &Map<String, Value>) -> Result<ChatRequest, WireError> {
    let mut request = ChatRequest::default();
    const READ: &[&str] = &[
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "generationConfig",
        "safetySettings",
        "labels",
    ];
    let mut untranslatable: Vec<String> = body
        .keys()
        .filter(|key| !READ.contains(&key.as_str()))
        .map(|key| format!("`{key}`"))
        .collect();
    if let Some(generation) = body.get("generationConfig").and_then(Value::as_object) {
        read_generation(&mut request, generation, &mut untranslatable)?;
    }
    refuse_fields(untranslatable)?;
    if let Some(system) = body.get("systemInstruction").filter(|s| !s.is_null()) {
        request.system.push(texts(system, "systemInstruction")?);
    }
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`contents` must be a list"))?;
    let mut calls = CallIds::default();
    for (i, content) in contents.iter().enumerate() {
        read_content(&mut request, content, &format!("contents[{i}]"), &mut calls)?;
    }
    read_tools(&mut request, body)?;
    Ok(request)
}

fn read_generation(
    request: &mut ChatRequest,
    generation: &Map<String, Value>,
    untranslatable: &mut Vec<String>,
) -> Result<(), WireError> {
    for (key, value) in generation {
        match key.as_str() {
            "maxOutputTokens" => {
                request.max_tokens = Some(value.as_u64().ok_or_else(|| {
                    invalid("`generationConfig.maxOutputTokens` must be a non-negative integer")
                })?)
            }
            "temperature" => request.temperature = Some(value.clone()),
            "topP" => request.top_p = Some(value.clone()),
            "stopSequences" => {
                request.stop = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            }
            "candidateCount" if value.as_u64() == Some(1) => {}
            "responseMimeType" if value.as_str() == Some("text/plain") => {}
            other if DROPPED_GENERATION.contains(&other) => {}
            other => untranslatable.push(format!("`generationConfig.{other}`")),
        }
    }
    Ok(())
}

/// The text of a `Content` made only of text parts (a system instruction).
fn texts(content: &Value, context: &str) -> Result<String, WireError> {
    let mut text = String::new();
    for part in content
        .get("parts")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("{context}: `parts` must be a list")))?
    {
        match part.get("text").and_then(Value::as_str) {
            Some(piece) => text.push_str(piece),
            None => {
                return Err(WireError::Untranslatable {
                    what: format!("{context} with a part other than text"),
                    target: "",
                });
            }
        }
    }
    Ok(text)
}

/// Ids for function calls that came without one, and the calls not yet answered.
#[derive(Default)]
struct CallIds {
    made: usize,
    /// (name, id) of calls without a response yet, oldest first.
    open: Vec<(String, String)>,
}

impl CallIds {
    fn call(&mut self, name: &str, id: Option<&str>) -> String {
        self.made += 1;
        let id = id
            .filter(|id| !id.is_empty())
            .map_or_else(|| format!("call_warden_{}", self.made), str::to_owned);
        self.open.push((name.to_owned(), id.clone()));
        id
    }

    /// The id of the call a response answers: the open call with its id, else (clients
    /// such as Gemini CLI give responses ids of their own making when the call had none)
    /// the earliest open call of its name.
    fn response(&mut self, name: &str, id: Option<&str>) -> Option<String> {
        let id = id.filter(|id| !id.is_empty());
        let position = id
            .and_then(|id| self.open.iter().position(|(_, open)| open == id))
            .or_else(|| self.open.iter().position(|(open, _)| open == name));
        match position {
            Some(position) => Some(self.open.remove(position).1),
            None => id.map(str::to_owned),
        }
    }
}

fn read_content(
    request: &mut ChatRequest,
    content: &Value,
    context: &str,
    calls: &mut CallIds,
) -> Result<(), WireError> {
    let role = match content.get("role").and_then(Value::as_str) {
        Some("model") => Role::Assistant,
        None | Some("user" | "function" | "tool") => Role::User,
        Some(other) => {
            return Err(invalid(format!("{context}: unknown `role` `{other}`")));
        }
    };
    let mut parts = Vec::new();
    for part in content
        .get("parts")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("{context}: `parts` must be a list")))?
    {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue; // another provider cannot continue Gemini's thoughts
        }
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            parts.push(Part::Text(text.to_owned()));
        } else if let Some(data) = part.get("inlineData") {
            let media_type = string(data, "mimeType", context)?;
            if !media_type.starts_with("image/") {
                return Err(WireError::Untranslatable {
                    what: format!("{context} inline data of type `{media_type}` (images only)"),
                    target: "",
                });
            }
            parts.push(Part::Image(Image::Base64 {
                media_type: media_type.to_owned(),
                data: string(data, "data", context)?.to_owned(),
            }));
        } else if let Some(call) = part.get("functionCall") {
            let name = string(call, "name", context)?;
            parts.push(Part::ToolCall(ToolCall {
                id: calls.call(name, call.get("id").and_then(Value::as_str)),
                name: name.to_owned(),
                arguments: call
                    .get("args")
                    .map_or_else(|| "{}".to_owned(), Value::to_string),
            }));
        } else if let Some(response) = part.get("functionResponse") {
            let name = string(response, "name", context)?;
            let id = calls
                .response(name, response.get("id").and_then(Value::as_str))
                .ok_or_else(|| {
                    invalid(format!(
                        "{context}: the response of `{name}` answers no function call in the \
                         conversation"
                    ))
                })?;
            let result = response.get("response").cloned().unwrap_or(Value::Null);
            parts.push(Part::ToolResult(ToolResult {
                id,
                is_error: result.get("error").is_some() && result.get("output").is_none(),
                content: match &result {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                },
            }));
        } else {
            let kind = part
                .as_object()
                .and_then(|p| p.keys().find(|k| !matches!(k.as_str(), "thoughtSignature")))
                .map_or("?", String::as_str);
            return Err(WireError::Untranslatable {
                what: format!("{context} a part of kind `{kind}`"),
                target: "",
            });
        }
    }
    if !parts.is_empty() {
        request.messages.push(Message { role, parts });
    }
    Ok(())
}

fn read_tools(request: &mut ChatRequest, body: &Map<String, Value>) -> Result<(), WireError> {
    for (i, tool) in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        // Google's REST API takes either spelling.
        let declarations = tool
            .get("functionDeclarations")
            .or_else(|| tool.get("function_declarations"))
            .and_then(Value::as_array);
        let other = tool
            .as_object()
            .and_then(|t| t.keys().find(|k| !is_declarations(k)));
        if let Some(other) = other {
            return Err(WireError::Untranslatable {
                what: format!("tools[{i}] `{other}` (only function declarations cross over)"),
                target: "",
            });
        }
        for declaration in declarations.into_iter().flatten() {
            let schema_key = if declaration.get("parametersJsonSchema").is_some() {
                "parametersJsonSchema"
            } else {
                "parameters"
            };
            request.tools.push(Tool::read(
                declaration,
                schema_key,
                &format!("tools[{i}].functionDeclarations"),
            )?);
        }
    }
    let config = body
        .get("toolConfig")
        .and_then(|c| c.get("functionCallingConfig"));
    request.tool_choice = match config.and_then(|c| c.get("mode")).and_then(Value::as_str) {
        None | Some("MODE_UNSPECIFIED") => None,
        Some("AUTO" | "VALIDATED") => Some(ToolChoice::Auto),
        Some("NONE") => Some(ToolChoice::None),
        Some("ANY") => {
            let allowed = config
                .and_then(|c| c.get("allowedFunctionNames"))
                .and_then(Value::as_array);
            match allowed.map(Vec::as_slice) {
                Some([only]) => Some(ToolChoice::Tool(
                    only.as_str()
                        .ok_or_else(|| invalid("`allowedFunctionNames` must hold names"))?
                        .to_owned(),
                )),
                Some([]) | None => Some(ToolChoice::Required),
                Some(_) => {
                    return Err(WireError::Untranslatable {
                        what: "`allowedFunctionNames` with more than one name".into(),
                        target: "",
                    });
                }
            }
        }
        Some(other) => return Err(invalid(format!("unknown function calling mode `{other}`"))),
    };
    Ok(())
}

// -----------------------------------------------------------------------------------
// Clients: answers out
// -----------------------------------------------------------------------------------

fn finish_reason(finish: Option<&Finish>) -> &'static str {
    match finish {
        Some(Finish::Length) => "MAX_TOKENS",
        Some(Finish::ContentFilter) => "SAFETY",
        Some(Finish::Other(_)) => "OTHER",
        _ => "STOP",
    }
}

/// `usageMetadata` with the counts the provider reported (an unknown count is left out,
/// not written as zero: clients keep a running total of the prompt's size).
fn render_usage(usage: &Usage) -> Value {
    let prompt_known =
        usage.input.is_some() || usage.cache_read.is_some() || usage.cache_write.is_some();
    let prompt = prompt_known.then(|| usage.prompt_total());
    let mut out = Map::new();
    if let Some(prompt) = prompt {
        out.insert("promptTokenCount".into(), json!(prompt));
    }
    if let Some(output) = usage.output {
        out.insert("candidatesTokenCount".into(), json!(output));
    }
    if let (Some(prompt), Some(output)) = (prompt, usage.output) {
        out.insert(
            "totalTokenCount".into(),
            json!(prompt.saturating_add(output)),
        );
    }
    if let Some(cached) = usage.cache_read {
        out.insert("cachedContentTokenCount".into(), json!(cached));
    }
    Value::Object(out)
}

fn call_part(call: &ToolCall) -> Value {
    let args = serde_json::from_str::<Value>(&call.arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    json!({"functionCall": {"id": call.id, "name": call.name, "args": args}})
}

fn chunk(parts: Vec<Value>, finish: Option<&str>, model: &str, id: &str) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = json!(reason);
    }
    json!({"candidates": [candidate], "modelVersion": model, "responseId": id})
}

/// Renders a complete answer for a Gemini client.
pub fn render_response(response: &ChatResponse) -> Value {
    let parts = response
        .parts
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) => Some(json!({"text": text})),
            Part::ToolCall(call) => Some(call_part(call)),
            _ => None,
        })
        .collect();
    let mut answer = chunk(
        parts,
        Some(finish_reason(response.finish.as_ref())),
        &response.model,
        &response.id,
    );
    answer["usageMetadata"] = render_usage(&response.usage);
    answer
}

/// Refuses a relayed request with a tool the provider runs itself (`googleSearch`,
/// `codeExecution`, `urlContext`, …: calls Warden never sees, billed beyond the token
/// counts), unless `allowed` (`ai.provider_tools`) lists its key.
pub fn check_tools(
    tools: Option<&serde_json::value::RawValue>,
    allowed: &[String],
) -> Result<(), String> {
    super::check_provider_tools(tools, allowed, |i, tool| {
        tool.as_object()
            .into_iter()
            .flat_map(|t| t.keys())
            .filter(|key| !is_declarations(key))
            .map(|key| (format!("tools[{i}] `{key}`"), key.clone()))
            .collect()
    })
}

/// Whether a tool's key holds function declarations (Google's REST API takes either
/// spelling).
fn is_declarations(key: &str) -> bool {
    matches!(key, "functionDeclarations" | "function_declarations")
}

/// An error object in Gemini's shape.
pub fn error_body(message: &str, code: u16, status: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// The error event of a stream that failed midway (the provider's failure or Warden's).
pub fn stream_error_body(message: &str) -> Value {
    error_body(message, 502, "UNAVAILABLE")
}

/// Writes `streamGenerateContent?alt=sse` events from deltas: text as it comes, each
/// function call whole once its arguments are complete (Gemini sends calls whole). The
/// last part is held back and sent with the finish reason and the usage, as Gemini does:
/// clients such as Gemini CLI treat a chunk without parts as an invalid stream.
#[derive(Default)]
pub struct Encoder {
    id: String,
    model: String,
    /// A part not sent yet: the last one goes out with the finish reason.
    held: Option<Value>,
    /// The function call whose arguments are arriving.
    call: Option<ToolCall>,
    finish: Option<Finish>,
    usage: Usage,
    done: bool,
}

impl Encoder {
    fn write(&self, parts: Vec<Value>, finish: Option<&str>, out: &mut BytesMut) {
        let mut event = chunk(parts, finish, &self.model, &self.id);
        if finish.is_some() {
            event["usageMetadata"] = render_usage(&self.usage);
        }
        write_event(out, None, &event.to_string());
    }

    /// Holds `part`, sending the one held before it.
    fn hold(&mut self, part: Value, out: &mut BytesMut) {
        if let Some(previous) = self.held.replace(part) {
            self.write(vec![previous], None, out);
        }
    }

    /// The call whose arguments were arriving is complete.
    fn complete_call(&mut self, out: &mut BytesMut) {
        if let Some(call) = self.call.take() {
            self.hold(call_part(&call), out);
        }
    }
}

impl StreamEncoder for Encoder {
    fn encode(&mut self, delta: &Delta, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match delta {
            Delta::Start { id, model } => {
                self.id = id.clone();
                self.model = model.clone();
            }
            Delta::Text(text) if text.is_empty() => {}
            Delta::Text(text) => {
                self.complete_call(out);
                self.hold(json!({"text": text}), out);
            }
            Delta::ToolStart { id, name, .. } => {
                self.complete_call(out);
                self.call = Some(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                });
            }
            Delta::ToolArgs { json, .. } => {
                if let Some(call) = &mut self.call {
                    call.arguments.push_str(json);
                }
            }
            Delta::Finish(finish) => self.finish = Some(finish.clone()),
            Delta::Usage(usage) => self.usage.merge(*usage),
            Delta::Error(message) => {
                // A call whose arguments were still arriving is not sent: a client could
                // run the tool with what it got.
                self.call = None;
                if let Some(part) = self.held.take() {
                    self.write(vec![part], None, out);
                }
                self.done = true;
                write_event(out, None, &stream_error_body(message).to_string());
            }
            Delta::Done => {
                self.complete_call(out);
                self.done = true;
                let parts = self.held.take().into_iter().collect();
                let reason = finish_reason(self.finish.as_ref());
                self.write(parts, Some(reason), out);
            }
        }
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

    use crate::ai::wire::map;

    #[test]
    fn a_client_request_reads_into_neutral_form_with_call_ids_of_its_own() {
        let request = parse_request(&map(json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Weather?"},
                    {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
                {"role": "model", "parts": [{"text": "Checking.", "thought": true},
                    {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
                    {"functionCall": {"name": "weather", "args": {"city": "Bergen"}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "weather", "response": {"output": "rain"}}},
                    // An id the client made up (Gemini CLI does for calls without one).
                    {"functionResponse": {"id": "weather-17-x", "name": "weather",
                                          "response": {"output": "sun"}}}]},
            ],
            "tools": [{"functionDeclarations": [{"name": "weather",
                "parametersJsonSchema": {"type": "object"}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                "allowedFunctionNames": ["weather"]}},
            "generationConfig": {"maxOutputTokens": 100, "temperature": 0.5, "topK": 40,
                "thinkingConfig": {"thinkingBudget": 0}, "stopSequences": ["END"]},
            "safetySettings": [],
        })))
        .unwrap();
        assert_eq!(request.system, ["Be brief."]);
        assert_eq!(request.messages.len(), 3);
        assert_eq!(request.messages[1].role, Role::Assistant);
        let Part::ToolCall(first) = &request.messages[1].parts[0] else {
            panic!("{:?}", request.messages[1]);
        };
        assert_eq!(
            (first.id.as_str(), first.arguments.as_str()),
            ("call_warden_1", "{\"city\":\"Oslo\"}")
        );
        // Responses without ids, or with ids of the client's, answer the calls of that
        // name in order.
        let ids: Vec<&str> = request.messages[2]
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::ToolResult(r) => Some(r.id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, ["call_warden_1", "call_warden_2"]);
        assert_eq!(request.tools[0].parameters, json!({"type": "object"}));
        assert_eq!(
            request.tool_choice,
            Some(ToolChoice::Tool("weather".into()))
        );
        assert_eq!(request.max_tokens, Some(100));
        assert_eq!(request.stop, ["END"]);
    }

    #[test]
    fn what_a_client_request_cannot_carry_over_is_named() {
        let refused = |body: Value| {
            parse_request(&map(body))
                .unwrap_err()
                .toward(super::super::Wire::Anthropic)
                .to_string()
        };
        let contents = json!([{"role": "user", "parts": [{"text": "Hi"}]}]);
        assert!(
            refused(json!({"contents": contents, "cachedContent": "c/1",
                           "generationConfig": {"responseSchema": {}}}))
            .contains("request field `cachedContent`, `generationConfig.responseSchema`")
        );
        assert!(
            refused(json!({"contents": contents, "tools": [{"googleSearch": {}}]}))
                .contains("tools[0] `googleSearch`")
        );
        assert!(
            refused(json!({"contents": [{"role": "user",
                "parts": [{"fileData": {"fileUri": "gs://x"}}]}]}))
            .contains("contents[0] a part of kind `fileData`")
        );
        let orphan = parse_request(&map(json!({"contents": [{"role": "user", "parts": [
            {"functionResponse": {"name": "weather", "response": {}}}]}]})))
        .unwrap_err();
        assert!(
            orphan.to_string().contains("answers no function call"),
            "{orphan}"
        );
    }

    #[test]
    fn answers_render_for_a_client_complete_and_streamed() {
        let usage = Usage {
            input: Some(10),
            output: Some(5),
            cache_read: Some(2),
            cache_write: None,
        };
        let answer = render_response(&ChatResponse {
            id: "msg_1".into(),
            model: "claude-test".into(),
            parts: vec![
                Part::Text("Hi".into()),
                Part::ToolCall(ToolCall {
                    id: "toolu_1".into(),
                    name: "weather".into(),
                    arguments: "{\"city\":\"Oslo\"}".into(),
                }),
            ],
            finish: Some(Finish::ToolCalls),
            usage,
        });
        assert_eq!(answer["candidates"][0]["content"]["parts"][0]["text"], "Hi");
        assert_eq!(
            answer["candidates"][0]["content"]["parts"][1]["functionCall"]["args"]["city"],
            "Oslo"
        );
        assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
        assert_eq!(answer["usageMetadata"]["promptTokenCount"], 12);
        assert_eq!(super::usage(&answer["usageMetadata"]), usage);
        // Read back by Warden's own provider-side reader.
        let read = parse_response(&answer).unwrap();
        assert_eq!(read.finish, Some(Finish::ToolCalls));

        let mut encoder = Encoder::default();
        let mut out = BytesMut::new();
        for delta in super::super::sample_deltas(Finish::Length, usage) {
            encoder.encode(&delta, &mut out);
        }
        let mut events = Vec::new();
        crate::ai::sse::SseReader::default()
            .push(&out, &mut events)
            .unwrap();
        let chunks: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(
            chunks.len(),
            3,
            "two texts, then the whole call with the end: {chunks:?}"
        );
        assert_eq!(
            chunks[0]["candidates"][0]["content"]["parts"][0]["text"],
            "Hel"
        );
        // The last part travels with the finish reason: no chunk without parts.
        let last = &chunks[2];
        assert_eq!(
            last["candidates"][0]["content"]["parts"][0]["functionCall"]["args"],
            json!({"city": "Oslo"})
        );
        assert_eq!(last["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 5);
        for chunk in &chunks {
            let parts = &chunk["candidates"][0]["content"]["parts"];
            assert!(parts.as_array().is_some_and(|p| !p.is_empty()), "{chunk}");
        }
        // Warden's provider-side decoder reads the stream back.
        let mut decoder = Decoder::default();
        let mut deltas = Vec::new();
        for event in &events {
            decoder.decode(event, &mut deltas).unwrap();
        }
        assert!(
            deltas.contains(&Delta::Finish(Finish::Length)),
            "{deltas:?}"
        );
    }

    #[test]
    fn an_error_mid_call_sends_the_text_but_not_the_unfinished_call() {
        let mut encoder = Encoder::default();
        let mut out = BytesMut::new();
        for delta in [
            Delta::Text("Checking".into()),
            Delta::ToolStart {
                index: 0,
                id: "toolu_1".into(),
                name: "delete_files".into(),
            },
            Delta::ToolArgs {
                index: 0,
                json: "{\"path\":".into(),
            },
            Delta::Error("overloaded".into()),
            Delta::Done,
        ] {
            encoder.encode(&delta, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("\"text\":\"Checking\""), "{text}");
        assert!(!text.contains("functionCall"), "{text}");
        assert!(text.contains("\"message\":\"overloaded\""), "{text}");
        assert!(
            !text.contains("finishReason"),
            "nothing after the error: {text}"
        );
    }
}
