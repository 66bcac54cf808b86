//! `KeyStore` over sqlx: data keys, their uses, rotation, rewrapping and the shred.

/// `KeyStore` for `$store` (see `token_store_impl!`); `$lock_merchant_keys` is the statement,
/// if any, that serializes changes to one merchant's keys.
macro_rules! key_port {
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
                        .map_err($crate::error::unavailable)?;
                }
                Ok(())
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
        impl vault_core::ports::KeyStore for $store {
            async fn reserve_dek_uses(
                &self,
                merchant: &vault_core::ids::MerchantId,
                version: u32,
                want: u64,
                limit: u64,
            ) -> Result<vault_core::ports::UseReservation, vault_core::StoreError> {
                self.reserve_uses(merchant, version, want, limit).await
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
    };
}

pub(crate) use key_port;

/// `reserve_uses` for `$store` over its sqlx pool: a compare-and-set on the key's row, retried
/// while other replicas win it (PostgreSQL's; SQLite reserves on its writer thread).
macro_rules! sqlx_reserve_uses {
    ($store:ty) => {
        impl $store {
            async fn reserve_uses(
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
                    let new = $crate::rows::reserved(old, want, limit);
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
        }
    };
}

pub(crate) use sqlx_reserve_uses;
