//! The key hierarchy as the use cases see it: the current KEK, which wraps every new key; the
//! previous KEKs, which still unwrap keys that KEK rotation has not rewrapped yet; and a
//! bounded cache of unwrapped keys, so the HSM or Transit is not on the hot path.
//!
//! The cache is a memo of unwraps, keyed by the wrapped key itself (context, KEK id and wrapped
//! bytes). The store stays the source of truth: a call names the wrapped key it read from the
//! store (a tokenize perhaps from the merchant's key set held for a second, `key_sets.rs`,
//! which the store re-checks in the same statement as the card), so a key rewrapped, rotated
//! or destroyed (crypto-shred) on another replica is never served from this replica's cache
//! once the store says so. Entries are dropped after `max_age`, when the cache is
//! over `max_entries` (oldest first), and all at once when a KEK stops answering; dropping an
//! entry zeroizes the key (`AeadKey` and `FingerprintKey` zeroize on drop).
//!
//! While a KEK is unreachable the cache is not used at all: a KEK that is gone (an HSM pulled,
//! Transit sealed) is how operators stop all decryption in an emergency, and the vault honours
//! that within one health check (a second) instead of serving cached keys until they age out.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vault_crypto::{AeadKey, FingerprintKey, KeyMaterial};

use crate::error::{KekError, VaultError};
use crate::ports::{KeyContext, KeyEncryptionKey, KeyPurpose, WrappedKey};
use crate::spans;

/// Limits of the unwrapped-key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most keys held at once; 0 turns the cache off.
    pub max_entries: usize,
    /// Longest a key is held after it was unwrapped.
    pub max_age: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_age: Duration::from_secs(300),
        }
    }
}

/// Cache counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to ask the KEK.
    pub misses: u64,
    /// Keys held now.
    pub entries: u64,
}

/// An unwrapped key, ready to use.
enum Unwrapped {
    Dek(Arc<AeadKey>),
    Fingerprint(Arc<FingerprintKey>),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    context: KeyContext,
    kek_id: String,
    wrapped: Vec<u8>,
}

impl CacheKey {
    fn of(key: &WrappedKey) -> Self {
        Self {
            context: key.context.clone(),
            kek_id: key.kek_id.clone(),
            wrapped: key.wrapped.clone(),
        }
    }
}

#[derive(Default)]
struct Entries {
    map: HashMap<CacheKey, (Unwrapped, Instant)>,
    /// Insertion order, for expiry and eviction; may hold stale pairs, which are skipped.
    order: VecDeque<(CacheKey, Instant)>,
}

impl Entries {
    /// Removes the oldest insertion if it is still the live entry for its key.
    fn pop_oldest(&mut self) {
        if let Some((key, at)) = self.order.pop_front()
            && self.map.get(&key).is_some_and(|(_, live)| *live == at)
        {
            self.map.remove(&key);
        }
    }
}

struct KeyCache {
    limits: CacheLimits,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl KeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map holds no invariant a panic could break halfway; keep using it.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &CacheKey) -> Option<Unwrapped> {
        let mut entries = self.lock();
        let found = match entries.map.get(key) {
            Some((value, at)) if at.elapsed() < self.limits.max_age => Some(match value {
                Unwrapped::Dek(k) => Unwrapped::Dek(k.clone()),
                Unwrapped::Fingerprint(k) => Unwrapped::Fingerprint(k.clone()),
            }),
            Some(_) => {
                entries.map.remove(key);
                None
            }
            None => None,
        };
        drop(entries);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn insert(&self, key: CacheKey, value: Unwrapped) {
        if self.limits.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        entries.map.insert(key.clone(), (value, now));
        entries.order.push_back((key, now));
        while entries.map.len() > self.limits.max_entries
            || entries.order.len() > 2 * self.limits.max_entries
        {
            entries.pop_oldest();
        }
    }

    fn purge_expired(&self) {
        let mut entries = self.lock();
        while entries
            .order
            .front()
            .is_some_and(|(_, at)| at.elapsed() >= self.limits.max_age)
        {
            entries.pop_oldest();
        }
    }

    fn purge_all(&self) {
        let mut entries = self.lock();
        entries.map.clear();
        entries.order.clear();
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: u64::try_from(self.lock().map.len()).unwrap_or(u64::MAX),
        }
    }
}

/// The KEKs and the unwrapped-key cache.
pub struct KeyRing {
    current: Arc<dyn KeyEncryptionKey>,
    previous: Vec<Arc<dyn KeyEncryptionKey>>,
    cache: KeyCache,
    /// False from a failed KEK check or an unreachable KEK until the next good check.
    kek_up: AtomicBool,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current.name())
            .field(
                "previous",
                &self.previous.iter().map(|k| k.name()).collect::<Vec<_>>(),
            )
            .field("cache", &self.cache.limits)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// A ring that wraps under `current` and unwraps under `current` or any of `previous`.
    #[must_use]
    pub fn new(
        current: Arc<dyn KeyEncryptionKey>,
        previous: Vec<Arc<dyn KeyEncryptionKey>>,
        limits: CacheLimits,
    ) -> Self {
        Self {
            current,
            previous,
            cache: KeyCache {
                limits,
                entries: Mutex::default(),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            },
            kek_up: AtomicBool::new(true),
        }
    }

    /// The KEK new keys are wrapped under.
    #[must_use]
    pub fn current(&self) -> &Arc<dyn KeyEncryptionKey> {
        &self.current
    }

    /// Generates nothing: wraps `key` for `context` under the current KEK.
    ///
    /// # Errors
    /// [`VaultError::KeyUnavailable`] if the KEK cannot be used.
    pub async fn wrap(
        &self,
        context: KeyContext,
        key: &KeyMaterial,
    ) -> Result<WrappedKey, VaultError> {
        let wrapping = self
            .kek_result(spans::step(spans::kek("wrap"), self.current.wrap(&context, key)).await)?;
        Ok(WrappedKey {
            context,
            kek_id: wrapping.kek_id,
            wrapped: wrapping.wrapped,
        })
    }

    /// The DEK `wrapped` holds, from the cache or the KEK.
    ///
    /// # Errors
    /// [`VaultError::KeyUnavailable`] if no KEK can be used, [`VaultError::Integrity`] if the
    /// wrapped key does not authenticate or is not a DEK.
    pub async fn dek(&self, wrapped: &WrappedKey) -> Result<Arc<AeadKey>, VaultError> {
        if wrapped.context.purpose != KeyPurpose::Dek {
            return Err(VaultError::Integrity);
        }
        match self
            .cached(wrapped, |key| Unwrapped::Dek(Arc::new(AeadKey::new(key))))
            .await?
        {
            Unwrapped::Dek(key) => Ok(key),
            Unwrapped::Fingerprint(_) => Err(VaultError::Integrity),
        }
    }

    /// The fingerprint key `wrapped` holds, from the cache or the KEK.
    ///
    /// # Errors
    /// As [`KeyRing::dek`].
    pub async fn fingerprint_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<Arc<FingerprintKey>, VaultError> {
        if wrapped.context.purpose != KeyPurpose::Fingerprint {
            return Err(VaultError::Integrity);
        }
        let make = |key: &KeyMaterial| Unwrapped::Fingerprint(Arc::new(FingerprintKey::new(key)));
        match self.cached(wrapped, make).await? {
            Unwrapped::Fingerprint(key) => Ok(key),
            Unwrapped::Dek(_) => Err(VaultError::Integrity),
        }
    }

    /// The vault's audit signing key `wrapped` holds (never cached: it is unwrapped once, at
    /// startup, and kept by its owner).
    ///
    /// # Errors
    /// As [`KeyRing::dek`].
    pub async fn signing_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<vault_crypto::SigningKey, VaultError> {
        if wrapped.context.purpose != KeyPurpose::AuditSigning {
            return Err(VaultError::Integrity);
        }
        let seed = self.unwrap(wrapped).await?;
        Ok(vault_crypto::SigningKey::from_seed(&seed))
    }

    /// `wrapped` unwrapped by the KEK that owns it and wrapped again under the current KEK,
    /// for KEK rotation. The key is never cached or returned in the clear.
    ///
    /// # Errors
    /// As [`KeyRing::dek`].
    pub async fn rewrap(&self, wrapped: &WrappedKey) -> Result<WrappedKey, VaultError> {
        let key = self.unwrap(wrapped).await?;
        self.wrap(wrapped.context.clone(), &key).await
    }

    /// The KEK id new wraps are made under (asks a versioned backend).
    ///
    /// # Errors
    /// [`VaultError::KeyUnavailable`] if the KEK cannot be reached.
    pub async fn current_id(&self) -> Result<String, VaultError> {
        self.kek_result(self.current.current_id().await)
    }

    /// Checks every KEK. On any failure the cache is emptied and not used until a check
    /// passes again.
    ///
    /// # Errors
    /// The first KEK's failure, naming that KEK.
    pub async fn check(&self) -> Result<(), KekError> {
        for kek in std::iter::once(&self.current).chain(&self.previous) {
            if let Err(err) = spans::step(spans::kek("check"), kek.check()).await {
                self.kek_down();
                return Err(KekError::caused_by(kek.name().to_owned(), err));
            }
        }
        self.kek_up.store(true, Ordering::SeqCst);
        self.cache.purge_expired();
        Ok(())
    }

    /// The names of the previous KEKs.
    #[must_use]
    pub fn previous_names(&self) -> Vec<String> {
        self.previous.iter().map(|k| k.name().to_owned()).collect()
    }

    /// The cache's limits.
    #[must_use]
    pub fn cache_limits(&self) -> CacheLimits {
        self.cache.limits
    }

    /// Drops every cached key of `merchant` (after its keys were destroyed).
    pub fn forget_merchant(&self, merchant: &crate::ids::MerchantId) {
        let mut entries = self.cache.lock();
        entries
            .map
            .retain(|key, _| &key.context.merchant != merchant);
        entries
            .order
            .retain(|(key, _)| &key.context.merchant != merchant);
    }

    /// The cache's counters.
    #[must_use]
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    async fn cached(
        &self,
        wrapped: &WrappedKey,
        make: impl FnOnce(&KeyMaterial) -> Unwrapped,
    ) -> Result<Unwrapped, VaultError> {
        let use_cache = self.kek_up.load(Ordering::SeqCst);
        let key = CacheKey::of(wrapped);
        if use_cache && let Some(found) = self.cache.get(&key) {
            return Ok(found);
        }
        let material = self.unwrap(wrapped).await?;
        let value = make(&material);
        if use_cache && self.kek_up.load(Ordering::SeqCst) {
            let copy = match &value {
                Unwrapped::Dek(k) => Unwrapped::Dek(k.clone()),
                Unwrapped::Fingerprint(k) => Unwrapped::Fingerprint(k.clone()),
            };
            self.cache.insert(key, copy);
        }
        Ok(value)
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<KeyMaterial, VaultError> {
        let owner = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|kek| kek.owns(&wrapped.kek_id))
            .ok_or_else(|| {
                VaultError::KeyUnavailable(KekError::unavailable(format!(
                    "key is wrapped by kek {}, which is not configured (current: {})",
                    wrapped.kek_id,
                    self.current.name()
                )))
            })?;
        let result = spans::step(
            spans::kek("unwrap"),
            owner.unwrap(&wrapped.context, &wrapped.kek_id, &wrapped.wrapped),
        )
        .await;
        self.kek_result(result)
    }

    /// Passes a KEK result on; an unreachable KEK also empties the cache.
    fn kek_result<T>(&self, result: Result<T, KekError>) -> Result<T, VaultError> {
        if let Err(KekError::Unavailable(_) | KekError::Timeout { .. }) = &result {
            self.kek_down();
        }
        Ok(result?)
    }

    fn kek_down(&self) {
        self.kek_up.store(false, Ordering::SeqCst);
        self.cache.purge_all();
    }
}

#[cfg(test)]
#[path = "keyring_tests.rs"]
mod tests;
