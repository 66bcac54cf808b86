//! The hot path's point reads over sqlx (PostgreSQL's; SQLite has its own, `sqlite/reads.rs`).

/// The point reads of the hot path (`TokenStore::token`, `token_and_key`, `token_by_fingerprint`,
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
                held: u32,
            ) -> Result<Option<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                let row: Option<$crate::rows::TokenRow> =
                    sqlx::query_as($crate::sql::SELECT_BY_FINGERPRINT)
                        .bind(merchant.as_str())
                        .bind(&fingerprint[..])
                        .bind(format.as_str())
                        .bind(i64::from(held))
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
                held: u32,
            ) -> Result<Vec<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                let mut found = Vec::new();
                for chunk in fingerprints.chunks($crate::sql::FINGERPRINTS_PER_SELECT) {
                    let mut select =
                        sqlx::QueryBuilder::<$db>::new($crate::sql::SELECT_BY_FINGERPRINTS);
                    select.push_bind(merchant.as_str());
                    select.push(" AND token_format = ");
                    select.push_bind(format.as_str());
                    select.push($crate::sql::HOLDS_DEK);
                    select.push_bind(i64::from(held));
                    select.push(")");
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

            async fn read_token_and_key(
                &self,
                merchant: &vault_core::ids::MerchantId,
                token: &vault_core::token::Token,
            ) -> Result<
                Option<(
                    vault_core::ports::TokenRecord,
                    Option<vault_core::ports::WrappedKey>,
                )>,
                vault_core::StoreError,
            > {
                let row: Option<$crate::rows::TokenKeyRow> =
                    sqlx::query_as($crate::sql::SELECT_TOKEN_AND_KEY)
                        .bind(token.as_str())
                        .bind(merchant.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                row.map($crate::rows::TokenKeyRow::into_parts).transpose()
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

pub(crate) use sqlx_point_reads;
