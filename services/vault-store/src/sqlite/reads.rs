//! SQLite's point reads on the hot path (a token, a card's token, a merchant's keys, one DEK):
//! run on the calling thread on a pooled rusqlite connection, with their statements prepared
//! once per connection. Through sqlx each read was two hand-offs to a connection thread and
//! back, costing more than the read itself; here a read is a few B-tree probes of pages that
//! are in memory, and in WAL mode it never waits for the writer.
//!
//! A read does block the task's worker thread while it runs, and a page missing from the OS
//! page cache is a disk read on it. The store's other reads (listings, audit exports, key
//! status) stay on sqlx's connection threads: they can be long.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use vault_core::StoreError;
use vault_core::ids::MerchantId;
use vault_core::ports::{MerchantKeySet, TokenRecord, WrappedKey};
use vault_core::token::{Token, TokenFormat};
use vault_crypto::FINGERPRINT_LEN;

use crate::error::sqlite_unavailable;
use crate::rows::{KeyRow, TokenKeyRow, TokenRow};
use crate::sql;

/// Idle connections kept for reuse; more are opened when more reads run at once, and closed
/// when they are done.
const IDLE: usize = 8;

/// Each reader connection's page cache, in KiB (negative: SQLite's unit for a size in KiB).
const CACHE_KIB: i64 = -8_192;

/// The pool of reader connections.
pub(crate) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").field("path", &self.path).finish()
    }
}

impl Readers {
    pub(crate) fn new(path: &Path, busy_timeout: Duration) -> Self {
        Self {
            path: path.to_owned(),
            busy_timeout,
            idle: Mutex::new(Vec::with_capacity(IDLE)),
        }
    }

    /// Runs `read` on an idle connection (or a new one), then returns it to the pool.
    fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match idle {
            Some(conn) => conn,
            None => self.connect().map_err(sqlite_unavailable)?,
        };
        let result = read(&conn);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE
        {
            idle.push(conn);
        }
        result
    }

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.pragma_update(None, "query_only", "ON")?;
        conn.pragma_update(None, "cache_size", CACHE_KIB)?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    /// The merchant's token `token`.
    pub(crate) fn token(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|conn| {
            one_token(
                conn,
                sql::SELECT_TOKEN,
                params![token.as_str(), merchant.as_str()],
            )
        })
    }

    /// The merchant's token `token` and the DEK version it names (`SELECT_TOKEN_AND_KEY`).
    pub(crate) fn token_and_key(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<(TokenRecord, Option<WrappedKey>)>, StoreError> {
        self.with(|conn| {
            conn.prepare_cached(sql::SELECT_TOKEN_AND_KEY)
                .and_then(|mut select| {
                    select
                        .query_row(params![token.as_str(), merchant.as_str()], token_key_row)
                        .optional()
                })
                .map_err(sqlite_unavailable)?
                .map(TokenKeyRow::into_parts)
                .transpose()
        })
    }

    /// The merchant's token of one card (by fingerprint) in one format.
    pub(crate) fn token_by_fingerprint(
        &self,
        merchant: &MerchantId,
        fingerprint: &[u8; FINGERPRINT_LEN],
        format: TokenFormat,
        held: u32,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|conn| by_fingerprint(conn, merchant, fingerprint, format, held))
    }

    /// The merchant's tokens of several cards in one format: one probe per distinct card.
    pub(crate) fn tokens_by_fingerprints(
        &self,
        merchant: &MerchantId,
        fingerprints: &[[u8; FINGERPRINT_LEN]],
        format: TokenFormat,
        held: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|conn| {
            let mut asked = HashSet::with_capacity(fingerprints.len());
            let mut found = Vec::new();
            for fingerprint in fingerprints {
                if asked.insert(fingerprint)
                    && let Some(record) = by_fingerprint(conn, merchant, fingerprint, format, held)?
                {
                    found.push(record);
                }
            }
            Ok(found)
        })
    }

    /// The merchant's newest DEK and fingerprint key.
    pub(crate) fn merchant_keys(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<MerchantKeySet>, StoreError> {
        self.with(|conn| {
            let mut select = conn
                .prepare_cached(sql::SELECT_KEYS_NEWEST)
                .map_err(sqlite_unavailable)?;
            let rows = select
                .query_map(params![merchant.as_str()], key_row)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(sqlite_unavailable)?;
            crate::rows::key_set(rows)
        })
    }

    /// One version of the merchant's DEK.
    pub(crate) fn data_key(
        &self,
        merchant: &MerchantId,
        version: u32,
    ) -> Result<Option<WrappedKey>, StoreError> {
        self.with(|conn| {
            conn.prepare_cached(sql::SELECT_DEK)
                .and_then(|mut select| {
                    select
                        .query_row(params![merchant.as_str(), i64::from(version)], key_row)
                        .optional()
                })
                .map_err(sqlite_unavailable)?
                .map(KeyRow::into_key)
                .transpose()
        })
    }
}

fn by_fingerprint(
    conn: &Connection,
    merchant: &MerchantId,
    fingerprint: &[u8; FINGERPRINT_LEN],
    format: TokenFormat,
    held: u32,
) -> Result<Option<TokenRecord>, StoreError> {
    one_token(
        conn,
        sql::SELECT_BY_FINGERPRINT,
        params![
            merchant.as_str(),
            &fingerprint[..],
            format.as_str(),
            i64::from(held)
        ],
    )
}

fn one_token(
    conn: &Connection,
    statement: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Option<TokenRecord>, StoreError> {
    conn.prepare_cached(statement)
        .and_then(|mut select| select.query_row(params, token_row).optional())
        .map_err(sqlite_unavailable)?
        .map(TokenRow::into_record)
        .transpose()
}

/// A `token_columns!` row.
fn token_row(row: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        token: row.get(0)?,
        merchant_id: row.get(1)?,
        fingerprint: row.get(2)?,
        token_format: row.get(3)?,
        dek_version: row.get(4)?,
        nonce: row.get(5)?,
        ciphertext: row.get(6)?,
        brand: row.get(7)?,
        bin: row.get(8)?,
        last4: row.get(9)?,
        pan_length: row.get(10)?,
        exp_month: row.get(11)?,
        exp_year: row.get(12)?,
        created_at: row.get(13)?,
    })
}

/// A `SELECT_TOKEN_AND_KEY` row: the token's columns, then the key's (NULL if it is gone).
fn token_key_row(row: &Row<'_>) -> rusqlite::Result<TokenKeyRow> {
    Ok(TokenKeyRow {
        token: token_row(row)?,
        key_merchant_id: row.get(14)?,
        key_purpose: row.get(15)?,
        key_version: row.get(16)?,
        key_kek_id: row.get(17)?,
        key_wrapped: row.get(18)?,
        key_created_at: row.get(19)?,
        key_uses: row.get(20)?,
    })
}

/// A `key_columns!` row.
fn key_row(row: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok(KeyRow {
        merchant_id: row.get(0)?,
        purpose: row.get(1)?,
        version: row.get(2)?,
        kek_id: row.get(3)?,
        wrapped: row.get(4)?,
        created_at: row.get(5)?,
        uses: row.get(6)?,
    })
}

/// `SqliteStore`'s side of the reads `token_store_impl!` asks of a backend (async, as every
/// backend's are; these complete without waiting).
impl super::SqliteStore {
    pub(super) async fn read_token(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.readers.token(merchant, token)
    }

    pub(super) async fn read_token_and_key(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<(TokenRecord, Option<WrappedKey>)>, StoreError> {
        self.readers.token_and_key(merchant, token)
    }

    pub(super) async fn read_token_by_fingerprint(
        &self,
        merchant: &MerchantId,
        fingerprint: &[u8; FINGERPRINT_LEN],
        format: TokenFormat,
        held: u32,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.readers
            .token_by_fingerprint(merchant, fingerprint, format, held)
    }

    pub(super) async fn read_tokens_by_fingerprints(
        &self,
        merchant: &MerchantId,
        fingerprints: &[[u8; FINGERPRINT_LEN]],
        format: TokenFormat,
        held: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.readers
            .tokens_by_fingerprints(merchant, fingerprints, format, held)
    }

    pub(super) async fn read_merchant_keys(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<MerchantKeySet>, StoreError> {
        self.readers.merchant_keys(merchant)
    }

    pub(super) async fn read_data_key(
        &self,
        merchant: &MerchantId,
        version: u32,
    ) -> Result<Option<WrappedKey>, StoreError> {
        self.readers.data_key(merchant, version)
    }
}
