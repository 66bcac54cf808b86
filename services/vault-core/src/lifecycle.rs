//! DEK lifecycle: how often and how long a merchant's DEK may encrypt before the vault rotates
//! it, and the in-memory leases of use counts that keep the store off the hot path.
//!
//! NIST SP 800-38D caps random-nonce AES-GCM at 2^32 encryptions per key. The vault rotates a
//! merchant's DEK at `rotate_after_uses` (default 2^30) or `rotate_after` (age), whichever
//! comes first, and never encrypts more than `max_uses` (default 2^31) times under one version.
//!
//! Counting is durable and race-free across replicas without a hot row per encryption: a
//! replica reserves uses in blocks (`lease`) with a compare-and-set on the key's row
//! ([`crate::ports::KeyStore::reserve_dek_uses`]), capped at `max_uses`, and then counts down in
//! memory. A replica that dies wastes the rest of its block, so the stored count is an upper
//! bound on the encryptions made, never lower, and never above the cap. The leases are a cache:
//! nothing depends on them for correctness.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::ids::MerchantId;

/// When to rotate a merchant's DEK, and the hard cap on its use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DekLimits {
    /// Rotate once a version's reserved uses reach this.
    pub rotate_after_uses: u64,
    /// Never encrypt more often than this under one version.
    pub max_uses: u64,
    /// Rotate a version older than this, if set.
    pub rotate_after: Option<Duration>,
    /// Uses a replica reserves from the store at a time.
    pub lease: u64,
}

impl DekLimits {
    /// NIST SP 800-38D's limit for random 96-bit nonces: 2^32 encryptions per key.
    pub const NIST_GCM_LIMIT: u64 = 1 << 32;
}

impl Default for DekLimits {
    fn default() -> Self {
        Self {
            rotate_after_uses: 1 << 30,
            max_uses: 1 << 31,
            rotate_after: None,
            lease: 1024,
        }
    }
}

/// Most merchants with a live lease at once; past it, all leases are forgotten (their uses are
/// wasted, which is safe).
const MAX_LEASES: usize = 100_000;

/// Uses reserved in the store and not yet spent, per merchant and DEK version.
#[derive(Debug, Default)]
pub(crate) struct UseLeases {
    left: Mutex<HashMap<MerchantId, (u32, u64)>>,
    /// Held while a lease is being reserved from the store: callers that find the lease spent
    /// at the same moment wait for that one reservation instead of each making their own (a
    /// write transaction apiece, and all but the last one's uses wasted).
    pub(crate) refill: futures_util::lock::Mutex<()>,
}

impl UseLeases {
    /// Spends one leased use of `version`, if there is one.
    pub(crate) fn take(&self, merchant: &MerchantId, version: u32) -> bool {
        let mut left = self.left.lock().unwrap_or_else(PoisonError::into_inner);
        match left.get_mut(merchant) {
            Some((leased, n)) if *leased == version && *n > 0 => {
                *n -= 1;
                if *n == 0 {
                    left.remove(merchant);
                }
                true
            }
            _ => false,
        }
    }

    /// Keeps `n` freshly reserved uses of `version` (replacing any older version's lease).
    pub(crate) fn put(&self, merchant: &MerchantId, version: u32, n: u64) {
        let mut left = self.left.lock().unwrap_or_else(PoisonError::into_inner);
        if n == 0 {
            left.remove(merchant);
            return;
        }
        if left.len() >= MAX_LEASES && !left.contains_key(merchant) {
            left.clear();
        }
        left.insert(merchant.clone(), (version, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_down_per_version() {
        let leases = UseLeases::default();
        let m = MerchantId::parse("merchant_id", "m1").unwrap();
        assert!(!leases.take(&m, 1));
        leases.put(&m, 1, 2);
        assert!(!leases.take(&m, 2), "a lease is for one version");
        assert!(leases.take(&m, 1));
        assert!(leases.take(&m, 1));
        assert!(!leases.take(&m, 1), "spent");
        leases.put(&m, 1, 5);
        leases.put(&m, 2, 1);
        assert!(
            !leases.take(&m, 1),
            "a newer version's lease replaces the old one"
        );
        assert!(leases.take(&m, 2));
    }
}
