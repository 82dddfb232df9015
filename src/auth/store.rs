//! Identities, API keys and the revocation deny-list in PostgreSQL. Shared by `warden
//! serve` and the CLI (which runs beside it); every change is announced on the
//! `warden_identity` channel so running processes drop what they cached.

use std::time::{Duration, SystemTime};

use serde_json::json;
use thiserror::Error;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::secret::{self, Redacted};
use super::{PrincipalKind, Scopes};

/// The `NOTIFY` channel of identity changes (payload: JSON `{"kind", "subject", …}`).
pub const CHANNEL: &str = "warden_identity";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("an identity named `{0}` already exists")]
    Exists(String),
    #[error("no identity named `{0}`")]
    NotFound(String),
    #[error("`{name}` is a {actual}, not a {expected}")]
    WrongKind {
        name: String,
        actual: String,
        expected: String,
    },
    #[error(
        "names may hold letters, digits and `.`, `_`, `-`, `@` (1 to 64 characters); `{0}` does not"
    )]
    BadName(String),
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// One row of `identities`.
#[derive(Clone, Debug)]
pub struct IdentityRow {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub has_password: bool,
    /// Raised by every sign-out everywhere: sessions and tokens carrying a lower one
    /// are refused (schema/0080_sign_out_everywhere.sql).
    pub session_epoch: i64,
    pub created_at: SystemTime,
    pub last_login_at: Option<SystemTime>,
}

impl IdentityRow {
    /// A user (not a service account or a federated identity) who is not disabled: who
    /// may sign in to the authorization server.
    pub fn can_sign_in(&self) -> bool {
        !self.disabled && self.kind == "user"
    }

    fn from_row(row: &tokio_postgres::Row) -> IdentityRow {
        IdentityRow {
            id: row.get("id"),
            name: row.get("name"),
            kind: row.get("kind"),
            roles: row.get("roles"),
            disabled: row.get("disabled"),
            has_password: row.get::<_, Option<String>>("password_hash").is_some(),
            session_epoch: row.get("session_epoch"),
            created_at: row.get("created_at"),
            last_login_at: row.get("last_login_at"),
        }
    }

    pub fn principal_kind(&self) -> PrincipalKind {
        if self.kind == "service" {
            PrincipalKind::Service
        } else {
            PrincipalKind::User
        }
    }
}

const COLUMNS: &str =
    "id, name, kind, roles, password_hash, disabled, session_epoch, created_at, last_login_at";

/// Local names: what people type at a login prompt and in `--user`.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

pub async fn find<C: GenericClient>(
    client: &C,
    name: &str,
) -> Result<Option<IdentityRow>, StoreError> {
    Ok(client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM identities WHERE name = $1"),
            &[&name],
        )
        .await?
        .as_ref()
        .map(IdentityRow::from_row))
}

/// The identity with id `id`.
pub async fn find_by_id<C: GenericClient>(
    client: &C,
    id: Uuid,
) -> Result<Option<IdentityRow>, StoreError> {
    Ok(client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM identities WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(IdentityRow::from_row))
}

/// The identity and its password hash, for a login.
pub async fn find_with_password<C: GenericClient>(
    client: &C,
    name: &str,
) -> Result<Option<(IdentityRow, Option<Redacted<String>>)>, StoreError> {
    Ok(client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM identities WHERE name = $1 AND kind = 'user'"),
            &[&name],
        )
        .await?
        .map(|row| {
            (
                IdentityRow::from_row(&row),
                row.get::<_, Option<String>>("password_hash")
                    .map(Redacted::new),
            )
        }))
}

pub async fn create<C: GenericClient>(
    client: &C,
    name: &str,
    kind: &str,
    roles: &[String],
    password_hash: Option<&str>,
) -> Result<IdentityRow, StoreError> {
    check_name(name)?;
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO identities (id, name, kind, roles, password_hash) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
            ),
            &[&Uuid::now_v7(), &name, &kind, &roles, &password_hash],
        )
        .await?;
    row.as_ref()
        .map(IdentityRow::from_row)
        .ok_or_else(|| StoreError::Exists(name.to_owned()))
}

/// The identity `name`, created with `kind` and `roles` when missing; an existing one of
/// another kind is an error.
pub async fn ensure<C: GenericClient>(
    client: &C,
    name: &str,
    kind: &str,
    roles: &[String],
) -> Result<(IdentityRow, bool), StoreError> {
    if let Some(row) = find(client, name).await? {
        if row.kind != kind {
            return Err(StoreError::WrongKind {
                name: name.to_owned(),
                actual: row.kind,
                expected: kind.to_owned(),
            });
        }
        return Ok((row, false));
    }
    match create(client, name, kind, roles, None).await {
        Ok(row) => Ok((row, true)),
        // Created by someone else in between.
        Err(StoreError::Exists(_)) => find(client, name)
            .await?
            .map(|row| (row, false))
            .ok_or_else(|| StoreError::NotFound(name.to_owned())),
        Err(e) => Err(e),
    }
}

/// Links a federated subject to its local row on first sight; returns whether it is
/// disabled.
pub async fn link_federated<C: GenericClient>(
    client: &C,
    name: &str,
    issuer: &str,
    subject: &str,
    roles: &[String],
) -> Result<bool, StoreError> {
    let row = client
        .query_one(
            "INSERT INTO identities (id, name, kind, roles, issuer, external_subject, last_login_at) \
             VALUES ($1, $2, 'federated', $3, $4, $5, now()) \
             ON CONFLICT (name) DO UPDATE SET last_login_at = now(), roles = EXCLUDED.roles \
             RETURNING disabled",
            &[&Uuid::now_v7(), &name, &roles, &issuer, &subject],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn set_disabled<C: GenericClient>(
    client: &C,
    name: &str,
    disabled: bool,
) -> Result<(), StoreError> {
    let n = client
        .execute(
            "UPDATE identities SET disabled = $2, updated_at = now() WHERE name = $1",
            &[&name, &disabled],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(name.to_owned()));
    }
    Ok(())
}

/// Replaces the roles of a local user or service account.
pub async fn set_roles<C: GenericClient>(
    client: &C,
    name: &str,
    roles: &[String],
) -> Result<(), StoreError> {
    let n = client
        .execute(
            "UPDATE identities SET roles = $2, updated_at = now() WHERE name = $1 AND kind <> 'federated'",
            &[&name, &roles],
        )
        .await?;
    if n == 0 {
        // A federated identity's roles come from its issuer: say so rather than that it
        // does not exist.
        return Err(match find(client, name).await? {
            Some(row) => StoreError::WrongKind {
                name: name.to_owned(),
                actual: format!("{} identity", row.kind),
                expected: "user or service account".to_owned(),
            },
            None => StoreError::NotFound(name.to_owned()),
        });
    }
    Ok(())
}

pub async fn set_password<C: GenericClient>(
    client: &C,
    name: &str,
    hash: &str,
) -> Result<(), StoreError> {
    let n = client
        .execute(
            "UPDATE identities SET password_hash = $2, updated_at = now() WHERE name = $1 AND kind = 'user'",
            &[&name, &hash],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(name.to_owned()));
    }
    Ok(())
}

pub async fn touch_login<C: GenericClient>(client: &C, id: Uuid) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE identities SET last_login_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(())
}

pub async fn list<C: GenericClient>(client: &C) -> Result<Vec<IdentityRow>, StoreError> {
    Ok(client
        .query(
            &format!("SELECT {COLUMNS} FROM identities ORDER BY name"),
            &[],
        )
        .await?
        .iter()
        .map(IdentityRow::from_row)
        .collect())
}

/// What a token of a local identity is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Enabled, at this session epoch.
    Active { session_epoch: i64 },
    /// Disabled, or gone (a missing local identity counts as disabled).
    Disabled,
}

pub async fn standing<C: GenericClient>(client: &C, name: &str) -> Result<Standing, StoreError> {
    let row = client
        .query_opt(
            "SELECT disabled, session_epoch FROM identities WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(match row {
        Some(row) if !row.get::<_, bool>(0) => Standing::Active {
            session_epoch: row.get(1),
        },
        _ => Standing::Disabled,
    })
}

/// The notice kind of a sign-out everywhere.
pub const SIGNED_OUT_NOTICE: &str = "user.signed_out";

/// The sign-out everywhere of `$1`: its epoch raised and its live refresh tokens
/// revoked; (identities, refresh tokens) changed. Federated identities are left alone:
/// their issuer revokes their tokens.
const SIGN_OUT: &str = "
WITH bumped AS (
    UPDATE identities SET session_epoch = session_epoch + 1, updated_at = now()
    WHERE name = $1 AND kind <> 'federated'
    RETURNING name),
revoked AS (
    UPDATE oauth_refresh_tokens SET revoked_at = now()
    WHERE identity_name IN (SELECT name FROM bumped)
      AND revoked_at IS NULL AND used_at IS NULL AND expires_at > now()
    RETURNING 1)
SELECT (SELECT count(*) FROM bumped), (SELECT count(*) FROM revoked)";

/// Signs an identity out everywhere: raises its session epoch, so every login session,
/// authorization code, refresh token, access token and sign-in link issued before is
/// refused; marks its live refresh tokens revoked; and tells every running server
/// (notice `user.signed_out`, detail `origin` and `refresh_tokens_revoked`), which drop
/// their cached verifications. In the caller's transaction, so the notice goes out with
/// the change at commit.
pub async fn sign_out(
    transaction: &tokio_postgres::Transaction<'_>,
    name: &str,
    origin: &str,
) -> Result<SignedOut, StoreError> {
    let row = transaction.query_one(SIGN_OUT, &[&name]).await?;
    if row.get::<_, i64>(0) == 0 {
        return Err(match find(transaction, name).await? {
            Some(_) => StoreError::WrongKind {
                name: name.to_owned(),
                actual: "federated identity (its issuer revokes its tokens)".to_owned(),
                expected: "user or service account".to_owned(),
            },
            None => StoreError::NotFound(name.to_owned()),
        });
    }
    let revoked: i64 = row.get(1);
    let detail = json!({"origin": origin, "refresh_tokens_revoked": revoked});
    notify(transaction, SIGNED_OUT_NOTICE, name, detail.clone()).await?;
    Ok(SignedOut { revoked, detail })
}

/// What a sign-out did.
pub struct SignedOut {
    /// Refresh tokens revoked.
    pub revoked: i64,
    /// The notice's detail, which the audit row records as well.
    pub detail: serde_json::Value,
}

// ---------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------

/// A newly created API key: shown once.
pub struct NewApiKey {
    pub id: Uuid,
    pub key: Redacted<String>,
    pub prefix: String,
}

pub async fn create_api_key<C: GenericClient>(
    client: &C,
    identity: Uuid,
    scopes: &Scopes,
    ttl: Option<Duration>,
) -> Result<NewApiKey, StoreError> {
    let key = secret::generate(secret::API_KEY_PREFIX);
    insert_api_key(client, identity, &key, scopes, ttl).await
}

/// Stores the hash of a given key (the bootstrap token).
pub async fn insert_api_key<C: GenericClient>(
    client: &C,
    identity: Uuid,
    key: &Redacted<String>,
    scopes: &Scopes,
    ttl: Option<Duration>,
) -> Result<NewApiKey, StoreError> {
    let id = Uuid::now_v7();
    let prefix = secret::display_prefix(key.expose());
    let expires_at = ttl.map(|t| SystemTime::now() + t);
    client
        .execute(
            "INSERT INTO api_keys (id, identity_id, prefix, key_hash, scopes, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_hash) DO NOTHING",
            &[
                &id,
                &identity,
                &prefix,
                &secret::hash(key.expose()),
                &scopes.to_header_value(),
                &expires_at,
            ],
        )
        .await?;
    Ok(NewApiKey {
        id,
        key: key.clone(),
        prefix,
    })
}

/// What a valid API key stands for.
pub struct ApiKeyGrant {
    pub key_id: Uuid,
    pub identity: IdentityRow,
    pub scopes: Scopes,
    pub expires_at: Option<SystemTime>,
}

/// Looks an API key up by its hash; revoked, expired and disabled ones are `Err` with
/// the reason.
pub async fn api_key<C: GenericClient>(
    client: &C,
    key: &str,
) -> Result<Result<ApiKeyGrant, super::AuthRejection>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT k.id AS key_id, k.scopes, k.expires_at, k.revoked_at, \
                 {} FROM api_keys k JOIN identities i ON i.id = k.identity_id WHERE k.key_hash = $1",
                COLUMNS
                    .split(", ")
                    .map(|c| format!("i.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&secret::hash(key)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err(super::AuthRejection::InvalidToken(
            "unknown API key".into(),
        )));
    };
    let identity = IdentityRow::from_row(&row);
    let expires_at: Option<SystemTime> = row.get("expires_at");
    let revoked: Option<SystemTime> = row.get("revoked_at");
    if revoked.is_some() {
        return Ok(Err(super::AuthRejection::Revoked));
    }
    if expires_at.is_some_and(|e| e <= SystemTime::now()) {
        return Ok(Err(super::AuthRejection::ExpiredToken));
    }
    if identity.disabled {
        return Ok(Err(super::AuthRejection::Disabled));
    }
    Ok(Ok(ApiKeyGrant {
        key_id: row.get("key_id"),
        scopes: Scopes::parse(&row.get::<_, String>("scopes")),
        identity,
        expires_at,
    }))
}

/// One row of `warden apikey list`.
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub owner: String,
    pub prefix: String,
    pub scopes: String,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    pub revoked_at: Option<SystemTime>,
}

pub async fn list_api_keys<C: GenericClient>(client: &C) -> Result<Vec<ApiKeyInfo>, StoreError> {
    Ok(client
        .query(
            "SELECT k.id, i.name, k.prefix, k.scopes, k.created_at, k.expires_at, k.revoked_at \
             FROM api_keys k JOIN identities i ON i.id = k.identity_id ORDER BY k.created_at",
            &[],
        )
        .await?
        .iter()
        .map(|r| ApiKeyInfo {
            id: r.get(0),
            owner: r.get(1),
            prefix: r.get(2),
            scopes: r.get(3),
            created_at: r.get(4),
            expires_at: r.get(5),
            revoked_at: r.get(6),
        })
        .collect())
}

/// Revokes API keys by id, or every key of an identity; returns how many.
pub async fn revoke_api_keys<C: GenericClient>(
    client: &C,
    id: Option<Uuid>,
    owner: Option<&str>,
    except: Option<&[u8]>,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "UPDATE api_keys k SET revoked_at = now() FROM identities i \
             WHERE i.id = k.identity_id AND k.revoked_at IS NULL \
             AND ($1::uuid IS NULL OR k.id = $1) AND ($2::text IS NULL OR i.name = $2) \
             AND ($3::bytea IS NULL OR k.key_hash <> $3)",
            &[&id, &owner, &except],
        )
        .await?)
}

// ---------------------------------------------------------------------------------------
// Revocation deny-list and change notices
// ---------------------------------------------------------------------------------------

/// Whether API key `id` still grants: not revoked, not expired. (Its identity's state is
/// the caller's to check.)
pub async fn api_key_live<C: GenericClient>(client: &C, id: Uuid) -> Result<bool, StoreError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM api_keys WHERE id = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > now())",
            &[&id],
        )
        .await?
        .is_some())
}

/// Whether the API key with hash `key_hash` exists and is not revoked.
pub async fn api_key_hash_live<C: GenericClient>(
    client: &C,
    key_hash: &[u8],
) -> Result<bool, StoreError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            &[&key_hash],
        )
        .await?
        .is_some())
}

/// Whether any of `ids` (a `jti`, `family:<uuid>`) is revoked.
pub async fn any_revoked<C: GenericClient>(client: &C, ids: &[&str]) -> Result<bool, StoreError> {
    let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    Ok(client
        .query_opt(
            "SELECT 1 FROM revoked_tokens WHERE token_id = ANY($1)",
            &[&ids],
        )
        .await?
        .is_some())
}

pub async fn revoke<C: GenericClient>(
    client: &C,
    token_id: &str,
    expires_at: SystemTime,
    reason: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO revoked_tokens (token_id, expires_at, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (token_id) DO NOTHING",
            &[&token_id, &expires_at, &reason],
        )
        .await?;
    Ok(())
}

/// A change running processes must hear about.
pub async fn notify<C: GenericClient>(
    client: &C,
    kind: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let payload = json!({"kind": kind, "subject": subject, "detail": detail}).to_string();
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await?;
    Ok(())
}
