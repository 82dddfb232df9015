//! Passkeys end to end: headless Chromium with a WebDriver virtual authenticator (CTAP2,
//! discoverable credentials, user verification) against `warden serve` whose public URL
//! is on `localhost` (browsers refuse passkeys on IP addresses). A user adds a passkey on
//! the account page, signs in with it in an OAuth flow and calls `/mcp` with the token;
//! a captured answer is refused the second time; a passkey the operator removed with the
//! CLI no longer signs anyone in; the trail has each step.

use serde_json::{Value, json};

use super::browser::{Driver, WAIT, callback_listener};
use super::{
    Env, PASSWORD, account_sign_in, authorize_query, cookies, data_attribute, exchange, hidden,
    pkce, query,
};

/// Asserts that `response` has `status` and a body saying `text`.
pub(super) fn assert_answer(response: &crate::support::http::Response, status: u16, text: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert!(response.body.contains(text), "{}", response.body);
}

/// A passkey label that breaks the page unless it is escaped.
const LABEL: &str = "Erin's \"work\" <laptop> & co";

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
    // A label that would break the page if it were not escaped.
    driver.type_into("#label", LABEL);
    driver.click("#add-passkey");
    assert_eq!(driver.text("#notice"), format!("Passkey “{LABEL}” added."));
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
    assert!(listed.contains(&format!("\terin\t{LABEL}\t")), "{listed}");
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
    assert_answer(&first, 200, "Allow access?");
    let again = env.form("/oauth/login", &form, &[("Cookie", &cookie)]);
    assert_answer(&again, 409, "already used");

    // A disabled user's passkey signs no one in.
    let (ok, _, err) = env.cli(&["user", "disable", "erin"], None);
    assert!(ok, "{err}");
    forget_login(&driver, &local("/oauth/account"));
    let (url, _) = authorize("disabled");
    driver.go(&url);
    driver.click("#passkey");
    let refusal = driver.text("#error");
    assert!(refusal.contains("cannot sign in"), "{refusal}");
    let (ok, _, err) = env.cli(&["user", "enable", "erin"], None);
    assert!(ok, "{err}");

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
        ("auth.login", "erin", "deny", "cannot sign in"),
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

#[test]
fn passkey_forms_refuse_forged_answers_and_cross_site_posts() {
    let mut env = Env::start(|p| {
        p.public_host("localhost");
    });
    env.add_user("erin", "user");

    // The account page without a session: the sign-in form, with a passkey button.
    let page = crate::support::http::get(&env.url("/oauth/account"));
    assert_answer(&page, 200, "id=passkey-form");
    let csrf = hidden(&page.body, "csrf");
    let csrf_cookie = cookies(&page);
    let sign_in = [
        ("username", "erin"),
        ("password", PASSWORD),
        ("csrf", csrf.as_str()),
    ];

    // A post from another site has the form's fields but not the browser's cookie.
    let forged = env.form("/oauth/account/login", &sign_in, &[]);
    assert_eq!(forged.status, 403, "{forged:?}");
    let signed_in = env.form(
        "/oauth/account/login",
        &sign_in,
        &[("Cookie", &csrf_cookie)],
    );
    assert_answer(&signed_in, 200, "<b id=user>erin</b>");
    // The account page sets a fresh CSRF cookie beside the session's.
    let session = cookies(&signed_in);
    let csrf = hidden(&signed_in.body, "csrf");

    // An answer to a challenge Warden never issued, and one that is not an answer.
    let client_data = |kind: &str| {
        let json = json!({
            "type": kind,
            "challenge": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "origin": env.url("").replacen("127.0.0.1", "localhost", 1),
        });
        b64(json.to_string().as_bytes())
    };
    let made_up_assertion = json!({"id": "AQID", "rawId": "AQID", "type": "public-key",
        "response": {"clientDataJSON": client_data("webauthn.get"),
                     "authenticatorData": "AAAA", "signature": "AAAA", "userHandle": "AAAA"}})
    .to_string();
    let made_up_attestation = json!({"id": "AQID", "rawId": "AQID", "type": "public-key",
        "response": {"clientDataJSON": client_data("webauthn.create"),
                     "attestationObject": "oA"}})
    .to_string();
    let refused = env.form(
        "/oauth/account/login",
        &[("csrf", csrf.as_str()), ("credential", &made_up_assertion)],
        &[("Cookie", &session)],
    );
    assert_answer(&refused, 401, "not opened in this browser");
    let refused = env.form(
        "/oauth/account/passkeys",
        &[
            ("csrf", csrf.as_str()),
            ("label", "forged"),
            ("credential", &made_up_attestation),
        ],
        &[("Cookie", &session)],
    );
    assert_answer(&refused, 401, "not opened in this browser");
    let malformed = env.form(
        "/oauth/account/passkeys",
        &[
            ("csrf", csrf.as_str()),
            ("label", "x"),
            ("credential", "{\"type\": 1}"),
        ],
        &[("Cookie", &session)],
    );
    assert_answer(&malformed, 400, "malformed");
    let unlabelled = env.form(
        "/oauth/account/passkeys",
        &[
            ("csrf", csrf.as_str()),
            ("label", " "),
            ("credential", &made_up_attestation),
        ],
        &[("Cookie", &session)],
    );
    assert_eq!(unlabelled.status, 400, "{unlabelled:?}");
    // Removing needs the session: without it, the sign-in form again.
    let removal = env.form(
        "/oauth/account/passkeys/remove",
        &[("csrf", csrf.as_str()), ("id", "AQID")],
        &[("Cookie", &format!("warden_csrf={csrf}"))],
    );
    assert_eq!(removal.status, 401, "{removal:?}");
    let removal = env.form(
        "/oauth/account/passkeys/remove",
        &[("csrf", csrf.as_str()), ("id", "AQID")],
        &[("Cookie", &session)],
    );
    assert_eq!(removal.status, 404, "{removal:?}");

    let status = env.warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", env.warden.log());
    let rows = env.db.query(
        "SELECT kind, decision FROM audit_events \
         WHERE kind IN ('auth.passkey_registered', 'auth.login') ORDER BY occurred_at, id",
    );
    let rows: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected = [
        ("auth.login", "allow"),
        ("auth.login", "deny"),
        ("auth.passkey_registered", "deny"),
        ("auth.passkey_registered", "deny"),
        ("auth.passkey_registered", "deny"),
    ];
    let rows: Vec<(&str, &str)> = rows.iter().map(|(k, d)| (k.as_str(), d.as_str())).collect();
    assert_eq!(rows, expected);
}

#[test]
fn passkeys_are_off_while_the_public_url_is_an_ip_address() {
    let env = Env::start(|_| {});
    env.add_user("erin", "user");
    let page = crate::support::http::get(&env.url("/oauth/account"));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(!page.body.contains("passkeys.js"), "{}", page.body);
    let (signed_in, session) = account_sign_in(&env, "erin");
    assert_answer(&signed_in, 200, "id=passkeys-off");
    let refused = env.form(
        "/oauth/account/passkeys",
        &[
            ("csrf", &hidden(&signed_in.body, "csrf")),
            ("label", "x"),
            ("credential", "{}"),
        ],
        &[("Cookie", &session)],
    );
    assert_answer(&refused, 404, "turned off");
}

#[test]
fn a_one_time_link_lets_a_user_without_a_password_add_a_passkey() {
    let mut env = Env::start(|p| {
        p.public_host("localhost");
    });
    // `token issue` creates the user without a password.
    env.token("nopass", "tools:read");
    let (ok, link, err) = env.cli(&["user", "passkey-link", "nopass", "--ttl", "10m"], None);
    assert!(ok, "{err}");
    let link = link.trim();
    assert!(link.starts_with("http://localhost:"), "{link}");
    assert!(err.contains("good until"), "{err}");
    let code = query(link)["code"].clone();

    // Opening the link spends nothing (a mail scanner may open it first).
    let path = &link[link.find("/oauth/").expect("a path")..];
    for _ in 0..2 {
        let landing = crate::support::http::get(&env.url(path));
        assert_answer(&landing, 200, "id=continue");
    }
    let landing = crate::support::http::get(&env.url(path));
    let csrf = hidden(&landing.body, "csrf");
    let cookie = cookies(&landing);
    let form = [("code", code.as_str()), ("csrf", csrf.as_str())];
    let forged = env.form("/oauth/account/link", &form, &[]);
    assert_eq!(forged.status, 403, "{forged:?}");
    let signed_in = env.form("/oauth/account/link", &form, &[("Cookie", &cookie)]);
    assert_answer(&signed_in, 200, "<b id=user>nopass</b>");
    // Signed in just now: the passkey form is there.
    assert!(signed_in.body.contains("id=add-form"), "{}", signed_in.body);
    let again = env.form("/oauth/account/link", &form, &[("Cookie", &cookie)]);
    assert_answer(&again, 409, "already used");
    let made_up = env.form(
        "/oauth/account/link",
        &[
            (
                "code",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ),
            ("csrf", &csrf),
        ],
        &[("Cookie", &cookie)],
    );
    assert_answer(&made_up, 401, "not valid");

    // Signing the user out everywhere cancels a link not yet used.
    let (ok, link, err) = env.cli(&["user", "passkey-link", "nopass"], None);
    assert!(ok, "{err}");
    let pending = query(link.trim())["code"].clone();
    let (ok, _, err) = env.cli(&["user", "sign-out", "nopass"], None);
    assert!(ok, "{err}");
    let cancelled = env.form(
        "/oauth/account/link",
        &[("code", pending.as_str()), ("csrf", csrf.as_str())],
        &[("Cookie", &cookie)],
    );
    assert_answer(
        &cancelled,
        409,
        "cancelled when you were signed out everywhere",
    );

    let (ok, _, err) = env.cli(&["user", "passkey-link", "nopass", "--ttl", "8d"], None);
    assert!(!ok);
    assert!(err.contains("--ttl must be between 1s and 7d"), "{err}");
    let (ok, _, err) = env.cli(&["user", "passkey-link", "nobody"], None);
    assert!(!ok);
    assert!(err.contains("no identity named `nobody`"), "{err}");

    let status = env.warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", env.warden.log());
    let rows = env.db.query(
        "SELECT coalesce(actor_id, ''), decision FROM audit_events \
         WHERE kind = 'auth.login' AND attributes->>'method' = 'link' ORDER BY occurred_at, id",
    );
    let rows: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(a, d)| (a.as_str(), d.as_str())).collect();
    assert_eq!(
        rows,
        [
            ("nopass", "allow"),
            ("nopass", "deny"),
            ("", "deny"),
            ("nopass", "deny")
        ]
    );
}

/// A software authenticator: one P-256 passkey for `localhost`, answering ceremonies the
/// way a browser hands them over, with the flags and counter the test chooses.
pub(super) struct SoftAuthenticator {
    key: p256::ecdsa::SigningKey,
    id: Vec<u8>,
    origin: String,
}

pub(super) const FLAG_UP: u8 = 0x01;
pub(super) const FLAG_UV: u8 = 0x04;
const FLAG_BE: u8 = 0x08;
const FLAG_AT: u8 = 0x40;

fn b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, text)
        .expect("base64url")
}

impl SoftAuthenticator {
    /// An authenticator for Warden at `env`'s URL with host `localhost`; `seed` tells
    /// apart the key and credential id of several.
    pub(super) fn new(env: &Env, seed: u8) -> SoftAuthenticator {
        let origin = env
            .url("")
            .trim_end_matches('/')
            .replacen("127.0.0.1", "localhost", 1);
        SoftAuthenticator {
            key: p256::ecdsa::SigningKey::from_slice(&[seed.max(1); 32]).expect("a P-256 key"),
            id: vec![seed; 32],
            origin,
        }
    }

    /// Signs `user` in on the account page with the password and registers this
    /// passkey for them; the user handle its answers carry.
    pub(super) fn register_for(&self, env: &Env, user: &str) -> String {
        let (signed_in, session) = account_sign_in(env, user);
        let user_handle = data_attribute(&signed_in.body, "user-id");
        let answer = self.register(
            &data_attribute(&signed_in.body, "challenge"),
            FLAG_UP | FLAG_UV,
        );
        let added = env.form(
            "/oauth/account/passkeys",
            &[
                ("csrf", &hidden(&signed_in.body, "csrf")),
                ("label", "software"),
                ("credential", &answer),
            ],
            &[("Cookie", &session)],
        );
        assert_answer(&added, 200, "Passkey “software” added.");
        user_handle
    }

    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        json!({"type": kind, "challenge": challenge, "origin": self.origin})
            .to_string()
            .into_bytes()
    }

    fn authenticator_data(&self, flags: u8, counter: u32) -> Vec<u8> {
        use sha2::Digest as _;
        let mut out = sha2::Sha256::digest(b"localhost").to_vec();
        out.push(flags);
        out.extend(counter.to_be_bytes());
        out
    }

    /// The answer to a registration page's challenge.
    pub(super) fn register(&self, challenge: &str, flags: u8) -> String {
        use ciborium::Value as Cbor;
        let point = self.key.verifying_key().to_encoded_point(false);
        let cose = Cbor::Map(vec![
            (Cbor::Integer(1.into()), Cbor::Integer(2.into())),
            (Cbor::Integer(3.into()), Cbor::Integer((-7).into())),
            (Cbor::Integer((-1).into()), Cbor::Integer(1.into())),
            (
                Cbor::Integer((-2).into()),
                Cbor::Bytes(point.x().expect("x").to_vec()),
            ),
            (
                Cbor::Integer((-3).into()),
                Cbor::Bytes(point.y().expect("y").to_vec()),
            ),
        ]);
        let mut auth_data = self.authenticator_data(flags | FLAG_AT, 0);
        auth_data.extend([0u8; 16]);
        auth_data.extend((self.id.len() as u16).to_be_bytes());
        auth_data.extend(&self.id);
        ciborium::into_writer(&cose, &mut auth_data).expect("CBOR");
        let attestation = Cbor::Map(vec![
            (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
            (Cbor::Text("attStmt".into()), Cbor::Map(vec![])),
            (Cbor::Text("authData".into()), Cbor::Bytes(auth_data)),
        ]);
        let mut attestation_object = Vec::new();
        ciborium::into_writer(&attestation, &mut attestation_object).expect("CBOR");
        json!({
            "id": b64(&self.id), "rawId": b64(&self.id), "type": "public-key",
            "response": {
                "clientDataJSON": b64(&self.client_data("webauthn.create", challenge)),
                "attestationObject": b64(&attestation_object),
            },
        })
        .to_string()
    }

    /// The answer to a sign-in page's challenge, for `user_handle`.
    pub(super) fn sign_in(
        &self,
        challenge: &str,
        user_handle: &str,
        flags: u8,
        counter: u32,
    ) -> String {
        use p256::ecdsa::signature::Signer as _;
        use sha2::Digest as _;
        let client_data = self.client_data("webauthn.get", challenge);
        let auth_data = self.authenticator_data(flags, counter);
        let mut signed = auth_data.clone();
        signed.extend(sha2::Sha256::digest(&client_data));
        let signature: p256::ecdsa::Signature = self.key.sign(&signed);
        json!({
            "id": b64(&self.id), "rawId": b64(&self.id), "type": "public-key",
            "response": {
                "clientDataJSON": b64(&client_data),
                "authenticatorData": b64(&auth_data),
                "signature": b64(signature.to_der().as_bytes()),
                "userHandle": user_handle,
            },
        })
        .to_string()
    }
}

#[test]
fn a_passkey_that_answers_unlike_the_registered_one_is_refused_as_copied() {
    let env = Env::start(|p| {
        p.public_host("localhost");
    });
    env.add_user("erin", "user");
    let authenticator = SoftAuthenticator::new(&env, 0xAB);

    // Register (signed in with the password just now).
    let user_handle = authenticator.register_for(&env, "erin");
    assert_eq!(unb64(&user_handle).len(), 16, "the identity's UUID");

    // Sign in from a fresh page each time; the answer's flags and counter vary.
    let sign_in = |flags: u8, counter: u32| {
        let page = crate::support::http::get(&env.url("/oauth/account"));
        let answer = authenticator.sign_in(
            &data_attribute(&page.body, "challenge"),
            &user_handle,
            flags,
            counter,
        );
        env.form(
            "/oauth/account/login",
            &[
                ("csrf", &hidden(&page.body, "csrf")),
                ("credential", &answer),
            ],
            &[("Cookie", &cookies(&page))],
        )
    };
    let first = sign_in(FLAG_UP | FLAG_UV, 1);
    assert_answer(&first, 200, "<b id=user>erin</b>");
    let same_counter = sign_in(FLAG_UP | FLAG_UV, 1);
    assert_eq!(same_counter.status, 401, "{same_counter:?}");
    assert!(
        same_counter
            .body
            .contains("signature counter did not advance"),
        "{}",
        same_counter.body
    );
    let now_synced = sign_in(FLAG_UP | FLAG_UV | FLAG_BE, 2);
    assert_answer(&now_synced, 401, "backup eligibility");
    let again = sign_in(FLAG_UP | FLAG_UV, 3);
    assert_eq!(again.status, 200, "{again:?}");
    // Without user verification (the profile requires it by default).
    let unverified = sign_in(FLAG_UP, 4);
    assert_eq!(unverified.status, 401, "{unverified:?}");
}
