//! The command line: one binary, `warden`, with a subcommand per job. Only this module
//! (and `main.rs`) uses `anyhow`; everything below returns typed errors.
//!
//! Every command that needs the profile takes `--config FILE` or reads `WARDEN_CONFIG`.

mod audit;
mod bridge;
mod export;
mod identity;
mod instance;
mod secret;
mod serve;
mod skill;
mod skill_pull;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{Config, LogFormat};
use crate::db::Database;

#[derive(Parser)]
#[command(name = "warden", version = crate::VERSION, about = "AI governance control plane: MCP gateway, identity, policy, audit, AI proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub(crate) struct ProfileArg {
    /// The profile (YAML).
    #[arg(
        long = "config",
        short = 'c',
        env = "WARDEN_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
}

/// A bearer token for a Warden the command talks to over HTTP.
#[derive(clap::Args, Clone)]
pub(crate) struct TokenArg {
    /// A bearer token (prefer --token-file or WARDEN_TOKEN: arguments are visible in `ps`).
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bearer token (used over --token and WARDEN_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl TokenArg {
    /// The token, trimmed; `None` when none was given.
    pub(crate) fn load(&self) -> Result<Option<String>> {
        // A file named on the command line wins over WARDEN_TOKEN in the environment.
        let token = match (&self.token_file, &self.token) {
            (Some(file), _) => {
                let token = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the token file {}", file.display()))?;
                if token.trim().is_empty() {
                    anyhow::bail!("the token file {} is empty", file.display());
                }
                token
            }
            (None, Some(token)) => token.clone(),
            (None, None) => return Ok(None),
        };
        Ok(Some(token.trim().to_owned()))
    }
}

impl ProfileArg {
    pub(crate) fn load(&self) -> Result<Config> {
        let path = self
            .config
            .as_deref()
            .context("no profile given: pass --config FILE or set WARDEN_CONFIG")?;
        Ok(Config::load(path)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run Warden: the gateway, the supervision tree, the HTTP listener.
    Serve(ProfileArg),
    /// Apply pending database migrations and exit.
    Migrate(ProfileArg),
    /// Check a profile.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// A stdio MCP server that forwards to a Warden gateway (for stdio-only clients).
    Bridge(bridge::BridgeArgs),
    /// Manage the encrypted secret store.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Verify and search the audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Manage users (passwords, roles, disabling).
    #[command(subcommand)]
    User(identity::UserCommand),
    /// Issue access tokens for operators and scripts.
    #[command(subcommand)]
    Token(identity::TokenCommand),
    /// Rotate and list Warden's signing keys.
    #[command(subcommand)]
    Keys(identity::KeysCommand),
    /// Manage API keys of service accounts.
    #[command(subcommand)]
    Apikey(identity::ApiKeyCommand),
    /// Manage the skills Warden distributes (SKILL.md files).
    #[command(subcommand)]
    Skill(skill::SkillCommand),
    /// Write users, OAuth clients, secret names, approved tool definitions and skills as
    /// Markdown files with YAML frontmatter, for review in git.
    Export(export::ExportArgs),
    /// Apply a reviewed export: roles and `disabled` of users (missing ones created),
    /// tool-definition approvals, changed or new skills.
    Import(export::ImportArgs),
    /// Print the version, git revision and build profile.
    Version,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a profile without starting anything; exits non-zero on error.
    Check {
        /// The profile to check.
        file: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The child guard must stay tiny: no runtime, no argument parser, no logging.
    if args.get(1).is_some_and(|a| a == "child-guard") {
        let rest: Vec<_> = args.into_iter().skip(2).skip_while(|a| a == "--").collect();
        let code = warden_actors::process::guard_main(rest);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // Built-in MCP servers run as children of this same binary; no runtime, no logging.
    if args.get(1).is_some_and(|a| a == "builtin-server") {
        let name = args.get(2).and_then(|a| a.to_str()).unwrap_or_default();
        return ExitCode::from(u8::try_from(crate::builtin::run(name)).unwrap_or(1));
    }
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!(
                "warden {} (revision {}, {} build)",
                crate::VERSION,
                crate::GIT_REVISION,
                crate::BUILD_PROFILE
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file }) => Ok(config_check(&file)),
        Command::Migrate(profile) => {
            let config = profile.load()?;
            let _logging = init_logging(&config);
            runtime()?.block_on(migrate(config))
        }
        Command::Bridge(args) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(bridge::run(args))
        }
        Command::Secret(command) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(secret::run(command))
        }
        Command::Audit(command) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(audit::run(command))
        }
        Command::User(command) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(identity::user(command))
        }
        Command::Token(command) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(identity::token(command))
        }
        Command::Keys(command) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(identity::keys_command(command))
        }
        Command::Skill(command) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(skill::run(command))
        }
        Command::Export(args) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(export::export(args))
        }
        Command::Import(args) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(export::import(args))
        }
        Command::Apikey(command) => {
            let _logging = init_cli_logging();
            runtime()?.block_on(identity::apikey(command))
        }
        Command::Serve(profile) => {
            let config = profile.load()?;
            let logging = init_logging(&config);
            runtime()?.block_on(serve::serve(config, logging))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warden")
        .build()
        .context("starting the async runtime")
}

fn config_check(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            // Provider kinds come from the registry (extensions may add some).
            let registry = crate::extension::Registry::with(&[]);
            if let Err(error) = crate::ai::prepare(&registry.provider_kinds(), &config.ai) {
                eprintln!("{}: {error}", file.display());
                return ExitCode::FAILURE;
            }
            if let Some(tls) = &config.server.tls
                && let Err(error) = crate::http::tls::load(tls)
            {
                eprintln!("{}: {error}", file.display());
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok ({} server{}, listening on {})",
                file.display(),
                config.servers.len(),
                if config.servers.len() == 1 { "" } else { "s" },
                config.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: Config) -> Result<ExitCode> {
    let database = Database::open(&config).await?;
    let registry = crate::extension::Registry::with(&[]);
    let result = database.migrate(registry.all_migrations()).await;
    database.shutdown(config.server.shutdown_grace).await?;
    let report = result?;
    for name in &report.applied {
        println!("applied {name}");
    }
    println!(
        "{} applied, {} already in place",
        report.applied.len(),
        report.already_applied
    );
    Ok(ExitCode::SUCCESS)
}

/// CLI commands log warnings and errors only, to stderr.
fn init_cli_logging() -> Option<()> {
    tracing_subscriber::fmt()
        .with_env_filter(level_filter(
            &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init()
        .ok()
}

/// Lets a reload change the log filter without restarting.
pub(crate) type LogReload = reload::Handle<EnvFilter, Registry>;

/// Logs go to stderr; `RUST_LOG` overrides `logging.level` when set.
fn init_logging(config: &Config) -> Option<LogReload> {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| level_filter(&config.logging.level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.logging.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.ok().map(|_| handle)
}

pub(crate) fn level_filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
}
