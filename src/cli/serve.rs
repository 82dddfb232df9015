//! `warden serve`: start everything in order, run until a signal, stop in reverse.
//!
//! Start: state directory → master key → database (embedded or external) → migrations →
//! master-key check → listener → `READY=1`. Stop (SIGTERM/SIGINT): `STOPPING=1` →
//! `/readyz` turns 503 → stop accepting → in-flight requests get `server.shutdown_grace`
//! → the database (embedded cluster) stops → exit 0. SIGHUP re-reads the profile.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::LogReload;
use crate::app::{App, Readiness};
use crate::config::Config;
use crate::db::Database;
use crate::extension::Registry;
use crate::http;
use crate::secrets::MasterKey;
use crate::systemd;

pub(super) async fn serve(config: Config, logging: Option<LogReload>) -> Result<ExitCode> {
    if let Ok(exe) = std::env::current_exe() {
        warden_actors::process::set_guard_executable(exe);
    }
    prepare_state_dir(&config.server.state_dir)?;
    let master_key = MasterKey::load(
        &config.server.state_dir,
        config.server.master_key_file.as_deref(),
        config.server.require_master_key,
        &|name| std::env::var(name).ok(),
    )?;
    tracing::info!(origin = %master_key.origin, "master key loaded");

    let registry = Registry::with(&[]);
    let database = Database::open(&config).await?;
    let started = start(&config, &database, &registry, master_key, logging).await;
    let result = started;
    if let Err(error) = database.shutdown(config.server.shutdown_grace).await {
        tracing::error!(%error, "stopping the database failed");
    }
    tracing::info!("stopped");
    result
}

async fn start(
    config: &Config,
    database: &Database,
    registry: &Registry,
    master_key: MasterKey,
    logging: Option<LogReload>,
) -> Result<ExitCode> {
    if config.database.migrate_on_start {
        let report = database.migrate(registry.all_migrations()).await?;
        tracing::info!(
            applied = report.applied.len(),
            already = report.already_applied,
            "schema up to date"
        );
    }
    check_master_key(database, &master_key).await?;

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let local = listener.local_addr()?;
    let app = Arc::new(App {
        config: ArcSwap::from_pointee(config.clone()),
        db: database.pool.clone(),
        master_key: Arc::new(master_key),
        readiness: Readiness::default(),
        metrics: http::metrics::install(),
    });
    let router = http::router(app.clone(), registry);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        http::LimitedListener::new(listener, config.server.max_connections),
        router,
        shutdown.clone(),
        config.server.shutdown_grace,
    ));

    app.readiness.set_tree_up(true);
    tracing::info!(address = %local, public_url = %config.server.public_url, "Warden is ready");
    systemd::notify("READY=1\nSTATUS=serving");
    let watchdog_app = app.clone();
    systemd::spawn_watchdog(move || !watchdog_app.readiness.is_draining());

    wait_for_shutdown(&app, logging.as_ref()).await?;

    systemd::notify("STOPPING=1\nSTATUS=draining");
    app.readiness.set_draining();
    shutdown.cancel();
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

/// Runs reloads on SIGHUP and returns on SIGTERM or SIGINT.
async fn wait_for_shutdown(app: &App, logging: Option<&LogReload>) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()) }
            _ = hup.recv() => reload(app, logging),
        }
    }
}

/// Re-reads the profile and applies what can change live; what cannot is logged.
fn reload(app: &App, logging: Option<&LogReload>) {
    systemd::notify("RELOADING=1");
    let current = app.config.load_full();
    let Some(path) = current.source.clone() else {
        tracing::warn!("SIGHUP: the profile was not read from a file; nothing to reload");
        return;
    };
    match Config::load(&path) {
        Ok(new) => {
            for (key, changed) in [
                ("server.listen", new.server.listen != current.server.listen),
                (
                    "server.state_dir",
                    new.server.state_dir != current.server.state_dir,
                ),
                ("database", new.database.url != current.database.url),
            ] {
                if changed {
                    tracing::warn!(key, "changed in the profile; takes effect after a restart");
                }
            }
            if new.logging.level != current.logging.level
                && let Some(handle) = logging
                && handle
                    .reload(super::level_filter(&new.logging.level))
                    .is_ok()
            {
                tracing::info!(level = %new.logging.level, "log level changed");
            }
            app.config.store(Arc::new(new));
            tracing::info!(profile = %path.display(), "profile reloaded");
        }
        Err(error) => {
            tracing::error!("profile reload refused, keeping the running one:\n{error}");
        }
    }
    systemd::notify("READY=1");
}

/// Creates the state directory with mode 0700, tightening an existing one that others
/// could read.
fn prepare_state_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    // 0711 is what the embedded cluster needs when running as root (see db/embedded.rs).
    if meta.permissions().mode() & 0o066 != 0 {
        tracing::warn!(dir = %dir.display(), "the state directory was readable by others; restricting it to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Records the master key's check value on first start; refuses a different key later.
async fn check_master_key(database: &Database, key: &MasterKey) -> Result<()> {
    let client = database.pool.get().await?;
    let stored: Option<Vec<u8>> = client
        .query_one("SELECT master_key_check FROM warden_instance", &[])
        .await?
        .get(0);
    match stored {
        Some(stored) => key.verify_check_value(&stored)?,
        None => {
            client
                .execute(
                    "UPDATE warden_instance SET master_key_check = $1 WHERE master_key_check IS NULL",
                    &[&key.check_value()],
                )
                .await?;
        }
    }
    Ok(())
}
