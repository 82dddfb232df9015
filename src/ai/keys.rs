//! Provider keys, read from the secret store and kept in memory as the ready-made
//! (sensitive) headers that carry them, so a model request costs no database round trip
//! and no decryption.
//!
//! An entry is dropped when its secret changes (`warden secret set` announces the change
//! on `warden_secrets`, which `serve` relays here), when the listener reconnects (a change
//! may have been missed), when the profile is reloaded, and after [`KEY_TTL`] in any case.
//! Errors name the provider and the secret, never the value.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};
use thiserror::Error;

use super::provider::Provider;
use crate::secrets::SecretStore;
use crate::secrets::store::StoreError;

/// The longest a key is used without being read again.
pub const KEY_TTL: Duration = Duration::from_secs(300);

/// Headers that authenticate one provider.
pub type AuthHeaders = Arc<[(HeaderName, HeaderValue)]>;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "provider `{provider}` has no key: secret `{secret}` is not in the secret store \
         (`warden secret set {secret}`)"
    )]
    Missing { provider: String, secret: String },
    #[error("provider `{provider}`: secret `{secret}` cannot be read: {reason}")]
    Unavailable {
        provider: String,
        secret: String,
        reason: String,
    },
    #[error("provider `{provider}`: secret `{secret}` cannot be used as a key: {reason}")]
    Unusable {
        provider: String,
        secret: String,
        reason: String,
    },
}

struct Entry {
    secret: String,
    headers: AuthHeaders,
    read_at: Instant,
}

/// Provider name → its authentication headers.
#[derive(Default)]
pub struct KeyCache {
    entries: RwLock<HashMap<String, Entry>>,
}

impl KeyCache {
    /// The headers for `provider`, reading `secret` from the store when not cached.
    pub async fn headers(
        &self,
        store: &SecretStore,
        provider_name: &str,
        secret: &str,
        provider: &dyn Provider,
    ) -> Result<AuthHeaders, KeyError> {
        if let Some(entry) = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(provider_name)
            && entry.secret == secret
            && entry.read_at.elapsed() < KEY_TTL
        {
            return Ok(entry.headers.clone());
        }
        let key = store.get(secret, None).await.map_err(|e| match e {
            StoreError::NotFound(_) => KeyError::Missing {
                provider: provider_name.to_owned(),
                secret: secret.to_owned(),
            },
            other => KeyError::Unavailable {
                provider: provider_name.to_owned(),
                secret: secret.to_owned(),
                reason: other.to_string(),
            },
        })?;
        let headers: AuthHeaders = provider
            .auth_headers(&key)
            .map_err(|reason| KeyError::Unusable {
                provider: provider_name.to_owned(),
                secret: secret.to_owned(),
                reason,
            })?
            .into();
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                provider_name.to_owned(),
                Entry {
                    secret: secret.to_owned(),
                    headers: headers.clone(),
                    read_at: Instant::now(),
                },
            );
        Ok(headers)
    }

    /// Forgets every provider key read from `secret`.
    pub fn forget_secret(&self, secret: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, entry| entry.secret != secret);
    }

    /// Forgets every key.
    pub fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
