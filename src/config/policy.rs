//! The policy sections of the profile: `rate_limits`, `quotas`, `hooks`, and the per-server
//! and per-tool `rate_limit` keys. Parsed into the types `policy/` runs on; every pattern
//! and rate is compiled here, at load, so a bad one fails `warden config check` with the
//! hook's name and line instead of failing a call.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use warden_actors::redact::Redacted;

use super::units::Dur;
use super::yaml::{Located, Spanned};
use crate::policy::hooks::{
    ArgumentCheck, ArgumentRule, Handler, Hook, HookEvent, Matcher, OnError, Pattern,
};
use crate::policy::limits::{LimitsConfig, Rate, Surface};
use crate::policy::quotas::{QuotaRule, QuotaWindow};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub mcp: Option<Spanned<String>>,
    pub ai: Option<Spanned<String>>,
    pub oauth: Option<Spanned<String>>,
    pub admin: Option<Spanned<String>>,
    pub skills: Option<Spanned<String>>,
    pub burst_multiplier: Option<f64>,
    #[serde(default)]
    pub tier_multipliers: BTreeMap<String, f64>,
    pub sweep_interval: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub name: String,
    /// `day`, `hour`, `week` or `month`.
    pub per: String,
    pub limit: u64,
    #[serde(default)]
    pub r#match: RawMatch,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub server: Option<String>,
    pub tool: Option<String>,
    pub principal: Option<String>,
    pub role: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub name: String,
    pub event: String,
    #[serde(default)]
    pub r#match: RawMatch,
    pub timeout: Option<Dur>,
    pub on_error: Option<String>,
    // Exactly one handler:
    pub deny: Option<String>,
    pub command: Option<RawCommand>,
    pub webhook: Option<RawWebhook>,
    pub secret_scan: Option<RawSecretScan>,
    pub argument_rules: Option<Vec<RawArgumentRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommand {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    /// HMAC key for `X-Warden-Signature`; write it as `${WEBHOOK_SECRET}`.
    pub secret: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretScan {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArgumentRule {
    pub path: String,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub required: Option<bool>,
}

/// Everything `policy/` needs from the profile, validated.
#[derive(Clone, Debug, Default)]
pub struct PolicyConfig {
    pub limits: LimitsConfig,
    pub quotas: Vec<QuotaRule>,
    pub hooks: Vec<Hook>,
}

/// Builds the policy configuration. `server_rates` and `tool_rates` come from the
/// servers' own `rate_limit` keys.
pub fn build(
    rate_limits: &RawRateLimits,
    server_rates: Vec<(String, Spanned<String>)>,
    tool_rates: Vec<((String, String), Spanned<String>)>,
    quotas: &[Spanned<RawQuota>],
    hooks: &[Spanned<RawHook>],
) -> Result<PolicyConfig, Vec<Located>> {
    let mut problems = Vec::new();
    let mut rate = |spanned: &Spanned<String>| match Rate::parse(&spanned.value) {
        Ok(rate) => Some(rate),
        Err(message) => {
            problems.push(spanned.error(message));
            None
        }
    };
    let mut limits = LimitsConfig {
        burst_multiplier: rate_limits.burst_multiplier.unwrap_or(1.0),
        tier_multipliers: rate_limits.tier_multipliers.clone(),
        ..LimitsConfig::default()
    };
    if let Some(interval) = &rate_limits.sweep_interval {
        limits.sweep_interval = interval.0;
    }
    for (surface, value) in [
        (Surface::Mcp, &rate_limits.mcp),
        (Surface::Ai, &rate_limits.ai),
        (Surface::OAuth, &rate_limits.oauth),
        (Surface::Admin, &rate_limits.admin),
        (Surface::Skills, &rate_limits.skills),
    ] {
        if let Some(parsed) = value.as_ref().and_then(&mut rate) {
            limits.surfaces.insert(surface, parsed);
        }
    }
    for (server, value) in &server_rates {
        if let Some(parsed) = rate(value) {
            limits.servers.insert(server.clone(), parsed);
        }
    }
    for (key, value) in &tool_rates {
        if let Some(parsed) = rate(value) {
            limits.tools.insert(key.clone(), parsed);
        }
    }
    if limits.sweep_interval < Duration::from_secs(1) {
        problems.push(Located {
            mark: Default::default(),
            path: "rate_limits.sweep_interval".into(),
            message: format!("must be at least 1s, found {:?}", limits.sweep_interval),
        });
    }
    if !(limits.burst_multiplier.is_finite() && limits.burst_multiplier >= 1.0) {
        problems.push(Located {
            mark: Default::default(),
            path: "rate_limits.burst_multiplier".into(),
            message: format!("must be at least 1, found {}", limits.burst_multiplier),
        });
    }
    for (tier, multiplier) in &limits.tier_multipliers {
        if !(multiplier.is_finite() && *multiplier > 0.0) {
            problems.push(Located {
                mark: Default::default(),
                path: format!("rate_limits.tier_multipliers.{tier}"),
                message: format!("must be greater than 0, found {multiplier}"),
            });
        }
    }

    let mut quota_rules = Vec::new();
    for spanned in quotas {
        let raw = &spanned.value;
        let window = match raw.per.as_str() {
            "hour" => Some(QuotaWindow::Hour),
            "day" => Some(QuotaWindow::Day),
            "week" => Some(QuotaWindow::Week),
            "month" => Some(QuotaWindow::Month),
            other => {
                problems.push(spanned.error(format!(
                    "quota `{}`: `per` must be hour, day, week or month, found `{other}`",
                    raw.name
                )));
                None
            }
        };
        match (window, matcher(&raw.r#match)) {
            (Some(window), Ok(matcher)) => quota_rules.push(QuotaRule {
                name: raw.name.clone(),
                window,
                limit: raw.limit,
                matcher,
            }),
            (_, Err(message)) => {
                problems.push(spanned.error(format!("quota `{}`: {message}", raw.name)))
            }
            _ => {}
        }
    }

    let mut compiled = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for spanned in hooks {
        match hook(&spanned.value) {
            Ok(hook) => {
                if !names.insert(hook.name.clone()) {
                    problems.push(
                        spanned.error(format!("hook `{}`: another hook has this name", hook.name)),
                    );
                }
                compiled.push(hook);
            }
            Err(message) => {
                problems.push(spanned.error(format!("hook `{}`: {message}", spanned.value.name)))
            }
        }
    }

    if problems.is_empty() {
        Ok(PolicyConfig {
            limits,
            quotas: quota_rules,
            hooks: compiled,
        })
    } else {
        Err(problems)
    }
}

fn pattern(value: &Option<String>) -> Result<Option<Pattern>, String> {
    value.as_deref().map(Pattern::compile).transpose()
}

fn matcher(raw: &RawMatch) -> Result<Matcher, String> {
    Ok(Matcher {
        server: pattern(&raw.server)?,
        tool: pattern(&raw.tool)?,
        principal: pattern(&raw.principal)?,
        role: pattern(&raw.role)?,
        scope: pattern(&raw.scope)?,
    })
}

fn hook(raw: &RawHook) -> Result<Hook, String> {
    let event = HookEvent::parse(&raw.event).ok_or_else(|| {
        let names: Vec<&str> = HookEvent::ALL.iter().map(|e| e.as_str()).collect();
        format!(
            "unknown event `{}`; expected one of {}",
            raw.event,
            names.join(", ")
        )
    })?;
    let on_error = match raw.on_error.as_deref() {
        None | Some("deny") => OnError::Deny,
        Some("allow") => OnError::Allow,
        Some(other) => return Err(format!("`on_error` must be allow or deny, found `{other}`")),
    };
    let mut handlers = Vec::new();
    if let Some(message) = &raw.deny {
        handlers.push(Handler::Deny {
            message: message.clone(),
        });
    }
    if let Some(command) = &raw.command {
        handlers.push(Handler::Command {
            program: command.program.clone(),
            args: command.args.clone(),
            env: command.env.clone(),
        });
    }
    if let Some(webhook) = &raw.webhook {
        if !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://")) {
            return Err(format!(
                "webhook url must be http:// or https://, found `{}`",
                webhook.url
            ));
        }
        handlers.push(Handler::Webhook {
            url: webhook.url.clone(),
            secret: webhook.secret.clone().map(Redacted::new),
            headers: webhook.headers.clone(),
        });
    }
    if raw.secret_scan.is_some() {
        handlers.push(Handler::SecretScan);
    }
    if let Some(rules) = &raw.argument_rules {
        let mut compiled = Vec::new();
        for rule in rules {
            let checks = [
                rule.prefix.clone().map(ArgumentCheck::PathPrefix),
                rule.regex
                    .as_deref()
                    .map(Pattern::compile)
                    .transpose()?
                    .map(ArgumentCheck::Regex),
                rule.one_of.clone().map(ArgumentCheck::OneOf),
                rule.required
                    .filter(|r| *r)
                    .map(|_| ArgumentCheck::Required),
            ];
            let mut any = false;
            for check in checks.into_iter().flatten() {
                any = true;
                compiled.push(ArgumentRule {
                    path: rule.path.clone(),
                    check,
                });
            }
            if !any {
                return Err(format!(
                    "argument rule for `{}` needs one of prefix, regex, one_of or required",
                    rule.path
                ));
            }
        }
        handlers.push(Handler::ArgumentRules(compiled));
    }
    let handler = match handlers.len() {
        1 => handlers.remove(0),
        0 => {
            return Err(
                "needs a handler: one of deny, command, webhook, secret_scan or argument_rules"
                    .into(),
            );
        }
        _ => return Err("has more than one handler; give each its own hook".into()),
    };
    Ok(Hook {
        name: raw.name.clone(),
        event,
        matcher: matcher(&raw.r#match)?,
        handler,
        timeout: raw.timeout.map_or(Duration::from_secs(5), |d| d.0),
        on_error,
    })
}
