//! Credential patterns: what a leaked cloud key, private key or API token looks like. One
//! documented, tested set, used by the `secret_scan` hook (block or redact) and available
//! to the audit trail's redaction.
//!
//! Each pattern names its kind, so a refusal can say *what* was found without repeating
//! the value.

use std::sync::OnceLock;

use regex::Regex;

/// A named pattern.
pub struct CredentialPattern {
    pub kind: &'static str,
    pub regex: Regex,
}

/// (kind, pattern) — documented in docs/policy.md; keep the two in step.
pub const PATTERNS: &[(&str, &str)] = &[
    (
        "aws_access_key_id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    ),
    (
        "aws_secret_access_key",
        r#"(?i)aws.{0,20}(?:secret|private).{0,20}['"=:\s]\s*[0-9a-zA-Z/+]{40}\b"#,
    ),
    (
        "private_key",
        r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY-----",
    ),
    (
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b",
    ),
    ("gitlab_token", r"\bglpat-[A-Za-z0-9_-]{20,}\b"),
    ("slack_token", r"\bxox[abposr]-[0-9A-Za-z-]{10,}\b"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
    ("stripe_key", r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}\b"),
    ("anthropic_api_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}"),
    ("openai_api_key", r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}"),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    ),
    ("warden_api_key", r"\bwk_[A-Za-z0-9_-]{32,}"),
];

/// The compiled set (compiled once per process).
pub fn patterns() -> &'static [CredentialPattern] {
    static COMPILED: OnceLock<Vec<CredentialPattern>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        PATTERNS
            .iter()
            // The patterns are constants checked by the tests below.
            .filter_map(|(kind, pattern)| {
                Regex::new(pattern)
                    .ok()
                    .map(|regex| CredentialPattern { kind, regex })
            })
            .collect()
    })
}

/// The kinds of credential found in `text`, in pattern order, without duplicates.
pub fn find(text: &str) -> Vec<&'static str> {
    patterns()
        .iter()
        .filter(|p| p.regex.is_match(text))
        .map(|p| p.kind)
        .collect()
}

/// `text` with every credential replaced by `[REDACTED:<kind>]`; `None` when nothing
/// matched.
pub fn redact(text: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for pattern in patterns() {
        let current = out.as_deref().unwrap_or(text);
        if pattern.regex.is_match(current) {
            let replaced = pattern
                .regex
                .replace_all(current, format!("[REDACTED:{}]", pattern.kind).as_str())
                .into_owned();
            out = Some(replaced);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(patterns().len(), PATTERNS.len());
    }

    #[test]
    fn finds_and_redacts_common_credentials() {
        // Assembled at run time so the repository holds no private-key header that
        // secret scanners would flag.
        let private_key = format!("-----BEGIN OPENSSH {}-----\nabc", "PRIVATE KEY");
        let cases = [
            ("key AKIAIOSFODNN7EXAMPLE here", "aws_access_key_id"),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "aws_secret_access_key",
            ),
            (private_key.as_str(), "private_key"),
            ("ghp_0123456789abcdefghijklmnopqrstuvwxyzAB", "github_token"),
            ("xoxb-1234567890-abcdefghij", "slack_token"),
            ("AIzaSyA0123456789abcdefghijklmnopqrstuv", "google_api_key"),
            (
                "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
                "anthropic_api_key",
            ),
            (
                "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl",
                "jwt",
            ),
        ];
        for (text, kind) in cases {
            assert!(
                find(text).contains(&kind),
                "{kind} not found in {text:?}: {:?}",
                find(text)
            );
            let redacted = redact(text).unwrap_or_default();
            assert!(
                redacted.contains(&format!("[REDACTED:{kind}]")),
                "{redacted}"
            );
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "hello world",
            "the file AKIA.txt",
            "sk-short",
            "eyJ-not-a-token",
        ] {
            assert!(find(text).is_empty(), "{text}: {:?}", find(text));
            assert!(redact(text).is_none());
        }
    }
}
