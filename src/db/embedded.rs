//! The embedded PostgreSQL cluster: Warden's default when the profile names no database.
//!
//! Built from the machine's own PostgreSQL server binaries (nothing is downloaded).
//! `initdb` runs once into the data directory; every start runs `postgres` as Warden's
//! child, listening only on a Unix socket inside a directory no other user can enter, so
//! `trust` authentication reaches nobody but Warden's own user (and root). The cluster is
//! stopped with Warden (fast shutdown), and a parent-death signal stops it even when
//! Warden is killed outright. The data survives restarts.
//!
//! As root, PostgreSQL refuses to run; `initdb` and `postgres` are started as the
//! `postgres` system user instead (the user the distribution packages create).
//!
//! The test harness uses the same type with `fsync` off, one cluster per test binary.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::process::Command;
use warden_actors::process::{self, GroupChild, Hardening};

/// Where distributions put the server binaries, newest version first within each pattern.
const SEARCH_ROOTS: &[&str] = &[
    "/usr/lib/postgresql", // Debian, Ubuntu: /usr/lib/postgresql/<v>/bin
    "/usr/pgsql",          // RHEL PGDG: /usr/pgsql-<v>/bin (prefix match)
    "/opt/homebrew/opt",   // macOS Homebrew (arm)
    "/usr/local/opt",      // macOS Homebrew (intel)
];
const FIXED_DIRS: &[&str] = &["/usr/local/pgsql/bin", "/usr/bin", "/usr/local/bin"];

pub const SUPERUSER: &str = "warden";

#[derive(Debug, Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) found in PATH, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin or Homebrew. \
         Install them (Debian/Ubuntu: `sudo apt-get install -y postgresql`; Fedora/RHEL: `sudo dnf install postgresql-server`), \
         set `database.embedded.bin_dir`, or point `database.url` (or DATABASE_URL) at an existing server"
    )]
    BinariesNotFound,
    #[error("`database.embedded.bin_dir` {0} does not contain both `initdb` and `postgres`")]
    BadBinDir(PathBuf),
    #[error(
        "Warden runs as root, and PostgreSQL refuses to; it would run as the `postgres` system user, but there is none. \
         Run Warden as an ordinary user, create a `postgres` user, or set `database.url`"
    )]
    NoPostgresUser,
    #[error(
        "the `postgres` user cannot reach {0}: an ancestor directory is closed to it. \
         Put `server.state_dir` somewhere it can traverse, or run Warden as an ordinary user"
    )]
    Unreachable(PathBuf),
    #[error(
        "{dir} was initialised by PostgreSQL {data} but the binaries in {bin} are version {binaries}; \
         set `database.embedded.bin_dir` to the version {data} binaries, or upgrade the cluster with pg_upgrade"
    )]
    VersionMismatch {
        dir: PathBuf,
        data: String,
        bin: PathBuf,
        binaries: String,
    },
    #[error("initdb failed ({status}): {output}")]
    InitdbFailed { status: String, output: String },
    #[error("PostgreSQL did not become ready within {timeout:?}{}", last_lines(.log))]
    StartTimeout { timeout: Duration, log: Vec<String> },
    #[error("PostgreSQL exited during start-up ({status}){}", last_lines(.log))]
    ExitedEarly { status: String, log: Vec<String> },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn last_lines(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; its last words:\n  {}", log.join("\n  "))
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub data_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    pub port: u16,
    /// Off for throwaway test clusters only.
    pub fsync: bool,
    pub start_timeout: Duration,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl ClusterOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        ClusterOptions {
            data_dir,
            bin_dir: None,
            port: 5432,
            fsync: true,
            start_timeout: Duration::from_secs(30),
            settings: Vec::new(),
        }
    }
}

/// A running embedded cluster. Stop it with [`EmbeddedCluster::stop`]; dropping it kills it.
pub struct EmbeddedCluster {
    options: ClusterOptions,
    socket_dir: PathBuf,
    child: Option<GroupChild>,
    log: Arc<Mutex<VecDeque<String>>>,
}

struct RunAs {
    uid: u32,
    gid: u32,
}

impl EmbeddedCluster {
    /// Initialises the data directory if needed and starts the server, returning once it
    /// accepts connections.
    pub async fn start(options: ClusterOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_binaries(options.bin_dir.as_deref())?;
        let run_as = run_as()?;
        prepare_data_dir(&options.data_dir, run_as.as_ref())?;
        let binaries_version = binaries_version(&bin_dir).await?;
        let version_file = options.data_dir.join("PG_VERSION");
        match std::fs::read_to_string(&version_file) {
            Ok(data_version) => {
                let data_version = data_version.trim().to_owned();
                if data_version != binaries_version {
                    return Err(EmbeddedError::VersionMismatch {
                        dir: options.data_dir.clone(),
                        data: data_version,
                        bin: bin_dir,
                        binaries: binaries_version,
                    });
                }
            }
            Err(_) => initdb(&bin_dir, &options, run_as.as_ref()).await?,
        }
        let socket_dir = socket_dir(&options, run_as.as_ref())?;
        let mut cluster = EmbeddedCluster {
            options,
            socket_dir,
            child: None,
            log: Arc::new(Mutex::new(VecDeque::new())),
        };
        cluster.launch(&bin_dir, run_as.as_ref()).await?;
        Ok(cluster)
    }

    /// Connects to a cluster another Warden process already runs on `options.data_dir`
    /// (for CLI commands next to a running `warden serve`). `None` if none answers.
    pub async fn attach(options: ClusterOptions) -> Option<Self> {
        if !options.data_dir.join("postmaster.pid").exists() {
            return None;
        }
        let socket_dir = socket_dir(&options, None).ok()?;
        let cluster = EmbeddedCluster {
            options,
            socket_dir,
            child: None,
            log: Arc::new(Mutex::new(VecDeque::new())),
        };
        let (client, connection) = cluster
            .pg_config("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .ok()?;
        drop(client);
        drop(connection);
        Some(cluster)
    }

    async fn launch(
        &mut self,
        bin_dir: &Path,
        run_as: Option<&RunAs>,
    ) -> Result<(), EmbeddedError> {
        let mut command = Command::new(bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(&self.options.data_dir)
            .arg("-k")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.options.port.to_string())
            .args(["-c", "listen_addresses="])
            .args(["-c", "logging_collector=off"])
            .args(["-c", "unix_socket_permissions=0700"]);
        if !self.options.fsync {
            command.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command
            .env_clear()
            .env("LANG", "C")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(user) = run_as {
            command.uid(user.uid).gid(user.gid);
        }
        let hardening = Hardening {
            guard: false,
            // Fast shutdown: PostgreSQL stops cleanly if Warden dies.
            death_signal: libc::SIGINT,
        };
        let mut child = process::spawn(command, hardening)
            .await
            .map_err(io_err("cannot start postgres"))?;
        let log = self.log.clone();
        child.drain_output(4096, move |line| {
            tracing::debug!(target: "warden::postgres", "{line}");
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == 20 {
                log.pop_front();
            }
            log.push_back(line.to_owned());
        });
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + self.options.start_timeout;
        let config = self.pg_config("postgres");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.child.try_wait()
            {
                return Err(EmbeddedError::ExitedEarly {
                    status: process::describe_exit(&status),
                    log: self.recent_log(),
                });
            }
            if let Ok((client, connection)) = config.connect(tokio_postgres::NoTls).await {
                drop(client);
                drop(connection);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedError::StartTimeout {
                    timeout: self.options.start_timeout,
                    log: self.recent_log(),
                });
            }
            // Polling is the only readiness signal PostgreSQL offers a non-systemd parent.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn recent_log(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Connection settings for `dbname` as the cluster's superuser.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.options.port)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("warden")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// A `postgresql://` URL for `dbname` (for `database.url` of another process).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@/{dbname}?host={}&port={}",
            self.socket_dir.display(),
            self.options.port
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.child.id())
    }

    /// Fast shutdown: sessions are ended, the cluster checkpoints and exits. Escalates to
    /// an immediate shutdown and then SIGKILL if it takes longer than `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<(), EmbeddedError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.child.id() {
            for (signal, wait) in [
                (libc::SIGINT, grace),
                (libc::SIGQUIT, Duration::from_secs(5)),
            ] {
                // SAFETY: signalling the postmaster we spawned and have not reaped.
                unsafe {
                    libc::kill(pid as libc::pid_t, signal);
                }
                if let Ok(status) = tokio::time::timeout(wait, child.child.wait()).await {
                    status.map_err(io_err("waiting for postgres to exit"))?;
                    return Ok(());
                }
            }
        }
        child
            .stop(Duration::ZERO)
            .await
            .map_err(io_err("killing postgres"))?;
        Ok(())
    }
}

fn find_binaries(configured: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    let complete = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = configured {
        return if complete(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(EmbeddedError::BadBinDir(dir.to_path_buf()))
        };
    }
    // PATH first; follow symlinks so /usr/local/bin/initdb finds its `postgres` sibling.
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if let Ok(real) = std::fs::canonicalize(&initdb)
                && let Some(parent) = real.parent()
                && complete(parent)
            {
                return Ok(parent.to_path_buf());
            }
        }
    }
    for root in SEARCH_ROOTS {
        let root = Path::new(root);
        let (parent, prefix) = match root.file_name().and_then(|n| n.to_str()) {
            Some("pgsql") => (root.parent().unwrap_or(root), "pgsql-"),
            Some("opt") => (root, "postgresql"),
            _ => (root, ""),
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        let mut candidates: Vec<(Vec<u32>, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let rest = name.strip_prefix(prefix)?;
                let version: Vec<u32> = rest
                    .trim_start_matches('@')
                    .split('.')
                    .filter_map(|p| p.parse().ok())
                    .collect();
                let bin = e.path().join("bin");
                complete(&bin).then_some((version, bin))
            })
            .collect();
        candidates.sort();
        if let Some((_, bin)) = candidates.pop() {
            return Ok(bin);
        }
    }
    FIXED_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| complete(d))
        .ok_or(EmbeddedError::BinariesNotFound)
}

async fn binaries_version(bin_dir: &Path) -> Result<String, EmbeddedError> {
    let output = Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .output()
        .await
        .map_err(io_err("running postgres --version"))?;
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" → "15"
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or("");
    Ok(version.split('.').next().unwrap_or("").to_owned())
}

fn run_as() -> Result<Option<RunAs>, EmbeddedError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy the two
    // integers out immediately and do not keep the pointer.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(EmbeddedError::NoPostgresUser);
    }
    // SAFETY: non-null pointer from getpwnam, read before any other getpw* call.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

fn prepare_data_dir(dir: &Path, run_as: Option<&RunAs>) -> Result<(), EmbeddedError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("restricting {}", dir.display())))?;
    let Some(user) = run_as else {
        return Ok(());
    };
    // SAFETY: chown on a path we just created, with ids from getpwnam.
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| io_err(format!("path {}", dir.display()))(io::Error::other(e)))?;
    if unsafe { libc::chown(c_path.as_ptr(), user.uid, user.gid) } != 0 {
        return Err(io_err(format!(
            "handing {} to the postgres user",
            dir.display()
        ))(io::Error::last_os_error()));
    }
    // Every ancestor must be traversable by the postgres user. Warden's own state
    // directory (the parent) is opened to traversal only (0711): its files keep 0600.
    let absolute =
        std::fs::canonicalize(dir).map_err(io_err(format!("resolving {}", dir.display())))?;
    for (depth, ancestor) in absolute.ancestors().skip(1).enumerate() {
        let meta = std::fs::metadata(ancestor)
            .map_err(io_err(format!("inspecting {}", ancestor.display())))?;
        if traversable(&meta, user) {
            continue;
        }
        if depth == 0 && meta.uid() == 0 {
            let mode = meta.mode() & 0o7777 | 0o011;
            std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode)).map_err(
                io_err(format!("opening {} to traversal", ancestor.display())),
            )?;
            continue;
        }
        return Err(EmbeddedError::Unreachable(ancestor.to_path_buf()));
    }
    Ok(())
}

fn traversable(meta: &std::fs::Metadata, user: &RunAs) -> bool {
    let mode = meta.mode();
    if meta.uid() == user.uid {
        mode & 0o100 != 0
    } else if meta.gid() == user.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

async fn initdb(
    bin_dir: &Path,
    options: &ClusterOptions,
    run_as: Option<&RunAs>,
) -> Result<(), EmbeddedError> {
    tracing::info!(dir = %options.data_dir.display(), "initialising the embedded PostgreSQL cluster");
    let mut command = Command::new(bin_dir.join("initdb"));
    command
        .arg("-D")
        .arg(&options.data_dir)
        .args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        ])
        .env_clear()
        .env("LANG", "C")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if !options.fsync {
        command.arg("--no-sync");
    }
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    let output = command.output().await.map_err(io_err("running initdb"))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(EmbeddedError::InitdbFailed {
            status: process::describe_exit(&output.status),
            output: text.trim().to_owned(),
        });
    }
    Ok(())
}

/// The socket lives in the data directory (closed to other users) unless that path is
/// too long for a Unix socket, in which case a private directory under /tmp is used.
fn socket_dir(options: &ClusterOptions, run_as: Option<&RunAs>) -> Result<PathBuf, EmbeddedError> {
    let absolute = std::fs::canonicalize(&options.data_dir)
        .map_err(io_err(format!("resolving {}", options.data_dir.display())))?;
    // sun_path holds 108 bytes including the terminator; ".s.PGSQL.65535.lock" is 19.
    if absolute.as_os_str().len() + 20 < 107 {
        return Ok(absolute);
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    let dir = std::env::temp_dir().join(format!("warden-pg-{}", &hex::encode(digest)[..16]));
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("restricting {}", dir.display())))?;
    if let Some(user) = run_as {
        let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| io_err("socket path")(io::Error::other(e)))?;
        // SAFETY: chown on a directory we created.
        if unsafe { libc::chown(c_path.as_ptr(), user.uid, user.gid) } != 0 {
            return Err(io_err("handing the socket directory to postgres")(
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(dir)
}
