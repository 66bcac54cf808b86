//! The SQLite store: the embedded default. Migrations, the longer reads and the rare write
//! transactions (key changes, audit checkpoints, deletes) run on sqlx; the writes group commit
//! batches run on the writer thread (`writer.rs`), and the hot path's point reads on pooled
//! connections of the calling thread (`reads.rs`).

mod reads;
mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use vault_core::StoreError;

use crate::error::unavailable;
use crate::sql::token_store_impl;

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
    /// The writer's connection or thread could not start.
    #[error("sqlite database {path}: the writer could not start: {source}")]
    Writer {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: writer::OpenError,
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
    /// Reads and single-statement writes.
    pool: SqlitePool,
    /// The one sqlx connection every sqlx transaction runs on (see [`SqliteStore::open`]).
    writer: SqlitePool,
    /// This store's audit writer chain; clones share it.
    chain: std::sync::Arc<crate::chain::Chain>,
    /// The committer that token inserts and audit appends go through (see `group.rs`).
    group: crate::group::Group,
    /// The hot path's point reads (see `reads.rs`).
    readers: std::sync::Arc<reads::Readers>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations, and checks that
    /// every connection runs in WAL mode with `synchronous=FULL` (the writer: `NORMAL` plus its
    /// own fsync of the log before any answer, `writer.rs`).
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
            // Deleted content (keys destroyed by a crypto-shred) is overwritten with zeros in
            // the database file, not left in free pages.
            .pragma("secure_delete", "ON")
            // Statement journals (the undo of a multi-row insert inside a group commit) stay in
            // memory: no temporary file is created, written and closed per statement.
            .pragma("temp_store", "MEMORY")
            .busy_timeout(BUSY_TIMEOUT);
        let open = |source| SqliteStoreError::Open {
            path: path.to_owned(),
            source,
        };
        // A pool pings an idle connection before lending it by default: for a database file
        // in this process that checks nothing, and costs a round trip to the connection's
        // thread on every read and every transaction.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(open)?;
        // The rare write transactions that do not go through the writer thread (key changes,
        // deletes, audit checkpoints) run one at a time on one connection (SQLite runs one
        // write transaction at a time anyway), with SQLite's default page cache: the large one
        // is the writer thread's (`writer.rs`).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(open)?;
        sqlx::migrate!("../../migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| SqliteStoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        let mut store = Self {
            pool,
            writer,
            chain: std::sync::Arc::new(crate::chain::Chain::new_writer()),
            group: crate::group::Group::default(),
            readers: std::sync::Arc::new(reads::Readers::new(path, BUSY_TIMEOUT)),
        };
        store.check_durability(path).await?;
        let failed = |source| SqliteStoreError::Writer {
            path: path.to_owned(),
            source,
        };
        let writer =
            writer::Writer::open(path, store.chain.clone(), BUSY_TIMEOUT).map_err(failed)?;
        let (journal, synchronous) = writer
            .durability()
            .map_err(|e| failed(writer::OpenError::Database(e)))?;
        durable(path, &journal, synchronous)?;
        store.group = crate::group::Group::start_on_thread(writer)
            .map_err(|e| failed(writer::OpenError::Io(e)))?;
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
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&self.pool)
            .await
            .map_err(open)?;
        durable(path, &journal, synchronous)
    }

    /// True if the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The sqlx pools' connections (the point reads' and the group-commit writer's own
    /// connections are not pooled by sqlx and not counted).
    #[must_use]
    pub fn pool_usage(&self) -> Vec<crate::PoolUsage> {
        vec![
            crate::PoolUsage::of_sqlx("reads", &self.pool),
            crate::PoolUsage::of_sqlx("writes", &self.writer),
        ]
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front, so a busy database waits (busy_timeout)
        // instead of failing a read-to-write upgrade.
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)
    }
}

/// Refuses a connection whose journal is not a WAL or whose commits are not synced in full.
fn durable(path: &Path, journal: &str, synchronous: i64) -> Result<(), SqliteStoreError> {
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(SqliteStoreError::NotDurable {
            path: path.to_owned(),
            setting: "journal_mode",
            actual: journal.to_owned(),
            required: "wal",
        });
    }
    // 2 = FULL, 3 = EXTRA.
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

token_store_impl!(SqliteStore, Sqlite, None);

impl SqliteStore {
    /// `KeyStore::reserve_dek_uses` on the writer thread (`Write::Reserve`): a commit on any
    /// other connection would empty the writer's page cache, and these come every lease.
    async fn reserve_uses(
        &self,
        merchant: &vault_core::ids::MerchantId,
        version: u32,
        want: u64,
        limit: u64,
    ) -> Result<vault_core::ports::UseReservation, StoreError> {
        let write = crate::group::Write::Reserve {
            merchant: merchant.clone(),
            version,
            want,
            limit,
        };
        match self.group.write(self, write).await? {
            crate::group::Written::Reserved(reservation) => Ok(reservation),
            _ => Err(StoreError::unavailable(
                "a use reservation was answered as another write",
            )),
        }
    }
}
