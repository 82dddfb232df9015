//! The authorization server's state, independent of HTTP: registered clients (RFC 7591)
//! and Client ID Metadata Documents, PKCE, authorization codes (single use, ten minutes,
//! stored hashed) and refresh tokens (rotated on every use; presenting a rotated one is
//! reuse and revokes its whole family).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::Scopes;
use super::secret::{self, Redacted};

/// How long an authorization code lives.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// How long a fetched Client ID Metadata Document is trusted.
const CLIENT_DOCUMENT_TTL: Duration = Duration::from_secs(300);
/// Largest client metadata document fetched.
const CLIENT_DOCUMENT_MAX_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum OAuthStoreError {
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// A client as the authorization server knows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub token_endpoint_auth_method: String,
    #[serde(skip)]
    pub secret_hash: Option<Vec<u8>>,
    pub scope: Option<String>,
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.token_endpoint_auth_method == "none"
    }

    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }

    /// The name shown on the consent page.
    pub fn display_name(&self) -> &str {
        self.client_name.as_deref().unwrap_or(&self.client_id)
    }
}

/// What RFC 7591 registration accepts.
#[derive(Debug, Default, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub token_endpoint_auth_method: Option<String>,
    pub scope: Option<String>,
}

/// Why a registration is refused (`invalid_redirect_uri` or `invalid_client_metadata`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegistrationError {
    #[error("{0}")]
    RedirectUri(String),
    #[error("{0}")]
    Metadata(String),
}

/// Checks one redirect URI: absolute, no fragment; `https`, `http` on loopback, or a
/// private-use scheme of a native app (RFC 8252) — never `javascript:`, `data:` or
/// `file:`.
pub fn check_redirect_uri(uri: &str) -> Result<(), RegistrationError> {
    let bad = |why: &str| Err(RegistrationError::RedirectUri(format!("`{uri}`: {why}")));
    if uri.len() > 2048 {
        return bad("longer than 2048 characters");
    }
    if uri.contains('#') {
        return bad("a redirect URI must not contain a fragment");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return bad("not an absolute URI");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return bad("not an absolute URI");
    }
    match scheme.as_str() {
        "https" => {
            if !rest.starts_with("//") || rest.len() <= 2 {
                return bad("an https redirect URI needs a host");
            }
            Ok(())
        }
        "http" => {
            if crate::config::identity::is_loopback_url(uri) {
                Ok(())
            } else {
                bad(
                    "http redirect URIs are allowed only on loopback hosts (127.0.0.1, [::1], localhost)",
                )
            }
        }
        "javascript" | "data" | "file" | "vbscript" | "about" | "blob" => {
            bad("this scheme is not allowed")
        }
        _ if scheme.contains('.') => Ok(()),
        _ => bad("private-use schemes must be reverse domain names (com.example.app:/callback)"),
    }
}

/// Validates a registration and stores the client. Returns it with its secret (for a
/// confidential client; shown once).
pub async fn register<C: GenericClient>(
    db: &C,
    request: RegistrationRequest,
) -> Result<Result<(Client, Option<Redacted<String>>), RegistrationError>, OAuthStoreError> {
    if request.redirect_uris.is_empty() {
        return Ok(Err(RegistrationError::RedirectUri(
            "`redirect_uris` must list at least one URI".into(),
        )));
    }
    for uri in &request.redirect_uris {
        if let Err(e) = check_redirect_uri(uri) {
            return Ok(Err(e));
        }
    }
    let grant_types = request
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    for grant in &grant_types {
        if !matches!(grant.as_str(), "authorization_code" | "refresh_token") {
            return Ok(Err(RegistrationError::Metadata(format!(
                "grant type `{grant}` cannot be registered (authorization_code and refresh_token only; \
                 service accounts use client_credentials with an API key)"
            ))));
        }
    }
    if let Some(types) = &request.response_types
        && types.iter().any(|t| t != "code")
    {
        return Ok(Err(RegistrationError::Metadata(
            "only the `code` response type is supported".into(),
        )));
    }
    let method = request
        .token_endpoint_auth_method
        .unwrap_or_else(|| "none".into());
    if !matches!(
        method.as_str(),
        "none" | "client_secret_basic" | "client_secret_post"
    ) {
        return Ok(Err(RegistrationError::Metadata(format!(
            "token_endpoint_auth_method `{method}` is not supported (none, client_secret_basic, client_secret_post)"
        ))));
    }
    if request.client_name.as_ref().is_some_and(|n| n.len() > 200) {
        return Ok(Err(RegistrationError::Metadata(
            "client_name is longer than 200 characters".into(),
        )));
    }
    let secret = (method != "none").then(|| secret::generate(secret::CLIENT_SECRET_PREFIX));
    let client = Client {
        client_id: secret::short_id("wcl_"),
        client_name: request.client_name,
        redirect_uris: request.redirect_uris,
        grant_types,
        token_endpoint_auth_method: method,
        secret_hash: secret.as_ref().map(|s| secret::hash(s.expose())),
        scope: request.scope,
    };
    db.execute(
        "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, grant_types, \
         token_endpoint_auth_method, client_secret_hash, scope) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &client.client_id,
            &client.client_name,
            &client.redirect_uris,
            &client.grant_types,
            &client.token_endpoint_auth_method,
            &client.secret_hash,
            &client.scope,
        ],
    )
    .await?;
    Ok(Ok((client, secret)))
}

pub async fn find_client<C: GenericClient>(
    db: &C,
    client_id: &str,
) -> Result<Option<Client>, OAuthStoreError> {
    Ok(db
        .query_opt(
            "SELECT client_id, client_name, redirect_uris, grant_types, token_endpoint_auth_method, \
             client_secret_hash, scope FROM oauth_clients WHERE client_id = $1",
            &[&client_id],
        )
        .await?
        .map(|r| Client {
            client_id: r.get(0),
            client_name: r.get(1),
            redirect_uris: r.get(2),
            grant_types: r.get(3),
            token_endpoint_auth_method: r.get(4),
            secret_hash: r.get(5),
            scope: r.get(6),
        }))
}

// ---------------------------------------------------------------------------------------
// Client ID Metadata Documents
// ---------------------------------------------------------------------------------------

/// Fetched client metadata documents, by URL.
#[derive(Default)]
pub struct ClientDocuments {
    cache: Mutex<HashMap<String, (Client, Instant)>>,
}

impl ClientDocuments {
    /// The client a Client ID Metadata Document describes (`client_id` is its https URL).
    pub async fn fetch(
        &self,
        http: &reqwest::Client,
        url: &str,
        allow_insecure_loopback: bool,
    ) -> Result<Client, String> {
        if let Some((client, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
            && at.elapsed() < CLIENT_DOCUMENT_TTL
        {
            return Ok(client.clone());
        }
        crate::config::identity::check_fetch_url(url, allow_insecure_loopback)?;
        let body = fetch_json(http, url, CLIENT_DOCUMENT_MAX_BYTES).await?;
        let document: RegistrationRequest = serde_json::from_value(body.clone())
            .map_err(|e| format!("the client metadata document is malformed: {e}"))?;
        if body.get("client_id").and_then(Value::as_str) != Some(url) {
            return Err("the client metadata document's `client_id` is not its own URL".into());
        }
        if document.redirect_uris.is_empty() {
            return Err("the client metadata document lists no redirect_uris".into());
        }
        for uri in &document.redirect_uris {
            check_redirect_uri(uri).map_err(|e| e.to_string())?;
        }
        let method = document
            .token_endpoint_auth_method
            .unwrap_or_else(|| "none".into());
        if method != "none" {
            return Err("clients identified by a metadata document must be public (token_endpoint_auth_method: none)".into());
        }
        let client = Client {
            client_id: url.to_owned(),
            client_name: document.client_name,
            redirect_uris: document.redirect_uris,
            grant_types: document
                .grant_types
                .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]),
            token_endpoint_auth_method: method,
            secret_hash: None,
            scope: document.scope,
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_owned(), (client.clone(), Instant::now()));
        Ok(client)
    }
}

/// GETs a JSON document of at most `limit` bytes, following no redirects.
pub async fn fetch_json(http: &reqwest::Client, url: &str, limit: usize) -> Result<Value, String> {
    let mut response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(format!("{url} is larger than {limit} bytes"));
        }
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))
}

// ---------------------------------------------------------------------------------------
// PKCE
// ---------------------------------------------------------------------------------------

/// Whether a `code_challenge` has the shape of an S256 challenge (43 base64url chars).
pub fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636: `BASE64URL(SHA256(verifier)) == challenge`, with a well-formed verifier.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    secret::equal(computed.as_bytes(), challenge.as_bytes())
}

// ---------------------------------------------------------------------------------------
// Authorization codes
// ---------------------------------------------------------------------------------------

/// What a code was issued for.
#[derive(Clone, Debug)]
pub struct CodeGrant {
    pub client_id: String,
    pub identity: String,
    pub redirect_uri: String,
    pub scopes: Scopes,
    pub resource: Option<String>,
    pub code_challenge: String,
    /// The user's session epoch when the login session that consented began.
    pub session_epoch: i64,
}

pub async fn create_code<C: GenericClient>(
    db: &C,
    grant: &CodeGrant,
) -> Result<Redacted<String>, OAuthStoreError> {
    let code = secret::generate(secret::CODE_PREFIX);
    db.execute(
        "INSERT INTO oauth_codes (code_hash, client_id, identity_name, redirect_uri, scopes, resource, \
         code_challenge, expires_at, session_epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &secret::hash(code.expose()),
            &grant.client_id,
            &grant.identity,
            &grant.redirect_uri,
            &grant.scopes.to_header_value(),
            &grant.resource,
            &grant.code_challenge,
            &(SystemTime::now() + CODE_TTL),
            &grant.session_epoch,
        ],
    )
    .await?;
    Ok(code)
}

/// Why a code cannot be exchanged.
#[derive(Debug, PartialEq, Eq)]
pub enum CodeRefusal {
    Unknown,
    Expired,
    /// Used before: what the first exchange issued (its refresh family) is revoked.
    Replayed {
        family: Option<Uuid>,
    },
}

/// Redeems a code once, binding it to `family` (the refresh family the exchange
/// creates).
pub async fn redeem_code<C: GenericClient>(
    db: &C,
    code: &str,
    family: Uuid,
) -> Result<Result<CodeGrant, CodeRefusal>, OAuthStoreError> {
    let hash = secret::hash(code);
    let row = db
        .query_opt(
            "UPDATE oauth_codes SET used_at = now(), family_id = $2 \
             WHERE code_hash = $1 AND used_at IS NULL AND expires_at > now() \
             RETURNING client_id, identity_name, redirect_uri, scopes, resource, code_challenge, \
             session_epoch",
            &[&hash, &family],
        )
        .await?;
    if let Some(r) = row {
        return Ok(Ok(CodeGrant {
            client_id: r.get(0),
            identity: r.get(1),
            redirect_uri: r.get(2),
            scopes: Scopes::parse(&r.get::<_, String>(3)),
            resource: r.get(4),
            code_challenge: r.get(5),
            session_epoch: r.get(6),
        }));
    }
    let row = db
        .query_opt(
            "SELECT used_at IS NOT NULL, family_id FROM oauth_codes WHERE code_hash = $1",
            &[&hash],
        )
        .await?;
    Ok(Err(match row {
        None => CodeRefusal::Unknown,
        Some(r) if r.get::<_, bool>(0) => CodeRefusal::Replayed { family: r.get(1) },
        Some(_) => CodeRefusal::Expired,
    }))
}

// ---------------------------------------------------------------------------------------
// Refresh tokens
// ---------------------------------------------------------------------------------------

/// What a refresh token carries forward.
#[derive(Clone, Debug)]
pub struct RefreshGrant {
    pub family: Uuid,
    pub client_id: String,
    pub identity: String,
    pub scopes: Scopes,
    pub resource: Option<String>,
    /// The user's session epoch the family was granted at.
    pub session_epoch: i64,
}

pub async fn create_refresh<C: GenericClient>(
    db: &C,
    grant: &RefreshGrant,
    ttl: Duration,
) -> Result<Redacted<String>, OAuthStoreError> {
    let token = secret::generate(secret::REFRESH_PREFIX);
    db.execute(
        "INSERT INTO oauth_refresh_tokens (token_hash, family_id, client_id, identity_name, scopes, \
         resource, expires_at, session_epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &secret::hash(token.expose()),
            &grant.family,
            &grant.client_id,
            &grant.identity,
            &grant.scopes.to_header_value(),
            &grant.resource,
            &(SystemTime::now() + ttl),
            &grant.session_epoch,
        ],
    )
    .await?;
    Ok(token)
}

/// Why a refresh token cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshRefusal {
    Unknown,
    Expired,
    Revoked,
    /// Presented after it was rotated: the family is revoked now.
    Reused {
        family: Uuid,
    },
}

/// Marks a refresh token used and returns its grant; a second use is reuse.
pub async fn use_refresh<C: GenericClient>(
    db: &C,
    token: &str,
) -> Result<Result<RefreshGrant, RefreshRefusal>, OAuthStoreError> {
    let hash = secret::hash(token);
    let row = db
        .query_opt(
            "UPDATE oauth_refresh_tokens SET used_at = now() \
             WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now() \
             RETURNING family_id, client_id, identity_name, scopes, resource, session_epoch",
            &[&hash],
        )
        .await?;
    if let Some(r) = row {
        return Ok(Ok(RefreshGrant {
            family: r.get(0),
            client_id: r.get(1),
            identity: r.get(2),
            scopes: Scopes::parse(&r.get::<_, String>(3)),
            resource: r.get(4),
            session_epoch: r.get(5),
        }));
    }
    let row = db
        .query_opt(
            "SELECT family_id, used_at IS NOT NULL, revoked_at IS NOT NULL FROM oauth_refresh_tokens \
             WHERE token_hash = $1",
            &[&hash],
        )
        .await?;
    Ok(Err(match row {
        None => RefreshRefusal::Unknown,
        Some(r) if r.get::<_, bool>(2) => RefreshRefusal::Revoked,
        Some(r) if r.get::<_, bool>(1) => RefreshRefusal::Reused { family: r.get(0) },
        Some(_) => RefreshRefusal::Expired,
    }))
}

/// The refresh family a token belongs to (for revocation), if it is one of ours.
pub async fn refresh_family<C: GenericClient>(
    db: &C,
    token: &str,
) -> Result<Option<(Uuid, String)>, OAuthStoreError> {
    Ok(db
        .query_opt(
            "SELECT family_id, client_id FROM oauth_refresh_tokens WHERE token_hash = $1",
            &[&secret::hash(token)],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Revokes every refresh token of a family; returns how many were still live.
pub async fn revoke_family<C: GenericClient>(db: &C, family: Uuid) -> Result<u64, OAuthStoreError> {
    Ok(db
        .execute(
            "UPDATE oauth_refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
            &[&family],
        )
        .await?)
}

/// The deny-list id of a refresh family (access tokens carry it as `fid`).
pub fn family_token_id(family: &str) -> String {
    format!("family:{family}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_must_be_safe() {
        assert!(check_redirect_uri("https://app.example.com/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:5555/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_ok());
        assert!(check_redirect_uri("com.example.app:/oauth").is_ok());
        for bad in [
            "http://evil.com/cb",
            "https://app.example.com/cb#frag",
            "javascript:alert(1)",
            "data:text/html,hi",
            "myapp:/cb",
            "/relative",
            "https://",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pkce_s256_only_with_well_formed_verifiers() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_s256_challenge(challenge));
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(&verifier.replace('d', "e"), challenge));
        // `plain`: the verifier itself as the challenge.
        assert!(!pkce_matches(verifier, verifier));
        assert!(!pkce_matches("short", challenge));
        assert!(!is_s256_challenge("too-short"));
    }
}
