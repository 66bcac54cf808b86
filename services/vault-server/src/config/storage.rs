//! `[storage]`: the database URL (SQLite or PostgreSQL), the PostgreSQL pool and its timeouts,
//! the password file, and the per-call time budget.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, units};

/// Storage settings.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// A database URL: `sqlite:PATH` (relative to this file) or
    /// `postgres://user[:password]@host:port/db[?sslmode=verify-full&sslrootcert=ca.pem]`.
    pub url: String,
    /// PostgreSQL: connections per replica.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// PostgreSQL: how long a call waits for a connection before failing UNAVAILABLE.
    #[serde(
        rename = "connect_timeout_ms",
        deserialize_with = "units::millis",
        default = "default_timeout"
    )]
    pub connect_timeout: Duration,
    /// PostgreSQL: the server aborts statements (and lock waits) longer than this.
    #[serde(
        rename = "statement_timeout_ms",
        deserialize_with = "units::millis",
        default = "default_timeout"
    )]
    pub statement_timeout: Duration,
    /// The longest one call may spend on the store in total (its operation and its audit
    /// record); past it the call fails UNAVAILABLE and releases nothing.
    #[serde(
        rename = "call_timeout_ms",
        deserialize_with = "units::millis",
        default = "default_timeout"
    )]
    pub call_timeout: Duration,
    /// PostgreSQL: apply pending migrations at startup (default). Set to false when migrations
    /// run ahead of a rollout with `vaultd migrate`.
    #[serde(default = "super::default_true")]
    pub migrate_on_start: bool,
    /// PostgreSQL: a file holding the password (one line; only its owner may read it), so the
    /// URL holds none.
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &vault_store::redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl StorageConfig {
    /// The storage backend and its location.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a URL scheme the vault does not support, or a
    /// `password_file` beside a password in the URL or with SQLite.
    pub fn url(&self, file: &Path) -> Result<StorageUrl, ConfigError> {
        let url = self.url.as_str();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if self.password_file.is_some() && vault_store::redact_url(url) != url {
                return Err(ConfigError::invalid(
                    file,
                    "storage.password_file",
                    "the URL holds a password too: give it in one place",
                ));
            }
            return Ok(StorageUrl::Postgres(url.to_owned()));
        }
        if self.password_file.is_some() {
            return Err(ConfigError::invalid(
                file,
                "storage.password_file",
                "is for PostgreSQL; an SQLite database has no password",
            ));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        match path {
            Some(path) if !path.is_empty() => Ok(StorageUrl::Sqlite(PathBuf::from(path))),
            _ => Err(ConfigError::invalid(
                file,
                "storage.url",
                "must be sqlite:PATH or postgres://…",
            )),
        }
    }

    pub(super) fn resolve_password_file(&mut self, base: &Path) {
        if let Some(file) = self.password_file.as_mut() {
            *file = base.join(&*file);
        }
    }

    /// Checks the URL ([`StorageConfig::url`]) and resolves an SQLite path against `base`.
    pub(super) fn resolve_url(&mut self, base: &Path, file: &Path) -> Result<(), ConfigError> {
        match self.url(file)? {
            StorageUrl::Sqlite(db) => self.url = format!("sqlite:{}", base.join(db).display()),
            StorageUrl::Postgres(_) => {}
        }
        Ok(())
    }
}

fn default_max_connections() -> u32 {
    16
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// The storage backend a URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load_with;

    #[test]
    fn only_sqlite_and_postgres_urls_and_one_place_for_a_password() {
        let err = load_with("[storage]\nurl = \"mysql://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.url"), "{err}");
        let err = load_with("[storage]\nurl = \"sqlite:x\"\npassword_file = \"pw\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.password_file"), "{err}");
        let err = load_with(
            "[storage]\nurl = \"postgres://vault:hunter2@db/vault\"\npassword_file = \"pw\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("storage.password_file") && !err.contains("hunter2"),
            "{err}"
        );
    }
}
