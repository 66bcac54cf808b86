//! [`MemoryStore`]: every store port in memory, behind one lock, so each call is one atomic
//! transaction. It passes the same conformance suite as the SQLite and PostgreSQL stores
//! (`vault-store/tests/conformance.rs`), and it can be told to fail ([`StoreFault`]).
//!
//! `keys.rs` holds the key ports, `trail.rs` the audit trail's, `destinations.rs` the
//! forward proxy's.

mod destinations;
mod keys;
mod trail;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use time::OffsetDateTime;
use vault_audit::{Checkpoint, Entry, HASH_LEN};
use vault_crypto::FINGERPRINT_LEN;

use crate::audit::AuditRecord;
use crate::error::StoreError;
use crate::ids::MerchantId;
use crate::ports::{
    ForwardInFlight, InsertOutcome, KeyContext, MerchantKeySet, ShredRequest, StoredDestination,
    Tallied, TallyRequest, TallyStore, TokenRecord, TokenStore, WrappedKey,
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
    /// Every version of every destination, by id.
    destinations: BTreeMap<String, StoredDestination>,
    /// The forwards in flight, by request id.
    forwards: BTreeMap<String, ForwardInFlight>,
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
    StoreError::unavailable("the in-memory store was told to fail")
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

    /// Whether the merchant holds DEK `version`.
    fn holds_dek(&self, merchant: &MerchantId, version: u32) -> bool {
        let at = (merchant.as_str().to_owned(), "dek", version);
        self.keys.contains_key(&at)
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

    async fn token_and_key(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<(TokenRecord, Option<WrappedKey>)>, StoreError> {
        let Some(record) = self.token(merchant, token).await? else {
            return Ok(None);
        };
        let key = self.data_key(merchant, record.dek_version).await?;
        Ok(Some((record, key)))
    }

    async fn token_by_fingerprint(
        &self,
        merchant: &MerchantId,
        fingerprint: &[u8; FINGERPRINT_LEN],
        format: TokenFormat,
        held: u32,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let state = self.lock()?;
        if !state.holds_dek(merchant, held) {
            return Ok(None);
        }
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
        held: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let state = self.lock()?;
        if !state.holds_dek(merchant, held) {
            return Ok(Vec::new());
        }
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
        if !state.holds_dek(&record.merchant, record.dek_version) {
            return Ok(InsertOutcome::KeyGone);
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
