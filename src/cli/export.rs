//! `warden export --dir D` and `warden import --dir D [--dry-run] [--prune]`: the state in
//! PostgreSQL as Markdown files for git (see `crate::export`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::ProfileArg;
use crate::db::Database;
use crate::export::Change;
use crate::policy::PolicyEngine;

#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// The folder to write (created when missing).
    #[arg(long)]
    dir: PathBuf,
    #[command(flatten)]
    profile: ProfileArg,
}

#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The folder an export wrote (its `users/`, `tools/` and `skills/` are applied).
    #[arg(long)]
    dir: PathBuf,
    /// Print what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also undo what has no file: disable the users and service accounts with none under
    /// `users/`, remove the skills with no folder under `skills/`.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    profile: ProfileArg,
}

pub(crate) async fn export(args: ExportArgs) -> Result<ExitCode> {
    let config = args.profile.load()?;
    let database = Database::open_shared(&config).await?;
    let mut client = database.pool.get().await?;
    // One snapshot for every folder: a change made meanwhile is all in or all out.
    let done = async {
        let transaction = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let done = crate::export::export(&*transaction, &args.dir).await?;
        transaction.commit().await?;
        Ok::<_, anyhow::Error>(done)
    }
    .await;
    drop(client);
    database.shutdown(config.server.shutdown_grace).await?;
    let done = done?;
    println!(
        "exported to {}: {} written, {} unchanged, {} removed",
        args.dir.display(),
        done.written,
        done.unchanged,
        done.removed
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn import(args: ImportArgs) -> Result<ExitCode> {
    let config = args.profile.load()?;
    let policy = PolicyEngine::from_config(&config);
    let database = Database::open_shared(&config).await?;
    let mut client = database.pool.get().await?;
    // One transaction: an import that fails half-way changes nothing.
    let outcome = async {
        // READ COMMITTED whatever the database's default: a skill's versions are numbered
        // under a lock, by reads that must see what committed before it was taken.
        let transaction = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let changes = crate::export::import(
            &*transaction,
            &args.dir,
            &|role| policy.has_role(role),
            crate::export::ImportMode {
                dry_run: args.dry_run,
                prune: args.prune,
            },
        )
        .await?;
        transaction.commit().await?;
        Ok::<_, anyhow::Error>(changes)
    }
    .await;
    drop(client);
    let mut unaudited = 0;
    if let Ok(changes) = &outcome
        && !args.dry_run
    {
        unaudited = record_changes(&database.pool, changes).await;
    }
    database.shutdown(config.server.shutdown_grace).await?;
    let changes = outcome?;
    let verb = if args.dry_run {
        "would change"
    } else {
        "changed"
    };
    for change in &changes {
        println!("{verb}: {change}");
    }
    println!(
        "{} change(s) from {}{}",
        changes.len(),
        args.dir.display(),
        if args.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    if unaudited > 0 {
        // Made but not in the trail: a script must not take this run for a clean one.
        eprintln!("error: {unaudited} change(s) were made but could not be audited (above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The import's changes are recorded here, once, in the trail — identity changes,
/// tool approvals and skills, as `warden user` and `warden skill` record theirs — in one
/// sealed batch. Returns how many could not be recorded (all of them, or none).
async fn record_changes(pool: &deadpool_postgres::Pool, changes: &[Change]) -> usize {
    let mut events = Vec::with_capacity(changes.len());
    for change in changes {
        if let Some((kind, name, detail)) = change.identity_notice() {
            events.push(crate::auth::service::identity_change_event(
                kind,
                name,
                detail,
                &crate::audit::cli_actor(),
            ));
            continue;
        }
        let event = match change {
            Change::Approved {
                server,
                tool,
                definition,
                ..
            } => {
                // `apply` fills it in for every approval it made; without it there was
                // none to record.
                let Some(definition) = definition else {
                    continue;
                };
                crate::gateway::pins::approval_event(
                    "user",
                    &crate::audit::cli_actor(),
                    server,
                    tool,
                    definition,
                    Some("import"),
                )
            }
            Change::Skill {
                skill,
                stored: Some(stored),
                ..
            } => {
                // Stored as planned unless someone stored the same file meanwhile.
                let Some(change) = crate::skills::SkillChange::stored(
                    skill,
                    stored,
                    crate::skills::Origin::Import,
                ) else {
                    continue;
                };
                change.event("user", &crate::audit::cli_actor())
            }
            Change::SkillRemoved {
                name,
                removed: Some((version, previous)),
            } => crate::skills::SkillChange::removed(
                name,
                *version,
                previous.clone(),
                crate::skills::Origin::Import,
            )
            .event("user", &crate::audit::cli_actor()),
            _ => continue,
        };
        events.push(event);
    }
    let count = events.len();
    match crate::audit::record_all_now(pool, events).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("warning: the import's {count} change(s) could not be audited: {error}");
            count
        }
    }
}
