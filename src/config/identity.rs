//! The validated `identity:` and `roles:` sections and the per-server access rules
//! (`scopes`, `write_scopes`, `tools.<tool>.scopes`), converted once from their raw form.
//! Every problem is reported with its key path (and, where the raw value was spanned, its
//! line), all of them in one pass.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{
    RawIdentity, RawMcpServer, RawPasskeys, RawRole, RawServerDefaults, RawTrustedIssuer,
};
use super::yaml::{Located, Mark, Spanned};

/// Scopes a server requires when the profile names none.
pub const DEFAULT_SCOPES: &[&str] = &["tools:read"];
/// Scopes a tool marked `destructiveHint: true` requires when the profile names none.
pub const DEFAULT_WRITE_SCOPES: &[&str] = &["tools:write"];
/// Algorithms a federated issuer may sign with (asymmetric only: a JWKS publishes public
/// keys, and an HMAC "public key" would be a shared secret).
pub const FEDERATED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `identity:`.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityConfig {
    /// `iss` of the tokens Warden signs; the authorization server's identifier.
    pub issuer: String,
    /// The only `aud` Warden accepts on its own tokens (its canonical resource URI).
    pub audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Upper bound for `warden token issue --ttl`.
    pub max_token_ttl: Duration,
    pub login_session_ttl: Duration,
    pub login_attempts_per_minute: u32,
    pub dynamic_registration: bool,
    pub client_metadata_documents: bool,
    /// Allow `http://` Client ID Metadata Documents on loopback hosts (tests, development).
    pub allow_insecure_loopback: bool,
    pub trusted_issuers: Vec<TrustedIssuer>,
    pub passkeys: PasskeyConfig,
}

/// `identity.passkeys`: who Warden is to a passkey (the WebAuthn relying party).
#[derive(Clone, Debug, PartialEq)]
pub struct PasskeyConfig {
    /// False when the profile turned passkeys off, or the public URL's host is an IP
    /// address (browsers refuse passkeys there) and the profile did not ask for them.
    pub enabled: bool,
    /// The RP ID passkeys are bound to: `server.public_url`'s host unless set. Changing it
    /// later strands every registered passkey.
    pub rp_id: String,
    /// The one origin ceremonies may come from: `server.public_url`'s scheme and authority.
    pub origin: String,
    /// `required` (the default): the authenticator must verify the user (PIN, biometric);
    /// `preferred`: presence (a touch) is enough.
    pub user_verification_required: bool,
    /// Whether a password sign-in must be confirmed with one of the user's passkeys.
    pub second_factor: SecondFactor,
}

/// `identity.passkeys.second_factor`: a password and then a passkey.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecondFactor {
    /// A password alone signs in.
    #[default]
    Off,
    /// Users with a passkey confirm a password sign-in with one; users without sign in
    /// with the password alone.
    IfRegistered,
    /// A password alone never signs in: users without a passkey cannot use their
    /// password (a sign-in link from `warden user passkey-link` adds their first).
    Required,
}

/// One external issuer whose tokens Warden accepts.
#[derive(Clone, Debug, PartialEq)]
pub struct TrustedIssuer {
    pub issuer: String,
    /// Where its keys are; `None` means discovery (`<issuer>/.well-known/openid-configuration`).
    pub jwks_uri: Option<String>,
    /// The `aud` its tokens must carry to be accepted here.
    pub audience: String,
    pub scope_claim: String,
    pub role_claim: Option<String>,
    pub subject_claim: String,
    pub tier_claim: Option<String>,
    /// Algorithm names (`RS256`, `ES256`, `EdDSA`, …).
    pub algorithms: Vec<String>,
    pub allow_insecure_loopback: bool,
    /// At most one JWKS refetch per this interval when an unknown `kid` arrives.
    pub min_refresh_interval: Duration,
    /// Keys are refetched after this long even when every `kid` is known.
    pub jwks_cache_ttl: Duration,
}

/// `roles.<name>`.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleConfig {
    pub scopes: Vec<String>,
    pub description: Option<String>,
}

/// What one server requires.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessConfig {
    /// To see the server, call its tools, read its resources and get its prompts.
    pub scopes: Vec<String>,
    /// To call a tool marked `destructiveHint: true`.
    pub write_scopes: Vec<String>,
    /// Per upstream tool name: replaces both of the above for that tool.
    pub tools: BTreeMap<String, Vec<String>>,
}

impl AccessConfig {
    /// The rules for a server the profile does not list (never reached in practice: the
    /// gateway only routes to configured servers).
    pub fn defaults(defaults: &RawServerDefaults) -> AccessConfig {
        AccessConfig {
            scopes: defaults
                .scopes
                .clone()
                .unwrap_or_else(|| owned(DEFAULT_SCOPES)),
            write_scopes: defaults
                .write_scopes
                .clone()
                .unwrap_or_else(|| owned(DEFAULT_WRITE_SCOPES)),
            tools: BTreeMap::new(),
        }
    }
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn problem(path: &str, message: String) -> Located {
    Located {
        mark: Mark::default(),
        path: path.to_owned(),
        message,
    }
}

/// Whether `url`'s host is a loopback name or address.
pub fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a URL Warden will fetch keys or metadata from: `https://`, or `http://` on a
/// loopback host when explicitly allowed.
pub fn check_fetch_url(url: &str, allow_insecure_loopback: bool) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    if url.starts_with("http://") {
        if allow_insecure_loopback && is_loopback_url(url) {
            return Ok(());
        }
        return Err(format!(
            "`{url}` must be https:// (http:// is allowed only on a loopback host with allow_insecure_loopback: true)"
        ));
    }
    Err(format!("`{url}` is not an http(s) URL"))
}

pub(super) fn check_scopes(path: &str, scopes: &[String], problems: &mut Vec<Located>) {
    for scope in scopes {
        if scope.is_empty()
            || scope
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\\')
        {
            problems.push(problem(
                path,
                format!("`{scope}` is not a valid scope (no spaces, quotes or backslashes)"),
            ));
        }
    }
}

/// Converts `identity:`; `public_url` is the default issuer and audience.
pub fn identity(raw: RawIdentity, public_url: &str, problems: &mut Vec<Located>) -> IdentityConfig {
    let issuer = raw
        .issuer
        .unwrap_or_else(|| public_url.to_owned())
        .trim_end_matches('/')
        .to_owned();
    let audience = raw
        .audience
        .unwrap_or_else(|| public_url.to_owned())
        .trim_end_matches('/')
        .to_owned();
    for (key, value) in [
        ("identity.issuer", &issuer),
        ("identity.audience", &audience),
    ] {
        if !(value.starts_with("http://") || value.starts_with("https://")) {
            problems.push(problem(
                key,
                format!("expected an http:// or https:// URL, found `{value}`"),
            ));
        }
    }
    let duration = |d: Option<super::units::Dur>, default: u64| {
        d.map_or(Duration::from_secs(default), |d| d.0)
    };
    let access_token_ttl = duration(raw.access_token_ttl, 3600);
    let refresh_token_ttl = duration(raw.refresh_token_ttl, 30 * 86400);
    let max_token_ttl = duration(raw.max_token_ttl, 90 * 86400);
    let login_session_ttl = duration(raw.login_session_ttl, 12 * 3600);
    for (key, value) in [
        ("identity.access_token_ttl", access_token_ttl),
        ("identity.refresh_token_ttl", refresh_token_ttl),
        ("identity.max_token_ttl", max_token_ttl),
        ("identity.login_session_ttl", login_session_ttl),
    ] {
        if value < Duration::from_secs(1) {
            problems.push(problem(key, "must be at least 1s".into()));
        }
    }
    if access_token_ttl > max_token_ttl {
        problems.push(problem(
            "identity.access_token_ttl",
            format!(
                "is longer than identity.max_token_ttl ({})",
                humantime::format_duration(max_token_ttl)
            ),
        ));
    }
    let login_attempts_per_minute = raw.login_attempts_per_minute.unwrap_or(10);
    if login_attempts_per_minute == 0 {
        problems.push(problem(
            "identity.login_attempts_per_minute",
            "must be at least 1".into(),
        ));
    }
    let mut trusted_issuers = Vec::new();
    for spanned in raw.trusted_issuers {
        if let Some(issuer) = trusted_issuer(&spanned, &issuer, &audience, problems) {
            if trusted_issuers
                .iter()
                .any(|t: &TrustedIssuer| t.issuer == issuer.issuer)
            {
                problems.push(spanned.error(format!("issuer `{}` is listed twice", issuer.issuer)));
            }
            trusted_issuers.push(issuer);
        }
    }
    let passkeys = passkeys(raw.passkeys, public_url, problems);
    IdentityConfig {
        issuer,
        audience,
        access_token_ttl,
        refresh_token_ttl,
        max_token_ttl,
        login_session_ttl,
        login_attempts_per_minute,
        dynamic_registration: raw.dynamic_registration.unwrap_or(true),
        client_metadata_documents: raw.client_metadata_documents.unwrap_or(true),
        allow_insecure_loopback: raw.allow_insecure_loopback.unwrap_or(false),
        trusted_issuers,
        passkeys,
    }
}

/// Converts `identity.passkeys` against `public_url` (already checked to be http(s)).
fn passkeys(raw: RawPasskeys, public_url: &str, problems: &mut Vec<Located>) -> PasskeyConfig {
    let (scheme, after_scheme) = public_url.split_once("://").unwrap_or(("http", ""));
    let scheme = scheme.to_ascii_lowercase();
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((address, port)) => (format!("[{address}]"), port.strip_prefix(':')),
            None => (authority.clone(), None),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.clone(), None),
        },
    };
    // The origin as a browser serialises it: lower case, without the scheme's default
    // port; anything else would never match a ceremony's.
    let default_port = if scheme == "https" { "443" } else { "80" };
    let origin = match port.filter(|p| !p.is_empty() && *p != default_port) {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    let rp_id = raw
        .rp_id
        .as_deref()
        .map_or_else(|| host.clone(), str::to_ascii_lowercase);
    let is_address =
        rp_id.starts_with('[') || rp_id.parse::<std::net::IpAddr>().is_ok() || rp_id.is_empty();
    // Browsers offer WebAuthn in secure contexts only: https pages, and localhost.
    let secure = scheme == "https" || host == "localhost" || host.ends_with(".localhost");
    let enabled = raw.enabled.unwrap_or(!is_address && secure);
    if enabled && is_address {
        problems.push(problem(
            "identity.passkeys.enabled",
            format!(
                "browsers refuse passkeys for an IP address (`{rp_id}`): give server.public_url a host name (`localhost` works on this machine)"
            ),
        ));
    } else if enabled && !secure {
        problems.push(problem(
            "identity.passkeys.enabled",
            format!(
                "browsers offer passkeys on https pages only (and on localhost); server.public_url is `{public_url}`"
            ),
        ));
    } else if raw.rp_id.is_some()
        && (!(host == rp_id || host.ends_with(&format!(".{rp_id}")))
            || !(rp_id.contains('.') || rp_id == "localhost"))
    {
        problems.push(problem(
            "identity.passkeys.rp_id",
            format!(
                "`{rp_id}` is neither the host of server.public_url (`{host}`) nor a domain it is under"
            ),
        ));
    }
    let user_verification_required = match raw.user_verification.as_deref() {
        None | Some("required") => true,
        Some("preferred") => false,
        Some(other) => {
            problems.push(problem(
                "identity.passkeys.user_verification",
                format!("expected `required` or `preferred`, found `{other}`"),
            ));
            true
        }
    };
    let second_factor = second_factor(&raw, enabled, user_verification_required, problems);
    PasskeyConfig {
        enabled,
        rp_id,
        origin,
        user_verification_required,
        second_factor,
    }
}

/// `identity.passkeys.second_factor`. A passkey sign-in without a password stays open
/// under it: a passkey that verifies its user (PIN, biometric) is two factors by itself,
/// which is why anything but `off` needs `user_verification: required`.
fn second_factor(
    raw: &RawPasskeys,
    enabled: bool,
    user_verification_required: bool,
    problems: &mut Vec<Located>,
) -> SecondFactor {
    const KEY: &str = "identity.passkeys.second_factor";
    let second_factor = match raw.second_factor.as_deref() {
        None | Some("off") => SecondFactor::Off,
        Some("if_registered") => SecondFactor::IfRegistered,
        Some("required") => SecondFactor::Required,
        Some(other) => {
            problems.push(problem(
                KEY,
                format!("expected `off`, `if_registered` or `required`, found `{other}`"),
            ));
            SecondFactor::Off
        }
    };
    if second_factor == SecondFactor::Off {
        return second_factor;
    }
    if !enabled {
        problems.push(problem(
            KEY,
            "needs passkeys, which are off (identity.passkeys.enabled, server.public_url)"
                .to_owned(),
        ));
    } else if !user_verification_required {
        problems.push(problem(
            KEY,
            "needs identity.passkeys.user_verification: required — a passkey sign-in without a password counts as two factors only when the authenticator verifies its user".to_owned(),
        ));
    }
    second_factor
}

fn trusted_issuer(
    spanned: &Spanned<RawTrustedIssuer>,
    own_issuer: &str,
    own_audience: &str,
    problems: &mut Vec<Located>,
) -> Option<TrustedIssuer> {
    let raw = &spanned.value;
    let before = problems.len();
    let allow = raw.allow_insecure_loopback.unwrap_or(false);
    let issuer = raw.issuer.trim_end_matches('/').to_owned();
    if let Err(message) = check_fetch_url(&issuer, allow) {
        problems.push(spanned.error(format!("issuer {message}")));
    }
    if issuer == own_issuer {
        problems.push(spanned.error(format!(
            "issuer `{issuer}` is Warden's own issuer (identity.issuer); list only external issuers"
        )));
    }
    if let Some(jwks) = &raw.jwks_uri
        && let Err(message) = check_fetch_url(jwks, allow)
    {
        problems.push(spanned.error(format!("jwks_uri {message}")));
    }
    if raw.jwks_uri.is_none() && raw.discovery == Some(false) {
        problems.push(
            spanned.error(
                "needs `jwks_uri`, or `discovery: true` to find it in the issuer's metadata",
            ),
        );
    }
    let algorithms = raw
        .algorithms
        .clone()
        .unwrap_or_else(|| owned(&["RS256", "ES256", "EdDSA"]));
    for algorithm in &algorithms {
        if !FEDERATED_ALGORITHMS.contains(&algorithm.as_str()) {
            problems.push(spanned.error(format!(
                "algorithm `{algorithm}` is not accepted; use one of {}",
                FEDERATED_ALGORITHMS.join(", ")
            )));
        }
    }
    if algorithms.is_empty() {
        problems.push(spanned.error("`algorithms` must not be empty"));
    }
    (problems.len() == before).then(|| TrustedIssuer {
        issuer,
        jwks_uri: raw.jwks_uri.clone(),
        audience: raw
            .audience
            .clone()
            .unwrap_or_else(|| own_audience.to_owned()),
        scope_claim: raw.scope_claim.clone().unwrap_or_else(|| "scope".into()),
        role_claim: raw.role_claim.clone(),
        subject_claim: raw.subject_claim.clone().unwrap_or_else(|| "sub".into()),
        tier_claim: raw.tier_claim.clone(),
        algorithms,
        allow_insecure_loopback: allow,
        min_refresh_interval: raw
            .min_refresh_interval
            .map_or(Duration::from_secs(30), |d| d.0),
        jwks_cache_ttl: raw
            .jwks_cache_ttl
            .map_or(Duration::from_secs(3600), |d| d.0),
    })
}

/// Converts `roles:`, adding the built-in `admin` (`*`) and `user` roles unless the
/// profile defines them.
pub fn roles(
    raw: BTreeMap<String, Spanned<RawRole>>,
    problems: &mut Vec<Located>,
) -> BTreeMap<String, RoleConfig> {
    let mut roles = BTreeMap::new();
    roles.insert(
        "admin".to_owned(),
        RoleConfig {
            scopes: owned(&["*"]),
            description: Some("Everything, including the admin API.".into()),
        },
    );
    roles.insert(
        "user".to_owned(),
        RoleConfig {
            scopes: owned(&["tools:read", "ai:chat", "skills:read"]),
            description: Some("Non-destructive tools, the AI proxy and the skills.".into()),
        },
    );
    for (name, spanned) in raw {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
            problems.push(spanned.error(format!("role name `{name}` must not contain spaces")));
        }
        let before = problems.len();
        check_scopes(
            &format!("roles.{name}.scopes"),
            &spanned.value.scopes,
            problems,
        );
        for p in &mut problems[before..] {
            p.mark = spanned.mark;
        }
        roles.insert(
            name,
            RoleConfig {
                scopes: spanned.value.scopes,
                description: spanned.value.description,
            },
        );
    }
    roles
}

/// The access rules of one server.
pub fn server_access(
    name: &str,
    raw: &RawMcpServer,
    defaults: &RawServerDefaults,
    problems: &mut Vec<Located>,
) -> AccessConfig {
    let base = AccessConfig::defaults(defaults);
    let access = AccessConfig {
        scopes: raw.scopes.clone().unwrap_or(base.scopes),
        write_scopes: raw.write_scopes.clone().unwrap_or(base.write_scopes),
        tools: raw
            .tools
            .iter()
            .filter_map(|(tool, t)| t.scopes.clone().map(|s| (tool.clone(), s)))
            .collect(),
    };
    check_scopes(&format!("servers.{name}.scopes"), &access.scopes, problems);
    check_scopes(
        &format!("servers.{name}.write_scopes"),
        &access.write_scopes,
        problems,
    );
    for (tool, scopes) in &access.tools {
        check_scopes(
            &format!("servers.{name}.tools.{tool}.scopes"),
            scopes,
            problems,
        );
    }
    access
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:8080/x"));
        assert!(is_loopback_url("http://localhost/x"));
        assert!(is_loopback_url("http://[::1]:9/"));
        assert!(!is_loopback_url("http://127.0.0.1.evil.com/"));
        assert!(!is_loopback_url("http://evil.com/?127.0.0.1"));
        assert!(!is_loopback_url("http://localhost@evil.com/"));
        assert!(check_fetch_url("http://127.0.0.1/", false).is_err());
        assert!(check_fetch_url("http://127.0.0.1/", true).is_ok());
        assert!(check_fetch_url("http://example.com/", true).is_err());
        assert!(check_fetch_url("https://example.com/", false).is_ok());
    }
}
