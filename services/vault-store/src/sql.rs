//! The `TokenStore` implementation every sqlx backend shares: one set of statements, written
//! with `$N` placeholders (PostgreSQL's; SQLite reads them as positional parameters too), and
//! one body, stamped out per backend by `token_store_impl!`. A backend supplies its pool, a
//! `begin()` that opens a write transaction, and the statement (if any) that serializes
//! changes to one merchant's keys (see [`PG_LOCK_MERCHANT_KEYS`]).

use vault_core::StoreError;

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

pub(crate) const SELECT_BY_FINGERPRINT: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE merchant_id = $1 AND fingerprint = $2 AND token_format = $3"
);

pub(crate) const SELECT_TOKEN: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM tokens WHERE token = $1 AND merchant_id = $2"
);

pub(crate) const INSERT_TOKEN: &str = concat!(
    "INSERT INTO tokens (",
    token_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
);

pub(crate) const TOKEN_EXISTS: &str = "SELECT token FROM tokens WHERE token = $1";

pub(crate) const DELETE_TOKEN: &str = "DELETE FROM tokens WHERE token = $1 AND merchant_id = $2";

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, caller, peer, operation, \
     merchant_id, token, outcome, request_id, reason, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

pub(crate) fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
}

/// Implements `vault_core::ports::TokenStore` for `$store`, a struct with a `pool: Pool<$db>`
/// field and an `async fn begin(&self) -> Result<Transaction<'static, $db>, StoreError>`.
macro_rules! token_store_impl {
    ($store:ty, $db:ty, $lock_merchant_keys:expr) => {
        impl $store {
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
                        .map_err($crate::sql::unavailable)?;
                }
                Ok(())
            }

            async fn insert_audit(
                tx: &mut sqlx::Transaction<'static, $db>,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<(), vault_core::StoreError> {
                let c = $crate::rows::AuditColumns::of(audit);
                sqlx::query($crate::sql::INSERT_AUDIT)
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
                    .map_err($crate::sql::unavailable)
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
                    .map_err($crate::sql::unavailable)
            }
        }

        #[async_trait::async_trait]
        impl vault_core::ports::TokenStore for $store {
            async fn merchant_keys(
                &self,
                merchant: &vault_core::ids::MerchantId,
            ) -> Result<Option<vault_core::ports::MerchantKeySet>, vault_core::StoreError> {
                let rows: Vec<$crate::rows::KeyRow> =
                    sqlx::query_as($crate::sql::SELECT_KEYS_NEWEST)
                        .bind(merchant.as_str())
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::sql::unavailable)?;
                $crate::rows::key_set(rows)
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
                tx.commit().await.map_err($crate::sql::unavailable)?;
                Ok(dek == 1 && fingerprint == 1)
            }

            async fn data_key(
                &self,
                merchant: &vault_core::ids::MerchantId,
                version: u32,
            ) -> Result<Option<vault_core::ports::WrappedKey>, vault_core::StoreError> {
                let row: Option<$crate::rows::KeyRow> = sqlx::query_as($crate::sql::SELECT_DEK)
                    .bind(merchant.as_str())
                    .bind(i64::from(version))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::sql::unavailable)?;
                row.map($crate::rows::KeyRow::into_key).transpose()
            }

            async fn token_by_fingerprint(
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
                        .map_err($crate::sql::unavailable)?;
                row.map($crate::rows::TokenRow::into_record).transpose()
            }

            async fn insert_token(
                &self,
                record: &vault_core::ports::TokenRecord,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<vault_core::ports::InsertOutcome, vault_core::StoreError> {
                use vault_core::ports::InsertOutcome;
                let mut tx = self.begin().await?;
                let m = &record.metadata;
                let inserted = sqlx::query($crate::sql::INSERT_TOKEN)
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
                    .bind($crate::rows::micros(m.created_at))
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => {}
                    Err(err) if $crate::sql::is_unique_violation(&err) => {
                        tx.rollback().await.map_err($crate::sql::unavailable)?;
                        // Which constraint? Ask rather than parse the message: it works on
                        // every backend.
                        let taken: Option<String> = sqlx::query_scalar($crate::sql::TOKEN_EXISTS)
                            .bind(record.token.as_str())
                            .fetch_optional(&self.pool)
                            .await
                            .map_err($crate::sql::unavailable)?;
                        return Ok(if taken.is_some() {
                            InsertOutcome::TokenTaken
                        } else {
                            InsertOutcome::FingerprintTaken
                        });
                    }
                    Err(err) => return Err($crate::sql::unavailable(err)),
                }
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err($crate::sql::unavailable)?;
                Ok(InsertOutcome::Inserted)
            }

            async fn token(
                &self,
                merchant: &vault_core::ids::MerchantId,
                token: &vault_core::token::Token,
            ) -> Result<Option<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                let row: Option<$crate::rows::TokenRow> = sqlx::query_as($crate::sql::SELECT_TOKEN)
                    .bind(token.as_str())
                    .bind(merchant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::sql::unavailable)?;
                row.map($crate::rows::TokenRow::into_record).transpose()
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
                    .map_err($crate::sql::unavailable)?
                    .rows_affected();
                if deleted == 0 {
                    tx.rollback().await.map_err($crate::sql::unavailable)?;
                    return Ok(false);
                }
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err($crate::sql::unavailable)?;
                Ok(true)
            }

            async fn append_audit(
                &self,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<(), vault_core::StoreError> {
                let mut tx = self.begin().await?;
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err($crate::sql::unavailable)
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
                        .map_err($crate::sql::unavailable)?;
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
                        .map_err($crate::sql::unavailable)?;
                    if set.rows_affected() == 1 {
                        return Ok(vault_core::ports::UseReservation {
                            granted: new - old,
                            total: new,
                        });
                    }
                }
                Err(vault_core::StoreError::Unavailable(
                    "dek use reservation kept losing its compare-and-set".to_owned(),
                ))
            }

            async fn add_data_key(
                &self,
                key: &vault_core::ports::WrappedKey,
                audit: Option<&vault_core::audit::AuditRecord>,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                Self::lock_merchant_keys(&mut tx, &key.context.merchant).await?;
                let added = Self::insert_key(&mut tx, key, vault_core::vault::now()).await?;
                if let Some(audit) = audit {
                    Self::insert_audit(&mut tx, audit).await?;
                }
                tx.commit().await.map_err($crate::sql::unavailable)?;
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
                        .map_err($crate::sql::unavailable)?;
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
                        .map_err($crate::sql::unavailable)?;
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
                    .map_err($crate::sql::unavailable)?;
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
                    .map_err($crate::sql::unavailable)?;
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
                        .map_err($crate::sql::unavailable)?;
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
                    .map_err($crate::sql::unavailable)?;
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
                    .map_err($crate::sql::unavailable)?;
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
                        .map_err($crate::sql::unavailable)?;
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
                        .map_err($crate::sql::unavailable)?;
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
                    Err(err) if $crate::sql::is_unique_violation(&err) => {
                        tx.rollback().await.map_err($crate::sql::unavailable)?;
                        return Ok(false);
                    }
                    Err(err) => return Err($crate::sql::unavailable(err)),
                }
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err($crate::sql::unavailable)?;
                Ok(true)
            }

            async fn execute_shred(
                &self,
                merchant: &vault_core::ids::MerchantId,
                request_id: &str,
                approver: &vault_core::ids::CallerId,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<Option<u64>, vault_core::StoreError> {
                let now = $crate::rows::micros(vault_core::vault::now());
                let mut tx = self.begin().await?;
                Self::lock_merchant_keys(&mut tx, merchant).await?;
                let approved = sqlx::query($crate::sql::APPROVE_SHRED)
                    .bind(request_id)
                    .bind(merchant.as_str())
                    .bind(approver.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::sql::unavailable)?;
                if approved.rows_affected() != 1 {
                    tx.rollback().await.map_err($crate::sql::unavailable)?;
                    return Ok(None);
                }
                let destroyed = sqlx::query($crate::sql::DELETE_MERCHANT_KEYS)
                    .bind(merchant.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::sql::unavailable)?
                    .rows_affected();
                sqlx::query($crate::sql::INSERT_SHREDDED)
                    .bind(merchant.as_str())
                    .bind(now)
                    .bind(request_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::sql::unavailable)?;
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err($crate::sql::unavailable)?;
                Ok(Some(destroyed))
            }

            async fn is_shredded(
                &self,
                merchant: &vault_core::ids::MerchantId,
            ) -> Result<bool, vault_core::StoreError> {
                let found: Option<String> = sqlx::query_scalar($crate::sql::IS_SHREDDED)
                    .bind(merchant.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::sql::unavailable)?;
                Ok(found.is_some())
            }
        }
    };
}
pub(crate) use token_store_impl;
