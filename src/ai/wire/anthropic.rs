//! The Anthropic messages format (`POST /v1/messages`): requests with content blocks,
//! answers, the named stream events (`message_start`, `content_block_start`,
//! `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, `ping`,
//! `error`), and `usage` with cache reads and writes. Spoken by clients and by
//! `anthropic` providers.

use std::collections::HashMap;

use bytes::BytesMut;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{
    ChatRequest, ChatResponse, Delta, Finish, Image, Message, Part, Role, StreamDecoder,
    StreamEncoder, Tool, ToolCall, ToolChoice, ToolResult, WireError, check_provider_tools, count,
    invalid, merge_turns, refuse_fields, str_or_empty, string,
};
use crate::ai::pricing::Usage;
use crate::ai::sse::{SseEvent, write_event};

/// Anthropic requires `max_tokens`; a translated request that names none gets this.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The API version Warden speaks when the client names none.
pub const API_VERSION: &str = "2023-06-01";

/// Tool types the client carries out (besides `custom`, and tools without a type):
/// Anthropic defines them, the client runs them. Their versions follow (`bash_20250124`).
const CLIENT_TOOLS: &[&str] = &["bash", "text_editor", "computer", "memory"];

/// Refuses a relayed request naming a tool Anthropic would run itself (`web_search`,
/// `web_fetch`, `code_execution`, … — a type's kind is its name without the version) or
/// remote MCP servers it would call (`mcp_servers`: kind `mcp`), unless `allowed`
/// (`ai.provider_tools`) lists the kind.
pub fn check_tools(
    tools: Option<&RawValue>,
    mcp_servers: Option<&RawValue>,
    allowed: &[String],
) -> Result<(), String> {
    let calls_mcp = mcp_servers.is_some_and(|servers| {
        let servers = servers.get().trim();
        servers != "null" && servers != "[]"
    });
    if calls_mcp && !allowed.iter().any(|kind| kind == "mcp") {
        return Err(
            "`mcp_servers` would have the provider call remote MCP servers, outside \
                    Warden's governance; list `mcp` in ai.provider_tools to allow it"
                .into(),
        );
    }
    check_provider_tools(tools, allowed, |i, tool| {
        let Some(kind) = tool.get("type").and_then(Value::as_str) else {
            return Vec::new();
        };
        let family = versionless(kind);
        if kind == "custom" || CLIENT_TOOLS.contains(&family) {
            return Vec::new();
        }
        vec![(format!("tools[{i}] of type `{kind}`"), family.to_owned())]
    })
}

/// A tool type without its version suffix: `web_search_20250305` → `web_search`.
fn versionless(kind: &str) -> &str {
    match kind.rsplit_once('_') {
        Some((family, version))
            if version.len() == 8 && version.bytes().all(|b| b.is_ascii_digit()) =>
        {
            family
        }
        _ => kind,
    }
}

/// Request fields dropped when translating to another format: hints that do not change
/// what the answer means.
pub const DROPPED_FIELDS: &[&str] = &["thinking", "service_tier", "top_k", "context_management"];

// -----------------------------------------------------------------------------------
// Requests
// -----------------------------------------------------------------------------------

/// Reads a client's request.
pub fn parse_request(body: &Map<String, Value>) -> Result<ChatRequest, WireError> {
    let mut request = ChatRequest::default();
    let mut untranslatable = Vec::new();
    for (key, value) in body {
        match key.as_str() {
            "model" | "messages" | "tools" | "tool_choice" | "system" => {}
            "max_tokens" => {
                request.max_tokens = Some(
                    value
                        .as_u64()
                        .ok_or_else(|| invalid("`max_tokens` must be a non-negative integer"))?,
                )
            }
            "temperature" => request.temperature = Some(value.clone()).filter(|v| !v.is_null()),
            "top_p" => request.top_p = Some(value.clone()).filter(|v| !v.is_null()),
            "stop_sequences" => {
                request.stop = value
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            "stream" => request.stream = value.as_bool().unwrap_or(false),
            "metadata" => {
                request.user = value
                    .get("user_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }
            other if DROPPED_FIELDS.contains(&other) => {}
            other => untranslatable.push(format!("`{other}`")),
        }
    }
    refuse_fields(untranslatable)?;
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => request.system.push(s.clone()),
        Some(Value::Array(blocks)) => {
            for block in blocks {
                request
                    .system
                    .push(string(block, "text", "system[]")?.to_owned());
            }
        }
        Some(_) => {
            return Err(invalid(
                "`system` must be a string or a list of text blocks",
            ));
        }
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be a list"))?;
    for (i, message) in messages.iter().enumerate() {
        let context = format!("messages[{i}]");
        let role = match string(message, "role", &context)? {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(invalid(format!("{context}: unknown role `{other}`"))),
        };
        let mut parts = Vec::new();
        match message.get("content") {
            Some(Value::String(s)) => parts.push(Part::Text(s.clone())),
            Some(Value::Array(blocks)) => {
                for block in blocks {
                    if let Some(part) = read_block(block, &context)? {
                        parts.push(part);
                    }
                }
            }
            _ => {
                return Err(invalid(format!(
                    "{context}: `content` must be a string or a list"
                )));
            }
        }
        request.messages.push(Message { role, parts });
    }
    for tool in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if tool
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "custom")
        {
            return Err(WireError::Untranslatable {
                what: format!(
                    "server tool `{}`",
                    tool.get("name").and_then(Value::as_str).unwrap_or("?")
                ),
                target: "",
            });
        }
        request
            .tools
            .push(Tool::read(tool, "input_schema", "tools[]")?);
    }
    if let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) {
        request.tool_choice = Some(match string(choice, "type", "tool_choice")? {
            "auto" => ToolChoice::Auto,
            "any" => ToolChoice::Required,
            "none" => ToolChoice::None,
            "tool" => ToolChoice::Tool(string(choice, "name", "tool_choice")?.to_owned()),
            other => return Err(invalid(format!("unknown `tool_choice.type` `{other}`"))),
        });
        if choice
            .get("disable_parallel_tool_use")
            .and_then(Value::as_bool)
            == Some(true)
        {
            request.parallel_tool_calls = Some(false);
        }
    }
    Ok(request)
}

fn read_block(block: &Value, context: &str) -> Result<Option<Part>, WireError> {
    let kind = string(block, "type", context)?;
    Ok(Some(match kind {
        "text" => Part::Text(string(block, "text", context)?.to_owned()),
        "image" => Part::Image(read_image(block, context)?),
        "tool_use" => Part::ToolCall(ToolCall {
            id: string(block, "id", context)?.to_owned(),
            name: string(block, "name", context)?.to_owned(),
            arguments: block
                .get("input")
                .map_or_else(|| "{}".to_owned(), Value::to_string),
        }),
        "tool_result" => {
            let content = match block.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(items)) => {
                    let mut text = String::new();
                    for item in items {
                        match item.get("type").and_then(Value::as_str) {
                            Some("text") => text.push_str(string(item, "text", context)?),
                            other => {
                                return Err(WireError::Untranslatable {
                                    what: format!(
                                        "{context}: a tool result holding `{}`",
                                        other.unwrap_or("?")
                                    ),
                                    target: "",
                                });
                            }
                        }
                    }
                    text
                }
                Some(_) => return Err(invalid(format!("{context}: bad tool_result content"))),
            };
            Part::ToolResult(ToolResult {
                id: string(block, "tool_use_id", context)?.to_owned(),
                content,
                is_error: block
                    .get("is_error")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        }
        // Earlier reasoning is the provider's own; another provider cannot continue it.
        "thinking" | "redacted_thinking" => return Ok(None),
        other => {
            return Err(WireError::Untranslatable {
                what: format!("{context}: content block `{other}`"),
                target: "",
            });
        }
    }))
}

fn read_image(block: &Value, context: &str) -> Result<Image, WireError> {
    let source = block
        .get("source")
        .ok_or_else(|| invalid(format!("{context}: an image needs `source`")))?;
    match string(source, "type", context)? {
        "base64" => Ok(Image::Base64 {
            media_type: string(source, "media_type", context)?.to_owned(),
            data: string(source, "data", context)?.to_owned(),
        }),
        "url" => Ok(Image::Url(string(source, "url", context)?.to_owned())),
        other => Err(WireError::Untranslatable {
            what: format!("{context}: an image source of type `{other}`"),
            target: "",
        }),
    }
}

fn image_block(image: &Image) -> Value {
    match image {
        Image::Base64 { media_type, data } => json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }),
        Image::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

/// Renders a request for an Anthropic provider.
pub fn render_request(request: &ChatRequest, model: &str) -> Value {
    let messages: Vec<Value> = merge_turns(&request.messages)
        .iter()
        .map(|message| {
            let mut blocks: Vec<Value> = Vec::new();
            // Tool results lead a user turn.
            for part in &message.parts {
                if let Part::ToolResult(result) = part {
                    let mut block = json!({
                        "type": "tool_result",
                        "tool_use_id": result.id,
                        "content": result.content,
                    });
                    if result.is_error {
                        block["is_error"] = Value::Bool(true);
                    }
                    blocks.push(block);
                }
            }
            for part in &message.parts {
                match part {
                    Part::Text(text) if !text.is_empty() => {
                        blocks.push(json!({"type": "text", "text": text}))
                    }
                    Part::Image(image) => blocks.push(image_block(image)),
                    Part::ToolCall(call) => blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": serde_json::from_str::<Value>(&call.arguments)
                            .ok()
                            .filter(Value::is_object)
                            .unwrap_or_else(|| json!({})),
                    })),
                    _ => {}
                }
            }
            json!({
                "role": match message.role { Role::User => "user", Role::Assistant => "assistant" },
                "content": blocks,
            })
        })
        .collect();
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    if !request.system.is_empty() {
        body["system"] = Value::from(request.system.join("\n\n"));
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                let mut out = json!({"name": tool.name, "input_schema": tool.parameters});
                if let Some(description) = &tool.description {
                    out["description"] = Value::from(description.clone());
                }
                out
            })
            .collect();
        let mut choice = match &request.tool_choice {
            None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
            Some(ToolChoice::None) => json!({"type": "none"}),
            Some(ToolChoice::Required) => json!({"type": "any"}),
            Some(ToolChoice::Tool(name)) => json!({"type": "tool", "name": name}),
        };
        if request.parallel_tool_calls == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
        if request.tool_choice.is_some() || request.parallel_tool_calls == Some(false) {
            body["tool_choice"] = choice;
        }
    }
    if let Some(t) = &request.temperature {
        body["temperature"] = t.clone();
    }
    if let Some(p) = &request.top_p {
        body["top_p"] = p.clone();
    }
    if !request.stop.is_empty() {
        body["stop_sequences"] = json!(request.stop);
    }
    if let Some(user) = &request.user {
        body["metadata"] = json!({"user_id": user});
    }
    if request.stream {
        body["stream"] = Value::Bool(true);
    }
    body
}

// -----------------------------------------------------------------------------------
// Answers
// -----------------------------------------------------------------------------------

/// Anthropic's `usage`.
pub fn usage(value: &Value) -> Usage {
    Usage {
        input: count(value, "input_tokens"),
        output: count(value, "output_tokens"),
        cache_read: count(value, "cache_read_input_tokens"),
        cache_write: count(value, "cache_creation_input_tokens"),
    }
}

fn render_usage(usage: &Usage) -> Value {
    let mut out = json!({
        "input_tokens": usage.input.unwrap_or(0),
        "output_tokens": usage.output.unwrap_or(0),
    });
    if let Some(read) = usage.cache_read {
        out["cache_read_input_tokens"] = Value::from(read);
    }
    if let Some(write) = usage.cache_write {
        out["cache_creation_input_tokens"] = Value::from(write);
    }
    out
}

fn parse_finish(reason: &str) -> Finish {
    match reason {
        "end_turn" | "stop_sequence" => Finish::Stop,
        "max_tokens" => Finish::Length,
        "tool_use" => Finish::ToolCalls,
        "refusal" => Finish::ContentFilter,
        other => Finish::Other(other.to_owned()),
    }
}

fn finish_name(finish: &Finish) -> &str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
        Finish::ContentFilter => "refusal",
        Finish::Other(other) => other,
    }
}

/// Reads a provider's complete answer.
pub fn parse_response(body: &Value) -> Result<ChatResponse, WireError> {
    let content = body
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the provider's answer has no `content`"))?;
    let mut parts = Vec::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(Part::Text(str_or_empty(block, "text"))),
            Some("tool_use") => parts.push(Part::ToolCall(ToolCall {
                id: str_or_empty(block, "id"),
                name: str_or_empty(block, "name"),
                arguments: block
                    .get("input")
                    .map_or_else(|| "{}".to_owned(), Value::to_string),
            })),
            _ => {}
        }
    }
    Ok(ChatResponse {
        id: str_or_empty(body, "id"),
        model: str_or_empty(body, "model"),
        parts,
        finish: body
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(parse_finish),
        usage: body.get("usage").map(usage).unwrap_or_default(),
    })
}

/// Renders a complete answer for an Anthropic-format client.
pub fn render_response(response: &ChatResponse) -> Value {
    let content: Vec<Value> = response
        .parts
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) => Some(json!({"type": "text", "text": text})),
            Part::ToolCall(call) => Some(json!({
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": serde_json::from_str::<Value>(&call.arguments).unwrap_or_else(|_| json!({})),
            })),
            _ => None,
        })
        .collect();
    json!({
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": response.finish.as_ref().map_or("end_turn", finish_name),
        "stop_sequence": null,
        "usage": render_usage(&response.usage),
    })
}

/// An error body in Anthropic's shape.
pub fn error_body(message: &str, kind: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

// -----------------------------------------------------------------------------------
// Streams
// -----------------------------------------------------------------------------------

/// Reads the named stream events.
#[derive(Default)]
pub struct Decoder {
    /// Content block index → tool call ordinal (text and thinking blocks are absent).
    tools: HashMap<u64, usize>,
    next_tool: usize,
}

impl StreamDecoder for Decoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<Delta>) -> Result<(), String> {
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|e| format!("the provider sent an event that is not JSON: {e}"))?;
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                out.push(Delta::Start {
                    id: str_or_empty(message, "id"),
                    model: str_or_empty(message, "model"),
                });
                if let Some(reported) = message.get("usage") {
                    out.push(Delta::Usage(usage(reported)));
                }
            }
            "content_block_start" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = data.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str)
                            && !text.is_empty()
                        {
                            out.push(Delta::Text(text.to_owned()));
                        }
                    }
                    Some("tool_use") => {
                        let ordinal = self.next_tool;
                        self.next_tool += 1;
                        self.tools.insert(index, ordinal);
                        out.push(Delta::ToolStart {
                            index: ordinal,
                            id: str_or_empty(block, "id"),
                            name: str_or_empty(block, "name"),
                        });
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(text) = delta.get("text").and_then(Value::as_str) {
                            out.push(Delta::Text(text.to_owned()));
                        }
                    }
                    Some("input_json_delta") => {
                        if let (Some(ordinal), Some(json)) = (
                            self.tools.get(&index),
                            delta.get("partial_json").and_then(Value::as_str),
                        ) && !json.is_empty()
                        {
                            out.push(Delta::ToolArgs {
                                index: *ordinal,
                                json: json.to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(Delta::Finish(parse_finish(reason)));
                }
                if let Some(reported) = data.get("usage") {
                    out.push(Delta::Usage(usage(reported)));
                }
            }
            "message_stop" => out.push(Delta::Done),
            "error" => out.push(Delta::Error(
                data.pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error")
                    .to_owned(),
            )),
            // `ping`, `content_block_stop`, and event types added later.
            _ => {}
        }
        Ok(())
    }
}

/// Writes the named stream events.
#[derive(Default)]
pub struct Encoder {
    started: bool,
    done: bool,
    /// Index of the next content block.
    next_block: usize,
    /// The open block: (block index, tool ordinal or None for text).
    open: Option<(usize, Option<usize>)>,
    /// Tool ordinal → its block index.
    tool_blocks: HashMap<usize, usize>,
    finish: Option<Finish>,
    usage: Usage,
}

impl Encoder {
    fn send(out: &mut BytesMut, kind: &str, data: Value) {
        write_event(out, Some(kind), &data.to_string());
    }

    fn start(&mut self, id: &str, model: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let id = if id.is_empty() {
            format!("msg_{}", uuid::Uuid::new_v4().simple())
        } else {
            id.to_owned()
        };
        Self::send(
            out,
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": render_usage(&self.usage),
            }}),
        );
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            Self::send(
                out,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
        }
    }
}

impl StreamEncoder for Encoder {
    fn encode(&mut self, delta: &Delta, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match delta {
            Delta::Start { id, model } => self.start(id, model, out),
            Delta::Text(text) => {
                self.start("", "", out);
                if !matches!(self.open, Some((_, None))) {
                    self.close_block(out);
                    let index = self.next_block;
                    self.next_block += 1;
                    self.open = Some((index, None));
                    Self::send(
                        out,
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index,
                               "content_block": {"type": "text", "text": ""}}),
                    );
                }
                let index = self.open.map_or(0, |(i, _)| i);
                Self::send(
                    out,
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "text_delta", "text": text}}),
                );
            }
            Delta::ToolStart { index, id, name } => {
                self.start("", "", out);
                self.close_block(out);
                let block = self.next_block;
                self.next_block += 1;
                self.open = Some((block, Some(*index)));
                self.tool_blocks.insert(*index, block);
                Self::send(
                    out,
                    "content_block_start",
                    json!({"type": "content_block_start", "index": block,
                           "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                );
            }
            Delta::ToolArgs { index, json } => {
                let Some(block) = self.tool_blocks.get(index).copied() else {
                    return;
                };
                Self::send(
                    out,
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": block,
                           "delta": {"type": "input_json_delta", "partial_json": json}}),
                );
            }
            Delta::Finish(finish) => self.finish = Some(finish.clone()),
            Delta::Usage(usage) => self.usage.merge(*usage),
            Delta::Error(message) => {
                self.done = true;
                Self::send(out, "error", error_body(message, "api_error"));
            }
            Delta::Done => {
                self.start("", "", out);
                self.close_block(out);
                self.done = true;
                Self::send(
                    out,
                    "message_delta",
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": self.finish.as_ref().map_or("end_turn", finish_name),
                                     "stop_sequence": null},
                           "usage": render_usage(&self.usage)}),
                );
                Self::send(out, "message_stop", json!({"type": "message_stop"}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_the_provider_runs_need_provider_tools() {
        let raw = |v: Value| serde_json::value::to_raw_value(&v).unwrap();
        let client_run = raw(json!([
            {"name": "Read", "input_schema": {"type": "object"}},
            {"type": "custom", "name": "x", "input_schema": {"type": "object"}},
            {"type": "bash_20250124", "name": "bash"},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        ]));
        assert_eq!(check_tools(Some(&client_run), None, &[]), Ok(()));
        let search = raw(json!([{"type": "web_search_20250305", "name": "web_search"}]));
        let refused = check_tools(Some(&search), None, &[]).unwrap_err();
        assert!(
            refused.contains("tools[0] of type `web_search_20250305`")
                && refused.contains("list `web_search` in ai.provider_tools"),
            "{refused}"
        );
        assert_eq!(
            check_tools(Some(&search), None, &["web_search".into()]),
            Ok(())
        );
        let servers = raw(json!([{"type": "url", "url": "https://mcp.example/sse", "name": "x"}]));
        let refused = check_tools(None, Some(&servers), &["web_search".into()]).unwrap_err();
        assert!(
            refused.contains("list `mcp` in ai.provider_tools"),
            "{refused}"
        );
        assert_eq!(check_tools(None, Some(&servers), &["mcp".into()]), Ok(()));
        assert_eq!(check_tools(None, Some(&raw(json!([]))), &[]), Ok(()));
        assert_eq!(versionless("code_execution_20250825"), "code_execution");
        assert_eq!(
            versionless("tool_search_tool_regex"),
            "tool_search_tool_regex"
        );
    }

    #[test]
    fn blocks_read_and_render_with_tool_results_first() {
        let request = parse_request(
            json!({
                "model": "m", "max_tokens": 50,
                "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "…", "signature": "s"},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "rain"}]}]},
                ],
                "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "u1"},
            })
            .as_object()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(request.system, ["Be brief."]);
        assert_eq!(request.messages[1].parts.len(), 1, "thinking is dropped");
        assert_eq!(request.tool_choice, Some(ToolChoice::Required));
        assert_eq!(request.parallel_tool_calls, Some(false));
        assert_eq!(request.user.as_deref(), Some("u1"));
        let rendered = render_request(&request, "claude");
        assert_eq!(
            rendered["messages"][1]["content"][0]["input"]["city"],
            "Oslo"
        );
        assert_eq!(rendered["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(
            rendered["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(rendered["max_tokens"], 50);
    }

    #[test]
    fn named_events_decode_and_encode_back() {
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":12,"output_tokens":1,"cache_read_input_tokens":3}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let mut decoder = Decoder::default();
        let mut deltas = Vec::new();
        for (event, data) in events {
            decoder
                .decode(
                    &SseEvent {
                        event: Some(event.into()),
                        data: data.into(),
                    },
                    &mut deltas,
                )
                .unwrap();
        }
        assert!(deltas.contains(&Delta::ToolArgs {
            index: 0,
            json: "{\"a\":1}".into()
        }));
        let mut total = Usage::default();
        for delta in &deltas {
            if let Delta::Usage(u) = delta {
                total.merge(*u);
            }
        }
        assert_eq!(
            total,
            Usage {
                input: Some(12),
                output: Some(9),
                cache_read: Some(3),
                cache_write: None
            }
        );
        let mut encoder = Encoder::default();
        let mut out = BytesMut::new();
        for delta in &deltas {
            encoder.encode(delta, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        for needle in [
            "event: message_start\n",
            r#""delta":{"text":"Hi","type":"text_delta"}"#,
            r#""content_block":{"id":"toolu_1","input":{},"name":"f","type":"tool_use"}"#,
            r#""stop_reason":"tool_use""#,
            r#""output_tokens":9"#,
            "event: message_stop\n",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }
}
