//! `AuditStore` over sqlx: appending to this writer's chain, checkpoints, exports and the
//! prune.

/// `AuditStore` for `$store`, and the chained append every write with an audit record ends in
/// (see `token_store_impl!`).
macro_rules! audit_port {
    ($store:ty, $db:ty) => {
        impl $store {
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

pub(crate) use audit_port;
