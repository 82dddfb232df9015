//! Warden under test: the profile, the process, readiness, the token.
//!
//! The profile is written as JSON (which is YAML) from a `serde_json::Value`, so a
//! scenario sets what it needs and an overlay file (`--overlay`) can add sections, such
//! as rate limits, as they land. Warden runs its embedded PostgreSQL cluster under a state
//! directory inside the target directory, kept between runs (so `initdb` runs once and
//! the cold start measured is the one the bar talks about), unless the scenario passes
//! `database.url` for a cluster of its own.
//!
//! The token used for every call is `--token`, else the contents of `--token-file`, else
//! the bootstrap token Warden writes to `<state_dir>/admin.token`: the load test never
//! depends on how a token was minted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::Error;
use crate::http::Conn;
use crate::procs::{Spawned, free_port, spawn};

/// How the load test finds its token.
#[derive(Debug, Clone, Default)]
pub enum TokenSource {
    /// `<state_dir>/admin.token`, written by Warden on first start.
    #[default]
    Bootstrap,
    Literal(String),
    File(PathBuf),
}

/// A running Warden.
pub struct Warden {
    pub process: Spawned,
    pub addr: SocketAddr,
    pub token: String,
    /// From spawn to `/readyz` answering 200.
    pub ready_after: Duration,
    state_dir: PathBuf,
}

/// A profile for `state_dir` with one listener on a free port, quiet logging and no
/// servers yet.
pub fn base_profile(state_dir: &Path) -> Result<(Value, SocketAddr), Error> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let profile = json!({
        "server": {
            "listen": addr.to_string(),
            "state_dir": state_dir,
            "shutdown_grace": "2s",
        },
        "database": {},
        "logging": { "level": "warn", "format": "text" },
        "servers": {},
    });
    Ok((profile, addr))
}

/// Adds a stdio server `name` running `program args`.
pub fn add_stdio_server(profile: &mut Value, name: &str, program: &Path, args: &[String]) {
    profile["servers"][name] = json!({
        "command": program,
        "args": args,
        // One upstream serves every session: let the gateway keep it busy.
        "max_concurrent_calls": 512,
        "max_queued_calls": 4096,
    });
}

/// Merges `overlay` into `profile` (objects key by key, anything else replaced).
pub fn merge(profile: &mut Value, overlay: &Value) {
    match (profile, overlay) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (slot, value) => *slot = value.clone(),
    }
}

/// Writes `profile` next to the state directory and checks it with `warden config
/// check`. Returns the path, or the checker's complaint.
pub async fn write_profile(bin: &Path, profile: &Value, path: &Path) -> Result<(), String> {
    let text = serde_json::to_string_pretty(profile).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin)
            .args(["config", "check"])
            .arg(path)
            .env_remove("DATABASE_URL")
            .env_remove("WARDEN_CONFIG")
            .output(),
    )
    .await
    .map_err(|_| "warden config check took over 30 s".to_owned())?
    .map_err(|e| format!("warden config check: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Starts `warden serve --config profile_path` and waits for `/readyz`, then for every
/// configured server to be `ready`.
pub async fn start(
    bin: &Path,
    profile_path: &Path,
    addr: SocketAddr,
    state_dir: &Path,
    token: &TokenSource,
    log: PathBuf,
) -> Result<Warden, Error> {
    let log_file =
        std::fs::File::create(&log).map_err(|e| Error::Start(format!("{}: {e}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| Error::Start(format!("{}: {e}", log.display())))?;
    let mut command = tokio::process::Command::new(bin);
    command
        .arg("serve")
        .arg("--config")
        .arg(profile_path)
        .env_remove("DATABASE_URL")
        .env_remove("WARDEN_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err));
    let started = Instant::now();
    let mut process = spawn(command, "warden serve")?;
    let mut conn = Conn::new(addr);
    let deadline = started + Duration::from_secs(180);
    loop {
        if process.exited() {
            return Err(Error::Start(format!(
                "warden exited during start-up; its log:\n{}",
                tail(&log, 30)
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Start(format!(
                "warden not ready within 180 s; its log:\n{}",
                tail(&log, 30)
            )));
        }
        if let Ok((StatusCode::OK, _)) = get(&mut conn, addr, "/readyz", None).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_after = started.elapsed();
    let token = match token {
        TokenSource::Literal(token) => token.clone(),
        TokenSource::File(path) => read_token(path)?,
        TokenSource::Bootstrap => read_token(&state_dir.join("admin.token"))?,
    };
    let warden = Warden {
        process,
        addr,
        token,
        ready_after,
        state_dir: state_dir.to_path_buf(),
    };
    warden.wait_servers_ready(Duration::from_secs(120)).await?;
    Ok(warden)
}

fn read_token(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| Error::Start(format!("token file {}: {e}", path.display())))
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET path` with an optional bearer token: the status and the body.
pub async fn get(
    conn: &mut Conn,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, Bytes), Error> {
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, addr.to_string());
    if let Some(token) = token {
        builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::Run(e.to_string()))?;
    let reply = conn
        .send(request)
        .await
        .map_err(|e| Error::Run(format!("GET {path}: {e}")))?;
    Ok((reply.status, reply.body))
}

impl Warden {
    /// `/admin/servers` as JSON.
    pub async fn servers(&self) -> Result<Vec<Value>, Error> {
        let mut conn = Conn::new(self.addr);
        let (status, body) = get(&mut conn, self.addr, "/admin/servers", Some(&self.token)).await?;
        if status != StatusCode::OK {
            return Err(Error::Run(format!(
                "/admin/servers answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Run(format!("/admin/servers: {e}")))?;
        Ok(value["servers"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until every server is `ready`.
    pub async fn wait_servers_ready(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            let servers = self.servers().await?;
            let waiting: Vec<String> = servers
                .iter()
                .filter(|s| s["state"] != "ready")
                .map(|s| format!("{}={}", s["name"], s["state"]))
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Start(format!(
                    "servers not ready within {within:?}: {}",
                    waiting.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pid of server `name`'s child, as `/admin/servers` reports it.
    pub async fn server_pid(&self, name: &str) -> Result<Option<u32>, Error> {
        Ok(self
            .servers()
            .await?
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok()))
    }

    /// Stops Warden (SIGTERM) and waits until its embedded cluster, if any, is gone, so
    /// the next start finds the data directory free.
    pub async fn stop(self) {
        self.process.stop(Duration::from_secs(20)).await;
        let pid_file = self.state_dir.join("postgres").join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        while pid_file.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
