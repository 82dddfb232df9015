//! OpenAI's Responses API (`POST /v1/responses`): relayed to the providers that serve it,
//! translated for the others.
//!
//! Clients such as Codex and OpenAI's Agents SDK speak it. `openai` and
//! `openai_compatible` providers serve it at `<base_url>/responses`: Warden forwards the
//! request as sent (only `model` replaced) and the answer byte for byte, event for event,
//! reading only what accounting needs ([`Decoder`], [`usage`], [`failure`]). For an
//! `anthropic` or `gemini` provider the request is read into a [`ChatRequest`]
//! ([`parse_request`]) and the answer written back in this format ([`render_response`],
//! [`Encoder`]) — like any other translation. The conversation state this API can keep
//! at the provider (`previous_response_id`, `conversation`) cannot cross over.
//!
//! A stream has no `[DONE]` marker: it ends with one of `response.completed`,
//! `response.incomplete` or `response.failed`, each carrying the whole response with its
//! `usage`. An `error` event reports a failure outside a response.

use std::borrow::Cow;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{
    ChatRequest, ChatResponse, Delta, Finish, Image, Message, Part, Role, StreamDecoder,
    StreamEncoder, Tool, ToolCall, ToolChoice, ToolResult, WireError, check_provider_tools,
    content_text, count, error_message, invalid, openai, refuse_fields, str_or_empty, string,
    unix_now,
};
use crate::ai::pricing::Usage;
use crate::ai::sse::{SseEvent, write_event};

/// Request fields dropped when translating to another format: hints that do not change
/// what the answer means (as `thinking` is dropped from Anthropic requests), and
/// OpenAI-side bookkeeping with nothing to keep it on the other side.
pub const DROPPED_FIELDS: &[&str] = &[
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "reasoning",
    "include",
    "truncation",
];

/// A Responses `usage` object: `input_tokens` include the cached ones
/// (`input_tokens_details.cached_tokens`), which Warden counts apart, as for chat
/// completions; `output_tokens` include reasoning tokens (billed as output).
pub fn usage(value: &Value) -> Usage {
    Usage::cache_included(
        count(value, "input_tokens"),
        value
            .get("input_tokens_details")
            .and_then(|d| count(d, "cached_tokens")),
        count(value, "output_tokens"),
    )
}

/// Tool types whose calls the client carries out, as with a `function`: allowed in every
/// relayed request. The others run at the provider (`web_search`, `file_search`,
/// `code_interpreter`, `image_generation`, `mcp` — a remote MCP server the provider calls,
/// outside Warden's governance of MCP) and are refused unless `ai.provider_tools` allows
/// them.
pub const CLIENT_TOOLS: &[&str] = &[
    "function",
    "custom",
    "local_shell",
    "shell",
    "apply_patch",
    "computer_use_preview",
];

/// Refuses a relayed request naming a tool the provider would run itself, unless
/// `allowed` lists its type.
pub fn check_tools(tools: Option<&RawValue>, allowed: &[String]) -> Result<(), String> {
    check_provider_tools(tools, allowed, |i, tool| {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("?");
        if CLIENT_TOOLS.contains(&kind) {
            return Vec::new();
        }
        vec![(format!("tools[{i}] of type `{kind}`"), kind.to_owned())]
    })
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

/// The members of a response object the decoder reads. The rest — on the final event,
/// `output` holds the whole answer again — is skipped unread.
#[derive(Default, Deserialize)]
struct ResponseHead {
    id: Option<Value>,
    model: Option<Value>,
    usage: Option<Value>,
    incomplete_details: Option<Value>,
    error: Option<Value>,
}

fn text_of(value: Option<&Value>) -> String {
    value.and_then(Value::as_str).unwrap_or("").to_owned()
}

impl Decoder {
    fn start(&mut self, response: &ResponseHead, out: &mut Vec<Delta>) {
        let model = text_of(response.model.as_ref());
        if !self.started || !model.is_empty() {
            self.started = true;
            out.push(Delta::Start {
                id: text_of(response.id.as_ref()),
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
        let response = || -> Result<ResponseHead, String> {
            raw.response
                .map_or(Ok(None), |r| {
                    serde_json::from_str::<Option<ResponseHead>>(r.get())
                })
                .map(Option::unwrap_or_default)
                .map_err(not_json)
        };
        let index = raw
            .output_index
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(0);
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
                if let Some(reported) = response.usage.as_ref().filter(|u| u.is_object()) {
                    out.push(Delta::Usage(usage(reported)));
                }
                match terminal {
                    "response.completed" => out.push(Delta::Finish(Finish::Stop)),
                    "response.incomplete" => {
                        let reason = response
                            .incomplete_details
                            .as_ref()
                            .and_then(|d| d.get("reason"))
                            .and_then(Value::as_str)
                            .unwrap_or("incomplete");
                        out.push(Delta::Finish(match reason {
                            "max_output_tokens" => Finish::Length,
                            "content_filter" => Finish::ContentFilter,
                            other => Finish::Other(other.to_owned()),
                        }));
                    }
                    _ => {
                        out.push(Delta::Error(failure_message(response.error.as_ref())));
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

// -----------------------------------------------------------------------------------
// Token counts out
// -----------------------------------------------------------------------------------

/// A request in the Responses format for counting its input tokens
/// (`responses/input_tokens`): the instructions, the input items, the function tools and
/// the tool choice — what the count depends on.
pub fn render_input(request: &ChatRequest, model: &str) -> Value {
    let mut input = Vec::new();
    for message in &request.messages {
        let (role, text_type) = match message.role {
            Role::User => ("user", "input_text"),
            Role::Assistant => ("assistant", "output_text"),
        };
        // Text and images gather into a message item; calls and results are items of
        // their own, in the order they came.
        let mut content = Vec::new();
        let flush = |input: &mut Vec<Value>, content: &mut Vec<Value>| {
            if !content.is_empty() {
                let content = std::mem::take(content);
                input.push(json!({"type": "message", "role": role, "content": content}));
            }
        };
        for part in &message.parts {
            match part {
                Part::Text(text) => content.push(json!({"type": text_type, "text": text})),
                Part::Image(image) => {
                    content.push(json!({"type": "input_image", "image_url": image.to_url()}))
                }
                Part::ToolCall(call) => {
                    flush(&mut input, &mut content);
                    input.push(json!({"type": "function_call", "call_id": call.id,
                                      "name": call.name, "arguments": call.arguments}));
                }
                Part::ToolResult(result) => {
                    flush(&mut input, &mut content);
                    input.push(json!({"type": "function_call_output", "call_id": result.id,
                                      "output": result.content}));
                }
            }
        }
        flush(&mut input, &mut content);
    }
    let mut body = json!({"model": model, "input": input});
    if !request.system.is_empty() {
        body["instructions"] = Value::from(request.system.join("\n\n"));
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                let mut out = json!({"type": "function", "name": tool.name,
                                     "parameters": tool.parameters});
                if let Some(description) = &tool.description {
                    out["description"] = Value::from(description.as_str());
                }
                out
            })
            .collect();
    }
    if let Some(choice) = &request.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "name": name}),
        };
    }
    if let Some(parallel) = request.parallel_tool_calls {
        body["parallel_tool_calls"] = Value::Bool(parallel);
    }
    body
}

// -----------------------------------------------------------------------------------
// Translation: requests in
// -----------------------------------------------------------------------------------

/// Reads a client's Responses request, for a provider of another format.
pub fn parse_request(body: &Map<String, Value>) -> Result<ChatRequest, WireError> {
    let mut request = ChatRequest::default();
    let mut untranslatable = Vec::new();
    for (key, value) in body {
        match key.as_str() {
            "model" | "input" | "instructions" | "tools" | "tool_choice" | "text" => {}
            "parallel_tool_calls" => request.parallel_tool_calls = value.as_bool(),
            "max_output_tokens" => {
                if !value.is_null() {
                    request.max_tokens = Some(value.as_u64().ok_or_else(|| {
                        invalid("`max_output_tokens` must be a non-negative integer")
                    })?);
                }
            }
            "temperature" => request.temperature = Some(value.clone()).filter(|v| !v.is_null()),
            "top_p" => request.top_p = Some(value.clone()).filter(|v| !v.is_null()),
            "stream" => request.stream = value.as_bool().unwrap_or(false),
            "user" => request.user = value.as_str().map(str::to_owned),
            "previous_response_id"
            | "conversation"
            | "prompt"
            | "max_tool_calls"
            | "top_logprobs"
                if value.is_null() => {}
            "background" if value.as_bool() != Some(true) => {}
            other if DROPPED_FIELDS.contains(&other) => {}
            other => untranslatable.push(format!("`{other}`")),
        }
    }
    if let Some(text) = body.get("text").filter(|t| !t.is_null()) {
        if !text.is_object() {
            return Err(invalid("`text` must be an object"));
        }
        // `verbosity` is a hint; an output format other than text is not.
        let format = text.pointer("/format/type").and_then(Value::as_str);
        if format.is_some_and(|f| f != "text") {
            untranslatable.push("`text.format`".to_owned());
        }
    }
    refuse_fields(untranslatable)?;
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => request.system.push(text.clone()),
        Some(_) => return Err(invalid("`instructions` must be a string")),
    }
    match body.get("input") {
        Some(Value::String(text)) => request.messages.push(Message {
            role: Role::User,
            parts: vec![Part::Text(text.clone())],
        }),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                read_item(&mut request, item, &format!("input[{i}]"))?;
            }
        }
        _ => return Err(invalid("`input` must be a string or a list of items")),
    }
    for (i, tool) in body
        .get("tools")
        .filter(|t| !t.is_null())
        .map(|t| {
            t.as_array()
                .ok_or_else(|| invalid("`tools` must be a list"))
        })
        .transpose()?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("?");
        if kind != "function" {
            return Err(WireError::Untranslatable {
                what: format!("tools[{i}] of type `{kind}` (only `function` tools cross over)"),
                target: "",
            });
        }
        request
            .tools
            .push(Tool::read(tool, "parameters", &format!("tools[{i}]"))?);
    }
    request.tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(openai::tool_choice_named(name)?),
        Some(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => Some(
            ToolChoice::Tool(string(choice, "name", "tool_choice")?.to_owned()),
        ),
        Some(_) => {
            return Err(WireError::Untranslatable {
                what: "a `tool_choice` other than `auto`, `none`, `required` or a function".into(),
                target: "",
            });
        }
    };
    Ok(request)
}

/// One `input` item: a message, a function call the model made, a function call's
/// output; earlier reasoning is dropped (another provider cannot continue it).
fn read_item(request: &mut ChatRequest, item: &Value, context: &str) -> Result<(), WireError> {
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        None | Some("message") => read_message(request, item, context),
        Some("function_call") => {
            push_part(
                request,
                Role::Assistant,
                Part::ToolCall(ToolCall {
                    id: string(item, "call_id", context)?.to_owned(),
                    name: string(item, "name", context)?.to_owned(),
                    arguments: item
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_owned(),
                }),
            );
            Ok(())
        }
        Some("function_call_output") => {
            let content = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(parts @ Value::Array(_)) => input_text(parts, context)?,
                _ => {
                    return Err(invalid(format!(
                        "{context}: `output` must be a string or a list of text parts"
                    )));
                }
            };
            push_part(
                request,
                Role::User,
                Part::ToolResult(ToolResult {
                    id: string(item, "call_id", context)?.to_owned(),
                    content,
                    is_error: false,
                }),
            );
            Ok(())
        }
        Some("reasoning") => Ok(()),
        Some(other) => Err(WireError::Untranslatable {
            what: format!("{context} of type `{other}`"),
            target: "",
        }),
    }
}

/// Adds `part` to the last message when it has `role`, else as a new message.
fn push_part(request: &mut ChatRequest, role: Role, part: Part) {
    match request.messages.last_mut() {
        Some(last) if last.role == role => last.parts.push(part),
        _ => request.messages.push(Message {
            role,
            parts: vec![part],
        }),
    }
}

fn read_message(request: &mut ChatRequest, item: &Value, context: &str) -> Result<(), WireError> {
    let role = string(item, "role", context)?;
    let content = item.get("content").unwrap_or(&Value::Null);
    match role {
        "system" | "developer" => request.system.push(input_text(content, context)?),
        "user" => {
            let parts = match content {
                Value::String(text) => vec![Part::Text(text.clone())],
                Value::Array(items) => items
                    .iter()
                    .map(|part| user_part(part, context))
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(invalid(format!(
                        "{context}: `content` must be a string or a list"
                    )));
                }
            };
            for part in parts {
                push_part(request, Role::User, part);
            }
        }
        "assistant" => {
            let text = input_text(content, context)?;
            if !text.is_empty() {
                push_part(request, Role::Assistant, Part::Text(text));
            }
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

fn user_part(part: &Value, context: &str) -> Result<Part, WireError> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text") => Ok(Part::Text(string(part, "text", context)?.to_owned())),
        Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
            Some(url) => Ok(Part::Image(Image::from_url(url))),
            None => Err(WireError::Untranslatable {
                what: format!("{context} an image by `file_id`"),
                target: "",
            }),
        },
        other => Err(WireError::Untranslatable {
            what: format!("{context} content of type `{}`", other.unwrap_or("?")),
            target: "",
        }),
    }
}

/// The text of a string, or of a list of text parts (`input_text`, `output_text`,
/// `refusal`).
fn input_text(content: &Value, context: &str) -> Result<String, WireError> {
    content_text(
        content,
        context,
        &[
            ("input_text", "text"),
            ("output_text", "text"),
            ("refusal", "refusal"),
        ],
    )
}

// -----------------------------------------------------------------------------------
// Translation: answers out
// -----------------------------------------------------------------------------------

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn render_usage(usage: &Usage) -> Value {
    let input = usage.prompt_total();
    let output = usage.output.unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": usage.cache_read.unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input.saturating_add(output),
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "completed" {
        json!([{"type": "output_text", "text": text, "annotations": []}])
    } else {
        json!([])
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, call: &ToolCall, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call.id,
           "name": call.name, "arguments": call.arguments})
}

/// The response object: `completed`, or `incomplete` when a limit cut the answer short.
fn response_object(
    (id, model, created_at): (&str, &str, u64),
    output: Vec<Value>,
    finish: Option<&Finish>,
    usage: Option<&Usage>,
) -> Value {
    let incomplete = match finish {
        Some(Finish::Length) => Some("max_output_tokens"),
        Some(Finish::ContentFilter) => Some("content_filter"),
        _ => None,
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": if incomplete.is_some() { "incomplete" } else { "completed" },
        "model": model,
        "output": output,
        "usage": usage.map(render_usage),
        "error": null,
        "incomplete_details": incomplete.map(|reason| json!({"reason": reason})),
        "instructions": null,
        "metadata": {},
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "temperature": null,
        "top_p": null,
    })
}

/// Renders a complete answer for a Responses client.
pub fn render_response(response: &ChatResponse) -> Value {
    let mut output = Vec::new();
    let mut text = String::new();
    for part in &response.parts {
        match part {
            Part::Text(piece) => text.push_str(piece),
            Part::ToolCall(call) => {
                if !text.is_empty() {
                    output.push(message_item(
                        &new_id("msg"),
                        &std::mem::take(&mut text),
                        "completed",
                    ));
                }
                output.push(call_item(&new_id("fc"), call, "completed"));
            }
            _ => {}
        }
    }
    if !text.is_empty() || output.is_empty() {
        output.push(message_item(&new_id("msg"), &text, "completed"));
    }
    response_object(
        (&new_id("resp"), &response.model, unix_now()),
        output,
        response.finish.as_ref(),
        Some(&response.usage),
    )
}

/// The output item a stream is writing.
enum OpenItem {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        /// The call's index among the answer's tool calls ([`Delta::ToolStart`]).
        index: usize,
        call: ToolCall,
    },
}

/// Writes a Responses event stream from deltas: `response.created` … the items' events …
/// `response.completed` (or `response.incomplete`) with the whole response.
pub struct Encoder {
    id: String,
    model: String,
    created_at: u64,
    sequence: u64,
    started: bool,
    done: bool,
    usage: Usage,
    finish: Option<Finish>,
    /// Items finished so far, for the final response.
    items: Vec<Value>,
    open: Option<OpenItem>,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder {
            id: new_id("resp"),
            model: String::new(),
            created_at: unix_now(),
            sequence: 0,
            started: false,
            done: false,
            usage: Usage::default(),
            finish: None,
            items: Vec::new(),
            open: None,
        }
    }
}

impl Encoder {
    fn event(&mut self, kind: &str, mut body: Value, out: &mut BytesMut) {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        write_event(out, Some(kind), &body.to_string());
    }

    fn header(&self) -> (&str, &str, u64) {
        (&self.id, &self.model, self.created_at)
    }

    /// The response as the first events show it: nothing yet.
    fn in_progress(&self) -> Value {
        let mut response = response_object(self.header(), Vec::new(), None, None);
        response["status"] = json!("in_progress");
        response
    }

    /// The whole response, for the last event.
    fn finished(&self) -> Value {
        let output = self.items.clone();
        response_object(
            self.header(),
            output,
            self.finish.as_ref(),
            Some(&self.usage),
        )
    }

    fn start(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.started = true;
            let response = self.in_progress();
            self.event("response.created", json!({"response": response}), out);
            self.event("response.in_progress", json!({"response": response}), out);
        }
    }

    /// The output index the open item has (or the next item will have).
    fn index(&self) -> usize {
        self.items.len()
    }

    fn open_message(&mut self, out: &mut BytesMut) {
        if matches!(self.open, Some(OpenItem::Message { .. })) {
            return;
        }
        self.close(out);
        let id = new_id("msg");
        let index = self.index();
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": message_item(&id, "", "in_progress")}),
            out,
        );
        self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
            out,
        );
        self.open = Some(OpenItem::Message {
            id,
            text: String::new(),
        });
    }

    /// Finishes the open item, if any.
    fn close(&mut self, out: &mut BytesMut) {
        let index = self.index();
        match self.open.take() {
            None => {}
            Some(OpenItem::Message { id, text }) => {
                self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text,
                           "logprobs": []}),
                    out,
                );
                self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "part": {"type": "output_text", "text": text, "annotations": []}}),
                    out,
                );
                let item = message_item(&id, &text, "completed");
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                    out,
                );
                self.items.push(item);
            }
            Some(OpenItem::Call { id, call, .. }) => {
                let mut call = call;
                if call.arguments.is_empty() {
                    // A call without arguments: `{}`, as OpenAI sends it (clients parse it).
                    call.arguments = "{}".to_owned();
                }
                self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "arguments": call.arguments}),
                    out,
                );
                let item = call_item(&id, &call, "completed");
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                    out,
                );
                self.items.push(item);
            }
        }
    }
}

impl StreamEncoder for Encoder {
    fn encode(&mut self, delta: &Delta, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match delta {
            Delta::Start { model, .. } => {
                if !model.is_empty() {
                    self.model = model.clone();
                }
                self.start(out);
            }
            Delta::Text(text) => {
                self.start(out);
                self.open_message(out);
                if let Some(OpenItem::Message { id, text: so_far }) = &mut self.open {
                    so_far.push_str(text);
                    let body = json!({"item_id": id, "output_index": self.items.len(),
                                      "content_index": 0, "delta": text, "logprobs": []});
                    self.event("response.output_text.delta", body, out);
                }
            }
            Delta::ToolStart { index, id, name } => {
                self.start(out);
                self.close(out);
                let call = ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                };
                let item_id = new_id("fc");
                let body = json!({"output_index": self.index(),
                                  "item": call_item(&item_id, &call, "in_progress")});
                self.event("response.output_item.added", body, out);
                self.open = Some(OpenItem::Call {
                    id: item_id,
                    index: *index,
                    call,
                });
            }
            Delta::ToolArgs { index, json } => {
                let output_index = self.items.len();
                match &mut self.open {
                    Some(OpenItem::Call {
                        id,
                        index: open,
                        call,
                    }) if open == index => {
                        call.arguments.push_str(json);
                        let body =
                            json!({"item_id": id, "output_index": output_index, "delta": json});
                        self.event("response.function_call_arguments.delta", body, out);
                    }
                    // Arguments of a call already finished (providers send calls one
                    // after another; this keeps the final response whole regardless).
                    _ => {
                        let calls = self
                            .items
                            .iter_mut()
                            .filter(|item| item["type"] == "function_call");
                        if let Some(item) = calls.into_iter().nth(*index)
                            && let Some(arguments) = item["arguments"].as_str()
                        {
                            // `{}` stood in for arguments that had not come yet.
                            let so_far = if arguments == "{}" { "" } else { arguments };
                            item["arguments"] = json!(format!("{so_far}{json}"));
                        }
                    }
                }
            }
            Delta::Finish(finish) => self.finish = Some(finish.clone()),
            Delta::Usage(usage) => self.usage.merge(*usage),
            Delta::Error(message) => {
                self.done = true;
                self.event("error", error_event(message, "upstream_error"), out);
            }
            Delta::Done => {
                self.start(out);
                self.close(out);
                self.done = true;
                let response = self.finished();
                let kind = if response["status"] == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                self.event(kind, json!({"response": response}), out);
            }
        }
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

    use crate::ai::wire::map;

    #[test]
    fn a_request_with_items_and_tools_reads_into_neutral_form() {
        let request = parse_request(&map(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Answer in English."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Weather?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Let me look."}]},
                {"type": "function_call", "call_id": "call_1", "name": "weather",
                 "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
            ],
            "tools": [{"type": "function", "name": "weather", "strict": true,
                       "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "weather"},
            "max_output_tokens": 100,
            "reasoning": {"effort": "low"},
            "store": false,
            "include": ["reasoning.encrypted_content"],
            "text": {"verbosity": "low"},
            "stream": true,
        })))
        .unwrap();
        assert_eq!(request.system, ["Be brief.", "Answer in English."]);
        assert_eq!(request.messages.len(), 3, "{:?}", request.messages);
        assert_eq!(request.messages[0].role, Role::User);
        assert_eq!(
            request.messages[0].parts[1],
            Part::Image(Image::Base64 {
                media_type: "image/png".into(),
                data: "AAAA".into()
            })
        );
        assert_eq!(request.messages[1].role, Role::Assistant);
        assert_eq!(
            request.messages[1].parts[0],
            Part::Text("Let me look.".into())
        );
        assert!(
            matches!(&request.messages[1].parts[1], Part::ToolCall(c) if c.id == "call_1" && c.name == "weather")
        );
        assert!(
            matches!(&request.messages[2].parts[0], Part::ToolResult(r) if r.id == "call_1" && r.content == "rain")
        );
        assert_eq!(request.tools[0].name, "weather");
        assert_eq!(
            request.tool_choice,
            Some(ToolChoice::Tool("weather".into()))
        );
        assert_eq!(request.max_tokens, Some(100));
        assert!(request.stream);

        let plain = parse_request(&map(json!({"model": "m", "input": "Hi"}))).unwrap();
        assert_eq!(plain.messages[0].parts, [Part::Text("Hi".into())]);
    }

    #[test]
    fn what_cannot_cross_over_is_named() {
        let refused = |body: Value| {
            parse_request(&map(body))
                .unwrap_err()
                .toward(super::super::Wire::Anthropic)
                .to_string()
        };
        assert_eq!(
            refused(
                json!({"model": "m", "input": "Hi", "previous_response_id": "resp_1",
                           "conversation": "conv_1"})
            ),
            "request field `conversation`, `previous_response_id` cannot be translated for a \
             provider speaking the anthropic format"
        );
        assert!(
            refused(json!({"model": "m", "input": "Hi",
                           "text": {"format": {"type": "json_schema"}}}))
            .contains("`text.format`")
        );
        assert!(
            refused(json!({"model": "m", "input": "Hi", "tools": [{"type": "web_search"}]}))
                .contains("tools[0] of type `web_search`")
        );
        assert!(
            refused(json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}))
                .contains("input[0] of type `item_reference`")
        );
        assert!(
            refused(json!({"model": "m", "input": [{"role": "user", "content": [
                {"type": "input_file", "file_id": "f"}]}]}))
            .contains("input[0] content of type `input_file`")
        );
        let malformed = parse_request(&map(json!({"model": "m"}))).unwrap_err();
        assert_eq!(
            malformed.to_string(),
            "`input` must be a string or a list of items"
        );
        // Null values of the stateful fields are what some SDKs send: accepted.
        assert!(
            parse_request(&map(json!({"model": "m", "input": "Hi",
                                      "previous_response_id": null, "background": false})))
            .is_ok()
        );
    }

    #[test]
    fn a_complete_answer_renders_as_a_response() {
        let response = render_response(&ChatResponse {
            id: "msg_1".into(),
            model: "claude-test".into(),
            parts: vec![
                Part::Text("Looking".into()),
                Part::ToolCall(ToolCall {
                    id: "toolu_1".into(),
                    name: "weather".into(),
                    arguments: "{}".into(),
                }),
            ],
            finish: Some(Finish::ToolCalls),
            usage: Usage {
                input: Some(10),
                output: Some(5),
                cache_read: Some(4),
                cache_write: None,
            },
        });
        assert_eq!(response["object"], "response");
        assert_eq!(response["status"], "completed");
        assert_eq!(response["model"], "claude-test");
        assert_eq!(response["output"][0]["type"], "message");
        assert_eq!(response["output"][0]["content"][0]["text"], "Looking");
        assert_eq!(response["output"][1]["type"], "function_call");
        assert_eq!(response["output"][1]["call_id"], "toolu_1");
        assert_eq!(response["usage"]["input_tokens"], 14, "cached included");
        assert_eq!(
            response["usage"]["input_tokens_details"]["cached_tokens"],
            4
        );
        assert_eq!(response["usage"]["total_tokens"], 19);
        // Read back by the relay's own reader, the usage is the same.
        assert_eq!(
            usage(&response["usage"]),
            Usage {
                input: Some(10),
                output: Some(5),
                cache_read: Some(4),
                cache_write: None
            }
        );

        let cut = render_response(&ChatResponse {
            finish: Some(Finish::Length),
            ..ChatResponse::default()
        });
        assert_eq!(cut["status"], "incomplete");
        assert_eq!(cut["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(
            cut["output"][0]["type"], "message",
            "an empty message, not no output"
        );
    }

    #[test]
    fn deltas_encode_as_a_stream_that_decodes_back() {
        let deltas = super::super::sample_deltas(
            Finish::ToolCalls,
            Usage {
                input: Some(10),
                output: Some(7),
                ..Usage::default()
            },
        );
        let mut encoder = Encoder::default();
        let mut out = BytesMut::new();
        for delta in &deltas {
            encoder.encode(delta, &mut out);
        }
        let mut reader = crate::ai::sse::SseReader::default();
        let mut events = Vec::new();
        reader.push(&out, &mut events).unwrap();
        let names: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let data: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        for (i, event) in data.iter().enumerate() {
            assert_eq!(event["sequence_number"], i, "{event}");
            assert_eq!(event["type"], names[i]);
        }
        let last = &data[data.len() - 1]["response"];
        assert_eq!(last["model"], "claude-test");
        assert_eq!(last["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(last["output"][1]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(last["output"][1]["call_id"], "toolu_1");
        assert_eq!(last["usage"]["input_tokens"], 10);
        assert_eq!(last["usage"]["output_tokens"], 7);
        assert_eq!(data[13]["output_index"], 1, "the call is the second item");

        // The relay's decoder reads the translated stream as it reads OpenAI's.
        let mut decoder = Decoder::default();
        let mut decoded = Vec::new();
        for event in &events {
            decoder.decode(event, &mut decoded).unwrap();
        }
        assert_eq!(decoded.last(), Some(&Delta::Done));
        let text: String = decoded
            .iter()
            .filter_map(|d| match d {
                Delta::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hello");
    }

    #[test]
    fn a_stream_cut_by_its_limit_ends_incomplete_and_an_error_ends_it_at_once() {
        let mut encoder = Encoder::default();
        let mut out = BytesMut::new();
        for delta in [
            Delta::Text("cut".into()),
            Delta::Finish(Finish::Length),
            Delta::Done,
        ] {
            encoder.encode(&delta, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("event: response.incomplete\n"), "{text}");
        assert!(text.contains("\"max_output_tokens\""), "{text}");

        let mut encoder = Encoder::default();
        let mut out = BytesMut::new();
        encoder.encode(&Delta::Text("par".into()), &mut out);
        encoder.encode(&Delta::Error("overloaded".into()), &mut out);
        encoder.encode(&Delta::Done, &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("event: error\n"), "{text}");
        assert!(text.contains("\"message\":\"overloaded\""), "{text}");
        assert!(!text.contains("response.completed"), "{text}");
    }

    #[test]
    fn tools_the_provider_would_run_are_refused_unless_allowed() {
        let tools = |value: Value| serde_json::value::to_raw_value(&value).unwrap();
        let codex = tools(
            json!([{"type": "function", "name": "f"}, {"type": "local_shell"},
                                 {"type": "custom", "name": "apply_patch"}]),
        );
        assert_eq!(check_tools(Some(&codex), &[]), Ok(()));
        assert_eq!(check_tools(None, &[]), Ok(()));
        let hosted = tools(json!([{"type": "function", "name": "f"},
                                  {"type": "mcp", "server_url": "https://example.com/mcp"}]));
        let refused = check_tools(Some(&hosted), &["web_search".to_owned()]).unwrap_err();
        assert!(
            refused.contains("tools[1] of type `mcp` would run at the provider")
                && refused.contains("ai.provider_tools"),
            "{refused}"
        );
        assert_eq!(check_tools(Some(&hosted), &["mcp".to_owned()]), Ok(()));
    }

    #[test]
    fn calls_without_arguments_close_with_an_empty_object_and_late_arguments_are_kept() {
        let mut encoder = Encoder::default();
        let mut out = BytesMut::new();
        let start = |index: usize, name: &str| Delta::ToolStart {
            index,
            id: format!("toolu_{index}"),
            name: name.into(),
        };
        for delta in [
            start(0, "now"),
            start(1, "weather"),
            // Arguments of the first call after the second began (no decoder sends
            // this today; the final response must still hold them).
            Delta::ToolArgs {
                index: 0,
                json: "{\"tz\":\"UTC\"}".into(),
            },
            Delta::Done,
        ] {
            encoder.encode(&delta, &mut out);
        }
        let mut events = Vec::new();
        crate::ai::sse::SseReader::default()
            .push(&out, &mut events)
            .unwrap();
        let done: Vec<Value> = events
            .iter()
            .filter(|e| e.event.as_deref() == Some("response.function_call_arguments.done"))
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(done[0]["arguments"], "{}");
        assert_eq!(done[1]["arguments"], "{}");
        let last: Value = serde_json::from_str(&events[events.len() - 1].data).unwrap();
        assert_eq!(
            last["response"]["output"][0]["arguments"],
            "{\"tz\":\"UTC\"}"
        );
    }
}
