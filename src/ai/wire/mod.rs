//! The wire formats Warden speaks with clients and providers, and the neutral form
//! requests and answers pass through when a client's format differs from its provider's.
//!
//! - [`openai`]: chat completions (clients on `/v1/chat/completions`; `openai` and
//!   `openai_compatible` providers).
//! - [`anthropic`]: messages (clients on `/v1/messages`; `anthropic` providers).
//! - [`gemini`]: `generateContent` / `streamGenerateContent` (`gemini` providers, and
//!   clients on `/v1beta/models/{model}:…`).
//! - [`responses`]: OpenAI's Responses API (clients on `/v1/responses`): relayed to the
//!   providers that speak [`Wire::OpenAi`], at their `/responses` endpoint; translated for
//!   the others. Nothing is translated *into* it (no built-in provider speaks only it).
//!
//! When client and provider speak the same format, the request is forwarded as sent (only
//! `model` is replaced, and an OpenAI stream asks for its usage report) and the answer
//! comes back byte for byte, event for event; the decoders only watch it for usage. When
//! they differ, the request is parsed into a [`ChatRequest`], rendered for the provider,
//! and the answer decoded into [`ChatResponse`] or a stream of [`Delta`]s and rendered for
//! the client. Fields with no equivalent on the other side are refused with a message
//! naming them, except the few listed in `docs/ai-gateway.md` as dropped (hints that do
//! not change what an answer means, such as Anthropic's `cache_control`).

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod responses;

use bytes::BytesMut;
use serde_json::Value;
use thiserror::Error;

use super::pricing::Usage;
use super::sse::SseEvent;

/// A wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wire {
    /// OpenAI chat completions.
    OpenAi,
    Anthropic,
    Gemini,
    /// OpenAI's Responses API.
    Responses,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
            Wire::Responses => "openai_responses",
        }
    }
}

/// Why a request cannot be read or rendered.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The request is malformed in its own format.
    #[error("{0}")]
    Invalid(String),
    /// The request uses something the provider's format cannot express.
    #[error("{what} cannot be translated for a provider speaking the {target} format")]
    Untranslatable { what: String, target: &'static str },
}

impl WireError {
    /// Names the provider's format in an [`WireError::Untranslatable`] (the readers do not
    /// know it).
    pub fn toward(self, target: Wire) -> WireError {
        match self {
            WireError::Untranslatable { what, .. } => WireError::Untranslatable {
                what,
                target: target.as_str(),
            },
            other => other,
        }
    }
}

pub(crate) fn invalid(message: impl Into<String>) -> WireError {
    WireError::Invalid(message.into())
}

/// The refusal of request fields with no equivalent in the provider's format (each
/// already quoted, as `` `n` ``); `Ok` when there are none.
pub(crate) fn refuse_fields(mut fields: Vec<String>) -> Result<(), WireError> {
    if fields.is_empty() {
        return Ok(());
    }
    fields.sort();
    Err(WireError::Untranslatable {
        what: format!("request field {}", fields.join(", ")),
        target: "",
    })
}

/// A chat request in neutral form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    /// System instructions, in order.
    pub system: Vec<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    /// Numbers are kept as the client wrote them.
    pub temperature: Option<Value>,
    pub top_p: Option<Value>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// An end-user identifier for the provider's abuse monitoring.
    pub user: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
    /// A tool call the assistant made; `arguments` is JSON text.
    ToolCall(ToolCall),
    /// The result of a tool call, sent back by the user side.
    ToolResult(ToolResult),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Image {
    Base64 { media_type: String, data: String },
    Url(String),
}

impl Image {
    /// Reads an OpenAI `image_url.url`: a `data:` URL or a plain URL.
    pub fn from_url(url: &str) -> Image {
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((media_type, data)) = rest.split_once(";base64,")
        {
            return Image::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            };
        }
        Image::Url(url.to_owned())
    }

    pub fn to_url(&self) -> String {
        match self {
            Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
            Image::Url(url) => url.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolResult {
    pub id: String,
    pub content: String,
    pub is_error: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

impl Tool {
    /// A tool as a request declares it: `name`, `description`, and its arguments' schema
    /// under `schema_key` (an object taking no arguments when absent).
    pub(crate) fn read(spec: &Value, schema_key: &str, context: &str) -> Result<Tool, WireError> {
        Ok(Tool {
            name: string(spec, "name", context)?.to_owned(),
            description: spec
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            parameters: spec
                .get(schema_key)
                .filter(|schema| !schema.is_null())
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Tool(String),
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Other(String),
}

/// A complete answer in neutral form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    /// Text and tool calls, in order.
    pub parts: Vec<Part>,
    pub finish: Option<Finish>,
    pub usage: Usage,
}

/// One step of a streamed answer in neutral form.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Start {
        id: String,
        model: String,
    },
    Text(String),
    /// A tool call begins; `index` counts tool calls within the answer from 0.
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a tool call's arguments (JSON text, in pieces).
    ToolArgs {
        index: usize,
        json: String,
    },
    Finish(Finish),
    /// Usage as reported so far (counts are cumulative).
    Usage(Usage),
    /// The provider reported an error inside the stream.
    Error(String),
    /// The provider's end-of-stream marker.
    Done,
}

impl Delta {
    /// True for deltas that carry part of the answer (what time-to-first-token waits for).
    pub fn is_content(&self) -> bool {
        matches!(
            self,
            Delta::Text(_) | Delta::ToolStart { .. } | Delta::ToolArgs { .. }
        )
    }
}

/// Reads a provider's stream events into deltas.
pub trait StreamDecoder: Send {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<Delta>) -> Result<(), String>;
}

/// Writes deltas as a client's stream events.
pub trait StreamEncoder: Send {
    fn encode(&mut self, delta: &Delta, out: &mut BytesMut);
}

/// The decoder for a provider's format.
/// Reads a client's request in `format` into neutral form.
pub fn parse_request(
    format: Wire,
    body: &serde_json::Map<String, Value>,
) -> Result<ChatRequest, WireError> {
    match format {
        Wire::Anthropic => anthropic::parse_request(body),
        Wire::Responses => responses::parse_request(body),
        Wire::Gemini => gemini::parse_request(body),
        Wire::OpenAi => openai::parse_request(body),
    }
}

pub fn decoder(wire: Wire) -> Box<dyn StreamDecoder> {
    match wire {
        Wire::OpenAi => Box::new(openai::Decoder::default()),
        Wire::Anthropic => Box::new(anthropic::Decoder::default()),
        Wire::Gemini => Box::new(gemini::Decoder::default()),
        Wire::Responses => Box::new(responses::Decoder::default()),
    }
}

/// The encoder for a client's format when its provider speaks another.
pub fn encoder(wire: Wire, include_usage: bool) -> Box<dyn StreamEncoder> {
    match wire {
        Wire::Anthropic => Box::new(anthropic::Encoder::default()),
        Wire::Responses => Box::new(responses::Encoder::default()),
        Wire::Gemini => Box::new(gemini::Encoder::default()),
        Wire::OpenAi => Box::new(openai::Encoder::new(include_usage)),
    }
}

/// Reads a JSON number field as a u64.
pub(crate) fn count(value: &Value, key: &str) -> Option<u64> {
    value.get(key).and_then(Value::as_u64)
}

/// The text of an optional string field (ids and model names of an answer), empty when
/// absent or not a string.
pub(crate) fn str_or_empty(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// A provider's error object as one line: its `message`, else the whole object.
pub(crate) fn error_message(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| error.to_string(), str::to_owned)
}

/// Refuses a relayed request naming a tool the provider would run itself (calls Warden
/// never sees, billed beyond the token counts), unless `allowed` (`ai.provider_tools`)
/// lists its kind. `provider_run` gives, for the `i`th tool, how a message names each
/// part the provider would run and that part's kind.
pub(crate) fn check_provider_tools(
    tools: Option<&serde_json::value::RawValue>,
    allowed: &[String],
    provider_run: impl Fn(usize, &Value) -> Vec<(String, String)>,
) -> Result<(), String> {
    let Some(tools) = tools else {
        return Ok(());
    };
    let tools: Value = serde_json::from_str(tools.get()).map_err(|e| format!("`tools`: {e}"))?;
    for (i, tool) in tools.as_array().into_iter().flatten().enumerate() {
        for (named, kind) in provider_run(i, tool) {
            if !allowed.contains(&kind) {
                return Err(format!(
                    "{named} would run at the provider, outside Warden's governance; list \
                     `{kind}` in ai.provider_tools to allow it"
                ));
            }
        }
    }
    Ok(())
}

/// The text of a message's `content`: a string, or a list of parts whose `type` is one of
/// `kinds`, each paired with the member holding its text; any other part cannot be
/// translated.
pub(crate) fn content_text(
    content: &Value,
    context: &str,
    kinds: &[(&str, &str)],
) -> Result<String, WireError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                let kind = part.get("type").and_then(Value::as_str);
                let Some((_, member)) = kinds.iter().find(|(k, _)| Some(*k) == kind) else {
                    return Err(WireError::Untranslatable {
                        what: format!("{context} content of type `{}`", kind.unwrap_or("?")),
                        target: "",
                    });
                };
                text.push_str(string(part, member, context)?);
            }
            Ok(text)
        }
        _ => Err(invalid(format!(
            "{context}: `content` must be a string or a list"
        ))),
    }
}

/// The text of a string field, or an error naming it.
pub(crate) fn string<'a>(value: &'a Value, key: &str, context: &str) -> Result<&'a str, WireError> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{context}: `{key}` must be a string")))
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Merges consecutive messages of the same role (Anthropic and Gemini want turns to
/// alternate; an OpenAI conversation has one `tool` message per result).
pub(crate) fn merge_turns(messages: &[Message]) -> Vec<Message> {
    let mut merged: Vec<Message> = Vec::with_capacity(messages.len());
    for message in messages {
        match merged.last_mut() {
            Some(last) if last.role == message.role => {
                last.parts.extend(message.parts.iter().cloned())
            }
            _ => merged.push(message.clone()),
        }
    }
    merged
}

/// A JSON object as a request's top level, for the readers' tests.
#[cfg(test)]
pub(crate) fn map(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().cloned().expect("a JSON object")
}

/// A streamed answer as a provider's decoder gives it, for the encoders' tests: text in
/// two pieces, then a tool call whose arguments come in two pieces, `finish` and `usage`.
#[cfg(test)]
pub(crate) fn sample_deltas(finish: Finish, usage: Usage) -> Vec<Delta> {
    vec![
        Delta::Start {
            id: "msg_1".into(),
            model: "claude-test".into(),
        },
        Delta::Text("Hel".into()),
        Delta::Text("lo".into()),
        Delta::ToolStart {
            index: 0,
            id: "toolu_1".into(),
            name: "weather".into(),
        },
        Delta::ToolArgs {
            index: 0,
            json: "{\"city\":".into(),
        },
        Delta::ToolArgs {
            index: 0,
            json: "\"Oslo\"}".into(),
        },
        Delta::Finish(finish),
        Delta::Usage(usage),
        Delta::Done,
    ]
}
