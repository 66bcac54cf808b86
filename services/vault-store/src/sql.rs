//! The `TokenStore` implementation every sqlx backend shares: one set of statements, written
//! with `$N` placeholders (PostgreSQL's; SQLite reads them as positional parameters too), and
//! one body, stamped out per backend by `token_store_impl!`. A backend supplies its pool, a
//! `begin()` that opens a write transaction, and the statement (if any) that serializes
//! changes to one merchant's keys (see [`PG_LOCK_MERCHANT_KEYS`]).

/// The columns of `tokens`, in the order `TokenRow` and the insert use.
macro_rules! token_columns {
    () => {
        "token, merchant_id, fingerprint, token_format, dek_version, nonce, ciphertext, brand, \
         bin, last4, pan_length, exp_month, exp_year, created_at"
    };
}

/// The columns of `data_keys`, in the order `KeyRow` uses.
macro_rules! key_columns {
    () => {
        "merchant_id, purpose, version, kek_id, wrapped, created_at, uses"
    };
}

pub(crate) const SELECT_KEYS_NEWEST: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM data_keys WHERE merchant_id = $1 AND version = (SELECT MAX(d.version) FROM \
     data_keys d WHERE d.merchant_id = data_keys.merchant_id AND d.purpose = data_keys.purpose)"
);

pub(crate) const SELECT_DEK: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM data_keys WHERE merchant_id = $1 AND purpose = 'dek' AND version = $2"
);

/// PostgreSQL: a transaction-scoped lock on one merchant's keys, taken by every transaction
/// that adds a key and by the shred. Without it, under READ COMMITTED, a key inserted by a
/// rotation or first use that had not committed when the shred's DELETE ran would survive the
/// shred (the insert's `NOT EXISTS shredded_merchants` check cannot see the shred's uncommitted
/// row either). The two-key form keeps clear of sqlx's migration lock (a one-key lock). SQLite
/// needs none: `BEGIN IMMEDIATE` already serializes writers.
pub(crate) const PG_LOCK_MERCHANT_KEYS: &str =
    "SELECT pg_advisory_xact_lock(1447385160, hashtext($1))";

/// Never creates a key for a merchant whose keys were destroyed.
pub(crate) const INSERT_KEY: &str = "INSERT INTO data_keys (merchant_id, purpose, version, \
     kek_id, wrapped, created_at) SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM \
     shredded_merchants s WHERE s.merchant_id = $1) ON CONFLICT DO NOTHING";

pub(crate) const SELECT_DEK_USES: &str = "SELECT uses FROM data_keys WHERE merchant_id = $1 \
     AND purpose = 'dek' AND version = $2";

pub(crate) const SET_DEK_USES: &str = "UPDATE data_keys SET uses = $3 WHERE merchant_id = $1 \
     AND purpose = 'dek' AND version = $2 AND uses = $4";

pub(crate) const SELECT_KEY_VERSIONS: &str = concat!(
    "SELECT ",
    key_columns!(),
    ", (SELECT COUNT(*) FROM tokens t WHERE data_keys.purpose = 'dek' AND t.merchant_id = \
     data_keys.merchant_id AND t.dek_version = data_keys.version) AS tokens FROM data_keys \
     WHERE merchant_id = $1 ORDER BY purpose, version"
);

pub(crate) const SELECT_TOKENS_UNDER_OLDER_DEK: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE merchant_id = $1 AND dek_version < $2 AND token > $3 ORDER BY token \
     LIMIT $4"
);

pub(crate) const COUNT_TOKENS_UNDER_OLDER_DEK: &str = "SELECT COUNT(*) FROM tokens WHERE \
     merchant_id = $1 AND dek_version < $2";

pub(crate) const REENCRYPT_TOKEN: &str = "UPDATE tokens SET dek_version = $3, nonce = $4, \
     ciphertext = $5 WHERE token = $1 AND merchant_id = $2 AND dek_version = $6";

pub(crate) const SELECT_KEYS_NOT_UNDER: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM data_keys WHERE kek_id <> $1 AND (merchant_id, purpose, version) > ($2, $3, $4) \
     ORDER BY merchant_id, purpose, version LIMIT $5"
);

pub(crate) const COUNT_KEYS_NOT_UNDER: &str = "SELECT COUNT(*) FROM data_keys WHERE kek_id <> $1";

pub(crate) const REWRAP_KEY: &str = "UPDATE data_keys SET kek_id = $4, wrapped = $5 WHERE \
     merchant_id = $1 AND purpose = $2 AND version = $3 AND kek_id = $6 AND wrapped = $7";

pub(crate) const SELECT_PENDING_SHRED: &str = "SELECT request_id, merchant_id, requested_by, \
     requested_at, reason FROM shred_requests WHERE merchant_id = $1 AND state = 'pending'";

pub(crate) const SUPERSEDE_SHRED: &str = "UPDATE shred_requests SET state = 'superseded' \
     WHERE request_id = $1 AND state = 'pending'";

pub(crate) const INSERT_SHRED: &str = "INSERT INTO shred_requests (request_id, merchant_id, \
     requested_by, requested_at, reason, state) VALUES ($1, $2, $3, $4, $5, 'pending')";

pub(crate) const APPROVE_SHRED: &str = "UPDATE shred_requests SET state = 'executed', \
     approved_by = $3, approved_at = $4 WHERE request_id = $1 AND merchant_id = $2 AND \
     state = 'pending' AND requested_by <> $3";

pub(crate) const DELETE_MERCHANT_KEYS: &str = "DELETE FROM data_keys WHERE merchant_id = $1";

pub(crate) const INSERT_SHREDDED: &str = "INSERT INTO shredded_merchants (merchant_id, \
     shredded_at, request_id) VALUES ($1, $2, $3)";

pub(crate) const IS_SHREDDED: &str =
    "SELECT merchant_id FROM shredded_merchants WHERE merchant_id = $1";

/// How many times a use reservation retries its compare-and-set before giving up.
pub(crate) const MAX_CAS_ATTEMPTS: usize = 64;

pub(crate) const SELECT_MERCHANT_IDS: &str = "SELECT merchant_id FROM data_keys UNION \
    SELECT merchant_id FROM shredded_merchants ORDER BY 1";

/// Tally keys (or items) per multi-row statement: 4 parameters each stays far below
/// SQLite's 32,766 and PostgreSQL's 65,535.
pub(crate) const TALLY_KEYS_PER_STATEMENT: usize = 1_000;
/// The tallies of a list of (key, item) pairs, each with whether its tally holds the item
/// already (beyond the first, which the row holds): the list joined to the tallies, one
/// primary-key probe of each table per pair (`(...) IN (VALUES ...)` scanned the whole table
/// on SQLite). One statement reads both, so on PostgreSQL a count and the items it sees come
/// from one snapshot (see `tally.rs`).
pub(crate) const SELECT_TALLIES_IN: &str = "SELECT t.window_end, t.scope, t.subject, t.items, \
    t.first_item, v.column4, EXISTS (SELECT 1 FROM abuse_tally_items i WHERE i.window_end = t.window_end \
    AND i.scope = t.scope AND i.subject = t.subject AND i.item = v.column4) FROM (";
pub(crate) const SELECT_TALLIES_JOIN: &str = ") AS v JOIN abuse_tallies t ON \
    t.window_end = v.column1 AND t.scope = v.column2 AND t.subject = v.column3";
pub(crate) const INSERT_TALLY_ITEMS: &str =
    "INSERT INTO abuse_tally_items (window_end, scope, subject, item) ";
/// Adds each tally's new items in one atomic upsert, whose row lock (PostgreSQL) or write
/// lock (SQLite) orders racing transactions; it returns the counts after.
pub(crate) const ADD_TALLIES: &str =
    "INSERT INTO abuse_tallies (window_end, scope, subject, items, first_item) ";
pub(crate) const ADD_TALLIES_TAIL: &str = " ON CONFLICT (window_end, scope, subject) DO UPDATE \
    SET items = abuse_tallies.items + excluded.items RETURNING window_end, scope, subject, \
    items, first_item";
pub(crate) const TRIP_TALLY: &str = "INSERT INTO abuse_tallies (window_end, scope, subject, \
    items, first_item) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (window_end, scope, subject) DO UPDATE SET \
    items = CASE WHEN abuse_tallies.items < excluded.items THEN excluded.items \
    ELSE abuse_tallies.items END";
pub(crate) const ENDED_TALLIES: &str = "SELECT window_end, scope, subject FROM abuse_tallies \
    WHERE window_end <= $1 ORDER BY window_end LIMIT $2";
/// Ended tallies purged per transaction.
pub(crate) const TALLIES_PER_PURGE: i64 = 1_000;
pub(crate) const PURGE_TALLY_ITEMS: &str = "DELETE FROM abuse_tally_items WHERE window_end = $1 \
    AND scope = $2 AND subject = $3";
pub(crate) const PURGE_TALLY: &str = "DELETE FROM abuse_tallies WHERE window_end = $1 \
    AND scope = $2 AND subject = $3";

pub(crate) const SELECT_BY_FINGERPRINT: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE merchant_id = $1 AND fingerprint = $2 AND token_format = $3"
);

/// The head of a batch's fingerprint lookup: the merchant and format are bound next, then
/// `FINGERPRINTS_IN` and the fingerprints.
pub(crate) const SELECT_BY_FINGERPRINTS: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE merchant_id = "
);

pub(crate) const FINGERPRINTS_IN: &str = " AND fingerprint IN (";

/// Fingerprints looked up per statement (a batch holds at most 1,000 cards).
pub(crate) const FINGERPRINTS_PER_SELECT: usize = 500;

pub(crate) const SELECT_TOKEN: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE token = $1 AND merchant_id = $2"
);

/// The head of a multi-row token insert; `insert_tokens_in` adds the rows and the tail. A row
/// whose token (for its merchant: the key is (merchant_id, token)) or card is taken is skipped
/// (no error: PostgreSQL would abort a group commit's whole transaction on a unique violation),
/// and the rows inserted come back.
pub(crate) const INSERT_TOKENS: &str = concat!("INSERT INTO tokens (", token_columns!(), ") ");

/// The tail of [`INSERT_TOKENS`].
pub(crate) const INSERT_TOKENS_TAIL: &str =
    " ON CONFLICT DO NOTHING RETURNING token, merchant_id, fingerprint";

/// Whether the merchant holds this token. Tokens are unique per merchant: another merchant's
/// token of the same string neither blocks an insert nor explains a skipped one.
pub(crate) const TOKEN_EXISTS: &str =
    "SELECT token FROM tokens WHERE token = $1 AND merchant_id = $2";

pub(crate) const DELETE_TOKEN: &str = "DELETE FROM tokens WHERE token = $1 AND merchant_id = $2";

/// The columns of `audit_log`, in the order `AuditRow` and the insert use.
macro_rules! audit_columns {
    () => {
        "writer, seq, at, caller, origin, operation, detail, outcome, resource, merchant_id, \
         token, request_id, reason, prev_hash, hash"
    };
}

/// The columns of `audit_checkpoints`, in the order `CheckpointRow` and the insert use.
macro_rules! checkpoint_columns {
    () => {
        "cp_seq, kind, at, writer, seq, head_hash, prev_hash, key_id, signature, hash, replaces_key"
    };
}

/// The head of a multi-row audit insert.
pub(crate) const INSERT_AUDITS: &str = concat!("INSERT INTO audit_log (", audit_columns!(), ") ");

/// Most rows in one multi-row insert: 512 rows of 15 columns stay under SQLite's (32,766)
/// and PostgreSQL's (65,535) limits on bound parameters.
pub(crate) const ROWS_PER_INSERT: usize = 512;

pub(crate) const SELECT_AUDIT_SIGNING_KEY: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM data_keys WHERE merchant_id = $1 AND purpose = 'audit_signing' ORDER BY version DESC \
     LIMIT 1"
);

pub(crate) const INSERT_WRITER: &str =
    "INSERT INTO audit_writers (writer, started_at) VALUES ($1, $2) ON CONFLICT DO NOTHING";

pub(crate) const SELECT_WRITERS: &str = "SELECT writer FROM audit_writers ORDER BY writer";

pub(crate) const SELECT_RECORD_HEAD: &str =
    "SELECT seq, hash FROM audit_log WHERE writer = $1 ORDER BY seq DESC LIMIT 1";

pub(crate) const SELECT_CHECKPOINT_HEAD: &str = "SELECT seq, head_hash FROM audit_checkpoints \
     WHERE writer = $1 ORDER BY seq DESC, cp_seq DESC LIMIT 1";

pub(crate) const SELECT_CHECKPOINT_TIP: &str =
    "SELECT cp_seq, hash FROM audit_checkpoints ORDER BY cp_seq DESC LIMIT 1";

pub(crate) const INSERT_CHECKPOINT: &str = concat!(
    "INSERT INTO audit_checkpoints (",
    checkpoint_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING"
);

pub(crate) const SELECT_CHECKPOINTS: &str = concat!(
    "SELECT ",
    checkpoint_columns!(),
    " FROM audit_checkpoints WHERE cp_seq >= $1 AND cp_seq <= $2 ORDER BY cp_seq LIMIT $3"
);

pub(crate) const SELECT_FIRST_CHECKPOINT: &str = "SELECT MIN(cp_seq) FROM audit_checkpoints";

/// Per writer, its newest checkpoint at or before a time.
pub(crate) const CHECKPOINTS_AT_OR_BEFORE: &str = "SELECT writer, MAX(cp_seq) FROM \
     audit_checkpoints WHERE at <= $1 GROUP BY writer";

/// Per writer, its oldest checkpoint after a time.
pub(crate) const CHECKPOINTS_AFTER: &str = "SELECT writer, MIN(cp_seq) FROM audit_checkpoints \
     WHERE at > $1 GROUP BY writer";

/// Per writer with a checkpoint from `cp_seq` on: its newest checkpoint.
pub(crate) const NEWEST_CHECKPOINTS_FROM: &str = "SELECT writer, MAX(cp_seq) FROM \
     audit_checkpoints WHERE cp_seq >= $1 GROUP BY writer";

/// Per writer, the lowest and highest head its checkpoints in a range sign.
pub(crate) const WRITER_RANGES: &str = "SELECT writer, MIN(seq), MAX(seq) FROM \
     audit_checkpoints WHERE cp_seq >= $1 AND cp_seq <= $2 GROUP BY writer ORDER BY writer";

/// The oldest checkpoint at or after a time (a prune keeps it and all after it).
pub(crate) const FIRST_CHECKPOINT_FROM: &str =
    "SELECT MIN(cp_seq) FROM audit_checkpoints WHERE at >= $1";

/// Per writer, the newest head its checkpoints up to `cp_seq` sign (a prune's cuts).
pub(crate) const PRUNE_CUTS: &str = "SELECT writer, MAX(seq) FROM audit_checkpoints \
     WHERE cp_seq <= $1 GROUP BY writer ORDER BY writer";

/// The hash a checkpoint signed for a writer's seq.
pub(crate) const SIGNED_HASH: &str = "SELECT head_hash FROM audit_checkpoints \
     WHERE writer = $1 AND seq = $2 ORDER BY cp_seq DESC LIMIT 1";

/// The lowest head a writer's checkpoints after `cp_seq` sign.
pub(crate) const KEPT_LOW: &str =
    "SELECT MIN(seq) FROM audit_checkpoints WHERE writer = $1 AND cp_seq > $2";

/// A writer's newest checkpoint's kind and seq.
pub(crate) const NEWEST_CHECKPOINT_OF: &str =
    "SELECT kind, seq FROM audit_checkpoints WHERE writer = $1 ORDER BY cp_seq DESC LIMIT 1";

pub(crate) const GRANT_PRUNE: &str = "INSERT INTO audit_prune_permit (id) VALUES (1)";
pub(crate) const REVOKE_PRUNE: &str = "DELETE FROM audit_prune_permit";
pub(crate) const PRUNE_RECORDS: &str = "DELETE FROM audit_log WHERE writer = $1 AND seq <= $2";
pub(crate) const PRUNE_CHECKPOINTS: &str = "DELETE FROM audit_checkpoints WHERE cp_seq <= $1";
pub(crate) const CLOSE_WRITER: &str = "DELETE FROM audit_writers WHERE writer = $1";

pub(crate) const SELECT_WRITER_RECORDS: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM audit_log WHERE writer = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"
);

/// Audit records by optional filters (a NULL filter matches all), after a cursor.
pub(crate) const FIND_AUDIT: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM audit_log WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR at < $2) \
     AND ($3 IS NULL OR merchant_id = $3) AND ($4 IS NULL OR caller = $4) \
     AND ($5 IS NULL OR operation = $5) AND ($6 IS NULL OR outcome = $6) \
     AND (at, writer, seq) > ($7, $8, $9) ORDER BY at, writer, seq LIMIT $10"
);

/// What identifies an inserted token row in a multi-row insert's answer: its token, merchant
/// and fingerprint (two writes of one batch may draw the same token for different cards).
pub(crate) type RowKey = (String, String, Vec<u8>);

pub(crate) fn row_key(record: &vault_core::ports::TokenRecord) -> RowKey {
    (
        record.token.as_str().to_owned(),
        record.merchant.as_str().to_owned(),
        record.fingerprint.to_vec(),
    )
}

/// Implements `vault_core::ports::TokenStore` for `$store`, a struct with a `pool: Pool<$db>`
/// field and an `async fn begin(&self) -> Result<Transaction<'static, $db>, StoreError>`.
macro_rules! token_store_impl {
    ($store:ty, $db:ty, $lock_merchant_keys:expr) => {
        impl $store {
            /// Copies every committed audit record to `sink` too (see `sink.rs`). Set it
            /// before the first record; a second sink is ignored.
            #[must_use]
            pub fn with_audit_sink(self, sink: $crate::AuditSink) -> Self {
                let _ = self.chain.sink.set(sink);
                self
            }

            /// Serializes this transaction with every other that changes `merchant`'s keys
            /// (until it ends), where the backend needs it.
            async fn lock_merchant_keys(
                tx: &mut sqlx::Transaction<'static, $db>,
                merchant: &vault_core::ids::MerchantId,
            ) -> Result<(), vault_core::StoreError> {
                let statement: Option<&'static str> = $lock_merchant_keys;
                if let Some(statement) = statement {
                    sqlx::query(statement)
                        .bind(merchant.as_str())
                        .execute(&mut **tx)
                        .await
                        .map_err($crate::error::unavailable)?;
                }
                Ok(())
            }

            /// Appends `audits` to this writer's chain inside `tx` and commits; the chain's
            /// head moves only if the commit succeeds (see `chain.rs`).
            async fn commit_audited(
                &self,
                mut tx: sqlx::Transaction<'static, $db>,
                audits: &[&vault_core::audit::AuditRecord],
            ) -> Result<Vec<vault_audit::Entry>, vault_core::StoreError> {
                let mut guard = self.chain.lock().await;
                let mut head = match *guard {
                    Some(head) => head,
                    None => Self::read_head(&mut tx, &self.chain.writer).await?,
                };
                let mut entries = Vec::with_capacity(audits.len());
                for audit in audits {
                    let entry = $crate::rows::chained_entry(audit, &self.chain.writer, head)?;
                    head = $crate::chain::Head {
                        seq: entry.seq,
                        hash: entry.hash,
                    };
                    entries.push(entry);
                }
                for (entries, audits) in entries
                    .chunks($crate::sql::ROWS_PER_INSERT)
                    .zip(audits.chunks($crate::sql::ROWS_PER_INSERT))
                {
                    let mut insert = sqlx::QueryBuilder::<$db>::new($crate::sql::INSERT_AUDITS);
                    insert.push_values(entries.iter().zip(audits), |mut row, (entry, audit)| {
                        row.push_bind(&entry.writer)
                            .push_bind($crate::rows::seq_param(entry.seq))
                            .push_bind($crate::rows::micros(audit.time))
                            .push_bind(&entry.caller)
                            .push_bind(&entry.origin)
                            .push_bind(&entry.event)
                            .push_bind(&entry.detail)
                            .push_bind(&entry.outcome)
                            .push_bind(&entry.resource)
                            .push_bind(&entry.merchant_id)
                            .push_bind(&entry.token)
                            .push_bind(&entry.request_id)
                            .push_bind(&entry.reason)
                            .push_bind(&entry.prev_hash[..])
                            .push_bind(&entry.hash[..]);
                    });
                    insert
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::error::unavailable)?;
                }
                // Before the commit, still under the lock: the sink sees each writer's records
                // in chain order, and a required sink that fails rolls the transaction back.
                if let Some(sink) = self.chain.sink.get() {
                    sink.copy(&entries).await?;
                }
                // Unknown until the commit answers: a failed COMMIT may still have landed.
                *guard = None;
                tx.commit().await.map_err($crate::error::unavailable)?;
                *guard = Some(head);
                Ok(entries)
            }

            /// Reads this writer's head back: its newest record, or the newest head a
            /// checkpoint signs (a prune may have removed the records), registering the writer
            /// on its first record.
            async fn read_head(
                tx: &mut sqlx::Transaction<'static, $db>,
                writer: &str,
            ) -> Result<$crate::chain::Head, vault_core::StoreError> {
                sqlx::query($crate::sql::INSERT_WRITER)
                    .bind(writer)
                    .bind($crate::rows::micros(vault_core::clock::now()))
                    .execute(&mut **tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                let record: Option<(i64, Vec<u8>)> =
                    sqlx::query_as($crate::sql::SELECT_RECORD_HEAD)
                        .bind(writer)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err($crate::error::unavailable)?;
                let signed: Option<(i64, Vec<u8>)> =
                    sqlx::query_as($crate::sql::SELECT_CHECKPOINT_HEAD)
                        .bind(writer)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err($crate::error::unavailable)?;
                let mut head = $crate::chain::EMPTY;
                for (seq, hash) in record.into_iter().chain(signed) {
                    let candidate = $crate::rows::head(seq, &hash)?;
                    if candidate.seq > head.seq {
                        head = candidate;
                    }
                }
                Ok(head)
            }

            /// Stores `checkpoint` in `tx`; `Ok(false)` if its `cp_seq` is taken.
            async fn insert_checkpoint_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                checkpoint: &vault_audit::Checkpoint,
            ) -> Result<bool, vault_core::StoreError> {
                let at = vault_audit::parse_time(&checkpoint.at)
                    .ok_or_else(|| $crate::rows::corrupt("checkpoint time"))?;
                let done = sqlx::query($crate::sql::INSERT_CHECKPOINT)
                    .bind($crate::rows::seq_param(checkpoint.cp_seq))
                    .bind(&checkpoint.kind)
                    .bind(at)
                    .bind(&checkpoint.writer)
                    .bind($crate::rows::seq_param(checkpoint.seq))
                    .bind(&checkpoint.head_hash[..])
                    .bind(&checkpoint.prev_hash[..])
                    .bind(&checkpoint.key_id)
                    .bind(&checkpoint.signature[..])
                    .bind(&checkpoint.hash[..])
                    .bind(checkpoint.replaces_key.as_deref())
                    .execute(&mut **tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            /// `writer`'s newest record's seq and hash, if it has any left.
            async fn record_head_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                writer: &str,
            ) -> Result<Option<$crate::chain::Head>, vault_core::StoreError> {
                let record: Option<(i64, Vec<u8>)> =
                    sqlx::query_as($crate::sql::SELECT_RECORD_HEAD)
                        .bind(writer)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err($crate::error::unavailable)?;
                record
                    .map(|(seq, hash)| $crate::rows::head(seq, &hash))
                    .transpose()
            }

            /// What a prune through the export's checkpoint `exported` with cutoff `before`
            /// would remove, as `conn` sees the trail (see `PrunePlan`).
            async fn plan_prune_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                exported: u64,
                before: time::OffsetDateTime,
            ) -> Result<Option<vault_core::ports::PrunePlan>, vault_core::StoreError> {
                let young: Option<i64> = sqlx::query_scalar($crate::sql::FIRST_CHECKPOINT_FROM)
                    .bind($crate::rows::micros(before))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err($crate::error::unavailable)?;
                let through = match young {
                    Some(young) => exported.min($crate::rows::seq_of(young)?.saturating_sub(1)),
                    None => exported,
                };
                let cuts: Vec<(String, i64)> = sqlx::query_as($crate::sql::PRUNE_CUTS)
                    .bind($crate::rows::seq_param(through))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err($crate::error::unavailable)?;
                if cuts.is_empty() {
                    return Ok(None);
                }
                let mut writers = Vec::with_capacity(cuts.len());
                for (writer, signed) in cuts {
                    let signed = $crate::rows::seq_of(signed)?;
                    writers.push(Self::prune_cut_on(conn, writer, signed, through).await?);
                }
                Ok(Some(vault_core::ports::PrunePlan {
                    exported,
                    before,
                    through,
                    writers,
                }))
            }

            /// One writer's part of a prune through checkpoint `through`, where the newest
            /// head a removed checkpoint signs for it is `signed`. The cut is never above the
            /// lowest head a kept checkpoint signs (an earlier prune's anchor, or a head signed
            /// out of order): the remainder must still start where a kept checkpoint says.
            async fn prune_cut_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                writer: String,
                signed: u64,
                through: u64,
            ) -> Result<vault_core::ports::PruneCut, vault_core::StoreError> {
                let kept_low: Option<i64> = sqlx::query_scalar($crate::sql::KEPT_LOW)
                    .bind(&writer)
                    .bind($crate::rows::seq_param(through))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err($crate::error::unavailable)?;
                let kept_low = kept_low.map($crate::rows::seq_of).transpose()?;
                let cut = kept_low.map_or(signed, |low| low.min(signed));
                let cut_hash: Vec<u8> = sqlx::query_scalar($crate::sql::SIGNED_HASH)
                    .bind(&writer)
                    .bind($crate::rows::seq_param(cut))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err($crate::error::unavailable)?;
                let newest: Option<(String, i64)> =
                    sqlx::query_as($crate::sql::NEWEST_CHECKPOINT_OF)
                        .bind(&writer)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err($crate::error::unavailable)?;
                let record_head = Self::record_head_on(conn, &writer)
                    .await?
                    .map_or(0, |h| h.seq);
                let stopped = newest.is_some_and(|(kind, seq)| {
                    kind == vault_audit::CheckpointKind::Stop.as_str()
                        && $crate::rows::seq_of(seq).is_ok_and(|seq| seq == cut)
                });
                Ok(vault_core::ports::PruneCut {
                    cut_hash: $crate::rows::hash_of(&cut_hash, "signed head hash")?,
                    finished: stopped && kept_low.is_none() && record_head <= cut,
                    kept_low,
                    writer,
                    cut,
                })
            }

            async fn insert_key(
                tx: &mut sqlx::Transaction<'static, $db>,
                key: &vault_core::ports::WrappedKey,
                created_at: time::OffsetDateTime,
            ) -> Result<u64, vault_core::StoreError> {
                sqlx::query($crate::sql::INSERT_KEY)
                    .bind(key.context.merchant.as_str())
                    .bind(key.context.purpose.as_str())
                    .bind(i64::from(key.context.version))
                    .bind(&key.kek_id)
                    .bind(&key.wrapped)
                    .bind($crate::rows::micros(created_at))
                    .execute(&mut **tx)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err($crate::error::unavailable)
            }
        }

        #[async_trait::async_trait]
        impl vault_core::ports::TokenStore for $store {
            async fn merchant_keys(
                &self,
                merchant: &vault_core::ids::MerchantId,
            ) -> Result<Option<vault_core::ports::MerchantKeySet>, vault_core::StoreError> {
                self.read_merchant_keys(merchant).await
            }

            async fn create_merchant_keys(
                &self,
                keys: &vault_core::ports::MerchantKeySet,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                Self::lock_merchant_keys(&mut tx, &keys.dek.context.merchant).await?;
                let dek = Self::insert_key(&mut tx, &keys.dek, keys.dek_created_at).await?;
                let fingerprint =
                    Self::insert_key(&mut tx, &keys.fingerprint, keys.dek_created_at).await?;
                tx.commit().await.map_err($crate::error::unavailable)?;
                Ok(dek == 1 && fingerprint == 1)
            }

            async fn data_key(
                &self,
                merchant: &vault_core::ids::MerchantId,
                version: u32,
            ) -> Result<Option<vault_core::ports::WrappedKey>, vault_core::StoreError> {
                self.read_data_key(merchant, version).await
            }

            async fn token_by_fingerprint(
                &self,
                merchant: &vault_core::ids::MerchantId,
                fingerprint: &[u8; vault_crypto::FINGERPRINT_LEN],
                format: vault_core::token::TokenFormat,
            ) -> Result<Option<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                self.read_token_by_fingerprint(merchant, fingerprint, format)
                    .await
            }

            async fn tokens_by_fingerprints(
                &self,
                merchant: &vault_core::ids::MerchantId,
                fingerprints: &[[u8; vault_crypto::FINGERPRINT_LEN]],
                format: vault_core::token::TokenFormat,
            ) -> Result<Vec<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                self.read_tokens_by_fingerprints(merchant, fingerprints, format)
                    .await
            }

            async fn insert_token(
                &self,
                record: &vault_core::ports::TokenRecord,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<vault_core::ports::InsertOutcome, vault_core::StoreError> {
                let write = $crate::group::Write::Token {
                    record: Box::new(record.clone()),
                    audit: audit.clone(),
                };
                match self.group.write(self, write).await? {
                    $crate::group::Written::Token(outcome) => Ok(outcome),
                    _ => Err(vault_core::StoreError::unavailable(
                        "a token insert was answered as another write",
                    )),
                }
            }

            async fn token(
                &self,
                merchant: &vault_core::ids::MerchantId,
                token: &vault_core::token::Token,
            ) -> Result<Option<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                self.read_token(merchant, token).await
            }

            async fn delete_token(
                &self,
                merchant: &vault_core::ids::MerchantId,
                token: &vault_core::token::Token,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                let deleted = sqlx::query($crate::sql::DELETE_TOKEN)
                    .bind(token.as_str())
                    .bind(merchant.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?
                    .rows_affected();
                if deleted == 0 {
                    tx.rollback().await.map_err($crate::error::unavailable)?;
                    return Ok(false);
                }
                self.commit_audited(tx, &[audit]).await?;
                Ok(true)
            }

            async fn append_audit(
                &self,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<(), vault_core::StoreError> {
                let write = $crate::group::Write::Audit(audit.clone());
                self.group.write(self, write).await.map(|_| ())
            }
        }

        #[async_trait::async_trait]
        impl $crate::group::Committer for $store {
            async fn commit_writes(
                &self,
                writes: &[$crate::group::Write],
            ) -> Result<Vec<$crate::group::Written>, $crate::group::Failed> {
                use vault_core::ports::InsertOutcome;
                use $crate::group::{Failed, Write};
                let mut tx = self.begin().await.map_err(Failed::whole)?;
                let records = Write::tokens(writes);
                let mut inserted = Self::insert_tokens_in(&mut tx, &records).await?;
                let tally_requests = Write::tallies(writes);
                let tallied = !tally_requests.is_empty();
                let tallies = Self::tally_in(&mut tx, &tally_requests).await?;
                let mut outcomes = Vec::with_capacity(records.len());
                for record in records {
                    outcomes.push(if inserted.remove(&$crate::sql::row_key(record)) {
                        InsertOutcome::Inserted
                    } else {
                        Self::taken_in(&mut tx, record).await?
                    });
                }
                let (written, audits) = Write::answers(writes, outcomes, tallies);
                if audits.is_empty() && tallied {
                    tx.commit()
                        .await
                        .map_err(|e| Failed::whole($crate::error::unavailable(e)))?;
                } else if audits.is_empty() {
                    tx.rollback()
                        .await
                        .map_err(|e| Failed::whole($crate::error::unavailable(e)))?;
                } else {
                    self.commit_audited(tx, &audits)
                        .await
                        .map_err(Failed::whole)?;
                }
                Ok(written)
            }
        }

        impl $store {
            /// Inserts `records` inside `tx` in multi-row statements, skipping each whose token
            /// or fingerprint is taken, and returns the keys ([`row_key`]) of those inserted.
            async fn insert_tokens_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                records: &[&vault_core::ports::TokenRecord],
            ) -> Result<std::collections::HashSet<$crate::sql::RowKey>, $crate::group::Failed> {
                let mut inserted = std::collections::HashSet::with_capacity(records.len());
                for chunk in records.chunks($crate::sql::ROWS_PER_INSERT) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new($crate::sql::INSERT_TOKENS);
                    insert.push_values(chunk, |mut row, record| {
                        let m = &record.metadata;
                        row.push_bind(record.token.as_str())
                            .push_bind(record.merchant.as_str())
                            .push_bind(&record.fingerprint[..])
                            .push_bind(m.format.as_str())
                            .push_bind(i64::from(record.dek_version))
                            .push_bind(&record.sealed.nonce[..])
                            .push_bind(&record.sealed.ciphertext)
                            .push_bind(m.brand.as_str())
                            .push_bind(&m.bin)
                            .push_bind(&m.last4)
                            .push_bind(i64::from(m.pan_length))
                            .push_bind(m.expiry.map(|e| i64::from(e.month())))
                            .push_bind(m.expiry.map(|e| i64::from(e.year())))
                            .push_bind($crate::rows::micros(m.created_at));
                    });
                    insert.push($crate::sql::INSERT_TOKENS_TAIL);
                    let rows: Vec<$crate::sql::RowKey> = insert
                        .build_query_as()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(|e| $crate::group::Failed::statement(e))?;
                    inserted.extend(rows);
                }
                Ok(inserted)
            }

            /// Counts every tally request of a batch inside `tx` (see `tally.rs`): reads the
            /// counts and the items already seen, stores the new items, and raises each
            /// tally's count by its new items in one atomic upsert, a few multi-row statements
            /// for the whole batch.
            async fn tally_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                requests: &[&vault_core::ports::TallyRequest],
            ) -> Result<Vec<Vec<vault_core::ports::Tallied>>, $crate::group::Failed> {
                use std::collections::HashMap;
                let failed = |e: sqlx::Error| $crate::group::Failed::statement(e);
                let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
                if requests.is_empty() {
                    return Ok(Vec::new());
                }
                let scope_of = |scope: &str| {
                    requests
                        .iter()
                        .map(|r| r.scope)
                        .find(|s| *s == scope)
                        .unwrap_or("")
                };
                let keys: Vec<$crate::tally::Key> =
                    requests.iter().map(|r| $crate::tally::key(r)).collect();
                let wanted = $crate::tally::pairs(requests, &keys);
                let mut read = $crate::tally::Read::default();
                for chunk in wanted.chunks($crate::sql::TALLY_KEYS_PER_STATEMENT) {
                    let mut select = sqlx::QueryBuilder::<$db>::new($crate::sql::SELECT_TALLIES_IN);
                    select.push_values(chunk, |mut row, ((window_end, scope, subject), item)| {
                        row.push_bind(*window_end)
                            .push_bind(*scope)
                            .push_bind(subject)
                            .push_bind(*item);
                    });
                    select.push($crate::sql::SELECT_TALLIES_JOIN);
                    let rows: Vec<(i64, String, String, i64, Vec<u8>, Vec<u8>, bool)> = select
                        .build_query_as()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(failed)?;
                    for (window_end, scope, subject, items, first, item, held) in rows {
                        let key = (window_end, scope_of(&scope), subject);
                        read.row(key, as_u64(items), first, item, held);
                    }
                }
                let plan = $crate::tally::plan(requests, read);
                let mut after = HashMap::new();
                let mut items = plan.new_items.clone();
                for chunk in plan.added.chunks($crate::sql::TALLY_KEYS_PER_STATEMENT) {
                    let mut upsert = sqlx::QueryBuilder::<$db>::new($crate::sql::ADD_TALLIES);
                    upsert.push_values(
                        chunk,
                        |mut row, ((window_end, scope, subject), n, first)| {
                            row.push_bind(*window_end)
                                .push_bind(*scope)
                                .push_bind(subject)
                                .push_bind(as_i64(*n))
                                .push_bind(first.as_slice());
                        },
                    );
                    upsert.push($crate::sql::ADD_TALLIES_TAIL);
                    let rows: Vec<(i64, String, String, i64, Vec<u8>)> = upsert
                        .build_query_as()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(failed)?;
                    let firsts: HashMap<&$crate::tally::Key, &Vec<u8>> =
                        chunk.iter().map(|(key, _, first)| (key, first)).collect();
                    for (window_end, scope, subject, count, kept) in rows {
                        let key = (window_end, scope_of(&scope), subject);
                        // Another transaction created the tally first: its first item stays
                        // in the row, and this batch's goes to the items table.
                        if let Some(first) = firsts.get(&key)
                            && !first.is_empty()
                            && **first != kept
                        {
                            items.push((key.clone(), (*first).clone()));
                        }
                        after.insert(key, as_u64(count));
                    }
                }
                for chunk in items.chunks($crate::sql::TALLY_KEYS_PER_STATEMENT) {
                    let mut insert =
                        sqlx::QueryBuilder::<$db>::new($crate::sql::INSERT_TALLY_ITEMS);
                    insert.push_values(chunk, |mut row, ((window_end, scope, subject), item)| {
                        row.push_bind(*window_end)
                            .push_bind(*scope)
                            .push_bind(subject)
                            .push_bind(item.as_slice());
                    });
                    insert.push(" ON CONFLICT DO NOTHING");
                    insert.build().execute(&mut **tx).await.map_err(failed)?;
                }
                for ((window_end, scope, subject), floor) in &plan.trips {
                    sqlx::query($crate::sql::TRIP_TALLY)
                        .bind(*window_end)
                        .bind(*scope)
                        .bind(subject)
                        .bind(as_i64(*floor))
                        .bind(&[0_u8; 0][..])
                        .execute(&mut **tx)
                        .await
                        .map_err(failed)?;
                }
                Ok(plan.results(requests, &after))
            }

            /// Why `record` was not inserted: its merchant already holds its token (drawn
            /// twice), or its card was tokenized concurrently. Asked rather than parsed from an
            /// error: it works on every backend, and sees rows an earlier write of the same
            /// batch inserted. Asked for the record's merchant only: another merchant's row
            /// with the same token takes nothing, and counting it would make a concurrent
            /// tokenize of the same card draw again instead of returning the winner's token.
            async fn taken_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                record: &vault_core::ports::TokenRecord,
            ) -> Result<vault_core::ports::InsertOutcome, $crate::group::Failed> {
                use vault_core::ports::InsertOutcome;
                let taken: Option<String> = sqlx::query_scalar($crate::sql::TOKEN_EXISTS)
                    .bind(record.token.as_str())
                    .bind(record.merchant.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(|e| $crate::group::Failed::statement(e))?;
                Ok(if taken.is_some() {
                    InsertOutcome::TokenTaken
                } else {
                    InsertOutcome::FingerprintTaken
                })
            }
        }

        #[async_trait::async_trait]
        impl vault_core::ports::TallyStore for $store {
            async fn tally(
                &self,
                requests: &[vault_core::ports::TallyRequest],
            ) -> Result<Vec<Vec<vault_core::ports::Tallied>>, vault_core::StoreError> {
                let write = $crate::group::Write::Tally(requests.to_vec());
                match self.group.write(self, write).await? {
                    $crate::group::Written::Tally(tallies) => Ok(tallies),
                    _ => Err(vault_core::StoreError::unavailable(
                        "a tally was answered as another write",
                    )),
                }
            }

            async fn purge_tallies(&self, ended_by: i64) -> Result<u64, vault_core::StoreError> {
                // A page of ended tallies per transaction, each deleted by its key (the
                // items' primary key): short transactions, no scan of the items.
                let mut purged = 0;
                loop {
                    let mut tx = self.begin().await?;
                    let ended: Vec<(i64, String, String)> =
                        sqlx::query_as($crate::sql::ENDED_TALLIES)
                            .bind(ended_by)
                            .bind($crate::sql::TALLIES_PER_PURGE)
                            .fetch_all(&mut *tx)
                            .await
                            .map_err($crate::error::unavailable)?;
                    if ended.is_empty() {
                        tx.rollback().await.map_err($crate::error::unavailable)?;
                        return Ok(purged);
                    }
                    for (window_end, scope, subject) in &ended {
                        for statement in [$crate::sql::PURGE_TALLY_ITEMS, $crate::sql::PURGE_TALLY]
                        {
                            sqlx::query(statement)
                                .bind(*window_end)
                                .bind(scope)
                                .bind(subject)
                                .execute(&mut *tx)
                                .await
                                .map_err($crate::error::unavailable)?;
                        }
                    }
                    tx.commit().await.map_err($crate::error::unavailable)?;
                    purged += u64::try_from(ended.len()).unwrap_or(0);
                }
            }
        }

        #[async_trait::async_trait]
        impl vault_core::ports::KeyStore for $store {
            async fn reserve_dek_uses(
                &self,
                merchant: &vault_core::ids::MerchantId,
                version: u32,
                want: u64,
                limit: u64,
            ) -> Result<vault_core::ports::UseReservation, vault_core::StoreError> {
                let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                for _ in 0..$crate::sql::MAX_CAS_ATTEMPTS {
                    let uses: Option<i64> = sqlx::query_scalar($crate::sql::SELECT_DEK_USES)
                        .bind(merchant.as_str())
                        .bind(i64::from(version))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                    let Some(uses) = uses else {
                        // Shredded meanwhile: nothing to grant (the caller then finds out).
                        return Ok(vault_core::ports::UseReservation {
                            granted: 0,
                            total: 0,
                        });
                    };
                    let old = $crate::rows::count(uses)?;
                    let new = old.saturating_add(want).min(limit).max(old);
                    if new == old {
                        return Ok(vault_core::ports::UseReservation {
                            granted: 0,
                            total: old,
                        });
                    }
                    let set = sqlx::query($crate::sql::SET_DEK_USES)
                        .bind(merchant.as_str())
                        .bind(i64::from(version))
                        .bind(to_i64(new))
                        .bind(to_i64(old))
                        .execute(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                    if set.rows_affected() == 1 {
                        return Ok(vault_core::ports::UseReservation {
                            granted: new - old,
                            total: new,
                        });
                    }
                }
                Err(vault_core::StoreError::unavailable(
                    "dek use reservation kept losing its compare-and-set",
                ))
            }

            async fn add_data_key(
                &self,
                key: &vault_core::ports::WrappedKey,
                audit: Option<&vault_core::audit::AuditRecord>,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                Self::lock_merchant_keys(&mut tx, &key.context.merchant).await?;
                let added = Self::insert_key(&mut tx, key, vault_core::clock::now()).await?;
                match audit {
                    Some(audit) => {
                        self.commit_audited(tx, &[audit]).await?;
                    }
                    None => tx.commit().await.map_err($crate::error::unavailable)?,
                }
                Ok(added == 1)
            }

            async fn key_versions(
                &self,
                merchant: &vault_core::ids::MerchantId,
            ) -> Result<Vec<vault_core::ports::KeyVersionInfo>, vault_core::StoreError> {
                let rows: Vec<$crate::rows::KeyVersionRow> =
                    sqlx::query_as($crate::sql::SELECT_KEY_VERSIONS)
                        .bind(merchant.as_str())
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                rows.into_iter()
                    .map($crate::rows::KeyVersionRow::into_info)
                    .collect()
            }

            async fn tokens_under_older_dek(
                &self,
                merchant: &vault_core::ids::MerchantId,
                newest: u32,
                after: &str,
                limit: u32,
            ) -> Result<Vec<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                let rows: Vec<$crate::rows::TokenRow> =
                    sqlx::query_as($crate::sql::SELECT_TOKENS_UNDER_OLDER_DEK)
                        .bind(merchant.as_str())
                        .bind(i64::from(newest))
                        .bind(after)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                rows.into_iter()
                    .map($crate::rows::TokenRow::into_record)
                    .collect()
            }

            async fn count_tokens_under_older_dek(
                &self,
                merchant: &vault_core::ids::MerchantId,
                newest: u32,
            ) -> Result<u64, vault_core::StoreError> {
                let n: i64 = sqlx::query_scalar($crate::sql::COUNT_TOKENS_UNDER_OLDER_DEK)
                    .bind(merchant.as_str())
                    .bind(i64::from(newest))
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                $crate::rows::count(n)
            }

            async fn reencrypt_token(
                &self,
                record: &vault_core::ports::TokenRecord,
                from_version: u32,
            ) -> Result<bool, vault_core::StoreError> {
                let done = sqlx::query($crate::sql::REENCRYPT_TOKEN)
                    .bind(record.token.as_str())
                    .bind(record.merchant.as_str())
                    .bind(i64::from(record.dek_version))
                    .bind(&record.sealed.nonce[..])
                    .bind(&record.sealed.ciphertext)
                    .bind(i64::from(from_version))
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn keys_not_under(
                &self,
                kek_id: &str,
                after: Option<&vault_core::ports::KeyContext>,
                limit: u32,
            ) -> Result<Vec<vault_core::ports::WrappedKey>, vault_core::StoreError> {
                // Merchant ids are never empty, so ("", "", 0) sorts before every key.
                let (merchant, purpose, version) = after.map_or(("", "", 0), |c| {
                    (
                        c.merchant.as_str(),
                        c.purpose.as_str(),
                        i64::from(c.version),
                    )
                });
                let rows: Vec<$crate::rows::KeyRow> =
                    sqlx::query_as($crate::sql::SELECT_KEYS_NOT_UNDER)
                        .bind(kek_id)
                        .bind(merchant)
                        .bind(purpose)
                        .bind(version)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                rows.into_iter()
                    .map($crate::rows::KeyRow::into_key)
                    .collect()
            }

            async fn count_keys_not_under(
                &self,
                kek_id: &str,
            ) -> Result<u64, vault_core::StoreError> {
                let n: i64 = sqlx::query_scalar($crate::sql::COUNT_KEYS_NOT_UNDER)
                    .bind(kek_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                $crate::rows::count(n)
            }

            async fn rewrap_key(
                &self,
                old: &vault_core::ports::WrappedKey,
                new: &vault_core::ports::WrappedKey,
            ) -> Result<bool, vault_core::StoreError> {
                if old.context != new.context {
                    return Err($crate::rows::corrupt("rewrap changes the key's context"));
                }
                let done = sqlx::query($crate::sql::REWRAP_KEY)
                    .bind(old.context.merchant.as_str())
                    .bind(old.context.purpose.as_str())
                    .bind(i64::from(old.context.version))
                    .bind(&new.kek_id)
                    .bind(&new.wrapped)
                    .bind(&old.kek_id)
                    .bind(&old.wrapped)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn pending_shred(
                &self,
                merchant: &vault_core::ids::MerchantId,
            ) -> Result<Option<vault_core::ports::ShredRequest>, vault_core::StoreError> {
                let row: Option<$crate::rows::ShredRow> =
                    sqlx::query_as($crate::sql::SELECT_PENDING_SHRED)
                        .bind(merchant.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                row.map($crate::rows::ShredRow::into_request).transpose()
            }

            async fn request_shred(
                &self,
                request: &vault_core::ports::ShredRequest,
                supersede: Option<&str>,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                if let Some(old) = supersede {
                    sqlx::query($crate::sql::SUPERSEDE_SHRED)
                        .bind(old)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::error::unavailable)?;
                }
                let inserted = sqlx::query($crate::sql::INSERT_SHRED)
                    .bind(&request.request_id)
                    .bind(request.merchant.as_str())
                    .bind(request.requested_by.as_str())
                    .bind($crate::rows::micros(request.requested_at))
                    .bind(request.reason.as_str())
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => {}
                    Err(err) if $crate::error::is_unique_violation(&err) => {
                        tx.rollback().await.map_err($crate::error::unavailable)?;
                        return Ok(false);
                    }
                    Err(err) => return Err($crate::error::unavailable(err)),
                }
                self.commit_audited(tx, &[audit]).await?;
                Ok(true)
            }

            async fn execute_shred(
                &self,
                merchant: &vault_core::ids::MerchantId,
                request_id: &str,
                approver: &vault_core::ids::CallerId,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<Option<u64>, vault_core::StoreError> {
                let now = $crate::rows::micros(vault_core::clock::now());
                let mut tx = self.begin().await?;
                Self::lock_merchant_keys(&mut tx, merchant).await?;
                let approved = sqlx::query($crate::sql::APPROVE_SHRED)
                    .bind(request_id)
                    .bind(merchant.as_str())
                    .bind(approver.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                if approved.rows_affected() != 1 {
                    tx.rollback().await.map_err($crate::error::unavailable)?;
                    return Ok(None);
                }
                let destroyed = sqlx::query($crate::sql::DELETE_MERCHANT_KEYS)
                    .bind(merchant.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?
                    .rows_affected();
                sqlx::query($crate::sql::INSERT_SHREDDED)
                    .bind(merchant.as_str())
                    .bind(now)
                    .bind(request_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                self.commit_audited(tx, &[audit]).await?;
                Ok(Some(destroyed))
            }

            async fn merchant_ids(
                &self,
            ) -> Result<Vec<vault_core::ids::MerchantId>, vault_core::StoreError> {
                let ids: Vec<String> = sqlx::query_scalar($crate::sql::SELECT_MERCHANT_IDS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                ids.iter()
                    .filter(|id| *id != vault_core::ids::MerchantId::vault_owner().as_str())
                    .map(|id| {
                        vault_core::ids::MerchantId::from_stored("merchant_id", id)
                            .map_err(|e| vault_core::StoreError::Corrupt(e.to_string()))
                    })
                    .collect()
            }

            async fn is_shredded(
                &self,
                merchant: &vault_core::ids::MerchantId,
            ) -> Result<bool, vault_core::StoreError> {
                let found: Option<String> = sqlx::query_scalar($crate::sql::IS_SHREDDED)
                    .bind(merchant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                Ok(found.is_some())
            }
        }

        #[async_trait::async_trait]
        impl vault_core::ports::AuditStore for $store {
            fn audit_writer(&self) -> &str {
                &self.chain.writer
            }

            async fn audit_head(
                &self,
            ) -> Result<vault_core::ports::ChainHead, vault_core::StoreError> {
                let mut guard = self.chain.lock().await;
                let head = match *guard {
                    Some(head) => head,
                    None => {
                        let mut tx = self.begin().await?;
                        let head = Self::read_head(&mut tx, &self.chain.writer).await?;
                        tx.commit().await.map_err($crate::error::unavailable)?;
                        *guard = Some(head);
                        head
                    }
                };
                Ok(vault_core::ports::ChainHead {
                    writer: self.chain.writer.clone(),
                    seq: head.seq,
                    hash: head.hash,
                })
            }

            async fn unsealed_heads(
                &self,
            ) -> Result<Vec<vault_core::ports::ChainHead>, vault_core::StoreError> {
                let writers: Vec<String> = sqlx::query_scalar($crate::sql::SELECT_WRITERS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                let mut heads = Vec::new();
                for writer in writers {
                    let signed: Option<(i64, Vec<u8>)> =
                        sqlx::query_as($crate::sql::SELECT_CHECKPOINT_HEAD)
                            .bind(&writer)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err($crate::error::unavailable)?;
                    let mut conn = self
                        .pool
                        .acquire()
                        .await
                        .map_err($crate::error::unavailable)?;
                    let Some(head) = Self::record_head_on(&mut conn, &writer).await? else {
                        continue;
                    };
                    let signed_seq = match signed {
                        Some((seq, _)) => Some($crate::rows::seq_of(seq)?),
                        None => None,
                    };
                    if signed_seq.is_none_or(|signed| signed < head.seq) {
                        heads.push(vault_core::ports::ChainHead {
                            writer,
                            seq: head.seq,
                            hash: head.hash,
                        });
                    }
                }
                Ok(heads)
            }

            async fn checkpoint_tip(
                &self,
            ) -> Result<Option<(u64, [u8; vault_audit::HASH_LEN])>, vault_core::StoreError> {
                let tip: Option<(i64, Vec<u8>)> =
                    sqlx::query_as($crate::sql::SELECT_CHECKPOINT_TIP)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                tip.map(|(cp_seq, hash)| $crate::rows::head(cp_seq, &hash).map(|h| (h.seq, h.hash)))
                    .transpose()
            }

            async fn audit_signing_key(
                &self,
            ) -> Result<Option<vault_core::ports::WrappedKey>, vault_core::StoreError> {
                let row: Option<$crate::rows::KeyRow> =
                    sqlx::query_as($crate::sql::SELECT_AUDIT_SIGNING_KEY)
                        .bind(vault_core::ids::MerchantId::vault_owner().as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                row.map($crate::rows::KeyRow::into_key).transpose()
            }

            async fn add_audit_signing_key(
                &self,
                key: &vault_core::ports::WrappedKey,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                let added = Self::insert_key(&mut tx, key, vault_core::clock::now()).await?;
                tx.commit().await.map_err($crate::error::unavailable)?;
                Ok(added == 1)
            }

            async fn insert_checkpoint(
                &self,
                checkpoint: &vault_audit::Checkpoint,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                let inserted = Self::insert_checkpoint_in(&mut tx, checkpoint).await?;
                tx.commit().await.map_err($crate::error::unavailable)?;
                Ok(inserted)
            }

            async fn checkpoints(
                &self,
                from: u64,
                to: u64,
                limit: u32,
            ) -> Result<Vec<vault_audit::Checkpoint>, vault_core::StoreError> {
                let rows: Vec<$crate::rows::CheckpointRow> =
                    sqlx::query_as($crate::sql::SELECT_CHECKPOINTS)
                        .bind($crate::rows::seq_param(from))
                        .bind($crate::rows::seq_param(to))
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                rows.into_iter()
                    .map($crate::rows::CheckpointRow::into_checkpoint)
                    .collect()
            }

            async fn plan_export(
                &self,
                from: Option<time::OffsetDateTime>,
                to: Option<time::OffsetDateTime>,
            ) -> Result<vault_core::ports::ExportPlan, vault_core::StoreError> {
                let per_writer = |statement: &'static str, bound: i64| async move {
                    let rows: Vec<(String, i64)> = sqlx::query_as(statement)
                        .bind(bound)
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                    rows.into_iter()
                        .map(|(writer, cp)| $crate::rows::seq_of(cp).map(|seq| (writer, seq)))
                        .collect::<Result<std::collections::BTreeMap<String, u64>, _>>()
                };
                let Some((tip, _)) = self.checkpoint_tip().await? else {
                    return Ok(vault_core::ports::ExportPlan::default());
                };
                // The first checkpoint: for every writer still writing after `from`, its
                // newest checkpoint at or before `from` (or its first, if it started later).
                let first = match from {
                    None => {
                        let first: Option<i64> =
                            sqlx::query_scalar($crate::sql::SELECT_FIRST_CHECKPOINT)
                                .fetch_one(&self.pool)
                                .await
                                .map_err($crate::error::unavailable)?;
                        $crate::rows::seq_of(first.unwrap_or(1))?
                    }
                    Some(from) => {
                        let from = $crate::rows::micros(from);
                        let before =
                            per_writer($crate::sql::CHECKPOINTS_AT_OR_BEFORE, from).await?;
                        let after = per_writer($crate::sql::CHECKPOINTS_AFTER, from).await?;
                        vault_core::ports::ExportPlan::first_checkpoint(&before, &after, tip)
                    }
                };
                // The last: for every writer in the run, its first checkpoint at or after
                // `to` (or its newest).
                let last = match to {
                    None => tip,
                    Some(to) => {
                        let to = $crate::rows::micros(to);
                        let newest = per_writer(
                            $crate::sql::NEWEST_CHECKPOINTS_FROM,
                            $crate::rows::seq_param(first),
                        )
                        .await?;
                        let after =
                            per_writer($crate::sql::CHECKPOINTS_AFTER, to.saturating_sub(1))
                                .await?;
                        vault_core::ports::ExportPlan::last_checkpoint(&newest, &after, first)
                    }
                };
                let ranges: Vec<(String, i64, i64)> = sqlx::query_as($crate::sql::WRITER_RANGES)
                    .bind($crate::rows::seq_param(first))
                    .bind($crate::rows::seq_param(last))
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                let writers = ranges
                    .into_iter()
                    .map(|(writer, low, high)| {
                        Ok((
                            writer,
                            $crate::rows::seq_of(low)?,
                            $crate::rows::seq_of(high)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, vault_core::StoreError>>()?;
                Ok(vault_core::ports::ExportPlan {
                    checkpoints: Some((first, last)),
                    writers,
                })
            }

            async fn writer_records(
                &self,
                writer: &str,
                after: u64,
                to: u64,
                limit: u32,
            ) -> Result<Vec<vault_audit::Entry>, vault_core::StoreError> {
                let rows: Vec<$crate::rows::AuditRow> =
                    sqlx::query_as($crate::sql::SELECT_WRITER_RECORDS)
                        .bind(writer)
                        .bind($crate::rows::seq_param(after))
                        .bind($crate::rows::seq_param(to))
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                rows.into_iter()
                    .map($crate::rows::AuditRow::into_entry)
                    .collect()
            }

            async fn find_audit(
                &self,
                query: &vault_core::ports::AuditQuery,
                cursor: Option<&vault_core::ports::AuditCursor>,
                limit: u32,
            ) -> Result<Vec<vault_audit::Entry>, vault_core::StoreError> {
                let (at, writer, seq) = cursor.map_or((i64::MIN, "", 0), |c| {
                    (
                        c.at_micros,
                        c.writer.as_str(),
                        $crate::rows::seq_param(c.seq),
                    )
                });
                let rows: Vec<$crate::rows::AuditRow> = sqlx::query_as($crate::sql::FIND_AUDIT)
                    .bind(query.from.map($crate::rows::micros))
                    .bind(query.to.map($crate::rows::micros))
                    .bind(query.merchant.as_ref().map(|m| m.as_str()))
                    .bind(query.caller.as_ref().map(|c| c.as_str()))
                    .bind(query.event.as_deref())
                    .bind(query.outcome.as_deref())
                    .bind(at)
                    .bind(writer)
                    .bind(seq)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                rows.into_iter()
                    .map($crate::rows::AuditRow::into_entry)
                    .collect()
            }

            async fn plan_prune(
                &self,
                exported: u64,
                before: time::OffsetDateTime,
            ) -> Result<Option<vault_core::ports::PrunePlan>, vault_core::StoreError> {
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err($crate::error::unavailable)?;
                Self::plan_prune_on(&mut conn, exported, before).await
            }

            async fn prune_audit(
                &self,
                plan: &vault_core::ports::PrunePlan,
                checkpoints: &[vault_audit::Checkpoint],
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<Option<vault_core::ports::PruneCounts>, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                let execute = |statement: &'static str| sqlx::query(statement);
                // The permit's row serializes prunes (SQLite: BEGIN IMMEDIATE already does);
                // then the plan must still be what the trail says, or it is made again.
                execute($crate::sql::GRANT_PRUNE)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                let current = Self::plan_prune_on(&mut tx, plan.exported, plan.before).await?;
                if current.as_ref() != Some(plan) {
                    // Dropping `tx` rolls it back.
                    return Ok(None);
                }
                for checkpoint in checkpoints {
                    if !Self::insert_checkpoint_in(&mut tx, checkpoint).await? {
                        return Ok(None);
                    }
                }
                let mut removed = vault_core::ports::PruneCounts::default();
                for cut in &plan.writers {
                    removed.records += execute($crate::sql::PRUNE_RECORDS)
                        .bind(&cut.writer)
                        .bind($crate::rows::seq_param(cut.cut))
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::error::unavailable)?
                        .rows_affected();
                    if cut.finished {
                        removed.writers_closed += execute($crate::sql::CLOSE_WRITER)
                            .bind(&cut.writer)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::error::unavailable)?
                            .rows_affected();
                    }
                }
                removed.checkpoints = execute($crate::sql::PRUNE_CHECKPOINTS)
                    .bind($crate::rows::seq_param(plan.through))
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?
                    .rows_affected();
                execute($crate::sql::REVOKE_PRUNE)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                self.commit_audited(tx, &[audit]).await?;
                Ok(Some(removed))
            }
        }
    };
}

/// The point reads of the hot path (`TokenStore::token`, `token_by_fingerprint`,
/// `tokens_by_fingerprints`, `merchant_keys`, `data_key`) over `$store`'s sqlx pool, as
/// inherent methods `token_store_impl!` calls. PostgreSQL uses these; SQLite has its own
/// (`sqlite/reads.rs`).
macro_rules! sqlx_point_reads {
    ($store:ty, $db:ty) => {
        impl $store {
            async fn read_merchant_keys(
                &self,
                merchant: &vault_core::ids::MerchantId,
            ) -> Result<Option<vault_core::ports::MerchantKeySet>, vault_core::StoreError> {
                let rows: Vec<$crate::rows::KeyRow> =
                    sqlx::query_as($crate::sql::SELECT_KEYS_NEWEST)
                        .bind(merchant.as_str())
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                $crate::rows::key_set(rows)
            }

            async fn read_data_key(
                &self,
                merchant: &vault_core::ids::MerchantId,
                version: u32,
            ) -> Result<Option<vault_core::ports::WrappedKey>, vault_core::StoreError> {
                let row: Option<$crate::rows::KeyRow> = sqlx::query_as($crate::sql::SELECT_DEK)
                    .bind(merchant.as_str())
                    .bind(i64::from(version))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                row.map($crate::rows::KeyRow::into_key).transpose()
            }

            async fn read_token_by_fingerprint(
                &self,
                merchant: &vault_core::ids::MerchantId,
                fingerprint: &[u8; vault_crypto::FINGERPRINT_LEN],
                format: vault_core::token::TokenFormat,
            ) -> Result<Option<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                let row: Option<$crate::rows::TokenRow> =
                    sqlx::query_as($crate::sql::SELECT_BY_FINGERPRINT)
                        .bind(merchant.as_str())
                        .bind(&fingerprint[..])
                        .bind(format.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                row.map($crate::rows::TokenRow::into_record).transpose()
            }

            async fn read_tokens_by_fingerprints(
                &self,
                merchant: &vault_core::ids::MerchantId,
                fingerprints: &[[u8; vault_crypto::FINGERPRINT_LEN]],
                format: vault_core::token::TokenFormat,
            ) -> Result<Vec<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                let mut found = Vec::new();
                for chunk in fingerprints.chunks($crate::sql::FINGERPRINTS_PER_SELECT) {
                    let mut select =
                        sqlx::QueryBuilder::<$db>::new($crate::sql::SELECT_BY_FINGERPRINTS);
                    select.push_bind(merchant.as_str());
                    select.push(" AND token_format = ");
                    select.push_bind(format.as_str());
                    select.push($crate::sql::FINGERPRINTS_IN);
                    let mut list = select.separated(", ");
                    for fingerprint in chunk {
                        list.push_bind(&fingerprint[..]);
                    }
                    select.push(")");
                    let rows: Vec<$crate::rows::TokenRow> = select
                        .build_query_as()
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                    for row in rows {
                        found.push(row.into_record()?);
                    }
                }
                Ok(found)
            }

            async fn read_token(
                &self,
                merchant: &vault_core::ids::MerchantId,
                token: &vault_core::token::Token,
            ) -> Result<Option<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                let row: Option<$crate::rows::TokenRow> = sqlx::query_as($crate::sql::SELECT_TOKEN)
                    .bind(token.as_str())
                    .bind(merchant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::error::unavailable)?;
                row.map($crate::rows::TokenRow::into_record).transpose()
            }
        }
    };
}

pub(crate) use {audit_columns, sqlx_point_reads, token_columns, token_store_impl};
