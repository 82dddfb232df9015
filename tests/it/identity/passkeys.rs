//! Passkeys end to end: headless Chromium with a WebDriver virtual authenticator (CTAP2,
//! discoverable credentials, user verification) against `warden serve` whose public URL
//! is on `localhost` (browsers refuse passkeys on IP addresses). A user adds a passkey on
//! the account page, signs in with it in an OAuth flow and calls `/mcp` with the token;
//! a captured answer is refused the second time; a passkey the operator removed with the
//! CLI no longer signs anyone in; the trail has each step.

use serde_json::{Value, json};

use super::browser::{Driver, WAIT, callback_listener};
use super::{Env, PASSWORD, authorize_query, exchange, pkce, query};

/// Clicks the passkey button but keeps the form from being posted: hands the filled-in
/// form fields to the test instead.
const CAPTURE_SIGN_IN: &str = "const done = arguments[arguments.length - 1];\
    const form = document.getElementById('passkey-form');\
    form.submit = function () { done({credential: form.elements.credential.value,\
        pending: form.elements.pending.value, csrf: form.elements.csrf.value}); };\
    document.getElementById('passkey').click();";

/// Drops the browser's cookies for Warden's origin (WebDriver deletes the current
/// page's), so the next authorization asks to sign in.
fn forget_login(driver: &Driver, warden_page: &str) {
    driver.go(warden_page);
    driver.call("DELETE", &driver.path("/cookie"), Value::Null);
}

#[test]
fn passkeys_register_sign_in_refuse_replays_and_removed_keys() {
    let mut env = Env::start(|p| {
        p.public_host("localhost");
    });
    env.add_user("erin", "user");
    let local = |path: &str| env.url(path).replacen("127.0.0.1", "localhost", 1);

    let mut driver = Driver::start();
    driver.open_session();
    let authenticator = driver.call(
        "POST",
        &driver.path("/webauthn/authenticator"),
        json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        }),
    );
    let authenticator = authenticator
        .as_str()
        .expect("an authenticator id")
        .to_owned();

    // The account page: sign in with the password, add a passkey.
    driver.go(&local("/oauth/account"));
    driver.type_into("#username", "erin");
    driver.type_into("#password", PASSWORD);
    driver.click("#login");
    assert_eq!(driver.text("#user"), "erin");
    driver.find("#no-passkeys");
    driver.type_into("#label", "test laptop");
    driver.click("#add-passkey");
    assert_eq!(driver.text("#notice"), "Passkey “test laptop” added.");
    let held = driver.call(
        "GET",
        &driver.path(&format!(
            "/webauthn/authenticator/{authenticator}/credentials"
        )),
        Value::Null,
    );
    let held = held.as_array().expect("credentials");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["rpId"], "localhost");
    assert_eq!(held[0]["isResidentCredential"], true);

    let (ok, listed, err) = env.cli(&["user", "passkeys", "erin"], None);
    assert!(ok, "{err}");
    assert!(listed.contains("\terin\ttest laptop\t"), "{listed}");
    let passkey_id = listed.split('\t').next().expect("an id").to_owned();
    driver.click("#logout");
    driver.find("#login");

    // An OAuth client's sign-in, with the passkey instead of the password.
    let (redirect_uri, callbacks) = callback_listener();
    let client_id = env.register(&redirect_uri);
    let authorize = |state: &str| {
        let (verifier, challenge) = pkce();
        let url = local(&format!(
            "/oauth/authorize?{}",
            authorize_query(&client_id, &redirect_uri, "tools:read", &challenge, state)
        ));
        (url, verifier)
    };
    let (url, verifier) = authorize("passkey-state");
    driver.go(&url);
    driver.click("#passkey");
    assert_eq!(driver.text("#user"), "erin");
    driver.click("#allow");
    let target = callbacks.recv_timeout(WAIT).expect("the browser came back");
    let params = query(&target);
    assert_eq!(params["state"], "passkey-state", "{target}");
    let tokens = exchange(&env, &client_id, &params["code"], &redirect_uri, &verifier);
    assert_eq!(tokens.status, 200, "{tokens:?}");
    let access = tokens.json()["access_token"].as_str().unwrap().to_owned();
    let echo = env.call_tool(
        &access,
        "fx__echo",
        json!({"message": "signed by a passkey"}),
    );
    assert_eq!(echo.status, 200, "{echo:?}");

    // A passkey's answer signs in once: the same answer posted again is refused.
    forget_login(&driver, &local("/oauth/account"));
    let (url, _) = authorize("replay");
    driver.go(&url);
    driver.find("#passkey");
    let captured = driver.call(
        "POST",
        &driver.path("/execute/async"),
        json!({"script": CAPTURE_SIGN_IN, "args": []}),
    );
    let csrf_cookie = driver.call("GET", &driver.path("/cookie/warden_csrf"), Value::Null);
    let cookie = format!(
        "warden_csrf={}",
        csrf_cookie["value"].as_str().expect("csrf")
    );
    let form = [
        ("pending", captured["pending"].as_str().expect("pending")),
        ("csrf", captured["csrf"].as_str().expect("csrf")),
        (
            "credential",
            captured["credential"].as_str().expect("credential"),
        ),
    ];
    let first = env.form("/oauth/login", &form, &[("Cookie", &cookie)]);
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.body.contains("Allow access?"), "{}", first.body);
    let again = env.form("/oauth/login", &form, &[("Cookie", &cookie)]);
    assert_eq!(again.status, 409, "{again:?}");
    assert!(again.body.contains("already used"), "{}", again.body);

    // The operator removes the passkey (a lost laptop): it signs no one in any more.
    let (ok, out, err) = env.cli(&["user", "remove-passkey", &passkey_id], None);
    assert!(ok, "{err}");
    assert!(out.contains("removed"), "{out}");
    let (ok, _, err) = env.cli(&["user", "remove-passkey", &passkey_id], None);
    assert!(!ok);
    assert!(err.contains("no passkey has the id"), "{err}");
    forget_login(&driver, &local("/oauth/account"));
    let (url, _) = authorize("removed");
    driver.go(&url);
    driver.click("#passkey");
    let refusal = driver.text("#error");
    assert!(refusal.contains("not registered"), "{refusal}");

    // The trail: the registration, the sign-ins and the refusals, by method.
    let status = env.warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", env.warden.log());
    let rows = env.db.query(
        "SELECT kind, coalesce(actor_id, ''), decision, coalesce(reason, '') FROM audit_events \
         WHERE kind IN ('auth.passkey_registered', 'auth.login') \
           AND (kind <> 'auth.login' OR attributes->>'method' = 'passkey') \
         ORDER BY occurred_at, id",
    );
    let rows: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected = [
        ("auth.passkey_registered", "erin", "allow", ""),
        ("auth.login", "erin", "allow", "passkey"),
        ("auth.login", "erin", "allow", "passkey"),
        ("auth.login", "erin", "deny", "already used"),
        ("auth.login", "", "deny", "not registered"),
    ];
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (row, (kind, actor, decision, reason)) in rows.iter().zip(expected) {
        assert_eq!(
            (row.0.as_str(), row.1.as_str(), row.2.as_str()),
            (kind, actor, decision),
            "{rows:?}"
        );
        assert!(row.3.contains(reason), "{rows:?}");
    }
    let left = env.db.query("SELECT count(*) FROM passkeys");
    assert_eq!(left[0].get::<_, i64>(0), 0);
}
