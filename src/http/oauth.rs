//! The OAuth 2.1 authorization server's HTTP surface (the logic is in `auth/service.rs`):
//!
//! - `GET /oauth/authorize`: validates the request — an unknown client or a
//!   `redirect_uri` that is not exactly a registered one gets an error *page*, never a
//!   redirect (no open redirector); everything else is answered by redirecting to the
//!   client with `error`, `state` and `iss` (RFC 9207). PKCE with S256 is required
//!   (`plain` and a missing challenge are refused). Then the login page, or the consent
//!   page when the browser already has a login session.
//! - `POST /oauth/login`, `POST /oauth/consent`: the forms. Each form carries the
//!   pending request sealed under the master key (so it cannot be altered) and a CSRF
//!   token that must equal the `…csrf` cookie and the one sealed in the request. Pages
//!   forbid framing (`frame-ancestors 'none'`, `X-Frame-Options: DENY`); cookies are
//!   HttpOnly, SameSite=Lax, and `__Host-`-prefixed and Secure when `public_url` is https.
//! - `POST /oauth/token`: `authorization_code`, `refresh_token`, `client_credentials`.
//! - `POST /oauth/register` (RFC 7591, 201), `POST /oauth/revoke` (RFC 7009),
//!   `POST /oauth/introspect` (RFC 7662; needs a bearer token with the `admin` scope).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::auth::oauth::{self, Client, CodeGrant};
use crate::auth::passkeys::{self, PasskeyError};
use crate::auth::secret::{self, Redacted};
use crate::auth::service::{LoginError, OAuthError, PasswordSignIn};
use crate::auth::tokens::unix_now;
use crate::auth::{Scopes, store};

/// How long a login or consent form stays valid: as long as a passkey ceremony, which is
/// bound to the form's CSRF cookie.
const FORM_TTL_SECS: u64 = crate::auth::passkeys::CEREMONY_TTL.as_secs();

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/login", post(login))
        .route("/oauth/consent", post(consent))
        .route("/oauth/token", post(token))
        .route("/oauth/register", post(register))
        .route("/oauth/revoke", post(revoke))
        .route("/oauth/introspect", post(introspect))
        .route("/oauth/passkeys.js", get(passkeys_script))
}

/// The profile's `rate_limits.oauth`, per client (or per `subject` where there is no
/// client yet).
fn oauth_limit(app: &AppState, subject: &str) -> Result<(), ApiError> {
    app.limits
        .load()
        .check(
            crate::policy::limits::Surface::OAuth,
            subject,
            "anon",
            None,
            None,
        )
        .map_err(|limited| ApiError::RateLimited {
            message: limited.to_string(),
            retry_after_secs: limited.retry_after_secs(),
        })
}

impl From<OAuthError> for ApiError {
    fn from(error: OAuthError) -> Self {
        ApiError::OAuth {
            error: error.code,
            description: error.description,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pages, cookies and the sealed pending request
// ---------------------------------------------------------------------------------------

/// An authorization request between the authorize endpoint and the consent.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    code_challenge: String,
    resource: Option<String>,
    csrf: String,
    exp: u64,
}

/// A login session: who, until when.
#[derive(Serialize, Deserialize)]
struct LoginSession {
    user: String,
    exp: u64,
    /// When the user signed in (Unix seconds): adding a passkey needs a recent sign-in.
    /// Sessions sealed before this field existed read as long ago.
    #[serde(default)]
    signed_in_at: u64,
    /// The user's session epoch at sign-in: a sign-out everywhere raises it and ends
    /// this session. Sessions sealed before sign-outs existed read as 0.
    #[serde(default)]
    epoch: i64,
}

const PENDING_CONTEXT: &[u8] = b"oauth-pending-request";
const SESSION_CONTEXT: &[u8] = b"oauth-login-session";

fn seal<T: Serialize>(app: &AppState, value: &T, context: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(app.master_key.seal_json(value, context))
}

fn unseal<T: for<'de> Deserialize<'de>>(app: &AppState, text: &str, context: &[u8]) -> Option<T> {
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    app.master_key.open_json(&sealed, context)
}

pub(super) struct CookieNames {
    pub(super) session: &'static str,
    pub(super) csrf: &'static str,
    pub(super) attributes: &'static str,
}

pub(super) fn cookie_names(app: &AppState) -> CookieNames {
    if app.config.load().server.public_url.starts_with("https://") {
        CookieNames {
            session: "__Host-warden_session",
            csrf: "__Host-warden_csrf",
            attributes: "; Path=/; HttpOnly; SameSite=Lax; Secure",
        }
    } else {
        CookieNames {
            session: "warden_session",
            csrf: "warden_csrf",
            attributes: "; Path=/; HttpOnly; SameSite=Lax",
        }
    }
}

pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.3rem}label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.5rem;box-sizing:border-box}\
button{margin:1rem .5rem 0 0;padding:.5rem 1.2rem}.error{color:#a00}.scopes li{font-family:monospace}small{color:#666}";

/// An HTML page with the headers every authorization-server page carries.
pub(super) fn page(status: StatusCode, title: &str, body: &str, cookies: &[String]) -> Response {
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{} · Warden</title><style>{STYLE}</style></head><body><h1>{}</h1>{body}</body></html>",
        escape(title),
        escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Authorization failed",
        &format!(
            "<p class=error>{}</p><p><small>Return to the application and start again.</small></p>",
            escape(message)
        ),
        &[],
    )
}

/// A 302 to the client's redirect URI with `params` (and `iss`, RFC 9207).
fn redirect_to_client(app: &AppState, redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let mut all: Vec<(&str, &str)> = params.to_vec();
    let issuer = app.identity.config().issuer;
    all.push(("iss", &issuer));
    let query = serde_urlencoded::to_string(&all).unwrap_or_default();
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{separator}{query}");
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn redirect_error(app: &AppState, pending: &Pending, error: &str, description: &str) -> Response {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(state) = &pending.state {
        params.push(("state", state));
    }
    redirect_to_client(app, &pending.redirect_uri, &params)
}

/// A fresh CSRF token and the cookie that carries it.
pub(super) fn csrf_cookie(app: &AppState) -> (String, String) {
    let token = secret::short_id("");
    let names = cookie_names(app);
    let cookie = format!(
        "{}={token}{}; Max-Age={FORM_TTL_SECS}",
        names.csrf, names.attributes
    );
    (token, cookie)
}

/// The hidden fields of a form that carries `pending` on: the request sealed again for
/// the form's CSRF token `csrf`, good for the form's lifetime from now.
fn pending_fields(app: &AppState, pending: &mut Pending, csrf: &str) -> String {
    csrf.clone_into(&mut pending.csrf);
    pending.exp = unix_now() + FORM_TTL_SECS;
    let sealed = seal(app, pending, PENDING_CONTEXT);
    format!(
        "<input type=hidden name=pending value=\"{sealed}\"><input type=hidden name=csrf value=\"{csrf}\">"
    )
}

fn login_page(
    app: &AppState,
    mut pending: Pending,
    client: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let (csrf, cookie) = csrf_cookie(app);
    let hidden = pending_fields(app, &mut pending, &csrf);
    let error = error
        .map(|e| format!("<p class=error id=error>{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        status,
        "Sign in to Warden",
        &format!(
            "<p><b>{}</b> wants to use your Warden account.</p>{error}{}",
            escape(client),
            sign_in_forms(app, "/oauth/login", &hidden, &csrf),
        ),
        &[cookie],
    )
}

/// The username-and-password form and, when passkeys are on, the passkey button, both
/// posting to `action` with the `hidden` fields (which carry the CSRF token `csrf`).
pub(super) fn sign_in_forms(app: &AppState, action: &str, hidden: &str, csrf: &str) -> String {
    format!(
        "<form method=post action={action}>{hidden}\
         <label for=username>Username</label><input type=text id=username name=username autocomplete=username required autofocus>\
         <label for=password>Password</label><input type=password id=password name=password autocomplete=current-password required>\
         <button type=submit id=login>Sign in</button></form>{}",
        passkey_sign_in(app, action, hidden, csrf)
    )
}

/// The script that runs passkey ceremonies (`navigator.credentials`) on Warden's pages.
const PASSKEYS_SCRIPT: &str = include_str!("passkeys.js");

async fn passkeys_script() -> Response {
    let mut response = PASSKEYS_SCRIPT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The "Sign in with a passkey" form: `hidden` (the form's own fields, with its CSRF
/// token `csrf`) and the credential the script fills in, posted to `action`. Empty when
/// passkeys are off.
fn passkey_sign_in(app: &AppState, action: &str, hidden: &str, csrf: &str) -> String {
    let Some(challenge) = app
        .identity
        .passkey_challenge(passkeys::Purpose::SignIn, None, csrf)
    else {
        return String::new();
    };
    let config = app.identity.passkeys();
    format!(
        "<form method=post action={action} id=passkey-form data-passkey=get \
         data-challenge=\"{}\" data-rp-id=\"{}\" data-uv={}>{hidden}<input type=hidden name=credential>\
         <button type=button id=passkey data-passkey-start>Sign in with a passkey</button>\
         <p class=error id=passkey-error hidden></p></form><script src=/oauth/passkeys.js></script>",
        challenge,
        escape(&config.rp_id),
        user_verification(&config),
    )
}

/// WebAuthn's `userVerification` for the profile's setting.
pub(super) fn user_verification(config: &crate::config::PasskeyConfig) -> &'static str {
    if config.user_verification_required {
        "required"
    } else {
        "preferred"
    }
}

fn consent_page(
    app: &AppState,
    mut pending: Pending,
    client: &Client,
    user: &str,
    scopes: &Scopes,
    extra: Option<String>,
) -> Response {
    let (csrf, cookie) = csrf_cookie(app);
    let hidden = pending_fields(app, &mut pending, &csrf);
    let host = pending
        .redirect_uri
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .unwrap_or(&pending.redirect_uri);
    let list: String = scopes
        .iter()
        .map(|s| format!("<li>{}</li>", escape(s)))
        .collect();
    let mut cookies = vec![cookie];
    cookies.extend(extra);
    page(
        StatusCode::OK,
        "Allow access?",
        &format!(
            "<p>Signed in as <b id=user>{}</b>.</p><p><b>{}</b> (returns to <code>{}</code>) asks for:</p>\
             <ul class=scopes id=scopes>{list}</ul>\
             <form method=post action=/oauth/consent>\
             {hidden}\
             <button type=submit name=decision value=allow id=allow>Allow</button>\
             <button type=submit name=decision value=deny id=deny>Deny</button></form>",
            escape(user),
            escape(client.display_name()),
            escape(host),
        ),
        &cookies,
    )
}

/// The user of a valid login session cookie.
async fn session_user(app: &AppState, headers: &HeaderMap) -> Option<store::IdentityRow> {
    session(app, headers).await.map(|(user, _)| user)
}

/// The user of a valid login session cookie, and when they signed in (Unix seconds).
pub(super) async fn session(
    app: &AppState,
    headers: &HeaderMap,
) -> Option<(store::IdentityRow, u64)> {
    let names = cookie_names(app);
    let session: LoginSession = unseal(app, cookie(headers, names.session)?, SESSION_CONTEXT)?;
    if session.exp <= unix_now() {
        return None;
    }
    let user = app.identity.active_user(&session.user).await?;
    (user.session_epoch == session.epoch).then_some((user, session.signed_in_at))
}

// ---------------------------------------------------------------------------------------
// GET /oauth/authorize
// ---------------------------------------------------------------------------------------

async fn authorize(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut map: HashMap<&str, &str> = HashMap::new();
    for (name, value) in &params {
        if map.insert(name.as_str(), value.as_str()).is_some() {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("The parameter `{name}` appears more than once."),
            );
        }
    }
    let Some(client_id) = map.get("client_id") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The request names no client (client_id).",
        );
    };
    let client = match app.identity.client(client_id).await {
        Ok(Some(client)) => client,
        Ok(None) => return error_page(StatusCode::BAD_REQUEST, "Unknown client."),
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.description),
    };
    let redirect_uri = match map.get("redirect_uri") {
        Some(uri) => (*uri).to_owned(),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The request names no redirect_uri and the client registered several.",
            );
        }
    };
    // Exact string comparison: no prefix, no normalisation (RFC 9700 §4.1.3).
    if !client.redirect_uris.contains(&redirect_uri) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is not one the client registered.",
        );
    }
    let pending = Pending {
        client_id: client.client_id.clone(),
        redirect_uri,
        scope: map.get("scope").copied().unwrap_or_default().to_owned(),
        state: map.get("state").map(|s| (*s).to_owned()),
        code_challenge: map
            .get("code_challenge")
            .copied()
            .unwrap_or_default()
            .to_owned(),
        resource: map.get("resource").map(|s| (*s).to_owned()),
        csrf: String::new(),
        exp: 0,
    };
    if map.get("response_type") != Some(&"code") {
        return redirect_error(
            &app,
            &pending,
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    if pending.code_challenge.is_empty() {
        return redirect_error(
            &app,
            &pending,
            "invalid_request",
            "code_challenge is required (PKCE with S256)",
        );
    }
    if map.get("code_challenge_method") != Some(&"S256") {
        return redirect_error(
            &app,
            &pending,
            "invalid_request",
            "code_challenge_method must be S256",
        );
    }
    if !oauth::is_s256_challenge(&pending.code_challenge) {
        return redirect_error(
            &app,
            &pending,
            "invalid_request",
            "code_challenge is not an S256 challenge",
        );
    }
    if let Some(resource) = &pending.resource
        && !app.identity.is_own_resource(resource)
    {
        return redirect_error(
            &app,
            &pending,
            "invalid_target",
            "the resource is not this Warden",
        );
    }
    if !client.allows_grant("authorization_code") {
        return redirect_error(
            &app,
            &pending,
            "unauthorized_client",
            "the client may not use authorization codes",
        );
    }
    match session_user(&app, &headers).await {
        Some(user) => {
            let scopes = app
                .identity
                .grantable(&user.roles, &Scopes::parse(&pending.scope));
            if scopes.is_empty() {
                return redirect_error(
                    &app,
                    &pending,
                    "access_denied",
                    "your roles grant none of the requested scopes",
                );
            }
            consent_page(&app, pending, &client, &user.name, &scopes, None)
        }
        None => login_page(&app, pending, client.display_name(), None, StatusCode::OK),
    }
}

// ---------------------------------------------------------------------------------------
// POST /oauth/login and /oauth/consent
// ---------------------------------------------------------------------------------------

/// A sign-in form: username and password, or a passkey's answer; `pending` only on the
/// OAuth login page.
#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    pub(super) username: String,
    /// Wrapped in `Redacted` as soon as it is read; this struct has no `Debug`.
    #[serde(default)]
    pub(super) password: String,
    /// A passkey's answer (JSON) instead of a username and password.
    #[serde(default)]
    pub(super) credential: String,
    #[serde(default)]
    pending: String,
    #[serde(default)]
    pub(super) csrf: String,
}

#[derive(Deserialize)]
struct ConsentForm {
    #[serde(default)]
    pending: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
}

// A refusal is a complete page; boxing it would only add an allocation per refusal.
#[allow(clippy::result_large_err)]
/// The pending request of a form, if the form is genuine: sealed by Warden, not expired,
/// and its CSRF token equal to the cookie's and the sealed one.
fn genuine(
    app: &AppState,
    headers: &HeaderMap,
    sealed: &str,
    csrf: &str,
) -> Result<Pending, Response> {
    let refused = || {
        error_page(
            StatusCode::FORBIDDEN,
            "This form expired or was not sent from this browser (CSRF check failed).",
        )
    };
    let pending: Pending = unseal(app, sealed, PENDING_CONTEXT).ok_or_else(refused)?;
    let names = cookie_names(app);
    let from_cookie = cookie(headers, names.csrf).unwrap_or_default();
    let ok = !csrf.is_empty()
        && secret::equal(csrf.as_bytes(), from_cookie.as_bytes())
        && secret::equal(csrf.as_bytes(), pending.csrf.as_bytes())
        && pending.exp > unix_now();
    if ok { Ok(pending) } else { Err(refused()) }
}

async fn login(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let pending = match genuine(&app, &headers, &form.pending, &form.csrf) {
        Ok(pending) => pending,
        Err(response) => return response,
    };
    let client = match app.identity.client(&pending.client_id).await {
        Ok(Some(client)) => client,
        _ => return error_page(StatusCode::BAD_REQUEST, "Unknown client."),
    };
    if !form.credential.is_empty() {
        return match app
            .identity
            .passkey_login(&form.csrf, &form.credential, &client.client_id)
            .await
        {
            Ok(user) => signed_in(&app, pending, &client, user),
            Err(error) => login_page(
                &app,
                pending,
                client.display_name(),
                Some(&error.for_user()),
                passkey_status(&error),
            ),
        };
    }
    // The next form's CSRF token: a passkey's confirmation is sealed for it.
    let (csrf, csrf_cookie) = csrf_cookie(&app);
    match app
        .identity
        .login(
            form.username.trim(),
            Redacted::new(form.password),
            &client.client_id,
            &csrf,
        )
        .await
    {
        Ok(PasswordSignIn::Done(user)) => signed_in(&app, pending, &client, user),
        Ok(PasswordSignIn::Confirm {
            challenge,
            passkeys,
        }) => {
            let mut pending = pending;
            let hidden = pending_fields(&app, &mut pending, &csrf);
            page(
                StatusCode::OK,
                "Confirm with your passkey",
                &confirm_form(&app, "/oauth/login", &hidden, &challenge, &passkeys),
                &[csrf_cookie],
            )
        }
        Err(LoginError::Unavailable(_)) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable right now; try again shortly.",
        ),
        Err(error) => {
            let (status, message, wait) = login_refusal(&error);
            let mut response =
                login_page(&app, pending, client.display_name(), Some(message), status);
            if let Some(wait) = wait {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            response
        }
    }
}

/// How a refused password sign-in is answered: status, message, and how long to wait.
pub(super) fn login_refusal(error: &LoginError) -> (StatusCode, &'static str, Option<Duration>) {
    match error {
        LoginError::Invalid => (
            StatusCode::UNAUTHORIZED,
            "Wrong username or password.",
            None,
        ),
        LoginError::RateLimited(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts for this username; wait a minute and try again.",
            Some(*wait),
        ),
        LoginError::PasskeyRequired => (
            StatusCode::FORBIDDEN,
            "This Warden asks for a passkey after the password, and your account has none yet: ask your operator for a sign-in link to add one (warden user passkey-link).",
            None,
        ),
        LoginError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable right now; try again shortly.",
            None,
        ),
    }
}

/// The second step of a password sign-in under `identity.passkeys.second_factor`: a
/// passkey form answering `challenge`, offering the user's `passkeys` (ids), posting
/// to `action` with the `hidden` fields.
pub(super) fn confirm_form(
    app: &AppState,
    action: &str,
    hidden: &str,
    challenge: &str,
    passkeys: &[String],
) -> String {
    let config = app.identity.passkeys();
    format!(
        "<p id=confirm>Your password is right. Now confirm it is you with one of your passkeys.</p>\
         <form method=post action={action} id=passkey-form data-passkey=get \
         data-challenge=\"{challenge}\" data-rp-id=\"{}\" data-uv={} data-allow=\"{}\">{hidden}\
         <input type=hidden name=credential>\
         <button type=button id=passkey data-passkey-start>Confirm with a passkey</button>\
         <p class=error id=passkey-error hidden></p></form><script src=/oauth/passkeys.js></script>",
        escape(&config.rp_id),
        user_verification(&config),
        escape(&passkeys.join(",")),
    )
}

/// The cookie of a fresh login session for `user`.
pub(super) fn session_cookie(app: &AppState, user: &store::IdentityRow) -> String {
    let ttl = app.identity.config().login_session_ttl;
    let session = seal(
        app,
        &LoginSession {
            user: user.name.clone(),
            exp: unix_now() + ttl.as_secs(),
            signed_in_at: unix_now(),
            epoch: user.session_epoch,
        },
        SESSION_CONTEXT,
    );
    let names = cookie_names(app);
    format!(
        "{}={session}{}; Max-Age={}",
        names.session,
        names.attributes,
        ttl.as_secs()
    )
}

/// The HTTP status a refused passkey ceremony is answered with (a database failure is
/// logged here; the page does not show its detail).
pub(super) fn passkey_status(error: &PasskeyError) -> StatusCode {
    error.log_detail();
    match error {
        PasskeyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        PasskeyError::Disabled => StatusCode::NOT_FOUND,
        PasskeyError::Malformed(_) | PasskeyError::BadLabel => StatusCode::BAD_REQUEST,
        PasskeyError::Duplicate | PasskeyError::Replayed | PasskeyError::TooMany => {
            StatusCode::CONFLICT
        }
        PasskeyError::LinkUsed | PasskeyError::LinkCancelled => StatusCode::CONFLICT,
        PasskeyError::BadLink
        | PasskeyError::Invalid(_)
        | PasskeyError::WrongCeremony
        | PasskeyError::Unknown
        | PasskeyError::WrongUser
        | PasskeyError::NotTheirs
        | PasskeyError::Cloned(_)
        | PasskeyError::AccountDisabled => StatusCode::UNAUTHORIZED,
    }
}

/// After a successful sign-in: the login session, then the consent page (or the
/// refusal when the user's roles grant nothing asked for).
fn signed_in(
    app: &AppState,
    pending: Pending,
    client: &Client,
    user: store::IdentityRow,
) -> Response {
    let session_cookie = session_cookie(app, &user);
    let scopes = app
        .identity
        .grantable(&user.roles, &Scopes::parse(&pending.scope));
    if scopes.is_empty() {
        return redirect_error(
            app,
            &pending,
            "access_denied",
            "your roles grant none of the requested scopes",
        );
    }
    consent_page(
        app,
        pending,
        client,
        &user.name,
        &scopes,
        Some(session_cookie),
    )
}

async fn consent(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ConsentForm>,
) -> Response {
    let pending = match genuine(&app, &headers, &form.pending, &form.csrf) {
        Ok(pending) => pending,
        Err(response) => return response,
    };
    let client = match app.identity.client(&pending.client_id).await {
        Ok(Some(client)) => client,
        _ => return error_page(StatusCode::BAD_REQUEST, "Unknown client."),
    };
    let Some(user) = session_user(&app, &headers).await else {
        return login_page(
            &app,
            pending,
            client.display_name(),
            Some("Your session ended; sign in again."),
            StatusCode::UNAUTHORIZED,
        );
    };
    if form.decision != "allow" {
        app.identity
            .consent_event(&user.name, &client.client_id, false, &pending.scope)
            .await;
        return redirect_error(
            &app,
            &pending,
            "access_denied",
            "the user denied the request",
        );
    }
    let scopes = app
        .identity
        .grantable(&user.roles, &Scopes::parse(&pending.scope));
    if scopes.is_empty() {
        return redirect_error(
            &app,
            &pending,
            "access_denied",
            "your roles grant none of the requested scopes",
        );
    }
    let code = match app
        .identity
        .create_code(&CodeGrant {
            client_id: client.client_id.clone(),
            identity: user.name.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            scopes: scopes.clone(),
            resource: pending.resource.clone(),
            code_challenge: pending.code_challenge.clone(),
            session_epoch: user.session_epoch,
        })
        .await
    {
        Ok(code) => code,
        Err(_) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Warden could not complete the authorization; try again.",
            );
        }
    };
    app.identity
        .consent_event(
            &user.name,
            &client.client_id,
            true,
            &scopes.to_header_value(),
        )
        .await;
    let mut params = vec![("code", code.expose().as_str())];
    if let Some(state) = &pending.state {
        params.push(("state", state));
    }
    redirect_to_client(&app, &pending.redirect_uri, &params)
}

// ---------------------------------------------------------------------------------------
// POST /oauth/token, /oauth/register, /oauth/revoke, /oauth/introspect
// ---------------------------------------------------------------------------------------

/// Client credentials from `Authorization: Basic` (RFC 6749 §2.3.1, form-encoded parts)
/// or the body.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, Option<Redacted<String>>), ApiError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        });
    if let Some(encoded) = basic {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| OAuthError::new("invalid_client", "malformed Basic credentials"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| OAuthError::new("invalid_client", "malformed Basic credentials"))?;
        let decode = |s: &str| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
                .ok()
                .and_then(|mut v| v.pop())
                .map(|(_, v)| v)
                .unwrap_or_default()
        };
        return Ok((decode(id), Some(Redacted::new(decode(secret)))));
    }
    let id = form
        .get("client_id")
        .cloned()
        .ok_or_else(|| OAuthError::new("invalid_client", "client_id is required"))?;
    Ok((id, form.get("client_secret").cloned().map(Redacted::new)))
}

fn form_map(pairs: Vec<(String, String)>) -> Result<HashMap<String, String>, ApiError> {
    let mut map = HashMap::new();
    for (name, value) in pairs {
        if map.contains_key(&name) {
            return Err(OAuthError::new(
                "invalid_request",
                format!("`{name}` appears more than once"),
            )
            .into());
        }
        map.insert(name, value);
    }
    Ok(map)
}

async fn token(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let form = form_map(pairs)?;
    let get = |name: &str| form.get(name).map(String::as_str);
    let (client_id, client_secret) = client_credentials(&headers, &form)?;
    oauth_limit(&app, &client_id)?;
    let resource = get("resource");
    let response = match get("grant_type") {
        Some("authorization_code") => {
            let client = app
                .identity
                .authenticate_client(&client_id, client_secret.as_ref())
                .await?;
            let code = get("code")
                .ok_or_else(|| OAuthError::new("invalid_request", "code is required"))?;
            app.identity
                .exchange_code(
                    &client,
                    code,
                    get("redirect_uri"),
                    get("code_verifier"),
                    resource,
                )
                .await?
        }
        Some("refresh_token") => {
            let client = app
                .identity
                .authenticate_client(&client_id, client_secret.as_ref())
                .await?;
            let refresh = get("refresh_token")
                .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is required"))?;
            app.identity
                .refresh(&client, refresh, get("scope"), resource)
                .await?
        }
        Some("client_credentials") => {
            app.identity
                .client_credentials(&client_id, client_secret.as_ref(), get("scope"), resource)
                .await?
        }
        Some(other) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type `{other}` is not supported (authorization_code, refresh_token, client_credentials)"),
            )
            .into());
        }
        None => return Err(OAuthError::new("invalid_request", "grant_type is required").into()),
    };
    let mut body = json!({
        "access_token": response.access_token.expose(),
        "token_type": "Bearer",
        "expires_in": response.expires_in,
        "scope": response.scope,
    });
    if let Some(refresh) = &response.refresh_token {
        body["refresh_token"] = json!(refresh.expose());
    }
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

async fn register(
    State(app): State<AppState>,
    request: Result<Json<oauth::RegistrationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    oauth_limit(&app, "registration")?;
    let Json(request) =
        request.map_err(|e| OAuthError::new("invalid_client_metadata", e.body_text()))?;
    let (client, secret) = app.identity.register_client(request).await?;
    let mut body = json!({
        "client_id": client.client_id,
        "client_id_issued_at": unix_now(),
        "client_name": client.client_name,
        "redirect_uris": client.redirect_uris,
        "grant_types": client.grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
    });
    if let Some(scope) = &client.scope {
        body["scope"] = json!(scope);
    }
    if let Some(secret) = &secret {
        body["client_secret"] = json!(secret.expose());
        body["client_secret_expires_at"] = json!(0);
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn revoke(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let form = form_map(pairs)?;
    let (client_id, secret) = client_credentials(&headers, &form)?;
    let client = app
        .identity
        .authenticate_client(&client_id, secret.as_ref())
        .await?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::new("invalid_request", "token is required"))?;
    app.identity.revoke_token(&client, token).await?;
    Ok(StatusCode::OK.into_response())
}

async fn introspect(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    super::admin::admin_principal(&app, &headers, "tokens.introspect").await?;
    let form = form_map(pairs)?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::new("invalid_request", "token is required"))?;
    Ok(Json(app.identity.introspect(token).await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_cookies_parsed() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; warden_csrf=abc; b=2"),
        );
        assert_eq!(cookie(&headers, "warden_csrf"), Some("abc"));
        assert_eq!(cookie(&headers, "warden"), None);
    }
}
