//! The peer gateways, installed from their registries on first use into a cache directory
//! inside the target directory, each fronting the same stdio fixture as Warden.
//!
//! | peer | package | how it fronts a stdio server |
//! | --- | --- | --- |
//! | supergateway | npm `supergateway` | `--stdio CMD --outputTransport streamableHttp --stateful`: streamable HTTP at `/mcp`; one child process per client session |
//! | mcp-proxy | PyPI `mcp-proxy` | `mcp-proxy --port P CMD`: streamable HTTP at `/mcp`; one child shared by all sessions |
//! | ContextForge | PyPI `mcp-contextforge-gateway` | `mcpgateway.translate` bridges the stdio server to streamable HTTP; the gateway registers it and serves it as a virtual server at `/servers/{id}/mcp`, with a JWT from its own `create_jwt_token` |
//!
//! Versions are pinned so that figures compare like with like across runs. A peer that
//! cannot be installed or started is reported as skipped with the reason, never faked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Error;
use crate::mcp::{Endpoint, Session};
use crate::procs::{Spawned, free_port, spawn};

pub const SUPERGATEWAY_VERSION: &str = "4.0.0";
pub const MCP_PROXY_VERSION: &str = "0.13.0";
pub const CONTEXTFORGE_VERSION: &str = "1.0.7.post20260921";

/// A running peer gateway.
pub struct Peer {
    pub name: &'static str,
    pub version: &'static str,
    pub endpoint: Arc<Endpoint>,
    /// The tool name to call for the fixture's `echo`.
    pub tool: String,
    /// The processes (the first is the gateway; CPU is counted over all their trees).
    pub processes: Vec<Spawned>,
    pub note: String,
}

impl Peer {
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    pub async fn stop(self) {
        for process in self.processes.into_iter().rev() {
            process.stop(Duration::from_secs(5)).await;
        }
    }
}

/// Which peers exist.
pub const ALL: &[&str] = &["supergateway", "mcp-proxy", "contextforge"];

/// Installs (first use) and starts peer `name` in front of `fixture` (stdio).
pub async fn start(name: &str, cache: &Path, fixture: &Path, logs: &Path) -> Result<Peer, Error> {
    match name {
        "supergateway" => supergateway(cache, fixture, logs).await,
        "mcp-proxy" => mcp_proxy(cache, fixture, logs).await,
        "contextforge" => contextforge(cache, fixture, logs).await,
        other => Err(Error::Start(format!("unknown peer {other}"))),
    }
}

async fn run_install(
    mut command: tokio::process::Command,
    what: &str,
    log: &Path,
) -> Result<(), Error> {
    let file =
        std::fs::File::create(log).map_err(|e| Error::Start(format!("{}: {e}", log.display())))?;
    let err = file
        .try_clone()
        .map_err(|e| Error::Start(format!("{}: {e}", log.display())))?;
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true);
    eprintln!(
        "loadtest: installing {what} (first use; log in {})",
        log.display()
    );
    let status = tokio::time::timeout(Duration::from_secs(900), command.status())
        .await
        .map_err(|_| Error::Start(format!("installing {what} took over 15 minutes")))?
        .map_err(|e| Error::Start(format!("installing {what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Start(format!(
            "installing {what} failed ({status}); see {}",
            log.display()
        )))
    }
}

/// A Python virtual environment under `cache/dir` with `package==version` installed.
async fn venv(
    cache: &Path,
    dir: &str,
    package: &str,
    version: &str,
    probe: &str,
) -> Result<PathBuf, Error> {
    let root = cache.join(dir);
    let marker = root.join(format!(".installed-{version}"));
    if marker.exists() && root.join("bin").join(probe).exists() {
        return Ok(root);
    }
    let mut create = tokio::process::Command::new("python3");
    create.args(["-m", "venv"]).arg(&root);
    run_install(
        create,
        &format!("a venv for {package}"),
        &cache.join(format!("{dir}-venv.log")),
    )
    .await?;
    let mut pip = tokio::process::Command::new(root.join("bin/pip"));
    pip.args(["install", "--disable-pip-version-check", "-q"])
        .arg(format!("{package}=={version}"));
    run_install(
        pip,
        &format!("{package} {version}"),
        &cache.join(format!("{dir}-pip.log")),
    )
    .await?;
    std::fs::write(&marker, version)
        .map_err(|e| Error::Start(format!("{}: {e}", marker.display())))?;
    Ok(root)
}

fn log_command(command: &mut tokio::process::Command, log: &Path) -> Result<(), Error> {
    let file =
        std::fs::File::create(log).map_err(|e| Error::Start(format!("{}: {e}", log.display())))?;
    let err = file
        .try_clone()
        .map_err(|e| Error::Start(format!("{}: {e}", log.display())))?;
    command.stdin(Stdio::null()).stdout(file).stderr(err);
    Ok(())
}

/// Waits until an MCP session can be opened at `endpoint` and lists a tool ending in
/// `echo`; returns its name.
async fn wait_mcp(
    endpoint: &Arc<Endpoint>,
    within: Duration,
    processes: &mut [Spawned],
    log: &Path,
) -> Result<String, Error> {
    let deadline = Instant::now() + within;
    loop {
        for process in processes.iter_mut() {
            if process.exited() {
                return Err(Error::Start(format!(
                    "{} exited during start-up; its log:\n{}",
                    process.label,
                    crate::warden::tail(log, 20)
                )));
            }
        }
        let mut session =
            Session::new(Arc::clone(endpoint), 1).map_err(|e| Error::Start(e.to_string()))?;
        let last = match tokio::time::timeout(Duration::from_secs(10), session.list_tools()).await {
            Ok(Ok(names)) => {
                if let Some(name) = names.iter().find(|n| *n == "echo" || n.ends_with("echo")) {
                    return Ok(name.clone());
                }
                format!("no echo tool among {names:?}")
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "tools/list timed out".into(),
        };
        if Instant::now() > deadline {
            return Err(Error::Start(format!(
                "not serving MCP within {within:?} ({last}); log:\n{}",
                crate::warden::tail(log, 20)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn supergateway(cache: &Path, fixture: &Path, logs: &Path) -> Result<Peer, Error> {
    let root = cache.join("supergateway");
    let bin = root.join("node_modules/.bin/supergateway");
    let marker = root.join(format!(".installed-{SUPERGATEWAY_VERSION}"));
    if !(bin.exists() && marker.exists()) {
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::Start(format!("{}: {e}", root.display())))?;
        let mut npm = tokio::process::Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&root)
            .arg(format!("supergateway@{SUPERGATEWAY_VERSION}"));
        run_install(npm, "supergateway", &cache.join("supergateway-npm.log")).await?;
        std::fs::write(&marker, SUPERGATEWAY_VERSION)
            .map_err(|e| Error::Start(format!("{}: {e}", marker.display())))?;
    }
    let port = free_port()?;
    let log = logs.join("supergateway.log");
    let mut command = tokio::process::Command::new(&bin);
    command
        .arg("--stdio")
        .arg(fixture)
        .args([
            "--outputTransport",
            "streamableHttp",
            "--stateful",
            "--logLevel",
            "none",
        ])
        .arg("--port")
        .arg(port.to_string());
    single_process_peer(
        command,
        &log,
        port,
        ("supergateway", SUPERGATEWAY_VERSION),
        "stateful streamable HTTP; one fixture child per session",
    )
    .await
}

async fn mcp_proxy(cache: &Path, fixture: &Path, logs: &Path) -> Result<Peer, Error> {
    let root = venv(
        cache,
        "mcp-proxy",
        "mcp-proxy",
        MCP_PROXY_VERSION,
        "mcp-proxy",
    )
    .await?;
    let port = free_port()?;
    let log = logs.join("mcp-proxy.log");
    let mut command = tokio::process::Command::new(root.join("bin/mcp-proxy"));
    command
        .args(["--host", "127.0.0.1", "--log-level", "WARNING", "--port"])
        .arg(port.to_string())
        .arg(fixture);
    single_process_peer(
        command,
        &log,
        port,
        ("mcp-proxy", MCP_PROXY_VERSION),
        "streamable HTTP; one fixture child shared by all sessions",
    )
    .await
}

/// Starts a peer that is one process serving streamable HTTP at `/mcp` on `port`, and
/// waits until it lists its tools.
async fn single_process_peer(
    mut command: tokio::process::Command,
    log: &Path,
    port: u16,
    (name, version): (&'static str, &'static str),
    note: &str,
) -> Result<Peer, Error> {
    log_command(&mut command, log)?;
    let mut processes = vec![spawn(command, name)?];
    let endpoint = Arc::new(Endpoint::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "/mcp",
    ));
    let tool = wait_mcp(&endpoint, Duration::from_secs(60), &mut processes, log).await?;
    Ok(Peer {
        name,
        version,
        endpoint,
        tool,
        processes,
        note: note.into(),
    })
}

async fn contextforge(cache: &Path, fixture: &Path, logs: &Path) -> Result<Peer, Error> {
    let root = venv(
        cache,
        "contextforge",
        "mcp-contextforge-gateway",
        CONTEXTFORGE_VERSION,
        "mcpgateway",
    )
    .await?;
    let python = root.join("bin/python");
    let data = cache.join("contextforge-data");
    // A fresh database each run: a registration left from a previous run would clash.
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| Error::Start(format!("{}: {e}", data.display())))?;
    let env = contextforge_env(&data);
    let token = contextforge_token(&python, &env, &data).await?;

    // 1. The stdio fixture bridged to streamable HTTP by ContextForge's own translator.
    let bridge_port = free_port()?;
    let bridge_log = logs.join("contextforge-translate.log");
    let mut bridge = tokio::process::Command::new(&python);
    bridge
        .args(["-m", "mcpgateway.translate", "--stdio"])
        .arg(fixture)
        .args(["--expose-streamable-http", "--host", "127.0.0.1", "--port"])
        .arg(bridge_port.to_string())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&data);
    log_command(&mut bridge, &bridge_log)?;
    let bridge = spawn(bridge, "contextforge translate")?;

    // 2. The gateway itself.
    let port = free_port()?;
    let log = logs.join("contextforge.log");
    let mut gateway = tokio::process::Command::new(root.join("bin/mcpgateway"));
    gateway
        .args(["--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&data);
    log_command(&mut gateway, &log)?;
    let gateway = spawn(gateway, "contextforge")?;
    let mut processes = vec![gateway, bridge];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // 3. Register the bridge and make a virtual server of its tools.
    let admin = crate::http::Conn::new(addr);
    let mut admin = Admin {
        conn: admin,
        addr,
        token: token.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for process in processes.iter_mut() {
            if process.exited() {
                return Err(Error::Start(format!(
                    "{} exited during start-up; logs:\n{}\n{}",
                    process.label,
                    crate::warden::tail(&log, 15),
                    crate::warden::tail(&bridge_log, 10)
                )));
            }
        }
        if let Ok((200, _)) = admin.call(hyper::Method::GET, "/health", None).await {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Start(format!(
                "ContextForge not healthy within 120 s; log:\n{}",
                crate::warden::tail(&log, 20)
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let registration = json!({
        "name": "fixture",
        "url": format!("http://127.0.0.1:{bridge_port}/mcp"),
        "transport": "STREAMABLEHTTP",
    });
    let mut registered = None;
    for _ in 0..60 {
        match admin
            .call(hyper::Method::POST, "/gateways", Some(&registration))
            .await
        {
            Ok((200 | 201, body)) => {
                registered = Some(body);
                break;
            }
            Ok((status, body)) => {
                registered = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
                if status >= 500 || status == 503 || status == 502 {
                    continue;
                }
                return Err(Error::Start(format!(
                    "ContextForge refused the gateway registration ({status}): {body}"
                )));
            }
            Err(error) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if Instant::now() > deadline {
                    return Err(error);
                }
            }
        }
    }
    if registered.is_none() {
        return Err(Error::Start(format!(
            "ContextForge never accepted the gateway registration; log:\n{}",
            crate::warden::tail(&log, 20)
        )));
    }
    let (_, tools) = admin.call(hyper::Method::GET, "/tools", None).await?;
    let tool_ids: Vec<Value> = tools
        .as_array()
        .or_else(|| tools["items"].as_array())
        .or_else(|| tools["data"].as_array())
        .map(|list| {
            list.iter()
                .filter(|t| {
                    t["originalName"] == "echo"
                        || t["original_name"] == "echo"
                        || t["name"].as_str().is_some_and(|n| n.ends_with("echo"))
                })
                .filter_map(|t| t.get("id").cloned())
                .collect()
        })
        .unwrap_or_default();
    if tool_ids.is_empty() {
        return Err(Error::Start(format!(
            "ContextForge registered the fixture but lists no echo tool: {}",
            truncate(&tools.to_string(), 400)
        )));
    }
    let server = json!({ "server": { "name": "loadtest", "associated_tools": tool_ids } });
    let (status, body) = admin
        .call(hyper::Method::POST, "/servers", Some(&server))
        .await?;
    let server_id = body["id"].as_str().map(str::to_owned);
    let Some(server_id) = server_id.filter(|_| status == 200 || status == 201) else {
        return Err(Error::Start(format!(
            "ContextForge refused the virtual server ({status}): {}",
            truncate(&body.to_string(), 400)
        )));
    };
    let mut endpoint = Endpoint::new(addr, &format!("/servers/{server_id}/mcp"));
    endpoint.bearer = Some(token);
    let endpoint = Arc::new(endpoint);
    let tool = wait_mcp(&endpoint, Duration::from_secs(60), &mut processes, &log).await?;
    Ok(Peer {
        name: "contextforge",
        version: CONTEXTFORGE_VERSION,
        endpoint,
        tool,
        processes,
        note:
            "virtual server over mcpgateway.translate (stdio→streamable HTTP); SQLite; JWT auth on"
                .into(),
    })
}

fn truncate(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

/// ContextForge's settings for a local benchmark instance: SQLite, in-memory cache, no
/// UI, no plugins, no rate limiting (its defaults would refuse the load), authentication
/// on (JWT, as Warden's calls carry a bearer token).
fn contextforge_env(data: &Path) -> Vec<(String, String)> {
    let secret = format!("{:032x}", rand::random::<u128>());
    [
        (
            "DATABASE_URL",
            format!("sqlite:///{}/mcp.db", data.display()),
        ),
        ("JWT_SECRET_KEY", secret.clone()),
        ("AUTH_ENCRYPTION_SECRET", format!("{secret}x")),
        ("PLATFORM_ADMIN_EMAIL", CONTEXTFORGE_ADMIN.into()),
        ("PLATFORM_ADMIN_PASSWORD", format!("Pw-{secret}-9!")),
        ("BASIC_AUTH_PASSWORD", format!("Pw-{secret}-8!")),
        ("MCPGATEWAY_UI_ENABLED", "false".into()),
        ("MCPGATEWAY_ADMIN_API_ENABLED", "true".into()),
        ("CACHE_TYPE", "memory".into()),
        ("LOG_LEVEL", "ERROR".into()),
        ("PLUGINS_ENABLED", "false".into()),
        ("SSRF_PROTECTION_ENABLED", "false".into()),
        // Its default limits (100 MCP requests a minute) would refuse the load itself.
        ("RATE_LIMITING_ENABLED", "false".into()),
        ("RATE_LIMIT_LOCKOUT_ENABLED", "false".into()),
        ("HOME", data.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

const CONTEXTFORGE_ADMIN: &str = "admin@example.com";

/// A token for the platform admin, signed with the instance's secret by ContextForge's
/// own tool.
async fn contextforge_token(
    python: &Path,
    env: &[(String, String)],
    data: &Path,
) -> Result<String, Error> {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .args([
                "-m",
                "mcpgateway.utils.create_jwt_token",
                "--admin",
                "-e",
                "600",
                "-u",
            ])
            .arg(CONTEXTFORGE_ADMIN)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(data)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| Error::Start("ContextForge's create_jwt_token took over 2 minutes".into()))?
    .map_err(|e| Error::Start(format!("ContextForge's create_jwt_token: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("ey") && l.split('.').count() == 3)
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::Start(format!(
                "ContextForge's create_jwt_token printed no token: {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            ))
        })
}

/// A tiny JSON client for ContextForge's REST API.
struct Admin {
    conn: crate::http::Conn,
    addr: SocketAddr,
    token: String,
}

impl Admin {
    async fn call(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Error> {
        let bytes = body.map(Value::to_string).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
            .map_err(|e| Error::Run(e.to_string()))?;
        let reply = self
            .conn
            .send(request)
            .await
            .map_err(|e| Error::Run(format!("ContextForge {path}: {e}")))?;
        let value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&reply.body).into_owned()));
        Ok((reply.status.as_u16(), value))
    }
}
