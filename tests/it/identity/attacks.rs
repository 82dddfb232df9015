//! The attack list: every forged, misaddressed, replayed or smuggled credential fails
//! closed — on `/mcp`, at the authorization endpoint and at the token endpoint.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    Env, PASSWORD, authorize_over_http, authorize_query, cookies, exchange, hidden, pkce, query,
};
use crate::support::db::connect;
use crate::support::{http, rt};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn error_of(response: &http::Response) -> String {
    response.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Warden's own signing keys, read the way Warden reads them (master key + database).
fn warden_keys(env: &Env) -> warden::auth::keys::KeySet {
    let key = warden::secrets::MasterKey::load(&env.profile.state_dir(), None, true, &|_| None)
        .expect("the generated master key");
    let config = env.db.pg_config();
    rt::block_on(async move {
        let client = connect(&config).await;
        warden::auth::keys::load(&client, &key)
            .await
            .expect("keys load")
    })
}

fn assert_refused(env: &Env, token: &str, what: &str) -> String {
    let response = env.mcp(Some(token), "tools/list", json!({}));
    assert_eq!(response.status, 401, "{what}: {response:?}");
    let challenge = response
        .header("www-authenticate")
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{what}: {challenge}"
    );
    challenge
}

#[test]
fn forged_misaddressed_and_malformed_tokens_fail_closed() {
    let env = Env::start(|_| {});
    let good = env.token("mallory", "tools:read");
    assert_eq!(env.mcp(Some(&good), "tools/list", json!({})).status, 200);
    let parts: Vec<&str> = good.split('.').collect();
    let decode = |part: &str| -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let header = decode(parts[0]);
    let claims = decode(parts[1]);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let keys = warden_keys(&env);
    let sign = |claims: &Value| keys.sign(claims, "at+jwt").unwrap().0;

    // alg: none.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
        parts[1]
    );
    assert_refused(&env, &none, "alg none");
    // HS256 keyed with the published public key.
    let jwks = http::get(&env.url("/.well-known/jwks.json")).json();
    let public = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    hs.typ = Some("at+jwt".into());
    for secret in [
        public.as_bytes().to_vec(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&public)
            .unwrap(),
    ] {
        let forged = jsonwebtoken::encode(
            &hs,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_refused(&env, &forged, "HS256 with the public key");
    }
    // Unknown kid: signed by a key Warden never made.
    let stranger = warden::auth::keys::KeySet::generate_ephemeral();
    assert_refused(
        &env,
        &stranger.sign(&claims, "at+jwt").unwrap().0,
        "unknown kid",
    );
    // Wrong issuer, wrong audience (a token minted for another resource).
    let mut other = claims.clone();
    other["iss"] = json!("https://evil.example.com");
    assert_refused(&env, &sign(&other), "wrong iss");
    let mut other = claims.clone();
    other["aud"] = json!("https://another-resource.example.com");
    let challenge = assert_refused(&env, &sign(&other), "wrong aud");
    assert!(challenge.contains("audience"), "{challenge}");
    // Expired; not yet valid.
    let now = claims["iat"].as_u64().unwrap();
    let mut other = claims.clone();
    other["exp"] = json!(now - 3600);
    assert_refused(&env, &sign(&other), "expired");
    let mut other = claims.clone();
    other["nbf"] = json!(now + 3600);
    assert_refused(&env, &sign(&other), "nbf in the future");
    // Missing required claims.
    let mut other = claims.clone();
    other.as_object_mut().unwrap().remove("exp");
    assert_refused(&env, &sign(&other), "no exp");
    // Tampered payload: scope escalated after signing.
    let mut escalated = claims.clone();
    escalated["scope"] = json!("*");
    assert_refused(
        &env,
        &format!("{}.{}.{}", parts[0], b64(&escalated), parts[2]),
        "tampered payload",
    );
    // Not an access token (typ JWT).
    assert_refused(&env, &keys.sign(&claims, "JWT").unwrap().0, "typ JWT");
    // Oversized and malformed.
    assert_refused(&env, &format!("{good}{}", "A".repeat(9000)), "oversized");
    for junk in [
        "junk",
        "a.b.c",
        "a.b",
        "....",
        "wk_notakey",
        "eyJhbGciOiJFZERTQSJ9.e30.AAAA",
    ] {
        assert_refused(&env, junk, junk);
    }
    // The genuine token still works: nothing above poisoned the cache.
    assert_eq!(env.mcp(Some(&good), "tools/list", json!({})).status, 200);
}

#[test]
fn authorization_requests_that_weaken_the_flow_are_refused() {
    let env = Env::start(|_| {});
    env.add_user("alice", "user");
    let client_id = env.register(REDIRECT);
    let (_, challenge) = pkce();
    let base = authorize_query(&client_id, REDIRECT, "tools:read", &challenge, "s1");
    let authorize = |query: &str| http::get(&env.url(&format!("/oauth/authorize?{query}")));
    let redirected_error = |response: &http::Response| {
        assert_eq!(response.status, 302, "{response:?}");
        let location = response.header("location").unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        let q = query(location);
        assert_eq!(q.get("state").map(String::as_str), Some("s1"));
        q["error"].clone()
    };

    // PKCE missing, `plain`, no method (defaults to plain), a non-S256 challenge.
    let missing = base.replace(&format!("&code_challenge={challenge}"), "");
    assert_eq!(redirected_error(&authorize(&missing)), "invalid_request");
    let plain = base.replace("code_challenge_method=S256", "code_challenge_method=plain");
    assert_eq!(redirected_error(&authorize(&plain)), "invalid_request");
    let no_method = base.replace("&code_challenge_method=S256", "");
    assert_eq!(redirected_error(&authorize(&no_method)), "invalid_request");
    let short = base.replace(&challenge, "abc");
    assert_eq!(redirected_error(&authorize(&short)), "invalid_request");
    // Implicit grant.
    let token = base.replace("response_type=code", "response_type=token");
    assert_eq!(
        redirected_error(&authorize(&token)),
        "unsupported_response_type"
    );
    // A resource that is not this Warden.
    let foreign = format!("{base}&resource=https%3A%2F%2Fother.example.com%2Fmcp");
    assert_eq!(redirected_error(&authorize(&foreign)), "invalid_target");

    // redirect_uri mismatch and open-redirect attempts: an error page, never a redirect.
    for uri in [
        "http://127.0.0.1:9/callback/../evil",
        "http://127.0.0.1:9/callback?x=1",
        "http://127.0.0.1:9/callbackx",
        "https://evil.example.com/callback",
        "http://127.0.0.1:9/callback#frag",
    ] {
        let encoded = serde_urlencoded::to_string([("redirect_uri", uri)]).unwrap();
        let q = base.replace(
            &serde_urlencoded::to_string([("redirect_uri", REDIRECT)]).unwrap(),
            &encoded,
        );
        let response = authorize(&q);
        assert_eq!(response.status, 400, "{uri}: {response:?}");
        assert!(response.header("location").is_none(), "{uri} redirected");
    }
    let unknown = base.replace(&client_id, "wcl_unknown");
    assert_eq!(authorize(&unknown).status, 400);
    let duplicated = format!("{base}&scope=admin");
    assert_eq!(authorize(&duplicated).status, 400, "duplicate parameters");
    // Registration refuses redirect URIs that would make Warden an open redirector.
    for uri in [
        "javascript:alert(1)",
        "https://app.example.com/cb#x",
        "http://evil.example.com/cb",
        "data:text/html,x",
    ] {
        let body = json!({"redirect_uris": [uri]}).to_string();
        let response = http::request(
            "POST",
            &env.url("/oauth/register"),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
        .unwrap();
        assert_eq!(response.status, 400, "{uri}: {response:?}");
        assert_eq!(error_of(&response), "invalid_redirect_uri");
    }

    // Pages cannot be framed.
    let page = authorize(&base);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-security-policy")
            .unwrap_or_default()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));

    // CSRF on consent: a logged-in browser, a forged form (wrong or missing token, or
    // no CSRF cookie) gets no code.
    let login_page = authorize(&base);
    let login = env.form(
        "/oauth/login",
        &[
            ("username", "alice"),
            ("password", PASSWORD),
            ("pending", &hidden(&login_page.body, "pending")),
            ("csrf", &hidden(&login_page.body, "csrf")),
        ],
        &[("Cookie", &cookies(&login_page))],
    );
    assert_eq!(login.status, 200, "{login:?}");
    let session = cookies(&login);
    let pending = hidden(&login.body, "pending");
    let csrf = hidden(&login.body, "csrf");
    let session_only = session
        .split("; ")
        .filter(|c| c.starts_with("warden_session="))
        .collect::<Vec<_>>()
        .join("; ");
    for (label, token, cookie) in [
        ("wrong token", "forged", session.as_str()),
        ("no token", "", session.as_str()),
        ("no csrf cookie", csrf.as_str(), session_only.as_str()),
    ] {
        let forged = env.form(
            "/oauth/consent",
            &[
                ("pending", &pending),
                ("csrf", token),
                ("decision", "allow"),
            ],
            &[("Cookie", cookie)],
        );
        assert_eq!(forged.status, 403, "{label}: {forged:?}");
        assert!(forged.header("location").is_none(), "{label}");
    }
    // A login with a forged CSRF token is refused before the password is checked.
    let forged_login = env.form(
        "/oauth/login",
        &[
            ("username", "alice"),
            ("password", PASSWORD),
            ("pending", &pending),
            ("csrf", "forged"),
        ],
        &[("Cookie", &session)],
    );
    assert_eq!(forged_login.status, 403);
    // The genuine form still works.
    let genuine = env.form(
        "/oauth/consent",
        &[
            ("pending", &pending),
            ("csrf", &csrf),
            ("decision", "allow"),
        ],
        &[("Cookie", &session)],
    );
    assert_eq!(genuine.status, 302, "{genuine:?}");
    assert!(query(genuine.header("location").unwrap()).contains_key("code"));
    // Wrong passwords: refused, and limited.
    let wrong = |n| {
        let page = authorize(&base);
        env.form(
            "/oauth/login",
            &[
                ("username", "alice"),
                ("password", &format!("wrong-{n}")),
                ("pending", &hidden(&page.body, "pending")),
                ("csrf", &hidden(&page.body, "csrf")),
            ],
            &[("Cookie", &cookies(&page))],
        )
    };
    let statuses: Vec<u16> = (0..12).map(|n| wrong(n).status).collect();
    assert_eq!(statuses[0], 401, "{statuses:?}");
    assert_eq!(
        *statuses.last().unwrap(),
        429,
        "login attempts are rate-limited: {statuses:?}"
    );
}

#[test]
fn token_endpoint_refuses_replays_downgrades_and_escalation() {
    let env = Env::start(|_| {});
    env.add_user("alice", "user");
    let client_id = env.register(REDIRECT);
    let other_client = env.register(REDIRECT);
    let code_for = |challenge: &str| {
        let consented = authorize_over_http(
            &env,
            &authorize_query(&client_id, REDIRECT, "tools:read", challenge, "s"),
            "alice",
            PASSWORD,
        );
        query(&consented.location)["code"].clone()
    };

    // Wrong verifier; no verifier (downgrade); a `plain` verifier (the challenge itself).
    let (verifier, challenge) = pkce();
    let code = code_for(&challenge);
    let (other_verifier, _) = pkce();
    for (label, v) in [
        ("wrong verifier", Some(other_verifier.as_str())),
        ("no verifier", None),
        ("plain", Some(challenge.as_str())),
    ] {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", client_id.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
        ];
        if let Some(v) = v {
            form.push(("code_verifier", v));
        }
        let response = env.form("/oauth/token", &form, &[]);
        assert_eq!(
            error_of(&response),
            "invalid_grant",
            "{label}: {response:?}"
        );
    }
    // The code was spent by the first attempt (single use): even the right verifier fails.
    assert_eq!(
        error_of(&exchange(&env, &client_id, &code, REDIRECT, &verifier)),
        "invalid_grant"
    );

    // redirect_uri mismatch at the token endpoint; another client's code.
    let (verifier, challenge) = pkce();
    let code = code_for(&challenge);
    assert_eq!(
        error_of(&exchange(
            &env,
            &client_id,
            &code,
            "http://127.0.0.1:9/other",
            &verifier
        )),
        "invalid_grant"
    );
    let (verifier, challenge) = pkce();
    let code = code_for(&challenge);
    assert_eq!(
        error_of(&exchange(&env, &other_client, &code, REDIRECT, &verifier)),
        "invalid_grant"
    );

    // Code replay: the second exchange fails and revokes what the first issued.
    let (verifier, challenge) = pkce();
    let code = code_for(&challenge);
    let first = exchange(&env, &client_id, &code, REDIRECT, &verifier);
    assert_eq!(first.status, 200, "{first:?}");
    let access = first.json()["access_token"].as_str().unwrap().to_owned();
    let refresh = first.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(env.mcp(Some(&access), "tools/list", json!({})).status, 200);
    let replay = exchange(&env, &client_id, &code, REDIRECT, &verifier);
    assert_eq!(error_of(&replay), "invalid_grant", "{replay:?}");
    assert_eq!(
        env.mcp(Some(&access), "tools/list", json!({})).status,
        401,
        "replay revokes the first tokens"
    );
    let refreshed = env.form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh),
        ],
        &[],
    );
    assert_eq!(error_of(&refreshed), "invalid_grant");

    // Scope escalation in refresh.
    let (verifier, challenge) = pkce();
    let tokens = exchange(&env, &client_id, &code_for(&challenge), REDIRECT, &verifier).json();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let escalate = env.form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh),
            ("scope", "tools:read admin"),
        ],
        &[],
    );
    assert_eq!(error_of(&escalate), "invalid_scope", "{escalate:?}");

    // Refresh-token reuse: the family is revoked, the newest tokens included.
    let (verifier, challenge) = pkce();
    let tokens = exchange(&env, &client_id, &code_for(&challenge), REDIRECT, &verifier).json();
    let refresh1 = tokens["refresh_token"].as_str().unwrap().to_owned();
    let rotated = env
        .form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &client_id),
                ("refresh_token", &refresh1),
            ],
            &[],
        )
        .json();
    let access2 = rotated["access_token"].as_str().unwrap().to_owned();
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(env.mcp(Some(&access2), "tools/list", json!({})).status, 200);
    let reuse = env.form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh1),
        ],
        &[],
    );
    assert_eq!(error_of(&reuse), "invalid_grant", "{reuse:?}");
    assert_eq!(
        env.mcp(Some(&access2), "tools/list", json!({})).status,
        401,
        "the family's access token dies"
    );
    let newest = env.form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh2),
        ],
        &[],
    );
    assert_eq!(
        error_of(&newest),
        "invalid_grant",
        "the family's newest refresh token dies"
    );

    // No password or implicit grants; unknown clients.
    let password = env.form(
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("client_id", &client_id),
            ("username", "alice"),
            ("password", PASSWORD),
        ],
        &[],
    );
    assert_eq!(error_of(&password), "unsupported_grant_type");
    let unknown = env.form(
        "/oauth/token",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "nobody"),
            ("code", "x"),
        ],
        &[],
    );
    assert_eq!(unknown.status, 401);
    assert_eq!(error_of(&unknown), "invalid_client");
}
