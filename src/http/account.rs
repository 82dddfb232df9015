//! The account page: where a user signs in (password or passkey) outside an OAuth flow
//! and manages their passkeys. The ceremonies and their checks are `auth/passkeys.rs`;
//! pages, cookies and the login session are shared with `http/oauth.rs`.
//!
//! - `GET /oauth/account`: the user's passkeys, a form to add one and one to remove
//!   each; without a login session, a sign-in form that comes back here.
//! - `GET /oauth/account/link?code=…`, `POST /oauth/account/link`: a one-time sign-in
//!   link from `warden user passkey-link`, for a user without a password to add their
//!   first passkey (the page spends nothing; its button does).
//! - `POST /oauth/account/login`, `/oauth/account/passkeys`,
//!   `/oauth/account/passkeys/remove`, `/oauth/account/logout`,
//!   `/oauth/account/sign-out-everywhere`: the forms. Each carries
//!   a CSRF token that must equal the `…csrf` cookie (and, for a ceremony, the one sealed
//!   in its challenge); changes need the login session.

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;

use super::AppState;
use super::oauth::{
    LoginForm, confirm_form, cookie, cookie_names, csrf_cookie, escape, login_refusal, page,
    passkey_status, session, session_cookie, sign_in_forms, user_verification,
};
use crate::auth::passkeys::{self, MAX_LABEL_CHARS, Purpose};
use crate::auth::secret::{self, Redacted};
use crate::auth::service::PasswordSignIn;
use crate::auth::store::IdentityRow;
use crate::auth::webauthn::ALGORITHMS;

/// How the audit trail names the account page where an OAuth client would stand.
const ACCOUNT_CLIENT: &str = "warden:account";

/// Adding a passkey needs a sign-in this recent (seconds): a login session left open in
/// a browser, or a stolen session cookie, must not be enough to plant a lasting
/// credential.
const RECENT_SIGN_IN_SECS: u64 = 600;

fn recent(signed_in_at: u64) -> bool {
    crate::auth::tokens::unix_now().saturating_sub(signed_in_at) < RECENT_SIGN_IN_SECS
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/account", get(show))
        .route("/oauth/account/login", post(login))
        .route("/oauth/account/passkeys", post(add_passkey))
        .route("/oauth/account/passkeys/remove", post(remove_passkey))
        .route("/oauth/account/logout", post(logout))
        .route(
            "/oauth/account/sign-out-everywhere",
            post(sign_out_everywhere),
        )
        .route("/oauth/account/link", get(link_page).post(link_login))
}

#[derive(Deserialize)]
struct AddForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    credential: String,
}

#[derive(Deserialize)]
struct RemoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
}

#[derive(Deserialize)]
struct LinkForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    csrf: String,
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// The form's CSRF token equals the cookie's (the double-submit check).
fn csrf_ok(app: &AppState, headers: &HeaderMap, csrf: &str) -> bool {
    let from_cookie = cookie(headers, cookie_names(app).csrf).unwrap_or_default();
    !csrf.is_empty() && secret::equal(csrf.as_bytes(), from_cookie.as_bytes())
}

fn csrf_refused() -> Response {
    sign_in_refusal(
        StatusCode::FORBIDDEN,
        "This form expired or was not sent from this browser (CSRF check failed).",
    )
}

fn sign_in_refusal(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Your Warden account",
        &format!(
            "<p class=error id=error>{}</p><p><a href=/oauth/account>Start again</a></p>",
            escape(message)
        ),
        &[],
    )
}

async fn show(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match session(&app, &headers).await {
        Some((user, signed_in_at)) => {
            let view = View {
                message: Message::None,
                status: StatusCode::OK,
                fresh: recent(signed_in_at),
                session: None,
            };
            account_page(&app, &user, view).await
        }
        None => sign_in_page(&app, Message::None, StatusCode::OK),
    }
}

/// The sign-in form of the account page (password, and passkey when they are on).
fn sign_in_page(app: &AppState, message: Message, status: StatusCode) -> Response {
    let (csrf, cookie) = csrf_cookie(app);
    page(
        status,
        "Sign in to Warden",
        &format!(
            "<p>Sign in to manage your passkeys.</p>{}{}",
            message.html(),
            account_sign_in(app, &csrf)
        ),
        &[cookie],
    )
}

/// The sign-in forms, posting to the account page's sign-in.
fn account_sign_in(app: &AppState, csrf: &str) -> String {
    let hidden = format!("<input type=hidden name=csrf value=\"{csrf}\">");
    sign_in_forms(app, "/oauth/account/login", &hidden, csrf)
}

/// A line above the list: what just happened, or what went wrong.
enum Message {
    None,
    Notice(String),
    Error(String),
}

impl Message {
    fn html(&self) -> String {
        match self {
            Message::None => String::new(),
            Message::Notice(text) => format!("<p id=notice>{}</p>", escape(text)),
            Message::Error(text) => format!("<p class=error id=error>{}</p>", escape(text)),
        }
    }
}

/// How the account page is shown.
struct View {
    message: Message,
    status: StatusCode,
    /// Signed in recently enough to add a passkey.
    fresh: bool,
    /// A new login session's cookie to set.
    session: Option<String>,
}

async fn account_page(app: &AppState, user: &IdentityRow, view: View) -> Response {
    let View {
        message,
        status,
        fresh,
        session,
    } = view;
    let (csrf, cookie) = csrf_cookie(app);
    let message = message.html();
    let hidden = format!("<input type=hidden name=csrf value=\"{csrf}\">");
    let (list, ids) = match app.identity.passkeys_of(user).await {
        Ok(keys) if keys.is_empty() => {
            ("<p id=no-passkeys>No passkeys yet.</p>".to_owned(), vec![])
        }
        Ok(keys) => {
            let items: String = keys
                .iter()
                .map(|key| {
                    let used = key.last_used_at.map_or_else(
                        || "never used".to_owned(),
                        |at| format!("last used {}", humantime::format_rfc3339_seconds(at)),
                    );
                    format!(
                        "<li class=passkey data-id=\"{id}\"><b>{}</b> <small>added {}, {used}{}</small>\
                         <form method=post action=/oauth/account/passkeys/remove>{hidden}\
                         <input type=hidden name=id value=\"{id}\"><button type=submit class=remove>Remove</button></form></li>",
                        escape(&key.label),
                        humantime::format_rfc3339_seconds(key.created_at),
                        if key.backed_up { ", synced" } else { "" },
                        id = escape(&key.id),
                    )
                })
                .collect();
            let ids = keys.into_iter().map(|key| key.id).collect();
            (format!("<ul id=passkeys>{items}</ul>"), ids)
        }
        Err(error) => {
            error.log_detail();
            let message = format!(
                "<p class=error>Your passkeys cannot be listed right now: {}</p>",
                escape(&error.for_user())
            );
            (message, vec![])
        }
    };
    let add = if fresh {
        add_form(app, user, &csrf, &hidden, &ids)
    } else {
        format!(
            "<p id=reauth>To add a passkey, sign in again (it needs a sign-in within the last {} minutes).</p>{}",
            RECENT_SIGN_IN_SECS / 60,
            account_sign_in(app, &csrf)
        )
    };
    let mut cookies = vec![cookie];
    cookies.extend(session);
    page(
        status,
        "Your Warden account",
        &format!(
            "<p>Signed in as <b id=user>{}</b>.</p>{message}<h2>Passkeys</h2>{list}{add}\
             <form method=post action=/oauth/account/logout>{hidden}<button type=submit id=logout>Sign out</button></form>\
             <h2>Every device</h2><p>Signing out everywhere ends every sign-in of yours and makes \
             every token issued to you so far stop working, in every application.</p>\
             <form method=post action=/oauth/account/sign-out-everywhere>{hidden}\
             <button type=submit id=sign-out-everywhere>Sign out everywhere</button></form>",
            escape(&user.name)
        ),
        &cookies,
    )
}

/// The "Add a passkey" form, or why there is none.
fn add_form(
    app: &AppState,
    user: &IdentityRow,
    csrf: &str,
    hidden: &str,
    ids: &[String],
) -> String {
    let Some(challenge) = app
        .identity
        .passkey_challenge(Purpose::Register, Some(user.id), csrf)
    else {
        return "<p id=passkeys-off>Passkeys are turned off on this Warden \
                (<code>identity.passkeys</code>; they need a host name in \
                <code>server.public_url</code>).</p>"
            .to_owned();
    };
    let config = app.identity.passkeys();
    let algorithms: Vec<String> = ALGORITHMS.iter().map(i64::to_string).collect();
    format!(
        "<form method=post action=/oauth/account/passkeys id=add-form data-passkey=create \
         data-challenge=\"{}\" data-rp-id=\"{}\" data-rp-name=Warden data-uv={} \
         data-user-id=\"{}\" data-user-name=\"{}\" data-algs=\"{}\" data-exclude=\"{}\">{hidden}\
         <input type=hidden name=credential>\
         <label for=label>A name for the new passkey</label>\
         <input type=text id=label name=label maxlength={MAX_LABEL_CHARS} required placeholder=\"e.g. work laptop\">\
         <button type=button id=add-passkey data-passkey-start>Add a passkey</button>\
         <p class=error id=passkey-error hidden></p></form><script src=/oauth/passkeys.js></script>",
        challenge,
        escape(&config.rp_id),
        user_verification(&config),
        passkeys::user_handle(user),
        escape(&user.name),
        algorithms.join(","),
        escape(&ids.join(",")),
    )
}

async fn login(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !csrf_ok(&app, &headers, &form.csrf) {
        return csrf_refused();
    }
    let outcome = if form.credential.is_empty() {
        // The next form's CSRF token: a passkey's confirmation is sealed for it.
        let (csrf, csrf_cookie) = csrf_cookie(&app);
        match app
            .identity
            .login(
                form.username.trim(),
                Redacted::new(form.password),
                ACCOUNT_CLIENT,
                &csrf,
            )
            .await
        {
            Ok(PasswordSignIn::Done(user)) => Ok(user),
            Ok(PasswordSignIn::Confirm {
                challenge,
                passkeys,
            }) => {
                let hidden = format!("<input type=hidden name=csrf value=\"{csrf}\">");
                return page(
                    StatusCode::OK,
                    "Confirm with your passkey",
                    &confirm_form(&app, "/oauth/account/login", &hidden, &challenge, &passkeys),
                    &[csrf_cookie],
                );
            }
            Err(error) => {
                let (status, message, wait) = login_refusal(&error);
                Err((status, message.to_owned(), wait))
            }
        }
    } else {
        app.identity
            .passkey_login(&form.csrf, &form.credential, ACCOUNT_CLIENT)
            .await
            .map_err(|error| (passkey_status(&error), error.for_user(), None))
    };
    match outcome {
        Ok(user) => {
            let view = View {
                message: Message::None,
                status: StatusCode::OK,
                fresh: true,
                session: Some(session_cookie(&app, &user)),
            };
            account_page(&app, &user, view).await
        }
        Err((status, message, wait)) => {
            let mut response = sign_in_page(&app, Message::Error(message), status);
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

/// The user a form is from: its CSRF token checked, then the login session read (and
/// when they signed in); otherwise the page to answer with.
async fn form_user(
    app: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(IdentityRow, u64), Response> {
    if !csrf_ok(app, headers, csrf) {
        return Err(csrf_refused());
    }
    session(app, headers).await.ok_or_else(|| {
        sign_in_page(
            app,
            Message::Error("Your session ended; sign in again.".into()),
            StatusCode::UNAUTHORIZED,
        )
    })
}

async fn add_passkey(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<AddForm>,
) -> Response {
    let (user, signed_in_at) = match form_user(&app, &headers, &form.csrf).await {
        Ok(signed_in) => signed_in,
        Err(refusal) => return refusal,
    };
    if !recent(signed_in_at) {
        let view = View {
            message: Message::Error("Sign in again to add a passkey.".into()),
            status: StatusCode::UNAUTHORIZED,
            fresh: false,
            session: None,
        };
        return account_page(&app, &user, view).await;
    }
    let (message, status) = match app
        .identity
        .register_passkey(&user, &form.csrf, &form.label, &form.credential)
        .await
    {
        Ok(added) => (
            Message::Notice(format!("Passkey “{}” added.", added.label)),
            StatusCode::OK,
        ),
        Err(error) => (Message::Error(error.for_user()), passkey_status(&error)),
    };
    let view = View {
        message,
        status,
        fresh: true,
        session: None,
    };
    account_page(&app, &user, view).await
}

async fn remove_passkey(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<RemoveForm>,
) -> Response {
    let (user, signed_in_at) = match form_user(&app, &headers, &form.csrf).await {
        Ok(signed_in) => signed_in,
        Err(refusal) => return refusal,
    };
    let (message, status) = match app.identity.remove_passkey(&user, &form.id).await {
        Ok(true) => (Message::Notice("Passkey removed.".into()), StatusCode::OK),
        Ok(false) => (
            Message::Error("You have no passkey by that id.".into()),
            StatusCode::NOT_FOUND,
        ),
        Err(error) => (Message::Error(error.for_user()), passkey_status(&error)),
    };
    let view = View {
        message,
        status,
        fresh: recent(signed_in_at),
        session: None,
    };
    account_page(&app, &user, view).await
}

/// A one-time sign-in link's landing page. Opening it spends nothing (link previews and
/// mail scanners open links too): the button does.
async fn link_page(State(app): State<AppState>, Query(form): Query<LinkForm>) -> Response {
    let (csrf, cookie) = csrf_cookie(&app);
    page(
        StatusCode::OK,
        "Set up a passkey",
        &format!(
            "<p>This link signs you in once, so that you can add a passkey.</p>\
             <form method=post action=/oauth/account/link>\
             <input type=hidden name=code value=\"{}\"><input type=hidden name=csrf value=\"{csrf}\">\
             <button type=submit id=continue>Continue</button></form>",
            escape(&form.code)
        ),
        &[cookie],
    )
}

async fn link_login(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LinkForm>,
) -> Response {
    if !csrf_ok(&app, &headers, &form.csrf) {
        return csrf_refused();
    }
    match app.identity.link_login(&form.code).await {
        Ok(user) => {
            let view = View {
                message: Message::Notice("Signed in with your link: add a passkey below.".into()),
                status: StatusCode::OK,
                fresh: true,
                session: Some(session_cookie(&app, &user)),
            };
            account_page(&app, &user, view).await
        }
        Err(error) => sign_in_refusal(passkey_status(&error), &error.for_user()),
    }
}

async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if !csrf_ok(&app, &headers, &form.csrf) {
        return csrf_refused();
    }
    ended_session(&app, sign_in_page(&app, Message::None, StatusCode::OK))
}

/// "Sign out everywhere": every login session (this one too), code, refresh token and
/// access token of the user so far stops working (`Identity::sign_out_everywhere`).
async fn sign_out_everywhere(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    let (user, signed_in_at) = match form_user(&app, &headers, &form.csrf).await {
        Ok(signed_in) => signed_in,
        Err(refusal) => return refusal,
    };
    match app
        .identity
        .sign_out_everywhere(&user.name, "account")
        .await
    {
        Ok(()) => {
            let notice = Message::Notice(
                "You are signed out everywhere: every sign-in and token of yours has ended.".into(),
            );
            ended_session(&app, sign_in_page(&app, notice, StatusCode::OK))
        }
        Err(error) => {
            tracing::warn!(%error, user = %user.name, "a sign-out everywhere failed");
            let view = View {
                message: Message::Error(
                    "Warden could not sign you out everywhere just now; try again.".into(),
                ),
                status: StatusCode::SERVICE_UNAVAILABLE,
                fresh: recent(signed_in_at),
                session: None,
            };
            account_page(&app, &user, view).await
        }
    }
}

/// `response` with the login session cookie cleared.
fn ended_session(app: &AppState, mut response: Response) -> Response {
    let names = cookie_names(app);
    let cleared = format!("{}={}; Max-Age=0", names.session, names.attributes);
    if let Ok(value) = HeaderValue::from_str(&cleared) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}
