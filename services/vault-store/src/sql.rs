//! The `TokenStore` implementation every sqlx backend shares: one set of statements, written
//! with `$N` placeholders (PostgreSQL's; SQLite reads them as positional parameters too), and
//! one body, stamped out per backend by `token_store_impl!`. A backend supplies its pool, a
//! `begin()` that opens a write transaction, and nothing else.

use vault_core::StoreError;

/// The columns of `tokens`, in the order `TokenRow` and the insert use.
macro_rules! token_columns {
    () => {
        "token, merchant_id, fingerprint, token_format, dek_version, nonce, ciphertext, brand, \
         bin, last4, pan_length, exp_month, exp_year, created_at"
    };
}

pub(crate) const SELECT_KEYS_NEWEST: &str = "SELECT merchant_id, purpose, version, kek_id, \
     wrapped FROM data_keys WHERE merchant_id = $1 AND version = (SELECT MAX(d.version) FROM \
     data_keys d WHERE d.merchant_id = data_keys.merchant_id AND d.purpose = data_keys.purpose)";

pub(crate) const SELECT_DEK: &str = "SELECT merchant_id, purpose, version, kek_id, wrapped \
     FROM data_keys WHERE merchant_id = $1 AND purpose = 'dek' AND version = $2";

pub(crate) const INSERT_KEY: &str = "INSERT INTO data_keys (merchant_id, purpose, version, \
     kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";

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
    ($store:ty, $db:ty) => {
        impl $store {
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
            ) -> Result<u64, vault_core::StoreError> {
                sqlx::query($crate::sql::INSERT_KEY)
                    .bind(key.context.merchant.as_str())
                    .bind(key.context.purpose.as_str())
                    .bind(i64::from(key.context.version))
                    .bind(&key.kek_id)
                    .bind(&key.wrapped)
                    .bind($crate::rows::micros(vault_core::vault::now()))
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
                let dek = Self::insert_key(&mut tx, &keys.dek).await?;
                let fingerprint = Self::insert_key(&mut tx, &keys.fingerprint).await?;
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
    };
}
pub(crate) use token_store_impl;
