//! Passwords: Argon2id at OWASP's parameters (the crate's defaults: m = 19 MiB, t = 2,
//! p = 1), hashed and verified on the blocking pool under a semaphore, since each
//! operation holds 19 MiB and tens of milliseconds of CPU. Verifying a user who does not
//! exist still runs one verification (against a fixed hash), so timing does not tell
//! which usernames exist.

use std::sync::{Arc, OnceLock};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use thiserror::Error;
use tokio::sync::Semaphore;

use super::secret::Redacted;

/// Shortest password `warden user add` accepts.
pub const MIN_LENGTH: usize = 8;
/// Longest password accepted (longer inputs are refused before hashing).
pub const MAX_LENGTH: usize = 1024;

#[derive(Debug, Error)]
pub enum PasswordError {
    #[error("passwords must be at least {MIN_LENGTH} characters")]
    TooShort,
    #[error("passwords must be at most {MAX_LENGTH} bytes")]
    TooLong,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the password hashing pool is gone")]
    Pool,
}

/// Hashes a password (blocking; call through [`Passwords`] on a runtime).
pub fn hash_blocking(password: &[u8]) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Verifies a password against a PHC string (blocking).
pub fn verify_blocking(password: &[u8], hash: &str) -> bool {
    Argon2::default().verify_password(password, hash).is_ok()
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking(b"warden timing equaliser").unwrap_or_default())
}

/// The bounded hashing pool.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
}

impl Passwords {
    pub fn new(concurrency: usize) -> Passwords {
        Passwords {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    pub fn check_policy(password: &str) -> Result<(), PasswordError> {
        if password.chars().count() < MIN_LENGTH {
            return Err(PasswordError::TooShort);
        }
        if password.len() > MAX_LENGTH {
            return Err(PasswordError::TooLong);
        }
        Ok(())
    }

    pub async fn hash(&self, password: Redacted<String>) -> Result<String, PasswordError> {
        Passwords::check_policy(password.expose())?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Pool)?;
        tokio::task::spawn_blocking(move || hash_blocking(password.expose().as_bytes()))
            .await
            .map_err(|_| PasswordError::Pool)?
    }

    /// True when `password` matches `hash`; with no hash (no such user) it spends the
    /// same time and answers false.
    pub async fn verify(
        &self,
        password: Redacted<String>,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        if password.expose().len() > MAX_LENGTH {
            return Ok(false);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Pool)?;
        tokio::task::spawn_blocking(move || match hash {
            Some(hash) => verify_blocking(password.expose().as_bytes(), &hash),
            None => {
                verify_blocking(password.expose().as_bytes(), dummy_hash());
                false
            }
        })
        .await
        .map_err(|_| PasswordError::Pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let hash = hash_blocking(b"correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_blocking(b"correct horse", &hash));
        assert!(!verify_blocking(b"wrong horse", &hash));
        assert!(!verify_blocking(b"x", "not a hash"));
        assert!(matches!(
            Passwords::check_policy("short"),
            Err(PasswordError::TooShort)
        ));
    }
}
