//! The key ring's own behaviour: routing unwraps to the KEK that owns a key, and the cache's
//! limits. The KEK here is an in-memory AES-GCM key that can be switched off and counts its
//! unwraps; the real backends have their own tests in `vault-kms`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use vault_crypto::{AeadKey, NONCE_LEN};

use super::*;
use crate::ids::MerchantId;
use crate::ports::Wrapping;

struct CountingKek {
    id: String,
    key: AeadKey,
    up: AtomicBool,
    unwraps: AtomicUsize,
}

impl CountingKek {
    fn new(id: &str) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            key: AeadKey::new(&KeyMaterial::generate()),
            up: AtomicBool::new(true),
            unwraps: AtomicUsize::new(0),
        })
    }

    fn unwraps(&self) -> usize {
        self.unwraps.load(Ordering::SeqCst)
    }

    fn gate(&self) -> Result<(), KekError> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(KekError::Unavailable("switched off".into()))
        }
    }
}

#[async_trait]
impl KeyEncryptionKey for CountingKek {
    fn name(&self) -> &str {
        &self.id
    }
    fn owns(&self, kek_id: &str) -> bool {
        kek_id == self.id
    }
    async fn current_id(&self) -> Result<String, KekError> {
        Ok(self.id.clone())
    }
    async fn wrap(&self, context: &KeyContext, key: &KeyMaterial) -> Result<Wrapping, KekError> {
        self.gate()?;
        let sealed = self
            .key
            .seal(&context.associated_data(), key.expose_secret());
        let mut wrapped = sealed.nonce.to_vec();
        wrapped.extend_from_slice(&sealed.ciphertext);
        Ok(Wrapping {
            kek_id: self.id.clone(),
            wrapped,
        })
    }
    async fn unwrap(
        &self,
        context: &KeyContext,
        _kek_id: &str,
        wrapped: &[u8],
    ) -> Result<KeyMaterial, KekError> {
        self.gate()?;
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        let (nonce, body) = wrapped.split_at(NONCE_LEN);
        let plain = self
            .key
            .open(&context.associated_data(), nonce.try_into().unwrap(), body)
            .map_err(|_| KekError::Integrity)?;
        KeyMaterial::from_slice(&plain).map_err(|_| KekError::Integrity)
    }
    async fn check(&self) -> Result<(), KekError> {
        self.gate()
    }
}

fn context(merchant: &str, purpose: KeyPurpose, version: u32) -> KeyContext {
    KeyContext {
        merchant: MerchantId::parse("merchant_id", merchant).unwrap(),
        purpose,
        version,
    }
}

fn ring(
    current: &Arc<CountingKek>,
    previous: &[&Arc<CountingKek>],
    limits: CacheLimits,
) -> KeyRing {
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
    let kek = CountingKek::new("k1");
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
    let kek = CountingKek::new("k1");
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
    let kek = CountingKek::new("k1");
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
    let kek = CountingKek::new("k1");
    let ring = ring(&kek, &[], CacheLimits::default());
    let wrapped = ring
        .wrap(context("m1", KeyPurpose::Dek, 1), &KeyMaterial::generate())
        .await
        .unwrap();
    ring.dek(&wrapped).await.unwrap();

    kek.up.store(false, Ordering::SeqCst);
    assert!(ring.check().await.is_err());
    assert_eq!(ring.cache_stats().entries, 0);
    assert!(
        matches!(ring.dek(&wrapped).await, Err(VaultError::KeyUnavailable(_))),
        "no key is served from memory while the KEK is down"
    );

    kek.up.store(true, Ordering::SeqCst);
    ring.check().await.unwrap();
    ring.dek(&wrapped).await.unwrap();
    ring.dek(&wrapped).await.unwrap();
    assert_eq!(ring.cache_stats().entries, 1);
}

#[tokio::test]
async fn previous_keks_unwrap_and_rewrap_moves_keys_to_the_current_one() {
    let old = CountingKek::new("old");
    let new = CountingKek::new("new");
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
