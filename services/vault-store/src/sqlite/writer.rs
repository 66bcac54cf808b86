//! SQLite's committer: a thread that owns one rusqlite connection and runs each group commit
//! on it (`BEGIN IMMEDIATE`, the batch's statements, `COMMIT`) with no hand-off to another
//! thread between statements, its statements prepared once and cached.
//!
//! Commits are durable before anyone hears of them, but the fsync is not inside the commit:
//! the connection commits with `synchronous=NORMAL` (in WAL mode: no sync at COMMIT) and the
//! writer hands the batch's answers to a sync thread (`group.rs`, `Durable`), which fsyncs the
//! log (`-wal`, the file every commit appends to) and only then answers. Meanwhile the writer
//! runs the next batch. A sync covers every commit appended before it, so one fsync serves
//! several commits under load. Reads may see a commit before its sync; every call's answer
//! waits for its own audit record, which commits after whatever the call read, so no answer
//! rests on a write that could still be lost (see `durability` below).
//!
//! WAL checkpoints never run inside a caller's commit: the connection's automatic checkpoint is
//! off and a WAL hook notes the log's size after each commit. Past [`BACKGROUND_PAGES`] the
//! writer nudges a checkpoint thread of its own (its own connection), which copies the log's
//! pages into the database while the writer goes on committing. The log can only start again
//! from its beginning once every page in it is copied, which a busy writer never lets the
//! other thread see; so past [`RESTART_PAGES`] the writer checkpoints itself, between two
//! commits once their callers are answered, copying only what the other thread has not.
//!
//! It writes what group commit batches (tokens, audit appends, tallies, DEK-use reservations);
//! the point reads are `reads.rs`, and the rest of the store (the long reads, key changes,
//! checkpoints of the audit trail) stays on sqlx. Both link the one
//! `libsqlite3-sys` (see the workspace Cargo.toml), and SQLite's own locking orders the two
//! writers: each takes the write lock (`BEGIN IMMEDIATE`) before this store's audit chain lock.

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use vault_core::StoreError;
use vault_core::audit::AuditRecord;
use vault_core::ids::MerchantId;
use vault_core::ports::{InsertOutcome, Tallied, TallyRequest, TokenRecord, UseReservation};

use crate::chain::{Chain, Head};
use crate::error::sqlite_unavailable;
use crate::group::{BlockingCommitter, Failed, Write, Written};
use crate::rows::{micros, seq_param};
use crate::tally;

/// WAL size, in pages, past which the checkpoint thread copies pages into the database
/// (SQLite's own automatic checkpoint starts at 1,000). Larger means fewer copies: a page the
/// log holds many times (an index page every batch touches) is copied once per checkpoint.
/// Measured (tokenize, 64 callers; CPU of the checkpoint thread per 8 s): at 1,000, 2.2 s; at
/// 4,000, 1.1 s; at 8,000, 0.9 s (docs/benchmarks.md).
const BACKGROUND_PAGES: i32 = 8_000;

/// WAL size, in pages, past which the writer checkpoints between commits, so that the log
/// starts again from its beginning (64 MiB of 4 KiB pages at most).
const RESTART_PAGES: i32 = 16_000;

/// The writer connection's page cache, in KiB (negative: SQLite's unit for a size in KiB).
/// Small on purpose: at the end of every write transaction SQLite truncates the cache
/// (`pcache1TruncateUnsafe`), and here that walks the cache's whole hash table: with 64 MiB it
/// was a quarter of the writer's CPU, and tokenize ran faster with 8 MiB both at 10 k and at
/// 10 M tokens (docs/benchmarks.md). Pages it misses come from the OS page cache.
const CACHE_KIB: i64 = -8_192;

/// One token, unless its token or card is taken or its merchant no longer holds the DEK version
/// it was sealed under (as `sql::INSERT_TOKENS`).
const INSERT_TOKEN: &str = concat!(
    "INSERT INTO tokens (",
    crate::sql::token_columns!(),
    ") SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14 WHERE EXISTS (SELECT 1 \
     FROM data_keys k WHERE k.merchant_id = ?2 AND k.purpose = 'dek' AND k.version = ?5) \
     ON CONFLICT DO NOTHING"
);

const INSERT_AUDIT: &str = concat!(
    "INSERT INTO audit_log (",
    crate::sql::audit_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
);

/// One tally's count and first item, and whether it holds an item (one primary-key probe of
/// each table).
const SELECT_TALLY: &str = "SELECT t.items, t.first_item, EXISTS (SELECT 1 FROM \
    abuse_tally_items i WHERE i.window_end = t.window_end AND i.scope = t.scope AND \
    i.subject = t.subject AND i.item = ?4) FROM abuse_tallies t WHERE t.window_end = ?1 AND \
    t.scope = ?2 AND t.subject = ?3";

const ADD_TALLY: &str = "INSERT INTO abuse_tallies (window_end, scope, subject, items, \
    first_item) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (window_end, scope, subject) DO UPDATE \
    SET items = abuse_tallies.items + excluded.items RETURNING items, first_item";

const INSERT_TALLY_ITEM: &str = "INSERT INTO abuse_tally_items (window_end, scope, subject, \
    item) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";

thread_local! {
    /// The WAL's size in pages after the last commit on this thread (SQLite calls the WAL hook
    /// on the committing thread: the writer's).
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

#[allow(clippy::unnecessary_wraps)] // the hook's signature
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Its connection could not be opened or set up.
    #[error(transparent)]
    Database(#[from] rusqlite::Error),
    /// Its runtime or thread could not start.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The writer: its connection, the store's audit chain, and a runtime for the audit sink.
pub(crate) struct Writer {
    conn: Connection,
    /// The log the commits append to, for the sync thread (taken by `syncer`).
    log: Option<std::fs::File>,
    /// Wakes the checkpoint thread (which ends when this is dropped).
    nudge: std::sync::mpsc::SyncSender<()>,
    /// Held by whichever of the two checkpoints runs (see [`checkpoint`]).
    checkpointing: Arc<Mutex<()>>,
    chain: Arc<Chain>,
    /// Drives the optional audit sink's writes (async, with a timeout).
    runtime: tokio::runtime::Runtime,
}

impl Writer {
    /// Opens the writer's connection to the (migrated) database at `path`.
    pub(crate) fn open(
        path: &Path,
        chain: Arc<Chain>,
        busy_timeout: Duration,
    ) -> Result<Self, OpenError> {
        let conn = connect(path, busy_timeout)?;
        conn.pragma_update(None, "cache_size", CACHE_KIB)?;
        // The sync thread syncs the log after each commit (see the module's docs).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut log = path.as_os_str().to_owned();
        log.push("-wal");
        let log = std::fs::File::open(log)?;
        // The pragma `connect` sets installs SQLite's own WAL hook: this one replaces it.
        conn.wal_hook(Some(note_wal_pages));
        let checkpointing = Arc::new(Mutex::new(()));
        let nudge = start_checkpoints(connect(path, busy_timeout)?, Arc::clone(&checkpointing))?;
        conn.set_prepared_statement_cache_capacity(32);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        Ok(Self {
            conn,
            log: Some(log),
            nudge,
            checkpointing,
            chain,
            runtime,
        })
    }

    /// The connection's `journal_mode`, read back, and the `synchronous` level its commits get:
    /// NORMAL (1), read back, plus the sync of the log before any answer is FULL (2).
    pub(crate) fn durability(&self) -> Result<(String, i64), rusqlite::Error> {
        let journal = self
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        let synchronous: i64 = self
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))?;
        let synced = self.log.is_some() && synchronous == 1;
        Ok((journal, if synced { 2 } else { synchronous }))
    }

    /// The batch's statements, inside the open transaction; commits unless it fails.
    fn write_batch(&mut self, writes: &[Write]) -> Result<Vec<Written>, Failed> {
        let requests = Write::tallies(writes);
        let tallies = self.tally(&requests)?;
        let outcomes = Write::tokens(writes)
            .into_iter()
            .map(|record| self.insert_token(record))
            .collect::<Result<Vec<_>, _>>()?;
        let reserved = writes
            .iter()
            .filter_map(|write| match write {
                Write::Reserve {
                    merchant,
                    version,
                    want,
                    limit,
                } => Some(self.reserve(merchant, *version, *want, *limit)),
                Write::Token { .. } | Write::Audit(_) | Write::Tally(_) => None,
            })
            .collect::<Result<Vec<_>, _>>()?;
        let changed = !requests.is_empty() || reserved.iter().any(|r| r.granted > 0);
        let (written, audits) = Write::answers(writes, outcomes, tallies, reserved);
        if audits.is_empty() {
            self.conn
                .execute_batch(if changed { "COMMIT" } else { "ROLLBACK" })
                .map_err(|e| Failed::whole(sqlite_unavailable(e)))?;
        } else {
            self.commit_audited(&audits).map_err(Failed::whole)?;
        }
        Ok(written)
    }

    /// Reserves up to `want` uses of a DEK version, as `KeyStore::reserve_dek_uses` does: inside
    /// the write transaction nothing else changes the row, so no compare-and-set is needed.
    fn reserve(
        &self,
        merchant: &MerchantId,
        version: u32,
        want: u64,
        limit: u64,
    ) -> Result<UseReservation, Failed> {
        let key = params![merchant.as_str(), i64::from(version)];
        let uses: Option<i64> = self
            .conn
            .prepare_cached(crate::sql::SELECT_DEK_USES)
            .and_then(|mut select| select.query_row(key, |row| row.get(0)).optional())
            .map_err(Failed::sqlite_statement)?;
        // Shredded meanwhile: nothing to grant (the caller then finds out).
        let Some(uses) = uses else {
            return Ok(UseReservation {
                granted: 0,
                total: 0,
            });
        };
        let old = crate::rows::count(uses).map_err(Failed::whole)?;
        let new = crate::rows::reserved(old, want, limit);
        if new > old {
            let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.conn
                .prepare_cached(crate::sql::SET_DEK_USES)
                .and_then(|mut set| {
                    // By name: the statement names `$3` before `$1`, and SQLite numbers
                    // `$`-parameters in the order they first appear.
                    set.execute(rusqlite::named_params! {
                        "$1": merchant.as_str(),
                        "$2": i64::from(version),
                        "$3": as_i64(new),
                        "$4": as_i64(old),
                    })
                })
                .map_err(Failed::sqlite_statement)?;
        }
        Ok(UseReservation {
            granted: new - old,
            total: new,
        })
    }

    /// Inserts `record` unless its token or card is taken, and says which.
    fn insert_token(&self, record: &TokenRecord) -> Result<InsertOutcome, Failed> {
        let m = &record.metadata;
        let inserted = self
            .conn
            .prepare_cached(INSERT_TOKEN)
            .and_then(|mut insert| {
                insert.execute(params![
                    record.token.as_str(),
                    record.merchant.as_str(),
                    &record.fingerprint[..],
                    m.format.as_str(),
                    i64::from(record.dek_version),
                    &record.sealed.nonce[..],
                    &record.sealed.ciphertext,
                    m.brand.as_str(),
                    &m.bin,
                    &m.last4,
                    i64::from(m.pan_length),
                    m.expiry.map(|e| i64::from(e.month())),
                    m.expiry.map(|e| i64::from(e.year())),
                    micros(m.created_at),
                ])
            })
            .map_err(Failed::sqlite_statement)?;
        if inserted == 1 {
            return Ok(InsertOutcome::Inserted);
        }
        // As `taken_in` (sql/tokens.rs): asked for the record's merchant only.
        let asked = |statement: &str, value: &dyn rusqlite::ToSql| {
            self.conn
                .prepare_cached(statement)
                .and_then(|mut select| {
                    select
                        .query_row(params![record.merchant.as_str(), value], |_| Ok(()))
                        .optional()
                })
                .map(|found| found.is_some())
                .map_err(Failed::sqlite_statement)
        };
        Ok(
            if asked(crate::sql::TOKEN_EXISTS, &record.token.as_str())? {
                InsertOutcome::TokenTaken
            } else if !asked(crate::sql::SELECT_DEK_USES, &i64::from(record.dek_version))? {
                InsertOutcome::KeyGone
            } else {
                InsertOutcome::FingerprintTaken
            },
        )
    }

    /// Counts a batch's tally requests, as `tally_in` (sql/tallies.rs) does with multi-row statements:
    /// read, plan (`tally.rs`), add each tally's new items in one atomic upsert, store the
    /// other new items, trip.
    fn tally(&self, requests: &[&TallyRequest]) -> Result<Vec<Vec<Tallied>>, Failed> {
        use std::collections::HashMap;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
        let keys: Vec<tally::Key> = requests.iter().map(|r| tally::key(r)).collect();
        let mut read = tally::Read::default();
        {
            let mut select = self
                .conn
                .prepare_cached(SELECT_TALLY)
                .map_err(Failed::sqlite_statement)?;
            for ((window_end, scope, subject), item) in tally::pairs(requests, &keys) {
                let row: Option<(i64, Vec<u8>, bool)> = select
                    .query_row(params![window_end, scope, subject, item], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()
                    .map_err(Failed::sqlite_statement)?;
                if let Some((count, first, held)) = row {
                    let key = (*window_end, *scope, subject.clone());
                    read.row(key, as_u64(count), first, item.to_vec(), held);
                }
            }
        }
        let plan = tally::plan(requests, read);
        let mut after = HashMap::new();
        let mut items = plan.new_items.clone();
        {
            let mut add = self
                .conn
                .prepare_cached(ADD_TALLY)
                .map_err(Failed::sqlite_statement)?;
            for (key, n, first) in &plan.added {
                let (window_end, scope, subject) = key;
                let (count, kept): (i64, Vec<u8>) = add
                    .query_row(
                        params![window_end, scope, subject, as_i64(*n), first.as_slice()],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .map_err(Failed::sqlite_statement)?;
                // Another transaction created the tally first: its first item stays in the
                // row, and this batch's goes to the items table.
                if !first.is_empty() && *first != kept {
                    items.push((key.clone(), first.clone()));
                }
                after.insert(key.clone(), as_u64(count));
            }
        }
        {
            let mut insert = self
                .conn
                .prepare_cached(INSERT_TALLY_ITEM)
                .map_err(Failed::sqlite_statement)?;
            for ((window_end, scope, subject), item) in &items {
                insert
                    .execute(params![window_end, scope, subject, item.as_slice()])
                    .map_err(Failed::sqlite_statement)?;
            }
        }
        for ((window_end, scope, subject), floor) in &plan.trips {
            self.conn
                .prepare_cached(crate::sql::TRIP_TALLY)
                .and_then(|mut trip| {
                    trip.execute(params![
                        window_end,
                        scope,
                        subject,
                        as_i64(*floor),
                        &[0_u8; 0][..]
                    ])
                })
                .map_err(Failed::sqlite_statement)?;
        }
        Ok(plan.results(requests, &after))
    }

    /// Appends `audits` to the chain and commits, as `commit_audited` (sql/audit.rs) does: the chain
    /// lock is taken after the transaction's other statements (the write lock is held already)
    /// and held through the commit; the head moves only if the commit succeeds.
    fn commit_audited(&self, audits: &[&AuditRecord]) -> Result<(), StoreError> {
        let mut guard = self.chain.blocking_lock();
        let mut head = match *guard {
            Some(head) => head,
            None => self.read_head()?,
        };
        let mut entries = Vec::with_capacity(audits.len());
        {
            let mut insert = self
                .conn
                .prepare_cached(INSERT_AUDIT)
                .map_err(sqlite_unavailable)?;
            for audit in audits {
                let entry = crate::rows::chained_entry(audit, &self.chain.writer, head)?;
                insert
                    .execute(params![
                        &entry.writer,
                        seq_param(entry.seq),
                        micros(audit.time),
                        &entry.caller,
                        &entry.origin,
                        &entry.event,
                        &entry.detail,
                        &entry.outcome,
                        &entry.resource,
                        &entry.merchant_id,
                        &entry.token,
                        &entry.request_id,
                        &entry.reason,
                        &entry.prev_hash[..],
                        &entry.hash[..],
                    ])
                    .map_err(sqlite_unavailable)?;
                head = Head {
                    seq: entry.seq,
                    hash: entry.hash,
                };
                entries.push(entry);
            }
        }
        // Before the commit, still under the lock (see `commit_audited` in sql/audit.rs).
        if let Some(sink) = self.chain.sink.get() {
            self.runtime.block_on(sink.copy(&entries))?;
        }
        // Unknown until the commit answers: a failed COMMIT may still have landed.
        *guard = None;
        self.conn
            .execute_batch("COMMIT")
            .map_err(sqlite_unavailable)?;
        *guard = Some(head);
        Ok(())
    }

    /// This writer's head, read back (see `read_head` in sql/audit.rs).
    fn read_head(&self) -> Result<Head, StoreError> {
        self.conn
            .execute(
                crate::sql::INSERT_WRITER,
                params![&self.chain.writer, micros(vault_core::clock::now())],
            )
            .map_err(sqlite_unavailable)?;
        let newest = |statement: &str| -> Result<Option<(i64, Vec<u8>)>, StoreError> {
            self.conn
                .query_row(statement, params![&self.chain.writer], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .map_err(sqlite_unavailable)
        };
        let record = newest(crate::sql::SELECT_RECORD_HEAD)?;
        let signed = newest(crate::sql::SELECT_CHECKPOINT_HEAD)?;
        let mut head = crate::chain::EMPTY;
        for (seq, hash) in record.into_iter().chain(signed) {
            let candidate = crate::rows::head(seq, &hash)?;
            if candidate.seq > head.seq {
                head = candidate;
            }
        }
        Ok(head)
    }
}

impl BlockingCommitter for Writer {
    fn commit_writes(&mut self, writes: &[Write]) -> Result<Vec<Written>, Failed> {
        // IMMEDIATE takes the write lock up front (waiting up to the busy timeout for the
        // sqlx connections' rare write transactions).
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| Failed::whole(sqlite_unavailable(e)))?;
        let result = self.write_batch(writes);
        if result.is_err() && !self.conn.is_autocommit() {
            // Nothing of a failed batch stays; a failed rollback leaves the connection's
            // transaction open, and the next BEGIN fails the next batch loudly.
            if let Err(error) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(%error, "rolling back a failed group commit failed");
            }
        }
        result
    }

    fn syncer(&mut self) -> Option<crate::group::Syncer> {
        let log = self.log.take()?;
        Some(Box::new(move || log.sync_data()))
    }

    fn between_commits(&mut self) {
        let pages = WAL_PAGES.get();
        if pages >= BACKGROUND_PAGES {
            // Full: the thread is at work, and will look at the log again when done.
            let _ = self.nudge.try_send(());
        }
        if pages >= RESTART_PAGES && checkpoint(&self.conn, &self.checkpointing, "writer") {
            WAL_PAGES.set(0);
        }
    }
}

/// A connection to the (migrated) database at `path`, durable, with no automatic checkpoint.
fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // As on the sqlx connections (see `SqliteStore::open`).
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// Starts the checkpoint thread on `conn`: one passive checkpoint per nudge.
fn start_checkpoints(
    conn: Connection,
    checkpointing: Arc<Mutex<()>>,
) -> Result<std::sync::mpsc::SyncSender<()>, OpenError> {
    let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("vault-checkpoint".to_owned())
        .spawn(move || {
            while nudged.recv().is_ok() {
                checkpoint(&conn, &checkpointing, "background");
            }
        })?;
    Ok(nudge)
}

/// Runs a passive checkpoint (it never waits on readers or the writer); true if it copied
/// every page of the log. A failed one is retried at the next nudge or gap.
///
/// SQLite runs one checkpoint at a time and a passive one finding another at work gives up at
/// once: the writer's, finding the thread's, would give up every time under load, and the log
/// would never start over (it grew past 600 MB in a run of batches before this lock). So the
/// two take `checkpointing` first: the writer waits for the thread's checkpoint to end, then
/// copies what is left.
fn checkpoint(conn: &Connection, checkpointing: &Mutex<()>, by: &'static str) -> bool {
    let _one_at_a_time = checkpointing
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = std::time::Instant::now();
    let checkpoint: Result<(i64, i64, i64), _> =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        });
    match checkpoint {
        Ok((busy, log, copied)) => {
            tracing::trace!(
                by,
                log,
                copied,
                micros = started.elapsed().as_micros(),
                "wal checkpoint"
            );
            busy == 0 && log == copied
        }
        Err(error) => {
            tracing::warn!(by, %error, "WAL checkpoint failed; retried later");
            false
        }
    }
}
