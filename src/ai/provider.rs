//! Providers: where a model request goes and how it is authenticated.
//!
//! A **provider kind** (`anthropic`, `openai`, `gemini`, `openai_compatible`) is a factory
//! contributed through the registry (`Registry::ai_providers`), exactly as an extension
//! would add one (say, a provider behind a corporate proxy with its own auth); the
//! built-ins register themselves in `lib.rs`. A factory turns one `ai.providers.<name>`
//! entry into a [`Provider`]: the wire format it speaks, the URL for a model, and the
//! headers that carry its key.
//!
//! The key itself comes from the secret store (`api_key_secret`) and reaches only
//! [`Provider::auth_headers`], whose values are marked sensitive (never printed by
//! `Debug`) and set on the upstream request alone. Nothing from the client's request
//! headers is forwarded, apart from `anthropic-version` and `anthropic-beta` to an
//! Anthropic provider when the client speaks that format.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use warden_actors::redact::Redacted;

use super::wire::Wire;
use super::wire::openai::Dialect;

/// One validated `ai.providers.<name>` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderSettings {
    pub name: String,
    pub kind: String,
    /// Without a trailing slash; `None` takes the kind's default.
    pub base_url: Option<String>,
    /// The secret-store entry with the API key (`None`: the upstream needs no key).
    pub api_key_secret: Option<String>,
    /// Extra headers on every upstream request (organisation ids, routing hints).
    pub headers: Vec<(String, String)>,
    /// How long Warden waits for the answer to begin, and between two pieces of a
    /// streamed answer (the whole answer when not streaming).
    pub timeout: Duration,
    /// The largest answer to a request that does not stream.
    pub max_answer_bytes: usize,
    /// The largest single event of a streamed answer.
    pub max_event_bytes: usize,
    /// How `/v1/responses` requests reach it; `None`: relayed when it serves that API.
    pub responses: Option<ResponsesMode>,
    /// `on_client_gone: finish`: a stream whose client went away is read to its end for
    /// the usage (else the connection is closed and the provider stops).
    pub finish_when_client_gone: bool,
}

/// `ai.providers.<name>.responses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponsesMode {
    /// Sent as written to the provider's own `/responses` endpoint.
    Relay,
    /// Translated into the provider's chat format (for OpenAI-style servers without
    /// `/responses`).
    Translate,
}

/// A configured provider.
pub trait Provider: Send + Sync + 'static {
    /// The wire format its endpoint speaks.
    fn wire(&self) -> Wire;

    /// The URL a request for `model` goes to.
    fn url(&self, model: &str, stream: bool) -> String;

    /// The headers that carry `key` (marked sensitive).
    fn auth_headers(
        &self,
        key: &Redacted<String>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String>;

    /// Fixed headers on every request (the kind's own and the profile's `headers`).
    fn fixed_headers(&self) -> &[(HeaderName, HeaderValue)];

    /// Where embeddings of `model` are requested (OpenAI format), if the provider has
    /// such an endpoint.
    fn embeddings_url(&self, _model: &str) -> Option<String> {
        None
    }

    /// Where a request in OpenAI's Responses format goes, if the provider serves that
    /// API (relayed as sent, never translated).
    fn responses_url(&self) -> Option<String> {
        None
    }

    /// Where the input tokens of a request for `model` are counted, and the format of
    /// that count request (Anthropic's `count_tokens`, Gemini's `countTokens`, OpenAI's
    /// `responses/input_tokens`), if the provider can count them.
    fn count_tokens_url(&self, _model: &str) -> Option<(String, Wire)> {
        None
    }

    /// How an OpenAI-format request is spelled for it.
    fn dialect(&self) -> Dialect {
        Dialect {
            max_tokens_field: "max_tokens",
        }
    }
}

/// Builds a provider from its profile entry; an error names what is wrong with it.
pub type ProviderFactory =
    Arc<dyn Fn(&ProviderSettings) -> Result<Arc<dyn Provider>, String> + Send + Sync>;

/// The kinds built into Warden.
pub const BUILTIN_KINDS: &[&str] = &["anthropic", "openai", "gemini", "openai_compatible"];

/// Registers the built-in kinds (called from `lib.rs`, like any extension's).
pub fn register_builtins(registry: &mut crate::extension::Registry) {
    for kind in BUILTIN_KINDS {
        registry.ai_providers("warden", kind, move |settings| builtin(kind, settings));
    }
}

/// A built-in provider: its wire format, default base URL, key header and URL shape.
struct Builtin {
    wire: Wire,
    /// Kind `openai`: OpenAI's own API, with the endpoints the servers copying its chat
    /// API lack.
    openai_api: bool,
    base_url: String,
    dialect: Dialect,
    key_header: HeaderName,
    bearer: bool,
    fixed: Vec<(HeaderName, HeaderValue)>,
}

fn builtin(kind: &str, settings: &ProviderSettings) -> Result<Arc<dyn Provider>, String> {
    let (wire, default_url, key_header, bearer, max_tokens_field) = match kind {
        "anthropic" => (
            Wire::Anthropic,
            Some("https://api.anthropic.com"),
            "x-api-key",
            false,
            "max_tokens",
        ),
        "openai" => (
            Wire::OpenAi,
            Some("https://api.openai.com/v1"),
            "authorization",
            true,
            "max_completion_tokens",
        ),
        "gemini" => (
            Wire::Gemini,
            Some("https://generativelanguage.googleapis.com/v1beta"),
            "x-goog-api-key",
            false,
            "max_tokens",
        ),
        "openai_compatible" => (Wire::OpenAi, None, "authorization", true, "max_tokens"),
        other => return Err(format!("`{other}` is not a built-in provider kind")),
    };
    let base_url = settings
        .base_url
        .clone()
        .or_else(|| default_url.map(str::to_owned))
        .ok_or_else(|| {
            "`base_url` is required for kind `openai_compatible` (the server's OpenAI-style \
             API root, such as http://127.0.0.1:8000/v1)"
                .to_owned()
        })?;
    let mut fixed = Vec::new();
    if wire == Wire::Anthropic {
        fixed.push((
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(super::wire::anthropic::API_VERSION),
        ));
    }
    for (name, value) in &settings.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`headers.{name}` is not a valid header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("`headers.{name}` has a value that is not a valid header"))?;
        fixed.retain(|(n, _)| *n != name);
        fixed.push((name, value));
    }
    Ok(Arc::new(Builtin {
        wire,
        openai_api: kind == "openai",
        base_url,
        dialect: Dialect { max_tokens_field },
        key_header: HeaderName::from_static(key_header),
        bearer,
        fixed,
    }))
}

impl Provider for Builtin {
    fn wire(&self) -> Wire {
        self.wire
    }

    fn url(&self, model: &str, stream: bool) -> String {
        match self.wire {
            Wire::OpenAi => format!("{}/chat/completions", self.base_url),
            // No built-in kind speaks only the Responses API; one that did would be here.
            Wire::Responses => self.responses_endpoint(),
            Wire::Anthropic => format!("{}/v1/messages", self.base_url),
            Wire::Gemini if stream => format!(
                "{}/models/{}:streamGenerateContent?alt=sse",
                self.base_url,
                encode_segment(model)
            ),
            Wire::Gemini => format!(
                "{}/models/{}:generateContent",
                self.base_url,
                encode_segment(model)
            ),
        }
    }

    fn auth_headers(
        &self,
        key: &Redacted<String>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let text = if self.bearer {
            format!("Bearer {}", key.expose())
        } else {
            key.expose().clone()
        };
        // The error names the secret's owner, never its value.
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| "the key holds characters a header cannot carry".to_owned())?;
        value.set_sensitive(true);
        Ok(vec![(self.key_header.clone(), value)])
    }

    fn fixed_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.fixed
    }

    fn embeddings_url(&self, _model: &str) -> Option<String> {
        // Anthropic has no embeddings API; Gemini's own format is not translated (its
        // OpenAI-compatible endpoint serves as an `openai_compatible` provider).
        (self.wire == Wire::OpenAi).then(|| format!("{}/embeddings", self.base_url))
    }

    fn count_tokens_url(&self, model: &str) -> Option<(String, Wire)> {
        match self.wire {
            Wire::Anthropic => Some((
                format!("{}/v1/messages/count_tokens", self.base_url),
                Wire::Anthropic,
            )),
            Wire::Gemini => Some((
                format!(
                    "{}/models/{}:countTokens",
                    self.base_url,
                    encode_segment(model)
                ),
                Wire::Gemini,
            )),
            // OpenAI counts through its Responses API; the servers that copy its chat API
            // (kind `openai_compatible`) offer no such endpoint, nor a way to count a
            // request without running it.
            Wire::OpenAi if self.openai_api => Some((
                format!("{}/responses/input_tokens", self.base_url),
                Wire::Responses,
            )),
            Wire::OpenAi | Wire::Responses => None,
        }
    }

    fn responses_url(&self) -> Option<String> {
        // OpenAI's API and the servers that copy it (vLLM, Ollama, llama.cpp, LiteLLM)
        // offer chat completions and responses under the same root.
        (self.wire == Wire::OpenAi).then(|| self.responses_endpoint())
    }

    fn dialect(&self) -> Dialect {
        self.dialect
    }
}

impl Builtin {
    fn responses_endpoint(&self) -> String {
        format!("{}/responses", self.base_url)
    }
}

/// Checks `responses: relay` against what `provider` serves (any kind, an extension's
/// too); `translate` is the exchange's to honour.
pub fn check_responses_setting(
    settings: &ProviderSettings,
    provider: &dyn Provider,
) -> Result<(), String> {
    if settings.responses == Some(ResponsesMode::Relay) && provider.responses_url().is_none() {
        return Err(format!(
            "`responses: relay` needs a provider that serves OpenAI's Responses API (kind \
             `openai` or `openai_compatible`); kind `{}` is always translated",
            settings.kind
        ));
    }
    Ok(())
}

/// Percent-encodes what may not appear in a path segment.
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kind: &str, base_url: Option<&str>) -> ProviderSettings {
        ProviderSettings {
            name: "p".into(),
            kind: kind.into(),
            base_url: base_url.map(str::to_owned),
            api_key_secret: Some("k".into()),
            headers: vec![("OpenAI-Organization".into(), "org-1".into())],
            timeout: Duration::from_secs(1),
            max_answer_bytes: 1 << 20,
            max_event_bytes: 1 << 20,
            responses: None,
            finish_when_client_gone: false,
        }
    }

    #[test]
    fn each_kind_has_its_url_and_key_header() {
        let key = Redacted::new("sk-test".to_owned());
        let anthropic = builtin("anthropic", &settings("anthropic", None)).unwrap();
        assert_eq!(
            anthropic.url("m", true),
            "https://api.anthropic.com/v1/messages"
        );
        let headers = anthropic.auth_headers(&key).unwrap();
        assert_eq!(headers[0].0, "x-api-key");
        assert!(headers[0].1.is_sensitive());
        assert!(!format!("{:?}", headers[0].1).contains("sk-test"));
        assert!(
            anthropic
                .fixed_headers()
                .iter()
                .any(|(n, _)| n == "anthropic-version")
        );

        let openai = builtin("openai", &settings("openai", None)).unwrap();
        assert_eq!(
            openai.url("m", false),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(openai.auth_headers(&key).unwrap()[0].1, "Bearer sk-test");
        assert_eq!(
            openai.responses_url().as_deref(),
            Some("https://api.openai.com/v1/responses")
        );
        assert_eq!(anthropic.responses_url(), None);
        assert_eq!(
            anthropic.count_tokens_url("m"),
            Some((
                "https://api.anthropic.com/v1/messages/count_tokens".into(),
                Wire::Anthropic
            ))
        );
        assert_eq!(
            openai.count_tokens_url("m"),
            Some((
                "https://api.openai.com/v1/responses/input_tokens".into(),
                Wire::Responses
            ))
        );
        let compatible = builtin(
            "openai_compatible",
            &settings("openai_compatible", Some("http://127.0.0.1:9/v1")),
        )
        .unwrap();
        assert_eq!(compatible.count_tokens_url("m"), None);
        let relayed = ProviderSettings {
            responses: Some(ResponsesMode::Relay),
            ..settings("anthropic", None)
        };
        let refused = check_responses_setting(&relayed, anthropic.as_ref()).unwrap_err();
        assert!(
            refused.contains("kind `anthropic` is always translated"),
            "{refused}"
        );
        let relayed = ProviderSettings {
            kind: "openai".into(),
            ..relayed
        };
        assert_eq!(check_responses_setting(&relayed, openai.as_ref()), Ok(()));
        assert_eq!(openai.dialect().max_tokens_field, "max_completion_tokens");

        let gemini = builtin(
            "gemini",
            &settings("gemini", Some("http://127.0.0.1:9/v1beta")),
        )
        .unwrap();
        assert_eq!(
            gemini.url("gemini-2.5-flash", true),
            "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            gemini.url("a/b", false),
            "http://127.0.0.1:9/v1beta/models/a%2Fb:generateContent"
        );
        assert_eq!(
            gemini.count_tokens_url("gemini-2.5-flash"),
            Some((
                "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:countTokens".into(),
                Wire::Gemini
            ))
        );

        let err = builtin("openai_compatible", &settings("openai_compatible", None))
            .err()
            .unwrap();
        assert!(err.contains("`base_url` is required"), "{err}");
    }
}
