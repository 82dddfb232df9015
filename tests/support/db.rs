//! PostgreSQL for tests, from the machine's own server binaries.
//!
//! One shared cluster per test binary, started on first use from the same
//! [`EmbeddedCluster`] Warden embeds (with `fsync` off), in `<root>/pg`. It listens only
//! on a Unix socket inside its data directory. On start the harness creates
//! `warden_template` and applies every migration the binary would apply (through the
//! same registry), so each [`TestDb::new`] is a cheap `CREATE DATABASE … TEMPLATE`.
//! [`TestDb::empty`] gives a database with no schema at all, for migration tests.
//!
//! A [`TestDb`] is dropped with `DROP DATABASE … WITH (FORCE)` when the test ends,
//! panicking or not. The shared cluster is stopped (immediate shutdown) when the binary
//! exits; should the binary be killed instead, the postmaster still gets SIGINT through
//! its parent-death signal, and the next run removes the directory.
//!
//! A test that needs to stop or restart its database gets a [`TestCluster`] of its own.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::{Client, Config, NoTls, Row};
use warden::db::{ClusterOptions, EmbeddedCluster};

use super::{dirs, procs, rt};

const TEMPLATE: &str = "warden_template";

/// A PostgreSQL cluster the harness started and will stop.
pub struct TestCluster {
    /// `None` only while an async operation has it on the harness runtime.
    cluster: Option<EmbeddedCluster>,
    data_dir: PathBuf,
    _dir: Option<TempDir>,
}

fn options(data_dir: PathBuf) -> ClusterOptions {
    let mut options = ClusterOptions::new(data_dir);
    options.fsync = false;
    // Generous: a loaded 2-core CI machine can be slow to start anything.
    options.start_timeout = Duration::from_secs(120);
    options.settings = vec![("max_connections".into(), "300".into())];
    options
}

impl TestCluster {
    /// A dedicated cluster in a fresh temp dir, for a test that stops its database.
    pub fn start() -> TestCluster {
        let dir = dirs::temp_dir("cluster");
        let mut cluster = TestCluster::start_in(dir.path().join("pg"));
        cluster._dir = Some(dir);
        cluster
    }

    /// A cluster in `data_dir` (initialised if empty).
    pub fn start_in(data_dir: PathBuf) -> TestCluster {
        let cluster = start_embedded(&data_dir);
        TestCluster {
            cluster: Some(cluster),
            data_dir,
            _dir: None,
        }
    }

    fn inner(&self) -> &EmbeddedCluster {
        self.cluster
            .as_ref()
            .expect("the cluster is only absent during an operation")
    }

    /// A `postgresql://` URL (Unix socket) for `dbname`, for a profile's `database.url`.
    pub fn url(&self, dbname: &str) -> String {
        self.inner().url(dbname)
    }

    /// Connection settings for `dbname` as the superuser.
    pub fn pg_config(&self, dbname: &str) -> Config {
        self.inner().pg_config(dbname)
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner().pid()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Fast shutdown; returns once the postmaster has exited.
    pub fn stop(&mut self) {
        let mut cluster = self.cluster.take().expect("cluster present");
        let (cluster, result) = rt::block_on(async move {
            let result = cluster.stop(Duration::from_secs(30)).await;
            (cluster, result)
        });
        self.cluster = Some(cluster);
        result.unwrap_or_else(|e| panic!("cannot stop the test cluster: {e}"));
    }

    /// Starts the cluster again on the same data directory (same socket, same port).
    pub fn restart(&mut self) {
        let stopped = self.cluster.replace(start_embedded(&self.data_dir));
        drop(stopped);
    }

    /// Creates a database `name` (empty, or copied from `template`).
    pub fn create_database(&self, name: &str, template: Option<&str>) {
        let sql = match template {
            Some(template) => format!(
                "CREATE DATABASE {} TEMPLATE {}",
                ident(name),
                ident(template)
            ),
            None => format!("CREATE DATABASE {}", ident(name)),
        };
        let admin = self.pg_config("postgres");
        rt::block_on(async move {
            let client = connect(&admin).await;
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(mut cluster) = self.cluster.take() {
            // Best effort, and never a panic: this may run while a test unwinds.
            let _ = rt::try_block_on(
                async move {
                    let _ = cluster.stop(Duration::from_secs(10)).await;
                },
                Some(Duration::from_secs(30)),
            );
        }
    }
}

fn start_embedded(data_dir: &Path) -> EmbeddedCluster {
    rt::block_on(EmbeddedCluster::start(options(data_dir.to_path_buf()))).unwrap_or_else(|e| {
        panic!(
            "cannot start a test PostgreSQL cluster in {}: {e}",
            data_dir.display()
        )
    })
}

/// Quotes an identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Connects and drives the connection on the current runtime.
pub async fn connect(config: &Config) -> Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {config:?}: {e}"));
    tokio::spawn(connection);
    client
}

struct Shared {
    cluster: Mutex<TestCluster>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static SHARED_PID: AtomicU32 = AtomicU32::new(0);

/// The binary's shared cluster, started (with its migrated template) on first use.
fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let cluster = TestCluster::start_in(dirs::root().join("pg"));
        if let Some(pid) = cluster.pid() {
            SHARED_PID.store(pid, Ordering::SeqCst);
        }
        cluster.create_database(TEMPLATE, None);
        let config = cluster.pg_config(TEMPLATE);
        rt::block_on(async move {
            let mut client = connect(&config).await;
            let registry = warden::extension::Registry::with(&[]);
            warden::db::migrate::run(&mut client, registry.all_migrations())
                .await
                .unwrap_or_else(|e| panic!("migrating the template database failed: {e}"));
            // The session ends here; CREATE DATABASE … TEMPLATE waits for it to go.
        });
        Shared {
            cluster: Mutex::new(cluster),
        }
    })
}

fn with_shared<T>(f: impl FnOnce(&TestCluster) -> T) -> T {
    let guard = shared().cluster.lock().unwrap_or_else(|e| e.into_inner());
    f(&guard)
}

/// Called at exit: immediate shutdown of the shared cluster, waiting (bounded) for the
/// postmaster to go so its directory can be removed.
pub fn stop_shared_cluster_at_exit() {
    let pid = SHARED_PID.load(Ordering::SeqCst);
    if pid == 0 {
        return;
    }
    // SAFETY: signalling the postmaster this process started; it is our child and has
    // not been reaped, so the pid cannot have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGQUIT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs::get(pid as i32).is_some_and(|p| p.state != 'Z') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A database of its own for one test, in the shared cluster; dropped with the value.
pub struct TestDb {
    name: String,
    url: String,
    config: Config,
}

impl TestDb {
    /// A database with every migration applied (a copy of the template).
    pub fn new() -> TestDb {
        TestDb::create(Some(TEMPLATE))
    }

    /// A database with no schema at all.
    pub fn empty() -> TestDb {
        TestDb::create(None)
    }

    fn create(template: Option<&str>) -> TestDb {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        with_shared(|cluster| {
            cluster.create_database(&name, template);
            TestDb {
                url: cluster.url(&name),
                config: cluster.pg_config(&name),
                name,
            }
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// For a profile's `database.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pg_config(&self) -> Config {
        self.config.clone()
    }

    /// Runs one statement without parameters and returns its rows.
    pub fn query(&self, sql: &str) -> Vec<Row> {
        let config = self.config.clone();
        let sql = sql.to_owned();
        rt::block_on(async move {
            let client = connect(&config).await;
            client
                .query(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// Runs statements (no parameters, no results).
    pub fn execute(&self, sql: &str) {
        let config = self.config.clone();
        let sql = sql.to_owned();
        rt::block_on(async move {
            let client = connect(&config).await;
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(shared) = SHARED.get() else {
            return;
        };
        let admin = {
            let guard = shared.cluster.lock().unwrap_or_else(|e| e.into_inner());
            guard.pg_config("postgres")
        };
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&self.name));
        // Best effort, and never a panic: this may run while a test unwinds.
        let _ = rt::try_block_on(
            async move {
                if let Ok((client, connection)) = admin.connect(NoTls).await {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&sql).await;
                }
            },
            Some(Duration::from_secs(30)),
        );
    }
}
