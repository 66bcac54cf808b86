//! The key ring's own behaviour: routing unwraps to the KEK that owns a key, and the cache's
//! limits. The KEK here is the in-memory [`FakeKek`], which can be switched off and counts its
//! unwraps; the real backends have their own tests in `vault-kms`.

use vault_crypto::AeadKey;

use super::*;
use crate::ids::MerchantId;
use crate::testing::{FakeKek, KekFault};

fn context(merchant: &str, purpose: KeyPurpose, version: u32) -> KeyContext {
    KeyContext {
        merchant: MerchantId::parse("merchant_id", merchant).unwrap(),
        purpose,
        version,
    }
}

fn ring(current: &Arc<FakeKek>, previous: &[&Arc<FakeKek>], limits: CacheLimits) -> KeyRing {
    KeyRing::new(
        current.clone(),
        previous
            .iter()
            .map(|k| (*k).clone() as Arc<dyn KeyEncryptionKey>)
            .collect(),
        limits,
    )
}

/// Seals with `dek` and opens with `other`: true if they are the same key.
fn same_key(dek: &AeadKey, other: &AeadKey) -> bool {
    let sealed = dek.seal(b"aad", b"probe");
    other
        .open(b"aad", &sealed.nonce, &sealed.ciphertext)
        .is_ok()
}

#[tokio::test]
async fn hits_skip_the_kek_and_are_counted() {
    let kek = FakeKek::new("k1");
    let ring = ring(&kek, &[], CacheLimits::default());
    let wrapped = ring
        .wrap(context("m1", KeyPurpose::Dek, 1), &KeyMaterial::generate())
        .await
        .unwrap();
    let first = ring.dek(&wrapped).await.unwrap();
    let second = ring.dek(&wrapped).await.unwrap();
    assert!(same_key(&first, &second));
    assert_eq!(kek.unwraps(), 1);
    let stats = ring.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
}

#[tokio::test]
async fn a_key_is_never_served_for_another_purpose_or_context() {
    let kek = FakeKek::new("k1");
    let ring = ring(&kek, &[], CacheLimits::default());
    let dek = ring
        .wrap(context("m1", KeyPurpose::Dek, 1), &KeyMaterial::generate())
        .await
        .unwrap();
    ring.dek(&dek).await.unwrap();
    assert!(matches!(
        ring.fingerprint_key(&dek).await,
        Err(VaultError::Integrity)
    ));
    let mut moved = dek.clone();
    moved.context.merchant = MerchantId::parse("merchant_id", "m2").unwrap();
    assert!(matches!(ring.dek(&moved).await, Err(VaultError::Integrity)));
}

#[tokio::test]
async fn size_and_age_bound_the_cache() {
    let kek = FakeKek::new("k1");
    let small = ring(
        &kek,
        &[],
        CacheLimits {
            max_entries: 2,
            max_age: Duration::from_secs(60),
        },
    );
    let mut keys = Vec::new();
    for version in 1..=3 {
        keys.push(
            small
                .wrap(
                    context("m1", KeyPurpose::Dek, version),
                    &KeyMaterial::generate(),
                )
                .await
                .unwrap(),
        );
    }
    for key in &keys {
        small.dek(key).await.unwrap();
    }
    assert_eq!(small.cache_stats().entries, 2);
    // The oldest was evicted: asking for it again goes to the KEK.
    small.dek(&keys[0]).await.unwrap();
    assert_eq!(kek.unwraps(), 4);

    let brief = ring(
        &kek,
        &[],
        CacheLimits {
            max_entries: 10,
            max_age: Duration::from_millis(1),
        },
    );
    brief.dek(&keys[1]).await.unwrap();
    std::thread::sleep(Duration::from_millis(5));
    brief.check().await.unwrap();
    assert_eq!(brief.cache_stats().entries, 0, "expired keys are swept");

    let off = ring(
        &kek,
        &[],
        CacheLimits {
            max_entries: 0,
            max_age: Duration::from_secs(60),
        },
    );
    off.dek(&keys[1]).await.unwrap();
    assert_eq!(off.cache_stats().entries, 0);
}

#[tokio::test]
async fn an_unreachable_kek_empties_the_cache_until_it_is_back() {
    let kek = FakeKek::new("k1");
    let ring = ring(&kek, &[], CacheLimits::default());
    let wrapped = ring
        .wrap(context("m1", KeyPurpose::Dek, 1), &KeyMaterial::generate())
        .await
        .unwrap();
    ring.dek(&wrapped).await.unwrap();

    kek.set_fault(KekFault::Down);
    assert!(ring.check().await.is_err());
    assert_eq!(ring.cache_stats().entries, 0);
    assert!(
        matches!(ring.dek(&wrapped).await, Err(VaultError::KeyUnavailable(_))),
        "no key is served from memory while the KEK is down"
    );

    kek.set_fault(KekFault::None);
    ring.check().await.unwrap();
    ring.dek(&wrapped).await.unwrap();
    ring.dek(&wrapped).await.unwrap();
    assert_eq!(ring.cache_stats().entries, 1);
}

#[tokio::test]
async fn previous_keks_unwrap_and_rewrap_moves_keys_to_the_current_one() {
    let old = FakeKek::new("old");
    let new = FakeKek::new("new");
    let before = ring(&old, &[], CacheLimits::default());
    let wrapped = before
        .wrap(context("m1", KeyPurpose::Dek, 1), &KeyMaterial::generate())
        .await
        .unwrap();
    let original = before.dek(&wrapped).await.unwrap();

    let during = ring(&new, &[&old], CacheLimits::default());
    assert_eq!(during.current_id().await.unwrap(), "new");
    let rewrapped = during.rewrap(&wrapped).await.unwrap();
    assert_eq!(rewrapped.kek_id, "new");
    assert_eq!(rewrapped.context, wrapped.context);
    assert!(same_key(&original, &during.dek(&rewrapped).await.unwrap()));
    assert!(same_key(&original, &during.dek(&wrapped).await.unwrap()));

    let after = ring(&new, &[], CacheLimits::default());
    assert!(matches!(
        after.dek(&wrapped).await,
        Err(VaultError::KeyUnavailable(_))
    ));
}
