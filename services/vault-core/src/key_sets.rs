//! Each merchant's current key set, held in memory for a short time so that a tokenize does
//! not read the merchant's keys from the store on every call.
//!
//! Only the wrapped keys are held here (nothing secret): every use still goes through
//! [`crate::keyring::KeyRing`], so a KEK that stops answering stops the keys at once, as it
//! always did.
//!
//! **Across replicas.** What a held set can get wrong, and what bounds it:
//! - *A shred* (the merchant's keys destroyed) takes effect on every replica before the shred
//!   returns, held set or not: a tokenize's card lookup finds nothing, and its insert stores
//!   nothing, unless the merchant still holds the DEK version the caller's keys name, checked
//!   by the store in the same statement ([`crate::ports::TokenStore::token_by_fingerprint`],
//!   [`crate::ports::InsertOutcome::KeyGone`]). The replica then drops the held set, reads the
//!   store and answers `KeyDestroyed`. Detokenize never uses a held set: it reads the DEK
//!   version its token names from the store on every call.
//! - *A rotation* on another replica reaches this one within [`KEY_SET_MAX_AGE`]: until then
//!   this replica keeps sealing under the previous version, which stays valid (its uses are
//!   still counted and capped in the store). A rotation made here drops the held set at once.
//! - *A store that restarts or loses data* needs nothing more: a set is never trusted for
//!   longer than [`KEY_SET_MAX_AGE`], and the checks above read the store itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ids::MerchantId;
use crate::ports::MerchantKeySet;

/// The longest a merchant's key set is used without reading it again: how long a rotation made
/// on another replica may take to reach this one.
pub const KEY_SET_MAX_AGE: Duration = Duration::from_secs(1);

/// Most merchants held at once; past it, every held set is dropped (they are read again).
const MAX_HELD: usize = 10_000;

/// Merchants' current key sets, each with when it was read from the store.
pub(crate) struct KeySets {
    held: Mutex<HashMap<MerchantId, (Instant, Arc<MerchantKeySet>)>>,
    max_age: Duration,
}

impl KeySets {
    /// Holds sets for `max_age` at most; [`Duration::ZERO`] holds nothing.
    pub(crate) fn new(max_age: Duration) -> Self {
        Self {
            held: Mutex::default(),
            max_age,
        }
    }

    /// The merchant's set, if it was read from the store less than the maximum age ago.
    pub(crate) fn get(&self, merchant: &MerchantId) -> Option<Arc<MerchantKeySet>> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(merchant)
            .filter(|(read, _)| read.elapsed() < self.max_age)
            .map(|(_, set)| Arc::clone(set))
    }

    /// Holds `set`, read from the store at `read` (taken before the read began, so that its
    /// age is never understated).
    pub(crate) fn put(&self, read: Instant, set: Arc<MerchantKeySet>) {
        if self.max_age.is_zero() {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() >= MAX_HELD {
            held.clear();
        }
        let merchant = set.dek.context.merchant.clone();
        held.insert(merchant, (read, set));
    }

    /// Drops the merchant's set (after a rotation, or when its key is gone).
    pub(crate) fn forget(&self, merchant: &MerchantId) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(merchant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{KeyContext, KeyPurpose, WrappedKey};

    fn set(merchant: &str, version: u32) -> Arc<MerchantKeySet> {
        let key = |purpose| WrappedKey {
            context: KeyContext {
                merchant: MerchantId::parse("merchant", merchant).unwrap(),
                purpose,
                version,
            },
            kek_id: "kek".into(),
            wrapped: vec![1, 2, 3],
        };
        Arc::new(MerchantKeySet {
            dek: key(KeyPurpose::Dek),
            fingerprint: key(KeyPurpose::Fingerprint),
            dek_created_at: crate::clock::now(),
        })
    }

    #[test]
    fn a_set_is_held_until_it_is_too_old_or_forgotten() {
        let sets = KeySets::new(Duration::from_secs(60));
        let m = MerchantId::parse("merchant", "m1").unwrap();
        assert!(sets.get(&m).is_none());
        sets.put(Instant::now(), set("m1", 3));
        assert_eq!(sets.get(&m).unwrap().dek.context.version, 3);
        sets.forget(&m);
        assert!(sets.get(&m).is_none());

        let stale = Instant::now().checked_sub(Duration::from_secs(61)).unwrap();
        sets.put(stale, set("m1", 3));
        assert!(sets.get(&m).is_none(), "a set older than the maximum age");

        let off = KeySets::new(Duration::ZERO);
        off.put(Instant::now(), set("m1", 3));
        assert!(off.get(&m).is_none());
    }
}
