//! The bootstrap admin token: on first start Warden creates `<state_dir>/admin.token`
//! (mode 0600) holding a random token, and prints it, so an operator can use the admin
//! API and the gateway before any user exists. It grants every scope. Only a hash of it
//! is kept in memory; delete the file and restart to rotate it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{AuthRejection, Authenticator, Principal, PrincipalKind, Scopes};

pub const FILE: &str = "admin.token";
pub const PREFIX: &str = "wk_";

/// Reads the bootstrap token, creating it on first start. Returns the token and whether
/// it was just created.
pub fn load_or_create(state_dir: &Path) -> std::io::Result<(String, bool)> {
    let path = state_dir.join(FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_owned();
        if !token.is_empty() {
            return Ok((token, false));
        }
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok((token, true))
}

/// Accepts exactly the bootstrap token (compared by hash, in constant time).
pub struct BootstrapAuthenticator {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

impl BootstrapAuthenticator {
    pub fn new(token: &str) -> Self {
        BootstrapAuthenticator {
            hash: Sha256::digest(token.as_bytes()).into(),
            principal: Arc::new(Principal {
                subject: "admin".into(),
                name: Some("bootstrap admin".into()),
                issuer: "warden".into(),
                client_id: None,
                scopes: Scopes::parse("*"),
                roles: vec!["admin".into()],
                tier: "admin".into(),
                kind: PrincipalKind::Service,
                token_id: Some("bootstrap".into()),
                expires_at: None,
            }),
        }
    }

    /// Whether `token` is the bootstrap token.
    pub fn matches(&self, token: &str) -> bool {
        let candidate: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        candidate
            .iter()
            .zip(self.hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Authenticator for BootstrapAuthenticator {
    fn authenticate<'a>(
        &'a self,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Arc<Principal>, AuthRejection>> {
        Box::pin(async move {
            match bearer {
                None => Err(AuthRejection::MissingToken),
                Some(token) if self.matches(token) => Ok(self.principal.clone()),
                Some(_) => Err(AuthRejection::InvalidToken("unknown token".into())),
            }
        })
    }
}
