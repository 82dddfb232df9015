//! `warden skill put FILE`, `warden skill list`, `warden skill show NAME [--version N]`,
//! `warden skill remove NAME` (and `warden skill pull`, in `skill_pull`, for users): the
//! skills in PostgreSQL from the command line, as the
//! admin API changes them (see `crate::skills`). Each change is a new version, recorded
//! as a `skill.changed` audit event with actor `cli:<os user>`, and announced to every
//! running Warden, which serves it at once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use super::ProfileArg;
use crate::db::Database;
use crate::skills::store;
use crate::skills::{Origin, Skill, SkillChange};

#[derive(Subcommand)]
pub(crate) enum SkillCommand {
    /// Store a SKILL.md as its skill's next version (the name is the file's `name`).
    Put {
        file: PathBuf,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// List the current skills: name, version, scopes, when and by whom changed.
    List {
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Print a skill's SKILL.md (the current version, or `--version N`).
    Show {
        name: String,
        #[arg(long)]
        version: Option<i32>,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Remove a skill (its versions stay in the history).
    Remove {
        name: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Copy the skills a Warden gives you into a folder (e.g. ~/.claude/skills), over
    /// HTTP with your own token; no profile needed.
    Pull(super::skill_pull::PullArgs),
}

pub(crate) async fn run(command: SkillCommand) -> Result<ExitCode> {
    let profile = match command {
        SkillCommand::Pull(args) => return super::skill_pull::pull(args).await,
        SkillCommand::Put { ref profile, .. }
        | SkillCommand::List { ref profile }
        | SkillCommand::Show { ref profile, .. }
        | SkillCommand::Remove { ref profile, .. } => profile.clone(),
    };
    let config = profile.load()?;
    let database = Database::open_shared(&config).await?;
    let result = execute(&database.pool, config.server.max_body_bytes, command).await;
    database.shutdown(config.server.shutdown_grace).await?;
    result
}

async fn execute(
    pool: &deadpool_postgres::Pool,
    max_bytes: usize,
    command: SkillCommand,
) -> Result<ExitCode> {
    let actor = crate::audit::cli_actor();
    match command {
        SkillCommand::Put { file, .. } => {
            let size = std::fs::metadata(&file)
                .with_context(|| format!("reading {}", file.display()))?
                .len();
            if size > max_bytes as u64 {
                bail!(
                    "{}: {size} bytes, more than a skill may hold ({max_bytes}, server.max_body_bytes)",
                    file.display()
                );
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let skill =
                Skill::parse(text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let stored =
                store::in_transaction(pool, async |t| store::put(t, &skill, &actor).await).await?;
            let Some(change) = SkillChange::stored(&skill, &stored, Origin::Cli) else {
                println!(
                    "skill `{}` unchanged (version {})",
                    skill.name,
                    stored.version()
                );
                return Ok(ExitCode::SUCCESS);
            };
            let audited = record(pool, &change, &actor).await;
            println!(
                "skill `{}` {} (version {})",
                skill.name,
                change.action.as_str(),
                stored.version()
            );
            if !audited {
                return Ok(ExitCode::FAILURE);
            }
        }
        SkillCommand::List { .. } => {
            let client = pool.get().await?;
            for skill in store::current(&**client).await? {
                let scopes = if skill.scopes.is_empty() {
                    "(skills.scopes)".to_owned()
                } else {
                    skill.scopes.join(" ")
                };
                println!(
                    "{}\tversion={}\tscopes={scopes}\tupdated={}\tby={}",
                    skill.name, skill.version, skill.updated_at, skill.updated_by
                );
            }
        }
        SkillCommand::Show { name, version, .. } => {
            let client = pool.get().await?;
            let Some((_, content)) = store::get(&**client, &name, version).await? else {
                bail!(
                    "no skill `{name}`{}",
                    version.map(|v| format!(" version {v}")).unwrap_or_default()
                );
            };
            print!("{content}");
        }
        SkillCommand::Pull(_) => unreachable!("handled by `run` before the database is opened"),
        SkillCommand::Remove { name, .. } => {
            let removed =
                store::in_transaction(pool, async |t| store::remove(t, &name, &actor).await)
                    .await?;
            let Some((version, previous)) = removed else {
                bail!("no skill `{name}`");
            };
            let change = SkillChange::removed(&name, version, previous, Origin::Cli);
            let audited = record(pool, &change, &actor).await;
            println!("skill `{name}` removed (version {version})");
            if !audited {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Records `change` in the trail; false (said on stderr) when it could not be: the
/// change was made, and the command then fails so that a script notices.
async fn record(pool: &deadpool_postgres::Pool, change: &SkillChange<'_>, actor: &str) -> bool {
    match crate::audit::record_now(pool, change.event("user", actor)).await {
        Ok(()) => true,
        Err(error) => {
            eprintln!(
                "error: skill `{}` was changed but the change could not be audited: {error}",
                change.name
            );
            false
        }
    }
}
