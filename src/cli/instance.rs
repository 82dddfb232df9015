//! What every command that touches the instance's data needs first: the state directory
//! (created 0700) and the master key, checked against the one the database was set up
//! with. `serve` and the CLI commands share these steps so they can never disagree.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::config::Config;
use crate::db::Database;
use crate::secrets::MasterKey;

/// Prepares the state directory and loads the master key (generating one on first use
/// unless `server.require_master_key` is set).
pub(crate) fn master_key(config: &Config) -> Result<MasterKey> {
    prepare_state_dir(&config.server.state_dir)?;
    Ok(MasterKey::load(
        &config.server.state_dir,
        config.server.master_key_file.as_deref(),
        config.server.require_master_key,
        &|name| std::env::var(name).ok(),
    )?)
}

/// Creates the state directory with mode 0700, tightening an existing one that others
/// could read.
pub(crate) fn prepare_state_dir(dir: &Path) -> Result<()> {
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
pub(crate) async fn verify_master_key(database: &Database, key: &MasterKey) -> Result<()> {
    let client = database
        .pool
        .get()
        .await
        .context("cannot reach PostgreSQL")?;
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
