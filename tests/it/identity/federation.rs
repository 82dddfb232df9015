//! Federation against an issuer this test runs on loopback: its own Ed25519 keys, its
//! discovery document and JWKS served over HTTP. Its tokens flow into the same
//! permission check as Warden's; its key rotation is followed (an unknown `kid` refetches
//! the JWKS); tokens for another audience, from retired keys, or with a symmetric
//! algorithm fail closed; the federated user is linked to a local identity that an
//! operator can disable.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};
use warden::auth::keys::KeySet;

use super::Env;
use crate::support::{http, rt};

/// The test's identity provider: whatever key set it holds is its JWKS.
#[derive(Clone)]
struct Issuer {
    url: String,
    keys: Arc<Mutex<Arc<KeySet>>>,
}

impl Issuer {
    fn start() -> Issuer {
        let listener = rt::block_on(async { tokio::net::TcpListener::bind("127.0.0.1:0").await })
            .expect("bind the issuer");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let issuer = Issuer {
            url,
            keys: Arc::new(Mutex::new(Arc::new(KeySet::generate_ephemeral()))),
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(jwks))
            .with_state(issuer.clone());
        rt::handle().spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        issuer
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.lock().unwrap().clone()
    }

    /// Rotation at the issuer: a new key, the old one gone from the JWKS.
    fn rotate(&self) -> Arc<KeySet> {
        let old = self.current();
        *self.keys.lock().unwrap() = Arc::new(KeySet::generate_ephemeral());
        old
    }

    fn token_with(&self, keys: &KeySet, claims: Value) -> String {
        keys.sign(&claims, "JWT").expect("signs").0
    }

    fn claims(&self, audience: &str, subject: &str) -> Value {
        let now = warden::auth::tokens::unix_now();
        json!({
            "iss": self.url, "sub": subject, "aud": audience, "iat": now, "nbf": now,
            "exp": now + 600, "groups": ["fed-dev"], "email": format!("{subject}@idp.test"),
            "scope": "openid", "jti": uuid::Uuid::new_v4().to_string(),
        })
    }
}

async fn discovery(State(issuer): State<Issuer>) -> axum::Json<Value> {
    axum::Json(json!({"issuer": issuer.url, "jwks_uri": format!("{}/keys", issuer.url)}))
}

async fn jwks(State(issuer): State<Issuer>) -> axum::Json<Value> {
    axum::Json(issuer.current().jwks())
}

#[test]
fn federated_tokens_pass_the_same_check_and_follow_key_rotation() {
    let issuer = Issuer::start();
    let env = Env::start(|p| {
        p.set(
            "identity.trusted_issuers",
            json!([{
                "issuer": issuer.url,
                "discovery": true,
                "allow_insecure_loopback": true,
                "role_claim": "groups",
                "algorithms": ["EdDSA"],
                "min_refresh_interval": "0s",
            }]),
        );
        p.set("roles.fed-dev", json!({"scopes": ["tools:read"]}));
    });
    let audience = env.url("");
    let prm = http::get(&env.url("/.well-known/oauth-protected-resource/mcp")).json();
    assert!(
        prm["authorization_servers"]
            .as_array()
            .unwrap()
            .contains(&json!(issuer.url)),
        "{prm}"
    );

    // A token from the issuer: the role claim maps to Warden's role scopes.
    let first = issuer.token_with(&issuer.current(), issuer.claims(&audience, "u-42"));
    assert!(env.tool_names(&first).contains(&"fx__echo".to_owned()));
    let echo = env.call_tool(&first, "fx__echo", json!({"message": "federated"}));
    assert_eq!(echo.status, 200, "{echo:?}");
    assert_eq!(
        env.call_tool(&first, "fx__crash", json!({})).status,
        403,
        "no write scope"
    );
    // Linked to a local identity on first sight.
    let (_, users, _) = env.cli(&["user", "list"], None);
    let local = format!("{}|u-42", issuer.url);
    assert!(users.contains(&format!("{local}\tfederated")), "{users}");

    // Refused: another audience (no passthrough), an expired token, a key the issuer
    // never published, HS256 keyed with the published key, an untrusted issuer.
    let refused = |token: &str, what: &str| {
        let response = env.mcp(Some(token), "tools/list", json!({}));
        assert_eq!(response.status, 401, "{what}: {response:?}");
    };
    refused(
        &issuer.token_with(
            &issuer.current(),
            issuer.claims("https://other.example.com", "u-42"),
        ),
        "other audience",
    );
    let mut expired = issuer.claims(&audience, "u-42");
    expired["exp"] = json!(warden::auth::tokens::unix_now() - 3600);
    refused(&issuer.token_with(&issuer.current(), expired), "expired");
    refused(
        &issuer.token_with(
            &KeySet::generate_ephemeral(),
            issuer.claims(&audience, "u-42"),
        ),
        "unpublished key",
    );
    let x = issuer.current().jwks()["keys"][0]["x"]
        .as_str()
        .unwrap()
        .to_owned();
    let kid = issuer.current().jwks()["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid);
    let forged = jsonwebtoken::encode(
        &hs,
        &issuer.claims(&audience, "u-42"),
        &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
    )
    .unwrap();
    refused(&forged, "HS256 with the public key");
    let mut stranger = issuer.claims(&audience, "u-42");
    stranger["iss"] = json!("http://127.0.0.1:1");
    refused(
        &issuer.token_with(&issuer.current(), stranger),
        "untrusted issuer",
    );

    // Key rotation at the issuer: the new kid is fetched; the retired key is refused.
    let old = issuer.rotate();
    let rotated = issuer.token_with(&issuer.current(), issuer.claims(&audience, "u-42"));
    assert_eq!(
        env.mcp(Some(&rotated), "tools/list", json!({})).status,
        200,
        "new key after rotation"
    );
    refused(
        &issuer.token_with(&old, issuer.claims(&audience, "u-43")),
        "retired key",
    );

    // An operator can disable the federated identity.
    let (ok, _, err) = env.cli(&["user", "disable", &local], None);
    assert!(ok, "{err}");
    let fresh = issuer.token_with(&issuer.current(), issuer.claims(&audience, "u-42"));
    let response = env.mcp(Some(&fresh), "tools/list", json!({}));
    assert_eq!(response.status, 401, "{response:?}");
    assert!(
        response
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("account disabled")
    );
}
