//! The bootstrap admin token: on first start Warden creates `<state_dir>/admin.token`
//! (mode 0600) holding a random `wk_…` token, and prints it, so an operator can use the
//! admin API and the gateway before any user exists. It is an API key of the
//! `admin` service account (role `admin`, scope `*`); only its hash is stored, and it is
//! checked in memory, so it works while PostgreSQL is unreachable. Delete the file and
//! restart to rotate it: the previous bootstrap key is revoked.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::secret::{self, Redacted};

pub const FILE: &str = "admin.token";
pub const PREFIX: &str = secret::API_KEY_PREFIX;
/// The service account the bootstrap token belongs to.
pub const ACCOUNT: &str = "admin";

/// Reads the bootstrap token, creating it on first start. Returns the token and whether
/// it was just created.
pub fn load_or_create(state_dir: &Path) -> std::io::Result<(Redacted<String>, bool)> {
    let path = state_dir.join(FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_owned();
        if token.starts_with(PREFIX) && token.len() >= 40 {
            return Ok((Redacted::new(token), false));
        }
    }
    let token = secret::generate(PREFIX);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.expose().as_bytes())?;
    file.sync_all()?;
    Ok((token, true))
}
