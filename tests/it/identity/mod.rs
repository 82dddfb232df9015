//! Identity end to end: the real `warden` binary with a fixture MCP server behind it,
//! users and keys made with the real CLI, OAuth flows driven over HTTP, by headless
//! Chromium and by the Python MCP SDK, and a federated issuer the test runs itself.
//!
//! The helpers here are the vocabulary of those tests: start Warden, run a CLI command,
//! call `/mcp`, register a client, walk the authorization-code flow.

mod attacks;
mod browser;
mod export;
mod federation;
mod flows;
mod passkeys;
mod python;
mod second_factor;
mod sign_out;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::http::{self, Response};
use crate::support::{Profile, TestDb, WardenProcess};

pub const PASSWORD: &str = "correct horse battery";
pub const STATELESS: &str = "2026-07-28";

/// The fixture MCP server, built beside `warden`.
pub fn fixture_bin() -> PathBuf {
    Path::new(crate::support::warden::bin()).with_file_name("warden-fixture")
}

/// A running Warden on its own database, with the fixture as server `fx`.
pub struct Env {
    pub db: TestDb,
    pub profile: Profile,
    pub warden: WardenProcess,
}

impl Env {
    pub fn start(customize: impl FnOnce(&mut Profile)) -> Env {
        let db = TestDb::new();
        let mut profile = Profile::with_database(db.url());
        profile.set(
            "servers.fx",
            json!({"command": fixture_bin().display().to_string()}),
        );
        customize(&mut profile);
        let warden = profile.start();
        Env {
            db,
            profile,
            warden,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.warden.url(path)
    }

    /// `warden ARGS --config …` with `stdin`; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        cli(&self.profile, args, stdin)
    }

    /// `warden token issue`, asserting success.
    pub fn token(&self, user: &str, scopes: &str) -> String {
        let (ok, out, err) = self.cli(
            &["token", "issue", "--user", user, "--scopes", scopes],
            None,
        );
        assert!(ok, "token issue failed: {err}");
        out.trim().to_owned()
    }

    /// `warden user add NAME --role ROLE` with the test password.
    pub fn add_user(&self, name: &str, role: &str) {
        let (ok, _, err) = self.cli(&["user", "add", name, "--role", role], Some(PASSWORD));
        assert!(ok, "user add failed: {err}");
    }

    /// The bootstrap admin token.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.profile.state_dir().join("admin.token"))
            .expect("admin.token exists after start")
            .trim()
            .to_owned()
    }

    /// One stateless-era MCP request to `/mcp`.
    pub fn mcp(&self, token: Option<&str>, method: &str, params: Value) -> Response {
        mcp_at(&self.url("/mcp"), token, method, params)
    }

    /// `tools/call` of `name` with `arguments`.
    pub fn call_tool(&self, token: &str, name: &str, arguments: Value) -> Response {
        self.mcp(
            Some(token),
            "tools/call",
            json!({"name": name, "arguments": arguments}),
        )
    }

    /// The tool names `token` sees on `/mcp`.
    pub fn tool_names(&self, token: &str) -> Vec<String> {
        let response = self.mcp(Some(token), "tools/list", json!({}));
        assert_eq!(response.status, 200, "{response:?}");
        response.json()["result"]["tools"]
            .as_array()
            .expect("tools array")
            .iter()
            .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `POST path` with a form body.
    pub fn form(&self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Response {
        let body = serde_urlencoded::to_string(form).expect("form encodes");
        let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        http::request("POST", &self.url(path), &all, Some(body.as_bytes()))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// RFC 7591 registration of a public client; returns its client_id.
    pub fn register(&self, redirect_uri: &str) -> String {
        let body =
            json!({"redirect_uris": [redirect_uri], "client_name": "identity test"}).to_string();
        let response = http::request(
            "POST",
            &self.url("/oauth/register"),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
        .expect("register");
        assert_eq!(response.status, 201, "{response:?}");
        response.json()["client_id"]
            .as_str()
            .expect("client_id")
            .to_owned()
    }
}

/// `warden ARGS --config <profile>`; returns (success, stdout, stderr).
pub fn cli(profile: &Profile, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut command: Command = profile.command(args);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("warden CLI starts");
    if let Some(mut pipe) = child.stdin.take()
        && let Some(text) = stdin
    {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().expect("warden CLI finishes");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One stateless-era MCP request (2026-07-28: no session, headers mirror the body).
pub fn mcp_at(url: &str, token: Option<&str>, method: &str, mut params: Value) -> Response {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let name = params["name"].as_str().map(str::to_owned);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", STATELESS),
        ("Mcp-Method", method),
    ];
    if let Some(name) = &name {
        headers.push(("Mcp-Name", name));
    }
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    http::request("POST", url, &headers, Some(body.as_bytes()))
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Every `Set-Cookie` name=value pair of a response, as one `Cookie` header value.
pub fn cookies(response: &Response) -> String {
    response
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The value of hidden input `name` in a page.
pub fn hidden(page: &str, name: &str) -> String {
    quoted_after(page, &format!("name={name} value=\""))
}

/// The value of attribute `data-NAME` in a page.
pub fn data_attribute(page: &str, name: &str) -> String {
    quoted_after(page, &format!("data-{name}=\""))
}

/// What follows the first `marker` in `page` up to the next `"`.
fn quoted_after(page: &str, marker: &str) -> String {
    let start = page
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in page:\n{page}"))
        + marker.len();
    page[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Query parameters of a URL (or of a `Location` header).
pub fn query(url: &str) -> std::collections::HashMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .expect("query parses")
        .into_iter()
        .collect()
}

/// An authorization request's query string.
pub fn authorize_query(
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    challenge: &str,
    state: &str,
) -> String {
    serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", scope),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ])
    .expect("query encodes")
}

/// What a walk through the login and consent pages produced.
pub struct Consented {
    /// The redirect back to the client (`Location`).
    pub location: String,
}

/// Walks authorize → login → consent (allow) over plain HTTP, as a browser would.
pub fn authorize_over_http(env: &Env, query: &str, user: &str, password: &str) -> Consented {
    let page = http::get(&env.url(&format!("/oauth/authorize?{query}")));
    assert_eq!(page.status, 200, "{page:?}");
    let csrf_cookie = cookies(&page);
    let login = env.form(
        "/oauth/login",
        &[
            ("username", user),
            ("password", password),
            ("pending", &hidden(&page.body, "pending")),
            ("csrf", &hidden(&page.body, "csrf")),
        ],
        &[("Cookie", &csrf_cookie)],
    );
    assert_eq!(login.status, 200, "{login:?}");
    let session = cookies(&login);
    let consent = env.form(
        "/oauth/consent",
        &[
            ("pending", &hidden(&login.body, "pending")),
            ("csrf", &hidden(&login.body, "csrf")),
            ("decision", "allow"),
        ],
        &[("Cookie", &session)],
    );
    assert_eq!(consent.status, 302, "{consent:?}");
    Consented {
        location: consent.header("location").expect("Location").to_owned(),
    }
}

/// Signs `user` in on the account page with the test password, as a browser would:
/// the account page it answers with, and the cookies it set (login session and CSRF).
pub fn account_sign_in(env: &Env, user: &str) -> (Response, String) {
    let signed_in = account_password(env, user, PASSWORD);
    assert_eq!(signed_in.status, 200, "{signed_in:?}");
    let cookies = cookies(&signed_in);
    (signed_in, cookies)
}

/// Posts `user`'s `password` on a fresh account page, as a browser would; the answer,
/// whatever it is.
pub fn account_password(env: &Env, user: &str, password: &str) -> Response {
    let page = http::get(&env.url("/oauth/account"));
    assert_eq!(page.status, 200, "{page:?}");
    env.form(
        "/oauth/account/login",
        &[
            ("username", user),
            ("password", password),
            ("csrf", &hidden(&page.body, "csrf")),
        ],
        &[("Cookie", &cookies(&page))],
    )
}

/// Exchanges a code at the token endpoint.
pub fn exchange(
    env: &Env,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Response {
    env.form(
        "/oauth/token",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ],
        &[],
    )
}
