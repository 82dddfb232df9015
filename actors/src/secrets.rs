//! Where the tree gets secret values from. The main crate implements [`SecretSource`]
//! over its encrypted store; the tree only ever holds values in [`Redacted`] and puts
//! them into a child's environment (or a remote server's headers) at spawn time.

use futures_util::future::BoxFuture;
use thiserror::Error;

use crate::redact::Redacted;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret `{name}` is not set (store it with `warden secret set {name}`)")]
    Missing { name: String },
    #[error("secret `{name}` is not set for user `{user}`")]
    MissingForUser { name: String, user: String },
    #[error("secret store unavailable: {0}")]
    Unavailable(String),
}

pub trait SecretSource: Send + Sync + 'static {
    /// The current value of `name`; with `user`, that user's own value.
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Redacted<String>, SecretError>>;
}

/// A source with no secrets at all (tests, and profiles that use none).
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Redacted<String>, SecretError>> {
        Box::pin(async move {
            Err(match user {
                Some(user) => SecretError::MissingForUser {
                    name: name.to_owned(),
                    user: user.to_owned(),
                },
                None => SecretError::Missing {
                    name: name.to_owned(),
                },
            })
        })
    }
}

/// A fixed map (tests).
pub struct StaticSecrets(pub std::collections::HashMap<String, String>);

impl SecretSource for StaticSecrets {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Redacted<String>, SecretError>> {
        Box::pin(async move {
            let key = match user {
                Some(user) => format!("{user}/{name}"),
                None => name.to_owned(),
            };
            self.0
                .get(&key)
                .map(|v| Redacted::new(v.clone()))
                .ok_or(SecretError::Missing { name: key })
        })
    }
}
