//! The PostgreSQL store: production, shared by any number of stateless vault replicas.
//!
//! Correctness needs nothing in a replica's memory: uniqueness comes from constraints, and a
//! merchant's first keys from `ON CONFLICT DO NOTHING` plus a read-back. Audit rows are keyed by
//! their request id (a random UUID), so replicas never contend on one row or sequence.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use vault_core::StoreError;
use zeroize::Zeroizing;

use crate::error::unavailable;
use crate::sql::token_store_impl;

/// Connection settings for [`PgStore`].
#[derive(Clone)]
pub struct PgSettings {
    /// A libpq-style URL: `postgres://user[:password]@host:port/db?sslmode=verify-full&sslrootcert=ca.pem`.
    pub url: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a call waits for a connection (including establishing one) before failing.
    pub connect_timeout: Duration,
    /// The server aborts any statement running longer than this.
    pub statement_timeout: Duration,
    /// The password, when it is not in the URL (`[storage] password_file`). Zeroized on drop.
    pub password: Option<Zeroizing<String>>,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The URL with any password replaced, for logs and errors.
#[must_use]
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = url.get(scheme + 3..at).unwrap_or_default();
            match userinfo.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    url.get(..scheme + 3).unwrap_or_default(),
                    url.get(at..).unwrap_or_default()
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Why the PostgreSQL store could not be opened. Messages never hold the password.
#[derive(Debug, thiserror::Error)]
pub enum PgStoreError {
    /// The URL does not parse.
    #[error("postgres url {url}: {source}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// The parser's error.
        source: sqlx::Error,
    },
    /// The database could not be reached.
    #[error("postgres {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The underlying error.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("postgres {url}: migration failed: {source}")]
    Migrate {
        /// The URL, password redacted.
        url: String,
        /// The underlying error.
        source: sqlx::migrate::MigrateError,
    },
    /// `migrate_on_start` is off and the schema lacks migrations this release needs.
    #[error("postgres {url}: the schema lacks migration {version}; run `vaultd migrate` first")]
    Unmigrated {
        /// The URL, password redacted.
        url: String,
        /// The first missing migration.
        version: i64,
    },
    /// The server does not make commits durable.
    #[error("postgres {url}: {setting} is {actual}, the vault requires {required}")]
    NotDurable {
        /// The URL, password redacted.
        url: String,
        /// The server setting.
        setting: &'static str,
        /// What the server reported.
        actual: String,
        /// What the vault needs.
        required: &'static str,
    },
}

/// The PostgreSQL store. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// This store's audit writer chain; clones share it.
    chain: std::sync::Arc<crate::chain::Chain>,
    /// The committer that token inserts and audit appends go through (see `group.rs`).
    group: crate::group::Group,
}

impl PgStore {
    /// Connects, checks that commits are durable, and applies pending migrations.
    ///
    /// # Errors
    /// [`PgStoreError`] if the server is unreachable, not durable, or migrations fail.
    pub async fn connect(settings: &PgSettings) -> Result<Self, PgStoreError> {
        let store = Self::connect_only(settings).await?;
        store.migrate(settings).await?;
        Ok(store)
    }

    /// Connects and checks durability without touching the schema (`vaultd migrate` and
    /// deployments that migrate ahead of a rollout use [`PgStore::migrate`] separately).
    ///
    /// # Errors
    /// [`PgStoreError`] if the server is unreachable or not durable.
    pub async fn connect_only(settings: &PgSettings) -> Result<Self, PgStoreError> {
        let url = redact_url(&settings.url);
        let statement_ms = settings.statement_timeout.as_millis().to_string();
        let mut options =
            PgConnectOptions::from_str(&settings.url).map_err(|source| PgStoreError::Url {
                url: url.clone(),
                source,
            })?;
        if let Some(password) = &settings.password {
            options = options.password(password);
        }
        let options = options.application_name("vaultd").options([
            ("statement_timeout", statement_ms.as_str()),
            ("lock_timeout", statement_ms.as_str()),
            // Plan each execution with its parameters. A generic plan of the fingerprint
            // lookup (cached once the statement had run five times on a small table) scanned
            // the merchant's whole `tokens_merchant_version` range instead of the unique
            // index: 50 ms per tokenize at 10 k tokens, worse as the table grows.
            ("plan_cache_mode", "force_custom_plan"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.connect_timeout)
            .connect_with(options.clone())
            .await
            .map_err(|source| PgStoreError::Connect {
                url: url.clone(),
                source,
            })?;
        let mut store = Self {
            pool,
            chain: std::sync::Arc::new(crate::chain::Chain::new_writer()),
            group: crate::group::Group::default(),
        };
        store.check_durability(&url).await?;
        // The group committer has a connection of its own, opened on its own runtime.
        let chain = std::sync::Arc::clone(&store.chain);
        let acquire_timeout = settings.connect_timeout;
        store.group = crate::group::Group::start_on_own_runtime(move || Self {
            pool: PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(acquire_timeout)
                .connect_lazy_with(options),
            chain,
            group: crate::group::Group::default(),
        })
        .map_err(|source| PgStoreError::Connect {
            url: url.clone(),
            source: sqlx::Error::Io(source),
        })?;
        Ok(store)
    }

    /// Applies pending migrations from `migrations/postgres` (idempotent; concurrent replicas
    /// serialize on sqlx's migration lock).
    ///
    /// # Errors
    /// [`PgStoreError::Migrate`] if a migration fails.
    pub async fn migrate(&self, settings: &PgSettings) -> Result<(), PgStoreError> {
        sqlx::migrate!("../../migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|source| PgStoreError::Migrate {
                url: redact_url(&settings.url),
                source,
            })
    }

    /// Checks, without changing anything, that every migration this release embeds has been
    /// applied (for replicas that start with `migrate_on_start = false`).
    ///
    /// # Errors
    /// [`PgStoreError::Unmigrated`] naming the first missing migration.
    pub async fn check_migrated(&self, settings: &PgSettings) -> Result<(), PgStoreError> {
        let url = redact_url(&settings.url);
        // A database never migrated has no `_sqlx_migrations` table: nothing is applied.
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        match sqlx::migrate!("../../migrations/postgres")
            .iter()
            .map(|m| m.version)
            .find(|version| !applied.contains(version))
        {
            Some(version) => Err(PgStoreError::Unmigrated { url, version }),
            None => Ok(()),
        }
    }

    async fn check_durability(&self, url: &str) -> Result<(), PgStoreError> {
        for (setting, accepted, required) in [
            (
                "synchronous_commit",
                &["on", "remote_apply", "remote_write"][..],
                "on",
            ),
            ("fsync", &["on"][..], "on"),
            ("full_page_writes", &["on"][..], "on"),
        ] {
            let actual: String = sqlx::query_scalar("SELECT current_setting($1)")
                .bind(setting)
                .fetch_one(&self.pool)
                .await
                .map_err(|source| PgStoreError::Connect {
                    url: url.to_owned(),
                    source,
                })?;
            if !accepted.contains(&actual.as_str()) {
                return Err(PgStoreError::NotDurable {
                    url: url.to_owned(),
                    setting,
                    actual,
                    required,
                });
            }
        }
        Ok(())
    }

    /// True if the database answers a trivial query within the statement timeout.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The pool's connections (`storage.max_connections`; the group committer's own
    /// connection is not counted).
    #[must_use]
    pub fn pool_usage(&self) -> Vec<crate::PoolUsage> {
        vec![crate::PoolUsage::of_sqlx("pool", &self.pool)]
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(unavailable)
    }
}

token_store_impl!(PgStore, Postgres, Some(crate::sql::PG_LOCK_MERCHANT_KEYS));
crate::sql::sqlx_point_reads!(PgStore, Postgres);
crate::sql::keys::sqlx_reserve_uses!(PgStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://vault:s3cret@db:5432/vault?sslmode=verify-full"),
            "postgres://vault:***@db:5432/vault?sslmode=verify-full"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432"),
            "postgres://postgres@127.0.0.1:5432"
        );
        let settings = PgSettings {
            url: "postgres://u:pw@h/d".into(),
            max_connections: 1,
            connect_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
            password: Some(Zeroizing::new("pw2".to_owned())),
        };
        assert!(!format!("{settings:?}").contains("pw"));
    }
}
