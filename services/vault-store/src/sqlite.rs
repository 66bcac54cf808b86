//! The SQLite store: the embedded default.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use vault_core::StoreError;
use vault_core::audit::AuditRecord;
use vault_core::ids::MerchantId;
use vault_core::ports::{
    InsertOutcome, KeyPurpose, MerchantKeySet, TokenRecord, TokenStore, WrappedKey,
};
use vault_core::token::{Token, TokenFormat};
use vault_crypto::FINGERPRINT_LEN;

use crate::rows::{AuditColumns, KeyRow, TokenRow, micros};

/// The columns of `tokens`, in the order `TokenRow` and the insert use.
macro_rules! token_columns {
    () => {
        "token, merchant_id, fingerprint, token_format, dek_version, nonce, ciphertext, brand, \
         bin, last4, pan_length, exp_month, exp_year, created_at"
    };
}

const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, caller, peer, operation, merchant_id, \
     token, outcome, request_id, reason, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// How long a statement waits for SQLite's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the SQLite store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SqliteStoreError {
    /// The database could not be opened or migrated.
    #[error("sqlite database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("sqlite database {path}: migration failed: {source}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: sqlx::migrate::MigrateError,
    },
    /// The database does not give the durability the vault requires.
    #[error("sqlite database {path}: {setting} is {actual}, the vault requires {required}")]
    NotDurable {
        /// The database file.
        path: PathBuf,
        /// The pragma.
        setting: &'static str,
        /// What the connection reported.
        actual: String,
        /// What the vault needs.
        required: &'static str,
    },
}

/// The SQLite store. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations, and checks that
    /// every connection runs in WAL mode with `synchronous=FULL`.
    ///
    /// # Errors
    /// [`SqliteStoreError`] if the database cannot be opened, migrated, or made durable.
    pub async fn open(path: &Path) -> Result<Self, SqliteStoreError> {
        create_private(path).map_err(|source| SqliteStoreError::Open {
            path: path.to_owned(),
            source: sqlx::Error::Io(source),
        })?;
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|source| SqliteStoreError::Open {
                path: path.to_owned(),
                source,
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| SqliteStoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        sqlx::migrate!("../../migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| SqliteStoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        let store = Self { pool };
        store.check_durability(path).await?;
        Ok(store)
    }

    /// Reads `journal_mode` and `synchronous` back from a pooled connection.
    async fn check_durability(&self, path: &Path) -> Result<(), SqliteStoreError> {
        let open = |source| SqliteStoreError::Open {
            path: path.to_owned(),
            source,
        };
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await
            .map_err(open)?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(SqliteStoreError::NotDurable {
                path: path.to_owned(),
                setting: "journal_mode",
                actual: journal,
                required: "wal",
            });
        }
        // 2 = FULL, 3 = EXTRA.
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&self.pool)
            .await
            .map_err(open)?;
        if synchronous < 2 {
            return Err(SqliteStoreError::NotDurable {
                path: path.to_owned(),
                setting: "synchronous",
                actual: synchronous.to_string(),
                required: "FULL (2) or EXTRA (3)",
            });
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front, so a busy database waits (busy_timeout)
        // instead of failing a read-to-write upgrade.
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)
    }
}

/// Creates an empty database file readable by its owner only, unless one exists. SQLite gives
/// its `-wal` and `-shm` files the database file's permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
}

async fn insert_audit(
    tx: &mut Transaction<'static, Sqlite>,
    audit: &AuditRecord,
) -> Result<(), sqlx::Error> {
    let c = AuditColumns::of(audit);
    sqlx::query(INSERT_AUDIT)
        .bind(c.at)
        .bind(c.caller)
        .bind(c.peer)
        .bind(c.operation)
        .bind(c.merchant_id)
        .bind(c.token)
        .bind(c.outcome)
        .bind(c.request_id)
        .bind(c.reason)
        .bind(c.detail)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

async fn insert_key(
    tx: &mut Transaction<'static, Sqlite>,
    key: &WrappedKey,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO data_keys (merchant_id, purpose, version, kek_id, wrapped, created_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(key.context.merchant.as_str())
    .bind(key.context.purpose.as_str())
    .bind(i64::from(key.context.version))
    .bind(&key.kek_id)
    .bind(&key.wrapped)
    .bind(micros(vault_core::vault::now()))
    .execute(&mut **tx)
    .await
    .map(|done| done.rows_affected())
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn merchant_keys(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<MerchantKeySet>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT merchant_id, purpose, version, kek_id, wrapped FROM data_keys \
             WHERE merchant_id = ? AND version = (SELECT MAX(version) FROM data_keys d \
             WHERE d.merchant_id = data_keys.merchant_id AND d.purpose = data_keys.purpose)",
        )
        .bind(merchant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut dek = None;
        let mut fingerprint = None;
        for row in rows {
            let key = row.into_key()?;
            match key.context.purpose {
                KeyPurpose::Dek => dek = Some(key),
                KeyPurpose::Fingerprint => fingerprint = Some(key),
            }
        }
        match (dek, fingerprint) {
            (Some(dek), Some(fingerprint)) => Ok(Some(MerchantKeySet { dek, fingerprint })),
            (None, None) => Ok(None),
            _ => Err(StoreError::Corrupt(
                "merchant has a dek or a fingerprint key but not both".to_owned(),
            )),
        }
    }

    async fn create_merchant_keys(&self, keys: &MerchantKeySet) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let dek = insert_key(&mut tx, &keys.dek).await.map_err(unavailable)?;
        let fingerprint = insert_key(&mut tx, &keys.fingerprint)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(dek == 1 && fingerprint == 1)
    }

    async fn data_key(
        &self,
        merchant: &MerchantId,
        version: u32,
    ) -> Result<Option<WrappedKey>, StoreError> {
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT merchant_id, purpose, version, kek_id, wrapped FROM data_keys \
             WHERE merchant_id = ? AND purpose = 'dek' AND version = ?",
        )
        .bind(merchant.as_str())
        .bind(i64::from(version))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(KeyRow::into_key).transpose()
    }

    async fn token_by_fingerprint(
        &self,
        merchant: &MerchantId,
        fingerprint: &[u8; FINGERPRINT_LEN],
        format: TokenFormat,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens WHERE merchant_id = ? AND fingerprint = ? AND token_format = ?"
        ))
        .bind(merchant.as_str())
        .bind(&fingerprint[..])
        .bind(format.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(TokenRow::into_record).transpose()
    }

    async fn insert_token(
        &self,
        record: &TokenRecord,
        audit: &AuditRecord,
    ) -> Result<InsertOutcome, StoreError> {
        let mut tx = self.begin().await?;
        let m = &record.metadata;
        let inserted = sqlx::query(concat!(
            "INSERT INTO tokens (",
            token_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(record.token.as_str())
        .bind(record.merchant.as_str())
        .bind(&record.fingerprint[..])
        .bind(m.format.as_str())
        .bind(i64::from(record.dek_version))
        .bind(&record.sealed.nonce[..])
        .bind(&record.sealed.ciphertext)
        .bind(m.brand.as_str())
        .bind(&m.bin)
        .bind(&m.last4)
        .bind(i64::from(m.pan_length))
        .bind(m.expiry.map(|e| i64::from(e.month())))
        .bind(m.expiry.map(|e| i64::from(e.year())))
        .bind(micros(m.created_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(err) if is_unique_violation(&err) => {
                tx.rollback().await.map_err(unavailable)?;
                // Which constraint? Ask rather than parse the message: it works on every backend.
                let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM tokens WHERE token = ?")
                    .bind(record.token.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?;
                return Ok(if taken.is_some() {
                    InsertOutcome::TokenTaken
                } else {
                    InsertOutcome::FingerprintTaken
                });
            }
            Err(err) => return Err(unavailable(err)),
        }
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(InsertOutcome::Inserted)
    }

    async fn token(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens WHERE token = ? AND merchant_id = ?"
        ))
        .bind(token.as_str())
        .bind(merchant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(TokenRow::into_record).transpose()
    }

    async fn delete_token(
        &self,
        merchant: &MerchantId,
        token: &Token,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query("DELETE FROM tokens WHERE token = ? AND merchant_id = ?")
            .bind(token.as_str())
            .bind(merchant.as_str())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        if deleted == 0 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn append_audit(&self, audit: &AuditRecord) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }
}
