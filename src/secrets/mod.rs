//! Secrets: the master key that encrypts everything sensitive at rest, the [`Redacted`]
//! wrapper that keeps secret values out of logs, errors and `Debug` output, and (with the
//! supervision work) the encrypted secret store that feeds child environments.

pub mod master_key;
pub mod store;

pub use master_key::{MasterKey, MasterKeyError};
pub use store::{SecretStore, StoreError};
pub use warden_actors::redact::Redacted;
