//! The profile: one YAML file read once, expanded, validated, and turned into [`Config`].
//!
//! Parse first, validate once: `raw` mirrors the file, [`Config::from_raw`] converts it
//! and collects every semantic problem it finds (not just the first), each with the
//! file, line, column and key path. Code outside this module only sees [`Config`].
//!
//! Relative paths in the profile (state directory, key files, `cwd`) are resolved against
//! the working directory Warden was started in, as a shell user would expect.

pub mod ai;
pub mod identity;
pub mod policy;
mod raw;
pub mod units;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use warden_actors::spec::{
    HeaderSpec, HeaderValue, HealthSpec, Isolation, ProcessSpec, RestartPolicy, RestartSpec,
    ServerSpec, ToolSpec, Transport,
};

pub use identity::{
    AccessConfig, IdentityConfig, PasskeyConfig, RoleConfig, SecondFactor, TrustedIssuer,
};
pub use raw::{AckMode, BacklogMode, LogFormat};
use raw::{RawMcpServer, RawProfile, RawServerDefaults, RestartPolicyName};
use yaml::{Located, Mark, Node, NodeKind, Spanned};

/// Everything wrong with one profile, each problem with its place.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Located>,
}

impl ConfigError {
    fn one(file: &str, problem: Located) -> Self {
        ConfigError {
            file: file.to_owned(),
            problems: vec![problem],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if problem.mark.line == 0 && problem.path.is_empty() {
                write!(f, "{}: {}", self.file, problem.message)?;
            } else if problem.mark.line == 0 {
                write!(f, "{}: {}: {}", self.file, problem.path, problem.message)?;
            } else {
                write!(f, "{}:{problem}", self.file)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The prefix of a skill's prompt name on `/mcp` (`skill__pdf-forms` with the default
/// separator); no server may use it as its tool prefix.
pub const SKILL_PROMPT_PREFIX: &str = "skill";

/// Why server `name` with tool prefix `prefix` would clash with Warden's skills: their
/// prompts on `/mcp` are `skill<separator><name>`, and audit rows name a skill
/// `skill/<name>` as they name a server's prompt `<server>/<prompt>`. So the name `skill`
/// is reserved, and any prefix whose names could begin like a skill's (or whose
/// beginning a skill's could share).
fn takes_skill_prompts(name: &str, prefix: &str, separator: &str) -> Option<String> {
    let skills = format!("{SKILL_PROMPT_PREFIX}{separator}");
    let servers = format!("{prefix}{separator}");
    if name == SKILL_PROMPT_PREFIX {
        Some(format!(
            "the server name `{SKILL_PROMPT_PREFIX}` is reserved for Warden's skills (docs/skills.md)"
        ))
    } else if servers.starts_with(&skills) || skills.starts_with(&servers) {
        Some(format!(
            "tool prefix `{prefix}` would clash with Warden's skills, whose prompts on /mcp are named `{skills}<name>`; give the server another `prefix`"
        ))
    } else {
        None
    }
}

/// Tool names two servers could both expose, as (server, problem): a namespace
/// (`{prefix}{separator}`) holding another's, or an alias inside another server's
/// namespace. The gateway keeps the first of two tools sharing a name, so one server
/// could take another's calls, and their arguments, by listing a tool named to collide.
fn namespace_overlaps(
    naming: &BTreeMap<String, ServerNaming>,
    separator: &str,
) -> Vec<(String, String)> {
    let namespace = |names: &ServerNaming| format!("{}{separator}", names.prefix);
    let mut problems = Vec::new();
    for (server, names) in naming {
        let own = namespace(names);
        for (other, other_names) in naming {
            let theirs = namespace(other_names);
            // Equal prefixes are refused where they are met.
            if other != server && own != theirs && own.starts_with(&theirs) {
                problems.push((
                    server.clone(),
                    format!(
                        "tool names `{own}…` fall inside server `{other}`'s `{theirs}…`: a tool \
                         `{other}` lists could be exposed under the name of one of this \
                         server's; give one of them another `prefix` (or another \
                         gateway.separator)"
                    ),
                ));
            }
            for (tool, naming) in &names.tools {
                let Some(alias) = &naming.alias else { continue };
                if other != server && alias.starts_with(&theirs) {
                    problems.push((
                        server.clone(),
                        format!(
                            "alias `{alias}` of tool `{tool}` lies inside server `{other}`'s \
                             tool names (`{theirs}…`): a tool `{other}` lists could take it; \
                             choose an alias outside every server's prefix"
                        ),
                    ));
                }
            }
        }
    }
    problems
}

/// The validated profile.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from (for reloads and messages).
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub logging: LoggingConfig,
    /// Upstream MCP servers in profile order (the order they start in).
    pub servers: Vec<ServerSpec>,
    /// Naming and presentation of each server's tools on the aggregate endpoint.
    pub naming: BTreeMap<String, ServerNaming>,
    pub gateway: GatewayConfig,
    pub sessions: SessionsConfig,
    pub audit: AuditConfig,
    /// Rate limits, quotas and hooks (`rate_limits`, `quotas`, `hooks`).
    pub policy: policy::PolicyConfig,
    /// Sections contributed by extensions (`extensions.<name>`), as parsed trees.
    pub extensions: BTreeMap<String, ExtensionSection>,
    /// The built-in issuer, token lifetimes, federation (`identity:`).
    pub identity: IdentityConfig,
    /// Role name → the scopes it grants (`roles:` plus the built-in `admin` and `user`).
    pub roles: BTreeMap<String, RoleConfig>,
    /// Server name → the scopes its tools, resources and prompts require.
    pub access: BTreeMap<String, AccessConfig>,
    /// The rules for a server not in `access` (from `defaults`).
    pub default_access: AccessConfig,
    /// The AI gateway: providers, model routes, prices, budgets (`ai:`).
    pub ai: crate::ai::AiConfig,
    /// Skill distribution (`skills:`).
    pub skills: SkillsConfig,
    /// Tells this profile from every other one parsed by this process: what is built
    /// from a profile (the gateway's route table) records which one it was built from.
    pub generation: u64,
}

/// The next [`Config::generation`].
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The canonical URL clients use to reach this Warden (OAuth audience, metadata).
    pub public_url: String,
    pub state_dir: PathBuf,
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub master_key_file: Option<PathBuf>,
    pub require_master_key: bool,
    pub max_connections: usize,
    /// Lifecycle events the gateway and each `/events` stream may fall behind by before
    /// they are told how many they lost.
    pub event_buffer: usize,
    /// A client must send a request's headers within this long (from the connection's
    /// start, or the end of its previous response).
    pub header_read_timeout: Duration,
    /// `server.tls`: serve https on `listen` (else plain http).
    pub tls: Option<TlsConfig>,
}

/// `server.tls`.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    /// PEM: the certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// A connection that has not finished its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// How often the files are checked for a new certificate.
    pub reload_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// `None`: run the embedded cluster.
    pub url: Option<String>,
    pub migrate_on_start: bool,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub embedded: EmbeddedConfig,
}

#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    pub bin_dir: Option<PathBuf>,
    /// The port number in the name of the cluster's Unix socket (default 5432). The
    /// embedded cluster never listens on TCP.
    pub port: Option<u16>,
    pub start_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct LoggingConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerNaming {
    /// Prefix before the separator on `/mcp` (default: the server's name).
    pub prefix: String,
    pub pin_tools: bool,
    /// Upstream tool name → alias / description override.
    pub tools: BTreeMap<String, ToolNaming>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolNaming {
    pub alias: Option<String>,
    pub description: Option<String>,
}

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Between the server prefix and the tool name on `/mcp` (`github__create_issue`).
    pub separator: String,
    /// How long a call waits in Warden for a stateless client's answer to an upstream's
    /// request (sampling, elicitation, roots) before it is cancelled.
    pub input_timeout: Duration,
    /// Calls waiting for such an answer at once, across all clients.
    pub max_awaiting_input: usize,
    /// Calls of one principal waiting for such an answer at once.
    pub max_awaiting_input_per_principal: usize,
    /// Resources one session or listen stream may subscribe to.
    pub max_resource_subscriptions: usize,
}

/// Skill distribution (`skills:`); see docs/skills.md.
#[derive(Clone, Debug)]
pub struct SkillsConfig {
    /// What reading a skill needs when its file names no `metadata.warden-scopes`.
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct SessionsConfig {
    pub idle_timeout: Duration,
    pub max_per_principal: usize,
    pub max_total: usize,
}

/// The audit trail (`audit:`); see docs/audit.md.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Rows per COPY batch at most.
    pub batch_max_rows: usize,
    /// How long the first record of a batch waits for company.
    pub batch_max_delay: Duration,
    /// Batches written at the same time at most, each on its own pooled connection.
    pub write_concurrency: usize,
    /// Records the in-memory queue holds.
    pub queue_capacity: usize,
    /// Lifecycle events the trail's recorder may fall behind by before it records a loss.
    pub event_buffer: usize,
    pub ack: AckMode,
    pub on_backlog: BacklogMode,
    /// With `on_backlog: block`, how long a caller waits for room.
    pub block_timeout: Duration,
    pub spool_max_bytes: u64,
    pub max_payload_bytes: usize,
    /// The profile's own redaction patterns (compiled once, here).
    pub redact: Vec<regex::Regex>,
    /// Rows older than this are deleted; None keeps them forever.
    pub retention: Option<Duration>,
}

impl AuditConfig {
    /// The queue's behaviour when full.
    pub fn backlog(&self) -> warden_actors::audit::Backlog {
        match self.on_backlog {
            BacklogMode::Block => warden_actors::audit::Backlog::Block(self.block_timeout),
            BacklogMode::FailClosed => warden_actors::audit::Backlog::FailClosed,
        }
    }
}

/// An extension's own section, handed to it unparsed with its place in the file.
#[derive(Clone, Debug)]
pub struct ExtensionSection {
    pub name: String,
    pub node: Node,
    pub file: String,
}

impl ExtensionSection {
    /// Deserialises the section into the extension's own type, with located errors.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let mut path = yaml::Path::default();
        path.push(yaml::Segment::Key("extensions".into()));
        path.push(yaml::Segment::Key(self.name.clone()));
        yaml::from_node_at(&self.node, path)
            .map_err(|problem| ConfigError::one(&self.file, problem))
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `servers.<name>.max_message_bytes` unless set (the range is `units::message_bound`).
const DEFAULT_MAX_MESSAGE_BYTES: u64 =
    warden_actors::upstream::http::DEFAULT_MAX_MESSAGE_BYTES as u64;
/// `server.event_buffer` and `audit.event_buffer`: what a subscriber of the lifecycle
/// event bus may hold (each buffered event is a few hundred bytes).
const EVENT_BUFFERS: std::ops::RangeInclusive<usize> = 16..=1_000_000;
pub const DEFAULT_INHERIT_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

impl Config {
    /// Reads, expands and validates the profile at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(
                &file,
                Located {
                    mark: Mark::default(),
                    path: String::new(),
                    message: format!("cannot read the profile: {e}"),
                },
            )
        })?;
        let mut config = Config::parse(&text, &file, &|name| std::env::var(name).ok())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses a profile from text; `env` answers `${VAR}` lookups.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut root = yaml::parse(text).map_err(|p| ConfigError::one(file, p))?;
        let mut problems = Vec::new();
        yaml::expand_env(&mut root, env, &mut yaml::Path::default(), &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError {
                file: file.to_owned(),
                problems,
            });
        }
        let extensions = take_extensions(&mut root, file)?;
        let raw: RawProfile = yaml::from_node(&root).map_err(|p| ConfigError::one(file, p))?;
        let mut config = Config::from_raw(raw, env).map_err(|mut problems| {
            for problem in &mut problems {
                if problem.mark.line == 0 {
                    problem.mark = yaml::mark_at(&root, &problem.path).unwrap_or_default();
                }
            }
            ConfigError {
                file: file.to_owned(),
                problems,
            }
        })?;
        config.extensions = extensions;
        Ok(config)
    }

    fn from_raw(
        raw: RawProfile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<Located>> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(Located {
                mark: Mark::default(),
                path: path.to_owned(),
                message,
            })
        };

        let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().unwrap_or_else(|_| {
            problem(
                "server.listen",
                format!("expected an address such as `127.0.0.1:8080`, found `{listen_text}`"),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        if matches!(raw.server.tls, Some(None)) {
            problem(
                "server.tls",
                "is empty: give cert_file and key_file, or remove the key to serve plain http"
                    .into(),
            );
        }
        let tls = raw
            .server
            .tls
            .as_ref()
            .and_then(Option::as_ref)
            .map(|raw_tls| {
                let mut file = |key: &str, value: Option<String>| match value {
                    Some(path) if !path.trim().is_empty() => PathBuf::from(path),
                    _ => {
                        problem(
                            &format!("server.tls.{key}"),
                            "required when server.tls is set (the path of a PEM file)".into(),
                        );
                        PathBuf::new()
                    }
                };
                TlsConfig {
                    cert_file: file("cert_file", raw_tls.cert_file.clone()),
                    key_file: file("key_file", raw_tls.key_file.clone()),
                    handshake_timeout: raw_tls
                        .handshake_timeout
                        .map_or(Duration::from_secs(10), |d| d.0),
                    reload_interval: raw_tls
                        .reload_interval
                        .map_or(Duration::from_secs(60), |d| d.0),
                }
            });
        if let Some(tls) = &tls {
            for (key, value) in [
                ("server.tls.handshake_timeout", tls.handshake_timeout),
                ("server.tls.reload_interval", tls.reload_interval),
            ] {
                if value < Duration::from_secs(1) {
                    problem(key, "must be at least 1s".into());
                }
            }
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = raw
            .server
            .public_url
            .unwrap_or_else(|| format!("{scheme}://{listen}"));
        let public_url = public_url.trim_end_matches('/').to_owned();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            problem(
                "server.public_url",
                format!("expected an http:// or https:// URL, found `{public_url}`"),
            );
        } else if public_url
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
            .is_some_and(|authority| authority.contains('@'))
        {
            problem(
                "server.public_url",
                "must not carry a user name or password".into(),
            );
        } else if tls.is_some() && public_url.starts_with("http://") {
            problem(
                "server.public_url",
                format!(
                    "Warden serves https (server.tls), so clients reach it at an https:// URL; found `{public_url}`"
                ),
            );
        }
        let max_body_bytes = raw.server.max_body_bytes.map_or(4 << 20, |s| s.0);
        if max_body_bytes < 1024 {
            problem(
                "server.max_body_bytes",
                format!("must be at least 1KiB, found {max_body_bytes} bytes"),
            );
        }
        let default_hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
        ];
        let server = ServerConfig {
            listen,
            allowed_hosts: raw.server.allowed_hosts.unwrap_or_else(|| {
                let mut hosts = default_hosts;
                if let Some(host) = host_of(&public_url)
                    && !hosts.contains(&host)
                {
                    hosts.push(host);
                }
                hosts
            }),
            allowed_origins: raw.server.allowed_origins.unwrap_or_default(),
            public_url,
            state_dir: PathBuf::from(raw.server.state_dir.as_deref().unwrap_or(".warden")),
            shutdown_grace: raw
                .server
                .shutdown_grace
                .map_or(Duration::from_secs(10), |d| d.0),
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            max_json_depth: raw.server.max_json_depth.unwrap_or(64),
            master_key_file: raw.server.master_key_file.map(PathBuf::from),
            require_master_key: raw.server.require_master_key.unwrap_or(false),
            max_connections: raw.server.max_connections.unwrap_or(10_000),
            event_buffer: raw.server.event_buffer.unwrap_or(1024),
            header_read_timeout: raw
                .server
                .header_read_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            tls,
        };
        if server.header_read_timeout < Duration::from_secs(1) {
            problem("server.header_read_timeout", "must be at least 1s".into());
        }
        if !EVENT_BUFFERS.contains(&server.event_buffer) {
            problem(
                "server.event_buffer",
                format!(
                    "must be between 16 and 1000000, found {}",
                    server.event_buffer
                ),
            );
        }
        if server.max_json_depth == 0 || server.max_json_depth > 1024 {
            problem(
                "server.max_json_depth",
                format!(
                    "must be between 1 and 1024, found {}",
                    server.max_json_depth
                ),
            );
        }

        let database = DatabaseConfig {
            url: raw
                .database
                .url
                .filter(|u| !u.is_empty())
                .or_else(|| env("DATABASE_URL").filter(|u| !u.is_empty())),
            migrate_on_start: raw.database.migrate_on_start.unwrap_or(true),
            pool_size: raw.database.pool_size.unwrap_or(16),
            connect_timeout: raw
                .database
                .connect_timeout
                .map_or(Duration::from_secs(5), |d| d.0),
            embedded: EmbeddedConfig {
                bin_dir: raw.database.embedded.bin_dir.map(PathBuf::from),
                port: raw.database.embedded.port,
                start_timeout: raw
                    .database
                    .embedded
                    .start_timeout
                    .map_or(Duration::from_secs(30), |d| d.0),
            },
        };
        if database.pool_size == 0 {
            problem("database.pool_size", "must be at least 1".into());
        }

        let logging = LoggingConfig {
            level: raw.logging.level.unwrap_or_else(|| "info".into()),
            format: raw.logging.format.unwrap_or_default(),
        };

        let gateway = GatewayConfig {
            separator: raw.gateway.separator.unwrap_or_else(|| "__".into()),
            input_timeout: raw
                .gateway
                .input_timeout
                .map_or(Duration::from_secs(5 * 60), |d| d.0),
            max_awaiting_input: raw.gateway.max_awaiting_input.unwrap_or(1_000),
            max_awaiting_input_per_principal: raw
                .gateway
                .max_awaiting_input_per_principal
                .unwrap_or(16),
            max_resource_subscriptions: raw.gateway.max_resource_subscriptions.unwrap_or(256),
        };
        if gateway.separator.is_empty() {
            problem("gateway.separator", "must not be empty".into());
        }
        if gateway.input_timeout.is_zero() {
            problem("gateway.input_timeout", "must be longer than 0s".into());
        }
        let sessions = SessionsConfig {
            idle_timeout: raw
                .sessions
                .idle_timeout
                .map_or(Duration::from_secs(30 * 60), |d| d.0),
            max_per_principal: raw.sessions.max_per_principal.unwrap_or(100),
            max_total: raw.sessions.max_total.unwrap_or(10_000),
        };

        let audit = audit_config(raw.audit, &mut problems);
        if audit.write_concurrency >= database.pool_size && database.pool_size > 0 {
            // The writer's connections come from the shared pool; the other surfaces
            // (budgets, quotas, the admin API) need at least one left.
            problems.push(Located {
                mark: Mark::default(),
                path: "audit.write_concurrency".into(),
                message: format!(
                    "must be less than database.pool_size ({}), found {}",
                    database.pool_size, audit.write_concurrency
                ),
            });
        }
        let mut server_rates = Vec::new();
        let mut tool_rates = Vec::new();
        for (name, spanned) in &raw.servers {
            if let Some(rate) = &spanned.value.rate_limit {
                server_rates.push((name.clone(), rate.clone()));
            }
            for (tool, settings) in &spanned.value.tools {
                if let Some(rate) = &settings.rate_limit {
                    tool_rates.push(((name.clone(), tool.clone()), rate.clone()));
                }
            }
        }
        let policy = policy::build(
            &raw.rate_limits,
            server_rates,
            tool_rates,
            &raw.quotas,
            &raw.hooks,
        )
        .unwrap_or_else(|mut errors| {
            problems.append(&mut errors);
            policy::PolicyConfig::default()
        });

        let identity = identity::identity(raw.identity, &server.public_url, &mut problems);
        let roles = identity::roles(raw.roles, &mut problems);
        let ai = ai::build(raw.ai, &mut problems);
        let skills = SkillsConfig {
            scopes: raw
                .skills
                .scopes
                .unwrap_or_else(|| vec![crate::policy::SKILLS_SCOPE.to_owned()]),
        };
        identity::check_scopes("skills.scopes", &skills.scopes, &mut problems);
        let default_access = AccessConfig::defaults(&raw.defaults);
        let mut access = BTreeMap::new();

        let mut servers = Vec::new();
        let mut naming = BTreeMap::new();
        let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
        let mut located: BTreeMap<String, Located> = BTreeMap::new();
        for (name, spanned) in raw.servers {
            let enabled = spanned.value.enabled.unwrap_or(true);
            access.insert(
                name.clone(),
                identity::server_access(&name, &spanned.value, &raw.defaults, &mut problems),
            );
            match server_spec(&name, &spanned, &raw.defaults) {
                Ok(_) if !enabled => {}
                Ok((spec, names)) => {
                    if let Some(problem) =
                        takes_skill_prompts(&name, &names.prefix, &gateway.separator)
                    {
                        problems.push(spanned.error(problem));
                    }
                    if let Some(other) = prefixes.insert(names.prefix.clone(), name.clone()) {
                        problems.push(spanned.error(format!(
                            "tool prefix `{}` is already used by server `{other}`",
                            names.prefix
                        )));
                    }
                    located.insert(name.clone(), spanned.error(String::new()));
                    naming.insert(name.clone(), names);
                    servers.push(spec);
                }
                Err(mut errors) => problems.append(&mut errors),
            }
        }
        for (server, message) in namespace_overlaps(&naming, &gateway.separator) {
            if let Some(at) = located.get(&server) {
                problems.push(Located {
                    message,
                    ..at.clone()
                });
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            source: None,
            server,
            database,
            logging,
            servers,
            naming,
            gateway,
            sessions,
            audit,
            policy,
            extensions: BTreeMap::new(),
            identity,
            roles,
            access,
            default_access,
            ai,
            skills,
        })
    }

    /// Where the embedded cluster keeps its data.
    pub fn embedded_data_dir(&self) -> PathBuf {
        self.server.state_dir.join("postgres")
    }
}

fn audit_config(raw: raw::RawAudit, problems: &mut Vec<Located>) -> AuditConfig {
    let mut problem = |path: &str, message: String| {
        problems.push(Located {
            mark: Mark::default(),
            path: path.to_owned(),
            message,
        })
    };
    let batch_max_rows = raw.batch_max_rows.unwrap_or(1000);
    if !(1..=100_000).contains(&batch_max_rows) {
        problem(
            "audit.batch_max_rows",
            format!("must be between 1 and 100000, found {batch_max_rows}"),
        );
    }
    let write_concurrency = raw.write_concurrency.unwrap_or(2);
    if !(1..=16).contains(&write_concurrency) {
        problem(
            "audit.write_concurrency",
            format!("must be between 1 and 16, found {write_concurrency}"),
        );
    }
    let queue_capacity = raw.queue_capacity.unwrap_or(65_536);
    if queue_capacity == 0 {
        problem("audit.queue_capacity", "must be at least 1".into());
    }
    let event_buffer = raw.event_buffer.unwrap_or(8192);
    if !EVENT_BUFFERS.contains(&event_buffer) {
        problem(
            "audit.event_buffer",
            format!("must be between 16 and 1000000, found {event_buffer}"),
        );
    }
    let spool_max_bytes = raw.spool_max_bytes.map_or(1 << 30, |s| s.0);
    if spool_max_bytes < 1024 {
        problem(
            "audit.spool_max_bytes",
            format!("must be at least 1KiB, found {spool_max_bytes} bytes"),
        );
    }
    let max_payload_bytes = raw.max_payload_bytes.map_or(64 << 10, |s| s.0);
    if max_payload_bytes < 256 {
        problem(
            "audit.max_payload_bytes",
            format!("must be at least 256 bytes, found {max_payload_bytes}"),
        );
    }
    let retention = raw.retention.map(|d| d.0);
    if retention.is_some_and(|r| r < Duration::from_secs(3600)) {
        problem(
            "audit.retention",
            "must be at least 1h (or left unset to keep every row)".into(),
        );
    }
    let mut redact = Vec::new();
    for pattern in raw.redact.unwrap_or_default() {
        match regex::Regex::new(&pattern.value) {
            Ok(regex) => redact.push(regex),
            Err(error) => {
                let detail = error.to_string();
                let detail = detail.lines().last().unwrap_or("").trim();
                let detail = detail.strip_prefix("error: ").unwrap_or(detail);
                problems.push(pattern.error(format!(
                    "`{}` is not a valid regular expression: {detail}",
                    pattern.value
                )));
            }
        }
    }
    AuditConfig {
        batch_max_rows,
        batch_max_delay: raw
            .batch_max_delay
            .map_or(Duration::from_millis(10), |d| d.0),
        write_concurrency,
        queue_capacity,
        event_buffer,
        ack: raw.ack.unwrap_or_default(),
        on_backlog: raw.on_backlog.unwrap_or_default(),
        block_timeout: raw.block_timeout.map_or(Duration::from_secs(5), |d| d.0),
        spool_max_bytes,
        max_payload_bytes: usize::try_from(max_payload_bytes).unwrap_or(usize::MAX),
        redact,
        retention,
    }
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next()?
    } else {
        authority.split(':').next()?
    };
    Some(host.to_owned())
}

/// Removes `extensions:` from the tree so the core schema never sees it.
fn take_extensions(
    root: &mut Node,
    file: &str,
) -> Result<BTreeMap<String, ExtensionSection>, ConfigError> {
    let mut sections = BTreeMap::new();
    let NodeKind::Map(entries) = &mut root.kind else {
        return Ok(sections);
    };
    let Some(index) = entries.iter().position(
        |(k, _)| matches!(&k.kind, NodeKind::Scalar { text, .. } if text == "extensions"),
    ) else {
        return Ok(sections);
    };
    let (_, value) = entries.remove(index);
    match value.kind {
        NodeKind::Map(items) => {
            for (key, node) in items {
                if let NodeKind::Scalar { text, .. } = key.kind {
                    sections.insert(
                        text.clone(),
                        ExtensionSection {
                            name: text,
                            node,
                            file: file.to_owned(),
                        },
                    );
                }
            }
            Ok(sections)
        }
        NodeKind::Scalar {
            ref text,
            plain: true,
        } if text.is_empty() || text == "~" => Ok(sections),
        _ => Err(ConfigError::one(
            file,
            Located {
                mark: value.mark,
                path: "extensions".into(),
                message: "expected a mapping of extension name to its section".into(),
            },
        )),
    }
}

fn server_spec(
    name: &str,
    spanned: &Spanned<RawMcpServer>,
    defaults: &RawServerDefaults,
) -> Result<(ServerSpec, ServerNaming), Vec<Located>> {
    let raw = &spanned.value;
    let mut problems = Vec::new();
    let mut fail = |message: String| problems.push(spanned.error(message));

    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        fail(format!(
            "server name `{name}` may only hold letters, digits, `-` and `_`"
        ));
    }

    let inherit_env = raw
        .inherit_env
        .clone()
        .or_else(|| defaults.inherit_env.clone())
        .unwrap_or_else(|| DEFAULT_INHERIT_ENV.iter().map(|s| s.to_string()).collect());
    // A built-in server is this binary run as `warden builtin-server <name>`.
    let builtin_command = raw.builtin.as_ref().map(|name| {
        if !crate::builtin::NAMES.contains(&name.as_str()) {
            fail(format!(
                "`builtin` must be one of {}, found `{name}`",
                crate::builtin::NAMES.join(", ")
            ));
        }
        if raw.command.is_some() || raw.url.is_some() {
            fail("`builtin` cannot be combined with `command` or `url`".into());
        }
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "warden".into());
        (exe, vec!["builtin-server".to_owned(), name.clone()])
    });
    let command = builtin_command
        .clone()
        .map(|(exe, _)| exe)
        .or_else(|| raw.command.clone());
    let process = command.as_ref().map(|command| ProcessSpec {
        command: command.clone(),
        args: builtin_command
            .as_ref()
            .map(|(_, args)| args.clone())
            .or_else(|| raw.args.clone())
            .unwrap_or_default(),
        cwd: raw.cwd.as_ref().map(PathBuf::from),
        env: raw.env.clone().unwrap_or_default(),
        secrets: raw.secrets.clone().unwrap_or_default(),
        user_secrets: raw.user_secrets.clone().unwrap_or_default(),
        inherit_env,
    });

    let transport = match (process, &raw.port, &raw.url) {
        (Some(process), None, None) => Some(Transport::Stdio(process)),
        (Some(process), Some(port), url) => {
            if port != "auto" {
                fail(format!(
                    "`port` must be `auto` (Warden leases the port), found `{port}`"
                ));
            }
            let url = url
                .clone()
                .unwrap_or_else(|| "http://127.0.0.1:{port}/mcp".to_owned());
            if !url.contains("{port}") {
                fail(format!(
                    "`url` of an HTTP child must contain `{{port}}`, found `{url}`"
                ));
            }
            Some(Transport::HttpChild { process, url })
        }
        (Some(_), None, Some(_)) => {
            fail("`url` with `command` needs `port: auto` (an HTTP child); drop `url` for a stdio child".into());
            None
        }
        (None, _, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                fail(format!(
                    "`url` must be an http:// or https:// URL, found `{url}`"
                ));
            }
            let mut headers: Vec<HeaderSpec> = raw
                .headers
                .iter()
                .flatten()
                .map(|(name, value)| HeaderSpec {
                    name: name.clone(),
                    value: HeaderValue::Literal(value.clone()),
                })
                .collect();
            for (header, secret) in raw.header_secrets.iter().flatten() {
                // `Bearer:github_token` puts the scheme before the secret's value.
                let (prefix, secret) = match secret.split_once(':') {
                    Some((scheme, secret)) => (format!("{scheme} "), secret.to_owned()),
                    None => (String::new(), secret.clone()),
                };
                headers.push(HeaderSpec {
                    name: header.clone(),
                    value: HeaderValue::Secret {
                        name: secret,
                        prefix,
                    },
                });
            }
            Some(Transport::Remote {
                url: url.clone(),
                headers,
            })
        }
        (None, _, None) => {
            fail("a server needs `command` (a child process) or `url` (a remote server)".into());
            None
        }
    };
    if raw.command.is_none() && (raw.args.is_some() || raw.env.is_some() || raw.secrets.is_some()) {
        fail("`args`, `env` and `secrets` only apply to servers with a `command`".into());
    }
    if raw.command.is_some() && (raw.headers.is_some() || raw.header_secrets.is_some()) {
        fail("`headers` only apply to remote servers (`url` without `command`)".into());
    }

    let d = &defaults.restart;
    let r = &raw.restart;
    let policy = match r
        .policy
        .or(d.policy)
        .unwrap_or(RestartPolicyName::Permanent)
    {
        RestartPolicyName::Permanent => RestartPolicy::Permanent,
        RestartPolicyName::Transient => RestartPolicy::Transient,
        RestartPolicyName::Temporary => RestartPolicy::Temporary,
    };
    let pick = |own: Option<units::Dur>, default: Option<units::Dur>, fallback: Duration| {
        own.or(default).map_or(fallback, |d| d.0)
    };
    let restart = RestartSpec {
        policy,
        backoff_initial: pick(
            r.backoff_initial,
            d.backoff_initial,
            Duration::from_millis(500),
        ),
        backoff_max: pick(r.backoff_max, d.backoff_max, Duration::from_secs(30)),
        backoff_reset_after: pick(
            r.backoff_reset_after,
            d.backoff_reset_after,
            Duration::from_secs(60),
        ),
        max_restarts: r.max_restarts.or(d.max_restarts).unwrap_or(5),
        restart_window: pick(r.restart_window, d.restart_window, Duration::from_secs(60)),
    };
    if restart.backoff_initial > restart.backoff_max {
        fail(format!(
            "restart.backoff_initial ({:?}) is larger than restart.backoff_max ({:?})",
            restart.backoff_initial, restart.backoff_max
        ));
    }
    let dh = &defaults.health;
    let h = &raw.health;
    let health = HealthSpec {
        interval: pick(h.interval, dh.interval, Duration::from_secs(15)),
        timeout: pick(h.timeout, dh.timeout, Duration::from_secs(5)),
        failures_before_restart: h
            .failures_before_restart
            .or(dh.failures_before_restart)
            .unwrap_or(3),
    };
    if health.failures_before_restart == 0 {
        fail("health.failures_before_restart must be at least 1".into());
    }
    let isolation = match raw.isolation {
        None | Some(raw::IsolationKind::Shared) => {
            if raw.user_secrets.is_some() {
                fail("`user_secrets` needs `isolation: per_user`".into());
            }
            Isolation::Shared
        }
        Some(raw::IsolationKind::PerUser) => {
            if raw.command.is_none() {
                fail("`isolation: per_user` needs a `command` (one child per user)".into());
            }
            Isolation::PerUser {
                idle_timeout: raw.idle_timeout.map_or(Duration::from_secs(600), |d| d.0),
                max_instances: raw.max_instances.unwrap_or(50),
            }
        }
    };
    let max_concurrent_calls = raw
        .max_concurrent_calls
        .or(defaults.max_concurrent_calls)
        .unwrap_or(64);
    if max_concurrent_calls == 0 {
        fail("max_concurrent_calls must be at least 1".into());
    }
    let max_message_bytes = units::message_bound(
        raw.max_message_bytes
            .or(defaults.max_message_bytes)
            .map_or(DEFAULT_MAX_MESSAGE_BYTES, |s| s.0),
    )
    .unwrap_or_else(|problem| {
        fail(format!("max_message_bytes {problem}"));
        usize::MAX
    });
    let tools: BTreeMap<String, ToolSpec> = raw
        .tools
        .iter()
        .map(|(tool, t)| {
            (
                tool.clone(),
                ToolSpec {
                    call_timeout: t.call_timeout.map(|d| d.0),
                },
            )
        })
        .collect();
    let naming = ServerNaming {
        prefix: raw.prefix.clone().unwrap_or_else(|| name.to_owned()),
        pin_tools: raw.pin_tools.unwrap_or(true),
        tools: raw
            .tools
            .iter()
            .map(|(tool, t)| {
                (
                    tool.clone(),
                    ToolNaming {
                        alias: t.alias.clone(),
                        description: t.description.clone(),
                    },
                )
            })
            .collect(),
    };

    match transport {
        Some(transport) if problems.is_empty() => Ok((
            ServerSpec {
                name: name.to_owned(),
                transport,
                restart,
                health,
                call_timeout: pick(
                    raw.call_timeout,
                    defaults.call_timeout,
                    Duration::from_secs(60),
                ),
                max_concurrent_calls,
                max_queued_calls: raw
                    .max_queued_calls
                    .or(defaults.max_queued_calls)
                    .unwrap_or(256),
                max_message_bytes,
                stop_grace: pick(raw.stop_grace, defaults.stop_grace, Duration::from_secs(5)),
                startup_timeout: pick(
                    raw.startup_timeout,
                    defaults.startup_timeout,
                    Duration::from_secs(30),
                ),
                isolation,
                tools,
            },
            naming,
        )),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.yaml", &|_| None)
    }

    #[test]
    fn servers_may_not_share_tool_names() {
        // With `_` between prefix and tool, `fs`'s `admin_rm` and `fs_admin`'s `rm` are
        // both `fs_admin_rm`.
        let text = parse(
            "gateway: {separator: \"_\"}\nservers:\n  fs: {command: a}\n  fs_admin: {command: b}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("servers.fs_admin")
                && text.contains("tool names `fs_admin_…` fall inside server `fs`'s `fs_…`"),
            "{text}"
        );
        // The default separator keeps them apart.
        assert!(parse("servers:\n  fs: {command: a}\n  fs_admin: {command: b}\n").is_ok());
        // An alias inside another server's names.
        let text = parse(
            "servers:\n  fs: {command: a}\n  gh:\n    command: b\n    tools: {create_issue: {alias: fs__create}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("alias `fs__create` of tool `create_issue` lies inside server `fs`'s"),
            "{text}"
        );
    }

    #[test]
    fn empty_profile_gets_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert!(config.database.url.is_none());
        assert!(config.servers.is_empty());
    }

    #[test]
    fn error_message_names_file_line_column_and_path() {
        let err =
            parse("servers:\n  github:\n    command: gh\n    restart:\n      max_restarts: many\n")
                .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "test.yaml:5:21: servers.github.restart.max_restarts: expected an integer"
            ),
            "{text}"
        );
    }

    #[test]
    fn tls_needs_both_files_and_an_https_public_url() {
        let config = parse(
            "server: {listen: \"127.0.0.1:8443\", tls: {cert_file: c.pem, key_file: k.pem}}\n",
        )
        .unwrap();
        let tls = config.server.tls.expect("tls");
        assert_eq!(tls.cert_file, PathBuf::from("c.pem"));
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        assert_eq!(tls.reload_interval, Duration::from_secs(60));
        // Serving https, the default public URL is https.
        assert_eq!(config.server.public_url, "https://127.0.0.1:8443");
        let text = parse("server: {public_url: \"https://me:secret@warden.example.com\"}\n")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("server.public_url: must not carry a user name or password"),
            "{text}"
        );
        let text = parse("server:\n  tls:\n  # cert_file: c.pem\n")
            .unwrap_err()
            .to_string();
        assert!(text.contains("server.tls: is empty"), "{text}");
        let text = parse(
            "server: {public_url: \"http://warden.example.com\", \
             tls: {cert_file: c.pem, handshake_timeout: 0s}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("server.tls.key_file: required when server.tls is set"),
            "{text}"
        );
        assert!(
            text.contains("server.tls.handshake_timeout: must be at least 1s"),
            "{text}"
        );
        assert!(
            text.contains("server.public_url: Warden serves https (server.tls)"),
            "{text}"
        );
    }

    #[test]
    fn a_second_factor_needs_passkeys_that_verify_their_user() {
        let https = "server: {public_url: \"https://id.example.com\"}\n";
        assert_eq!(
            parse(https).unwrap().identity.passkeys.second_factor,
            SecondFactor::Off
        );
        for (value, expected) in [
            ("off", SecondFactor::Off),
            ("if_registered", SecondFactor::IfRegistered),
            ("required", SecondFactor::Required),
        ] {
            let config = parse(&format!(
                "{https}identity: {{passkeys: {{second_factor: {value}}}}}\n"
            ))
            .unwrap();
            assert_eq!(config.identity.passkeys.second_factor, expected, "{value}");
        }
        let refused = |yaml: &str| parse(yaml).unwrap_err().to_string();
        let text = refused(&format!(
            "{https}identity: {{passkeys: {{second_factor: sometimes}}}}\n"
        ));
        assert!(
            text.contains("identity.passkeys.second_factor: expected `off`, `if_registered` or `required`, found `sometimes`"),
            "{text}"
        );
        let text = refused(&format!(
            "{https}identity: {{passkeys: {{second_factor: required, user_verification: preferred}}}}\n"
        ));
        assert!(
            text.contains("identity.passkeys.second_factor: needs identity.passkeys.user_verification: required"),
            "{text}"
        );
        // The default listen address is an IP address, where passkeys are off.
        let text = refused("identity: {passkeys: {second_factor: if_registered}}\n");
        assert!(
            text.contains("identity.passkeys.second_factor: needs passkeys, which are off"),
            "{text}"
        );
    }

    #[test]
    fn passkeys_follow_the_public_url() {
        // The default listen address is an IP address: passkeys are off, not an error.
        let config = parse("").unwrap();
        assert!(!config.identity.passkeys.enabled);
        let config = parse("server: {public_url: \"https://id.example.com/warden/\"}\n").unwrap();
        let passkeys = &config.identity.passkeys;
        assert!(passkeys.enabled);
        assert_eq!(passkeys.rp_id, "id.example.com");
        assert_eq!(passkeys.origin, "https://id.example.com");
        assert!(passkeys.user_verification_required);
        let config = parse(
            "server: {public_url: \"http://localhost:8080\"}\n\
             identity: {passkeys: {user_verification: preferred}}\n",
        )
        .unwrap();
        assert_eq!(config.identity.passkeys.origin, "http://localhost:8080");
        assert_eq!(config.identity.passkeys.rp_id, "localhost");
        assert!(!config.identity.passkeys.user_verification_required);
        let config = parse(
            "server: {public_url: \"https://id.example.com\"}\n\
             identity: {passkeys: {rp_id: example.com}}\n",
        )
        .unwrap();
        assert_eq!(config.identity.passkeys.rp_id, "example.com");

        let text = parse(
            "server: {public_url: \"https://id.example.com\"}\n\
             identity: {passkeys: {rp_id: ample.com, user_verification: sometimes}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("identity.passkeys.rp_id: `ample.com` is neither the host"),
            "{text}"
        );
        assert!(
            text.contains("identity.passkeys.user_verification: expected `required` or `preferred`, found `sometimes`"),
            "{text}"
        );
        // What a browser reports as the origin: lower case, no default port.
        let config =
            parse("server: {public_url: \"https://ID.Example.com:443/warden\"}\n").unwrap();
        assert_eq!(config.identity.passkeys.origin, "https://id.example.com");
        assert_eq!(config.identity.passkeys.rp_id, "id.example.com");
        let config = parse("server: {public_url: \"https://id.example.com:8443\"}\n").unwrap();
        assert_eq!(
            config.identity.passkeys.origin,
            "https://id.example.com:8443"
        );
        // Plain http outside localhost: browsers offer no passkeys there.
        let config = parse("server: {public_url: \"http://warden.internal\"}\n").unwrap();
        assert!(!config.identity.passkeys.enabled);
        let text = parse(
            "server: {public_url: \"http://warden.internal\"}\nidentity: {passkeys: {enabled: true}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(text.contains("on https pages only"), "{text}");
        let text = parse(
            "server: {public_url: \"https://id.example.com\"}\nidentity: {passkeys: {rp_id: com}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(text.contains("identity.passkeys.rp_id: `com`"), "{text}");
        let config = parse("server: {public_url: \"http://[::1]:8080\"}\n").unwrap();
        assert!(!config.identity.passkeys.enabled);

        let text = parse("identity: {passkeys: {enabled: true}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("identity.passkeys.enabled: browsers refuse passkeys for an IP address (`127.0.0.1`)"),
            "{text}"
        );
    }

    #[test]
    fn event_buffers_default_and_are_bounded() {
        let config = parse("").unwrap();
        assert_eq!(config.server.event_buffer, 1024);
        assert_eq!(config.audit.event_buffer, 8192);
        let config = parse("server: {event_buffer: 16}\naudit: {event_buffer: 1000000}\n").unwrap();
        assert_eq!(config.server.event_buffer, 16);
        assert_eq!(config.audit.event_buffer, 1_000_000);
        let err =
            parse("server: {event_buffer: 15}\naudit: {event_buffer: 1000001}\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("server.event_buffer: must be between 16 and 1000000, found 15"),
            "{text}"
        );
        assert!(
            text.contains("audit.event_buffer: must be between 16 and 1000000, found 1000001"),
            "{text}"
        );
    }

    #[test]
    fn no_server_takes_the_skills_prompt_names() {
        let clash = |profile: &str| parse(profile).unwrap_err().to_string();
        let named = clash("servers:\n  skill:\n    command: x\n    prefix: other\n");
        assert!(
            named.contains("the server name `skill` is reserved"),
            "{named}"
        );
        let prefixed = clash("servers:\n  notes:\n    command: x\n    prefix: skill\n");
        assert!(
            prefixed.contains("tool prefix `skill` would clash"),
            "{prefixed}"
        );
        let longer = clash("servers:\n  skill__notes:\n    command: x\n");
        assert!(
            longer.contains("tool prefix `skill__notes` would clash"),
            "{longer}"
        );
        let dashed =
            clash("gateway:\n  separator: \"-\"\nservers:\n  skill-pdf:\n    command: x\n");
        assert!(
            dashed.contains("tool prefix `skill-pdf` would clash"),
            "{dashed}"
        );
        for fine in ["skills", "skillful", "my-skill"] {
            assert!(
                parse(&format!("servers:\n  {fine}:\n    command: x\n")).is_ok(),
                "{fine}"
            );
        }
    }

    #[test]
    fn skills_scopes_default_and_are_checked() {
        assert_eq!(parse("").unwrap().skills.scopes, ["skills:read"]);
        let set = parse("skills:\n  scopes: [team:read, skills:read]\n").unwrap();
        assert_eq!(set.skills.scopes, ["team:read", "skills:read"]);
        let error = parse("skills:\n  scopes: [\"a b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("skills.scopes") && error.contains("`a b` is not a valid scope"),
            "{error}"
        );
        let error = parse("skills:\n  scope: [x]\n").unwrap_err().to_string();
        assert!(error.contains("scope"), "{error}");
    }

    #[test]
    fn max_message_bytes_defaults_inherits_and_is_bounded() {
        let config = parse(
            "defaults:\n  max_message_bytes: 1MiB\nservers:\n  a:\n    command: x\n  b:\n    command: x\n    max_message_bytes: 1KiB\n  c:\n    command: x\n    max_message_bytes: 1GiB\n",
        )
        .unwrap();
        let limits: Vec<usize> = config.servers.iter().map(|s| s.max_message_bytes).collect();
        assert_eq!(limits, [1 << 20, 1 << 10, 1 << 30]);
        assert_eq!(
            parse("servers:\n  a:\n    command: x\n").unwrap().servers[0].max_message_bytes,
            64 << 20
        );

        let err = parse(
            "servers:\n  a:\n    command: x\n    max_message_bytes: 1023\n  b:\n    command: x\n    max_message_bytes: 1073741825\n",
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert_eq!(err.problems[0].path, "servers.a");
        assert!(
            err.problems[0]
                .message
                .contains("max_message_bytes must be between 1KiB and 1GiB, found 1023 bytes"),
            "{err}"
        );
        assert!(
            err.problems[1].message.contains("found 1073741825 bytes"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_their_server() {
        let err = parse("servers:\n  a:\n    args: [x]\n  b:\n    command: x\n    port: 99\n")
            .unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert_eq!(err.problems[0].path, "servers.a");
        assert_eq!(err.problems[0].mark.line, 3);
        assert!(err.to_string().contains("`port` must be `auto`"));
    }

    #[test]
    fn the_rate_limit_sweep_runs_every_minute_unless_set_and_at_most_every_second() {
        let default = parse("").unwrap();
        assert_eq!(
            default.policy.limits.sweep_interval,
            Duration::from_secs(60)
        );
        let set = parse("rate_limits:\n  sweep_interval: 5m\n").unwrap();
        assert_eq!(set.policy.limits.sweep_interval, Duration::from_secs(300));
        let err = parse("rate_limits:\n  sweep_interval: 10ms\n").unwrap_err();
        assert_eq!(err.problems[0].path, "rate_limits.sweep_interval", "{err}");
        assert!(err.to_string().contains("at least 1s"), "{err}");
    }

    #[test]
    fn servers_keep_profile_order_and_kinds() {
        let config = parse(
            "servers:\n  zeta:\n    command: z\n  alpha:\n    command: a\n    port: auto\n  remote:\n    url: https://example.com/mcp\n    header_secrets: {Authorization: 'Bearer:tok'}\n",
        )
        .unwrap();
        let names: Vec<_> = config.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "remote"]);
        assert_eq!(config.servers[1].transport.kind(), "http");
        let Transport::Remote { headers, .. } = &config.servers[2].transport else {
            panic!("remote expected");
        };
        assert_eq!(
            headers[0].value,
            HeaderValue::Secret {
                name: "tok".into(),
                prefix: "Bearer ".into()
            }
        );
    }

    #[test]
    fn extension_sections_are_handed_over_with_locations() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Mine {
            #[allow(dead_code)]
            level: u8,
        }
        let config = parse("extensions:\n  mine:\n    level: high\n").unwrap();
        let err = config.extensions["mine"].parse::<Mine>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("test.yaml:3:12: extensions.mine.level: expected an integer"),
            "{err}"
        );
    }

    #[test]
    fn audit_section_defaults_and_located_regex_errors() {
        let config = parse("").unwrap();
        assert_eq!(config.audit.batch_max_rows, 1000);
        assert_eq!(config.audit.ack, AckMode::Async);
        assert!(config.audit.retention.is_none());
        let config = parse(
            "audit:\n  ack: durable\n  on_backlog: fail_closed\n  redact: ['acct-\\d+']\n  retention: 400d\n",
        )
        .unwrap();
        assert_eq!(config.audit.on_backlog, BacklogMode::FailClosed);
        assert_eq!(config.audit.redact.len(), 1);
        assert_eq!(
            config.audit.retention,
            Some(Duration::from_secs(400 * 86_400))
        );
        let err = parse("audit:\n  redact:\n    - ok\n    - 'bad(('\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "test.yaml:4:7: audit.redact[1]: `bad((` is not a valid regular expression"
            ),
            "{text}"
        );
    }

    #[test]
    fn audit_write_concurrency_has_edges_and_leaves_the_pool_a_connection() {
        assert_eq!(parse("").unwrap().audit.write_concurrency, 2);
        let config =
            parse("audit:\n  write_concurrency: 16\ndatabase:\n  pool_size: 17\n").unwrap();
        assert_eq!(config.audit.write_concurrency, 16);
        let config = parse("audit:\n  write_concurrency: 1\n").unwrap();
        assert_eq!(config.audit.write_concurrency, 1);
        for (yaml, message) in [
            (
                "audit:\n  write_concurrency: 0\n",
                "audit.write_concurrency: must be between 1 and 16, found 0",
            ),
            (
                "audit:\n  write_concurrency: 17\ndatabase:\n  pool_size: 32\n",
                "audit.write_concurrency: must be between 1 and 16, found 17",
            ),
            (
                "audit:\n  write_concurrency: 4\ndatabase:\n  pool_size: 4\n",
                "audit.write_concurrency: must be less than database.pool_size (4), found 4",
            ),
        ] {
            let text = parse(yaml).unwrap_err().to_string();
            assert!(text.contains(message), "{yaml}: {text}");
        }
    }

    #[test]
    fn calls_awaiting_input_have_a_timeout_and_a_bound() {
        let config = parse("").unwrap();
        assert_eq!(config.gateway.input_timeout, Duration::from_secs(300));
        assert_eq!(config.gateway.max_awaiting_input, 1_000);
        assert_eq!(config.gateway.max_awaiting_input_per_principal, 16);
        assert_eq!(config.gateway.max_resource_subscriptions, 256);
        let config = parse("gateway:\n  input_timeout: 30s\n  max_awaiting_input: 0\n").unwrap();
        assert_eq!(config.gateway.input_timeout, Duration::from_secs(30));
        assert_eq!(
            config.gateway.max_awaiting_input, 0,
            "0 turns the rounds off"
        );
        let text = parse("gateway:\n  input_timeout: 0s\n")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("gateway.input_timeout: must be longer than 0s"),
            "{text}"
        );
    }

    #[test]
    fn database_url_falls_back_to_environment() {
        let config = Config::parse("", "t.yaml", &|n| {
            (n == "DATABASE_URL").then(|| "postgres://x".to_string())
        })
        .unwrap();
        assert_eq!(config.database.url.as_deref(), Some("postgres://x"));
    }
}
