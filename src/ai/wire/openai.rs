//! The OpenAI chat completions format (`POST /v1/chat/completions`): requests, answers,
//! `chat.completion.chunk` streams ending in `data: [DONE]`, and `usage` (with
//! `prompt_tokens_details.cached_tokens`). Spoken by clients, and by `openai` and
//! `openai_compatible` providers.

use std::borrow::Cow;

use bytes::BytesMut;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{
    ChatRequest, ChatResponse, Delta, Finish, Image, Message, Part, Role, StreamDecoder,
    StreamEncoder, Tool, ToolCall, ToolChoice, ToolResult, WireError, content_text, count,
    error_message, invalid, refuse_fields, str_or_empty, string, unix_now,
};
use crate::ai::pricing::Usage;
use crate::ai::sse::{SseEvent, write_event};

/// Request fields dropped when translating to another format: hints that do not change
/// what the answer means, or OpenAI-side bookkeeping.
pub const DROPPED_FIELDS: &[&str] = &[
    "seed",
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "stream_options",
];

/// How a provider of this format wants a few fields spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dialect {
    /// `max_completion_tokens` (OpenAI's current name; its reasoning models refuse the
    /// old one) or `max_tokens` (what OpenAI-compatible servers read).
    pub max_tokens_field: &'static str,
}

// -----------------------------------------------------------------------------------
// Requests
// -----------------------------------------------------------------------------------

/// Reads a client's request.
pub fn parse_request(body: &Map<String, Value>) -> Result<ChatRequest, WireError> {
    let mut request = ChatRequest::default();
    let mut untranslatable = Vec::new();
    for (key, value) in body {
        match key.as_str() {
            "model" | "messages" | "tools" | "tool_choice" => {}
            "parallel_tool_calls" => request.parallel_tool_calls = value.as_bool(),
            "max_tokens" | "max_completion_tokens" => {
                if !value.is_null() {
                    request.max_tokens = Some(value.as_u64().ok_or_else(|| {
                        invalid(format!("`{key}` must be a non-negative integer"))
                    })?);
                }
            }
            "temperature" => request.temperature = Some(value.clone()).filter(|v| !v.is_null()),
            "top_p" => request.top_p = Some(value.clone()).filter(|v| !v.is_null()),
            "stop" => {
                request.stop = match value {
                    Value::Null => Vec::new(),
                    Value::String(s) => vec![s.clone()],
                    Value::Array(items) => items
                        .iter()
                        .map(|s| s.as_str().map(str::to_owned))
                        .collect::<Option<_>>()
                        .ok_or_else(|| invalid("`stop` must be a string or a list of strings"))?,
                    _ => return Err(invalid("`stop` must be a string or a list of strings")),
                }
            }
            "stream" => request.stream = value.as_bool().unwrap_or(false),
            "user" => request.user = value.as_str().map(str::to_owned),
            "n" if value.as_u64().is_none_or(|n| n == 1) => {}
            "logprobs" if value.as_bool() != Some(true) => {}
            "response_format" if value.get("type").and_then(Value::as_str) == Some("text") => {}
            other if DROPPED_FIELDS.contains(&other) => {}
            other => untranslatable.push(format!("`{other}`")),
        }
    }
    refuse_fields(untranslatable)?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be a list"))?;
    for (i, message) in messages.iter().enumerate() {
        read_message(&mut request, message, i)?;
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        for tool in tools
            .as_array()
            .ok_or_else(|| invalid("`tools` must be a list"))?
        {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(WireError::Untranslatable {
                    what: "a tool whose `type` is not `function`".into(),
                    target: "",
                });
            }
            let function = tool
                .get("function")
                .ok_or_else(|| invalid("a tool needs `function`"))?;
            request
                .tools
                .push(Tool::read(function, "parameters", "tools[].function")?);
        }
    }
    request.tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(tool_choice_named(name)?),
        Some(choice) => Some(ToolChoice::Tool(
            choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("`tool_choice.function.name` must be a string"))?
                .to_owned(),
        )),
    };
    Ok(request)
}

/// Refuses a relayed chat request asking the provider to search the web itself
/// (`web_search_options`), unless `allowed` (`ai.provider_tools`) lists `web_search`.
/// (Its `tools` are functions and custom tools, which the client runs.)
pub fn check_tools(
    web_search_options: Option<&serde_json::value::RawValue>,
    allowed: &[String],
) -> Result<(), String> {
    let searches = web_search_options.is_some_and(|options| options.get().trim() != "null");
    if searches && !allowed.iter().any(|kind| kind == "web_search") {
        return Err(
            "`web_search_options` would have the provider search the web, outside \
                    Warden's governance; list `web_search` in ai.provider_tools to allow it"
                .into(),
        );
    }
    Ok(())
}

/// A `tool_choice` given by name, as OpenAI's formats name them.
pub(crate) fn tool_choice_named(name: &str) -> Result<ToolChoice, WireError> {
    match name {
        "auto" => Ok(ToolChoice::Auto),
        "none" => Ok(ToolChoice::None),
        "required" => Ok(ToolChoice::Required),
        other => Err(invalid(format!("unknown `tool_choice` `{other}`"))),
    }
}

fn text_of(content: &Value, context: &str) -> Result<String, WireError> {
    content_text(content, context, &[("text", "text")])
}

fn read_message(request: &mut ChatRequest, message: &Value, i: usize) -> Result<(), WireError> {
    let context = format!("messages[{i}]");
    let role = string(message, "role", &context)?;
    let content = message.get("content").unwrap_or(&Value::Null);
    match role {
        "system" | "developer" => request.system.push(text_of(content, &context)?),
        "user" => {
            let mut parts = Vec::new();
            match content {
                Value::String(s) => parts.push(Part::Text(s.clone())),
                Value::Array(items) => {
                    for item in items {
                        match item.get("type").and_then(Value::as_str) {
                            Some("text") => {
                                parts.push(Part::Text(string(item, "text", &context)?.to_owned()))
                            }
                            Some("image_url") => {
                                let url = item
                                    .pointer("/image_url/url")
                                    .and_then(Value::as_str)
                                    .ok_or_else(|| {
                                        invalid(format!(
                                            "{context}: `image_url.url` must be a string"
                                        ))
                                    })?;
                                parts.push(Part::Image(Image::from_url(url)));
                            }
                            other => {
                                return Err(WireError::Untranslatable {
                                    what: format!(
                                        "{context} content of type `{}`",
                                        other.unwrap_or("?")
                                    ),
                                    target: "",
                                });
                            }
                        }
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "{context}: `content` must be a string or a list"
                    )));
                }
            }
            request.messages.push(Message {
                role: Role::User,
                parts,
            });
        }
        "assistant" => {
            let mut parts = Vec::new();
            let text = text_of(content, &context)?;
            if !text.is_empty() {
                parts.push(Part::Text(text));
            }
            for call in message
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                parts.push(Part::ToolCall(ToolCall {
                    id: string(call, "id", &context)?.to_owned(),
                    name: call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            invalid(format!("{context}: a tool call needs `function.name`"))
                        })?
                        .to_owned(),
                    arguments: call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_owned(),
                }));
            }
            if message.get("function_call").is_some_and(|f| !f.is_null()) {
                return Err(WireError::Untranslatable {
                    what: format!("{context} `function_call` (use `tool_calls`)"),
                    target: "",
                });
            }
            request.messages.push(Message {
                role: Role::Assistant,
                parts,
            });
        }
        "tool" => {
            request.messages.push(Message {
                role: Role::User,
                parts: vec![Part::ToolResult(ToolResult {
                    id: string(message, "tool_call_id", &context)?.to_owned(),
                    content: text_of(content, &context)?,
                    is_error: false,
                })],
            });
        }
        other => {
            return Err(WireError::Untranslatable {
                what: format!("{context} with role `{other}`"),
                target: "",
            });
        }
    }
    Ok(())
}

/// Renders a request for an OpenAI-format provider.
pub fn render_request(request: &ChatRequest, model: &str, dialect: Dialect) -> Value {
    let mut messages = Vec::new();
    if !request.system.is_empty() {
        messages.push(json!({"role": "system", "content": request.system.join("\n\n")}));
    }
    for message in &request.messages {
        match message.role {
            Role::User => {
                let mut content = Vec::new();
                for part in &message.parts {
                    match part {
                        Part::ToolResult(result) => messages.push(json!({
                            "role": "tool",
                            "tool_call_id": result.id,
                            "content": result.content,
                        })),
                        Part::Text(text) => content.push(json!({"type": "text", "text": text})),
                        Part::Image(image) => content.push(
                            json!({"type": "image_url", "image_url": {"url": image.to_url()}}),
                        ),
                        Part::ToolCall(_) => {}
                    }
                }
                if content.is_empty() {
                    continue;
                }
                let content = match content.as_slice() {
                    [only] if only["type"] == "text" => only["text"].clone(),
                    _ => Value::Array(content),
                };
                messages.push(json!({"role": "user", "content": content}));
            }
            Role::Assistant => {
                let (text, calls) = text_and_tool_calls(&message.parts);
                let mut out = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
                if !calls.is_empty() {
                    out["tool_calls"] = Value::Array(calls);
                }
                messages.push(out);
            }
        }
    }
    let mut body = json!({"model": model, "messages": messages});
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                let mut function = json!({"name": tool.name, "parameters": tool.parameters});
                if let Some(description) = &tool.description {
                    function["description"] = Value::from(description.clone());
                }
                json!({"type": "function", "function": function})
            })
            .collect();
    }
    if let Some(choice) = &request.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
    }
    if let Some(parallel) = request.parallel_tool_calls
        && !request.tools.is_empty()
    {
        body["parallel_tool_calls"] = Value::Bool(parallel);
    }
    if let Some(max) = request.max_tokens {
        body[dialect.max_tokens_field] = Value::from(max);
    }
    if let Some(t) = &request.temperature {
        body["temperature"] = t.clone();
    }
    if let Some(p) = &request.top_p {
        body["top_p"] = p.clone();
    }
    if !request.stop.is_empty() {
        body["stop"] = json!(request.stop);
    }
    if let Some(user) = &request.user {
        body["user"] = Value::from(user.clone());
    }
    if request.stream {
        body["stream"] = Value::Bool(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

// -----------------------------------------------------------------------------------
// Answers
// -----------------------------------------------------------------------------------

/// OpenAI's `usage`, in Warden's token classes (cached input apart from the rest).
pub fn usage(value: &Value) -> Usage {
    Usage::cache_included(
        count(value, "prompt_tokens"),
        value
            .get("prompt_tokens_details")
            .and_then(|d| count(d, "cached_tokens")),
        count(value, "completion_tokens"),
    )
}

fn render_usage(usage: &Usage) -> Value {
    let prompt = usage.prompt_total();
    let completion = usage.output.unwrap_or(0);
    let mut out = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if let Some(cached) = usage.cache_read {
        out["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    out
}

fn finish_name(finish: &Finish) -> &str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
        Finish::ContentFilter => "content_filter",
        Finish::Other(other) => other,
    }
}

fn parse_finish(name: &str) -> Finish {
    match name {
        "stop" => Finish::Stop,
        "length" => Finish::Length,
        "tool_calls" | "function_call" => Finish::ToolCalls,
        "content_filter" => Finish::ContentFilter,
        other => Finish::Other(other.to_owned()),
    }
}

/// Reads a provider's complete answer.
pub fn parse_response(body: &Value) -> Result<ChatResponse, WireError> {
    let choice = body
        .pointer("/choices/0")
        .ok_or_else(|| invalid("the provider's answer has no `choices`"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut parts = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str)
        && !text.is_empty()
    {
        parts.push(Part::Text(text.to_owned()));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(Part::ToolCall(ToolCall {
            id: str_or_empty(call, "id"),
            name: call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            arguments: call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}")
                .to_owned(),
        }));
    }
    Ok(ChatResponse {
        id: str_or_empty(body, "id"),
        model: str_or_empty(body, "model"),
        parts,
        finish: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(parse_finish),
        usage: body.get("usage").map(usage).unwrap_or_default(),
    })
}

/// An assistant turn's text (its text parts joined) and its tool calls in OpenAI's shape.
fn text_and_tool_calls(parts: &[Part]) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in parts {
        match part {
            Part::Text(t) => text.push_str(t),
            Part::ToolCall(call) => calls.push(json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })),
            _ => {}
        }
    }
    (text, calls)
}

/// Renders a complete answer for an OpenAI-format client.
pub fn render_response(response: &ChatResponse) -> Value {
    let (text, calls) = text_and_tool_calls(&response.parts);
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": response.id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": response.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": response.finish.as_ref().map_or("stop", finish_name),
        }],
        "usage": render_usage(&response.usage),
    })
}

/// An error body in OpenAI's shape.
pub fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
}

// -----------------------------------------------------------------------------------
// Streams
// -----------------------------------------------------------------------------------

/// Reads `chat.completion.chunk` events.
#[derive(Default)]
pub struct Decoder {
    started: bool,
}

impl StreamDecoder for Decoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<Delta>) -> Result<(), String> {
        let data = event.data.trim();
        if data == "[DONE]" {
            out.push(Delta::Done);
            return Ok(());
        }
        let not_json =
            |e: serde_json::Error| format!("the provider sent an event that is not JSON: {e}");
        // Every event of every stream passes here: the chunk is read into borrowed raw
        // slices (no tree, no allocation) and only the parts a delta needs are decoded.
        if !data.starts_with('{') {
            // Valid JSON that is not an object carries nothing but the stream's start.
            serde_json::from_str::<serde::de::IgnoredAny>(data).map_err(not_json)?;
            self.start(None, None, out);
            return Ok(());
        }
        let chunk: RawChunk<'_> = serde_json::from_str(data).map_err(not_json)?;
        if let Some(error) = chunk.error {
            let error: Value = serde_json::from_str(error.get()).map_err(not_json)?;
            out.push(Delta::Error(error_message(&error)));
            return Ok(());
        }
        self.start(chunk.id, chunk.model, out);
        if let Some(choice) = chunk.choices.and_then(first_choice) {
            let delta = choice.delta.and_then(object::<RawDelta<'_>>);
            if let Some(text) = delta.as_ref().and_then(|d| raw_str(d.content))
                && !text.is_empty()
            {
                out.push(Delta::Text(text.into_owned()));
            }
            // Tool calls are rare: read the old way, from a tree.
            let calls: Option<Value> = delta
                .as_ref()
                .and_then(|d| d.tool_calls)
                .and_then(|raw| serde_json::from_str(raw.get()).ok());
            for call in calls
                .as_ref()
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let name = call.pointer("/function/name").and_then(Value::as_str);
                let id = call.get("id").and_then(Value::as_str);
                if id.is_some() || name.is_some() {
                    out.push(Delta::ToolStart {
                        index,
                        id: id.unwrap_or("").to_owned(),
                        name: name.unwrap_or("").to_owned(),
                    });
                }
                if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str)
                    && !arguments.is_empty()
                {
                    out.push(Delta::ToolArgs {
                        index,
                        json: arguments.to_owned(),
                    });
                }
            }
            if let Some(reason) = raw_str(choice.finish_reason) {
                out.push(Delta::Finish(parse_finish(&reason)));
            }
        }
        if let Some(reported) = chunk.usage.filter(|u| u.get().starts_with('{')) {
            let reported: Value = serde_json::from_str(reported.get()).map_err(not_json)?;
            out.push(Delta::Usage(usage(&reported)));
        }
        Ok(())
    }
}

impl Decoder {
    /// The `Start` delta, from the first chunk (`id` and `model` empty unless strings).
    fn start(&mut self, id: Option<&RawValue>, model: Option<&RawValue>, out: &mut Vec<Delta>) {
        if !self.started {
            self.started = true;
            out.push(Delta::Start {
                id: raw_str(id).unwrap_or_default().into_owned(),
                model: raw_str(model).unwrap_or_default().into_owned(),
            });
        }
    }
}

/// The members of a `chat.completion.chunk` the decoder reads, as raw JSON text. A
/// member that is `null` reads as absent, except `error`, whose presence alone counts.
#[derive(serde::Deserialize)]
struct RawChunk<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    choices: Option<&'a RawValue>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct RawChoice<'a> {
    #[serde(borrow)]
    delta: Option<&'a RawValue>,
    #[serde(borrow)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct RawDelta<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
}

/// A member that is there, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// `raw` read as `T` when it is a JSON object (anything else reads as absent, as a
/// member looked up in it would be).
fn object<'a, T: serde::Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    if raw.get().starts_with('{') {
        serde_json::from_str(raw.get()).ok()
    } else {
        None
    }
}

/// The first element of `choices`, when it is an array whose first element is an object.
fn first_choice(raw: &RawValue) -> Option<RawChoice<'_>> {
    if !raw.get().starts_with('[') {
        return None;
    }
    let elements: FirstElement<'_> = serde_json::from_str(raw.get()).ok()?;
    elements.0.and_then(object)
}

/// The first element of a JSON array as raw text; the rest is skipped unread.
struct FirstElement<'a>(Option<&'a RawValue>);

impl<'de> serde::Deserialize<'de> for FirstElement<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct First;
        impl<'de> serde::de::Visitor<'de> for First {
            type Value = FirstElement<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<&'de RawValue>()?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstElement(first))
            }
        }
        deserializer.deserialize_seq(First)
    }
}

/// The text of a JSON string member (borrowed unless it holds escapes); `None` when
/// absent or not a string.
fn raw_str(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let text = raw?.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(borrowed) => Some(Cow::Borrowed(borrowed)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// Writes `chat.completion.chunk` events.
pub struct Encoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Usage,
    started: bool,
    done: bool,
}

impl Encoder {
    pub fn new(include_usage: bool) -> Encoder {
        Encoder {
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            include_usage,
            usage: Usage::default(),
            started: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut BytesMut) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        write_event(out, None, &chunk.to_string());
    }

    fn start(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.started = true;
            if self.id.is_empty() {
                self.id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
            }
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
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
                self.start(out);
            }
            Delta::Text(text) => {
                self.start(out);
                self.chunk(json!({"content": text}), None, out);
            }
            Delta::ToolStart { index, id, name } => {
                self.start(out);
                self.chunk(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]}),
                    None,
                    out,
                );
            }
            Delta::ToolArgs { index, json } => {
                self.start(out);
                self.chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": json}}]}),
                    None,
                    out,
                );
            }
            Delta::Finish(finish) => {
                self.start(out);
                self.chunk(json!({}), Some(finish_name(finish)), out);
            }
            Delta::Usage(usage) => self.usage.merge(*usage),
            Delta::Error(message) => {
                self.done = true;
                write_event(
                    out,
                    None,
                    &error_body(message, "api_error", "upstream_error").to_string(),
                );
            }
            Delta::Done => {
                self.done = true;
                self.start(out);
                if self.include_usage {
                    let chunk = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": render_usage(&self.usage),
                    });
                    write_event(out, None, &chunk.to_string());
                }
                write_event(out, None, "[DONE]");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ai::wire::map;

    #[test]
    fn a_conversation_with_tools_reads_into_neutral_form() {
        let request = parse_request(&map(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "max_completion_tokens": 100,
            "stop": "END",
            "seed": 7,
            "stream": true,
        })))
        .unwrap();
        assert_eq!(request.system, ["Be brief."]);
        assert_eq!(request.messages.len(), 3);
        assert_eq!(
            request.messages[0].parts[1],
            Part::Image(Image::Base64 {
                media_type: "image/png".into(),
                data: "AAAA".into()
            })
        );
        assert!(matches!(&request.messages[1].parts[0], Part::ToolCall(c) if c.name == "weather"));
        assert!(
            matches!(&request.messages[2].parts[0], Part::ToolResult(r) if r.content == "rain")
        );
        assert_eq!(
            request.tool_choice,
            Some(ToolChoice::Tool("weather".into()))
        );
        assert_eq!(request.max_tokens, Some(100));
        assert_eq!(request.stop, ["END"]);
        assert!(request.stream);
    }

    #[test]
    fn fields_without_an_equivalent_are_named() {
        let err = parse_request(&map(json!({
            "model": "m", "messages": [], "n": 2, "logit_bias": {}
        })))
        .unwrap_err()
        .toward(super::super::Wire::Anthropic);
        assert_eq!(
            err.to_string(),
            "request field `logit_bias`, `n` cannot be translated for a provider speaking the anthropic format"
        );
    }

    #[test]
    fn stream_chunks_of_odd_shapes_decode_as_a_tree_would_read_them() {
        let decode = |data: &str| {
            let mut deltas = Vec::new();
            let event = SseEvent {
                event: None,
                data: data.into(),
            };
            Decoder::default()
                .decode(&event, &mut deltas)
                .map(|()| deltas)
        };
        let start = |id: &str, model: &str| Delta::Start {
            id: id.into(),
            model: model.into(),
        };
        // Escapes in the text; `id` not a string; `null` members read as absent.
        assert_eq!(
            decode(r#"{"id":7,"model":"g\"pt","choices":[{"delta":{"content":"a\nb\u00e9"},"finish_reason":null}],"usage":null}"#).unwrap(),
            [start("", "g\"pt"), Delta::Text("a\nb\u{e9}".into())]
        );
        // Only the first choice counts; a choice or delta that is not an object is empty.
        assert_eq!(
            decode(r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"},{"delta":{"content":"y"}}]}"#).unwrap(),
            [start("", ""), Delta::Text("x".into()), Delta::Finish(Finish::Length)]
        );
        assert_eq!(
            decode(r#"{"choices":[5,{"delta":{"content":"y"}}]}"#).unwrap(),
            [start("", "")]
        );
        assert_eq!(
            decode(r#"{"choices":[{"delta":"text","finish_reason":3}],"usage":7}"#).unwrap(),
            [start("", "")]
        );
        assert_eq!(decode("[1, 2]").unwrap(), [start("", "")]);
        // An `error` member, even `null`, is the provider's error.
        assert_eq!(
            decode(r#"{"error":{"message":"overloaded"}}"#).unwrap(),
            [Delta::Error("overloaded".into())]
        );
        assert_eq!(
            decode(r#"{"error":null}"#).unwrap(),
            [Delta::Error("null".into())]
        );
        let error = decode(r#"{"choices":[{"delta":{"content":"x"}}"#).unwrap_err();
        assert!(error.contains("not JSON"), "{error}");
    }

    #[test]
    fn stream_chunks_decode_and_encode_back() {
        let mut decoder = Decoder::default();
        let mut deltas = Vec::new();
        for data in [
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4}}}"#,
            "[DONE]",
        ] {
            decoder
                .decode(
                    &SseEvent {
                        event: None,
                        data: data.into(),
                    },
                    &mut deltas,
                )
                .unwrap();
        }
        assert_eq!(
            deltas,
            [
                Delta::Start {
                    id: "c1".into(),
                    model: "gpt".into()
                },
                Delta::Text("Hi".into()),
                Delta::ToolStart {
                    index: 0,
                    id: "call_1".into(),
                    name: "f".into()
                },
                Delta::ToolArgs {
                    index: 0,
                    json: "{}".into()
                },
                Delta::Finish(Finish::ToolCalls),
                Delta::Usage(Usage {
                    input: Some(6),
                    output: Some(5),
                    cache_read: Some(4),
                    cache_write: None
                }),
                Delta::Done,
            ]
        );
        let mut encoder = Encoder::new(true);
        let mut out = BytesMut::new();
        for delta in &deltas {
            encoder.encode(delta, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains(r#""delta":{"content":"Hi"}"#), "{text}");
        assert!(text.contains(r#""finish_reason":"tool_calls""#), "{text}");
        assert!(text.contains(r#""prompt_tokens":10"#), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
}
