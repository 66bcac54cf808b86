//! `TokenStore` and the group committer over sqlx: token reads and writes, the batch of a
//! group commit.

/// `TokenStore` and `group::Committer` for `$store` (see `token_store_impl!`).
macro_rules! token_port {
    ($store:ty, $db:ty) => {
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

            async fn token_and_key(
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
                self.read_token_and_key(merchant, token).await
            }

            async fn token_by_fingerprint(
                &self,
                merchant: &vault_core::ids::MerchantId,
                fingerprint: &[u8; vault_crypto::FINGERPRINT_LEN],
                format: vault_core::token::TokenFormat,
                held: u32,
            ) -> Result<Option<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                self.read_token_by_fingerprint(merchant, fingerprint, format, held)
                    .await
            }

            async fn tokens_by_fingerprints(
                &self,
                merchant: &vault_core::ids::MerchantId,
                fingerprints: &[[u8; vault_crypto::FINGERPRINT_LEN]],
                format: vault_core::token::TokenFormat,
                held: u32,
            ) -> Result<Vec<vault_core::ports::TokenRecord>, vault_core::StoreError> {
                self.read_tokens_by_fingerprints(merchant, fingerprints, format, held)
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
                if writes
                    .iter()
                    .any(|write| matches!(write, Write::Reserve { .. }))
                {
                    // This backend reserves DEK uses with a compare-and-set of its own
                    // (`sqlx_reserve_uses!`), never through its committer.
                    return Err(Failed::whole(vault_core::StoreError::unavailable(
                        "a DEK-use reservation reached a committer that does not make them",
                    )));
                }
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
                let (written, audits) = Write::answers(writes, outcomes, tallies, Vec::new());
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

            /// Why `record` was not inserted: its merchant already holds its token (drawn
            /// twice), no longer holds the DEK version it was sealed under (a shred), or its
            /// card was tokenized concurrently. Asked rather than parsed from an error: it
            /// works on every backend, and sees rows an earlier write of the same batch
            /// inserted. Asked for the record's merchant only: another merchant's row with the
            /// same token takes nothing, and counting it would make a concurrent tokenize of
            /// the same card draw again instead of returning the winner's token.
            async fn taken_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                record: &vault_core::ports::TokenRecord,
            ) -> Result<vault_core::ports::InsertOutcome, $crate::group::Failed> {
                use vault_core::ports::InsertOutcome;
                let taken: Option<String> = sqlx::query_scalar($crate::sql::TOKEN_EXISTS)
                    .bind(record.merchant.as_str())
                    .bind(record.token.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(|e| $crate::group::Failed::statement(e))?;
                if taken.is_some() {
                    return Ok(InsertOutcome::TokenTaken);
                }
                let held: Option<i64> = sqlx::query_scalar($crate::sql::SELECT_DEK_USES)
                    .bind(record.merchant.as_str())
                    .bind(i64::from(record.dek_version))
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(|e| $crate::group::Failed::statement(e))?;
                Ok(if held.is_some() {
                    InsertOutcome::FingerprintTaken
                } else {
                    InsertOutcome::KeyGone
                })
            }
        }
    };
}

pub(crate) use token_port;
