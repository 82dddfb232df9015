//! The `ai:` section of the profile: providers, model routes, prices and budgets, parsed
//! into the types `ai/` runs on. Everything is checked here, at load, with the key path and
//! line of the entry at fault: a route naming a missing provider, a price written with more
//! precision than a picodollar, a cost budget while some routed model has no price.
//!
//! Prices and budget amounts are read from the scalar's text as exact decimals (never
//! through a float), so `0.075` dollars per million tokens is exactly 75,000 picodollars
//! per token.
//!
//! Provider kinds are not checked here: they are contributed through the registry
//! (`extension.rs`), so an extension can add one; `ai::Ai::prepare` refuses an unknown
//! kind when the profile is applied (start, reload, `warden config check`).

use std::collections::BTreeMap;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use super::units::{ByteSize, Dur};
use super::yaml::{Located, Mark, Spanned};
use crate::ai::budgets::{BudgetRule, BudgetSubject, BudgetWindow};
use crate::ai::pricing::{self, Price};
use crate::ai::provider::ResponsesMode;
use crate::ai::{AiConfig, ModelRoute, ProviderSettings};
use crate::policy::MODEL_SCOPE;
use crate::policy::hooks::Pattern;

/// `ai.max_draining_streams` when the profile names none, and its bounds.
pub const DEFAULT_MAX_DRAINING: usize = 64;
const MAX_DRAINING: std::ops::RangeInclusive<usize> = 1..=10_000;

/// `ai:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAi {
    /// The scopes a model request needs unless its route names its own.
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub providers: BTreeMap<String, Spanned<RawProvider>>,
    #[serde(default)]
    pub models: IndexMap<String, Spanned<RawModel>>,
    #[serde(default)]
    pub prices: BTreeMap<String, Spanned<RawPrice>>,
    #[serde(default)]
    pub budgets: Vec<Spanned<RawBudget>>,
    /// Tools a provider runs itself (web search, code interpreter, remote MCP servers)
    /// allowed in relayed requests: Responses tool types, Gemini tool keys.
    #[serde(default)]
    pub provider_tools: Vec<String>,
    /// How many streams whose clients went away may be read to their end at once
    /// (`on_client_gone: finish`).
    pub max_draining_streams: Option<usize>,
}

/// `ai.providers.<name>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `anthropic`, `openai`, `gemini`, `openai_compatible` (or a kind an extension adds).
    pub kind: String,
    pub base_url: Option<String>,
    /// The secret-store entry holding the provider's API key.
    pub api_key_secret: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout: Option<Dur>,
    pub max_answer_bytes: Option<ByteSize>,
    pub max_event_bytes: Option<ByteSize>,
    /// `relay` or `translate`: how requests to `/v1/responses` reach it.
    pub responses: Option<String>,
    /// `close` or `finish`: what becomes of a stream whose client went away.
    pub on_client_gone: Option<String>,
}

/// `ai.models.<alias>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: String,
    pub model: String,
    pub scopes: Option<Vec<String>>,
    /// The output limit a translated request gets when it names none.
    pub default_max_tokens: Option<u64>,
}

/// `ai.prices.<model>`: US dollars per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: Decimal,
    pub output: Decimal,
    pub cache_read: Option<Decimal>,
    pub cache_write: Option<Decimal>,
}

/// One entry of `ai.budgets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub name: String,
    /// `day` or `month` (calendar windows in UTC).
    pub per: String,
    /// Only this user (a glob or `re:` regex over the principal's subject).
    pub user: Option<String>,
    /// Only holders of a role matching this pattern.
    pub role: Option<String>,
    /// Only requests for these model aliases.
    pub models: Option<Vec<String>>,
    /// One counter for everyone the budget applies to, instead of one per user.
    pub shared: Option<bool>,
    /// US dollars per window.
    pub max_cost: Option<Decimal>,
    /// Tokens per window (input, output and cache tokens together).
    pub max_tokens: Option<u64>,
}

/// A decimal number kept as the text the profile wrote, so it converts exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decimal(pub String);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DecimalVisitor;
        impl serde::de::Visitor<'_> for DecimalVisitor {
            type Value = Decimal;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal number such as `3`, `0.30` or `15.00`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Decimal, E> {
                Ok(Decimal(v.trim().to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
        }
        // The profile's deserialiser hands any scalar over as its text here.
        deserializer.deserialize_str(DecimalVisitor)
    }
}

/// Builds the validated `ai` section; every problem found is appended to `problems`.
pub fn build(raw: RawAi, problems: &mut Vec<Located>) -> AiConfig {
    let located = |path: String, message: String| Located {
        mark: Mark::default(),
        path,
        message,
    };
    let scopes = raw.scopes.unwrap_or_else(|| vec![MODEL_SCOPE.to_owned()]);

    let mut providers = BTreeMap::new();
    for (name, spanned) in &raw.providers {
        let p = &spanned.value;
        let mut fail =
            |message: String| problems.push(located(format!("ai.providers.{name}"), message));
        if !valid_name(name) {
            fail(format!(
                "provider name `{name}` may only hold letters, digits, `-`, `_` and `.`"
            ));
        }
        if p.kind.is_empty() {
            fail(
                "`kind` must name a provider kind (anthropic, openai, gemini, openai_compatible)"
                    .into(),
            );
        }
        if let Some(url) = &p.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            fail(format!(
                "`base_url` must be an http:// or https:// URL, found `{url}`"
            ));
        }
        if let Some(secret) = &p.api_key_secret
            && let Err(e) = crate::secrets::store::validate_name(secret)
        {
            fail(format!("`api_key_secret`: {e}"));
        }
        let mut headers = Vec::new();
        for (header, value) in p.headers.iter().flatten() {
            match (
                reqwest::header::HeaderName::from_bytes(header.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                (Ok(h), Ok(_)) if is_reserved_header(h.as_str()) => fail(format!(
                    "header `{header}` is set by Warden itself (the key goes in `api_key_secret`)"
                )),
                (Ok(_), Ok(_)) => headers.push((header.clone(), value.clone())),
                _ => fail(format!("`headers.{header}` is not a valid HTTP header")),
            }
        }
        let timeout = p.timeout.map_or(Duration::from_secs(600), |d| d.0);
        if timeout.is_zero() {
            fail("`timeout` must be longer than zero".into());
        }
        let mut size = |key: &str, value: Option<&ByteSize>, default: u64| {
            super::units::message_bound(value.map_or(default, |s| s.0)).unwrap_or_else(|problem| {
                fail(format!("`{key}` {problem}"));
                usize::MAX
            })
        };
        let max_answer_bytes = size(
            "max_answer_bytes",
            p.max_answer_bytes.as_ref(),
            warden_actors::upstream::http::DEFAULT_MAX_MESSAGE_BYTES as u64,
        );
        let max_event_bytes = size(
            "max_event_bytes",
            p.max_event_bytes.as_ref(),
            warden_actors::sse::DEFAULT_MAX_EVENT_BYTES as u64,
        );
        let finish_when_client_gone = match p.on_client_gone.as_deref() {
            None | Some("close") => false,
            Some("finish") => true,
            Some(other) => {
                fail(format!(
                    "`on_client_gone` must be `close` or `finish`, found `{other}`"
                ));
                false
            }
        };
        let responses = match p.responses.as_deref() {
            None => None,
            Some("relay") => Some(ResponsesMode::Relay),
            Some("translate") => Some(ResponsesMode::Translate),
            Some(other) => {
                fail(format!(
                    "`responses` must be `relay` or `translate`, found `{other}`"
                ));
                None
            }
        };
        providers.insert(
            name.clone(),
            ProviderSettings {
                name: name.clone(),
                kind: p.kind.clone(),
                base_url: p
                    .base_url
                    .as_ref()
                    .map(|u| u.trim_end_matches('/').to_owned()),
                api_key_secret: p.api_key_secret.clone(),
                headers,
                timeout,
                max_answer_bytes,
                max_event_bytes,
                responses,
                finish_when_client_gone,
            },
        );
    }

    let mut prices = BTreeMap::new();
    for (model, spanned) in &raw.prices {
        let p = &spanned.value;
        let mut parse = |key: &str, value: &Decimal| match pricing::parse_decimal(&value.0) {
            Ok(v) => v,
            Err(message) => {
                problems.push(located(format!("ai.prices.{model}.{key}"), message));
                0
            }
        };
        let input = parse("input", &p.input);
        let output = parse("output", &p.output);
        let cache_read = p
            .cache_read
            .as_ref()
            .map_or(input, |v| parse("cache_read", v));
        let cache_write = p
            .cache_write
            .as_ref()
            .map_or(input, |v| parse("cache_write", v));
        prices.insert(
            model.clone(),
            Price {
                input,
                output,
                cache_read,
                cache_write,
            },
        );
    }

    let mut models = IndexMap::new();
    for (alias, spanned) in &raw.models {
        let m = &spanned.value;
        if alias.is_empty() || alias.chars().any(|c| c.is_control() || c == ' ') {
            problems.push(spanned.error(format!(
                "model alias `{alias}` may not be empty or hold spaces"
            )));
        }
        if !providers.contains_key(&m.provider) {
            let known: Vec<&str> = providers.keys().map(String::as_str).collect();
            problems.push(spanned.error(format!(
                "model `{alias}` names provider `{}`, which is not in ai.providers (known: {})",
                m.provider,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        if m.model.is_empty() {
            problems.push(spanned.error(format!("model `{alias}`: `model` must not be empty")));
        }
        if m.default_max_tokens == Some(0) {
            problems.push(spanned.error(format!(
                "model `{alias}`: `default_max_tokens` must be at least 1"
            )));
        }
        models.insert(
            alias.clone(),
            ModelRoute {
                alias: alias.clone(),
                provider: m.provider.clone(),
                model: m.model.clone(),
                scopes: m.scopes.clone(),
                default_max_tokens: m.default_max_tokens,
            },
        );
    }

    let mut budgets = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for spanned in &raw.budgets {
        let b = &spanned.value;
        let mut fail = |message: String| {
            problems.push(spanned.error(format!("budget `{}`: {message}", b.name)))
        };
        if b.name.is_empty() {
            fail("`name` must not be empty".into());
        }
        if !names.insert(b.name.clone()) {
            fail("another budget has this name".into());
        }
        let window = match b.per.as_str() {
            "day" => Some(BudgetWindow::Day),
            "month" => Some(BudgetWindow::Month),
            other => {
                fail(format!("`per` must be day or month, found `{other}`"));
                None
            }
        };
        let max_cost = match b.max_cost.as_ref().map(|c| pricing::parse_decimal(&c.0)) {
            Some(Ok(v)) => Some(v),
            Some(Err(message)) => {
                fail(format!("`max_cost`: {message}"));
                None
            }
            None => None,
        };
        if max_cost.is_none() && b.max_tokens.is_none() {
            fail("needs `max_cost` (US dollars), `max_tokens`, or both".into());
        }
        let pattern = |value: &Option<String>, fail: &mut dyn FnMut(String)| {
            value
                .as_deref()
                .map(Pattern::compile)
                .transpose()
                .unwrap_or_else(|e| {
                    fail(e);
                    None
                })
        };
        let user = pattern(&b.user, &mut fail);
        let role = pattern(&b.role, &mut fail);
        for alias in b.models.iter().flatten() {
            if !models.contains_key(alias) {
                fail(format!(
                    "`models` names `{alias}`, which is not in ai.models"
                ));
            }
        }
        if let Some(window) = window {
            budgets.push(BudgetRule {
                name: b.name.clone(),
                window,
                user,
                role,
                models: b.models.clone(),
                subject: if b.shared.unwrap_or(false) {
                    BudgetSubject::Shared
                } else {
                    BudgetSubject::EachUser
                },
                max_cost_microdollars: max_cost,
                max_tokens: b.max_tokens,
            });
        }
    }
    // A cost budget cannot charge a request whose model has no price: refuse the profile
    // rather than let those requests through uncounted.
    if let Some(budget) = budgets.iter().find(|b| b.max_cost_microdollars.is_some()) {
        for route in models.values() {
            let applies = budget
                .models
                .as_ref()
                .is_none_or(|list| list.contains(&route.alias));
            if applies && !prices.contains_key(&route.model) && !prices.contains_key(&route.alias) {
                problems.push(located(
                    format!("ai.models.{}", route.alias),
                    format!(
                        "budget `{}` limits cost, but model `{}` has no price in ai.prices; \
                         add `ai.prices.{}` so its requests can be charged",
                        budget.name, route.model, route.model
                    ),
                ));
            }
        }
    }

    for tool in &raw.provider_tools {
        if tool.is_empty() || !tool.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(located(
                "ai.provider_tools".into(),
                format!("`{tool}` is not a tool type (letters, digits and `_`, as `web_search`)"),
            ));
        }
    }

    let max_draining_streams = raw.max_draining_streams.unwrap_or(DEFAULT_MAX_DRAINING);
    if !MAX_DRAINING.contains(&max_draining_streams) {
        problems.push(located(
            "ai.max_draining_streams".into(),
            format!(
                "must be between {} and {}, found {max_draining_streams}",
                MAX_DRAINING.start(),
                MAX_DRAINING.end()
            ),
        ));
    }

    AiConfig {
        scopes,
        providers,
        models,
        prices,
        budgets,
        provider_tools: raw.provider_tools,
        max_draining_streams,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Headers Warden sets on upstream requests itself; a profile may not override them.
fn is_reserved_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "x-api-key"
            | "x-goog-api-key"
            | "content-type"
            | "content-length"
            | "host"
    )
}

#[cfg(test)]
mod tests {
    use crate::ai::provider::ResponsesMode;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(text, "t.yaml", &|_| None)
    }

    const PROFILE: &str = "
ai:
  providers:
    anthropic: {kind: anthropic, api_key_secret: anthropic_key, timeout: 30s}
    local: {kind: openai_compatible, base_url: 'http://127.0.0.1:8000/v1/'}
  models:
    claude: {provider: anthropic, model: claude-sonnet-4-5, scopes: [ai:premium]}
    llama: {provider: local, model: llama-3.1-8b}
  prices:
    claude-sonnet-4-5: {input: 3, output: 15, cache_read: 0.30, cache_write: 3.75}
    llama-3.1-8b: {input: 0.000001, output: '0.02'}
  budgets:
    - {name: daily, per: day, max_cost: 5.50, max_tokens: 1000000}
    - {name: interns, per: month, role: intern, shared: true, max_tokens: 10}
";

    #[test]
    fn prices_are_exact_picodollars_per_token_and_cache_defaults_to_input() {
        let config = parse(PROFILE).unwrap();
        let ai = &config.ai;
        let claude = &ai.prices["claude-sonnet-4-5"];
        assert_eq!(claude.input, 3_000_000);
        assert_eq!(claude.output, 15_000_000);
        assert_eq!(claude.cache_read, 300_000);
        assert_eq!(claude.cache_write, 3_750_000);
        let llama = &ai.prices["llama-3.1-8b"];
        assert_eq!(llama.input, 1);
        assert_eq!(llama.output, 20_000);
        assert_eq!(llama.cache_read, 1);
        assert_eq!(
            ai.providers["local"].base_url.as_deref(),
            Some("http://127.0.0.1:8000/v1")
        );
        assert_eq!(ai.budgets[0].max_cost_microdollars, Some(5_500_000));
        assert_eq!(ai.scopes, ["ai:chat"]);
    }

    #[test]
    fn mistakes_are_reported_together_with_their_keys() {
        let err = parse(
            "
ai:
  providers:
    p: {kind: openai, base_url: ftp://x, headers: {Authorization: x}}
  models:
    m: {provider: nowhere, model: x}
  prices:
    x: {input: 1.1234567, output: -1}
  budgets:
    - {name: b, per: week}
",
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "ai.providers.p: `base_url` must be an http",
            "header `Authorization` is set by Warden",
            "t.yaml:6:",
            "names provider `nowhere`",
            "ai.prices.x.input: at most 6 decimal places",
            "ai.prices.x.output",
            "budget `b`: `per` must be day or month",
            "budget `b`: needs `max_cost`",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
    }

    #[test]
    fn responses_settings_are_read_and_checked() {
        let config = parse(
            "ai:
  provider_tools: [web_search]
  max_draining_streams: 8
  providers:
    local: {kind: openai_compatible, base_url: http://127.0.0.1:9/v1, responses: translate,
            on_client_gone: finish}
    openai: {kind: openai}
  models:
    m: {provider: local, model: x, default_max_tokens: 32000}
",
        )
        .unwrap();
        assert_eq!(config.ai.provider_tools, ["web_search"]);
        assert_eq!(config.ai.max_draining_streams, 8);
        assert_eq!(
            parse("ai: {}\n").unwrap().ai.max_draining_streams,
            super::DEFAULT_MAX_DRAINING
        );
        assert_eq!(
            config.ai.providers["local"].responses,
            Some(ResponsesMode::Translate)
        );
        assert_eq!(config.ai.providers["openai"].responses, None);
        assert!(config.ai.providers["local"].finish_when_client_gone);
        assert!(!config.ai.providers["openai"].finish_when_client_gone);
        assert_eq!(config.ai.models["m"].default_max_tokens, Some(32000));
        let text = parse(
            "ai:
  provider_tools: [\"web search\"]
  max_draining_streams: 0
  providers:
    p: {kind: openai, responses: sometimes, on_client_gone: linger}
  models:
    m: {provider: p, model: x, default_max_tokens: 0}
",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "ai.providers.p: `responses` must be `relay` or `translate`, found `sometimes`",
            "ai.providers.p: `on_client_gone` must be `close` or `finish`, found `linger`",
            "model `m`: `default_max_tokens` must be at least 1",
            "ai.provider_tools: `web search` is not a tool type",
            "ai.max_draining_streams: must be between 1 and 10000, found 0",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
    }

    #[test]
    fn answer_and_event_limits_default_and_are_bounded() {
        let config = parse(PROFILE).unwrap();
        let anthropic = &config.ai.providers["anthropic"];
        assert_eq!(anthropic.max_answer_bytes, 64 << 20);
        assert_eq!(anthropic.max_event_bytes, 16 << 20);
        let config = parse(
            "ai:\n  providers:\n    p: {kind: openai, max_answer_bytes: 1KiB, max_event_bytes: 1GiB}\n",
        )
        .unwrap();
        assert_eq!(config.ai.providers["p"].max_answer_bytes, 1024);
        assert_eq!(config.ai.providers["p"].max_event_bytes, 1 << 30);

        let err = parse(
            "ai:\n  providers:\n    p: {kind: openai, max_answer_bytes: 1023, max_event_bytes: 1073741825}\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "ai.providers.p: `max_answer_bytes` must be between 1KiB and 1GiB, found 1023 bytes",
            "ai.providers.p: `max_event_bytes` must be between 1KiB and 1GiB, found 1073741825 bytes",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
    }

    #[test]
    fn a_cost_budget_needs_a_price_for_every_model_it_covers() {
        let err = parse(
            "
ai:
  providers: {p: {kind: openai}}
  models: {m: {provider: p, model: gpt-x}}
  budgets: [{name: b, per: day, max_cost: 1}]
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("add `ai.prices.gpt-x`"), "{err}");
        // A token budget needs no price.
        parse(
            "
ai:
  providers: {p: {kind: openai}}
  models: {m: {provider: p, model: gpt-x}}
  budgets: [{name: b, per: day, max_tokens: 100}]
",
        )
        .unwrap();
    }
}
