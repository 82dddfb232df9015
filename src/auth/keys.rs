//! Warden's signing keys: Ed25519 (`EdDSA`), each with a `kid`, the private half sealed
//! under the master key (bound to the kid) in `signing_keys`.
//!
//! The newest key that is not retired signs. `warden keys rotate` retires it and creates
//! a new one; a retired key keeps verifying, and stays in `/.well-known/jwks.json`, until
//! the latest expiry of any token it signed (`max_expires_at`, raised on every issue).
//! Each key verifies only the algorithm it was made for: the allow-list is bound to the
//! key, never taken from the token.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rand::RngCore;
use serde_json::{Value, json};
use thiserror::Error;
use tokio_postgres::GenericClient;

use crate::secrets::MasterKey;

/// The one algorithm Warden signs with.
pub const ALGORITHM: Algorithm = Algorithm::EdDSA;
const ALGORITHM_NAME: &str = "EdDSA";
/// Serialises key creation across replicas and CLI processes.
const LOCK_KEY: i64 = 0x5741_5244_454e_0010;
/// PKCS#8 v1 header of an Ed25519 private key (RFC 8410); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("no signing key is available; start `warden serve` once or run `warden keys rotate`")]
    NoActiveKey,
    #[error("signing key `{kid}` cannot be decrypted with this master key")]
    Sealed { kid: String },
    #[error("signing key `{kid}` is malformed: {reason}")]
    Malformed { kid: String, reason: String },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("database error while reading signing keys: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// One key: its public half always, its private half when it is the active key.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    pub algorithm: Algorithm,
    pub decoding: DecodingKey,
    /// The public JWK as published.
    pub jwk: Value,
    /// A retired key verifies only tokens expiring by this time (Unix seconds): the
    /// latest expiry of any token it signed. `None`: not retired.
    pub retired_until: Option<u64>,
    signing: Option<EncodingKey>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("retired_until", &self.retired_until)
            .field("signing", &self.signing.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// The keys that verify, and the one that signs.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    active: Option<Arc<Key>>,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }

    pub fn active(&self) -> Option<&Arc<Key>> {
        self.active.as_ref()
    }

    /// `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        let mut keys: Vec<&Arc<Key>> = self.keys.values().collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Signs `claims` with the active key; returns the token and the kid.
    pub fn sign<T: serde::Serialize>(
        &self,
        claims: &T,
        typ: &str,
    ) -> Result<(String, String), KeyError> {
        let key = self.active.as_ref().ok_or(KeyError::NoActiveKey)?;
        let signing = key.signing.as_ref().ok_or(KeyError::NoActiveKey)?;
        let mut header = Header::new(key.algorithm);
        header.kid = Some(key.kid.clone());
        header.typ = Some(typ.to_owned());
        let token = jsonwebtoken::encode(&header, claims, signing)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok((token, key.kid.clone()))
    }

    /// The same keys, the active one retired as of now with tokens up to `until` (Unix
    /// seconds) behind it (unit tests).
    #[cfg(test)]
    pub fn retire_active(&self, until: u64) -> KeySet {
        let mut set = KeySet::default();
        for (kid, key) in &self.keys {
            let mut key = Key::clone(key);
            if self.active.as_ref().is_some_and(|a| a.kid == *kid) {
                key.retired_until = Some(until);
                key.signing = None;
            }
            set.keys.insert(kid.clone(), Arc::new(key));
        }
        set
    }

    /// A key set holding one freshly generated key (benchmarks and unit tests).
    pub fn generate_ephemeral() -> KeySet {
        let (kid, seed) = new_seed();
        let mut set = KeySet::default();
        // A fresh seed always makes a valid key.
        if let Ok(key) = key_from_seed(&kid, &seed, None, true) {
            let key = Arc::new(key);
            set.active = Some(key.clone());
            set.keys.insert(kid, key);
        }
        set
    }
}

fn new_seed() -> (String, [u8; 32]) {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let mut id = [0u8; 9];
    rand::rng().fill_bytes(&mut id);
    let kid = format!(
        "wk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
    );
    (kid, seed)
}

fn pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

fn key_from_seed(
    kid: &str,
    seed: &[u8; 32],
    retired_until: Option<u64>,
    signs: bool,
) -> Result<Key, KeyError> {
    let malformed = |reason: String| KeyError::Malformed {
        kid: kid.to_owned(),
        reason,
    };
    let encoding = EncodingKey::from_ed_der(&pkcs8(seed));
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, ALGORITHM)
        .map_err(|e| malformed(e.to_string()))?;
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| malformed(e.to_string()))?;
    let jwk = serde_json::to_value(&jwk).map_err(|e| malformed(e.to_string()))?;
    Ok(Key {
        kid: kid.to_owned(),
        algorithm: ALGORITHM,
        decoding,
        jwk,
        retired_until,
        signing: signs.then_some(encoding),
    })
}

fn seal_context(kid: &str) -> Vec<u8> {
    format!("signing-key:{kid}").into_bytes()
}

/// Reads every key that still verifies; unseals the active one.
pub async fn load<C: GenericClient>(client: &C, master: &MasterKey) -> Result<KeySet, KeyError> {
    let rows = client
        .query(
            "SELECT kid, algorithm, private_key, retired_at IS NOT NULL AS retired, \
             ceil(extract(epoch FROM max_expires_at))::bigint AS max_expires \
             FROM signing_keys WHERE retired_at IS NULL OR max_expires_at > now() \
             ORDER BY created_at, kid",
            &[],
        )
        .await?;
    let mut set = KeySet::default();
    let newest_active = rows
        .iter()
        .rev()
        .find(|r| !r.get::<_, bool>("retired"))
        .map(|r| r.get::<_, String>("kid"));
    for row in rows {
        let kid: String = row.get("kid");
        let algorithm: String = row.get("algorithm");
        if algorithm != ALGORITHM_NAME {
            return Err(KeyError::Malformed {
                kid,
                reason: format!("unsupported algorithm `{algorithm}`"),
            });
        }
        let sealed: Vec<u8> = row.get("private_key");
        let plain = master
            .open(&sealed, &seal_context(&kid))
            .map_err(|_| KeyError::Sealed { kid: kid.clone() })?;
        let seed: [u8; 32] = plain.try_into().map_err(|_| KeyError::Malformed {
            kid: kid.clone(),
            reason: "the private key is not 32 bytes".into(),
        })?;
        let active = newest_active.as_deref() == Some(kid.as_str());
        let retired_until = row
            .get::<_, bool>("retired")
            .then(|| u64::try_from(row.get::<_, i64>("max_expires")).unwrap_or(0));
        let key = Arc::new(key_from_seed(&kid, &seed, retired_until, active)?);
        if active {
            set.active = Some(key.clone());
        }
        set.keys.insert(kid, key);
    }
    Ok(set)
}

async fn insert_new<C: GenericClient>(client: &C, master: &MasterKey) -> Result<String, KeyError> {
    let (kid, seed) = new_seed();
    let key = key_from_seed(&kid, &seed, None, false)?;
    let public = key
        .jwk
        .get("x")
        .and_then(Value::as_str)
        .and_then(|x| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(x)
                .ok()
        })
        .unwrap_or_default();
    client
        .execute(
            "INSERT INTO signing_keys (kid, algorithm, private_key, public_key) VALUES ($1, $2, $3, $4)",
            &[
                &kid,
                &ALGORITHM_NAME,
                &master.seal(&seed, &seal_context(&kid)),
                &public,
            ],
        )
        .await?;
    Ok(kid)
}

/// Creates the first key unless one is active. Returns the new kid when it made one.
pub async fn ensure_active(
    client: &mut tokio_postgres::Client,
    master: &MasterKey,
) -> Result<Option<String>, KeyError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    let active = tx
        .query_opt(
            "SELECT kid FROM signing_keys WHERE retired_at IS NULL LIMIT 1",
            &[],
        )
        .await?;
    let created = match active {
        Some(_) => None,
        None => Some(insert_new(&tx, master).await?),
    };
    tx.commit().await?;
    Ok(created)
}

/// Retires the active key(s) and creates a new one; returns (new kid, retired kids).
pub async fn rotate(
    client: &mut tokio_postgres::Client,
    master: &MasterKey,
) -> Result<(String, Vec<String>), KeyError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    let retired: Vec<String> = tx
        .query(
            "UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL RETURNING kid",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let kid = insert_new(&tx, master).await?;
    tx.commit().await?;
    Ok((kid, retired))
}

/// Records that `kid` signed a token valid until `expires_at`, so a retired key keeps
/// verifying until then.
pub async fn note_expiry<C: GenericClient>(
    client: &C,
    kid: &str,
    expires_at: SystemTime,
) -> Result<(), KeyError> {
    client
        .execute(
            "UPDATE signing_keys SET max_expires_at = $2 WHERE kid = $1 AND max_expires_at < $2",
            &[&kid, &expires_at],
        )
        .await?;
    Ok(())
}

/// One row of `warden keys list`.
pub struct KeyInfo {
    pub kid: String,
    pub algorithm: String,
    pub created_at: SystemTime,
    pub retired_at: Option<SystemTime>,
    pub verifies_until: SystemTime,
}

pub async fn list<C: GenericClient>(client: &C) -> Result<Vec<KeyInfo>, KeyError> {
    Ok(client
        .query(
            "SELECT kid, algorithm, created_at, retired_at, max_expires_at FROM signing_keys ORDER BY created_at",
            &[],
        )
        .await?
        .iter()
        .map(|r| KeyInfo {
            kid: r.get(0),
            algorithm: r.get(1),
            created_at: r.get(2),
            retired_at: r.get(3),
            verifies_until: r.get(4),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ephemeral_key_signs_and_publishes_only_its_public_half() {
        let set = KeySet::generate_ephemeral();
        let jwks = set.jwks();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert!(jwk.get("d").is_none(), "{jwk}");
        let (token, kid) = set
            .sign(&json!({"sub": "x", "exp": 4_000_000_000u64}), "at+jwt")
            .unwrap();
        assert_eq!(jwk["kid"], kid.as_str());
        let key = set.get(&kid).unwrap();
        let mut validation = jsonwebtoken::Validation::new(ALGORITHM);
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(&token, &key.decoding, &validation).unwrap();
        assert!(!format!("{key:?}").contains("EncodingKey"));
    }
}
