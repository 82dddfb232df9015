//! The master key: 32 bytes that encrypt secrets and signing keys at rest (XChaCha20-
//! Poly1305, random 192-bit nonces, so no nonce bookkeeping is needed).
//!
//! Where it comes from, first match wins:
//! 1. `WARDEN_MASTER_KEY` (64 hex characters or base64 of 32 bytes);
//! 2. `server.master_key_file` in the profile;
//! 3. the systemd credential `warden-master-key` (`LoadCredential=` → `$CREDENTIALS_DIRECTORY`);
//! 4. `<state_dir>/master.key`, generated with mode 0600 on first start unless
//!    `server.require_master_key` is set — convenient for development, logged loudly.
//!
//! The database keeps an encryption of a fixed text under the key
//! (`warden_instance.master_key_check`), so starting with a different key fails at once
//! with a clear message instead of failing later on every secret.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use thiserror::Error;

const NONCE_LEN: usize = 24;
const CHECK_TEXT: &[u8] = b"warden master key check v1";
pub const CREDENTIAL_NAME: &str = "warden-master-key";
pub const STATE_FILE: &str = "master.key";

#[derive(Debug, Error)]
pub enum MasterKeyError {
    #[error(
        "{source_name} does not hold a master key: expected 64 hex characters or base64 of 32 bytes"
    )]
    Malformed { source_name: String },
    #[error("cannot read the master key from {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write a new master key to {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "no master key given and `server.require_master_key` is set: provide WARDEN_MASTER_KEY, \
         `server.master_key_file`, or the systemd credential `warden-master-key`"
    )]
    Required,
    #[error(
        "the master key does not match the one this database was set up with; \
         start Warden with the original key (it decrypts the stored secrets and signing keys)"
    )]
    WrongKey,
    #[error("decryption failed: the data was altered or sealed under another key")]
    Decrypt,
}

/// The key itself. `Debug` never shows it; the bytes are wiped on drop.
pub struct MasterKey {
    key: [u8; 32],
    /// Where it came from, for the start-up log line.
    pub origin: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("key", &"[redacted]")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // Volatile writes so the wipe is not optimised away.
        for byte in self.key.iter_mut() {
            // SAFETY: writing a valid u8 through a valid, aligned &mut.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

impl MasterKey {
    pub fn from_bytes(key: [u8; 32], origin: impl Into<String>) -> Self {
        MasterKey {
            key,
            origin: origin.into(),
        }
    }

    /// Finds the key as described in the module doc.
    pub fn load(
        state_dir: &Path,
        key_file: Option<&Path>,
        require: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<MasterKey, MasterKeyError> {
        if let Some(text) = env("WARDEN_MASTER_KEY").filter(|t| !t.trim().is_empty()) {
            return parse_key(&text, "WARDEN_MASTER_KEY");
        }
        if let Some(path) = key_file {
            return read_key_file(path);
        }
        if let Some(dir) = env("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join(CREDENTIAL_NAME);
            if path.exists() {
                return read_key_file(&path);
            }
        }
        let path = state_dir.join(STATE_FILE);
        if path.exists() {
            return read_key_file(&path);
        }
        if require {
            return Err(MasterKeyError::Required);
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|error| MasterKeyError::Write {
                path: path.clone(),
                error,
            })?;
        file.write_all(hex::encode(key).as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|error| MasterKeyError::Write {
                path: path.clone(),
                error,
            })?;
        tracing::warn!(
            path = %path.display(),
            "generated a new master key in the state directory; fine for development, but in production \
             provide it through WARDEN_MASTER_KEY, server.master_key_file or a systemd credential, and back it up"
        );
        Ok(MasterKey::from_bytes(
            key,
            format!("generated {}", path.display()),
        ))
    }

    /// Encrypts `plaintext`; `context` binds the ciphertext to its purpose (a secret's
    /// name, say) so a ciphertext cannot be moved to another row and still decrypt.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            // Encryption fails only for inputs beyond ~256 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts what [`MasterKey::seal`] produced with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, MasterKeyError> {
        if sealed.len() < NONCE_LEN {
            return Err(MasterKeyError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        XChaCha20Poly1305::new((&self.key).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map_err(|_| MasterKeyError::Decrypt)
    }

    /// `value` as JSON, sealed ([`MasterKey::seal`]): state Warden hands out and takes
    /// back (form state, cookies, passkey challenges, sign-in links) without storing it.
    pub fn seal_json<T: serde::Serialize>(&self, value: &T, context: &[u8]) -> Vec<u8> {
        // Serialising Warden's own plain structs cannot fail.
        let plain = serde_json::to_vec(value).unwrap_or_default();
        self.seal(&plain, context)
    }

    /// What [`MasterKey::seal_json`] sealed with the same `context`; `None` for anything
    /// else (altered, sealed for another purpose or under another key, not that shape).
    pub fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        sealed: &[u8],
        context: &[u8],
    ) -> Option<T> {
        let plain = self.open(sealed, context).ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// The value stored in `warden_instance.master_key_check`.
    pub fn check_value(&self) -> Vec<u8> {
        self.seal(CHECK_TEXT, b"master-key-check")
    }

    /// Verifies a stored check value.
    pub fn verify_check_value(&self, stored: &[u8]) -> Result<(), MasterKeyError> {
        match self.open(stored, b"master-key-check") {
            Ok(text) if text == CHECK_TEXT => Ok(()),
            _ => Err(MasterKeyError::WrongKey),
        }
    }
}

fn read_key_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
    let text = std::fs::read_to_string(path).map_err(|error| MasterKeyError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the master key file is readable by group or others; chmod 600 it");
    }
    parse_key(&text, &path.display().to_string())
}

fn parse_key(text: &str, source_name: &str) -> Result<MasterKey, MasterKeyError> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).ok()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .or_else(|| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text)
                    .ok()
            })
    };
    let key: [u8; 32] =
        bytes
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| MasterKeyError::Malformed {
                source_name: source_name.to_owned(),
            })?;
    Ok(MasterKey::from_bytes(key, source_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let first = MasterKey::load(dir.path(), None, false, &|_| None).unwrap();
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = MasterKey::load(dir.path(), None, false, &|_| None).unwrap();
        let sealed = first.seal(b"value", b"ctx");
        assert_eq!(second.open(&sealed, b"ctx").unwrap(), b"value");
    }

    #[test]
    fn required_key_is_not_generated() {
        let dir = tempfile::tempdir().unwrap();
        let err = MasterKey::load(dir.path(), None, true, &|_| None).unwrap_err();
        assert!(matches!(err, MasterKeyError::Required));
    }

    #[test]
    fn context_binds_ciphertext() {
        let key = MasterKey::from_bytes([7; 32], "test");
        let sealed = key.seal(b"value", b"secret:a");
        assert!(key.open(&sealed, b"secret:b").is_err());
        let other = MasterKey::from_bytes([8; 32], "test");
        assert!(matches!(
            other.verify_check_value(&key.check_value()),
            Err(MasterKeyError::WrongKey)
        ));
    }

    #[test]
    fn env_key_in_hex_or_base64() {
        let hex_key = "11".repeat(32);
        let key = MasterKey::load(Path::new("/nonexistent"), None, true, &|n| {
            (n == "WARDEN_MASTER_KEY").then(|| hex_key.clone())
        })
        .unwrap();
        assert_eq!(key.origin, "WARDEN_MASTER_KEY");
        assert!(format!("{key:?}").contains("[redacted]"));
        let err = parse_key("short", "X").unwrap_err();
        assert!(err.to_string().contains("64 hex characters"));
    }
}
