//! The paths an operator and a client walk: the authorization-code flow with refresh
//! rotation, the CLI's users, API keys and key rotation, discovery documents and
//! challenges, anonymous access.

use serde_json::{Value, json};

use super::{Env, PASSWORD, authorize_over_http, authorize_query, exchange, pkce, query};
use crate::support::http;

const REDIRECT: &str = "http://127.0.0.1:9/callback";
/// What `warden serve` logs when a CLI change reached it.
const NOTICED: &str = "identity change noticed";
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn error_of(response: &http::Response) -> String {
    response.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn authorization_code_flow_grants_what_roles_allow_and_refresh_rotates() {
    let mut env = Env::start(|_| {});
    env.add_user("alice", "user");
    let client_id = env.register(REDIRECT);
    let (verifier, challenge) = pkce();
    let consented = authorize_over_http(
        &env,
        &authorize_query(
            &client_id,
            REDIRECT,
            "tools:read tools:write",
            &challenge,
            "st4te",
        ),
        "alice",
        PASSWORD,
    );
    assert!(
        consented.location.starts_with(REDIRECT),
        "{}",
        consented.location
    );
    let params = query(&consented.location);
    assert_eq!(params["state"], "st4te");
    assert_eq!(params["iss"], env.url(""), "RFC 9207 iss");
    let tokens = exchange(&env, &client_id, &params["code"], REDIRECT, &verifier);
    assert_eq!(tokens.status, 200, "{tokens:?}");
    assert_eq!(tokens.header("cache-control"), Some("no-store"));
    let tokens = tokens.json();
    // The `user` role grants tools:read, not tools:write.
    assert_eq!(tokens["scope"], "tools:read");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    let names = env.tool_names(&access);
    assert!(names.contains(&"fx__echo".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"fx__crash".to_owned()),
        "destructive tool listed: {names:?}"
    );
    let echo = env.call_tool(&access, "fx__echo", json!({"message": "via oauth"}));
    assert_eq!(echo.status, 200, "{echo:?}");
    assert_eq!(echo.json()["result"]["content"][0]["text"], "via oauth");
    let crash = env.call_tool(&access, "fx__crash", json!({}));
    assert_eq!(crash.status, 403, "{crash:?}");
    let challenge = crash.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"tools:write\""),
        "{challenge}"
    );

    // Refresh: rotated, same scopes.
    let refreshed = env.form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh),
        ],
        &[],
    );
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    let refreshed = refreshed.json();
    let access2 = refreshed["access_token"].as_str().unwrap().to_owned();
    let refresh2 = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh, refresh2);
    assert_eq!(
        env.call_tool(&access2, "fx__echo", json!({"message": "x"}))
            .status,
        200
    );

    // Revocation of the refresh token revokes the family, access tokens included.
    let revoked = env.form(
        "/oauth/revoke",
        &[("client_id", &client_id), ("token", &refresh2)],
        &[],
    );
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let after = env.call_tool(&access2, "fx__echo", json!({"message": "x"}));
    assert_eq!(after.status, 401, "{after:?}");
    let again = env.form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh2),
        ],
        &[],
    );
    assert_eq!(error_of(&again), "invalid_grant", "{again:?}");

    // The story is on the audit trail (a clean stop flushes it), and no credential is.
    let status = env.warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", env.warden.log());
    let kinds: Vec<String> = env
        .db
        .query("SELECT DISTINCT kind FROM audit_events ORDER BY kind")
        .iter()
        .map(|row| row.get(0))
        .collect();
    for kind in [
        "auth.consent",
        "auth.login",
        "auth.token_issued",
        "auth.token_refused",
        "auth.token_revoked",
        "oauth.client_registered",
        "permission.decision",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no `{kind}` event in {kinds:?}"
        );
    }
    // The revocation went out to the other replicas with it.
    let told = env.db.query(
        "SELECT attributes->>'replicas_told' FROM audit_events WHERE kind = 'auth.token_revoked'",
    );
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].get::<_, Option<String>>(0).as_deref(), Some("true"));
    for secret in [&access, &refresh, &refresh2, &params["code"], PASSWORD] {
        let leaks = env.db.query(&format!(
            "SELECT count(*) FROM audit_events WHERE attributes::text LIKE '%{secret}%' OR coalesce(reason, '') LIKE '%{secret}%'"
        ));
        assert_eq!(
            leaks[0].get::<_, i64>(0),
            0,
            "a credential reached the audit trail"
        );
    }
}

#[test]
fn cli_users_api_keys_and_key_rotation() {
    let env = Env::start(|p| {
        p.set(
            "roles.ops",
            json!({"scopes": ["tools:read", "tools:write"]}),
        );
    });
    env.add_user("bob", "ops");
    let (ok, list, _) = env.cli(&["user", "list"], None);
    assert!(
        ok && list.contains("bob\tuser\troles=ops\tenabled\tpassword=set"),
        "{list}"
    );
    let (ok, _, err) = env.cli(&["user", "add", "bob", "--role", "ops"], Some(PASSWORD));
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = env.cli(&["user", "add", "carol", "--role", "nope"], Some(PASSWORD));
    assert!(!ok && err.contains("no role `nope`"), "{err}");
    let (ok, _, err) = env.cli(&["user", "add", "carol", "--role", "ops"], Some("short"));
    assert!(!ok && err.contains("at least 8"), "{err}");

    // A CLI token works; disabling the user stops it (and every other token of theirs).
    let token = env.token("bob", "tools:read tools:write");
    let unused = env.token("bob", "tools:read");
    assert!(env.tool_names(&token).contains(&"fx__crash".to_owned()));
    let mark = env.warden.log_mark();
    let (ok, _, err) = env.cli(&["user", "disable", "bob"], None);
    assert!(ok, "{err}");
    let unused = env.mcp(Some(&unused), "tools/list", json!({}));
    assert_eq!(unused.status, 401, "{unused:?}");
    assert!(
        unused
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("account disabled")
    );
    assert!(
        env.warden.wait_for_log_since(mark, NOTICED, WAIT),
        "{}",
        env.warden.log()
    );
    assert_eq!(
        env.mcp(Some(&token), "tools/list", json!({})).status,
        401,
        "a cached token dies too"
    );
    let (ok, _, err) = env.cli(&["token", "issue", "--user", "bob", "--scopes", "x"], None);
    assert!(!ok && err.contains("disabled"), "{err}");
    let (ok, _, _) = env.cli(&["user", "enable", "bob"], None);
    assert!(ok);

    // API keys: scoped, usable as bearer and for client_credentials, revocable.
    let (ok, key, err) = env.cli(
        &[
            "apikey",
            "create",
            "--name",
            "ci-bot",
            "--scopes",
            "tools:read",
        ],
        None,
    );
    assert!(ok, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("wk_"), "{key}");
    assert!(env.tool_names(&key).contains(&"fx__echo".to_owned()));
    assert_eq!(env.call_tool(&key, "fx__crash", json!({})).status, 403);
    let granted = env.form(
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "ci-bot"),
            ("client_secret", &key),
        ],
        &[],
    );
    assert_eq!(granted.status, 200, "{granted:?}");
    let service_token = granted.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        env.call_tool(&service_token, "fx__echo", json!({"message": "svc"}))
            .status,
        200
    );
    let escalate = env.form(
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "ci-bot"),
            ("client_secret", &key),
            ("scope", "admin"),
        ],
        &[],
    );
    assert_eq!(error_of(&escalate), "invalid_scope", "{escalate:?}");
    let (_, keys, _) = env.cli(&["apikey", "list"], None);
    assert!(
        keys.contains("ci-bot") && !keys.contains(&key),
        "the key itself is never listed: {keys}"
    );
    let mark = env.warden.log_mark();
    let (ok, _, err) = env.cli(&["apikey", "revoke", "--name", "ci-bot"], None);
    assert!(ok, "{err}");
    assert!(
        env.warden.wait_for_log_since(mark, NOTICED, WAIT),
        "{}",
        env.warden.log()
    );
    let revoked = env.mcp(Some(&key), "tools/list", json!({}));
    assert_eq!(revoked.status, 401, "{revoked:?}");
    // So is every token the key minted, before its own expiry.
    let minted = env.mcp(Some(&service_token), "tools/list", json!({}));
    assert_eq!(minted.status, 401, "{minted:?}");

    // Key rotation: old tokens verify, new ones carry the new kid, both are published.
    let before = env.token("bob", "tools:read");
    let mark = env.warden.log_mark();
    let (ok, out, err) = env.cli(&["keys", "rotate"], None);
    assert!(ok, "{err}");
    assert!(
        env.warden.wait_for_log_since(mark, NOTICED, WAIT),
        "{}",
        env.warden.log()
    );
    let after = env.token("bob", "tools:read");
    let jwks = http::get(&env.url("/.well-known/jwks.json")).json();
    assert_eq!(
        jwks["keys"].as_array().map(Vec::len),
        Some(2),
        "{jwks} after {out}"
    );
    assert_eq!(env.mcp(Some(&before), "tools/list", json!({})).status, 200);
    assert_eq!(env.mcp(Some(&after), "tools/list", json!({})).status, 200);
}

#[test]
fn discovery_documents_challenges_and_the_admin_api() {
    let env = Env::start(|p| {
        p.set("servers.fx.scopes", json!(["fx:use"]));
    });
    let base = env.url("");
    let metadata = http::get(&env.url("/.well-known/oauth-authorization-server")).json();
    assert_eq!(metadata["issuer"], base);
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(
        metadata["authorization_response_iss_parameter_supported"],
        true
    );
    assert!(
        metadata["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("fx:use"))
    );
    let oidc = http::get(&env.url("/.well-known/openid-configuration")).json();
    assert_eq!(oidc["jwks_uri"], format!("{base}/.well-known/jwks.json"));
    for (path, resource) in [
        ("/.well-known/oauth-protected-resource", base.clone()),
        (
            "/.well-known/oauth-protected-resource/mcp",
            format!("{base}/mcp"),
        ),
    ] {
        let prm = http::get(&env.url(path)).json();
        assert_eq!(prm["resource"], Value::from(resource), "{prm}");
        assert_eq!(prm["authorization_servers"], json!([base]));
    }

    // 401 names the metadata and the scope needed.
    let anonymous = env.mcp(None, "tools/list", json!({}));
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some(format!("Bearer resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\", scope=\"fx:use\"").as_str())
    );

    // The admin API needs `admin`; a tools token is refused with a step-up challenge.
    let user = env.token("dana", "fx:use");
    assert_eq!(
        env.tool_names(&user).len(),
        16,
        "every non-destructive fixture tool"
    );
    let servers = http::request(
        "GET",
        &env.url("/admin/servers"),
        &[("Authorization", &format!("Bearer {user}"))],
        None,
    )
    .unwrap();
    assert_eq!(servers.status, 403, "{servers:?}");
    assert!(
        servers
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("scope=\"admin\"")
    );
    let admin = env.admin_token();
    let servers = http::request(
        "GET",
        &env.url("/admin/servers"),
        &[("Authorization", &format!("Bearer {admin}"))],
        None,
    )
    .unwrap();
    assert_eq!(servers.status, 200, "{servers:?}");

    // Introspection (admin only).
    let auth = format!("Bearer {admin}");
    let active = env.form(
        "/oauth/introspect",
        &[("token", &user)],
        &[("Authorization", &auth)],
    );
    assert_eq!(active.json()["active"], true, "{active:?}");
    assert_eq!(active.json()["sub"], "dana");
    let junk = env.form(
        "/oauth/introspect",
        &[("token", "junk")],
        &[("Authorization", &auth)],
    );
    assert_eq!(junk.json()["active"], false);
    let denied = env.form(
        "/oauth/introspect",
        &[("token", &user)],
        &[("Authorization", &format!("Bearer {user}"))],
    );
    assert_eq!(denied.status, 403);
}

#[test]
fn anonymous_access_only_when_the_anonymous_role_grants_scopes() {
    let closed = Env::start(|_| {});
    assert_eq!(closed.mcp(None, "tools/list", json!({})).status, 401);
    drop(closed);
    let open = Env::start(|p| {
        p.set("roles.anonymous", json!({"scopes": ["tools:read"]}));
    });
    let listed = open.mcp(None, "tools/list", json!({}));
    assert_eq!(listed.status, 200, "{listed:?}");
    let names: Vec<String> = listed.json()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"fx__echo".to_owned()) && !names.contains(&"fx__crash".to_owned()));
    assert_eq!(
        open.mcp(
            None,
            "tools/call",
            json!({"name": "fx__crash", "arguments": {}})
        )
        .status,
        403
    );
    let admin = http::get(&open.url("/admin/servers"));
    assert_eq!(
        admin.status, 403,
        "anonymous never reaches the admin API: {admin:?}"
    );
}

#[test]
fn client_id_metadata_documents_identify_clients_by_url() {
    let env = Env::start(|p| {
        p.set("identity.allow_insecure_loopback", true);
    });
    env.add_user("fay", "user");
    // A document names its own URL, so the listener is bound before the documents exist.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let port = std_listener.local_addr().expect("address").port();
    let good = format!("http://127.0.0.1:{port}/client.json");
    let liar = format!("http://127.0.0.1:{port}/liar.json");
    let documents = vec![
        (
            "/client.json",
            json!({"client_id": good, "client_name": "Metadata App", "redirect_uris": [REDIRECT]}),
        ),
        (
            "/liar.json",
            json!({"client_id": "https://someone-else.example.com/client.json", "redirect_uris": [REDIRECT]}),
        ),
    ];
    crate::support::rt::handle().spawn(async move {
        use axum::routing::get;
        let mut router = axum::Router::new();
        for (path, document) in documents {
            router = router.route(path, get(move || async move { axum::Json(document) }));
        }
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        let _ = axum::serve(listener, router).await;
    });

    let (verifier, challenge) = pkce();
    let page = http::get(&env.url(&format!(
        "/oauth/authorize?{}",
        authorize_query(&good, REDIRECT, "tools:read", &challenge, "m")
    )));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("Metadata App"), "{}", page.body);
    let consented = authorize_over_http(
        &env,
        &authorize_query(&good, REDIRECT, "tools:read", &challenge, "m"),
        "fay",
        PASSWORD,
    );
    let code = query(&consented.location)["code"].clone();
    let tokens = exchange(&env, &good, &code, REDIRECT, &verifier);
    assert_eq!(tokens.status, 200, "{tokens:?}");
    let access = tokens.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        env.call_tool(&access, "fx__echo", json!({"message": "cimd"}))
            .status,
        200
    );
    // A document that names another client_id is not trusted.
    let refused = http::get(&env.url(&format!(
        "/oauth/authorize?{}",
        authorize_query(&liar, REDIRECT, "tools:read", &challenge, "m")
    )));
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.header("location").is_none());
}

#[test]
fn an_open_event_stream_ends_when_its_caller_is_disabled() {
    let env = Env::start(|_| {});
    env.add_user("ops", "user");
    let token = env.token("ops", "admin");
    let mut events = crate::support::mcp::EventStream::open(&env.warden, &token);
    let (ok, _, err) = env.cli(&["user", "disable", "ops"], None);
    assert!(ok, "{err}");
    assert!(
        events.ends_within(WAIT),
        "a disabled caller still reads /events"
    );
}
