//! `warden secret set NAME [--user U]` (value on stdin), `warden secret list`,
//! `warden secret delete NAME [--user U]`. Values are never printed; `list` shows names,
//! owners and timestamps only.

use std::io::Read as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use super::ProfileArg;
use crate::db::Database;
use crate::secrets::{Redacted, SecretStore};

#[derive(Subcommand)]
pub(crate) enum SecretCommand {
    /// Store a secret; the value is read from stdin (a trailing newline is dropped).
    Set {
        name: String,
        /// Store it for one user (`user_secrets` of per-user servers).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// List secret names, owners and timestamps (never values).
    List {
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Delete a secret.
    Delete {
        name: String,
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        profile: ProfileArg,
    },
}

pub(crate) async fn run(command: SecretCommand) -> Result<ExitCode> {
    let profile = match &command {
        SecretCommand::Set { profile, .. }
        | SecretCommand::List { profile }
        | SecretCommand::Delete { profile, .. } => profile.clone(),
    };
    let config = profile.load()?;
    let key = super::instance::master_key(&config)
        .context("the secret store needs the same master key as `warden serve`")?;
    let database = Database::open_shared(&config).await?;
    super::instance::verify_master_key(&database, &key).await?;
    let store = SecretStore::new(database.pool.clone(), Arc::new(key));
    let result = execute(&store, command).await;
    database.shutdown(config.server.shutdown_grace).await?;
    result
}

async fn execute(store: &SecretStore, command: SecretCommand) -> Result<ExitCode> {
    match command {
        SecretCommand::Set { name, user, .. } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the secret value from stdin")?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            if value.is_empty() {
                bail!(
                    "no value on stdin: pipe the secret in, e.g. `printf %s \"$TOKEN\" | warden secret set {name}`"
                );
            }
            store
                .set(&name, user.as_deref(), &Redacted::new(value))
                .await?;
            println!(
                "secret `{name}` stored{}",
                user.map(|u| format!(" for user `{u}`")).unwrap_or_default()
            );
        }
        SecretCommand::List { .. } => {
            let secrets = store.list().await?;
            if secrets.is_empty() {
                println!("no secrets stored");
            }
            for secret in secrets {
                println!(
                    "{}\t{}\tcreated {}\tupdated {}",
                    secret.name,
                    secret.owner.as_deref().unwrap_or("(shared)"),
                    humantime::format_rfc3339_seconds(secret.created_at),
                    humantime::format_rfc3339_seconds(secret.updated_at)
                );
            }
        }
        SecretCommand::Delete { name, user, .. } => {
            store.delete(&name, user.as_deref()).await?;
            println!("secret `{name}` deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
