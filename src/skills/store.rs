//! The skills in PostgreSQL (`skill_versions`): every change is a new version, a removal
//! a version without content. Changes take a transaction-scoped advisory lock per name,
//! so two replicas changing one skill at once number their versions one after the
//! other; callers run [`put`] and [`remove`] inside a READ COMMITTED transaction. Each
//! change is announced on [`super::CHANNEL`] when it commits.

use tokio_postgres::{GenericClient, IsolationLevel, Row, Transaction};

use super::{Skill, SkillAction};

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no database connection: {0}")]
    Connection(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

/// Runs `change` ([`put`], [`remove`]) in a READ COMMITTED transaction of its own —
/// whatever the database's default, since the per-name lock numbers versions one after
/// the other only when each statement sees what committed before it — and commits.
pub async fn in_transaction<T>(
    pool: &deadpool_postgres::Pool,
    change: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, tokio_postgres::Error>,
) -> Result<T, ChangeError> {
    let mut client = pool.get().await?;
    let transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?;
    let done = change(&transaction).await?;
    transaction.commit().await?;
    Ok(done)
}

/// A skill's current version, as listings show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkillInfo {
    pub name: String,
    pub version: i32,
    pub description: String,
    /// What the file names in `metadata.warden-scopes` (empty: the profile's default).
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// UTC, to the second.
    pub updated_at: String,
    pub updated_by: String,
}

/// One version in a skill's history; `sha256` is `None` for a removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub version: i32,
    pub sha256: Option<String>,
    pub description: Option<String>,
    pub created_at: String,
    pub created_by: String,
}

/// What [`put`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    Created {
        version: i32,
    },
    /// `previous` is the hex SHA-256 of the version replaced.
    Updated {
        version: i32,
        previous: String,
    },
    /// The file is the current version already.
    Unchanged {
        version: i32,
    },
}

impl Put {
    /// What it did to the skill; `None` when the file was its current version already.
    pub fn action(&self) -> Option<SkillAction> {
        match self {
            Put::Created { .. } => Some(SkillAction::Created),
            Put::Updated { .. } => Some(SkillAction::Updated),
            Put::Unchanged { .. } => None,
        }
    }

    /// The hex SHA-256 of the version this one replaced.
    pub fn previous(&self) -> Option<String> {
        match self {
            Put::Updated { previous, .. } => Some(previous.clone()),
            Put::Created { .. } | Put::Unchanged { .. } => None,
        }
    }

    pub fn version(&self) -> i32 {
        match self {
            Put::Created { version }
            | Put::Updated { version, .. }
            | Put::Unchanged { version } => *version,
        }
    }
}

/// When a version was made, as listings show it.
fn created_at() -> String {
    crate::db::utc_seconds("created_at")
}

/// Takes the name's lock and reads its newest version: its number and hash (`None` when
/// it is a removal), or nothing when the name was never used.
async fn lock_newest<C: GenericClient>(
    client: &C,
    name: &str,
) -> Result<Option<(i32, Option<Vec<u8>>)>, tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('warden.skill:' || $1, 0))",
            &[&name],
        )
        .await?;
    let row = client
        .query_opt(
            "SELECT version, sha256 FROM skill_versions WHERE name = $1 \
             ORDER BY version DESC LIMIT 1",
            &[&name],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Stores `skill` as its next version, unless it is the current one already.
pub async fn put<C: GenericClient>(
    client: &C,
    skill: &Skill,
    by: &str,
) -> Result<Put, tokio_postgres::Error> {
    let sha256 = skill.sha256();
    let newest = lock_newest(client, &skill.name).await?;
    let (version, outcome) = match newest {
        Some((version, Some(hash))) if hash == sha256 => {
            return Ok(Put::Unchanged { version });
        }
        Some((version, Some(hash))) => (
            version + 1,
            Put::Updated {
                version: version + 1,
                previous: hex::encode(hash),
            },
        ),
        Some((version, None)) => (
            version + 1,
            Put::Created {
                version: version + 1,
            },
        ),
        None => (1, Put::Created { version: 1 }),
    };
    announce(client, &skill.name).await?;
    client
        .execute(
            "INSERT INTO skill_versions (name, version, content, sha256, description, scopes, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &skill.name,
                &version,
                &skill.content,
                &sha256.as_slice(),
                &skill.description,
                &skill.scopes,
                &by,
            ],
        )
        .await?;
    Ok(outcome)
}

/// Removes skill `name` (a version without content); returns that version and the hex
/// hash of the one removed, or `None` when there is no such skill.
pub async fn remove<C: GenericClient>(
    client: &C,
    name: &str,
    by: &str,
) -> Result<Option<(i32, String)>, tokio_postgres::Error> {
    let Some((version, Some(hash))) = lock_newest(client, name).await? else {
        return Ok(None);
    };
    announce(client, name).await?;
    client
        .execute(
            "INSERT INTO skill_versions (name, version, created_by) VALUES ($1, $2, $3)",
            &[&name, &(version + 1), &by],
        )
        .await?;
    Ok(Some((version + 1, hex::encode(hash))))
}

/// Tells every running Warden, once the transaction commits, that skill `name` changed
/// ([`super::CHANNEL`]).
async fn announce<C: GenericClient>(client: &C, name: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&super::CHANNEL, &name])
        .await?;
    Ok(())
}

fn info(row: &Row) -> SkillInfo {
    let sha256: Vec<u8> = row.get("sha256");
    SkillInfo {
        name: row.get("name"),
        version: row.get("version"),
        description: row.get("description"),
        scopes: row.get("scopes"),
        sha256: hex::encode(sha256),
        updated_at: row.get("at"),
        updated_by: row.get("created_by"),
    }
}

/// The newest version of every skill that is not removed, by name; with `content`
/// when asked.
fn current_sql(with_content: bool) -> String {
    format!(
        "SELECT * FROM (SELECT DISTINCT ON (name) name, version, description, scopes, \
         sha256, {} AS at, created_by{} FROM skill_versions \
         ORDER BY name, version DESC) newest WHERE sha256 IS NOT NULL ORDER BY name",
        created_at(),
        if with_content { ", content" } else { "" }
    )
}

/// Every skill there is now (not removed), by name.
pub async fn current<C: GenericClient>(
    client: &C,
) -> Result<Vec<SkillInfo>, tokio_postgres::Error> {
    let rows = client.query(&current_sql(false), &[]).await?;
    Ok(rows.iter().map(info).collect())
}

/// Every skill there is now (not removed), by name, with its file.
pub async fn current_with_files<C: GenericClient>(
    client: &C,
) -> Result<Vec<(SkillInfo, String)>, tokio_postgres::Error> {
    let rows = client.query(&current_sql(true), &[]).await?;
    Ok(rows
        .iter()
        .map(|row| (info(row), row.get("content")))
        .collect())
}

/// Skill `name` with its file: the current version, or `version`. `None` when there is
/// no such skill or version, or that version is a removal (an earlier version of a
/// skill removed since is still found: the caller decides whether it may be read).
pub async fn get<C: GenericClient>(
    client: &C,
    name: &str,
    version: Option<i32>,
) -> Result<Option<(SkillInfo, String)>, tokio_postgres::Error> {
    let columns = format!(
        "name, version, description, scopes, sha256, {} AS at, created_by, content",
        created_at()
    );
    let row = match version {
        Some(version) => {
            client
                .query_opt(
                    &format!(
                        "SELECT {columns} FROM skill_versions WHERE name = $1 AND version = $2"
                    ),
                    &[&name, &version],
                )
                .await?
        }
        None => {
            client
                .query_opt(
                    &format!(
                        "SELECT {columns} FROM skill_versions WHERE name = $1 \
                         ORDER BY version DESC LIMIT 1"
                    ),
                    &[&name],
                )
                .await?
        }
    };
    Ok(row.and_then(|row| {
        let content: Option<String> = row.get("content");
        content.map(|content| (info(&row), content))
    }))
}

/// The newest version of skill `name` whose file hashes to `sha256`, if any.
pub async fn version_with<C: GenericClient>(
    client: &C,
    name: &str,
    sha256: &[u8; 32],
) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT version FROM skill_versions WHERE name = $1 AND sha256 = $2 \
             ORDER BY version DESC LIMIT 1",
            &[&name, &sha256.as_slice()],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Every version of skill `name`, newest first (empty when the name was never used).
pub async fn history<C: GenericClient>(
    client: &C,
    name: &str,
) -> Result<Vec<Version>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT version, sha256, description, {}, created_by FROM skill_versions \
                 WHERE name = $1 ORDER BY version DESC",
                created_at()
            ),
            &[&name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Version {
            version: row.get(0),
            sha256: row.get::<_, Option<Vec<u8>>>(1).map(hex::encode),
            description: row.get(2),
            created_at: row.get(3),
            created_by: row.get(4),
        })
        .collect())
}
