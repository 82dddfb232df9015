//! Redaction: what never reaches an audit row (nor the spool on disk).
//!
//! A [`Scrubber`] replaces, with `[redacted]`:
//! - every value held in Warden's secret store (refreshed when a secret changes);
//! - matches of built-in patterns for common credential formats ([`BUILTIN_PATTERNS`]);
//! - matches of the operator's `audit.redact` patterns.
//!
//! JSON payloads stay valid JSON: replacements happen inside string values (and keys)
//! only. The common case — nothing to redact — costs one scan of the text per pattern
//! set and no allocation.
//!
//! Secret values shorter than [`MIN_SECRET_LEN`] characters are not searched for: they
//! would match all over ordinary text and make the trail unreadable.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwap;
use regex::{Regex, RegexSet};
use serde_json::Value;

use crate::redact::Redacted;

/// What a redacted span becomes.
pub const REPLACEMENT: &str = "[redacted]";

/// Secret values shorter than this are not redacted (see the module doc).
pub use crate::redact::MIN_SECRET_LEN;

/// Credential formats redacted whatever the profile says.
pub const BUILTIN_PATTERNS: &[(&str, &str)] = &[
    ("aws access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (
        "private key block",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    ),
    ("github token", r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    (
        "github fine-grained token",
        r"\bgithub_pat_[A-Za-z0-9_]{22,}\b",
    ),
    ("gitlab token", r"\bglpat-[A-Za-z0-9_\-]{20,}\b"),
    ("slack token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}\b"),
    (
        "openai or anthropic key",
        r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}\b",
    ),
    (
        "stripe key",
        r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b",
    ),
    ("google api key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    (
        "json web token",
        r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    ),
    (
        "bearer credential",
        r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/\-]{16,}=*",
    ),
];

/// The redaction rules in force. Cheap to share; replaced whole when secrets change.
pub struct Scrubber {
    patterns: Vec<Regex>,
    set: RegexSet,
    secrets: Option<AhoCorasick>,
    secret_count: usize,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret values themselves.
        f.debug_struct("Scrubber")
            .field("patterns", &self.patterns.len())
            .field("secrets", &self.secret_count)
            .finish()
    }
}

/// Where the writer reads the current rules from.
pub type ScrubberCell = Arc<ArcSwap<Scrubber>>;

impl Scrubber {
    /// The built-in patterns, then `patterns` (the profile's `audit.redact`, already
    /// compiled), and the values in `secrets`.
    pub fn new(patterns: &[Regex], secrets: &[Redacted<String>]) -> Scrubber {
        let mut all: Vec<Regex> = BUILTIN_PATTERNS
            .iter()
            .filter_map(|(_, p)| Regex::new(p).ok())
            .collect();
        all.extend(patterns.iter().cloned());
        let set =
            RegexSet::new(all.iter().map(Regex::as_str)).unwrap_or_else(|_| RegexSet::empty());
        let mut values: Vec<&str> = secrets
            .iter()
            .map(|s| s.expose().as_str())
            .filter(|s| s.chars().count() >= MIN_SECRET_LEN)
            .collect();
        values.sort_unstable();
        values.dedup();
        let secret_count = values.len();
        let secrets = (!values.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&values)
                    .ok()
            })
            .flatten();
        Scrubber {
            patterns: all,
            set,
            secrets,
            secret_count,
        }
    }

    /// Built-ins only: no profile patterns, no secrets.
    pub fn builtin() -> Scrubber {
        Scrubber::new(&[], &[])
    }

    /// A shareable cell holding `self`.
    pub fn into_cell(self) -> ScrubberCell {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// True when `text` holds something to redact.
    pub fn matches(&self, text: &str) -> bool {
        self.set.is_match(text) || self.secrets.as_ref().is_some_and(|ac| ac.is_match(text))
    }

    /// `text` with every secret and pattern match replaced.
    pub fn scrub_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.matches(text) {
            return Cow::Borrowed(text);
        }
        let mut out = match &self.secrets {
            Some(ac) => {
                let mut result = String::with_capacity(text.len());
                ac.replace_all_with(text, &mut result, |_, _, dst| {
                    dst.push_str(REPLACEMENT);
                    true
                });
                result
            }
            None => text.to_owned(),
        };
        for index in self.set.matches(&out).into_iter().collect::<Vec<_>>() {
            if let Cow::Owned(replaced) = self.patterns[index].replace_all(&out, REPLACEMENT) {
                out = replaced;
            }
        }
        Cow::Owned(out)
    }

    /// A JSON text with its strings scrubbed; still valid JSON. NUL characters, which
    /// PostgreSQL cannot store, become U+FFFD.
    pub fn scrub_json<'a>(&self, json: &'a str) -> Cow<'a, str> {
        // A string's content appears verbatim in the text unless it holds an escape, so
        // a text without backslashes and without a match has nothing to redact.
        if !json.contains('\\') && !self.matches(json) {
            return Cow::Borrowed(json);
        }
        let Ok(mut value) = serde_json::from_str::<Value>(json) else {
            // Not JSON (cannot happen for a RawValue); scrub it as text, stored as a string.
            return Cow::Owned(
                serde_json::to_string(&self.scrub_text(json)).unwrap_or_else(|_| "null".into()),
            );
        };
        if !self.scrub_value(&mut value) {
            return Cow::Borrowed(json);
        }
        Cow::Owned(serde_json::to_string(&value).unwrap_or_else(|_| "null".into()))
    }

    /// Scrubs every string (and key) in `value`; true when anything changed.
    pub fn scrub_value(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) => self.scrub_string(s),
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.scrub_value(v) | changed),
            Value::Object(map) => {
                let mut changed = false;
                let needs_rekey = map.keys().any(|k| k.contains('\0') || self.matches(k));
                if needs_rekey {
                    let old = std::mem::take(map);
                    for (mut key, mut v) in old {
                        self.scrub_string(&mut key);
                        self.scrub_value(&mut v);
                        map.insert(key, v);
                    }
                    return true;
                }
                for v in map.values_mut() {
                    changed |= self.scrub_value(v);
                }
                changed
            }
            _ => false,
        }
    }

    fn scrub_string(&self, s: &mut String) -> bool {
        let mut changed = false;
        if s.contains('\0') {
            *s = s.replace('\0', "\u{fffd}");
            changed = true;
        }
        if let Cow::Owned(scrubbed) = self.scrub_text(s) {
            *s = scrubbed;
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: &str) -> Redacted<String> {
        Redacted::new(value.to_owned())
    }

    #[test]
    fn secrets_and_patterns_are_replaced_inside_json_strings_only() {
        let scrubber = Scrubber::new(
            &[Regex::new(r"\bcustomer-\d{4}\b").unwrap()],
            &[
                secret("hunter2-secret"),
                secret("other-value-9"),
                secret("abc"),
            ],
        );
        let json = r#"{"message":"pw hunter2-secret and customer-1234","n":1,"list":["other-value-9"],"short":"abc"}"#;
        let out = scrubber.scrub_json(json);
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["message"], "pw [redacted] and [redacted]", "{out}");
        assert_eq!(value["list"][0], "[redacted]");
        assert_eq!(
            value["short"], "abc",
            "values under MIN_SECRET_LEN are kept"
        );
        assert_eq!(value["n"], 1);
    }

    #[test]
    fn escaped_secrets_are_found_too() {
        let scrubber = Scrubber::new(&[], &[secret("s3cr\"et-value")]);
        let json = serde_json::to_string(&serde_json::json!({"a": "x s3cr\"et-value y"})).unwrap();
        assert!(json.contains("\\\""));
        let out = scrubber.scrub_json(&json);
        assert!(!out.contains("et-value"), "{out}");
    }

    #[test]
    fn builtin_credential_formats_are_redacted() {
        let scrubber = Scrubber::builtin();
        for (text, leaked) in [
            ("key AKIAABCDEFGHIJKLMNOP here", "AKIAABCDEFGHIJKLMNOP"),
            ("token ghp_0123456789abcdefghijABCDEFGHIJ0123", "ghp_0123"),
            (
                "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
                "abcdefghijklmnop",
            ),
            ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "api03"),
        ] {
            let out = scrubber.scrub_text(text);
            assert!(!out.contains(leaked), "{text} -> {out}");
            assert!(out.contains(REPLACEMENT), "{text} -> {out}");
        }
        assert!(matches!(
            scrubber.scrub_text("nothing to see"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn nul_characters_become_replacement_characters() {
        let scrubber = Scrubber::builtin();
        let out = scrubber.scrub_json(r#"{"a":"x\u0000y"}"#);
        assert_eq!(out, "{\"a\":\"x\u{fffd}y\"}");
    }

    #[test]
    fn debug_never_shows_secret_values() {
        let scrubber = Scrubber::new(&[], &[secret("do-not-print-me")]);
        let text = format!("{scrubber:?}");
        assert!(!text.contains("do-not-print-me"), "{text}");
    }
}
