//! Secrets: the master key that encrypts everything sensitive at rest, the [`Redacted`]
//! wrapper that keeps secret values out of logs, errors and `Debug` output, and (with the
//! supervision work) the encrypted secret store that feeds child environments.

pub mod master_key;

use std::fmt;

pub use master_key::{MasterKey, MasterKeyError};

/// A value that must never be printed. `Debug` and `Display` show `[redacted]`; the value
/// is reached only through [`Redacted::expose`], which makes every use greppable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Self {
        Redacted(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_values_never_print() {
        let secret = Redacted::new("hunter2".to_string());
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(secret.expose(), "hunter2");
    }
}
