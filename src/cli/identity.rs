//! Identity from the command line, beside a running `warden serve` (same database; the
//! embedded cluster is attached, not started twice):
//!
//! - `warden user add NAME --role R` (password on stdin), `user list`, `user disable
//!   NAME`, `user enable NAME`, `user passwd NAME` (password on stdin; signs the user
//!   out everywhere), `user sign-out NAME`, `user passkeys [NAME]`, `user passkey-link
//!   NAME [--ttl 1h]`, `user remove-passkey ID`;
//! - `warden token issue --user NAME --scopes "a b" [--ttl 1h]`: prints an access token
//!   (creating the user, without a password, if needed);
//! - `warden keys rotate`, `warden keys list`;
//! - `warden apikey create --name N --scopes "…" [--ttl 90d]` (prints the key once),
//!   `apikey list`, `apikey revoke ID`.
//!
//! Every change is announced on `warden_identity`, so running servers drop what they
//! cached, and recorded on the audit trail by the command itself (`record`): once,
//! whether or not a server is running.

use std::io::Read as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::json;
use uuid::Uuid;

use super::ProfileArg;
use crate::auth::secret::Redacted;
use crate::auth::service::{identity_change_event, issue_offline};
use crate::auth::tokens::Grant;
use crate::auth::{PrincipalKind, Scopes, keys, passkeys, passwords, store};
use crate::config::Config;
use crate::db::Database;
use crate::policy::PolicyEngine;
use crate::secrets::MasterKey;

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user; the password is read from stdin.
    Add {
        name: String,
        /// A role from the profile's `roles:` (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// List users, service accounts and federated identities.
    List {
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Disable an identity: its tokens and API keys stop working at once.
    Disable {
        name: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Enable a disabled identity again.
    Enable {
        name: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Set a user's password (read from stdin); signs them out everywhere, as
    /// `sign-out` does.
    Passwd {
        name: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Sign an identity out everywhere: every login session, authorization code,
    /// refresh token and access token issued to it so far stops working (API keys
    /// stay: `apikey revoke`).
    SignOut {
        name: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// List passkeys: a user's, or everyone's. Users add theirs on `/oauth/account`.
    Passkeys {
        name: Option<String>,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Print a one-time sign-in link with which a user adds a passkey (e.g. one without
    /// a password); good once, until `--ttl` passes.
    PasskeyLink {
        name: String,
        /// How long the link stays good (at most 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Remove a passkey by its id (from `user passkeys`), e.g. of a lost device.
    RemovePasskey {
        id: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Print an access token signed by Warden's issuer.
    Issue {
        #[arg(long)]
        user: String,
        /// Space-separated scopes (`"tools:read tools:write"`, or `"*"`).
        #[arg(long)]
        scopes: String,
        /// Lifetime (default: identity.access_token_ttl; at most identity.max_token_ttl).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        profile: ProfileArg,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a new signing key; the old one keeps verifying until its tokens expire.
    Rotate {
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// List signing keys.
    List {
        #[command(flatten)]
        profile: ProfileArg,
    },
}

#[derive(Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Create an API key for a service account (created if needed); printed once.
    Create {
        /// The service account.
        #[arg(long)]
        name: String,
        /// Space-separated scopes the key grants.
        #[arg(long)]
        scopes: String,
        /// Roles of a service account created now (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// List API keys (prefixes only).
    List {
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Revoke an API key by id, or every key of a service account with `--name`.
    Revoke {
        id: Option<Uuid>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        profile: ProfileArg,
    },
}

fn read_password() -> Result<Redacted<String>> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .context("reading the password from stdin")?;
    while value.ends_with('\n') || value.ends_with('\r') {
        value.pop();
    }
    if value.is_empty() {
        bail!(
            "no password on stdin: pipe it in, e.g. `printf %s \"$PASSWORD\" | warden user add …`"
        );
    }
    crate::auth::passwords::Passwords::check_policy(&value)?;
    Ok(Redacted::new(value))
}

fn parse_ttl(text: &str) -> Result<Duration> {
    crate::config::units::parse_duration(text).map_err(|e| anyhow::anyhow!("--ttl `{text}`: {e}"))
}

async fn open(profile: &ProfileArg) -> Result<(Config, Database)> {
    let config = profile.load()?;
    let database = Database::open_shared(&config).await?;
    Ok((config, database))
}

fn master_key(config: &Config) -> Result<MasterKey> {
    MasterKey::load(
        &config.server.state_dir,
        config.server.master_key_file.as_deref(),
        true,
        &|name| std::env::var(name).ok(),
    )
    .context("signing needs the same master key as `warden serve`")
}

fn check_roles(config: &Config, roles: &[String]) -> Result<()> {
    let policy = PolicyEngine::from_config(config);
    for role in roles {
        if !policy.has_role(role) {
            bail!(
                "no role `{role}` in the profile (roles: {})",
                config.roles.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(())
}

fn when(time: Option<std::time::SystemTime>) -> String {
    time.map_or_else(
        || "-".into(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

pub(crate) async fn user(command: UserCommand) -> Result<ExitCode> {
    match command {
        UserCommand::Add {
            name,
            roles,
            profile,
        } => {
            let password = read_password()?;
            let (config, database) = open(&profile).await?;
            check_roles(&config, &roles)?;
            let hash = tokio::task::spawn_blocking(move || {
                passwords::hash_blocking(password.expose().as_bytes())
            })
            .await??;
            let client = database.pool.get().await?;
            let row = store::create(&**client, &name, "user", &roles, Some(&hash)).await?;
            announce(
                &database,
                &**client,
                "user.added",
                &name,
                json!({"origin": "cli", "roles": roles}),
            )
            .await?;
            println!(
                "user `{}` added with role(s) {}",
                row.name,
                row.roles.join(", ")
            );
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        UserCommand::List { profile } => {
            let (config, database) = open(&profile).await?;
            let client = database.pool.get().await?;
            let rows = store::list(&**client).await?;
            if rows.is_empty() {
                println!("no identities");
            }
            for row in rows {
                println!(
                    "{}\t{}\troles={}\t{}\tpassword={}\tcreated {}\tlast login {}",
                    row.name,
                    row.kind,
                    row.roles.join(","),
                    if row.disabled { "disabled" } else { "enabled" },
                    if row.has_password { "set" } else { "none" },
                    when(Some(row.created_at)),
                    when(row.last_login_at),
                );
            }
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        UserCommand::Passkeys { name, profile } => {
            let (config, database) = open(&profile).await?;
            let client = database.pool.get().await?;
            let keys = passkeys::list(&**client, name.as_deref()).await?;
            if keys.is_empty() {
                println!("no passkeys");
            }
            for key in keys {
                println!(
                    "{}\t{}\t{}\t{}\tcreated {}\tlast used {}",
                    key.id,
                    key.user,
                    key.label,
                    if key.backed_up {
                        "synced"
                    } else {
                        "device-bound"
                    },
                    when(Some(key.created_at)),
                    when(key.last_used_at),
                );
            }
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        UserCommand::PasskeyLink { name, ttl, profile } => {
            let ttl = parse_ttl(&ttl)?;
            if ttl > passkeys::MAX_LINK_TTL || ttl.is_zero() {
                bail!("--ttl must be between 1s and 7d");
            }
            let (config, database) = open(&profile).await?;
            if !config.identity.passkeys.enabled {
                bail!(
                    "passkeys are off (identity.passkeys; browsers offer them on https pages and on localhost only)"
                );
            }
            let master = master_key(&config)?;
            let client = database.pool.get().await?;
            let row = store::find(&**client, &name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no identity named `{name}`"))?;
            if !row.can_sign_in() {
                bail!("`{name}` is not an enabled user");
            }
            let expires = std::time::SystemTime::now() + ttl;
            let exp = expires
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let code = passkeys::sign_in_link_code(&master, &row, exp);
            announce(
                &database,
                &**client,
                "user.sign_in_link_issued",
                &name,
                json!({"origin": "cli", "expires": humantime::format_rfc3339_seconds(expires).to_string()}),
            ).await?;
            println!(
                "{}/oauth/account/link?code={code}",
                config.server.public_url
            );
            eprintln!(
                "a one-time sign-in link for `{name}`, good until {}: give it to them privately",
                humantime::format_rfc3339_seconds(expires)
            );
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        UserCommand::RemovePasskey { id, profile } => {
            let (config, database) = open(&profile).await?;
            let client = database.pool.get().await?;
            let Some(owner) = passkeys::remove(&**client, &id).await? else {
                drop(client);
                database.shutdown(config.server.shutdown_grace).await?;
                bail!("no passkey has the id `{id}` (see `warden user passkeys`)");
            };
            announce(
                &database,
                &**client,
                "user.passkey_removed",
                &owner,
                json!({"origin": "cli", "passkey": id}),
            )
            .await?;
            println!("passkey `{id}` of `{owner}` removed");
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        UserCommand::Disable { name, profile } => return set_disabled(name, profile, true).await,
        UserCommand::Enable { name, profile } => return set_disabled(name, profile, false).await,
        UserCommand::Passwd { name, profile } => {
            let password = read_password()?;
            let (config, database) = open(&profile).await?;
            let hash = tokio::task::spawn_blocking(move || {
                passwords::hash_blocking(password.expose().as_bytes())
            })
            .await??;
            let mut client = database.pool.get().await?;
            // One transaction: the new password and the sign-out happen together.
            let transaction = client.transaction().await?;
            store::set_password(&*transaction, &name, &hash).await?;
            store::notify(
                &*transaction,
                "user.password_changed",
                &name,
                json!({"origin": "cli"}),
            )
            .await?;
            let signed_out = store::sign_out(&transaction, &name, "cli").await?;
            transaction.commit().await?;
            let revoked = signed_out.revoked;
            // Both rows in one batch: neither is written without the other.
            record_all(
                &database,
                &[
                    ("user.password_changed", &name, json!({"origin": "cli"})),
                    (store::SIGNED_OUT_NOTICE, &name, signed_out.detail),
                ],
            )
            .await?;
            println!(
                "password of `{name}` changed; signed out everywhere ({revoked} refresh tokens revoked)"
            );
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        UserCommand::SignOut { name, profile } => {
            let (config, database) = open(&profile).await?;
            let mut client = database.pool.get().await?;
            let transaction = client.transaction().await?;
            let signed_out = store::sign_out(&transaction, &name, "cli").await?;
            transaction.commit().await?;
            let revoked = signed_out.revoked;
            record_all(
                &database,
                &[(store::SIGNED_OUT_NOTICE, &name, signed_out.detail)],
            )
            .await?;
            println!("`{name}` signed out everywhere ({revoked} refresh tokens revoked)");
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Records a change made here on the audit trail, then tells running servers of it.
///
/// Used for changes nothing caches (a new user or key, a token, a sign-in link, a
/// removed passkey, a rotated key — servers reload on an unknown `kid` anyway): the
/// row is written first, and a notice that cannot be sent is a warning, not a failure
/// that would hide a credential already made (`apikey create`, `token issue` print it
/// after this). Revocations send their notice in the change's own transaction instead.
async fn announce<C: tokio_postgres::GenericClient>(
    database: &Database,
    client: &C,
    kind: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<()> {
    record(database, kind, subject, detail.clone()).await?;
    if let Err(error) = store::notify(client, kind, subject, detail).await {
        eprintln!("warning: running servers were not told of {kind} of `{subject}`: {error}");
    }
    Ok(())
}

/// Records a change made here on the audit trail, as its own sealed batch: once,
/// whether or not a server is running. The change is in effect already; a row that
/// cannot be written is an error saying so, not a silent gap.
async fn record(
    database: &Database,
    kind: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<()> {
    record_all(database, &[(kind, subject, detail)]).await
}

/// [`record`] for the changes of one command (kind, subject, detail), in one batch.
async fn record_all(
    database: &Database,
    changes: &[(&str, &str, serde_json::Value)],
) -> Result<()> {
    let actor = crate::audit::cli_actor();
    let events = changes
        .iter()
        .map(|(kind, subject, detail)| identity_change_event(kind, subject, detail.clone(), &actor))
        .collect();
    crate::audit::record_all_now(&database.pool, events)
        .await
        .with_context(|| {
            let what: Vec<String> = changes
                .iter()
                .map(|(kind, subject, _)| format!("{kind} of `{subject}`"))
                .collect();
            format!(
                "the change ({}) was made, but its audit row could not be written",
                what.join(", ")
            )
        })
}

async fn set_disabled(name: String, profile: ProfileArg, disabled: bool) -> Result<ExitCode> {
    let (config, database) = open(&profile).await?;
    let mut client = database.pool.get().await?;
    // One transaction: the change and the notice servers drop their cached
    // verifications on (delivered at commit) happen together.
    let transaction = client.transaction().await?;
    store::set_disabled(&*transaction, &name, disabled).await?;
    let kind = if disabled {
        "user.disabled"
    } else {
        "user.enabled"
    };
    store::notify(&*transaction, kind, &name, json!({"origin": "cli"})).await?;
    transaction.commit().await?;
    record(&database, kind, &name, json!({"origin": "cli"})).await?;
    println!("`{name}` {}", if disabled { "disabled" } else { "enabled" });
    drop(client);
    database.shutdown(config.server.shutdown_grace).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn token(command: TokenCommand) -> Result<ExitCode> {
    let TokenCommand::Issue {
        user,
        scopes,
        ttl,
        profile,
    } = command;
    let (config, database) = open(&profile).await?;
    let key = master_key(&config)?;
    let ttl = match ttl {
        Some(text) => parse_ttl(&text)?,
        None => config.identity.access_token_ttl,
    };
    if ttl > config.identity.max_token_ttl {
        bail!(
            "--ttl is longer than identity.max_token_ttl ({})",
            humantime::format_duration(config.identity.max_token_ttl)
        );
    }
    let scopes = Scopes::parse(&scopes);
    if scopes.is_empty() {
        bail!("--scopes must name at least one scope");
    }
    let mut client = database.pool.get().await?;
    let (row, created) = store::ensure(&**client, &user, "user", &[]).await?;
    if row.disabled {
        bail!("`{user}` is disabled");
    }
    let issued = issue_offline(
        &mut client,
        &key,
        &config.identity,
        &Grant {
            subject: row.name.clone(),
            client_id: "warden-cli".into(),
            scopes,
            roles: row.roles.clone(),
            kind: PrincipalKind::User,
            family: None,
            session_epoch: row.session_epoch,
            api_key: None,
            ttl,
        },
    )
    .await?;
    announce(
        &database,
        &**client,
        "token.issued",
        &issued.jti,
        json!({"origin": "cli", "user": user, "scopes": issued.scopes.to_header_value(), "user_created": created}),
    ).await?;
    if created {
        eprintln!("created user `{user}` (no password, no roles)");
    }
    println!("{}", issued.token.expose());
    drop(client);
    database.shutdown(config.server.shutdown_grace).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn keys_command(command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::Rotate { profile } => {
            let (config, database) = open(&profile).await?;
            let key = master_key(&config)?;
            let mut client = database.pool.get().await?;
            let (kid, retired) = keys::rotate(&mut client, &key).await?;
            announce(
                &database,
                &**client,
                "keys.rotated",
                &kid,
                json!({"origin": "cli", "retired": retired}),
            )
            .await?;
            println!(
                "new signing key {kid}; retired {} (they verify until their tokens expire)",
                if retired.is_empty() {
                    "none".to_owned()
                } else {
                    retired.join(", ")
                }
            );
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        KeysCommand::List { profile } => {
            let (config, database) = open(&profile).await?;
            let client = database.pool.get().await?;
            for key in keys::list(&**client).await? {
                println!(
                    "{}\t{}\tcreated {}\t{}",
                    key.kid,
                    key.algorithm,
                    when(Some(key.created_at)),
                    match key.retired_at {
                        None => "active".to_owned(),
                        Some(at) => format!(
                            "retired {}, verifies until {}",
                            when(Some(at)),
                            when(Some(key.verifies_until))
                        ),
                    }
                );
            }
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn apikey(command: ApiKeyCommand) -> Result<ExitCode> {
    match command {
        ApiKeyCommand::Create {
            name,
            scopes,
            roles,
            ttl,
            profile,
        } => {
            let (config, database) = open(&profile).await?;
            check_roles(&config, &roles)?;
            let scopes = Scopes::parse(&scopes);
            if scopes.is_empty() {
                bail!("--scopes must name at least one scope");
            }
            let ttl = ttl.as_deref().map(parse_ttl).transpose()?;
            let client = database.pool.get().await?;
            let (row, _) = store::ensure(&**client, &name, "service", &roles).await?;
            let key = store::create_api_key(&**client, row.id, &scopes, ttl).await?;
            announce(
                &database,
                &**client,
                "apikey.created",
                &name,
                json!({"origin": "cli", "key_id": key.id, "prefix": key.prefix, "scopes": scopes.to_header_value()}),
            ).await?;
            eprintln!(
                "API key {} ({}) for `{name}`; it is shown once:",
                key.id, key.prefix
            );
            println!("{}", key.key.expose());
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        ApiKeyCommand::List { profile } => {
            let (config, database) = open(&profile).await?;
            let client = database.pool.get().await?;
            for key in store::list_api_keys(&**client).await? {
                println!(
                    "{}\t{}\t{}\tscopes={}\tcreated {}\texpires {}\t{}",
                    key.id,
                    key.owner,
                    key.prefix,
                    key.scopes,
                    when(Some(key.created_at)),
                    when(key.expires_at),
                    key.revoked_at
                        .map_or("active".into(), |t| format!("revoked {}", when(Some(t)))),
                );
            }
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
        }
        ApiKeyCommand::Revoke { id, name, profile } => {
            if id.is_none() && name.is_none() {
                bail!(
                    "name the key to revoke (its id) or `--name` for every key of a service account"
                );
            }
            let (config, database) = open(&profile).await?;
            let mut client = database.pool.get().await?;
            // One transaction with its notice, as every revocation.
            let transaction = client.transaction().await?;
            let n = store::revoke_api_keys(&*transaction, id, name.as_deref(), None).await?;
            let detail = json!({"origin": "cli", "key_id": id, "count": n});
            let subject = name.as_deref().unwrap_or_default();
            store::notify(&*transaction, "apikey.revoked", subject, detail.clone()).await?;
            transaction.commit().await?;
            record(&database, "apikey.revoked", subject, detail).await?;
            println!("{n} key(s) revoked");
            drop(client);
            database.shutdown(config.server.shutdown_grace).await?;
            if n == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
