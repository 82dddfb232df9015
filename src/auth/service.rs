//! [`Identity`]: the authenticator `warden serve` runs, and the operations of the OAuth
//! authorization server behind `/oauth/*` (HTTP-free; `http/oauth.rs` maps them).
//!
//! Authentication of a bearer token, in order:
//!
//! 1. no token: the `anonymous` principal when the profile grants that role scopes, else
//!    `MissingToken`; longer than 8 KiB: `MalformedToken`;
//! 2. the verified-token cache (SHA-256 of the token): a hit ends here;
//! 3. `wk_…`: an API key, looked up by hash;
//! 4. a JWT whose `iss` is Warden: Warden's keys (an unknown `kid` that exists in the
//!    database — a rotation by another process — reloads them);
//! 5. a JWT whose `iss` is a trusted issuer: federation;
//! 6. then, once per token per process: the account is not disabled and the token (or
//!    its refresh family) is not on the deny-list.
//!
//! Every refusal is an `auth.token_refused` audit event; logins, token grants, refresh
//! reuse and revocations have events of their own.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use uuid::Uuid;
use warden_actors::audit::{Audit, AuditEvent, AuditRecord};

use super::cache::{self, TokenCache};
use super::federation::Federation;
use super::keys::{self, KeySet};
use super::oauth::{
    self, Client, ClientDocuments, CodeGrant, CodeRefusal, RefreshGrant, RefreshRefusal,
};
use super::passwords::Passwords;
use super::ratelimit::LoginLimiter;
use super::secret::{self, Redacted};
use super::store::{self, IdentityRow, Standing, StoreError};
use super::tokens::{self, Grant, Issued, MAX_TOKEN_BYTES, VerifyError, unix_now};
use super::{AuthRejection, Authenticator, Principal, PrincipalKind, Scopes};
use crate::config::{Config, IdentityConfig, SecondFactor};
use crate::policy::PolicyEngine;
use crate::secrets::MasterKey;

/// Entries in the verified-token cache at most.
const CACHE_ENTRIES: usize = 100_000;
/// Every cached verification is re-checked at least this often: a revocation, disable or
/// sign-out whose notice was missed (the listener down) still lands within it.
const RECHECK_SECS: u64 = 300;
/// How long a verified token whose revocation state could not be read (PostgreSQL
/// unreachable) is trusted before it is checked again.
const DEGRADED_CACHE_SECS: u64 = 60;

/// An OAuth error answer (`error`, `error_description`); `http/` picks the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            code,
            description: description.into(),
        }
    }

    fn server(error: impl std::fmt::Display) -> OAuthError {
        tracing::error!(%error, "authorization server failure");
        OAuthError::new("server_error", "the authorization server failed; try again")
    }
}

/// A token endpoint success.
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: Redacted<String>,
    pub expires_in: u64,
    pub refresh_token: Option<Redacted<String>>,
    pub scope: String,
}

/// Why a login failed (the page says the same thing for both: no user enumeration).
#[derive(Debug)]
pub enum LoginError {
    Invalid,
    RateLimited(Duration),
    Unavailable(String),
    /// `identity.passkeys.second_factor: required` and the user has no passkey.
    PasskeyRequired,
}

/// Where a correct password leads.
pub enum PasswordSignIn {
    /// Signed in.
    Done(IdentityRow),
    /// Not yet: one of the user's passkeys must confirm (`second_factor`). The challenge
    /// (sealed for the form's CSRF token) and the ids of their passkeys.
    Confirm {
        challenge: String,
        passkeys: Vec<String>,
    },
}

struct Settings {
    config: IdentityConfig,
    anonymous: Option<Arc<Principal>>,
}

/// Identity: authentication, tokens, users, the authorization server's state.
pub struct Identity {
    pub(super) db: Pool,
    pub(super) master: Arc<MasterKey>,
    audit: Audit,
    policy: Arc<ArcSwap<PolicyEngine>>,
    settings: ArcSwap<Settings>,
    keys: ArcSwap<KeySet>,
    keys_reload: tokio::sync::Mutex<()>,
    cache: TokenCache,
    federation: ArcSwap<Federation>,
    http: reqwest::Client,
    pub passwords: Passwords,
    pub logins: LoginLimiter,
    pub client_documents: ClientDocuments,
    /// The bootstrap token's hash and principal: checked in memory, so the operator's
    /// token works even while PostgreSQL is unreachable.
    bootstrap: ArcSwap<Option<([u8; 32], Arc<Principal>)>>,
}

#[derive(serde::Deserialize)]
struct Peek {
    iss: Option<String>,
}

impl Identity {
    /// Builds the service and makes sure a signing key exists.
    pub async fn start(
        config: &Config,
        db: Pool,
        master: Arc<MasterKey>,
        audit: Audit,
    ) -> Result<Arc<Identity>, IdentityStartError> {
        warden_actors::upstream::http::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| IdentityStartError::Http(e.to_string()))?;
        let policy = Arc::new(ArcSwap::from_pointee(PolicyEngine::from_config(config)));
        let identity = Identity {
            federation: ArcSwap::from_pointee(Federation::new(
                &config.identity.trusted_issuers,
                http.clone(),
            )),
            settings: ArcSwap::from_pointee(settings(config, &policy.load())),
            db,
            master,
            audit,
            policy,
            keys: ArcSwap::from_pointee(KeySet::default()),
            keys_reload: tokio::sync::Mutex::new(()),
            cache: TokenCache::new(CACHE_ENTRIES),
            http,
            passwords: Passwords::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            logins: LoginLimiter::new(),
            client_documents: ClientDocuments::default(),
            bootstrap: ArcSwap::from_pointee(None),
        };
        {
            let mut client = identity.db.get().await?;
            if let Some(kid) = keys::ensure_active(&mut client, &identity.master).await? {
                tracing::info!(%kid, "created the first signing key");
            }
        }
        identity.reload_keys().await?;
        Ok(Arc::new(identity))
    }

    /// The permission rules, shared with `App` (swapped on reload).
    pub fn policy(&self) -> Arc<ArcSwap<PolicyEngine>> {
        self.policy.clone()
    }

    /// The passkey settings in force (without copying the rest of the identity settings).
    pub fn passkeys(&self) -> crate::config::PasskeyConfig {
        self.settings.load().config.passkeys.clone()
    }

    pub fn config(&self) -> IdentityConfig {
        self.settings.load().config.clone()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Applies a reloaded profile: rules, lifetimes, trusted issuers; forgets every
    /// cached verification (scopes derived from roles may have changed).
    pub fn reconfigure(&self, config: &Config) {
        let policy = PolicyEngine::from_config(config);
        self.settings.store(Arc::new(settings(config, &policy)));
        self.policy.store(Arc::new(policy));
        self.federation.store(Arc::new(Federation::new(
            &config.identity.trusted_issuers,
            self.http.clone(),
        )));
        self.cache.clear();
    }

    /// `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        self.keys.load().jwks()
    }

    /// The trusted issuers (for protected-resource metadata).
    pub fn trusted_issuers(&self) -> Vec<String> {
        self.federation
            .load()
            .issuers()
            .map(str::to_owned)
            .collect()
    }

    pub async fn reload_keys(&self) -> Result<(), IdentityStartError> {
        let _one = self.keys_reload.lock().await;
        let client = self.db.get().await?;
        let set = keys::load(&**client, &self.master).await?;
        self.keys.store(Arc::new(set));
        Ok(())
    }

    /// Verified tokens in the cache (for tests and metrics).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    // -----------------------------------------------------------------------------------
    // Authentication
    // -----------------------------------------------------------------------------------

    async fn authenticate_token(
        &self,
        bearer: Option<&str>,
    ) -> Result<Arc<Principal>, AuthRejection> {
        let Some(token) = bearer else {
            return self
                .settings
                .load()
                .anonymous
                .clone()
                .ok_or(AuthRejection::MissingToken);
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthRejection::MalformedToken(format!(
                "token longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let key = cache::key(token);
        if let Some(principal) = self.cache.get(&key) {
            return Ok(principal);
        }
        // Read before the account's state is: a revocation meanwhile keeps this
        // verification out of the cache.
        let generation = self.cache.generation();
        match self.verify_uncached(token).await {
            Ok((principal, expires_at, family)) => {
                let principal = Arc::new(principal);
                // A revocation whose notice never came (the listener was down) still
                // lands within RECHECK_SECS.
                self.cache.insert_unless_changed(
                    generation,
                    key,
                    principal.clone(),
                    expires_at.min(unix_now() + RECHECK_SECS),
                    family.as_deref(),
                );
                Ok(principal)
            }
            // The bootstrap token is checked like any API key; only while PostgreSQL
            // cannot answer does the copy held since start-up stand in, so the operator
            // keeps a way in during an outage.
            Err(AuthRejection::Unavailable(reason)) => match &**self.bootstrap.load() {
                Some((hash, principal)) if secret::equal(hash, &key) => Ok(principal.clone()),
                _ => Err(AuthRejection::Unavailable(reason)),
            },
            Err(rejection) => {
                let mut event = AuditEvent::new("auth.token_refused", "user");
                event.decision = Some("deny");
                event.reason = Some(rejection.to_string());
                event.attributes = json!({"surface": "bearer"});
                self.record(event).await;
                Err(rejection)
            }
        }
    }

    /// Verifies a token the cache does not know: (principal, cache until, family).
    async fn verify_uncached(
        &self,
        token: &str,
    ) -> Result<(Principal, u64, Option<String>), AuthRejection> {
        if token.starts_with(secret::API_KEY_PREFIX) {
            return self.verify_api_key(token).await;
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| tokens::rejection(&e))?;
        let issuer = jsonwebtoken::dangerous::insecure_decode_claims::<Peek>(token)
            .map_err(|e| tokens::rejection(&e))?
            .iss
            .ok_or_else(|| AuthRejection::InvalidToken("missing claim `iss`".into()))?;
        let own = self.settings.load().config.issuer.clone();
        if issuer == own {
            return self.verify_local(token).await;
        }
        let federation = self.federation.load_full();
        if !federation.trusts(&issuer) {
            return Err(AuthRejection::InvalidToken("untrusted issuer".into()));
        }
        let policy = self.policy.load_full();
        let verified = federation.verify(token, &header, &issuer, &policy).await?;
        let client = self.db.get().await.map_err(unavailable)?;
        let disabled = store::link_federated(
            &**client,
            &verified.principal.subject,
            &verified.issuer,
            &verified.external_subject,
            &verified.principal.roles,
        )
        .await
        .map_err(unavailable)?;
        if disabled {
            return Err(AuthRejection::Disabled);
        }
        let until = verified
            .principal
            .expires_at
            .and_then(|e| e.duration_since(UNIX_EPOCH).ok())
            .map_or(unix_now(), |d| d.as_secs());
        Ok((verified.principal, until, None))
    }

    async fn verify_local(
        &self,
        token: &str,
    ) -> Result<(Principal, u64, Option<String>), AuthRejection> {
        let config = self.settings.load().config.clone();
        let claims =
            match tokens::verify(token, &self.keys.load(), &config.issuer, &config.audience) {
                Ok(claims) => claims,
                Err(VerifyError::Rejected(rejection)) => return Err(rejection),
                Err(VerifyError::UnknownKey(kid)) => {
                    // A key made by another process (a rotation) is in the database.
                    let client = self.db.get().await.map_err(unavailable)?;
                    let exists = client
                        .query_opt("SELECT 1 FROM signing_keys WHERE kid = $1", &[&kid])
                        .await
                        .map_err(unavailable)?
                        .is_some();
                    drop(client);
                    if !exists {
                        return Err(AuthRejection::InvalidToken("unknown key id".into()));
                    }
                    self.reload_keys().await.map_err(unavailable)?;
                    match tokens::verify(token, &self.keys.load(), &config.issuer, &config.audience)
                    {
                        Ok(claims) => claims,
                        Err(VerifyError::Rejected(rejection)) => return Err(rejection),
                        Err(VerifyError::UnknownKey(_)) => {
                            return Err(AuthRejection::InvalidToken("unknown key id".into()));
                        }
                    }
                }
            };
        let family = claims.fid.as_deref().map(oauth::family_token_id);
        let mut ids = vec![claims.jti.as_str()];
        if let Some(f) = &family {
            ids.push(f);
        }
        match self
            .account_state(&claims.sub, &ids, claims.sep, claims.akid.as_deref())
            .await
        {
            Ok(None) => {}
            Ok(Some(rejection)) => return Err(rejection),
            Err(error) => {
                // The signature, issuer, audience and lifetime are proven; only the
                // disabled/revoked state is unknown while PostgreSQL is unreachable. Serve
                // (tool calls spool their audit rows meanwhile) and look again soon.
                tracing::warn!(%error, "cannot check revocation while PostgreSQL is unreachable; accepting a verified token for at most 60 s");
                let principal = tokens::principal(&claims, &config.issuer);
                return Ok((
                    principal,
                    claims.exp.min(unix_now() + DEGRADED_CACHE_SECS),
                    claims.fid,
                ));
            }
        }
        let principal = tokens::principal(&claims, &config.issuer);
        Ok((principal, claims.exp, claims.fid))
    }

    /// `Some(rejection)` when the account is disabled, signed out everywhere since the
    /// token's session epoch `sep`, the token revoked, or the API key it was minted with
    /// (`api_key`) revoked or expired; `Err` when PostgreSQL cannot answer.
    async fn account_state(
        &self,
        subject: &str,
        ids: &[&str],
        sep: i64,
        api_key: Option<&str>,
    ) -> Result<Option<AuthRejection>, String> {
        let client = self.db.get().await.map_err(|e| e.to_string())?;
        match store::standing(&**client, subject)
            .await
            .map_err(|e| e.to_string())?
        {
            Standing::Disabled => return Ok(Some(AuthRejection::Disabled)),
            // `!=`, not `<`: a token from ahead of the stored epoch (a database restored
            // from before a sign-out) is refused too.
            Standing::Active { session_epoch } if sep != session_epoch => {
                return Ok(Some(AuthRejection::SignedOut));
            }
            Standing::Active { .. } => {}
        }
        if store::any_revoked(&**client, ids)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(Some(AuthRejection::Revoked));
        }
        if let Some(key) = api_key {
            // A key id that does not parse names no key: nothing it minted stands.
            let live = match Uuid::parse_str(key) {
                Ok(id) => store::api_key_live(&**client, id)
                    .await
                    .map_err(|e| e.to_string())?,
                Err(_) => false,
            };
            if !live {
                return Ok(Some(AuthRejection::Revoked));
            }
        }
        Ok(None)
    }

    async fn verify_api_key(
        &self,
        token: &str,
    ) -> Result<(Principal, u64, Option<String>), AuthRejection> {
        let client = self.db.get().await.map_err(unavailable)?;
        let grant = store::api_key(&**client, token)
            .await
            .map_err(unavailable)??;
        let kind = grant.identity.principal_kind();
        let until = grant
            .expires_at
            .and_then(|e| e.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| d.as_secs())
            .min(unix_now() + RECHECK_SECS);
        let principal = Principal {
            subject: grant.identity.name.clone(),
            name: Some(grant.identity.name.clone()),
            issuer: self.settings.load().config.issuer.clone(),
            client_id: Some(grant.identity.name.clone()),
            tier: tokens::tier(&grant.identity.roles, kind, &grant.scopes),
            scopes: grant.scopes,
            roles: grant.identity.roles,
            kind,
            token_id: Some(format!("apikey:{}", grant.key_id)),
            expires_at: grant.expires_at,
        };
        Ok((principal, until, None))
    }

    // -----------------------------------------------------------------------------------
    // Changes from other processes
    // -----------------------------------------------------------------------------------

    /// Handles a `warden_identity` notice: forget cached verifications and reload keys
    /// (whoever sent it recorded the change).
    pub async fn on_notice(&self, payload: &str) {
        let notice: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        let kind = notice.get("kind").and_then(Value::as_str).unwrap_or("");
        let subject = notice.get("subject").and_then(Value::as_str);
        self.cache.clear();
        if subject == Some(super::bootstrap::ACCOUNT)
            && matches!(kind, "apikey.revoked" | "user.disabled")
        {
            // The in-memory bootstrap check must not outlive a revocation.
            self.bootstrap.store(Arc::new(None));
        }
        if kind == "keys.rotated"
            && let Err(error) = self.reload_keys().await
        {
            tracing::error!(%error, "cannot reload the signing keys after a rotation");
        }
        // The CLI and `warden import` record their changes themselves
        // (`identity_change_event`, `audit::record_now`): once, server running or not.
        tracing::info!(
            kind,
            subject = subject.unwrap_or_default(),
            "identity change noticed; cached verifications dropped"
        );
    }

    pub(super) async fn record(&self, event: AuditEvent) {
        if let Err(refused) = self.audit.record(AuditRecord::Event(Box::new(event))).await {
            tracing::error!(error = %refused, "an identity audit event was refused");
        }
    }

    // -----------------------------------------------------------------------------------
    // Users and logins
    // -----------------------------------------------------------------------------------

    /// Checks a username and password (rate-limited per username); under
    /// `identity.passkeys.second_factor`, a passkey confirms before the user is signed in
    /// (the challenge is sealed for the next form's CSRF token `csrf`).
    pub async fn login(
        &self,
        username: &str,
        password: Redacted<String>,
        client_id: &str,
        csrf: &str,
    ) -> Result<PasswordSignIn, LoginError> {
        let per_minute = self.settings.load().config.login_attempts_per_minute;
        if let Err(wait) = self.logins.attempt(username, per_minute) {
            self.login_event(username, client_id, false, "rate limited", "password")
                .await;
            return Err(LoginError::RateLimited(wait));
        }
        let client = self
            .db
            .get()
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let found = if store::check_name(username).is_ok() {
            store::find_with_password(&**client, username)
                .await
                .map_err(|e| LoginError::Unavailable(e.to_string()))?
        } else {
            None
        };
        let (row, hash) = match found {
            Some((row, hash)) => (Some(row), hash.map(Redacted::into_inner)),
            None => (None, None),
        };
        let ok = self
            .passwords
            .verify(password, hash)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        match row {
            Some(row) if ok && !row.disabled => {
                drop(client);
                self.after_password(row, client_id, csrf).await
            }
            Some(row) if ok && row.disabled => {
                self.login_event(username, client_id, false, "account disabled", "password")
                    .await;
                Err(LoginError::Invalid)
            }
            _ => {
                self.login_event(
                    username,
                    client_id,
                    false,
                    "wrong username or password",
                    "password",
                )
                .await;
                Err(LoginError::Invalid)
            }
        }
    }

    /// A correct password of `user`: signed in, or on to a passkey's confirmation.
    async fn after_password(
        &self,
        user: IdentityRow,
        client_id: &str,
        csrf: &str,
    ) -> Result<PasswordSignIn, LoginError> {
        let second_factor = self.passkeys().second_factor;
        if second_factor != SecondFactor::Off {
            let confirm = self
                .confirm_challenge(&user, csrf)
                .await
                .map_err(|e| LoginError::Unavailable(e.to_string()))?;
            if let Some((challenge, passkeys)) = confirm {
                // No decision yet: the passkey's row has it.
                let reason = "password correct; a passkey must confirm";
                self.record(login_row(&user.name, client_id, None, reason, "password"))
                    .await;
                return Ok(PasswordSignIn::Confirm {
                    challenge,
                    passkeys,
                });
            }
            if second_factor == SecondFactor::Required {
                self.login_event(
                    &user.name,
                    client_id,
                    false,
                    "a passkey must confirm a password sign-in and the account has none",
                    "password",
                )
                .await;
                return Err(LoginError::PasskeyRequired);
            }
        }
        if let Ok(client) = self.db.get().await {
            let _ = store::touch_login(&**client, user.id).await;
        }
        self.login_event(&user.name, client_id, true, "password", "password")
            .await;
        Ok(PasswordSignIn::Done(user))
    }

    /// Records an `auth.login` row; `method` is `password`, `passkey`,
    /// `password+passkey` or `link`.
    pub(super) async fn login_event(
        &self,
        username: &str,
        client_id: &str,
        ok: bool,
        reason: &str,
        method: &str,
    ) {
        let decision = Some(if ok { "allow" } else { "deny" });
        self.record(login_row(username, client_id, decision, reason, method))
            .await;
    }

    /// Records a consent decision.
    pub async fn consent_event(&self, user: &str, client_id: &str, allowed: bool, scopes: &str) {
        let mut event = AuditEvent::new("auth.consent", "user");
        event.actor_id = Some(user.to_owned());
        event.subject = Some(client_id.to_owned());
        event.decision = Some(if allowed { "allow" } else { "deny" });
        event.attributes = json!({"client_id": client_id, "scopes": scopes});
        self.record(event).await;
    }

    /// Records an event on the audit trail (for surfaces that act on identity's behalf).
    pub async fn record_event(&self, event: AuditEvent) {
        self.record(event).await;
    }

    /// Signs `name` out everywhere — the account page's "Sign out everywhere": every
    /// login session, authorization code, refresh token and access token issued to them
    /// so far stops working, on every replica (the notice drops their cached
    /// verifications). Recorded as `auth.signed_out`. `warden user sign-out` does the
    /// same from the CLI, which records its own row.
    pub async fn sign_out_everywhere(&self, name: &str, origin: &str) -> Result<(), SignOutError> {
        let mut db = self
            .db
            .get()
            .await
            .map_err(|e| SignOutError::Unavailable(e.to_string()))?;
        let transaction = db.transaction().await.map_err(StoreError::from)?;
        let signed_out = store::sign_out(&transaction, name, origin).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        self.cache.invalidate(None, Some(name), None);
        self.record(signed_out_event(name, origin, signed_out.detail))
            .await;
        Ok(())
    }

    /// The identity behind a login session, if it still may log in.
    pub async fn active_user(&self, name: &str) -> Option<IdentityRow> {
        let client = self.db.get().await.ok()?;
        store::find(&**client, name)
            .await
            .ok()
            .flatten()
            .filter(IdentityRow::can_sign_in)
    }

    /// The scopes a user's roles allow out of `requested` (all of them when nothing was
    /// requested). Empty means nothing can be granted.
    pub fn grantable(&self, roles: &[String], requested: &Scopes) -> Scopes {
        let allowed = self.policy.load().role_scopes(roles);
        if requested.is_empty() {
            allowed
        } else {
            requested.granted_by(&allowed)
        }
    }

    /// Whether `resource` (RFC 8707) names this Warden.
    pub fn is_own_resource(&self, resource: &str) -> bool {
        let config = &self.settings.load().config;
        let resource = resource.trim_end_matches('/');
        [&config.audience, &config.issuer].iter().any(|own| {
            resource == own.as_str()
                || resource
                    .strip_prefix(own.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    // -----------------------------------------------------------------------------------
    // Clients
    // -----------------------------------------------------------------------------------

    /// A registered client, or the one a Client ID Metadata Document describes.
    pub async fn client(&self, client_id: &str) -> Result<Option<Client>, OAuthError> {
        let config = self.settings.load().config.clone();
        if client_id.starts_with("https://") || client_id.starts_with("http://") {
            if !config.client_metadata_documents {
                return Ok(None);
            }
            return self
                .client_documents
                .fetch(&self.http, client_id, config.allow_insecure_loopback)
                .await
                .map(Some)
                .map_err(|e| OAuthError::new("invalid_client", e));
        }
        let db = self.db.get().await.map_err(OAuthError::server)?;
        oauth::find_client(&**db, client_id)
            .await
            .map_err(OAuthError::server)
    }

    /// RFC 7591 registration.
    pub async fn register_client(
        &self,
        request: oauth::RegistrationRequest,
    ) -> Result<(Client, Option<Redacted<String>>), OAuthError> {
        if !self.settings.load().config.dynamic_registration {
            return Err(OAuthError::new(
                "access_denied",
                "dynamic client registration is disabled (identity.dynamic_registration)",
            ));
        }
        let db = self.db.get().await.map_err(OAuthError::server)?;
        let (client, secret) = oauth::register(&**db, request)
            .await
            .map_err(OAuthError::server)?
            .map_err(|e| match e {
                oauth::RegistrationError::RedirectUri(m) => {
                    OAuthError::new("invalid_redirect_uri", m)
                }
                oauth::RegistrationError::Metadata(m) => {
                    OAuthError::new("invalid_client_metadata", m)
                }
            })?;
        let mut event = AuditEvent::new("oauth.client_registered", "client");
        event.actor_id = Some(client.client_id.clone());
        event.subject = client.client_name.clone();
        event.attributes = json!({"redirect_uris": client.redirect_uris, "auth_method": client.token_endpoint_auth_method});
        self.record(event).await;
        Ok((client, secret))
    }

    /// Authenticates a client at the token endpoint.
    pub async fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&Redacted<String>>,
    ) -> Result<Client, OAuthError> {
        let client = self
            .client(client_id)
            .await?
            .ok_or_else(|| OAuthError::new("invalid_client", "unknown client"))?;
        if !client.is_public() {
            let ok = match (&client.secret_hash, secret) {
                (Some(hash), Some(given)) => secret::equal(hash, &secret::hash(given.expose())),
                _ => false,
            };
            if !ok {
                return Err(OAuthError::new(
                    "invalid_client",
                    "client authentication failed",
                ));
            }
        }
        Ok(client)
    }

    /// Creates an authorization code after consent.
    pub async fn create_code(&self, grant: &CodeGrant) -> Result<Redacted<String>, OAuthError> {
        let db = self.db.get().await.map_err(OAuthError::server)?;
        oauth::create_code(&**db, grant)
            .await
            .map_err(OAuthError::server)
    }

    // -----------------------------------------------------------------------------------
    // The token endpoint
    // -----------------------------------------------------------------------------------

    async fn token_refused(&self, grant_type: &str, client_id: &str, error: &OAuthError) {
        let mut event = AuditEvent::new("auth.token_refused", "client");
        event.actor_id = Some(client_id.to_owned());
        event.decision = Some("deny");
        event.reason = Some(format!("{}: {}", error.code, error.description));
        event.attributes = json!({"grant_type": grant_type, "surface": "token_endpoint"});
        self.record(event).await;
    }

    /// Signs an access token and records it.
    async fn issue(&self, grant: &Grant, grant_type: &str) -> Result<Issued, OAuthError> {
        let config = self.settings.load().config.clone();
        let issued = tokens::issue(&self.keys.load(), &config.issuer, &config.audience, grant)
            .map_err(OAuthError::server)?;
        let db = self.db.get().await.map_err(OAuthError::server)?;
        keys::note_expiry(&**db, &issued.kid, issued.expires_at)
            .await
            .map_err(OAuthError::server)?;
        let mut event = AuditEvent::new(
            "auth.token_issued",
            if grant.kind == PrincipalKind::Service {
                "client"
            } else {
                "user"
            },
        );
        event.actor_id = Some(grant.subject.clone());
        event.subject = Some(issued.jti.clone());
        event.decision = Some("allow");
        event.attributes = json!({
            "grant_type": grant_type,
            "client_id": grant.client_id,
            "scopes": grant.scopes.to_header_value(),
            "family": grant.family,
            "kid": issued.kid,
        });
        self.record(event).await;
        Ok(issued)
    }

    fn check_resource(&self, resource: Option<&str>) -> Result<(), OAuthError> {
        match resource {
            Some(r) if !self.is_own_resource(r) => Err(OAuthError::new(
                "invalid_target",
                format!("`{r}` is not a resource of this Warden"),
            )),
            _ => Ok(()),
        }
    }

    /// The user a code or refresh token was granted to, if still enabled and not signed
    /// out everywhere since the grant (made at `session_epoch`).
    async fn user_for_grant(
        &self,
        name: &str,
        session_epoch: i64,
    ) -> Result<IdentityRow, OAuthError> {
        let db = self.db.get().await.map_err(OAuthError::server)?;
        match store::find(&**db, name).await.map_err(OAuthError::server)? {
            Some(row) if !row.disabled && row.session_epoch == session_epoch => Ok(row),
            Some(row) if !row.disabled => Err(OAuthError::new(
                "invalid_grant",
                "the user signed out everywhere after this grant was made",
            )),
            _ => Err(OAuthError::new(
                "invalid_grant",
                "the account is disabled or gone",
            )),
        }
    }

    /// `grant_type=authorization_code`.
    pub async fn exchange_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let result = self
            .exchange_code_inner(client, code, redirect_uri, verifier, resource)
            .await;
        if let Err(error) = &result {
            self.token_refused("authorization_code", &client.client_id, error)
                .await;
        }
        result
    }

    async fn exchange_code_inner(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.allows_grant("authorization_code") {
            return Err(OAuthError::new(
                "unauthorized_client",
                "the client may not use authorization codes",
            ));
        }
        self.check_resource(resource)?;
        let family = Uuid::now_v7();
        let db = self.db.get().await.map_err(OAuthError::server)?;
        let grant = match oauth::redeem_code(&**db, code, family)
            .await
            .map_err(OAuthError::server)?
        {
            Ok(grant) => grant,
            Err(CodeRefusal::Replayed { family }) => {
                drop(db);
                if let Some(family) = family {
                    self.revoke_family(family, "authorization code replayed")
                        .await?;
                }
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the authorization code was already used; the tokens issued for it are revoked",
                ));
            }
            Err(CodeRefusal::Expired) => {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the authorization code expired",
                ));
            }
            Err(CodeRefusal::Unknown) => {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "unknown authorization code",
                ));
            }
        };
        drop(db);
        if grant.client_id != client.client_id {
            return Err(OAuthError::new(
                "invalid_grant",
                "the code was issued to another client",
            ));
        }
        if redirect_uri != Some(grant.redirect_uri.as_str()) {
            return Err(OAuthError::new(
                "invalid_grant",
                "redirect_uri does not match the authorization request",
            ));
        }
        let Some(verifier) = verifier else {
            return Err(OAuthError::new(
                "invalid_grant",
                "code_verifier is required (PKCE)",
            ));
        };
        if !oauth::pkce_matches(verifier, &grant.code_challenge) {
            return Err(OAuthError::new(
                "invalid_grant",
                "code_verifier does not match the code_challenge",
            ));
        }
        if let (Some(asked), Some(bound)) = (resource, grant.resource.as_deref())
            && asked.trim_end_matches('/') != bound.trim_end_matches('/')
        {
            return Err(OAuthError::new(
                "invalid_target",
                "resource differs from the authorization request",
            ));
        }
        let user = self
            .user_for_grant(&grant.identity, grant.session_epoch)
            .await?;
        self.grant_tokens(
            client,
            &user,
            grant.scopes,
            grant.resource,
            family,
            "authorization_code",
        )
        .await
    }

    async fn grant_tokens(
        &self,
        client: &Client,
        user: &IdentityRow,
        scopes: Scopes,
        resource: Option<String>,
        family: Uuid,
        grant_type: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let config = self.settings.load().config.clone();
        let issued = self
            .issue(
                &Grant {
                    subject: user.name.clone(),
                    client_id: client.client_id.clone(),
                    scopes: scopes.clone(),
                    roles: user.roles.clone(),
                    kind: user.principal_kind(),
                    family: Some(family),
                    session_epoch: user.session_epoch,
                    api_key: None,
                    ttl: config.access_token_ttl,
                },
                grant_type,
            )
            .await?;
        let refresh_token = if client.allows_grant("refresh_token") {
            let db = self.db.get().await.map_err(OAuthError::server)?;
            Some(
                oauth::create_refresh(
                    &**db,
                    &RefreshGrant {
                        family,
                        client_id: client.client_id.clone(),
                        identity: user.name.clone(),
                        scopes: scopes.clone(),
                        resource,
                        session_epoch: user.session_epoch,
                    },
                    config.refresh_token_ttl,
                )
                .await
                .map_err(OAuthError::server)?,
            )
        } else {
            None
        };
        Ok(TokenResponse {
            access_token: issued.token,
            expires_in: config.access_token_ttl.as_secs(),
            refresh_token,
            scope: scopes.to_header_value(),
        })
    }

    /// `grant_type=refresh_token`: rotation, reuse detection, no scope escalation.
    pub async fn refresh(
        &self,
        client: &Client,
        refresh_token: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let result = self
            .refresh_inner(client, refresh_token, scope, resource)
            .await;
        if let Err(error) = &result {
            self.token_refused("refresh_token", &client.client_id, error)
                .await;
        }
        result
    }

    async fn refresh_inner(
        &self,
        client: &Client,
        refresh_token: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        self.check_resource(resource)?;
        let db = self.db.get().await.map_err(OAuthError::server)?;
        // Checked before the token is spent, so a mistaken request does not burn it.
        if let Some((_, owner)) = oauth::refresh_family(&**db, refresh_token)
            .await
            .map_err(OAuthError::server)?
            && owner != client.client_id
        {
            return Err(OAuthError::new(
                "invalid_grant",
                "the refresh token was issued to another client",
            ));
        }
        let grant = match oauth::use_refresh(&**db, refresh_token)
            .await
            .map_err(OAuthError::server)?
        {
            Ok(grant) => grant,
            Err(RefreshRefusal::Reused { family }) => {
                drop(db);
                self.revoke_family(family, "refresh token reused").await?;
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the refresh token was already used; every token of its family is revoked",
                ));
            }
            Err(RefreshRefusal::Revoked) => {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the refresh token is revoked",
                ));
            }
            Err(RefreshRefusal::Expired) => {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the refresh token expired",
                ));
            }
            Err(RefreshRefusal::Unknown) => {
                return Err(OAuthError::new("invalid_grant", "unknown refresh token"));
            }
        };
        drop(db);
        let scopes = match scope {
            Some(requested) => {
                let requested = Scopes::parse(requested);
                if !requested.is_within(&grant.scopes) {
                    // The spent token is not coming back: hand the client a way forward
                    // only if it asks properly. The family stays valid for a retry with
                    // the original scopes would be reuse, so revoke nothing and refuse.
                    return Err(OAuthError::new(
                        "invalid_scope",
                        format!(
                            "a refresh cannot add scopes; the grant holds `{}`",
                            grant.scopes.to_header_value()
                        ),
                    ));
                }
                requested
            }
            None => grant.scopes.clone(),
        };
        let user = self
            .user_for_grant(&grant.identity, grant.session_epoch)
            .await?;
        // Roles may have shrunk since the grant.
        let scopes = self.grantable(&user.roles, &scopes);
        self.grant_tokens(
            client,
            &user,
            scopes,
            grant.resource,
            grant.family,
            "refresh_token",
        )
        .await
    }

    /// `grant_type=client_credentials`: a service account, its API key as the secret.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: Option<&Redacted<String>>,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let result = self
            .client_credentials_inner(client_id, secret, scope, resource)
            .await;
        if let Err(error) = &result {
            self.token_refused("client_credentials", client_id, error)
                .await;
        }
        result
    }

    async fn client_credentials_inner(
        &self,
        client_id: &str,
        secret: Option<&Redacted<String>>,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        self.check_resource(resource)?;
        let invalid = || OAuthError::new("invalid_client", "client authentication failed");
        let secret = secret.ok_or_else(invalid)?;
        let db = self.db.get().await.map_err(OAuthError::server)?;
        let grant = store::api_key(&**db, secret.expose())
            .await
            .map_err(OAuthError::server)?
            .map_err(|_| invalid())?;
        if grant.identity.name != client_id || grant.identity.kind != "service" {
            return Err(invalid());
        }
        drop(db);
        let scopes = match scope {
            Some(requested) => {
                let requested = Scopes::parse(requested);
                if !requested.is_within(&grant.scopes) {
                    return Err(OAuthError::new(
                        "invalid_scope",
                        format!(
                            "the service account's key grants `{}`",
                            grant.scopes.to_header_value()
                        ),
                    ));
                }
                requested
            }
            None => grant.scopes.clone(),
        };
        let config = self.settings.load().config.clone();
        let issued = self
            .issue(
                &Grant {
                    subject: grant.identity.name.clone(),
                    client_id: client_id.to_owned(),
                    scopes: scopes.clone(),
                    roles: grant.identity.roles.clone(),
                    kind: PrincipalKind::Service,
                    family: None,
                    session_epoch: grant.identity.session_epoch,
                    api_key: Some(grant.key_id),
                    ttl: config.access_token_ttl,
                },
                "client_credentials",
            )
            .await?;
        Ok(TokenResponse {
            access_token: issued.token,
            expires_in: config.access_token_ttl.as_secs(),
            refresh_token: None,
            scope: scopes.to_header_value(),
        })
    }

    /// Revokes a refresh family and every access token issued from it.
    async fn revoke_family(&self, family: Uuid, reason: &str) -> Result<(), OAuthError> {
        let config = self.settings.load().config.clone();
        let until = SystemTime::now() + config.access_token_ttl.max(config.refresh_token_ttl);
        let id = oauth::family_token_id(&family.to_string());
        let told = self.deny(&id, Some(family), until, reason).await?;
        self.cache.invalidate(None, None, Some(&family.to_string()));
        let mut event = AuditEvent::new("auth.token_revoked", "system");
        event.subject = Some(id);
        event.reason = Some(reason.to_owned());
        event.decision = Some("deny");
        event.attributes = json!({"replicas_told": told});
        self.record(event).await;
        Ok(())
    }

    /// Puts `token_id` (a `jti`, or `family:<id>` with the family's refresh tokens
    /// revoked too) on the deny-list until `until`, and tells the other replicas, which
    /// drop their cached verifications: one transaction, so the notice goes out with the
    /// revocation. If that fails, the revocation is made without the notice — a reused
    /// refresh token or a replayed code must not leave the family live because the
    /// others could not be told (they keep cached verifications until those expire; the
    /// error is logged). Returns whether they were told.
    async fn deny(
        &self,
        token_id: &str,
        family: Option<Uuid>,
        until: SystemTime,
        reason: &str,
    ) -> Result<bool, OAuthError> {
        let mut db = self.db.get().await.map_err(OAuthError::server)?;
        match deny_rows(&mut db, token_id, family, until, reason, true).await {
            Ok(()) => Ok(true),
            Err(error) => {
                tracing::error!(%error, token_id, "a revocation and its notice to other replicas failed together; revoking without the notice");
                deny_rows(&mut db, token_id, family, until, reason, false)
                    .await
                    .map_err(OAuthError::server)?;
                Ok(false)
            }
        }
    }

    /// RFC 7009: revokes a refresh token (its family) or one of Warden's access tokens.
    /// Unknown tokens are not an error.
    pub async fn revoke_token(&self, client: &Client, token: &str) -> Result<(), OAuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Ok(());
        }
        let db = self.db.get().await.map_err(OAuthError::server)?;
        let family = oauth::refresh_family(&**db, token)
            .await
            .map_err(OAuthError::server)?;
        drop(db);
        if let Some((family, owner)) = family {
            if owner != client.client_id {
                return Ok(());
            }
            return self.revoke_family(family, "revoked by the client").await;
        }
        let config = self.settings.load().config.clone();
        if let Ok(claims) =
            tokens::verify(token, &self.keys.load(), &config.issuer, &config.audience)
            && claims.client_id == client.client_id
        {
            let until = UNIX_EPOCH + Duration::from_secs(claims.exp);
            let told = self
                .deny(&claims.jti, None, until, "revoked by the client")
                .await?;
            self.cache.invalidate(Some(&claims.jti), None, None);
            let mut event = AuditEvent::new("auth.token_revoked", "client");
            event.actor_id = Some(client.client_id.clone());
            event.subject = Some(claims.jti);
            event.reason = Some("revoked by the client".into());
            event.attributes = json!({"replicas_told": told});
            self.record(event).await;
        }
        Ok(())
    }

    /// RFC 7662 for Warden's access tokens and refresh tokens.
    pub async fn introspect(&self, token: &str) -> Value {
        if token.len() > MAX_TOKEN_BYTES {
            return json!({"active": false});
        }
        if token.starts_with(secret::REFRESH_PREFIX) {
            let Ok(db) = self.db.get().await else {
                return json!({"active": false});
            };
            let row = db
                .query_opt(
                    // Active as `/oauth/token` would take it: its user enabled and not
                    // signed out everywhere since it was granted.
                    "SELECT t.client_id, t.identity_name, t.scopes, extract(epoch FROM t.expires_at)::bigint \
                     FROM oauth_refresh_tokens t JOIN identities i ON i.name = t.identity_name \
                     WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.revoked_at IS NULL \
                     AND t.expires_at > now() AND NOT i.disabled AND i.session_epoch = t.session_epoch",
                    &[&secret::hash(token)],
                )
                .await
                .ok()
                .flatten();
            return match row {
                Some(r) => json!({
                    "active": true, "token_type": "refresh_token",
                    "client_id": r.get::<_, String>(0), "sub": r.get::<_, String>(1),
                    "username": r.get::<_, String>(1), "scope": r.get::<_, String>(2),
                    "exp": r.get::<_, i64>(3),
                    "iss": self.settings.load().config.issuer,
                }),
                None => json!({"active": false}),
            };
        }
        let config = self.settings.load().config.clone();
        match tokens::verify(token, &self.keys.load(), &config.issuer, &config.audience) {
            Ok(claims) => match self.verify_local(token).await {
                Ok(_) => json!({
                    "active": true, "token_type": "Bearer", "scope": claims.scope,
                    "client_id": claims.client_id, "sub": claims.sub, "username": claims.sub,
                    "exp": claims.exp, "iat": claims.iat, "nbf": claims.nbf, "iss": claims.iss,
                    "aud": claims.aud, "jti": claims.jti,
                }),
                Err(_) => json!({"active": false}),
            },
            Err(_) => json!({"active": false}),
        }
    }

    // -----------------------------------------------------------------------------------
    // The bootstrap admin
    // -----------------------------------------------------------------------------------

    /// Makes the bootstrap token an API key of the `admin` service account
    /// (role `admin`, scope `*`), revoking earlier bootstrap tokens. While the account is
    /// disabled the token is refused like any key of a disabled account; once it is
    /// enabled again (`warden user enable admin`) the token verifies through the database
    /// at once, and its copy for outages is held again from the next start.
    pub async fn register_bootstrap(
        &self,
        token: &Redacted<String>,
    ) -> Result<(), IdentityStartError> {
        let db = self.db.get().await?;
        let (row, _) = store::ensure(
            &**db,
            super::bootstrap::ACCOUNT,
            "service",
            &["admin".to_owned()],
        )
        .await?;
        store::insert_api_key(&**db, row.id, token, &Scopes::parse("*"), None).await?;
        let hash = secret::hash(token.expose());
        let revoked = !store::api_key_hash_live(&**db, &hash).await?;
        store::revoke_api_keys(&**db, None, Some(super::bootstrap::ACCOUNT), Some(&hash)).await?;
        if row.disabled || revoked {
            // The copy kept for outages would accept the token without the database.
            self.bootstrap.store(Arc::new(None));
            tracing::info!(
                account = super::bootstrap::ACCOUNT,
                "the bootstrap admin account is disabled or its token revoked: the token is \
                 not accepted (delete admin.token and restart for a new one)"
            );
            return Ok(());
        }
        let scopes = Scopes::parse("*");
        let principal = Principal {
            subject: super::bootstrap::ACCOUNT.to_owned(),
            name: Some("bootstrap admin".into()),
            issuer: self.settings.load().config.issuer.clone(),
            client_id: None,
            tier: tokens::tier(&row.roles, PrincipalKind::Service, &scopes),
            scopes,
            roles: row.roles,
            kind: PrincipalKind::Service,
            token_id: Some("bootstrap".into()),
            expires_at: None,
        };
        self.bootstrap.store(Arc::new(Some((
            cache::key(token.expose()),
            Arc::new(principal),
        ))));
        Ok(())
    }
}

fn settings(config: &Config, policy: &PolicyEngine) -> Settings {
    let anonymous_scopes = policy.role_scopes(&["anonymous"]);
    Settings {
        config: config.identity.clone(),
        anonymous: (!anonymous_scopes.is_empty()).then(|| {
            Arc::new(Principal {
                scopes: anonymous_scopes,
                ..Principal::anonymous()
            })
        }),
    }
}

/// An `auth.login` row; `username` empty for a passkey Warden does not know (no one
/// was identified).
fn login_row(
    username: &str,
    client_id: &str,
    decision: Option<&'static str>,
    reason: &str,
    method: &str,
) -> AuditEvent {
    let mut event = AuditEvent::new("auth.login", "user");
    event.actor_id = (!username.is_empty()).then(|| username.to_owned());
    event.subject = Some(client_id.to_owned());
    event.decision = decision;
    event.reason = Some(reason.to_owned());
    event.attributes = json!({"method": method, "client_id": client_id});
    event
}

/// [`Identity::deny`]'s statements, in one transaction; with `notify`, the notice
/// (`token.revoked`) too.
async fn deny_rows(
    db: &mut deadpool_postgres::Object,
    token_id: &str,
    family: Option<Uuid>,
    until: SystemTime,
    reason: &str,
    notify: bool,
) -> Result<(), String> {
    let transaction = db.transaction().await.map_err(|e| e.to_string())?;
    if let Some(family) = family {
        oauth::revoke_family(&*transaction, family)
            .await
            .map_err(|e| e.to_string())?;
    }
    store::revoke(&*transaction, token_id, until, reason)
        .await
        .map_err(|e| e.to_string())?;
    if notify {
        store::notify(
            &*transaction,
            "token.revoked",
            token_id,
            json!({"origin": "serve"}),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    transaction.commit().await.map_err(|e| e.to_string())
}

/// The audit event of an identity change made outside a server (`warden user …`,
/// `warden apikey …`, `warden keys rotate`, `warden token issue`, `warden import`) by
/// `actor`: the notice servers hear (`kind`, `subject`, `detail`) as its attributes.
pub fn identity_change_event(kind: &str, subject: &str, detail: Value, actor: &str) -> AuditEvent {
    if kind == store::SIGNED_OUT_NOTICE {
        return signed_out_event(subject, actor, detail);
    }
    let mut event = AuditEvent::new(
        match kind {
            "keys.rotated" => "identity.key_rotated",
            k if k.starts_with("apikey.") => "identity.api_key_changed",
            k if k.starts_with("token.") => "auth.token_issued",
            _ => "identity.changed",
        },
        "system",
    );
    event.actor_id = Some(actor.to_owned());
    event.subject = Some(subject.to_owned());
    event.attributes = json!({"kind": kind, "subject": subject, "detail": detail});
    event
}

/// The `auth.signed_out` row: who was signed out, by whom (`account` for the account
/// page, the CLI's user for `warden user sign-out`/`passwd`).
fn signed_out_event(name: &str, origin: &str, detail: Value) -> AuditEvent {
    let mut event = AuditEvent::new("auth.signed_out", "system");
    event.actor_id = Some(origin.to_owned());
    event.subject = Some(name.to_owned());
    event.reason = Some("signed out everywhere".to_owned());
    event.attributes = detail;
    event
}

/// Why a sign-out everywhere did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SignOutError {
    #[error("the identity store is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn unavailable(error: impl std::fmt::Display) -> AuthRejection {
    tracing::error!(%error, "token verification could not reach the database");
    AuthRejection::Unavailable(error.to_string())
}

/// Why identity could not start.
#[derive(Debug, thiserror::Error)]
pub enum IdentityStartError {
    #[error("cannot reach PostgreSQL for identity: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot build the HTTP client for federation: {0}")]
    Http(String),
}

impl Authenticator for Identity {
    fn authenticate<'a>(
        &'a self,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Arc<Principal>, AuthRejection>> {
        Box::pin(self.authenticate_token(bearer))
    }
}

/// Signs a token outside `warden serve` (`warden token issue`): loads the keys (creating
/// the first one if needed) and records the expiry on the key.
pub async fn issue_offline(
    client: &mut tokio_postgres::Client,
    master: &MasterKey,
    config: &IdentityConfig,
    grant: &Grant,
) -> Result<Issued, keys::KeyError> {
    keys::ensure_active(client, master).await?;
    let set = keys::load(&*client, master).await?;
    let issued = tokens::issue(&set, &config.issuer, &config.audience, grant)?;
    keys::note_expiry(&*client, &issued.kid, issued.expires_at).await?;
    Ok(issued)
}

/// Handles one notice from the process-wide listener (`db::notify`): a (re)connection
/// clears the verified-token cache, since notices sent while disconnected are lost; an
/// identity notice goes to [`Identity::on_notice`].
pub async fn handle_notice(identity: &Identity, notice: &crate::db::notify::Notice) {
    match notice {
        crate::db::notify::Notice::Connected => identity.cache.clear(),
        crate::db::notify::Notice::Message { channel, payload } if channel == store::CHANNEL => {
            identity.on_notice(payload).await
        }
        crate::db::notify::Notice::Message { .. } => {}
    }
}
