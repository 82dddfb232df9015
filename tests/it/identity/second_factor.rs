//! `identity.passkeys.second_factor`: a password and then a passkey. Over HTTP, with the
//! software authenticator of the passkeys tests answering the ceremonies.

use super::passkeys::{FLAG_UP, FLAG_UV, SoftAuthenticator, assert_answer};
use super::{
    Env, PASSWORD, account_password, authorize_over_http, authorize_query, cookies, data_attribute,
    exchange, hidden, pkce, query,
};
use crate::support::http::{self, Response};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// An OAuth sign-in page for a fresh authorization request; its PKCE verifier.
fn authorize_page(env: &Env, client_id: &str) -> (Response, String) {
    let (verifier, challenge) = pkce();
    let page = http::get(&env.url(&format!(
        "/oauth/authorize?{}",
        authorize_query(client_id, REDIRECT, "tools:read", &challenge, "s")
    )));
    assert_eq!(page.status, 200, "{page:?}");
    (page, verifier)
}

/// Posts `fields` with the `pending` and `csrf` of `page` to `/oauth/login`, with the
/// cookies `page` set.
fn post_login(env: &Env, page: &Response, fields: &[(&str, &str)]) -> Response {
    let pending = hidden(&page.body, "pending");
    let csrf = hidden(&page.body, "csrf");
    let mut form = vec![("pending", pending.as_str()), ("csrf", csrf.as_str())];
    form.extend_from_slice(fields);
    env.form("/oauth/login", &form, &[("Cookie", &cookies(page))])
}

/// Allows on a consent page and exchanges the code: an access token that works.
fn consent_and_exchange(env: &Env, consent: &Response, client_id: &str, verifier: &str) {
    let allowed = env.form(
        "/oauth/consent",
        &[
            ("pending", &hidden(&consent.body, "pending")),
            ("csrf", &hidden(&consent.body, "csrf")),
            ("decision", "allow"),
        ],
        &[("Cookie", &cookies(consent))],
    );
    assert_eq!(allowed.status, 302, "{allowed:?}");
    let code = query(allowed.header("location").expect("Location"))["code"].clone();
    let tokens = exchange(env, client_id, &code, REDIRECT, verifier);
    assert_eq!(tokens.status, 200, "{tokens:?}");
    let token = tokens.json()["access_token"].as_str().unwrap().to_owned();
    let echo = env.call_tool(&token, "fx__echo", serde_json::json!({"message": "2fa"}));
    assert_eq!(echo.status, 200, "{echo:?}");
}

/// Answers the passkey challenge of an account `page` (a sign-in or confirmation) with
/// `key`, at signature counter `counter`.
fn passkey_on_account_page(
    env: &Env,
    page: &Response,
    key: &SoftAuthenticator,
    user_handle: &str,
    counter: u32,
) -> Response {
    let answer = key.sign_in(
        &data_attribute(&page.body, "challenge"),
        user_handle,
        FLAG_UP | FLAG_UV,
        counter,
    );
    env.form(
        "/oauth/account/login",
        &[
            ("csrf", &hidden(&page.body, "csrf")),
            ("credential", &answer),
        ],
        &[("Cookie", &cookies(page))],
    )
}

/// `(actor, decision, method, reason)` of the `auth.login` rows, oldest first.
fn logins(env: &Env) -> Vec<(String, String, String, String)> {
    env.db
        .query(
            "SELECT coalesce(actor_id, ''), coalesce(decision, ''), attributes->>'method', \
             coalesce(reason, '') FROM audit_events WHERE kind = 'auth.login' \
             ORDER BY occurred_at, id",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[test]
fn under_if_registered_a_users_own_passkey_confirms_their_password() {
    let mut env = Env::start(|p| {
        p.public_host("localhost");
        p.set("identity.passkeys.second_factor", "if_registered");
    });
    for user in ["erin", "frank", "gus"] {
        env.add_user(user, "user");
    }
    // Without a passkey yet, a password signs in (and adds the first one).
    let erin = SoftAuthenticator::new(&env, 1);
    let erin_handle = erin.register_for(&env, "erin");
    let frank = SoftAuthenticator::new(&env, 2);
    let frank_handle = frank.register_for(&env, "frank");
    let client_id = env.register(REDIRECT);

    // gus has no passkey: the password alone leads to the consent page.
    let (_, challenge) = pkce();
    let consented = authorize_over_http(
        &env,
        &authorize_query(&client_id, REDIRECT, "tools:read", &challenge, "s"),
        "gus",
        PASSWORD,
    );
    assert!(
        consented.location.contains("code="),
        "{}",
        consented.location
    );

    // erin's password leads to her passkey, and signs in no one yet.
    let (page, verifier) = authorize_page(&env, &client_id);
    let confirm = post_login(&env, &page, &[("username", "erin"), ("password", PASSWORD)]);
    assert_answer(&confirm, 200, "id=confirm");
    assert!(
        !cookies(&confirm).contains("session"),
        "a session before the passkey: {confirm:?}"
    );
    // The browser is offered her passkey, and only hers (the authenticator's id).
    let erin_id =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [1u8; 32]);
    assert_eq!(data_attribute(&confirm.body, "allow"), erin_id);
    let challenge = data_attribute(&confirm.body, "challenge");

    // Another account's passkey does not confirm it, nor does a made-up answer.
    let wrong = frank.sign_in(&challenge, &frank_handle, FLAG_UP | FLAG_UV, 1);
    let refused = post_login(&env, &confirm, &[("credential", &wrong)]);
    assert_answer(
        &refused,
        401,
        "belongs to another account than the one signing in",
    );
    let right = erin.sign_in(&challenge, &erin_handle, FLAG_UP | FLAG_UV, 1);
    let mut made_up: serde_json::Value = serde_json::from_str(&right).expect("JSON");
    made_up["response"]["signature"] = "MEUCIQ".into();
    let refused = post_login(&env, &confirm, &[("credential", &made_up.to_string())]);
    assert_answer(&refused, 401, "signature is malformed");
    // Hers does: on to the consent page, with a session.
    let consent = post_login(&env, &confirm, &[("credential", &right)]);
    assert_answer(&consent, 200, "id=allow");
    assert!(cookies(&consent).contains("session="), "{consent:?}");
    // Once.
    let replayed = post_login(&env, &confirm, &[("credential", &right)]);
    assert_answer(&replayed, 409, "already used");
    consent_and_exchange(&env, &consent, &client_id, &verifier);

    // The same on the account page; and a passkey alone still signs in there.
    let confirm = account_password(&env, "erin", PASSWORD);
    assert_answer(&confirm, 200, "id=confirm");
    assert!(!cookies(&confirm).contains("session"), "{confirm:?}");
    let signed_in = passkey_on_account_page(&env, &confirm, &erin, &erin_handle, 2);
    assert_answer(&signed_in, 200, "<b id=user>erin</b>");
    let account = http::get(&env.url("/oauth/account"));
    let passkey_alone = passkey_on_account_page(&env, &account, &erin, &erin_handle, 3);
    assert_answer(&passkey_alone, 200, "<b id=user>erin</b>");

    let status = env.warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", env.warden.log());
    let rows = logins(&env);
    let of = |user: &str| -> Vec<(String, String, String)> {
        rows.iter()
            .filter(|(actor, ..)| actor == user)
            .map(|(_, decision, method, reason)| (decision.clone(), method.clone(), reason.clone()))
            .collect()
    };
    let erin_rows = of("erin");
    let pending = (
        String::new(),
        "password".to_owned(),
        "password correct; a passkey must confirm".to_owned(),
    );
    let confirmed = (
        "allow".to_owned(),
        "password+passkey".to_owned(),
        "password+passkey".to_owned(),
    );
    let deny =
        |method: &str, reason: &str| ("deny".to_owned(), method.to_owned(), reason.to_owned());
    let passkey_alone = (
        "allow".to_owned(),
        "passkey".to_owned(),
        "passkey".to_owned(),
    );
    // The refused confirmations are on the trail of the user who gave the password.
    assert_eq!(erin_rows.len(), 9, "{erin_rows:?}");
    assert_eq!(erin_rows[1], pending, "{erin_rows:?}");
    assert_eq!(
        erin_rows[2],
        deny(
            "password+passkey",
            "this passkey belongs to another account than the one signing in"
        )
    );
    assert_eq!(
        (erin_rows[3].0.as_str(), erin_rows[3].1.as_str()),
        ("deny", "password+passkey"),
        "the made-up answer: {erin_rows:?}"
    );
    assert_eq!(
        erin_rows[4..],
        [
            confirmed.clone(),
            deny(
                "password+passkey",
                "this passkey answer was already used; start again"
            ),
            pending,
            confirmed,
            passkey_alone,
        ],
    );
    // frank's trail has his own sign-in only.
    assert_eq!(of("frank").len(), 1, "{rows:?}");
}

#[test]
fn under_required_a_password_alone_signs_no_one_in() {
    let mut env = Env::start(|p| {
        p.public_host("localhost");
        p.set("identity.passkeys.second_factor", "required");
    });
    env.add_user("hana", "user");
    let client_id = env.register(REDIRECT);
    let (page, _) = authorize_page(&env, &client_id);
    let refused = post_login(&env, &page, &[("username", "hana"), ("password", PASSWORD)]);
    assert_answer(&refused, 403, "ask your operator for a sign-in link");
    let refused = account_password(&env, "hana", PASSWORD);
    assert_answer(&refused, 403, "ask your operator for a sign-in link");
    // A wrong password is still just that.
    let (page, _) = authorize_page(&env, &client_id);
    let wrong = post_login(&env, &page, &[("username", "hana"), ("password", "nope")]);
    assert_answer(&wrong, 401, "Wrong username or password.");

    // A sign-in link adds her first passkey; then her password leads to it.
    let (ok, link, err) = env.cli(&["user", "passkey-link", "hana"], None);
    assert!(ok, "{err}");
    let code = query(link.trim())["code"].clone();
    let landing = http::get(&env.url(&format!("/oauth/account/link?code={code}")));
    let signed_in = env.form(
        "/oauth/account/link",
        &[("code", &code), ("csrf", &hidden(&landing.body, "csrf"))],
        &[("Cookie", &cookies(&landing))],
    );
    assert_answer(&signed_in, 200, "<b id=user>hana</b>");
    let hana = SoftAuthenticator::new(&env, 3);
    let added = env.form(
        "/oauth/account/passkeys",
        &[
            ("csrf", &hidden(&signed_in.body, "csrf")),
            ("label", "software"),
            (
                "credential",
                &hana.register(
                    &data_attribute(&signed_in.body, "challenge"),
                    FLAG_UP | FLAG_UV,
                ),
            ),
        ],
        &[("Cookie", &cookies(&signed_in))],
    );
    assert_answer(&added, 200, "added");
    let handle = data_attribute(&signed_in.body, "user-id");
    let (page, verifier) = authorize_page(&env, &client_id);
    let confirm = post_login(&env, &page, &[("username", "hana"), ("password", PASSWORD)]);
    assert_answer(&confirm, 200, "id=confirm");
    let answer = hana.sign_in(
        &data_attribute(&confirm.body, "challenge"),
        &handle,
        FLAG_UP | FLAG_UV,
        1,
    );
    let consent = post_login(&env, &confirm, &[("credential", &answer)]);
    assert_answer(&consent, 200, "id=allow");
    consent_and_exchange(&env, &consent, &client_id, &verifier);

    let status = env.warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", env.warden.log());
    let reasons: Vec<String> = logins(&env)
        .into_iter()
        .filter(|(_, decision, ..)| decision == "deny")
        .map(|(.., reason)| reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "a passkey must confirm a password sign-in and the account has none",
            "a passkey must confirm a password sign-in and the account has none",
            "wrong username or password",
        ]
    );
}
