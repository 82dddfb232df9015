//! What the tree is asked to run: validated server definitions. The main crate's `config`
//! module builds these from the profile; nothing in this crate parses YAML.
//!
//! Specs are plain data compared with `==` by the reconciler: a server whose spec is equal
//! to the running one is left alone on reload, anything else is restarted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One upstream MCP server as the profile defines it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSpec {
    pub name: String,
    pub transport: Transport,
    pub restart: RestartSpec,
    pub health: HealthSpec,
    /// Deadline for one call, unless a tool overrides it.
    pub call_timeout: Duration,
    /// Calls in flight to this server at once.
    pub max_concurrent_calls: usize,
    /// Calls allowed to wait for a slot once `max_concurrent_calls` are in flight; beyond
    /// this a call fails fast.
    pub max_queued_calls: usize,
    /// How long a stopping child gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How long to wait for the MCP handshake (and, for HTTP children, for the port).
    pub startup_timeout: Duration,
    /// The largest message accepted from the server: a stdio line, an HTTP response
    /// body, one SSE event. A runaway upstream must not take Warden's memory with it.
    pub max_message_bytes: usize,
    pub isolation: Isolation,
    /// Per-tool overrides, keyed by the upstream tool name.
    pub tools: BTreeMap<String, ToolSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Transport {
    /// A child speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio(ProcessSpec),
    /// A child serving streamable HTTP on a loopback port Warden leases to it.
    HttpChild {
        process: ProcessSpec,
        /// URL template; `{port}` is replaced with the leased port.
        url: String,
    },
    /// A server Warden does not run.
    Remote {
        url: String,
        headers: Vec<HeaderSpec>,
    },
}

impl Transport {
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Stdio(_) => "stdio",
            Transport::HttpChild { .. } => "http",
            Transport::Remote { .. } => "remote",
        }
    }

    pub fn process(&self) -> Option<&ProcessSpec> {
        match self {
            Transport::Stdio(process) | Transport::HttpChild { process, .. } => Some(process),
            Transport::Remote { .. } => None,
        }
    }
}

/// How to start a child process. The environment is built from scratch: nothing of
/// Warden's own environment reaches the child except the names in `inherit_env`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSpec {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Literal variables (`{port}` is substituted for HTTP children).
    pub env: BTreeMap<String, String>,
    /// Variable name → secret name, resolved at spawn from the secret store.
    pub secrets: BTreeMap<String, String>,
    /// Variable name → per-user secret name (only with `Isolation::PerUser`).
    pub user_secrets: BTreeMap<String, String>,
    /// Names copied from Warden's own environment when set there.
    pub inherit_env: Vec<String>,
}

/// A header sent to a remote server; its value is literal or a secret's.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderSpec {
    pub name: String,
    pub value: HeaderValue,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    Literal(String),
    /// Resolved from the secret store; `prefix` is prepended (`Bearer `).
    Secret {
        name: String,
        prefix: String,
    },
}

/// OTP restart types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit (non-zero status, signal, failed health).
    Transient,
    /// Never restarted.
    Temporary,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Permanent => "permanent",
            RestartPolicy::Transient => "transient",
            RestartPolicy::Temporary => "temporary",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// After this long running without a crash, the backoff starts from the beginning.
    pub backoff_reset_after: Duration,
    /// Intensity: more than `max_restarts` within `restart_window` marks the server failed.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthSpec {
    pub interval: Duration,
    pub timeout: Duration,
    pub failures_before_restart: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Isolation {
    /// One upstream for every caller.
    Shared,
    /// One child per authenticated user, started on first use.
    PerUser {
        idle_timeout: Duration,
        max_instances: usize,
    },
}

/// Per-tool overrides that the actors act on (naming and permissions live in the main crate).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolSpec {
    pub call_timeout: Option<Duration>,
}
