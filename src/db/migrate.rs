//! Schema migrations: numbered SQL files, embedded in the binary, applied in order.
//!
//! Each migration runs in its own transaction and is recorded in
//! `warden_schema_migrations` with the SHA-256 of its text. The whole run holds a
//! session-level advisory lock, so replicas starting together apply each migration
//! exactly once: the second waits, then finds everything applied. An applied migration
//! whose text has since changed stops start-up; silently diverging schemas are worse
//! than a refusal to start.
//!
//! The built-in set lives in `schema/` and is collected at build time; extensions add
//! their own sets under their own namespace through the registry (`extension.rs`).

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_postgres::Client;

/// One migration. Versions order migrations within a namespace.
#[derive(Clone, Debug)]
pub struct Migration {
    pub namespace: &'static str,
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

#[derive(Debug, Error)]
pub enum MigrateError {
    #[error(
        "migration {namespace}/{version:04} ({name}) was applied with checksum {applied} but the binary's copy has {current}: \
         an applied migration must never change; add a new migration instead"
    )]
    ChecksumMismatch {
        namespace: String,
        version: u32,
        name: String,
        applied: String,
        current: String,
    },
    #[error("migration {namespace}/{version:04} ({name}) failed: {source}")]
    Failed {
        namespace: String,
        version: u32,
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("two migrations share {namespace}/{version:04}: {first} and {second}")]
    DuplicateVersion {
        namespace: String,
        version: u32,
        first: String,
        second: String,
    },
    #[error("migration bookkeeping failed: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// Arbitrary constant: the advisory-lock key all Warden replicas agree on.
const LOCK_KEY: i64 = 0x5741_5244_454e_0001;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// The migrations shipped in `schema/`, in order.
pub fn builtin() -> Vec<Migration> {
    builtin::MIGRATIONS
        .iter()
        .map(|(file, sql)| {
            let (number, name) = file.split_once('_').unwrap_or(("0", file));
            Migration {
                namespace: "warden",
                version: number.parse().unwrap_or(0),
                name: name.trim_end_matches(".sql"),
                sql,
            }
        })
        .collect()
}

/// What one run did.
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<String>,
    pub already_applied: usize,
}

/// Applies every pending migration in `set` (ordered by namespace then version).
pub async fn run(client: &mut Client, set: &[Migration]) -> Result<Report, MigrateError> {
    let mut set = set.to_vec();
    set.sort_by(|a, b| (a.namespace, a.version).cmp(&(b.namespace, b.version)));
    for pair in set.windows(2) {
        if (pair[0].namespace, pair[0].version) == (pair[1].namespace, pair[1].version) {
            return Err(MigrateError::DuplicateVersion {
                namespace: pair[0].namespace.into(),
                version: pair[0].version,
                first: pair[0].name.into(),
                second: pair[1].name.into(),
            });
        }
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_locked(client, &set).await;
    // Released explicitly; the session ending would release it too.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let report = result?;
    unlock?;
    Ok(report)
}

async fn apply_locked(client: &mut Client, set: &[Migration]) -> Result<Report, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS warden_schema_migrations (
                namespace  TEXT NOT NULL,
                version    INTEGER NOT NULL,
                name       TEXT NOT NULL,
                checksum   TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (namespace, version)
            )",
        )
        .await?;
    let rows = client
        .query(
            "SELECT namespace, version, checksum FROM warden_schema_migrations",
            &[],
        )
        .await?;
    let applied: std::collections::HashMap<(String, i32), String> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let mut report = Report::default();
    for migration in set {
        let current = migration.checksum();
        let key = (migration.namespace.to_owned(), migration.version as i32);
        if let Some(recorded) = applied.get(&key) {
            if *recorded != current {
                return Err(MigrateError::ChecksumMismatch {
                    namespace: migration.namespace.into(),
                    version: migration.version,
                    name: migration.name.into(),
                    applied: recorded.clone(),
                    current,
                });
            }
            report.already_applied += 1;
            continue;
        }
        let failed = |source| MigrateError::Failed {
            namespace: migration.namespace.into(),
            version: migration.version,
            name: migration.name.into(),
            source,
        };
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO warden_schema_migrations (namespace, version, name, checksum) VALUES ($1, $2, $3, $4)",
            &[&migration.namespace, &(migration.version as i32), &migration.name, &current],
        )
        .await?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            namespace = migration.namespace,
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        report.applied.push(format!(
            "{}/{:04}_{}",
            migration.namespace, migration.version, migration.name
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_migrations_are_numbered_and_unique() {
        let set = builtin();
        assert!(!set.is_empty());
        let mut versions: Vec<u32> = set.iter().map(|m| m.version).collect();
        assert!(
            versions.iter().all(|v| *v > 0),
            "every file starts with a number"
        );
        versions.dedup();
        assert_eq!(versions.len(), set.len());
    }
}
