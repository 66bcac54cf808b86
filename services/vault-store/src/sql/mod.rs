//! The `TokenStore` implementation every sqlx backend shares: one set of statements, written
//! with `$N` placeholders (PostgreSQL's; SQLite reads them as positional parameters too), and
//! one body, stamped out per backend by `token_store_impl!`. A backend supplies its pool, a
//! `begin()` that opens a write transaction, and the statement (if any) that serializes
//! changes to one merchant's keys (see [`PG_LOCK_MERCHANT_KEYS`]).

pub(crate) mod audit;
pub(crate) mod destinations;
pub(crate) mod keys;
pub(crate) mod reads;
mod statements;
pub(crate) mod tallies;
pub(crate) mod tokens;

pub(crate) use reads::sqlx_point_reads;
pub(crate) use statements::*;

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

/// Implements every store port (`TokenStore`, `TallyStore`, `KeyStore`, `AuditStore`,
/// `DestinationStore`) and the group committer for `$store`, a struct with a `pool: Pool<$db>`
/// field, a `chain`, a `group`, the point reads (`read_*`: `reads.rs`, or the backend's own)
/// and an `async fn begin(&self) -> Result<Transaction<'static, $db>, StoreError>`; one module
/// per port.
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
        }

        $crate::sql::tokens::token_port!($store, $db);
        $crate::sql::tallies::tally_port!($store, $db);
        $crate::sql::keys::key_port!($store, $db, $lock_merchant_keys);
        $crate::sql::audit::audit_port!($store, $db);
        $crate::sql::destinations::destination_port!($store);
    };
}

pub(crate) use token_store_impl;
