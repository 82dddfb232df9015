//! Identity: who is calling. Every governed request is turned into a verified
//! [`Principal`] here (or refused with an [`AuthRejection`]) before the permission check
//! in `policy/` decides what it may do.
//!
//! The [`Authenticator`] seam lets the built-in issuer, API keys and federated issuers
//! (Okta, Auth0) all produce the same `Principal`, so one permission check governs them
//! all. [`Identity`] is the implementation `warden serve` runs:
//!
//! - `keys`: Warden's Ed25519 signing keys, sealed under the master key in PostgreSQL,
//!   published as a JWKS, rotated with the old key verifying until its tokens expire;
//! - `tokens`: RFC 9068 access tokens (`typ: at+jwt`): issuing, and verification with the
//!   algorithm bound to the key and `iss`, `aud`, `exp`, `nbf` always checked;
//! - `cache`: verified tokens by SHA-256 until expiry (the per-call cost is a hash and a
//!   map lookup);
//! - `federation`: external issuers' tokens, their JWKS fetched, cached and refreshed on
//!   an unknown `kid`;
//! - `store`: identities (users, service accounts, federated), API keys, the revocation
//!   deny-list; `passwords`: Argon2id under a concurrency bound; `ratelimit`: login
//!   attempts; `passkeys`: WebAuthn credentials users sign in with (the checks are
//!   `webauthn`);
//! - `oauth`: the authorization server's state (clients, codes, refresh-token families);
//! - `bootstrap`: the admin token printed on first start.

pub mod bootstrap;
pub mod cache;
pub mod federation;
pub mod keys;
pub mod oauth;
pub mod passkeys;
pub mod passwords;
pub mod ratelimit;
pub mod secret;
pub mod service;
pub mod store;
pub mod tokens;
pub mod webauthn;

pub use service::Identity;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use thiserror::Error;

/// What kind of caller this is (drives defaults such as the rate-limit tier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    Service,
    Anonymous,
}

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Stable identifier: a local user id, a service account, or `issuer|sub` for
    /// federated users once linked.
    pub subject: String,
    /// The human-readable name when known (a username, an email).
    pub name: Option<String>,
    /// `warden` for the built-in issuer, the issuer URL for federated tokens.
    pub issuer: String,
    /// The OAuth client the token was issued to.
    pub client_id: Option<String>,
    pub scopes: Scopes,
    pub roles: Vec<String>,
    /// Rate-limit tier (`anon`, `user`, `service`, `admin`, …).
    pub tier: String,
    pub kind: PrincipalKind,
    /// The token's `jti`, for revocation and audit.
    pub token_id: Option<String>,
    pub expires_at: Option<SystemTime>,
}

impl Principal {
    /// The identifier stored as `user_id` in audit rows.
    pub fn user_id(&self) -> &str {
        &self.subject
    }

    /// `actor_kind` in audit rows: `client` for a service account, else `user`.
    pub fn actor_kind(&self) -> &'static str {
        match self.kind {
            PrincipalKind::Service => "client",
            _ => "user",
        }
    }

    pub fn anonymous() -> Principal {
        Principal {
            subject: "anonymous".into(),
            name: None,
            issuer: "warden".into(),
            client_id: None,
            scopes: Scopes::default(),
            roles: vec!["anonymous".into()],
            tier: "anon".into(),
            kind: PrincipalKind::Anonymous,
            token_id: None,
            expires_at: None,
        }
    }
}

/// A set of OAuth scopes; `*` grants every scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(BTreeSet<String>);

impl Scopes {
    pub fn parse(space_separated: &str) -> Scopes {
        Scopes(
            space_separated
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        )
    }

    pub fn from_list<I: IntoIterator<Item = S>, S: Into<String>>(scopes: I) -> Scopes {
        Scopes(scopes.into_iter().map(Into::into).collect())
    }

    pub fn grants(&self, scope: &str) -> bool {
        self.0.contains("*") || self.0.contains(scope)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_header_value(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(" ")
    }

    /// Adds every scope of `other`.
    pub fn extend(&mut self, other: &Scopes) {
        self.0.extend(other.0.iter().cloned());
    }

    /// Whether every scope in `self` is granted by `granter` (`*` grants all).
    pub fn is_within(&self, granter: &Scopes) -> bool {
        self.0.iter().all(|s| granter.grants(s))
    }

    /// The scopes of `self` that `granter` grants (`*` in `self` becomes whatever
    /// `granter` holds).
    pub fn granted_by(&self, granter: &Scopes) -> Scopes {
        if self.0.contains("*") {
            return granter.clone();
        }
        Scopes(
            self.0
                .iter()
                .filter(|s| granter.grants(s))
                .cloned()
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Why a request carries no usable identity. Each variant maps to one HTTP answer in
/// `http/` (401 with `WWW-Authenticate`, or 403 for insufficient scope).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AuthRejection {
    /// No `Authorization: Bearer` header (401).
    #[error("no bearer token")]
    MissingToken,
    /// Not a token Warden can read (401, `invalid_token`).
    #[error("malformed token: {0}")]
    MalformedToken(String),
    /// Signature, issuer, algorithm or key problems (401, `invalid_token`).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// Past `exp` or before `nbf` (401, `invalid_token`).
    #[error("token expired or not yet valid")]
    ExpiredToken,
    /// Minted for another resource (401, `invalid_token`): no token passthrough.
    #[error("token audience is not this Warden")]
    WrongAudience,
    /// Revoked by `jti`, or its refresh family was (401, `invalid_token`).
    #[error("token revoked")]
    Revoked,
    /// The account behind the token is disabled (401).
    #[error("account disabled")]
    Disabled,
    /// The user signed out everywhere after the token was issued (401, `invalid_token`).
    #[error("the user signed out everywhere after this token was issued")]
    SignedOut,
    /// The token could not be checked: the identity store is unreachable (503).
    #[error("the identity store is unavailable: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into a principal. Implementations cache verified tokens; the
/// steady-state cost per call must be microseconds.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Arc<Principal>, AuthRejection>>;
}

/// Extracts the token from an `Authorization` header value (`Bearer <token>`, scheme
/// case-insensitive).
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let header = header?.trim();
    let (scheme, token) = header.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_bearer_parsing() {
        let scopes = Scopes::parse("tools:read  tools:write");
        assert!(scopes.grants("tools:read"));
        assert!(!scopes.grants("admin"));
        assert!(Scopes::parse("*").grants("anything"));
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(None), None);
    }
}
