//! `warden serve`: start everything in order, run until a signal, stop in reverse.
//!
//! Start: state directory → master key → database (embedded or external) → migrations →
//! master-key check → supervision tree (and the audit trail's lifecycle subscriber) →
//! AuditWriter (replaying a spool left by a crash) → Scheduler → listener → `READY=1`.
//! Stop (SIGTERM/SIGINT): `STOPPING=1` → `/readyz` turns 503 → stop accepting → in-flight
//! requests get `server.shutdown_grace` → calls held for a stateless client's input are
//! cancelled (`http/mrtr.rs`) and model requests' rows finished, in what is left of that
//! grace → the AuditWriter leaves the tree → the servers
//! stop in reverse order → the writer drains every queued record into PostgreSQL or the
//! spool → the database (embedded cluster) stops → exit 0. SIGHUP re-reads the profile.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use warden_actors::supervisor::RestartReason;
use warden_actors::tree::{Tree, TreeConfig};

use super::{LogReload, instance};
use crate::app::{App, LogLevelSetter};
use crate::auth::Identity;
use crate::auth::bootstrap;
use crate::auth::secret::Redacted;
use crate::config::Config;
use crate::db::Database;
use crate::extension::Registry;
use crate::gateway::Gateway;
use crate::gateway::pins::Pins;
use crate::gateway::session::{SessionLimits, SessionManager};
use crate::http;
use crate::secrets::{MasterKey, SecretStore, store};
use crate::systemd;
use warden_actors::audit::Audit;
use warden_actors::audit::writer::{AuditWriter, WriterConfig, default_writer_name};
use warden_actors::scheduler::{Scheduler, SchedulerConfig};

/// The signals Warden answers, installed before anything else so that a signal sent
/// during start-up is acted on (once the listener is up) rather than killing the process
/// with the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

pub(super) async fn serve(config: Config, logging: Option<LogReload>) -> Result<ExitCode> {
    let signals = Signals::install()?;
    if let Ok(exe) = std::env::current_exe() {
        warden_actors::process::set_guard_executable(exe);
    }
    // The certificate is read first: a wrong file stops Warden before anything starts.
    let tls = match &config.server.tls {
        Some(tls) => Some(Arc::new(http::tls::Tls::new(tls)?)),
        None => None,
    };
    let master_key = instance::master_key(&config)?;
    tracing::info!(origin = %master_key.origin, "master key loaded");

    let registry = Registry::with(&[]);
    let database = Database::open(&config).await?;
    let result = run(
        &config, &database, &registry, master_key, logging, signals, tls,
    )
    .await;
    if let Err(error) = database.shutdown(config.server.shutdown_grace).await {
        tracing::error!(%error, "stopping the database failed");
    }
    tracing::info!("stopped");
    result
}

async fn run(
    config: &Config,
    database: &Database,
    registry: &Registry,
    master_key: MasterKey,
    logging: Option<LogReload>,
    signals: Signals,
    tls: Option<Arc<http::tls::Tls>>,
) -> Result<ExitCode> {
    if config.database.migrate_on_start {
        let report = database.migrate(registry.all_migrations()).await?;
        tracing::info!(
            applied = report.applied.len(),
            already = report.already_applied,
            "schema up to date"
        );
    }
    instance::verify_master_key(database, &master_key).await?;
    let master_key = Arc::new(master_key);
    let secrets = SecretStore::new(database.pool.clone(), master_key.clone());
    // The secret values the servers start with, to compare against after the change
    // listener was away (a change's notice may have been lost meanwhile).
    let secrets_seen = match secrets.list().await {
        Ok(list) => Some(crate::secrets::store::SecretVersions::of(&list)),
        Err(error) => {
            tracing::warn!(%error, "cannot list the secrets; changes made while the change listener is away are noticed only after it connected once");
            None
        }
    };

    let tree = Tree::start(TreeConfig {
        specs: config.servers.clone(),
        secrets: Arc::new(secrets.clone()),
        client_name: "warden".into(),
        client_version: crate::VERSION.into(),
    })
    .await?;

    let (audit, audit_queue) = Audit::channel(config.audit.queue_capacity, config.audit.backlog());
    // Subscribed first thing, so the servers' start-up events are recorded too.
    let lifecycle =
        crate::audit::lifecycle::spawn(&tree.events, audit.clone(), config.audit.event_buffer)
            .await;
    let pins = Arc::new(Pins::load(database.pool.clone(), audit.clone()).await?);
    let sessions = SessionManager::start(
        SessionLimits {
            idle_timeout: config.sessions.idle_timeout,
            max_total: config.sessions.max_total,
            max_per_principal: config.sessions.max_per_principal,
        },
        Some(tree.root_cell()),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let gateway = Gateway::new(tree.clone(), pins, sessions, audit, database.pool.clone());

    let identity = Identity::start(
        config,
        database.pool.clone(),
        master_key.clone(),
        gateway.audit.clone(),
    )
    .await?;
    let (admin_token, created) = bootstrap::load_or_create(&config.server.state_dir)
        .context("creating the bootstrap admin token in the state directory")?;
    identity
        .register_bootstrap(&admin_token)
        .await
        .context("registering the bootstrap admin token")?;

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let local = listener.local_addr()?;
    let log_level: Option<LogLevelSetter> = logging.map(|handle| -> LogLevelSetter {
        Box::new(move |level: &str| handle.reload(super::level_filter(level)).is_ok())
    });
    let app = Arc::new(App::new(
        config.clone(),
        database.pool.clone(),
        master_key,
        http::metrics::install(),
        tree,
        gateway,
        identity,
        log_level,
    ));
    crate::audit::refresh_redaction(&app.redaction, config, &app.secrets).await;
    app.ai
        .start(registry.provider_kinds(), config)
        .context("the AI gateway (ai:)")?;
    let writer = AuditWriter::start(
        WriterConfig {
            pool: database.pool.clone(),
            spool_dir: config.server.state_dir.join("audit"),
            batch_max_rows: config.audit.batch_max_rows,
            batch_max_delay: config.audit.batch_max_delay,
            write_concurrency: config.audit.write_concurrency,
            spool_max_bytes: config.audit.spool_max_bytes,
            max_payload_bytes: config.audit.max_payload_bytes,
            backlog: config.audit.backlog(),
            scrubber: app.redaction.clone(),
            writer_name: default_writer_name(),
        },
        audit_queue,
        Some(app.tree.root_cell()),
    )
    .await
    .context("starting the audit writer")?;
    let _scheduler = Scheduler::start(
        SchedulerConfig {
            pg_config: database.pg_config.clone(),
            pool: database.pool.clone(),
            jobs: registry.build_jobs(&app),
            tick: std::time::Duration::from_secs(5),
            runner_name: default_writer_name(),
        },
        Some(app.tree.root_cell()),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    // A session that ends takes its resource subscriptions with it, then its hooks run.
    let session_end_hooks = http::mcp::on_session_end(Arc::downgrade(&app));
    let gateway = Arc::downgrade(&app.gateway);
    app.gateway.sessions.on_end(move |session, reason| {
        if let Some(gateway) = gateway.upgrade() {
            gateway.forget_subscriber(&session.id);
        }
        session_end_hooks(session, reason);
    });
    crate::gateway::actor::start(
        crate::gateway::actor::GatewayArgs {
            gateway: app.gateway.clone(),
            policy: app.policy.clone(),
            config: app.config.clone(),
        },
        &app.tree.events,
        app.tree.root_cell(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let router = http::router(app.clone(), registry);
    let shutdown = CancellationToken::new();
    let sweeper_app = app.clone();
    let sweeper = tokio::spawn(crate::policy::limits::sweep_every(
        move || sweeper_app.limits.load_full(),
        shutdown.clone(),
    ));
    // The skills served as prompts are read before the first request can list them.
    let skills_loaded = app.gateway.skills.load(&app.db).await;
    if let Err(error) = &skills_loaded {
        tracing::warn!(%error, "cannot read the skills yet; they are read again until it succeeds");
    }
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(shutdown.clone()));
    }
    let server = tokio::spawn(http::serve(
        http::LimitedListener::new(listener, config.server.max_connections, tls.clone()),
        router,
        shutdown.clone(),
        config.server.shutdown_grace,
        config.server.header_read_timeout,
    ));
    // One LISTEN connection for changes made elsewhere (the CLI, other replicas). It is
    // listening before Warden says it is ready, so no change announced after that is lost.
    let (mut notices, listening) = crate::db::notify::spawn(
        database.pg_config.clone(),
        vec![
            store::CHANNEL,
            crate::auth::store::CHANNEL,
            crate::gateway::pins::CHANNEL,
            crate::skills::CHANNEL,
        ],
        (
            crate::db::notify::PING_INTERVAL,
            crate::db::notify::PING_TIMEOUT,
        ),
        shutdown.clone(),
    );
    if tokio::time::timeout(config.database.connect_timeout, listening)
        .await
        .is_err()
    {
        tracing::warn!("the change listener is not connected yet; it keeps retrying");
    }
    // The pins and the skills are read again off the notice loop (a slow or failing
    // read must not hold up identity notices), after each change announced (here or on
    // another replica) and after the listener reconnects; a failed read is tried again
    // until it succeeds.
    use crate::db::notify::{RefreshError, spawn_refresher};
    let pins_app = app.clone();
    let pins_wanted = spawn_refresher("the tool pins", shutdown.clone(), move || {
        let app = pins_app.clone();
        async move {
            let changed = app.gateway.pins.refresh().await?;
            let policy = app.policy.load();
            for server in changed {
                app.gateway.announce_list_changed(&policy, &server, "tools");
            }
            Ok::<(), RefreshError>(())
        }
    });
    let skills_app = app.clone();
    let skills_wanted = spawn_refresher("the skills", shutdown.clone(), move || {
        let app = skills_app.clone();
        async move {
            if app.gateway.skills.load(&app.db).await? {
                app.gateway.announce_skills_changed();
            }
            Ok::<(), RefreshError>(())
        }
    });
    if skills_loaded.is_err() {
        skills_wanted.notify_one();
    }
    let notice_app = app.clone();
    let notice_task = tokio::spawn(async move {
        let mut secrets_seen = secrets_seen;
        while let Some(notice) = notices.recv().await {
            crate::auth::service::handle_notice(&notice_app.identity, &notice).await;
            // A tool approved or a skill changed on another replica is served here too;
            // after a gap in the listener's connection, what it may have missed is read
            // again.
            if notice.concerns(crate::gateway::pins::CHANNEL) {
                pins_wanted.notify_one();
            }
            if notice.concerns(crate::skills::CHANNEL) {
                skills_wanted.notify_one();
            }
            match &notice {
                crate::db::notify::Notice::Message { channel, payload }
                    if channel == store::CHANNEL =>
                {
                    notice_app.ai.secret_changed(payload)
                }
                crate::db::notify::Notice::Connected => notice_app.ai.forget_keys(),
                _ => {}
            }
            let secret_changed = match &notice {
                crate::db::notify::Notice::Message { channel, payload }
                    if channel == store::CHANNEL =>
                {
                    Some(Some(payload))
                }
                crate::db::notify::Notice::Message { .. } => None,
                // A value set while the listener was away is not known to have changed.
                crate::db::notify::Notice::Connected => Some(None),
            };
            if let Some(named) = secret_changed {
                // A new value must be redacted from audit payloads from now on.
                crate::audit::refresh_redaction(
                    &notice_app.redaction,
                    &notice_app.config.load(),
                    &notice_app.secrets,
                )
                .await;
                // The servers of every secret set, changed or deleted since the values
                // were last seen are restarted, once per change: a notice's secret, and
                // after a gap in the listener those whose notices were lost (a change
                // seen on reconnect is not restarted again when its notice follows).
                match notice_app.secrets.list().await {
                    Ok(list) => {
                        let now = crate::secrets::store::SecretVersions::of(&list);
                        let changed = match &secrets_seen {
                            Some(before) => before.changed_in(&now),
                            None => named.iter().map(|name| name.to_string()).collect(),
                        };
                        for name in changed {
                            restart_users_of(&notice_app, &name).await;
                        }
                        secrets_seen = Some(now);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot list the secrets to tell which changed; restarting the users of the one announced");
                        if let Some(name) = named {
                            restart_users_of(&notice_app, name).await;
                        }
                        // What was seen is no longer known to be current: compared
                        // with it, the next listing would restart these users again.
                        secrets_seen = None;
                    }
                }
            }
        }
    });

    app.readiness.set_tree_up(true);
    tracing::info!(address = %local, public_url = %config.server.public_url, "Warden is ready");
    announce_admin_token(&config.server.state_dir, &admin_token, created);
    systemd::notify("READY=1\nSTATUS=serving");
    let watchdog_app = app.clone();
    systemd::spawn_watchdog(move || !watchdog_app.readiness.is_draining());

    let outcome = wait_for_shutdown(&app, tls.as_deref(), signals).await;

    let stopping = tokio::time::Instant::now();
    systemd::notify("STOPPING=1\nSTATUS=draining");
    app.readiness.set_draining();
    app.gateway.closing.cancel();
    app.ai.stop_draining();
    shutdown.cancel();
    let _ = server.await;
    notice_task.abort();
    let _ = sweeper.await;
    // Calls held for a client's input, model requests' rows and budget charges still
    // being written and streams read for their usage after their clients left: stopped
    // and recorded before the writer drains, together, in what is left of the one grace
    // (so the stop's worst case grows by the grace once, not once per phase) — and at
    // least one wait for a pooled connection (a budget charge is a write of its own).
    let recording = (stopping + config.server.shutdown_grace)
        .saturating_duration_since(tokio::time::Instant::now())
        .max(config.database.connect_timeout + RECORDING_MARGIN);
    tokio::join!(
        cancel_held_calls(&app, recording),
        app.ai.finish_tasks(recording)
    );
    // The writer outlives the tree: it records the servers' stop events, then drains.
    writer.detach();
    app.tree.shutdown().await;
    if let Some(lifecycle) = lifecycle {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), lifecycle).await;
    }
    writer
        .shutdown(config.server.shutdown_grace + std::time::Duration::from_secs(30))
        .await;
    outcome
}

/// Beyond one pool wait, what the rows of requests cut off at shutdown get to be recorded
/// even when draining the requests took the whole grace: rows are enqueued, not written,
/// so this is ample unless the audit trail blocks (`audit.on_backlog: block`).
const RECORDING_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Cancels the calls that wait for a stateless client's input (nobody can answer them
/// now) and waits, at most `grace`, for each to record its audit row.
async fn cancel_held_calls(app: &App, grace: std::time::Duration) {
    let calls: Vec<_> = app
        .awaiting_input
        .drain()
        .into_iter()
        .map(crate::http::mcp::Suspended::cancel)
        .collect();
    if calls.is_empty() {
        return;
    }
    tracing::info!(
        calls = calls.len(),
        "cancelling calls awaiting their clients' input"
    );
    let all = futures_util::future::join_all(calls);
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!("calls awaiting input were still ending when the shutdown grace ran out");
    }
}

/// Runs reloads on SIGHUP (the profile, and the TLS certificate if its files changed);
/// returns on SIGTERM or SIGINT (exit 0) or when the supervision tree fails (exit 1, for
/// the service manager to restart Warden).
async fn wait_for_shutdown(
    app: &Arc<App>,
    tls: Option<&http::tls::Tls>,
    signals: Signals,
) -> Result<ExitCode> {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(ExitCode::SUCCESS) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(ExitCode::SUCCESS) }
            _ = app.tree.failed() => {
                tracing::error!("the supervision tree failed; shutting down");
                return Ok(ExitCode::FAILURE);
            }
            _ = hup.recv() => {
                systemd::notify("RELOADING=1");
                if let Some(tls) = tls {
                    tls.reload_logged();
                }
                let app = app.clone();
                tokio::spawn(async move {
                    let _ = app.reload().await;
                    systemd::notify("READY=1");
                });
            }
        }
    }
}

fn announce_admin_token(state_dir: &Path, token: &Redacted<String>, created: bool) {
    // Printed to stdout, not the log: log pipelines should not collect credentials.
    if created {
        println!(
            "Bootstrap admin token (also in {}): {}",
            state_dir.join(bootstrap::FILE).display(),
            token.expose()
        );
    } else {
        println!(
            "Bootstrap admin token: see {}",
            state_dir.join(bootstrap::FILE).display()
        );
    }
}

/// Restarts the servers that use `secret` (changed by `warden secret set` in any process).
async fn restart_users_of(app: &App, secret: &str) {
    use warden_actors::spec::{HeaderValue, Transport};
    for entry in app.tree.directory.all().iter() {
        let spec = entry.spec();
        let uses = match &spec.transport {
            Transport::Stdio(p) | Transport::HttpChild { process: p, .. } => {
                p.secrets.values().any(|s| s == secret)
                    || p.user_secrets.values().any(|s| s == secret)
            }
            Transport::Remote { headers, .. } => headers
                .iter()
                .any(|h| matches!(&h.value, HeaderValue::Secret { name, .. } if name == secret)),
        };
        if !uses {
            continue;
        }
        tracing::info!(server = %spec.name, "a secret it uses changed; restarting it");
        let mut targets: Vec<Option<String>> = vec![None];
        targets.extend(entry.user_instances().iter().map(|i| i.user.clone()));
        for user in targets {
            let _ = app
                .tree
                .restart(
                    &spec.name,
                    user.as_deref(),
                    RestartReason::SecretChanged(secret.to_owned()),
                )
                .await;
        }
    }
}
