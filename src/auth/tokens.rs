//! Access tokens: RFC 9068 JWTs (`typ: at+jwt`) signed with Warden's key.
//!
//! Verification is strict and takes nothing on trust from the token: the `kid` must name
//! one of Warden's keys, the algorithm is the one bound to that key (so `alg: none` and
//! `HS256` "signed" with the public key fail), and `iss`, `aud` (Warden's canonical
//! resource URI and nothing else: no token passthrough), `exp`, `nbf`, `sub` and `jti`
//! are required and checked, with 30 s of leeway for clock skew.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::{KeyError, KeySet};
use super::secret::Redacted;
use super::{AuthRejection, Principal, PrincipalKind, Scopes};

/// The JOSE `typ` of an access token (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Longest token accepted at all; anything longer is refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// The claims Warden puts in its access tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub client_id: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// `user` or `service`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The refresh-token family the token came from (revoking the family revokes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<String>,
    /// The subject's session epoch when the chain that led to this token began (a
    /// sign-out everywhere raises the subject's and refuses the token). Tokens from
    /// before sign-outs existed have none: 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sep: i64,
    /// The API key a `client_credentials` token was minted with: revoking the key (or
    /// its expiry) refuses the token too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub akid: Option<String>,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// What a token is issued for.
#[derive(Clone, Debug)]
pub struct Grant {
    pub subject: String,
    pub client_id: String,
    pub scopes: Scopes,
    pub roles: Vec<String>,
    pub kind: PrincipalKind,
    pub family: Option<Uuid>,
    /// The subject's session epoch the grant was made at (claim `sep`).
    pub session_epoch: i64,
    /// The API key the grant was made with (claim `akid`).
    pub api_key: Option<Uuid>,
    pub ttl: Duration,
}

/// A signed token and what it says.
#[derive(Debug)]
pub struct Issued {
    pub token: Redacted<String>,
    pub jti: String,
    pub kid: String,
    pub expires_at: SystemTime,
    pub scopes: Scopes,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs an access token for `grant`.
pub fn issue(
    keys: &KeySet,
    issuer: &str,
    audience: &str,
    grant: &Grant,
) -> Result<Issued, KeyError> {
    let now = unix_now();
    let exp = now + grant.ttl.as_secs().max(1);
    let jti = Uuid::now_v7().to_string();
    let claims = AccessClaims {
        iss: issuer.to_owned(),
        sub: grant.subject.clone(),
        aud: audience.to_owned(),
        exp,
        nbf: now,
        iat: now,
        jti: jti.clone(),
        client_id: grant.client_id.clone(),
        scope: grant.scopes.to_header_value(),
        roles: grant.roles.clone(),
        kind: Some(
            match grant.kind {
                PrincipalKind::Service => "service",
                _ => "user",
            }
            .to_owned(),
        ),
        fid: grant.family.map(|f| f.to_string()),
        sep: grant.session_epoch,
        akid: grant.api_key.map(|k| k.to_string()),
    };
    let (token, kid) = keys.sign(&claims, ACCESS_TOKEN_TYP)?;
    Ok(Issued {
        token: Redacted::new(token),
        jti,
        kid,
        expires_at: UNIX_EPOCH + Duration::from_secs(exp),
        scopes: grant.scopes.clone(),
    })
}

/// Why local verification did not produce claims.
#[derive(Debug)]
pub enum VerifyError {
    /// The `kid` is not in the key set (it may be newer than what this process loaded).
    UnknownKey(String),
    Rejected(AuthRejection),
}

impl From<AuthRejection> for VerifyError {
    fn from(rejection: AuthRejection) -> Self {
        VerifyError::Rejected(rejection)
    }
}

/// Maps a `jsonwebtoken` failure to the rejection a client sees.
pub fn rejection(error: &jsonwebtoken::errors::Error) -> AuthRejection {
    match error.kind() {
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => AuthRejection::ExpiredToken,
        ErrorKind::InvalidAudience => AuthRejection::WrongAudience,
        ErrorKind::InvalidIssuer => AuthRejection::InvalidToken("wrong issuer".into()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthRejection::InvalidToken("algorithm not allowed for this key".into())
        }
        ErrorKind::InvalidSignature => AuthRejection::InvalidToken("bad signature".into()),
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthRejection::InvalidToken(format!("missing claim `{claim}`"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthRejection::InvalidToken(format!("malformed claim `{claim}`"))
        }
        ErrorKind::InvalidEddsaKey | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthRejection::InvalidToken("the key cannot verify this token".into())
        }
        _ => AuthRejection::MalformedToken("not a well-formed JWT".into()),
    }
}

/// Verifies one of Warden's own access tokens against `keys`.
pub fn verify(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    audience: &str,
) -> Result<AccessClaims, VerifyError> {
    let header = decode_header(token).map_err(|e| VerifyError::Rejected(rejection(&e)))?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(
            AuthRejection::InvalidToken("not an access token (typ must be at+jwt)".into()).into(),
        );
    }
    let kid = header
        .kid
        .ok_or_else(|| AuthRejection::InvalidToken("no key id (kid)".into()))?;
    let key = keys.get(&kid).ok_or(VerifyError::UnknownKey(kid))?;
    let mut validation = Validation::new(key.algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECS;
    let data = decode::<AccessClaims>(token, &key.decoding, &validation)
        .map_err(|e| VerifyError::Rejected(rejection(&e)))?;
    // A retired key signed nothing expiring later than this: such a token was made
    // elsewhere (with a leaked key) and is refused, and the key goes dead with it.
    if key
        .retired_until
        .is_some_and(|until| data.claims.exp > until)
    {
        return Err(AuthRejection::InvalidToken(
            "signed by a retired key, expiring after every token that key issued".into(),
        )
        .into());
    }
    Ok(data.claims)
}

/// The principal an access token stands for.
pub fn principal(claims: &AccessClaims, issuer: &str) -> Principal {
    let kind = match claims.kind.as_deref() {
        Some("service") => PrincipalKind::Service,
        _ => PrincipalKind::User,
    };
    let scopes = Scopes::parse(&claims.scope);
    Principal {
        subject: claims.sub.clone(),
        name: Some(claims.sub.clone()),
        issuer: issuer.to_owned(),
        client_id: Some(claims.client_id.clone()),
        tier: tier(&claims.roles, kind, &scopes),
        scopes,
        roles: claims.roles.clone(),
        kind,
        token_id: Some(claims.jti.clone()),
        expires_at: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
    }
}

/// The rate-limit tier a principal falls in.
pub fn tier(roles: &[String], kind: PrincipalKind, scopes: &Scopes) -> String {
    if roles.iter().any(|r| r == "admin") || scopes.grants("admin") {
        "admin"
    } else {
        match kind {
            PrincipalKind::Service => "service",
            PrincipalKind::Anonymous => "anon",
            PrincipalKind::User => "user",
        }
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::*;

    const ISS: &str = "http://warden.test";
    const AUD: &str = "http://warden.test";

    fn grant() -> Grant {
        Grant {
            subject: "alice".into(),
            client_id: "cli".into(),
            scopes: Scopes::parse("tools:read"),
            roles: vec!["user".into()],
            kind: PrincipalKind::User,
            family: None,
            session_epoch: 0,
            api_key: None,
            ttl: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_retired_key_verifies_only_the_tokens_it_issued() {
        let keys = KeySet::generate_ephemeral();
        let issued = issue(&keys, ISS, AUD, &grant()).unwrap();
        let exp = verify(issued.token.expose(), &keys, ISS, AUD).unwrap().exp;
        // Retired with this token the latest it signed: still verified.
        let retired = keys.retire_active(exp);
        assert!(verify(issued.token.expose(), &retired, ISS, AUD).is_ok());
        // A token expiring later than anything the key signed was forged with it.
        let retired = keys.retire_active(exp - 1);
        match verify(issued.token.expose(), &retired, ISS, AUD) {
            Err(VerifyError::Rejected(AuthRejection::InvalidToken(reason))) => {
                assert!(reason.contains("retired key"), "{reason}")
            }
            other => panic!("accepted or wrongly refused: {other:?}"),
        }
    }

    /// The claims part of a token, as JSON.
    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    }

    fn b64(value: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn rejected(result: Result<AccessClaims, VerifyError>) -> AuthRejection {
        match result {
            Err(VerifyError::Rejected(r)) => r,
            Err(VerifyError::UnknownKey(k)) => panic!("unknown key {k}"),
            Ok(c) => panic!("accepted: {c:?}"),
        }
    }

    #[test]
    fn a_token_round_trips_into_its_principal() {
        let keys = KeySet::generate_ephemeral();
        let issued = issue(&keys, ISS, AUD, &grant()).unwrap();
        let claims = verify(issued.token.expose(), &keys, ISS, AUD).unwrap();
        let p = principal(&claims, ISS);
        assert_eq!(p.subject, "alice");
        assert!(p.scopes.grants("tools:read") && !p.scopes.grants("tools:write"));
        assert_eq!(p.tier, "user");
        assert_eq!(p.token_id.as_deref(), Some(issued.jti.as_str()));
    }

    #[test]
    fn the_session_epoch_travels_in_sep_and_reads_as_zero_when_absent() {
        let keys = KeySet::generate_ephemeral();
        let first = issue(&keys, ISS, AUD, &grant()).unwrap();
        assert!(payload(first.token.expose()).get("sep").is_none());
        assert_eq!(
            verify(first.token.expose(), &keys, ISS, AUD).unwrap().sep,
            0
        );
        let later = issue(
            &keys,
            ISS,
            AUD,
            &Grant {
                session_epoch: 3,
                ..grant()
            },
        )
        .unwrap();
        assert_eq!(payload(later.token.expose())["sep"], 3);
        assert_eq!(
            verify(later.token.expose(), &keys, ISS, AUD).unwrap().sep,
            3
        );
    }

    #[test]
    fn forged_and_misaddressed_tokens_are_refused() {
        let keys = KeySet::generate_ephemeral();
        let good = issue(&keys, ISS, AUD, &grant()).unwrap();
        let parts: Vec<&str> = good.token.expose().split('.').collect();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[0])
                .unwrap(),
        )
        .unwrap();
        let kid = header["kid"].as_str().unwrap();

        // alg: none, no signature.
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
            parts[1]
        );
        assert!(matches!(
            rejected(verify(&none, &keys, ISS, AUD)),
            AuthRejection::MalformedToken(_)
        ));

        // HS256 with the public key as the HMAC secret.
        let public = keys.get(kid).unwrap().jwk["x"].as_str().unwrap().to_owned();
        let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        hs.kid = Some(kid.to_owned());
        hs.typ = Some("at+jwt".into());
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        let forged = jsonwebtoken::encode(
            &hs,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            rejected(verify(&forged, &keys, ISS, AUD)),
            AuthRejection::InvalidToken(_)
        ));

        // Tampered payload.
        let mut escalated = claims.clone();
        escalated["scope"] = json!("*");
        let tampered = format!("{}.{}.{}", parts[0], b64(&escalated), parts[2]);
        assert_eq!(
            rejected(verify(&tampered, &keys, ISS, AUD)),
            AuthRejection::InvalidToken("bad signature".into())
        );

        // Wrong issuer and audience.
        assert!(matches!(
            rejected(verify(good.token.expose(), &keys, "http://other", AUD)),
            AuthRejection::InvalidToken(_)
        ));
        assert_eq!(
            rejected(verify(good.token.expose(), &keys, ISS, "http://other")),
            AuthRejection::WrongAudience
        );

        // Unknown kid.
        let other = KeySet::generate_ephemeral();
        let foreign = issue(&other, ISS, AUD, &grant()).unwrap();
        assert!(matches!(
            verify(foreign.token.expose(), &keys, ISS, AUD),
            Err(VerifyError::UnknownKey(_))
        ));

        // Expired, and not yet valid.
        let mut old = claims.clone();
        old["exp"] = json!(unix_now() - 3600);
        let (expired, _) = keys.sign(&old, ACCESS_TOKEN_TYP).unwrap();
        assert_eq!(
            rejected(verify(&expired, &keys, ISS, AUD)),
            AuthRejection::ExpiredToken
        );
        let mut future = claims.clone();
        future["nbf"] = json!(unix_now() + 3600);
        let (early, _) = keys.sign(&future, ACCESS_TOKEN_TYP).unwrap();
        assert_eq!(
            rejected(verify(&early, &keys, ISS, AUD)),
            AuthRejection::ExpiredToken
        );

        // A JWT that is not an access token (an ID token, say).
        let (id_token, _) = keys.sign(&claims, "JWT").unwrap();
        assert!(matches!(
            rejected(verify(&id_token, &keys, ISS, AUD)),
            AuthRejection::InvalidToken(_)
        ));

        // Garbage.
        assert!(matches!(
            rejected(verify("abc", &keys, ISS, AUD)),
            AuthRejection::MalformedToken(_)
        ));
        assert!(matches!(
            rejected(verify("a.b.c", &keys, ISS, AUD)),
            AuthRejection::MalformedToken(_)
        ));
    }
}
