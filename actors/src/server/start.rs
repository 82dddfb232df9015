//! Bringing one upstream up: build the child's environment (secrets injected here and
//! nowhere else), spawn it hardened, connect the transport, run the MCP handshake and
//! read the whole catalog (following pagination). Runs as a task, never inside the
//! actor's `handle`, so the actor's mailbox stays responsive while a slow `npx` starts.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use serde_json::{Map, Value, json};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use super::ServerMsg;
use crate::directory::Catalog;
use crate::process::{self, GroupChild, Hardening};
use crate::redact::Redacted;
use crate::redact::Scrub;
use crate::secrets::SecretSource;
use crate::spec::{HeaderValue, ProcessSpec, ServerSpec, Transport};
use crate::upstream::{self, CallError, CallOptions, Connection, ConnectionEvent, ListKind};

/// The protocol revision Warden asks upstreams for.
pub const UPSTREAM_PROTOCOL_VERSION: &str = "2025-11-25";
/// Upper bound on pages when listing, so a server that always returns a cursor cannot
/// keep Warden listing forever.
const MAX_PAGES: usize = 1000;

/// A started upstream.
pub struct Running {
    pub connection: Arc<Connection>,
    pub catalog: Catalog,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub child: Option<ChildControl>,
}

/// The task that owns the child process. Sending on `stop` asks for a graceful stop with
/// that grace period; dropping it kills the group at once.
pub struct ChildControl {
    pub stop: Option<oneshot::Sender<Duration>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl ChildControl {
    pub fn request_stop(&mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
    }
}

pub struct StartContext {
    pub spec: Arc<ServerSpec>,
    pub user: Option<String>,
    pub secrets: Arc<dyn SecretSource>,
    pub ports: crate::ports::PortManager,
    pub myself: ActorRef<ServerMsg>,
    pub client_name: String,
    pub client_version: String,
}

/// A start that did not reach ready. `child` is handed back so the caller stops it.
pub struct StartFailure {
    pub reason: String,
    pub child: Option<ChildControl>,
    pub port: Option<u16>,
}

pub async fn start(ctx: StartContext) -> Result<Running, StartFailure> {
    let deadline = Instant::now() + ctx.spec.startup_timeout;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    forward_connection_events(events_rx, ctx.myself.clone());
    let server: Arc<str> = Arc::from(ctx.spec.name.as_str());
    let fail = |reason: String, child: Option<ChildControl>, port: Option<u16>| StartFailure {
        reason,
        child,
        port,
    };

    let (connection, pid, port, child) = match &ctx.spec.transport {
        Transport::Stdio(process_spec) => {
            let (env, scrub) = build_env(process_spec, None, &*ctx.secrets, ctx.user.as_deref())
                .await
                .map_err(|reason| fail(reason, None, None))?;
            let mut child = spawn(process_spec, env, true)
                .await
                .map_err(|reason| fail(reason, None, None))?;
            let pid = child.child.id();
            let (Some(stdin), Some(stdout)) = (child.child.stdin.take(), child.child.stdout.take())
            else {
                return Err(fail("the child's pipes were not set up".into(), None, None));
            };
            let stderr = child.child.stderr.take();
            let connection = upstream::stdio::connect(
                server.clone(),
                stdin,
                stdout,
                stderr,
                ctx.spec.max_message_bytes,
                scrub,
                events_tx,
            );
            let control = watch_child(child, ctx.myself.clone());
            (connection, pid, None, Some(control))
        }
        Transport::HttpChild {
            process: process_spec,
            url,
        } => {
            let port = ctx
                .ports
                .lease(&ctx.spec.name)
                .await
                .map_err(|reason| fail(reason, None, None))?;
            let (env, scrub) =
                build_env(process_spec, Some(port), &*ctx.secrets, ctx.user.as_deref())
                    .await
                    .map_err(|reason| fail(reason, None, Some(port)))?;
            let mut child = spawn(&with_port(process_spec, port), env, false)
                .await
                .map_err(|reason| fail(reason, None, Some(port)))?;
            let pid = child.child.id();
            let log_as = server.clone();
            let log_scrub = scrub.clone();
            child.drain_output(4096, move |line| {
                let line = log_scrub.apply(line);
                tracing::info!(target: "warden::upstream::stderr", server = %log_as, "{line}");
            });
            let control = watch_child(child, ctx.myself.clone());
            let url = url.replace("{port}", &port.to_string());
            let connection = upstream::http::connect(
                server.clone(),
                url,
                Vec::new(),
                ctx.spec.max_message_bytes,
                scrub,
                events_tx,
            )
            .map_err(|reason| fail(reason, None, Some(port)));
            match connection {
                Ok(connection) => (connection, pid, Some(port), Some(control)),
                Err(mut failure) => {
                    failure.child = Some(control);
                    return Err(failure);
                }
            }
        }
        Transport::Remote { url, headers } => {
            let mut resolved = Vec::with_capacity(headers.len());
            // A remote server that echoes its credential hands it to no one either.
            let mut secret_values = Vec::new();
            for header in headers {
                let value = match &header.value {
                    HeaderValue::Literal(v) => Redacted::new(v.clone()),
                    HeaderValue::Secret { name, prefix } => {
                        let secret = ctx
                            .secrets
                            .resolve(name, ctx.user.as_deref())
                            .await
                            .map_err(|e| {
                                fail(format!("header `{}`: {e}", header.name), None, None)
                            })?;
                        secret_values.push((header.name.clone(), secret.clone()));
                        Redacted::new(format!("{prefix}{}", secret.expose()))
                    }
                };
                resolved.push((header.name.clone(), value));
            }
            let connection = upstream::http::connect(
                server.clone(),
                url.clone(),
                resolved,
                ctx.spec.max_message_bytes,
                Scrub::new(secret_values),
                events_tx,
            )
            .map_err(|reason| fail(reason, None, None))?;
            (connection, None, None, None)
        }
    };

    let waits_for_port = matches!(ctx.spec.transport, Transport::HttpChild { .. });
    match handshake(&connection, &ctx, deadline, waits_for_port).await {
        Ok(catalog) => Ok(Running {
            connection,
            catalog,
            pid,
            port,
            child,
        }),
        Err(reason) => Err(fail(reason, child, port)),
    }
}

fn forward_connection_events(
    mut events: mpsc::UnboundedReceiver<ConnectionEvent>,
    myself: ActorRef<ServerMsg>,
) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if myself.send_message(ServerMsg::Connection(event)).is_err() {
                break;
            }
        }
    });
}

/// The child's environment, built from nothing: the allow-listed names from Warden's own
/// environment, the profile's literal values, then secrets (which win).
pub(crate) async fn build_env(
    spec: &ProcessSpec,
    port: Option<u16>,
    secrets: &dyn SecretSource,
    user: Option<&str>,
) -> Result<(Vec<(String, Redacted<String>)>, Scrub), String> {
    let mut env: BTreeMap<String, Redacted<String>> = BTreeMap::new();
    let mut injected = Vec::new();
    for name in &spec.inherit_env {
        if let Ok(value) = std::env::var(name) {
            env.insert(name.clone(), Redacted::new(value));
        }
    }
    for (name, value) in &spec.env {
        let value = match port {
            Some(port) => value.replace("{port}", &port.to_string()),
            None => value.clone(),
        };
        env.insert(name.clone(), Redacted::new(value));
    }
    for (name, secret) in &spec.secrets {
        let value = secrets
            .resolve(secret, None)
            .await
            .map_err(|e| format!("environment variable {name}: {e}"))?;
        injected.push((name.clone(), value.clone()));
        env.insert(name.clone(), value);
    }
    if let Some(user) = user {
        for (name, secret) in &spec.user_secrets {
            let value = secrets
                .resolve(secret, Some(user))
                .await
                .map_err(|e| format!("environment variable {name}: {e}"))?;
            injected.push((name.clone(), value.clone()));
            env.insert(name.clone(), value);
        }
    }
    Ok((env.into_iter().collect(), Scrub::new(injected)))
}

fn with_port(spec: &ProcessSpec, port: u16) -> ProcessSpec {
    let mut spec = spec.clone();
    for arg in &mut spec.args {
        *arg = arg.replace("{port}", &port.to_string());
    }
    spec
}

async fn spawn(
    spec: &ProcessSpec,
    env: Vec<(String, Redacted<String>)>,
    stdio: bool,
) -> Result<GroupChild, String> {
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value.expose());
    }
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let _ = stdio;
    process::spawn(command, Hardening::CHILD)
        .await
        .map_err(|e| format!("cannot start `{}`: {e}", spec.command))
}

/// Owns the child: reports its exit to the actor, or stops it when asked.
fn watch_child(mut child: GroupChild, myself: ActorRef<ServerMsg>) -> ChildControl {
    let (stop, stop_requested) = oneshot::channel::<Duration>();
    let task = tokio::spawn(async move {
        let status = tokio::select! {
            status = child.child.wait() => status,
            grace = stop_requested => child.stop(grace.unwrap_or(Duration::ZERO)).await,
        };
        // Whatever the child left in its group goes too.
        process::kill_group(child.pgid());
        let (description, success) = match &status {
            Ok(status) => (process::describe_exit(status), status.success()),
            Err(e) => (format!("could not be waited for: {e}"), false),
        };
        let _ = myself.send_message(ServerMsg::ChildExited {
            description,
            success,
        });
    });
    ChildControl {
        stop: Some(stop),
        task,
    }
}

async fn handshake(
    connection: &Arc<Connection>,
    ctx: &StartContext,
    deadline: Instant,
    waits_for_port: bool,
) -> Result<Catalog, String> {
    let params = json!({
        "protocolVersion": UPSTREAM_PROTOCOL_VERSION,
        "capabilities": {"roots": {"listChanged": true}, "sampling": {}, "elicitation": {}},
        "clientInfo": {"name": ctx.client_name, "version": ctx.client_version},
    });
    let params = params.as_object().cloned();
    let init = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!(
                "no answer to initialize within {:?} (startup_timeout)",
                ctx.spec.startup_timeout
            ));
        }
        let options = CallOptions {
            timeout: Some(remaining),
            ..CallOptions::default()
        };
        match connection.call("initialize", params.clone(), options).await {
            Ok(result) => break result,
            // An HTTP child may not be listening yet: retry until the deadline.
            Err(CallError::Send(_)) if waits_for_port => {
                tokio::time::sleep(Duration::from_millis(50).min(remaining)).await;
            }
            Err(CallError::Timeout(_)) => {
                return Err(format!(
                    "no answer to initialize within {:?} (startup_timeout)",
                    ctx.spec.startup_timeout
                ));
            }
            Err(error) => return Err(format!("initialize failed: {error}")),
        }
    };
    let init: Value = serde_json::from_str(init.get())
        .map_err(|e| format!("initialize result is not JSON: {e}"))?;
    connection
        .notify("notifications/initialized", None)
        .map_err(|e| format!("cannot send notifications/initialized: {e}"))?;
    let mut catalog = Catalog {
        protocol_version: init
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(UPSTREAM_PROTOCOL_VERSION)
            .to_owned(),
        server_info: init.get("serverInfo").cloned().unwrap_or(Value::Null),
        capabilities: init
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| json!({})),
        instructions: init
            .get("instructions")
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..Catalog::default()
    };
    connection.set_protocol_version(&catalog.protocol_version);
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    for kind in [ListKind::Tools, ListKind::Resources, ListKind::Prompts] {
        if catalog.capabilities.get(capability_key(kind)).is_some() {
            fill(&mut catalog, kind, connection, timeout).await?;
        }
    }
    Ok(catalog)
}

fn capability_key(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Tools => "tools",
        ListKind::Resources => "resources",
        ListKind::Prompts => "prompts",
    }
}

/// Re-reads one list into `catalog` (resources include their templates).
pub async fn fill(
    catalog: &mut Catalog,
    kind: ListKind,
    connection: &Arc<Connection>,
    timeout: Duration,
) -> Result<(), String> {
    match kind {
        ListKind::Tools => {
            catalog.tools = list_all(connection, "tools/list", "tools", timeout).await?
        }
        ListKind::Prompts => {
            catalog.prompts = list_all(connection, "prompts/list", "prompts", timeout).await?
        }
        ListKind::Resources => {
            catalog.resources =
                list_all(connection, "resources/list", "resources", timeout).await?;
            // Templates are optional even for servers with resources.
            catalog.resource_templates = list_all(
                connection,
                "resources/templates/list",
                "resourceTemplates",
                timeout,
            )
            .await
            .unwrap_or_default();
        }
    }
    Ok(())
}

/// Follows `nextCursor` until the list is complete.
pub async fn list_all(
    connection: &Arc<Connection>,
    method: &str,
    field: &str,
    timeout: Duration,
) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = cursor.as_ref().map(|c| {
            let mut map = Map::new();
            map.insert("cursor".into(), Value::from(c.clone()));
            map
        });
        let options = CallOptions {
            timeout: Some(timeout),
            ..CallOptions::default()
        };
        let page = connection
            .call(method, params, options)
            .await
            .map_err(|e| format!("{method} failed: {e}"))?;
        let mut page: Value =
            serde_json::from_str(page.get()).map_err(|e| format!("{method}: not JSON: {e}"))?;
        if let Some(Value::Array(list)) = page.get_mut(field).map(Value::take) {
            items.extend(list);
        }
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
            _ => return Ok(items),
        }
    }
    Err(format!("{method}: more than {MAX_PAGES} pages"))
}
