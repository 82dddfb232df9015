//! `warden audit verify [--since T] [--json]`,
//! `warden audit search [--user U] [--tool T] [--trace X] [--since 1h] [--until T]
//! [--status S] [--kind K] [--limit N] [--cursor C] [--json]` and
//! `warden audit tail [--after P] [--follow [--interval 1s]] [--limit N]` (the trail in
//! written order as JSON lines, for a SIEM's shipper: `audit::feed`).
//!
//! All read the database the profile names (attaching to the embedded cluster a running
//! `warden serve` owns). `verify` exits 1 when it finds a problem, naming the first batch
//! or row that no longer matches; its last line is the chain's head, worth keeping
//! elsewhere (docs/audit.md).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Subcommand;

use super::ProfileArg;
use crate::audit::feed::{self, FeedPage};
use crate::audit::query::{self, Filters, QueryError};
use crate::audit::verify;
use crate::config::units::parse_duration;
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
    /// Print the trail in the order it was written, one JSON document per line: the
    /// rows of every batch after chain position `--after` (each line's `batch`). To
    /// resume, pass the last shipped line's `batch` minus one and skip the ids already
    /// shipped: nothing is missed.
    Tail {
        /// The chain position read up to (0: from the start).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep printing batches as they are written, until interrupted.
        #[arg(long)]
        follow: bool,
        /// How often `--follow` looks for new batches.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Rows per read of the database (1 to `audit::feed::MAX_LIMIT`, 10000).
        #[arg(long)]
        limit: Option<usize>,
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
        AuditCommand::Verify { profile, .. }
        | AuditCommand::Search { profile, .. }
        | AuditCommand::Tail { profile, .. } => profile.clone(),
    };
    let config = profile.load()?;
    let database = Database::open_shared(&config).await?;
    let result = execute(&database, command).await;
    database.shutdown(config.server.shutdown_grace).await?;
    result
}

async fn connect(database: &Database) -> Result<deadpool_postgres::Object> {
    database.pool.get().await.context("cannot reach PostgreSQL")
}

async fn execute(database: &Database, command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Tail {
            after,
            follow,
            interval,
            limit,
            ..
        } => tail(database, after, follow, interval, limit).await,
        AuditCommand::Verify { since, json, .. } => {
            let client = connect(database).await?;
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
            let client = connect(database).await?;
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

/// The bounds of `audit tail --interval`: each look is a database read, and a reader
/// that looks less than hourly is not following.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(format!(
            "the interval is {} to {}",
            humantime::format_duration(MIN_INTERVAL),
            humantime::format_duration(MAX_INTERVAL)
        ));
    }
    Ok(interval)
}

/// `audit tail`: reads and prints whole batches after `after`; with `follow`, keeps
/// doing so every `interval` until SIGINT or SIGTERM, which stop it between two reads
/// (a read's lines are written whole; a write blocked on a full pipe finishes first).
/// While following, a database that cannot be reached is reported on stderr and tried
/// again: the position is kept.
async fn tail(
    database: &Database,
    after: i64,
    follow: bool,
    interval: Duration,
    limit: Option<usize>,
) -> Result<ExitCode> {
    if !follow {
        // Without --follow the default signal handling stays: Ctrl-C ends it at once.
        return read_to_head(database, after, limit).await;
    }
    let stop = stop_signal()?;
    tokio::select! {
        () = stop => Ok(ExitCode::SUCCESS),
        result = follow_feed(database, after, interval, limit) => result,
    }
}

async fn read_to_head(
    database: &Database,
    mut after: i64,
    limit: Option<usize>,
) -> Result<ExitCode> {
    loop {
        let page = read_feed(database, after, limit).await?;
        print_lines(&page.items)?;
        after = page.next_after;
        if page.caught_up {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

async fn follow_feed(
    database: &Database,
    mut after: i64,
    interval: Duration,
    limit: Option<usize>,
) -> Result<ExitCode> {
    loop {
        let page = match read_feed(database, after, limit).await {
            Ok(page) => page,
            Err(error @ QueryError::Database(_)) => {
                eprintln!("warden audit tail: {error:#}; trying again");
                FeedPage {
                    items: Vec::new(),
                    next_after: after,
                    caught_up: true,
                }
            }
            Err(error) => return Err(error.into()),
        };
        print_lines(&page.items)?;
        after = page.next_after;
        if page.caught_up {
            tokio::time::sleep(interval).await;
        }
    }
}

/// A read of the feed; a `QueryError::BadFilter` is the arguments' fault (not worth
/// retrying), a `Database` one the database's.
async fn read_feed(
    database: &Database,
    after: i64,
    limit: Option<usize>,
) -> Result<FeedPage, QueryError> {
    let client = database
        .pool
        .get()
        .await
        .map_err(|e| QueryError::Database(format!("cannot reach PostgreSQL: {e}")))?;
    feed::read(&**client, after, limit).await
}

/// Each item as one line of compact JSON, flushed (a shipper reads as they come).
fn print_lines(items: &[serde_json::Value]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
