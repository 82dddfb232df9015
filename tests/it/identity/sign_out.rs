//! Signing a user out everywhere: `warden user sign-out`, `warden user passwd` and the
//! account page's "Sign out everywhere" end the user's login sessions, authorization
//! codes not yet exchanged, refresh tokens and access tokens — and nothing issued after.

use serde_json::json;

use super::{
    Env, PASSWORD, account_sign_in, authorize_over_http, authorize_query, cookies, exchange,
    hidden, pkce, query,
};
use crate::support::http::{self, Response};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
/// What `warden serve` logs when a CLI change reached it.
const NOTICED: &str = "identity change noticed";
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const SIGNED_OUT: &str = "signed out everywhere";

/// An OAuth client's grant for `user`: a code walked through the login and consent
/// pages, and its PKCE verifier (not exchanged yet).
struct Code {
    code: String,
    verifier: String,
}

fn consent(env: &Env, client_id: &str, user: &str, password: &str) -> Code {
    let (verifier, challenge) = pkce();
    let consented = authorize_over_http(
        env,
        &authorize_query(client_id, REDIRECT, "tools:read", &challenge, "s"),
        user,
        password,
    );
    Code {
        code: query(&consented.location)["code"].clone(),
        verifier,
    }
}

/// Exchanges `code`; returns the access and refresh tokens.
fn tokens(env: &Env, client_id: &str, code: &Code) -> (String, String) {
    let answer = exchange(env, client_id, &code.code, REDIRECT, &code.verifier);
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json();
    (
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned(),
        body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned(),
    )
}

/// Access and refresh tokens of a fresh sign-in of `user`.
fn sign_in_tokens(env: &Env, client_id: &str, user: &str, password: &str) -> (String, String) {
    tokens(env, client_id, &consent(env, client_id, user, password))
}

/// `warden user ARGS`, asserting success, once the running server heard that the user
/// `ARGS[1]` was signed out (not some earlier notice); its stdout.
fn cli_heard(env: &Env, args: &[&str], stdin: Option<&str>) -> String {
    let mark = env.warden.log_mark();
    let (ok, out, err) = env.cli(args, stdin);
    assert!(ok, "{err}");
    let needles = [NOTICED, "user.signed_out", args[2]];
    assert!(
        env.warden.wait_for_line_since(mark, &needles, WAIT),
        "{}",
        env.warden.log()
    );
    out
}

fn refresh(env: &Env, client_id: &str, refresh_token: &str) -> Response {
    env.form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", refresh_token),
        ],
        &[],
    )
}

fn echo(env: &Env, token: &str) -> Response {
    env.call_tool(token, "fx__echo", json!({"message": "hi"}))
}

/// A call refused because the user signed out everywhere since `token` was issued.
fn assert_signed_out(env: &Env, token: &str) {
    let refused = echo(env, token);
    assert_eq!(refused.status, 401, "{refused:?}");
    let challenge = refused.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(SIGNED_OUT), "{challenge}");
}

/// An OAuth refusal with `invalid_grant` whose description contains `why`.
fn assert_invalid_grant(answer: &Response, why: &str) {
    assert_eq!(answer.status, 400, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["error"], "invalid_grant", "{answer:?}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(why), "{description}");
}

/// Whether a login session's cookies still sign their holder in on the account page.
fn signed_in(env: &Env, session: &str) -> bool {
    let page = http::request(
        "GET",
        &env.url("/oauth/account"),
        &[("Cookie", session)],
        None,
    )
    .expect("GET /oauth/account");
    assert_eq!(page.status, 200, "{page:?}");
    page.body.contains("<b id=user>")
}

#[test]
fn the_cli_signs_a_user_out_of_sessions_codes_and_tokens_and_later_ones_work() {
    let mut env = Env::start(|_| {});
    env.add_user("alice", "user");
    env.add_user("bob", "user");
    let client_id = env.register(REDIRECT);

    let (access, refresh_token) = sign_in_tokens(&env, &client_id, "alice", PASSWORD);
    let unexchanged = consent(&env, &client_id, "alice", PASSWORD);
    let cli_token = env.token("alice", "tools:read");
    let (_, session) = account_sign_in(&env, "alice");
    let bob_token = env.token("bob", "tools:read");
    // Verified once, so each sits in the verification cache the sign-out must empty.
    for token in [&access, &cli_token, &bob_token] {
        assert_eq!(echo(&env, token).status, 200);
    }
    assert!(signed_in(&env, &session));

    let out = cli_heard(&env, &["user", "sign-out", "alice"], None);
    assert_eq!(
        out.trim(),
        "`alice` signed out everywhere (1 refresh tokens revoked)"
    );

    assert_signed_out(&env, &access);
    assert_signed_out(&env, &cli_token);
    assert_invalid_grant(&refresh(&env, &client_id, &refresh_token), "revoked");
    // A refresh token the sign-out did not reach (one granted while it ran) is refused
    // for its epoch, and introspection agrees.
    env.db.execute(
        "UPDATE oauth_refresh_tokens SET revoked_at = NULL, used_at = NULL WHERE identity_name = 'alice'",
    );
    let introspected = env.form(
        "/oauth/introspect",
        &[("token", &refresh_token)],
        &[("Authorization", &format!("Bearer {}", env.admin_token()))],
    );
    assert_eq!(introspected.json()["active"], false, "{introspected:?}");
    assert_invalid_grant(
        &refresh(&env, &client_id, &refresh_token),
        "signed out everywhere after this grant was made",
    );
    assert_invalid_grant(
        &exchange(
            &env,
            &client_id,
            &unexchanged.code,
            REDIRECT,
            &unexchanged.verifier,
        ),
        "signed out everywhere after this grant was made",
    );
    assert!(!signed_in(&env, &session), "the login session survived");
    // Someone else is not touched.
    assert_eq!(echo(&env, &bob_token).status, 200);

    // What is issued after the sign-out works, and refreshes.
    let (access, refresh_token) = sign_in_tokens(&env, &client_id, "alice", PASSWORD);
    assert_eq!(echo(&env, &access).status, 200);
    let refreshed = refresh(&env, &client_id, &refresh_token);
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    assert_eq!(echo(&env, &env.token("alice", "tools:read")).status, 200);
    let (_, session) = account_sign_in(&env, "alice");
    assert!(signed_in(&env, &session));

    // A token from ahead of the stored epoch (a database restored from before the
    // sign-out) is refused too.
    let ahead = env.token("alice", "tools:read");
    env.db
        .execute("UPDATE identities SET session_epoch = session_epoch - 1 WHERE name = 'alice'");
    assert_signed_out(&env, &ahead);

    // A name that is not there is an error naming it.
    let (ok, _, err) = env.cli(&["user", "sign-out", "nobody"], None);
    assert!(!ok);
    assert!(err.contains("no identity named `nobody`"), "{err}");

    let status = env.warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", env.warden.log());
    // With no server running, the CLI's change is on the trail all the same.
    let (ok, _, err) = env.cli(&["user", "sign-out", "bob"], None);
    assert!(ok, "{err}");
    let rows: Vec<(Option<String>, Option<String>, Option<String>)> = env
        .db
        .query(
            "SELECT actor_id, subject, attributes->>'refresh_tokens_revoked' FROM audit_events \
             WHERE kind = 'auth.signed_out' ORDER BY occurred_at",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), 2, "one auth.signed_out row each: {rows:?}");
    assert!(
        rows[0].0.as_deref().is_some_and(|a| a.starts_with("cli:")),
        "the CLI's user: {rows:?}"
    );
    assert_eq!(rows[0].1.as_deref(), Some("alice"));
    assert_eq!(rows[0].2.as_deref(), Some("1"));
    assert_eq!(rows[1].1.as_deref(), Some("bob"));
}

#[test]
fn the_account_page_and_a_new_password_sign_out_everywhere() {
    let mut env = Env::start(|_| {});
    env.add_user("carol", "user");
    let client_id = env.register(REDIRECT);
    let (access, refresh_token) = sign_in_tokens(&env, &client_id, "carol", PASSWORD);
    assert_eq!(echo(&env, &access).status, 200);
    // Two browsers.
    let (page, laptop) = account_sign_in(&env, "carol");
    let (_, phone) = account_sign_in(&env, "carol");
    assert!(
        page.body.contains("id=sign-out-everywhere"),
        "{}",
        page.body
    );
    let csrf = hidden(&page.body, "csrf");
    assert!(signed_in(&env, &laptop) && signed_in(&env, &phone));

    // The form needs the browser's CSRF cookie, and a session.
    let forged = env.form(
        "/oauth/account/sign-out-everywhere",
        &[("csrf", &csrf)],
        &[],
    );
    assert_eq!(forged.status, 403, "{forged:?}");
    let csrf_only: String = laptop
        .split("; ")
        .filter(|c| c.starts_with("warden_csrf="))
        .collect::<Vec<_>>()
        .join("; ");
    let no_session = env.form(
        "/oauth/account/sign-out-everywhere",
        &[("csrf", &csrf)],
        &[("Cookie", &csrf_only)],
    );
    assert_eq!(no_session.status, 401, "{no_session:?}");
    assert_eq!(echo(&env, &access).status, 200, "nothing ended yet");

    let mark = env.warden.log_mark();
    let done = env.form(
        "/oauth/account/sign-out-everywhere",
        &[("csrf", &csrf)],
        &[("Cookie", &laptop)],
    );
    assert_eq!(done.status, 200, "{done:?}");
    assert!(
        done.body.contains("You are signed out everywhere"),
        "{}",
        done.body
    );
    assert!(
        cookies(&done).split("; ").any(|c| c.ends_with("session=")),
        "the session cookie is cleared: {done:?}"
    );
    // The same process: no notice to wait for before checking. (Waited for all the same,
    // so that it cannot be taken for the notice of the `passwd` below.)
    assert!(!signed_in(&env, &laptop));
    assert!(!signed_in(&env, &phone));
    assert_signed_out(&env, &access);
    assert_invalid_grant(&refresh(&env, &client_id, &refresh_token), "revoked");
    let needles = [NOTICED, "user.signed_out", "carol"];
    assert!(
        env.warden.wait_for_line_since(mark, &needles, WAIT),
        "{}",
        env.warden.log()
    );

    // A new password signs out everywhere too; the new password works, the old does not.
    let (access, _) = sign_in_tokens(&env, &client_id, "carol", PASSWORD);
    assert_eq!(echo(&env, &access).status, 200);
    let out = cli_heard(
        &env,
        &["user", "passwd", "carol"],
        Some("a new passphrase here"),
    );
    assert!(out.contains("signed out everywhere"), "{out}");
    assert_signed_out(&env, &access);
    let (access, _) = sign_in_tokens(&env, &client_id, "carol", "a new passphrase here");
    assert_eq!(echo(&env, &access).status, 200);

    let status = env.warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", env.warden.log());
    let origins: Vec<Option<String>> = env
        .db
        .query("SELECT actor_id FROM audit_events WHERE kind = 'auth.signed_out' AND subject = 'carol' ORDER BY occurred_at")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(origins.len(), 2, "{origins:?}");
    assert_eq!(origins[0].as_deref(), Some("account"));
    assert!(
        origins[1].as_deref().is_some_and(|a| a.starts_with("cli:")),
        "{origins:?}"
    );
}
