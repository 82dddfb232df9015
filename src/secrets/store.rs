//! The secret store: named values in PostgreSQL, encrypted at rest with the master key,
//! optionally per user. Values leave the store only as [`Redacted`] and only towards a
//! child's environment or an upstream request header — never into a log line, an error,
//! an event or an audit row.
//!
//! Changes are announced with `NOTIFY warden_secrets, '<name>'` (in the same transaction),
//! so a running Warden restarts the servers that use a changed secret even when the
//! change came from `warden secret set` in another process.
//!
//! Every change is audited as a `secret.changed` event (name, owner, set or delete; never
//! the value): through the running trail when the store has one ([`SecretStore::with_audit`]),
//! else — a CLI command — sealed into the trail directly (`audit::record_now`).

use std::sync::Arc;
use std::time::SystemTime;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use thiserror::Error;
use warden_actors::audit::{Audit, AuditEvent, AuditRecord};
use warden_actors::secrets::{SecretError, SecretSource};

use super::{MasterKey, Redacted};

/// The channel secret changes are announced on.
pub const CHANNEL: &str = "warden_secrets";
/// Longest accepted secret value.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "secret names may hold letters, digits, `_`, `-`, `.` and `/` (1 to 128 characters), found `{0}`"
    )]
    BadName(String),
    #[error("the secret value is empty")]
    Empty,
    #[error("the secret value is larger than {MAX_VALUE_BYTES} bytes")]
    TooLarge,
    #[error("no secret named `{0}`")]
    NotFound(String),
    #[error("secret `{0}` cannot be decrypted with this master key")]
    Undecryptable(String),
    #[error("database: {0}")]
    Database(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// One row of `warden secret list`: never the value.
#[derive(Debug, Clone)]
pub struct SecretInfo {
    pub name: String,
    pub owner: Option<String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// When each secret value (name and owner) was last set, as last seen: what a running
/// Warden compares against after its change listener was away, when a change's notice
/// may have been lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretVersions(std::collections::HashMap<(String, Option<String>), SystemTime>);

impl SecretVersions {
    pub fn of(secrets: &[SecretInfo]) -> SecretVersions {
        SecretVersions(
            secrets
                .iter()
                .map(|s| ((s.name.clone(), s.owner.clone()), s.updated_at))
                .collect(),
        )
    }

    /// The names of the secrets set, changed or deleted in `now` since `self`.
    pub fn changed_in(&self, now: &SecretVersions) -> std::collections::BTreeSet<String> {
        let mut changed = std::collections::BTreeSet::new();
        for (key, at) in &now.0 {
            if self.0.get(key) != Some(at) {
                changed.insert(key.0.clone());
            }
        }
        for key in self.0.keys() {
            if !now.0.contains_key(key) {
                changed.insert(key.0.clone());
            }
        }
        changed
    }
}

#[derive(Clone)]
pub struct SecretStore {
    pool: Pool,
    key: Arc<MasterKey>,
    audit: Option<Audit>,
}

fn context(name: &str, owner: &str) -> Vec<u8> {
    format!("secret:{owner}/{name}").into_bytes()
}

pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

impl SecretStore {
    pub fn new(pool: Pool, key: Arc<MasterKey>) -> Self {
        SecretStore {
            pool,
            key,
            audit: None,
        }
    }

    /// Records changes through the running audit trail.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// The `secret.changed` event for a committed change.
    async fn audit_change(&self, name: &str, owner: &str, action: &str) {
        let actor = match self.audit {
            Some(_) => ("system", None),
            None => ("user", Some(crate::audit::cli_actor())),
        };
        let mut event = AuditEvent::new("secret.changed", actor.0);
        event.actor_id = actor.1;
        event.subject = Some(name.to_owned());
        event.reason = Some(action.to_owned());
        event.attributes = serde_json::json!({
            "action": action,
            "owner": (!owner.is_empty()).then_some(owner),
        });
        let result = match &self.audit {
            Some(audit) => audit
                .record(AuditRecord::Event(Box::new(event)))
                .await
                .map_err(|e| e.to_string()),
            None => crate::audit::record_now(&self.pool, event)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(error) = result {
            tracing::error!(secret = name, %error, "the secret change could not be audited");
        }
    }

    /// Creates or replaces a secret, and announces the change.
    pub async fn set(
        &self,
        name: &str,
        owner: Option<&str>,
        value: &Redacted<String>,
    ) -> Result<(), StoreError> {
        validate_name(name)?;
        let value = value.expose();
        if value.is_empty() {
            return Err(StoreError::Empty);
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge);
        }
        let owner = owner.unwrap_or("");
        let sealed = self.key.seal(value.as_bytes(), &context(name, owner));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO secrets (name, owner, ciphertext) VALUES ($1, $2, $3)
             ON CONFLICT (name, owner) DO UPDATE SET ciphertext = EXCLUDED.ciphertext, updated_at = now()",
            &[&name, &owner, &sealed],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &name])
            .await?;
        tx.commit().await?;
        self.audit_change(name, owner, "set").await;
        Ok(())
    }

    pub async fn delete(&self, name: &str, owner: Option<&str>) -> Result<(), StoreError> {
        let owner = owner.unwrap_or("");
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let deleted = tx
            .execute(
                "DELETE FROM secrets WHERE name = $1 AND owner = $2",
                &[&name, &owner],
            )
            .await?;
        if deleted == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &name])
            .await?;
        tx.commit().await?;
        self.audit_change(name, owner, "delete").await;
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<SecretInfo>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, owner, created_at, updated_at FROM secrets ORDER BY name, owner",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let owner: String = r.get(1);
                SecretInfo {
                    name: r.get(0),
                    owner: (!owner.is_empty()).then_some(owner),
                    created_at: r.get(2),
                    updated_at: r.get(3),
                }
            })
            .collect())
    }

    pub async fn get(
        &self,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Redacted<String>, StoreError> {
        let owner = owner.unwrap_or("");
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT ciphertext FROM secrets WHERE name = $1 AND owner = $2",
                &[&name, &owner],
            )
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        let sealed: Vec<u8> = row.get(0);
        let plain = self
            .key
            .open(&sealed, &context(name, owner))
            .map_err(|_| StoreError::Undecryptable(name.to_owned()))?;
        String::from_utf8(plain)
            .map(Redacted::new)
            .map_err(|_| StoreError::Undecryptable(name.to_owned()))
    }

    /// Every stored value (decrypted), for redacting them out of audit payloads.
    pub async fn all_values(&self) -> Result<Vec<Redacted<String>>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT name, owner, ciphertext FROM secrets", &[])
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let name: String = r.get(0);
                let owner: String = r.get(1);
                let sealed: Vec<u8> = r.get(2);
                let plain = self.key.open(&sealed, &context(&name, &owner)).ok()?;
                String::from_utf8(plain).ok().map(Redacted::new)
            })
            .collect())
    }
}

impl SecretSource for SecretStore {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Redacted<String>, SecretError>> {
        Box::pin(async move {
            self.get(name, user).await.map_err(|e| match (e, user) {
                (StoreError::NotFound(_), Some(user)) => SecretError::MissingForUser {
                    name: name.to_owned(),
                    user: user.to_owned(),
                },
                (StoreError::NotFound(_), None) => SecretError::Missing {
                    name: name.to_owned(),
                },
                (other, _) => SecretError::Unavailable(other.to_string()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_name_what_was_set_changed_or_deleted() {
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let info = |name: &str, owner: Option<&str>, secs| SecretInfo {
            name: name.into(),
            owner: owner.map(str::to_owned),
            created_at: at(0),
            updated_at: at(secs),
        };
        let before = SecretVersions::of(&[
            info("kept", None, 1),
            info("changed", None, 1),
            info("deleted", None, 1),
            info("mine", Some("alice"), 1),
        ]);
        let now = SecretVersions::of(&[
            info("kept", None, 1),
            info("changed", None, 2),
            info("mine", Some("alice"), 1),
            info("mine", Some("bob"), 1),
            info("added", None, 1),
        ]);
        let changed: Vec<String> = before.changed_in(&now).into_iter().collect();
        assert_eq!(changed, ["added", "changed", "deleted", "mine"]);
        assert!(now.changed_in(&now).is_empty());
    }
}
