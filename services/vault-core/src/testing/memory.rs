//! [`MemoryStore`]: every store port in memory, behind one lock, so each call is one atomic
//! transaction. It passes the same conformance suite as the SQLite and PostgreSQL stores
//! (`vault-store/tests/conformance.rs`), and it can be told to fail ([`StoreFault`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use time::OffsetDateTime;
use vault_audit::{Checkpoint, CheckpointKind, Entry, GENESIS, HASH_LEN};
use vault_crypto::FINGERPRINT_LEN;

use crate::audit::AuditRecord;
use crate::clock::{micros, now};
use crate::error::StoreError;
use crate::ids::{CallerId, MerchantId};
use crate::ports::{
    AuditCursor, AuditQuery, AuditStore, ChainHead, ExportPlan, InsertOutcome, KeyContext,
    KeyStore, KeyVersionInfo, MerchantKeySet, PruneCounts, PruneCut, PrunePlan, ShredRequest,
    Tallied, TallyRequest, TallyStore, TokenRecord, TokenStore, UseReservation, WrappedKey,
};
use crate::token::{Token, TokenFormat};

/// What a [`MemoryStore`] is told to fail, to test the use cases' failure paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreFault {
    /// Nothing fails.
    #[default]
    None,
    /// Every call fails: the database is down.
    Down,
    /// Every write that carries an audit record fails, having changed nothing (the audit
    /// table is full or refuses rows); reads and unaudited writes work.
    AuditWrites,
}

/// A key row: the key, when it was made, and (DEKs) the uses reserved under it.
#[derive(Debug, Clone)]
struct KeyRow {
    key: WrappedKey,
    created_at: OffsetDateTime,
    uses: u64,
}

/// A key's place in key order: merchant, purpose (as spelled), version.
type KeyOrder = (String, &'static str, u32);

/// A tally's key: window end, scope, subject.
type TallyKey = (i64, &'static str, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShredState {
    Pending,
    Superseded,
    Executed,
}

#[derive(Debug, Default)]
struct State {
    fault: StoreFault,
    /// By (merchant, token).
    tokens: BTreeMap<(String, String), TokenRecord>,
    keys: BTreeMap<KeyOrder, KeyRow>,
    shredded: BTreeSet<String>,
    shreds: Vec<(ShredRequest, ShredState)>,
    /// Writers with records (registered at their first record), as `audit_writers` holds.
    writers: BTreeSet<String>,
    /// By (writer, seq): the record's time in microseconds and the record.
    records: BTreeMap<(String, u64), (i64, Entry)>,
    /// By `cp_seq`: the checkpoint's time in microseconds and the checkpoint.
    checkpoints: BTreeMap<u64, (i64, Checkpoint)>,
    /// This store's writer head, once read.
    head: Option<(u64, [u8; HASH_LEN])>,
    tallies: HashMap<TallyKey, (u64, HashSet<Vec<u8>>)>,
    /// Token inserts still to answer `TokenTaken` (see [`MemoryStore::collide_next_tokens`]).
    collisions: usize,
}

/// Every store port in memory. Each method runs under one lock, as one transaction: a write
/// and its audit record land together or not at all. Clones share one store and one writer
/// (handles on one database, like a pool's connections).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    writer: String,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn order(context: &KeyContext) -> KeyOrder {
    (
        context.merchant.as_str().to_owned(),
        context.purpose.as_str(),
        context.version,
    )
}

fn down() -> StoreError {
    StoreError::Unavailable("the in-memory store was told to fail".to_owned())
}

impl MemoryStore {
    /// An empty store with a new audit writer.
    #[must_use]
    pub fn new() -> Self {
        Self {
            writer: crate::audit::new_writer(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Makes the store fail as `fault` says from now on.
    pub fn set_fault(&self, fault: StoreFault) {
        self.lock_raw().fault = fault;
    }

    /// Answers the next `n` token inserts with [`InsertOutcome::TokenTaken`], as if each drew
    /// a token the merchant already holds (to test the use cases' retries).
    pub fn collide_next_tokens(&self, n: usize) {
        self.lock_raw().collisions = n;
    }

    /// How many audit records the store holds (every writer's).
    #[must_use]
    pub fn audit_count(&self) -> usize {
        self.lock_raw().records.len()
    }

    /// Every audit record the store holds, by writer and seq.
    #[must_use]
    pub fn audit_records(&self) -> Vec<Entry> {
        self.lock_raw()
            .records
            .values()
            .map(|(_, entry)| entry.clone())
            .collect()
    }

    /// How many tokens the store holds (every merchant's).
    #[must_use]
    pub fn token_count(&self) -> usize {
        self.lock_raw().tokens.len()
    }

    fn lock_raw(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, for a call: fails if the store is down.
    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        let state = self.lock_raw();
        if state.fault == StoreFault::Down {
            return Err(down());
        }
        Ok(state)
    }
}

impl State {
    /// Fails if audited writes are to fail; called before an audited write changes anything.
    fn audit_allowed(&self) -> Result<(), StoreError> {
        match self.fault {
            StoreFault::None => Ok(()),
            StoreFault::Down | StoreFault::AuditWrites => Err(down()),
        }
    }

    /// `writer`'s head: its newest record, or the newest head a checkpoint signs for it.
    fn read_head(&self, writer: &str) -> (u64, [u8; HASH_LEN]) {
        let record = self
            .records
            .range((writer.to_owned(), 0)..=(writer.to_owned(), u64::MAX))
            .next_back()
            .map(|((_, seq), (_, entry))| (*seq, entry.hash));
        let signed = self
            .checkpoints
            .values()
            .filter(|(_, cp)| cp.writer == writer)
            .max_by_key(|(_, cp)| (cp.seq, cp.cp_seq))
            .map(|(_, cp)| (cp.seq, cp.head_hash));
        [record, signed]
            .into_iter()
            .flatten()
            .fold((0, GENESIS), |best, candidate| {
                if candidate.0 > best.0 {
                    candidate
                } else {
                    best
                }
            })
    }

    /// Appends `audits` to `writer`'s chain (the caller checked [`State::audit_allowed`]).
    fn append(&mut self, writer: &str, audits: &[&AuditRecord]) -> Result<(), StoreError> {
        let mut head = match self.head {
            Some(head) => head,
            None => {
                self.writers.insert(writer.to_owned());
                self.read_head(writer)
            }
        };
        let mut entries = Vec::with_capacity(audits.len());
        for audit in audits {
            let entry = audit
                .chained(writer, head.0 + 1, head.1)
                .ok_or_else(|| StoreError::Corrupt("audit time out of range".to_owned()))?;
            head = (entry.seq, entry.hash);
            entries.push((micros(audit.time), entry));
        }
        for (at, entry) in entries {
            self.records
                .insert((writer.to_owned(), entry.seq), (at, entry));
        }
        self.head = Some(head);
        Ok(())
    }

    fn insert_key(&mut self, key: &WrappedKey, created_at: OffsetDateTime) -> bool {
        if self.shredded.contains(key.context.merchant.as_str()) {
            return false;
        }
        let at = order(&key.context);
        if self.keys.contains_key(&at) {
            return false;
        }
        self.keys.insert(
            at,
            KeyRow {
                key: key.clone(),
                created_at,
                uses: 0,
            },
        );
        true
    }

    fn merchant_tokens<'a>(
        &'a self,
        merchant: &'a MerchantId,
    ) -> impl Iterator<Item = &'a TokenRecord> + 'a {
        let m = merchant.as_str().to_owned();
        self.tokens
            .range((m.clone(), String::new())..)
            .take_while(move |((owner, _), _)| *owner == m)
            .map(|(_, record)| record)
    }

    fn tally_one(&mut self, request: &TallyRequest) -> Vec<Tallied> {
        let key = (request.window_end, request.scope, request.subject.clone());
        let (count, items) = self.tallies.entry(key).or_default();
        let mut out = Vec::with_capacity(request.items.len());
        for item in &request.items {
            if *count > request.limit || items.contains(item) {
                out.push(Tallied {
                    count: *count,
                    new: false,
                });
            } else {
                *count += 1;
                items.insert(item.clone());
                out.push(Tallied {
                    count: *count,
                    new: true,
                });
            }
        }
        if request.trip {
            *count = (*count).max(request.limit.saturating_add(1));
        }
        out
    }

    /// What a prune through `exported` with cutoff `before` would remove (see [`PrunePlan`]).
    fn plan_prune(&self, exported: u64, before: OffsetDateTime) -> Option<PrunePlan> {
        let cutoff = micros(before);
        let young = self
            .checkpoints
            .values()
            .filter(|(at, _)| *at >= cutoff)
            .map(|(_, cp)| cp.cp_seq)
            .min();
        let through = young.map_or(exported, |young| exported.min(young.saturating_sub(1)));
        let mut signed: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, cp) in self.checkpoints.range(..=through).map(|(_, v)| v) {
            let seq = signed.entry(cp.writer.as_str()).or_insert(cp.seq);
            *seq = (*seq).max(cp.seq);
        }
        if signed.is_empty() {
            return None;
        }
        let writers = signed
            .into_iter()
            .map(|(writer, signed)| self.prune_cut(writer, signed, through))
            .collect::<Option<Vec<_>>>()?;
        Some(PrunePlan {
            exported,
            before,
            through,
            writers,
        })
    }

    fn prune_cut(&self, writer: &str, signed: u64, through: u64) -> Option<PruneCut> {
        let of_writer = || {
            self.checkpoints
                .values()
                .map(|(_, cp)| cp)
                .filter(move |cp| cp.writer == writer)
        };
        let kept_low = of_writer()
            .filter(|cp| cp.cp_seq > through)
            .map(|cp| cp.seq)
            .min();
        let cut = kept_low.map_or(signed, |low| low.min(signed));
        let cut_hash = of_writer()
            .filter(|cp| cp.seq == cut)
            .max_by_key(|cp| cp.cp_seq)?
            .head_hash;
        let newest = of_writer().max_by_key(|cp| cp.cp_seq);
        let record_head = self
            .records
            .range((writer.to_owned(), 0)..=(writer.to_owned(), u64::MAX))
            .next_back()
            .map_or(0, |((_, seq), _)| *seq);
        let stopped =
            newest.is_some_and(|cp| cp.kind == CheckpointKind::Stop.as_str() && cp.seq == cut);
        Some(PruneCut {
            writer: writer.to_owned(),
            cut,
            cut_hash,
            kept_low,
            finished: stopped && kept_low.is_none() && record_head <= cut,
        })
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn merchant_keys(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<MerchantKeySet>, StoreError> {
        let state = self.lock()?;
        let newest = |purpose: &'static str| {
            let m = merchant.as_str().to_owned();
            state
                .keys
                .range((m.clone(), purpose, 0)..=(m, purpose, u32::MAX))
                .next_back()
                .map(|(_, row)| row.clone())
        };
        match (newest("dek"), newest("fingerprint")) {
            (Some(dek), Some(fingerprint)) => Ok(Some(MerchantKeySet {
                dek: dek.key,
                dek_created_at: dek.created_at,
                fingerprint: fingerprint.key,
            })),
            (None, None) => Ok(None),
            _ => Err(StoreError::Corrupt(
                "merchant has a dek or a fingerprint key but not both".to_owned(),
            )),
        }
    }

    async fn create_merchant_keys(&self, keys: &MerchantKeySet) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let dek = state.insert_key(&keys.dek, keys.dek_created_at);
        let fingerprint = state.insert_key(&keys.fingerprint, keys.dek_created_at);
        Ok(dek && fingerprint)
    }

    async fn data_key(
        &self,
        merchant: &MerchantId,
        version: u32,
    ) -> Result<Option<WrappedKey>, StoreError> {
        let state = self.lock()?;
        let at = (merchant.as_str().to_owned(), "dek", version);
        Ok(state.keys.get(&at).map(|row| row.key.clone()))
    }

    async fn token_by_fingerprint(
        &self,
        merchant: &MerchantId,
        fingerprint: &[u8; FINGERPRINT_LEN],
        format: TokenFormat,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .merchant_tokens(merchant)
            .find(|r| r.fingerprint == *fingerprint && r.metadata.format == format)
            .cloned())
    }

    async fn tokens_by_fingerprints(
        &self,
        merchant: &MerchantId,
        fingerprints: &[[u8; FINGERPRINT_LEN]],
        format: TokenFormat,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let state = self.lock()?;
        let wanted: HashSet<&[u8; FINGERPRINT_LEN]> = fingerprints.iter().collect();
        Ok(state
            .merchant_tokens(merchant)
            .filter(|r| r.metadata.format == format && wanted.contains(&r.fingerprint))
            .cloned()
            .collect())
    }

    async fn insert_token(
        &self,
        record: &TokenRecord,
        audit: &AuditRecord,
    ) -> Result<InsertOutcome, StoreError> {
        let mut state = self.lock()?;
        let at = (
            record.merchant.as_str().to_owned(),
            record.token.as_str().to_owned(),
        );
        if state.tokens.contains_key(&at) {
            return Ok(InsertOutcome::TokenTaken);
        }
        if state.collisions > 0 {
            state.collisions -= 1;
            return Ok(InsertOutcome::TokenTaken);
        }
        let card_taken = state.merchant_tokens(&record.merchant).any(|r| {
            r.fingerprint == record.fingerprint && r.metadata.format == record.metadata.format
        });
        if card_taken {
            return Ok(InsertOutcome::FingerprintTaken);
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        state.tokens.insert(at, record.clone());
        Ok(InsertOutcome::Inserted)
    }

    async fn token(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let state = self.lock()?;
        let at = (merchant.as_str().to_owned(), token.as_str().to_owned());
        Ok(state.tokens.get(&at).cloned())
    }

    async fn delete_token(
        &self,
        merchant: &MerchantId,
        token: &Token,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let at = (merchant.as_str().to_owned(), token.as_str().to_owned());
        if !state.tokens.contains_key(&at) {
            return Ok(false);
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        state.tokens.remove(&at);
        Ok(true)
    }

    async fn append_audit(&self, audit: &AuditRecord) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])
    }
}

#[async_trait]
impl TallyStore for MemoryStore {
    async fn tally(&self, requests: &[TallyRequest]) -> Result<Vec<Vec<Tallied>>, StoreError> {
        let mut state = self.lock()?;
        Ok(requests.iter().map(|r| state.tally_one(r)).collect())
    }

    async fn purge_tallies(&self, ended_by: i64) -> Result<u64, StoreError> {
        let mut state = self.lock()?;
        let before = state.tallies.len();
        state
            .tallies
            .retain(|(window_end, _, _), _| *window_end > ended_by);
        Ok(count(before - state.tallies.len()))
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn reserve_dek_uses(
        &self,
        merchant: &MerchantId,
        version: u32,
        want: u64,
        limit: u64,
    ) -> Result<UseReservation, StoreError> {
        let mut state = self.lock()?;
        let at = (merchant.as_str().to_owned(), "dek", version);
        let Some(row) = state.keys.get_mut(&at) else {
            return Ok(UseReservation {
                granted: 0,
                total: 0,
            });
        };
        let old = row.uses;
        let new = old.saturating_add(want).min(limit).max(old);
        row.uses = new;
        Ok(UseReservation {
            granted: new - old,
            total: new,
        })
    }

    async fn add_data_key(
        &self,
        key: &WrappedKey,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        if let Some(audit) = audit {
            state.audit_allowed()?;
            state.append(&self.writer, &[audit])?;
        }
        Ok(state.insert_key(key, now()))
    }

    async fn key_versions(&self, merchant: &MerchantId) -> Result<Vec<KeyVersionInfo>, StoreError> {
        let state = self.lock()?;
        let m = merchant.as_str().to_owned();
        Ok(state
            .keys
            .range((m.clone(), "", 0)..)
            .take_while(|((owner, _, _), _)| *owner == m)
            .map(|((_, purpose, version), row)| KeyVersionInfo {
                key: row.key.clone(),
                created_at: row.created_at,
                uses: row.uses,
                tokens: if *purpose == "dek" {
                    count(
                        state
                            .merchant_tokens(merchant)
                            .filter(|r| r.dek_version == *version)
                            .count(),
                    )
                } else {
                    0
                },
            })
            .collect())
    }

    async fn tokens_under_older_dek(
        &self,
        merchant: &MerchantId,
        newest: u32,
        after: &str,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .merchant_tokens(merchant)
            .filter(|r| r.dek_version < newest && r.token.as_str() > after)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn count_tokens_under_older_dek(
        &self,
        merchant: &MerchantId,
        newest: u32,
    ) -> Result<u64, StoreError> {
        let state = self.lock()?;
        Ok(count(
            state
                .merchant_tokens(merchant)
                .filter(|r| r.dek_version < newest)
                .count(),
        ))
    }

    async fn reencrypt_token(
        &self,
        record: &TokenRecord,
        from_version: u32,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let at = (
            record.merchant.as_str().to_owned(),
            record.token.as_str().to_owned(),
        );
        match state.tokens.get_mut(&at) {
            Some(row) if row.dek_version == from_version => {
                row.dek_version = record.dek_version;
                row.sealed = record.sealed.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn keys_not_under(
        &self,
        kek_id: &str,
        after: Option<&KeyContext>,
        limit: u32,
    ) -> Result<Vec<WrappedKey>, StoreError> {
        let state = self.lock()?;
        let after = after.map(order);
        Ok(state
            .keys
            .iter()
            .filter(|(at, row)| row.key.kek_id != kek_id && after.as_ref().is_none_or(|a| *at > a))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, row)| row.key.clone())
            .collect())
    }

    async fn count_keys_not_under(&self, kek_id: &str) -> Result<u64, StoreError> {
        let state = self.lock()?;
        Ok(count(
            state
                .keys
                .values()
                .filter(|row| row.key.kek_id != kek_id)
                .count(),
        ))
    }

    async fn rewrap_key(&self, old: &WrappedKey, new: &WrappedKey) -> Result<bool, StoreError> {
        if old.context != new.context {
            return Err(StoreError::Corrupt(
                "rewrap changes the key's context".to_owned(),
            ));
        }
        let mut state = self.lock()?;
        match state.keys.get_mut(&order(&old.context)) {
            Some(row) if row.key.kek_id == old.kek_id && row.key.wrapped == old.wrapped => {
                row.key.kek_id.clone_from(&new.kek_id);
                row.key.wrapped.clone_from(&new.wrapped);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn pending_shred(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<ShredRequest>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .shreds
            .iter()
            .find(|(r, s)| r.merchant == *merchant && *s == ShredState::Pending)
            .map(|(r, _)| r.clone()))
    }

    async fn request_shred(
        &self,
        request: &ShredRequest,
        supersede: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let still_pending = state.shreds.iter().any(|(r, s)| {
            r.merchant == request.merchant
                && *s == ShredState::Pending
                && Some(r.request_id.as_str()) != supersede
        });
        let id_taken = state
            .shreds
            .iter()
            .any(|(r, _)| r.request_id == request.request_id);
        if still_pending || id_taken {
            return Ok(false);
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        for (r, s) in &mut state.shreds {
            if Some(r.request_id.as_str()) == supersede && *s == ShredState::Pending {
                *s = ShredState::Superseded;
            }
        }
        state.shreds.push((request.clone(), ShredState::Pending));
        Ok(true)
    }

    async fn execute_shred(
        &self,
        merchant: &MerchantId,
        request_id: &str,
        approver: &CallerId,
        audit: &AuditRecord,
    ) -> Result<Option<u64>, StoreError> {
        let mut state = self.lock()?;
        let Some(at) = state.shreds.iter().position(|(r, s)| {
            r.request_id == request_id
                && r.merchant == *merchant
                && *s == ShredState::Pending
                && r.requested_by != *approver
        }) else {
            return Ok(None);
        };
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        if let Some((_, s)) = state.shreds.get_mut(at) {
            *s = ShredState::Executed;
        }
        let before = state.keys.len();
        state
            .keys
            .retain(|(owner, _, _), _| owner.as_str() != merchant.as_str());
        let destroyed = count(before - state.keys.len());
        state.shredded.insert(merchant.as_str().to_owned());
        Ok(Some(destroyed))
    }

    async fn is_shredded(&self, merchant: &MerchantId) -> Result<bool, StoreError> {
        Ok(self.lock()?.shredded.contains(merchant.as_str()))
    }

    async fn merchant_ids(&self) -> Result<Vec<MerchantId>, StoreError> {
        let state = self.lock()?;
        let owner = MerchantId::vault_owner();
        let ids: BTreeSet<&str> = state
            .keys
            .keys()
            .map(|(m, _, _)| m.as_str())
            .chain(state.shredded.iter().map(String::as_str))
            .filter(|m| *m != owner.as_str())
            .collect();
        ids.into_iter()
            .map(|id| {
                MerchantId::from_stored("merchant_id", id)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    fn audit_writer(&self) -> &str {
        &self.writer
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let mut state = self.lock()?;
        let (seq, hash) = match state.head {
            Some(head) => head,
            None => {
                state.writers.insert(self.writer.clone());
                let head = state.read_head(&self.writer);
                state.head = Some(head);
                head
            }
        };
        Ok(ChainHead {
            writer: self.writer.clone(),
            seq,
            hash,
        })
    }

    async fn unsealed_heads(&self) -> Result<Vec<ChainHead>, StoreError> {
        let state = self.lock()?;
        let mut heads = Vec::new();
        for writer in &state.writers {
            let Some(((_, seq), (_, entry))) = state
                .records
                .range((writer.clone(), 0)..=(writer.clone(), u64::MAX))
                .next_back()
            else {
                continue;
            };
            let signed = state
                .checkpoints
                .values()
                .filter(|(_, cp)| cp.writer == *writer)
                .max_by_key(|(_, cp)| (cp.seq, cp.cp_seq))
                .map(|(_, cp)| cp.seq);
            if signed.is_none_or(|signed| signed < *seq) {
                heads.push(ChainHead {
                    writer: writer.clone(),
                    seq: *seq,
                    hash: entry.hash,
                });
            }
        }
        Ok(heads)
    }

    async fn checkpoint_tip(&self) -> Result<Option<(u64, [u8; HASH_LEN])>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .checkpoints
            .values()
            .next_back()
            .map(|(_, cp)| (cp.cp_seq, cp.hash)))
    }

    async fn audit_signing_key(&self) -> Result<Option<WrappedKey>, StoreError> {
        let state = self.lock()?;
        let owner = MerchantId::vault_owner().as_str().to_owned();
        Ok(state
            .keys
            .range((owner.clone(), "audit_signing", 0)..=(owner, "audit_signing", u32::MAX))
            .next_back()
            .map(|(_, row)| row.key.clone()))
    }

    async fn add_audit_signing_key(&self, key: &WrappedKey) -> Result<bool, StoreError> {
        Ok(self.lock()?.insert_key(key, now()))
    }

    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let at = vault_audit::parse_time(&checkpoint.at)
            .ok_or_else(|| StoreError::Corrupt("checkpoint time".to_owned()))?;
        if state.checkpoints.contains_key(&checkpoint.cp_seq) {
            return Ok(false);
        }
        state
            .checkpoints
            .insert(checkpoint.cp_seq, (at, checkpoint.clone()));
        Ok(true)
    }

    async fn checkpoints(
        &self,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let state = self.lock()?;
        if from > to {
            return Ok(Vec::new());
        }
        Ok(state
            .checkpoints
            .range(from..=to)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, (_, cp))| cp.clone())
            .collect())
    }

    async fn plan_export(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<ExportPlan, StoreError> {
        let state = self.lock()?;
        let Some(tip) = state.checkpoints.keys().next_back().copied() else {
            return Ok(ExportPlan::default());
        };
        // Per writer, the newest (`max`) or oldest checkpoint among those `keep` admits.
        let per_writer = |keep: &dyn Fn(i64, u64) -> bool, max: bool| {
            let mut out: BTreeMap<&str, u64> = BTreeMap::new();
            for (at, cp) in state.checkpoints.values() {
                if keep(*at, cp.cp_seq) {
                    let seen = out.entry(cp.writer.as_str()).or_insert(cp.cp_seq);
                    *seen = if max {
                        (*seen).max(cp.cp_seq)
                    } else {
                        (*seen).min(cp.cp_seq)
                    };
                }
            }
            out
        };
        let first = match from {
            None => state.checkpoints.keys().next().copied().unwrap_or(1),
            Some(from) => {
                let from = micros(from);
                let before = per_writer(&|at, _| at <= from, true);
                let after = per_writer(&|at, _| at > from, false);
                after
                    .iter()
                    .map(|(writer, first_after)| {
                        before.get(writer).copied().unwrap_or(*first_after)
                    })
                    .min()
                    .unwrap_or(tip)
            }
        };
        let last = match to {
            None => tip,
            Some(to) => {
                let to = micros(to);
                let newest = per_writer(&|_, cp_seq| cp_seq >= first, true);
                let after = per_writer(&|at, _| at > to.saturating_sub(1), false);
                newest
                    .iter()
                    .map(|(writer, newest)| after.get(writer).copied().unwrap_or(*newest))
                    .max()
                    .unwrap_or(first)
                    .max(first)
            }
        };
        let mut ranges: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        if first <= last {
            for (_, cp) in state.checkpoints.range(first..=last).map(|(_, v)| v) {
                let range = ranges.entry(cp.writer.as_str()).or_insert((cp.seq, cp.seq));
                range.0 = range.0.min(cp.seq);
                range.1 = range.1.max(cp.seq);
            }
        }
        Ok(ExportPlan {
            checkpoints: Some((first, last)),
            writers: ranges
                .into_iter()
                .map(|(writer, (low, high))| (writer.to_owned(), low, high))
                .collect(),
        })
    }

    async fn writer_records(
        &self,
        writer: &str,
        after: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let state = self.lock()?;
        if after >= to {
            return Ok(Vec::new());
        }
        Ok(state
            .records
            .range((writer.to_owned(), after.saturating_add(1))..=(writer.to_owned(), to))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, (_, entry))| entry.clone())
            .collect())
    }

    async fn find_audit(
        &self,
        query: &AuditQuery,
        cursor: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let state = self.lock()?;
        let start = cursor.map_or((i64::MIN, String::new(), 0), |c| {
            (c.at_micros, c.writer.clone(), c.seq)
        });
        let (from, to) = (query.from.map(micros), query.to.map(micros));
        let mut found: Vec<(i64, &Entry)> = state
            .records
            .values()
            .filter(|(at, e)| {
                from.is_none_or(|from| *at >= from)
                    && to.is_none_or(|to| *at < to)
                    && query
                        .merchant
                        .as_ref()
                        .is_none_or(|m| e.merchant_id.as_deref() == Some(m.as_str()))
                    && query.caller.as_ref().is_none_or(|c| e.caller == c.as_str())
                    && query.event.as_ref().is_none_or(|ev| e.event == *ev)
                    && query.outcome.as_ref().is_none_or(|o| e.outcome == *o)
                    && (*at, e.writer.clone(), e.seq) > start
            })
            .map(|(at, e)| (*at, e))
            .collect();
        found.sort_by(|a, b| (a.0, &a.1.writer, a.1.seq).cmp(&(b.0, &b.1.writer, b.1.seq)));
        Ok(found
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn plan_prune(
        &self,
        exported: u64,
        before: OffsetDateTime,
    ) -> Result<Option<PrunePlan>, StoreError> {
        Ok(self.lock()?.plan_prune(exported, before))
    }

    async fn prune_audit(
        &self,
        plan: &PrunePlan,
        checkpoints: &[Checkpoint],
        audit: &AuditRecord,
    ) -> Result<Option<PruneCounts>, StoreError> {
        let mut state = self.lock()?;
        if state.plan_prune(plan.exported, plan.before).as_ref() != Some(plan) {
            return Ok(None);
        }
        let mut taken = HashSet::new();
        for checkpoint in checkpoints {
            if state.checkpoints.contains_key(&checkpoint.cp_seq)
                || !taken.insert(checkpoint.cp_seq)
            {
                return Ok(None);
            }
        }
        let mut stamped = Vec::with_capacity(checkpoints.len());
        for checkpoint in checkpoints {
            let at = vault_audit::parse_time(&checkpoint.at)
                .ok_or_else(|| StoreError::Corrupt("checkpoint time".to_owned()))?;
            stamped.push((at, checkpoint.clone()));
        }
        state.audit_allowed()?;
        let mut removed = PruneCounts::default();
        for cut in &plan.writers {
            let before = state.records.len();
            state
                .records
                .retain(|(writer, seq), _| *writer != cut.writer || *seq > cut.cut);
            removed.records += count(before - state.records.len());
            if cut.finished && state.writers.remove(&cut.writer) {
                removed.writers_closed += 1;
            }
        }
        for (at, checkpoint) in stamped {
            state
                .checkpoints
                .insert(checkpoint.cp_seq, (at, checkpoint));
        }
        let before = state.checkpoints.len();
        state.checkpoints.retain(|cp_seq, _| *cp_seq > plan.through);
        removed.checkpoints = count(before - state.checkpoints.len());
        state.append(&self.writer, &[audit])?;
        Ok(Some(removed))
    }
}
