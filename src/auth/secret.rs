//! Random credentials and how they are stored. Codes, refresh tokens, API keys and
//! client secrets are 256 random bits, so a SHA-256 of them is what the database keeps
//! (a slow hash adds nothing against a value nobody can guess); passwords, which people
//! choose, get Argon2id (`passwords`). Values travel as [`Redacted`] so they never reach
//! a log or a `Debug` print.

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use warden_actors::redact::Redacted;

/// Prefix of API keys (service accounts and the bootstrap admin token).
pub const API_KEY_PREFIX: &str = "wk_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "wr_";
/// Prefix of authorization codes.
pub const CODE_PREFIX: &str = "wc_";
/// Prefix of client secrets.
pub const CLIENT_SECRET_PREFIX: &str = "ws_";

/// `prefix` followed by 256 random bits, base64url.
pub fn generate(prefix: &str) -> Redacted<String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Redacted::new(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The SHA-256 of a credential, as stored and looked up.
pub fn hash(value: &str) -> Vec<u8> {
    Sha256::digest(value.as_bytes()).to_vec()
}

/// Constant-time equality of two byte strings.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A short random identifier (key ids, client ids).
pub fn short_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The part of an API key shown in listings (`wk_AbCdEfGh…`): enough to recognise it,
/// far too little to use it.
pub fn display_prefix(key: &str) -> String {
    let visible: String = key.chars().take(API_KEY_PREFIX.len() + 8).collect();
    format!("{visible}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_are_prefixed_unique_and_redacted() {
        let a = generate(API_KEY_PREFIX);
        let b = generate(API_KEY_PREFIX);
        assert!(a.expose().starts_with("wk_") && a.expose().len() == 46);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "[redacted]");
        assert!(equal(&hash(a.expose()), &hash(a.expose())));
        assert!(!equal(&hash(a.expose()), &hash(b.expose())));
        assert_eq!(display_prefix(a.expose()).chars().count(), 12);
    }

    #[test]
    fn values_of_other_lengths_are_not_equal() {
        assert!(equal(b"ab", b"ab"));
        assert!(!equal(b"ab", b"a"));
        assert!(!equal(b"a", b"ab"));
        assert!(!equal(b"", b"a"));
        assert!(equal(b"", b""));
    }
}
