//! The profile exactly as written: one struct per section, every field optional where the
//! profile may omit it, unknown keys rejected. Nothing outside `config/` sees these types;
//! `Config::from_raw` turns them into validated values once.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::Deserialize;

use super::units::{ByteSize, Dur};
use super::yaml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub defaults: RawServerDefaults,
    #[serde(default)]
    pub servers: IndexMap<String, Spanned<RawMcpServer>>,
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub sessions: RawSessions,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub rate_limits: super::policy::RawRateLimits,
    #[serde(default)]
    pub quotas: Vec<Spanned<super::policy::RawQuota>>,
    #[serde(default)]
    pub hooks: Vec<Spanned<super::policy::RawHook>>,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub roles: BTreeMap<String, Spanned<RawRole>>,
    #[serde(default)]
    pub ai: super::ai::RawAi,
    #[serde(default)]
    pub skills: RawSkills,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub state_dir: Option<String>,
    pub shutdown_grace: Option<Dur>,
    pub max_body_bytes: Option<ByteSize>,
    pub max_json_depth: Option<usize>,
    pub allowed_hosts: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub master_key_file: Option<String>,
    pub require_master_key: Option<bool>,
    pub max_connections: Option<usize>,
    pub event_buffer: Option<usize>,
    pub header_read_timeout: Option<Dur>,
    /// `Some(None)`: written, but empty (`tls:` with every line below it commented out),
    /// which is refused rather than read as "no TLS".
    #[serde(default, deserialize_with = "written")]
    pub tls: Option<Option<RawTls>>,
}

/// A key that was written, whatever its value (a blank one included); absent keys stay
/// `None` through `#[serde(default)]`.
fn written<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `server.tls`: TLS on Warden's own listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub handshake_timeout: Option<Dur>,
    pub reload_interval: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: Option<String>,
    pub migrate_on_start: Option<bool>,
    pub pool_size: Option<usize>,
    pub connect_timeout: Option<Dur>,
    #[serde(default)]
    pub embedded: RawEmbedded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbedded {
    pub bin_dir: Option<String>,
    pub port: Option<u16>,
    pub start_timeout: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub level: Option<String>,
    pub format: Option<LogFormat>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Values every server inherits unless it sets its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerDefaults {
    #[serde(default)]
    pub restart: RawRestart,
    #[serde(default)]
    pub health: RawHealth,
    pub call_timeout: Option<Dur>,
    pub max_concurrent_calls: Option<usize>,
    pub max_queued_calls: Option<usize>,
    pub max_message_bytes: Option<ByteSize>,
    pub stop_grace: Option<Dur>,
    pub startup_timeout: Option<Dur>,
    pub inherit_env: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub write_scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    pub enabled: Option<bool>,
    /// A server built into the binary (`demo`), run as a stdio child.
    pub builtin: Option<String>,
    // stdio / http child
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub secrets: Option<BTreeMap<String, String>>,
    pub inherit_env: Option<Vec<String>>,
    /// `auto` makes this an HTTP child on a leased port.
    pub port: Option<String>,
    // remote (or the URL template of an HTTP child)
    pub url: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub header_secrets: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub restart: RawRestart,
    #[serde(default)]
    pub health: RawHealth,
    pub call_timeout: Option<Dur>,
    pub max_concurrent_calls: Option<usize>,
    pub max_queued_calls: Option<usize>,
    pub max_message_bytes: Option<ByteSize>,
    pub stop_grace: Option<Dur>,
    pub startup_timeout: Option<Dur>,
    pub isolation: Option<IsolationKind>,
    pub user_secrets: Option<BTreeMap<String, String>>,
    pub idle_timeout: Option<Dur>,
    pub max_instances: Option<usize>,
    // naming on the aggregate endpoint
    pub prefix: Option<String>,
    pub pin_tools: Option<bool>,
    /// Per caller, for this server (`10/s`).
    pub rate_limit: Option<Spanned<String>>,
    #[serde(default)]
    pub tools: BTreeMap<String, RawTool>,
    // the permission check
    pub scopes: Option<Vec<String>>,
    pub write_scopes: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IsolationKind {
    Shared,
    PerUser,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    pub policy: Option<RestartPolicyName>,
    pub backoff_initial: Option<Dur>,
    pub backoff_max: Option<Dur>,
    pub backoff_reset_after: Option<Dur>,
    pub max_restarts: Option<u32>,
    pub restart_window: Option<Dur>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RestartPolicyName {
    Permanent,
    Transient,
    Temporary,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub failures_before_restart: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    pub alias: Option<String>,
    pub description: Option<String>,
    pub call_timeout: Option<Dur>,
    /// Per caller, for this tool (`1/m`).
    pub rate_limit: Option<Spanned<String>>,
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub separator: Option<String>,
    pub input_timeout: Option<Dur>,
    pub max_awaiting_input: Option<usize>,
    pub max_awaiting_input_per_principal: Option<usize>,
    pub max_resource_subscriptions: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSkills {
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    pub idle_timeout: Option<Dur>,
    pub max_per_principal: Option<usize>,
    pub max_total: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub batch_max_rows: Option<usize>,
    pub batch_max_delay: Option<Dur>,
    pub write_concurrency: Option<usize>,
    pub queue_capacity: Option<usize>,
    pub event_buffer: Option<usize>,
    pub ack: Option<AckMode>,
    pub on_backlog: Option<BacklogMode>,
    pub block_timeout: Option<Dur>,
    pub spool_max_bytes: Option<ByteSize>,
    pub max_payload_bytes: Option<ByteSize>,
    pub redact: Option<Vec<Spanned<String>>>,
    pub retention: Option<Dur>,
}

/// When a governed call may proceed relative to its audit record.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Records are queued; the call never waits on PostgreSQL.
    #[default]
    Async,
    /// A tool call's "started" record is durable (in PostgreSQL or the fsynced spool)
    /// before the tool is dispatched.
    Durable,
}

/// What happens when the queue and the spool are both full.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BacklogMode {
    /// Callers wait up to `audit.block_timeout`, then are refused.
    #[default]
    Block,
    /// Governed calls are refused at once until the backlog drains.
    FailClosed,
}

/// `identity:` — the built-in issuer, token lifetimes, login, and federation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub access_token_ttl: Option<Dur>,
    pub refresh_token_ttl: Option<Dur>,
    pub max_token_ttl: Option<Dur>,
    pub login_session_ttl: Option<Dur>,
    pub login_attempts_per_minute: Option<u32>,
    pub dynamic_registration: Option<bool>,
    pub client_metadata_documents: Option<bool>,
    pub allow_insecure_loopback: Option<bool>,
    #[serde(default)]
    pub passkeys: RawPasskeys,
    #[serde(default)]
    pub trusted_issuers: Vec<Spanned<RawTrustedIssuer>>,
}

/// `identity.passkeys`: signing in with WebAuthn passkeys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPasskeys {
    pub enabled: Option<bool>,
    pub rp_id: Option<String>,
    pub user_verification: Option<String>,
    pub second_factor: Option<String>,
}

/// One entry of `identity.trusted_issuers`: an external OAuth/OIDC issuer whose tokens
/// Warden accepts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedIssuer {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub discovery: Option<bool>,
    pub audience: Option<String>,
    pub scope_claim: Option<String>,
    pub role_claim: Option<String>,
    pub subject_claim: Option<String>,
    pub tier_claim: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub allow_insecure_loopback: Option<bool>,
    pub min_refresh_interval: Option<Dur>,
    pub jwks_cache_ttl: Option<Dur>,
}

/// `roles.<name>`: the scopes a role grants.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub scopes: Vec<String>,
    pub description: Option<String>,
}
