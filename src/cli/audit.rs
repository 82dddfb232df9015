//! `warden audit verify [--since T] [--json]` and
//! `warden audit search [--user U] [--tool T] [--trace X] [--since 1h] [--until T]
//! [--status S] [--kind K] [--limit N] [--cursor C] [--json]`.
//!
//! Both read the database the profile names (attaching to the embedded cluster a running
//! `warden serve` owns). `verify` exits 1 when it finds a problem, naming the first batch
//! or row that no longer matches; its last line is the chain's head, worth keeping
//! elsewhere (docs/audit.md).

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;

use super::ProfileArg;
use crate::audit::query::{self, Filters};
use crate::audit::verify;
use crate::db::Database;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Recompute the hash chain and report the first batch or row altered, deleted or
    /// inserted out of band. Exits 1 when anything does not match.
    Verify {
        /// Check only batches with rows from this point on (`24h`, or an RFC 3339 time).
        #[arg(long)]
        since: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Search tool calls, events and model requests, newest first.
    Search {
        /// The user (principal subject).
        #[arg(long)]
        user: Option<String>,
        /// A tool: upstream name or the name the client called (`server__tool`).
        #[arg(long)]
        tool: Option<String>,
        /// A trace id (32 hex characters).
        #[arg(long)]
        trace: Option<String>,
        /// From this point on: `1h` ago, or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Before this point.
        #[arg(long)]
        until: Option<String>,
        /// success, error, denied, timeout, cancelled, rate_limited.
        #[arg(long)]
        status: Option<String>,
        /// tool_call, ai_request, or an event kind (permission.decision, …).
        #[arg(long)]
        kind: Option<String>,
        /// Results at most (default 100, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON (one page: items and next_cursor) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        profile: ProfileArg,
    },
}

pub(crate) async fn run(command: AuditCommand) -> Result<ExitCode> {
    let profile = match &command {
        AuditCommand::Verify { profile, .. } | AuditCommand::Search { profile, .. } => {
            profile.clone()
        }
    };
    let config = profile.load()?;
    let database = Database::open_shared(&config).await?;
    let result = execute(&database, command).await;
    database.shutdown(config.server.shutdown_grace).await?;
    result
}

async fn execute(database: &Database, command: AuditCommand) -> Result<ExitCode> {
    let client = database
        .pool
        .get()
        .await
        .context("cannot reach PostgreSQL")?;
    match command {
        AuditCommand::Verify { since, json, .. } => {
            let since = query::since_for_verify(since.as_deref())?;
            let report = verify::verify(&**client, since)
                .await
                .context("reading the audit trail")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for problem in &report.problems {
                    println!("FAIL {problem}");
                }
                if report.truncated {
                    println!("… more problems than {} (not listed)", verify::MAX_PROBLEMS);
                }
                println!(
                    "{}: {} batches ({} pruned by retention), {} rows checked",
                    if report.ok() { "ok" } else { "TAMPERED" },
                    report.batches,
                    report.pruned_batches,
                    report.rows
                );
                match (&report.head_seq, &report.head_position, &report.head_hash) {
                    (Some(seq), Some(position), Some(hash)) => {
                        println!("head: batch {seq} at chain position {position} hash {hash}")
                    }
                    _ => println!("head: no batches yet"),
                }
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Search {
            user,
            tool,
            trace,
            since,
            until,
            status,
            kind,
            limit,
            cursor,
            json,
            ..
        } => {
            let filters = Filters {
                user,
                tool,
                trace,
                since,
                until,
                status,
                kind,
                limit,
                cursor,
            };
            let page = query::search(&**client, &filters).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                println!("at\ttype\tuser\twhat\toutcome\ttrace");
                for item in &page.items {
                    println!("{}", query::summary_line(item));
                }
                if let Some(cursor) = &page.next_cursor {
                    println!("more: --cursor {cursor}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
