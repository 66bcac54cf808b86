//! Every statement the sqlx implementation runs, written once with `$N` placeholders
//! (PostgreSQL's; SQLite reads them as positional parameters too), and the column lists the
//! row conversions (`rows.rs`) and SQLite's writer share.

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

/// A DEK version's reserved uses; no row if the merchant does not hold it (which is also how a
/// skipped token insert learns that the key is gone).
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

/// The condition that the row's merchant still holds a DEK version (bound next, then `)`):
/// the fingerprint lookups end with it (`TokenStore::token_by_fingerprint`).
macro_rules! holds_dek {
    () => {
        " AND EXISTS (SELECT 1 FROM data_keys k WHERE k.merchant_id = tokens.merchant_id AND \
         k.purpose = 'dek' AND k.version = "
    };
}

/// A card's token, while the merchant holds DEK version `$4`.
pub(crate) const SELECT_BY_FINGERPRINT: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE merchant_id = $1 AND fingerprint = $2 AND token_format = $3",
    holds_dek!(),
    "$4)"
);

/// The head of a batch's fingerprint lookup: the merchant and format are bound next,
/// `HOLDS_DEK` and the version the merchant must hold, then `FINGERPRINTS_IN` and the
/// fingerprints.
pub(crate) const SELECT_BY_FINGERPRINTS: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE merchant_id = "
);

/// See `holds_dek!`; a version and `)` follow.
pub(crate) const HOLDS_DEK: &str = holds_dek!();

pub(crate) const FINGERPRINTS_IN: &str = " AND fingerprint IN (";

/// Fingerprints looked up per statement (a batch holds at most 1,000 cards).
pub(crate) const FINGERPRINTS_PER_SELECT: usize = 500;

pub(crate) const SELECT_TOKEN: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE token = $1 AND merchant_id = $2"
);

/// A token and the DEK version it names, in one read (detokenize's): the key's columns
/// (`key_columns!`, prefixed `key_`) are NULL if the merchant no longer holds that version.
pub(crate) const SELECT_TOKEN_AND_KEY: &str = concat!(
    "SELECT t.*, k.merchant_id AS key_merchant_id, k.purpose AS key_purpose, k.version AS \
     key_version, k.kek_id AS key_kek_id, k.wrapped AS key_wrapped, k.created_at AS \
     key_created_at, k.uses AS key_uses FROM (SELECT ",
    token_columns!(),
    " FROM tokens WHERE token = $1 AND merchant_id = $2) AS t LEFT JOIN data_keys k ON \
     k.merchant_id = t.merchant_id AND k.purpose = 'dek' AND k.version = t.dek_version"
);

/// The head of a multi-row token insert; `insert_tokens_in` adds the rows (`VALUES ...`) and
/// the tail. A row whose token (for its merchant: the key is (merchant_id, token)) or card is
/// taken is skipped (no error: PostgreSQL would abort a group commit's whole transaction on a
/// unique violation), and so is a row sealed under a DEK version its merchant no longer holds
/// (a shred); the rows inserted come back.
pub(crate) const INSERT_TOKENS: &str = concat!("WITH v (", token_columns!(), ") AS (");

/// The tail of [`INSERT_TOKENS`].
pub(crate) const INSERT_TOKENS_TAIL: &str = concat!(
    ") INSERT INTO tokens (",
    token_columns!(),
    ") SELECT * FROM v WHERE EXISTS (SELECT 1 FROM data_keys k WHERE k.merchant_id = \
     v.merchant_id AND k.purpose = 'dek' AND k.version = v.dek_version) ON CONFLICT DO NOTHING \
     RETURNING token, merchant_id, fingerprint"
);

/// Whether the merchant holds this token. Tokens are unique per merchant: another merchant's
/// token of the same string neither blocks an insert nor explains a skipped one.
pub(crate) const TOKEN_EXISTS: &str =
    "SELECT token FROM tokens WHERE merchant_id = $1 AND token = $2";

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

/// The columns of `destinations`, in the order `DestinationRow` and the insert use.
macro_rules! destination_columns {
    () => {
        "id, name, spec_json, fingerprint, proposed_by, proposed_at, approved_by, approved_at, \
         approval_seal, revoked_by, revoked_at"
    };
}

/// The columns of `forwards_in_flight`, in the order `ForwardRow` and the insert use.
macro_rules! forward_columns {
    () => {
        "request_id, caller, merchant_id, token, destination, fingerprint, begun_at, deadline_at"
    };
}

pub(crate) const INSERT_DESTINATION: &str = concat!(
    "INSERT INTO destinations (",
    destination_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
);

pub(crate) const SELECT_DESTINATION: &str = concat!(
    "SELECT ",
    destination_columns!(),
    " FROM destinations WHERE id = $1"
);

/// Every version (of the name `$1`, or all if it is NULL), oldest first.
pub(crate) const SELECT_DESTINATIONS: &str = concat!(
    "SELECT ",
    destination_columns!(),
    " FROM destinations WHERE ($1 IS NULL OR name = $1) ORDER BY proposed_at, id"
);

/// Approves version `$1` as `$2` at `$3` with seal `$4`, only if it is neither approved nor
/// revoked and was proposed by someone else (dual control).
pub(crate) const APPROVE_DESTINATION: &str = "UPDATE destinations SET approved_by = $2, \
     approved_at = $3, approval_seal = $4 WHERE id = $1 AND approved_at IS NULL AND \
     revoked_at IS NULL AND proposed_by <> $2";

/// Revokes every version of the name `$1` not revoked yet, as `$2` at `$3`.
pub(crate) const REVOKE_DESTINATION: &str = "UPDATE destinations SET revoked_by = $2, \
     revoked_at = $3 WHERE name = $1 AND revoked_at IS NULL";

/// The version of a name in force: approved last of those not revoked.
pub(crate) const SELECT_APPROVED_DESTINATION: &str = concat!(
    "SELECT ",
    destination_columns!(),
    " FROM destinations WHERE name = $1 AND approved_at IS NOT NULL AND revoked_at IS NULL \
     ORDER BY approved_at DESC, id DESC LIMIT 1"
);

pub(crate) const INSERT_FORWARD: &str = concat!(
    "INSERT INTO forwards_in_flight (",
    forward_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);

pub(crate) const DELETE_FORWARD: &str = "DELETE FROM forwards_in_flight WHERE request_id = $1";

/// The forwards in flight whose deadline is before `$1`, by deadline.
pub(crate) const SELECT_FORWARDS_DUE: &str = concat!(
    "SELECT ",
    forward_columns!(),
    " FROM forwards_in_flight WHERE deadline_at < $1 ORDER BY deadline_at, request_id"
);

pub(crate) use {audit_columns, token_columns};
