//! The DEK manager: a merchant's current keys (made on its first use, against the
//! new-merchant cap, and rotated by age), the reserved use behind every seal (rotating at the
//! use cap), and opening a stored PAN under the DEK version its row names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use vault_crypto::{AeadKey, FingerprintKey, KeyMaterial};

use crate::audit::AuditRecord;
use crate::clock::now;
use crate::error::{Throttle, VaultError};
use crate::expiry::Expiry;
use crate::guard::{self, GuardSettings};
use crate::ids::{CallerId, MerchantId};
use crate::key_sets::{KEY_SET_MAX_AGE, KeySets};
use crate::keyring::KeyRing;
use crate::lifecycle::{DekLimits, UseLeases};
use crate::pan::Pan;
use crate::ports::{KeyContext, KeyPurpose, MerchantKeySet, TokenRecord, TokenStore, WrappedKey};
use crate::spans;
use crate::token::Token;

/// A merchant's unwrapped current keys.
#[derive(Clone)]
pub(crate) struct MerchantKeys {
    pub(crate) dek_version: u32,
    pub(crate) dek: Arc<AeadKey>,
    pub(crate) dek_created_at: OffsetDateTime,
    pub(crate) fingerprint: Arc<FingerprintKey>,
}

/// Keys for the services that seal and open PANs: the store's key rows, the merchants' key
/// sets held in memory (`key_sets.rs`), the KEKs and their cache, the DEK limits and this
/// replica's use leases.
#[derive(Clone)]
pub(crate) struct Deks {
    store: Arc<dyn TokenStore>,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) limits: DekLimits,
    leases: Arc<UseLeases>,
    sets: Arc<KeySets>,
    guard: GuardSettings,
}

impl Deks {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        keys: Arc<KeyRing>,
        limits: DekLimits,
        guard: GuardSettings,
    ) -> Self {
        // A cache of unwrapped keys turned off means no key is held in memory: neither are
        // the merchants' key sets.
        let max_age = if keys.cache_limits().max_entries == 0 {
            Duration::ZERO
        } else {
            KEY_SET_MAX_AGE
        };
        Self {
            store,
            keys,
            limits,
            leases: Arc::default(),
            sets: Arc::new(KeySets::new(max_age)),
            guard,
        }
    }

    /// `set` unwrapped: the newest DEK and the fingerprint key, ready to use.
    pub(crate) async fn unwrapped(&self, set: &MerchantKeySet) -> Result<MerchantKeys, VaultError> {
        Ok(MerchantKeys {
            dek_version: set.dek.context.version,
            dek: self.keys.dek(&set.dek).await?,
            dek_created_at: set.dek_created_at,
            fingerprint: self.keys.fingerprint_key(&set.fingerprint).await?,
        })
    }

    /// Decrypts a stored PAN under the DEK version the row names, for the row's merchant.
    /// A row moved to another merchant finds that merchant's key (or none), and its associated
    /// data names the original merchant, token, version and expiry: it cannot open.
    pub(crate) async fn open_pan(&self, record: &TokenRecord) -> Result<Pan, VaultError> {
        let wrapped = self
            .store
            .data_key(&record.merchant, record.dek_version)
            .await?;
        self.open_under(record, wrapped).await
    }

    /// As [`Deks::open_pan`], with the DEK the store read with the record (`None`: the merchant
    /// no longer holds the version the row names).
    pub(crate) async fn open_under(
        &self,
        record: &TokenRecord,
        wrapped: Option<WrappedKey>,
    ) -> Result<Pan, VaultError> {
        let Some(wrapped) = wrapped else {
            return Err(if self.store.is_shredded(&record.merchant).await? {
                self.destroyed(&record.merchant)
            } else {
                VaultError::Integrity
            });
        };
        let dek = self.keys.dek(&wrapped).await?;
        Self::open_with(&dek, record)
    }

    fn open_with(dek: &AeadKey, record: &TokenRecord) -> Result<Pan, VaultError> {
        let aad = pan_associated_data(
            &record.merchant,
            &record.token,
            record.dek_version,
            record.metadata.expiry,
        );
        let digits = dek
            .open(&aad, &record.sealed.nonce, &record.sealed.ciphertext)
            .map_err(|_| VaultError::Integrity)?;
        let digits = std::str::from_utf8(&digits).map_err(|_| VaultError::Integrity)?;
        Pan::parse("pan", digits).map_err(|_| VaultError::Integrity)
    }

    /// Before a deduplicated tokenize returns an existing token, checks that the token really
    /// holds this card: a fingerprint copied onto another row must not hand out that row's
    /// token.
    pub(crate) async fn check_same_card(
        &self,
        found: &TokenRecord,
        pan: &Pan,
        keys: &MerchantKeys,
    ) -> Result<(), VaultError> {
        let stored = if found.dek_version == keys.dek_version {
            Self::open_with(&keys.dek, found)?
        } else {
            self.open_pan(found).await?
        };
        if stored.expose_digits() == pan.expose_digits() {
            Ok(())
        } else {
            Err(VaultError::Integrity)
        }
    }

    /// The merchant's current keys, creating them on its first use and rotating a DEK that
    /// is older than the limits allow. Two replicas creating or rotating at once are settled by
    /// the store's uniqueness constraint: the loser reads the winner's. A shredded merchant
    /// gets [`VaultError::KeyDestroyed`] and never new keys.
    ///
    /// The set may come from memory (`key_sets.rs`): whoever seals under these keys must look
    /// the card up and insert it with the DEK version they name, which the store checks, and
    /// call [`Deks::reread_keys`] when it answers that the key is gone.
    pub(crate) async fn current_keys(
        &self,
        merchant: &MerchantId,
        caller: &CallerId,
    ) -> Result<MerchantKeys, VaultError> {
        let set = match self.sets.get(merchant) {
            Some(set) => set,
            None => {
                let read = Instant::now();
                let set =
                    match spans::step(spans::store("keys"), self.store.merchant_keys(merchant))
                        .await?
                    {
                        Some(set) => set,
                        None => {
                            if self.store.is_shredded(merchant).await? {
                                return Err(self.destroyed(merchant));
                            }
                            self.count_new_merchant(merchant, caller).await?;
                            let fresh = self.new_key_set(merchant).await?;
                            self.store.create_merchant_keys(&fresh).await?;
                            self.stored_keys(merchant).await?
                        }
                    };
                let set = Arc::new(set);
                self.sets.put(read, Arc::clone(&set));
                set
            }
        };
        match self.limits.rotate_after {
            Some(max_age) if now() - set.dek_created_at >= max_age => {
                self.rotate_dek(merchant, set.dek.context.version, None)
                    .await?;
                self.reread_keys(merchant).await
            }
            _ => self.unwrapped(&set).await,
        }
    }

    /// The merchant's current keys read from the store, not from memory (and held again): after
    /// the store answered that the DEK version in hand is gone, or a rotation.
    pub(crate) async fn reread_keys(
        &self,
        merchant: &MerchantId,
    ) -> Result<MerchantKeys, VaultError> {
        self.sets.forget(merchant);
        let read = Instant::now();
        let set = Arc::new(self.stored_keys(merchant).await?);
        self.sets.put(read, Arc::clone(&set));
        self.unwrapped(&set).await
    }

    /// Forgets every key of the merchant this replica holds: its key set and its unwrapped
    /// keys (after its keys were destroyed).
    pub(crate) fn forget(&self, merchant: &MerchantId) {
        self.sets.forget(merchant);
        self.keys.forget_merchant(merchant);
    }

    /// Counts a merchant the caller is about to create against its hourly cap (vault-wide),
    /// before any KEK is asked to wrap its keys.
    async fn count_new_merchant(
        &self,
        merchant: &MerchantId,
        caller: &CallerId,
    ) -> Result<(), VaultError> {
        guard::count_hourly(
            self.store.as_ref(),
            guard::MERCHANT_CREATE_SCOPE,
            caller,
            merchant.as_str().as_bytes(),
            self.guard.new_merchants_per_hour,
            Throttle::NewMerchants,
        )
        .await
    }

    /// A shredded merchant's answer. Its keys also leave this replica's cache: the replica that
    /// approved the shred forgot them at once, the others do when they first meet it.
    fn destroyed(&self, merchant: &MerchantId) -> VaultError {
        self.forget(merchant);
        VaultError::KeyDestroyed
    }

    /// The merchant's stored keys, which must exist (or the merchant was shredded).
    pub(crate) async fn stored_keys(
        &self,
        merchant: &MerchantId,
    ) -> Result<MerchantKeySet, VaultError> {
        match spans::step(spans::store("keys"), self.store.merchant_keys(merchant)).await? {
            Some(set) => Ok(set),
            None if self.store.is_shredded(merchant).await? => Err(self.destroyed(merchant)),
            None => Err(VaultError::FailedPrecondition(
                "the merchant has no keys yet; its first tokenize creates them",
            )),
        }
    }

    /// Reserves one use of the merchant's DEK for a seal. When the version is full it rotates
    /// and moves `keys` to the new version; when a reservation crosses `rotate_after_uses` it
    /// rotates for the next callers. No version is ever used more than `max_uses` times.
    pub(crate) async fn reserve_dek_use(
        &self,
        merchant: &MerchantId,
        keys: &mut MerchantKeys,
    ) -> Result<(), VaultError> {
        // Each round either spends a use or rotates; a few rounds cover racing replicas.
        for _ in 0..8 {
            if self.leases.take(merchant, keys.dek_version) {
                return Ok(());
            }
            let _refilling = self.leases.refill.lock().await;
            if self.leases.take(merchant, keys.dek_version) {
                // Refilled while this call waited.
                return Ok(());
            }
            let reserved = self
                .store
                .reserve_dek_uses(
                    merchant,
                    keys.dek_version,
                    self.limits.lease.max(1),
                    self.limits.max_uses,
                )
                .await?;
            if reserved.granted > 0 {
                self.leases
                    .put(merchant, keys.dek_version, reserved.granted - 1);
                if reserved.total >= self.limits.rotate_after_uses {
                    self.rotate_dek(merchant, keys.dek_version, None).await?;
                }
                return Ok(());
            }
            self.rotate_dek(merchant, keys.dek_version, None).await?;
            let fresh = self.reread_keys(merchant).await?;
            keys.dek_version = fresh.dek_version;
            keys.dek = fresh.dek;
            keys.dek_created_at = fresh.dek_created_at;
        }
        Err(VaultError::StoreUnavailable(
            crate::error::StoreError::unavailable("could not reserve a use of the merchant's DEK"),
        ))
    }

    /// Stores DEK version `from + 1` for the merchant unless it exists. Returns the version.
    pub(crate) async fn rotate_dek(
        &self,
        merchant: &MerchantId,
        from: u32,
        audit: Option<&AuditRecord>,
    ) -> Result<u32, VaultError> {
        let version = from.checked_add(1).ok_or(VaultError::FailedPrecondition(
            "the merchant's DEK has no versions left",
        ))?;
        let context = KeyContext {
            merchant: merchant.clone(),
            purpose: KeyPurpose::Dek,
            version,
        };
        let wrapped = self.keys.wrap(context, &KeyMaterial::generate()).await?;
        self.store.add_data_key(&wrapped, audit).await?;
        self.sets.forget(merchant);
        Ok(version)
    }

    async fn new_key_set(&self, merchant: &MerchantId) -> Result<MerchantKeySet, VaultError> {
        let context = |purpose| KeyContext {
            merchant: merchant.clone(),
            purpose,
            version: 1,
        };
        Ok(MerchantKeySet {
            dek_created_at: now(),
            dek: self
                .keys
                .wrap(context(KeyPurpose::Dek), &KeyMaterial::generate())
                .await?,
            fingerprint: self
                .keys
                .wrap(context(KeyPurpose::Fingerprint), &KeyMaterial::generate())
                .await?,
        })
    }
}

/// Associated data for a PAN ciphertext: it binds merchant, token, DEK version and expiry, so
/// a ciphertext copied to another row, merchant or key version never opens, and an expiry
/// edited in the database makes the row fail rather than return a PAN with the wrong date.
#[must_use]
pub fn pan_associated_data(
    merchant: &MerchantId,
    token: &Token,
    dek_version: u32,
    expiry: Option<Expiry>,
) -> Vec<u8> {
    let expiry = expiry.map_or([0; 3], |e| {
        let [high, low] = e.year().to_be_bytes();
        [e.month(), high, low]
    });
    vault_crypto::associated_data(
        "vault.pan.v1",
        &[
            merchant.as_str().as_bytes(),
            token.as_str().as_bytes(),
            &dek_version.to_be_bytes(),
            &expiry,
        ],
    )
}
