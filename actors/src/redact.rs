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

/// The secret values a child was given (its `secrets` and `user_secrets`), to take out of
/// everything it says before anyone else reads it — its answers and notifications on the
/// way to clients, its stderr on the way to Warden's log: a tool that echoes its
/// environment, or a library that prints its key in an error, must not hand the key to a
/// model or an operator's log.
#[derive(Clone, Default)]
pub struct Scrub(std::sync::Arc<[Scrubbed]>);

/// One secret as it is looked for: its value, plain and as a JSON string spells it (both
/// `Redacted`, never printed), and what replaces it.
struct Scrubbed {
    plain: Redacted<String>,
    json: Redacted<String>,
    replacement: String,
}

impl Scrub {
    /// Values shorter than this are not looked for (a secret of a few characters would
    /// blank out unrelated text, and is no secret worth the name).
    const MIN_LEN: usize = 6;

    /// `secrets`: the environment variable each value was given as, and the value.
    pub fn new(secrets: Vec<(String, Redacted<String>)>) -> Scrub {
        let kept: Vec<Scrubbed> = secrets
            .into_iter()
            .filter(|(_, value)| value.expose().len() >= Self::MIN_LEN)
            .map(|(name, value)| {
                let quoted = serde_json::Value::from(value.expose().as_str()).to_string();
                Scrubbed {
                    json: Redacted::new(quoted[1..quoted.len() - 1].to_owned()),
                    plain: value,
                    replacement: format!("[REDACTED:{name}]"),
                }
            })
            .collect();
        Scrub(kept.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every secret replaced by `[REDACTED:<variable>]`.
    pub fn apply<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        self.replace(text, |secret| &secret.plain)
    }

    /// JSON `text` with every secret replaced inside its strings, as written there
    /// (JSON-escaped); the result is JSON still (the replacement needs no escaping).
    pub fn apply_json<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        self.replace(text, |secret| &secret.json)
    }

    fn replace<'a>(
        &self,
        text: &'a str,
        spelled: impl Fn(&Scrubbed) -> &Redacted<String>,
    ) -> std::borrow::Cow<'a, str> {
        let mut text = std::borrow::Cow::Borrowed(text);
        for secret in self.0.iter() {
            let needle = spelled(secret).expose().as_str();
            if text.contains(needle) {
                text = std::borrow::Cow::Owned(text.replace(needle, &secret.replacement));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let scrubbed = quoted.apply_json(&json);
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
