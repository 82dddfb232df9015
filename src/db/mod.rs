//! PostgreSQL: the connection pool every surface shares, the embedded cluster, and the
//! schema migrations.
//!
//! [`Database::open`] decides where the data lives: the profile's `database.url` (or
//! `DATABASE_URL`), or else an embedded cluster under the state directory that lives
//! and dies with Warden.

pub mod embedded;
pub mod migrate;
pub mod notify;

/// SQL for a timestamp column as UTC text to the second (`2026-11-27T12:00:00Z`): how
/// exports and listings show times, the same whatever the session's time zone.
pub fn utc_seconds(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
}

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use thiserror::Error;

use crate::config::Config;
pub use embedded::{ClusterOptions, EmbeddedCluster, EmbeddedError};
pub use migrate::{MigrateError, Migration};

/// The database name Warden uses inside its embedded cluster.
pub const EMBEDDED_DATABASE: &str = "warden";

#[derive(Debug, Error)]
pub enum DbError {
    #[error("database.url is not a valid PostgreSQL connection string: {0}")]
    BadUrl(tokio_postgres::Error),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("cannot build the connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// The database Warden runs against, and the embedded cluster when it owns one.
pub struct Database {
    pub pool: Pool,
    pub pg_config: tokio_postgres::Config,
    embedded: Option<EmbeddedCluster>,
}

impl Database {
    /// Connects to `database.url`, or starts the embedded cluster (creating Warden's
    /// database in it on first start). Does not run migrations.
    pub async fn open(config: &Config) -> Result<Database, DbError> {
        Database::open_with(config, false).await
    }

    /// Like [`Database::open`], but first tries the embedded cluster a running
    /// `warden serve` already owns (CLI commands run beside it).
    pub async fn open_shared(config: &Config) -> Result<Database, DbError> {
        Database::open_with(config, true).await
    }

    async fn open_with(config: &Config, attach: bool) -> Result<Database, DbError> {
        let (pg_config, embedded) = match &config.database.url {
            Some(url) => (
                tokio_postgres::Config::from_str(url).map_err(DbError::BadUrl)?,
                None,
            ),
            None => {
                let mut options = ClusterOptions::new(config.embedded_data_dir());
                options.bin_dir = config.database.embedded.bin_dir.clone();
                options.start_timeout = config.database.embedded.start_timeout;
                if let Some(port) = config.database.embedded.port {
                    options.port = port;
                }
                let attached = if attach {
                    EmbeddedCluster::attach(options.clone()).await
                } else {
                    None
                };
                let cluster = match attached {
                    Some(cluster) => cluster,
                    None => EmbeddedCluster::start(options).await?,
                };
                ensure_database(&cluster, EMBEDDED_DATABASE).await?;
                (cluster.pg_config(EMBEDDED_DATABASE), Some(cluster))
            }
        };
        let pool = pool(
            pg_config.clone(),
            config.database.pool_size,
            config.database.connect_timeout,
        )?;
        Ok(Database {
            pool,
            pg_config,
            embedded,
        })
    }

    /// Applies `migrations` on a dedicated connection (the advisory lock is per session).
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<migrate::Report, DbError> {
        let (mut client, connection) = self
            .pg_config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(DbError::Connect)?;
        let driver = tokio::spawn(connection);
        let report = migrate::run(&mut client, migrations).await;
        drop(client);
        let _ = driver.await;
        Ok(report?)
    }

    /// True when a connection from the pool answers a trivial query.
    pub async fn ping(&self) -> bool {
        match self.pool.get().await {
            Ok(client) => client.simple_query("").await.is_ok(),
            Err(_) => false,
        }
    }

    pub fn embedded_pid(&self) -> Option<u32> {
        self.embedded.as_ref().and_then(|c| c.pid())
    }

    /// Closes the pool and stops the embedded cluster, if any.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), DbError> {
        self.pool.close();
        if let Some(cluster) = self.embedded.as_mut() {
            cluster.stop(grace).await?;
        }
        Ok(())
    }
}

/// A pool over `pg_config`. Connections are checked with a cheap query on reuse only
/// after errors (`RecyclingMethod::Fast`): the audit writer and the call path must not
/// pay a round trip per checkout.
pub fn pool(
    pg_config: tokio_postgres::Config,
    size: usize,
    timeout: Duration,
) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        pg_config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()?)
}

/// Creates `name` in the cluster unless it exists.
pub async fn ensure_database(cluster: &EmbeddedCluster, name: &str) -> Result<(), DbError> {
    let (client, connection) = cluster
        .pg_config("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(DbError::Connect)?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        // Identifiers cannot be bound as parameters; `name` is ours, quoted anyway.
        client
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\"",
                name.replace('"', "\"\"")
            ))
            .await?;
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}
