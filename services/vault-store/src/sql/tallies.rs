//! `TallyStore` over sqlx: the abuse tallies, counted in a group commit's transaction with a
//! few multi-row statements (the counting itself is `tally.rs`).

/// `TallyStore` for `$store` (see `token_store_impl!`).
macro_rules! tally_port {
    ($store:ty, $db:ty) => {
        impl $store {
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
    };
}

pub(crate) use tally_port;
