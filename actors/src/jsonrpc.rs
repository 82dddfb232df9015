//! JSON-RPC 2.0 framing as Warden needs it on both sides: a borrowed envelope for fast
//! classification of incoming messages (the payload stays raw until someone needs it),
//! error values with the standard and MCP codes, and writers that build a frame in one
//! allocation.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Standard and MCP-specific error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// MCP 2026-07-28: the request's protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
    /// Warden: the server is not ready, failed, or at its concurrency limit.
    pub const SERVER_UNAVAILABLE: i64 = -32001;
    /// Warden: the call exceeded its deadline.
    pub const TIMEOUT: i64 = -32002;
    /// Warden: the permission check denied the call.
    pub const FORBIDDEN: i64 = -32003;
    /// Warden: a rate limit or quota refused the call.
    pub const RATE_LIMITED: i64 = -32004;
    /// Warden: the audit trail cannot take the record, so the governed call is refused.
    pub const AUDIT_UNAVAILABLE: i64 = -32005;
    /// Warden: a hook blocked the call.
    pub const HOOK_DENIED: i64 = -32006;
    /// Warden: the call was cancelled.
    pub const CANCELLED: i64 = -32007;
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// An incoming message, borrowed from its frame. Which fields are present tells what it
/// is: `method` + `id` a request, `method` alone a notification, `id` with `result` or
/// `error` a response.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(default)]
    pub method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(default)]
    pub error: Option<RpcError>,
}

pub enum Kind {
    Request,
    Notification,
    Response,
    Invalid,
}

impl Envelope<'_> {
    pub fn kind(&self) -> Kind {
        match (&self.method, &self.id) {
            (Some(_), Some(id)) if id.get() != "null" => Kind::Request,
            (Some(_), _) => Kind::Notification,
            (None, Some(_)) if self.result.is_some() || self.error.is_some() => Kind::Response,
            _ => Kind::Invalid,
        }
    }

    /// The id as an unsigned integer, when it is one (Warden's own upstream ids are).
    pub fn numeric_id(&self) -> Option<u64> {
        self.id.and_then(|id| id.get().parse().ok())
    }
}

/// Appends `{"jsonrpc":"2.0","id":<id>,"method":<method>,"params":<params>}` to `out`.
pub fn write_request(out: &mut Vec<u8>, id: &str, method: &str, params: Option<&str>) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"method\":");
    write_json_string(out, method);
    if let Some(params) = params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(params.as_bytes());
    }
    out.push(b'}');
}

/// Appends a notification (no id).
pub fn write_notification(out: &mut Vec<u8>, method: &str, params: Option<&str>) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":");
    write_json_string(out, method);
    if let Some(params) = params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(params.as_bytes());
    }
    out.push(b'}');
}

/// Appends a success response carrying an already-serialised result.
pub fn write_result(out: &mut Vec<u8>, id: &str, result: &str) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.push(b'}');
}

/// Appends an error response.
pub fn write_error(out: &mut Vec<u8>, id: &str, error: &RpcError) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"error\":");
    // Serialising a struct of strings, integers and a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, error);
    out.push(b'}');
}

fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Inserts `"_meta": {key: value}` into a serialised JSON object, merging into an
/// existing `_meta` when there is one. The common case (no `_meta` yet) is a splice
/// without parsing the object.
pub fn add_meta(object: &str, key: &str, value: &Value) -> Option<String> {
    let trimmed = object.trim_start();
    if !trimmed.starts_with('{') {
        return None;
    }
    if !object.contains("\"_meta\"") {
        let mut entry = Vec::with_capacity(key.len() + 64);
        entry.extend_from_slice(b"{\"_meta\":{");
        write_json_string(&mut entry, key);
        entry.push(b':');
        let _ = serde_json::to_writer(&mut entry, value);
        entry.push(b'}');
        let body = trimmed[1..].trim_start();
        let mut out = String::from_utf8(entry).ok()?;
        if !body.starts_with('}') {
            out.push(',');
        }
        out.push_str(body);
        return Some(out);
    }
    // Only `_meta` is parsed into values; every other member is copied as raw text (the
    // result's content can be large, and building a DOM of it per call was ~6 % of the
    // call path's CPU).
    let members: indexmap::IndexMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(object).ok()?;
    let mut out = String::with_capacity(object.len() + key.len() + 64);
    out.push('{');
    let mut merged = false;
    for (name, raw) in &members {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).ok()?);
        out.push(':');
        if name == "_meta" {
            let mut meta = match serde_json::from_str::<Value>(raw.get()).ok()? {
                Value::Object(meta) => meta,
                _ => serde_json::Map::new(),
            };
            meta.insert(key.to_owned(), value.clone());
            out.push_str(&serde_json::to_string(&meta).ok()?);
            merged = true;
        } else {
            out.push_str(raw.get());
        }
    }
    if !merged {
        // `"_meta"` appeared only inside a nested value.
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str("\"_meta\":");
        let mut meta = serde_json::Map::new();
        meta.insert(key.to_owned(), value.clone());
        out.push_str(&serde_json::to_string(&meta).ok()?);
    }
    out.push('}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        let request: Envelope =
            serde_json::from_str(r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#).unwrap();
        assert!(matches!(request.kind(), Kind::Request));
        assert_eq!(request.numeric_id(), Some(3));
        let note: Envelope =
            serde_json::from_str(r#"{"jsonrpc":"2.0","method":"notifications/x"}"#).unwrap();
        assert!(matches!(note.kind(), Kind::Notification));
        let response: Envelope =
            serde_json::from_str(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert!(matches!(response.kind(), Kind::Response));
        assert_eq!(response.numeric_id(), None);
    }

    #[test]
    fn writes_frames() {
        let mut out = Vec::new();
        write_request(&mut out, "7", "tools/call", Some(r#"{"name":"x"}"#));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#
        );
        out.clear();
        write_error(
            &mut out,
            "\"a\"",
            &RpcError::new(code::INVALID_PARAMS, "unknown tool `y`"),
        );
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["error"]["code"], -32602);
    }

    #[test]
    fn adds_meta_with_and_without_existing() {
        let v = serde_json::json!("00-abc-def-01");
        let spliced = add_meta(r#"{"content":[]}"#, "traceparent", &v).unwrap();
        let parsed: Value = serde_json::from_str(&spliced).unwrap();
        assert_eq!(parsed["_meta"]["traceparent"], v);
        assert_eq!(parsed["content"], serde_json::json!([]));
        let empty = add_meta("{}", "k", &v).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&empty).unwrap()["_meta"]["k"],
            v
        );
        let merged = add_meta(r#"{"_meta":{"a":1},"x":2}"#, "k", &v).unwrap();
        let parsed: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(parsed["_meta"]["a"], 1);
        assert_eq!(parsed["_meta"]["k"], v);
        // Other members keep their exact text and order.
        assert_eq!(
            add_meta(r#"{"z":[1.50, "é"],"_meta":{"a":1}}"#, "k", &v).unwrap(),
            r#"{"z":[1.50, "é"],"_meta":{"a":1,"k":"00-abc-def-01"}}"#
        );
        // `_meta` only inside a nested value: the top level gets its own.
        let nested = add_meta(r#"{"content":[{"_meta":{"b":2}}]}"#, "k", &v).unwrap();
        let parsed: Value = serde_json::from_str(&nested).unwrap();
        assert_eq!(parsed["_meta"]["k"], v);
        assert_eq!(parsed["content"][0]["_meta"]["b"], 2);
        assert_eq!(add_meta("[1]", "k", &v), None);
    }
}
