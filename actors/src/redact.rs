//! [`Redacted`]: a value that must never be printed. `Debug` and `Display` show
//! `[redacted]`; the value is reached only through [`Redacted::expose`], which makes every
//! use greppable. Secrets, tokens and keys travel in this wrapper everywhere in Warden.
//! [`Scrub`] takes the secrets a child process was given out of what it says.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Self {
        Redacted(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Secret values shorter than this many characters are not searched for: they would
/// match all over ordinary text (the audit scrubber and [`Scrub`] both keep to it).
pub const MIN_SECRET_LEN: usize = 6;

/// The secret values a child was given (its `secrets` and `user_secrets`), to take out of
/// everything it says before anyone else reads it — its answers and notifications on the
/// way to clients, its stderr on the way to Warden's log: a tool that echoes its
/// environment, or a library that prints its key in an error, must not hand the key to a
/// model or an operator's log.
///
/// One search finds every secret in both spellings it can take — plain, and as a JSON
/// string writes it — the longest match first, so a secret that begins another never
/// leaves the other's tail behind. The replacement needs no JSON escaping, so JSON stays
/// JSON.
#[derive(Clone, Default)]
pub struct Scrub(Option<std::sync::Arc<Needles>>);

struct Needles {
    automaton: aho_corasick::AhoCorasick,
    /// The replacement of each pattern, by pattern index.
    replacements: Vec<String>,
}

impl Scrub {
    /// `secrets`: the environment variable each value was given as, and the value.
    /// Values under [`MIN_SECRET_LEN`] characters are left out, with a warning naming the
    /// variable.
    pub fn new(secrets: Vec<(String, Redacted<String>)>) -> Scrub {
        let mut needles = Vec::new();
        let mut replacements = Vec::new();
        for (name, value) in secrets {
            let plain = value.expose();
            if plain.chars().count() < MIN_SECRET_LEN {
                tracing::warn!(
                    variable = %name,
                    "a secret under {MIN_SECRET_LEN} characters is not taken out of the server's output"
                );
                continue;
            }
            let quoted = serde_json::Value::from(plain.as_str()).to_string();
            let escaped = quoted[1..quoted.len() - 1].to_owned();
            let replacement = format!("[REDACTED:{name}]");
            if escaped != *plain {
                needles.push(escaped);
                replacements.push(replacement.clone());
            }
            needles.push(plain.clone());
            replacements.push(replacement);
        }
        if needles.is_empty() {
            return Scrub(None);
        }
        let automaton = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&needles);
        match automaton {
            Ok(automaton) => Scrub(Some(std::sync::Arc::new(Needles {
                automaton,
                replacements,
            }))),
            // Only a pattern set past the automaton's size limits fails: far more
            // secrets than a server is given. Said, never silent.
            Err(error) => {
                tracing::error!(%error, "the server's secrets cannot be searched for in its output");
                Scrub(None)
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// `text` (plain or JSON) with every secret replaced by `[REDACTED:<variable>]`;
    /// borrowed, without a copy, when it holds none.
    pub fn apply<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let Some(needles) = &self.0 else {
            return std::borrow::Cow::Borrowed(text);
        };
        if !needles.automaton.is_match(text) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        needles
            .automaton
            .replace_all_with(text, &mut out, |found, _, dst| {
                dst.push_str(&needles.replacements[found.pattern().as_usize()]);
                true
            });
        std::borrow::Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_that_begins_another_leaves_none_of_it() {
        let scrub = Scrub::new(vec![
            ("SHORT".into(), Redacted::new("abcdef".into())),
            ("LONG".into(), Redacted::new("abcdef123456".into())),
        ]);
        assert_eq!(
            scrub.apply("x abcdef123456 y abcdef"),
            "x [REDACTED:LONG] y [REDACTED:SHORT]"
        );
    }

    #[test]
    fn scrub_replaces_the_secrets_a_child_was_given() {
        let scrub = Scrub::new(vec![
            ("API_TOKEN".into(), Redacted::new("s3cr3t-value".into())),
            ("SHORT".into(), Redacted::new("ab".into())),
        ]);
        assert_eq!(
            scrub.apply("auth s3cr3t-value failed (s3cr3t-value)"),
            "auth [REDACTED:API_TOKEN] failed ([REDACTED:API_TOKEN])"
        );
        // Too short to look for: left alone rather than blanking unrelated text.
        assert_eq!(scrub.apply("about"), "about");
        assert!(matches!(
            scrub.apply("clean"),
            std::borrow::Cow::Borrowed(_)
        ));
        // In JSON, as a string spells it.
        let quoted = Scrub::new(vec![("PW".into(), Redacted::new("pa\"ss-word".into()))]);
        let json = serde_json::json!({"text": "pw is pa\"ss-word"}).to_string();
        let scrubbed = quoted.apply(&json);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&scrubbed).unwrap()["text"],
            "pw is [REDACTED:PW]"
        );
    }

    #[test]
    fn redacted_values_never_print() {
        let secret = Redacted::new("hunter2".to_string());
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(secret.expose(), "hunter2");
    }
}
