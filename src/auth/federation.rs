//! Tokens from external issuers (`identity.trusted_issuers`: Okta, Auth0, Entra, Keycloak,
//! or any OIDC provider): their keys fetched from the JWKS (directly or through
//! discovery), cached, and refetched when a token names an unknown `kid` — at most once
//! per `min_refresh_interval`, one fetch at a time. Only asymmetric keys are taken from a
//! JWKS, each verifies only its own algorithm, and only the issuer's allowed algorithms.
//! The token must carry the audience configured for its issuer (Warden's by default).
//!
//! A verified token becomes a [`Principal`] with subject `issuer|sub`, scopes from the
//! scope claim (a space-separated string or an array) plus those of the roles named in
//! the role claim, and flows into the same permission check as Warden's own tokens.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, decode};
use serde_json::{Map, Value};

use super::tokens::{LEEWAY_SECS, rejection, tier};
use super::{AuthRejection, Principal, PrincipalKind, Scopes};
use crate::config::TrustedIssuer;
use crate::policy::PolicyEngine;

const JWKS_MAX_BYTES: usize = 512 * 1024;

struct FetchedKey {
    decoding: DecodingKey,
    /// The JWK's own `alg`, when it names one.
    algorithm: Option<Algorithm>,
}

struct Keys {
    by_kid: HashMap<String, Arc<FetchedKey>>,
    fetched_at: Option<Instant>,
}

struct Issuer {
    config: TrustedIssuer,
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<Keys>,
    fetching: tokio::sync::Mutex<()>,
}

/// A verified external token.
pub struct Verified {
    pub principal: Principal,
    pub issuer: String,
    pub external_subject: String,
}

/// Every trusted issuer, by its `iss`.
pub struct Federation {
    issuers: HashMap<String, Arc<Issuer>>,
    http: reqwest::Client,
}

impl Federation {
    pub fn new(issuers: &[TrustedIssuer], http: reqwest::Client) -> Federation {
        Federation {
            issuers: issuers
                .iter()
                .map(|config| {
                    (
                        config.issuer.clone(),
                        Arc::new(Issuer {
                            algorithms: config
                                .algorithms
                                .iter()
                                .filter_map(|a| Algorithm::from_str(a).ok())
                                .collect(),
                            config: config.clone(),
                            keys: ArcSwap::from_pointee(Keys {
                                by_kid: HashMap::new(),
                                fetched_at: None,
                            }),
                            fetching: tokio::sync::Mutex::new(()),
                        }),
                    )
                })
                .collect(),
            http,
        }
    }

    pub fn trusts(&self, issuer: &str) -> bool {
        self.issuers.contains_key(issuer)
    }

    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.keys().map(String::as_str)
    }

    /// Verifies a token whose (unverified) `iss` is `issuer`.
    pub async fn verify(
        &self,
        token: &str,
        header: &Header,
        issuer: &str,
        policy: &PolicyEngine,
    ) -> Result<Verified, AuthRejection> {
        let state = self
            .issuers
            .get(issuer)
            .ok_or_else(|| AuthRejection::InvalidToken("untrusted issuer".into()))?;
        if !state.algorithms.contains(&header.alg) {
            return Err(AuthRejection::InvalidToken(format!(
                "algorithm {:?} is not allowed for issuer {issuer}",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| AuthRejection::InvalidToken("no key id (kid)".into()))?;
        let key = match self.key(state, kid).await? {
            Some(key) => key,
            None => return Err(AuthRejection::InvalidToken("unknown key id".into())),
        };
        if key.algorithm.is_some_and(|a| a != header.alg) {
            return Err(AuthRejection::InvalidToken(
                "the token's algorithm is not its key's".into(),
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[&state.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| rejection(&e))?
            .claims;
        principal(&state.config, &claims, policy)
    }

    /// The key `kid`, refetching the JWKS when it is unknown (rate-limited) or stale.
    async fn key(
        &self,
        state: &Issuer,
        kid: &str,
    ) -> Result<Option<Arc<FetchedKey>>, AuthRejection> {
        let keys = state.keys.load();
        let stale = keys
            .fetched_at
            .is_none_or(|at| at.elapsed() >= state.config.jwks_cache_ttl);
        if let Some(key) = keys.by_kid.get(kid)
            && !stale
        {
            return Ok(Some(key.clone()));
        }
        let _one_fetch = state.fetching.lock().await;
        let keys = state.keys.load();
        if let Some(key) = keys.by_kid.get(kid)
            && keys
                .fetched_at
                .is_some_and(|at| at.elapsed() < state.config.jwks_cache_ttl)
        {
            return Ok(Some(key.clone()));
        }
        let may_fetch = keys
            .fetched_at
            .is_none_or(|at| at.elapsed() >= state.config.min_refresh_interval);
        if !may_fetch {
            return Ok(keys.by_kid.get(kid).cloned());
        }
        match self.fetch(&state.config).await {
            Ok(by_kid) => {
                let found = by_kid.get(kid).cloned();
                state.keys.store(Arc::new(Keys {
                    by_kid,
                    fetched_at: Some(Instant::now()),
                }));
                Ok(found)
            }
            Err(error) => {
                tracing::warn!(issuer = %state.config.issuer, %error, "cannot fetch the issuer's keys");
                // Keep serving the keys we have; note the attempt so a dead issuer is
                // not hammered.
                let old = state.keys.load_full();
                state.keys.store(Arc::new(Keys {
                    by_kid: old.by_kid.clone(),
                    fetched_at: Some(Instant::now()),
                }));
                Ok(old.by_kid.get(kid).cloned())
            }
        }
    }

    async fn fetch(
        &self,
        config: &TrustedIssuer,
    ) -> Result<HashMap<String, Arc<FetchedKey>>, String> {
        let allow = config.allow_insecure_loopback;
        let jwks_uri = match &config.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let mut found = None;
                for suffix in [
                    "/.well-known/openid-configuration",
                    "/.well-known/oauth-authorization-server",
                ] {
                    let url = format!("{}{suffix}", config.issuer);
                    if let Ok(doc) =
                        super::oauth::fetch_json(&self.http, &url, JWKS_MAX_BYTES).await
                    {
                        if doc
                            .get("issuer")
                            .and_then(Value::as_str)
                            .map(|s| s.trim_end_matches('/'))
                            != Some(config.issuer.as_str())
                        {
                            return Err(format!("{url} names another issuer"));
                        }
                        found = doc
                            .get("jwks_uri")
                            .and_then(Value::as_str)
                            .map(str::to_owned);
                        break;
                    }
                }
                found.ok_or_else(|| format!("no jwks_uri in {}'s metadata", config.issuer))?
            }
        };
        crate::config::identity::check_fetch_url(&jwks_uri, allow)?;
        let jwks = super::oauth::fetch_json(&self.http, &jwks_uri, JWKS_MAX_BYTES).await?;
        Ok(parse_jwks(&jwks))
    }
}

/// The usable signing keys of a JWKS, by kid. Symmetric (`oct`) keys, encryption keys,
/// keys without a kid and malformed keys are skipped.
fn parse_jwks(jwks: &Value) -> HashMap<String, Arc<FetchedKey>> {
    let mut keys = HashMap::new();
    for raw in jwks
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if raw
            .get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let usable = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_) => true,
            // The verifier indexes 32 bytes of `x`: check the length first.
            AlgorithmParameters::OctetKeyPair(p) => {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&p.x)
                    .is_ok_and(|x| x.len() == 32)
            }
            _ => false,
        };
        if !usable {
            continue;
        }
        let algorithm = raw
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| Algorithm::from_str(a).ok());
        if let Ok(decoding) = DecodingKey::from_jwk(&jwk) {
            keys.insert(
                kid,
                Arc::new(FetchedKey {
                    decoding,
                    algorithm,
                }),
            );
        }
    }
    keys
}

/// Strings in a claim that is a space-separated string or an array of strings.
fn claim_list(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn principal(
    config: &TrustedIssuer,
    claims: &Map<String, Value>,
    policy: &PolicyEngine,
) -> Result<Verified, AuthRejection> {
    let subject = claims
        .get(&config.subject_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            AuthRejection::InvalidToken(format!("missing claim `{}`", config.subject_claim))
        })?;
    let roles = config
        .role_claim
        .as_deref()
        .map(|c| claim_list(claims, c))
        .unwrap_or_default();
    let mut scopes = Scopes::from_list(claim_list(claims, &config.scope_claim));
    scopes.extend(&policy.role_scopes(&roles));
    let kind = PrincipalKind::User;
    let tier = config
        .tier_claim
        .as_deref()
        .and_then(|c| claims.get(c))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| tier(&roles, kind, &scopes));
    let name = ["preferred_username", "email", "name"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .map(str::to_owned);
    let client_id = ["client_id", "azp"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .map(str::to_owned);
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_u64)
        .map(|e| UNIX_EPOCH + Duration::from_secs(e));
    Ok(Verified {
        principal: Principal {
            subject: format!("{}|{subject}", config.issuer),
            name,
            issuer: config.issuer.clone(),
            client_id,
            scopes,
            roles,
            tier,
            kind,
            token_id: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            expires_at: expires_at.or(Some(SystemTime::now())),
        },
        issuer: config.issuer.clone(),
        external_subject: subject.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn jwks_parsing_keeps_only_usable_signing_keys() {
        let jwks = json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "good", "alg": "EdDSA",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "weird"}
        ]});
        let keys = parse_jwks(&jwks);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(keys["good"].algorithm, Some(Algorithm::EdDSA));
    }

    #[test]
    fn claims_map_to_a_principal_with_role_scopes() {
        let config = crate::config::Config::parse(
            "identity:\n  trusted_issuers:\n    - {issuer: https://idp.example.com, role_claim: groups, scope_claim: scp}\nroles:\n  dev: {scopes: [github:read]}\n",
            "t.yaml",
            &|_| None,
        )
        .unwrap();
        let policy = PolicyEngine::from_config(&config);
        let claims = json!({"sub": "u1", "scp": ["tools:read"], "groups": "dev", "email": "a@b.c", "exp": 4_000_000_000u64});
        let verified = principal(
            &config.identity.trusted_issuers[0],
            claims.as_object().unwrap(),
            &policy,
        )
        .unwrap();
        let p = verified.principal;
        assert_eq!(p.subject, "https://idp.example.com|u1");
        assert!(p.scopes.grants("tools:read") && p.scopes.grants("github:read"));
        assert!(!p.scopes.grants("admin"));
        assert_eq!(p.name.as_deref(), Some("a@b.c"));
        assert_eq!(p.tier, "user");
        let missing = json!({"scp": "x"});
        assert!(
            principal(
                &config.identity.trusted_issuers[0],
                missing.as_object().unwrap(),
                &policy
            )
            .is_err()
        );
    }
}
