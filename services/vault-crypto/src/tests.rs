//! Unit tests for the envelope primitives: round trips, tamper detection, no panics on short
//! input, and key types that cannot leak through `Debug`.

use super::*;

const AAD: &[u8] = b"merchant-a|tok_1|1";
const PAN: &[u8] = b"4111111111111111";

fn key() -> AeadKey {
    AeadKey::new(&KeyMaterial::generate())
}

#[test]
fn seal_then_open_round_trips() {
    let key = key();
    let sealed = key.seal(AAD, PAN);
    assert_eq!(sealed.ciphertext.len(), PAN.len() + TAG_LEN);
    assert_ne!(&sealed.ciphertext[..PAN.len()], PAN);
    let opened = key.open(AAD, &sealed.nonce, &sealed.ciphertext);
    assert_eq!(opened.as_deref().map(|v| v.as_slice()), Ok(PAN));
}

#[test]
fn every_single_bit_flip_fails_authentication() {
    let key = key();
    let sealed = key.seal(AAD, PAN);
    for i in 0..sealed.ciphertext.len() * 8 {
        let mut ct = sealed.ciphertext.clone();
        ct[i / 8] ^= 1 << (i % 8);
        assert_eq!(
            key.open(AAD, &sealed.nonce, &ct),
            Err(CryptoError::Integrity)
        );
    }
    for i in 0..NONCE_LEN * 8 {
        let mut nonce = sealed.nonce;
        nonce[i / 8] ^= 1 << (i % 8);
        assert_eq!(
            key.open(AAD, &nonce, &sealed.ciphertext),
            Err(CryptoError::Integrity)
        );
    }
}

#[test]
fn other_associated_data_or_key_fails() {
    let key = key();
    let sealed = key.seal(AAD, PAN);
    assert_eq!(
        key.open(b"merchant-b|tok_1|1", &sealed.nonce, &sealed.ciphertext),
        Err(CryptoError::Integrity)
    );
    assert_eq!(
        self::key().open(AAD, &sealed.nonce, &sealed.ciphertext),
        Err(CryptoError::Integrity)
    );
}

#[test]
fn short_ciphertexts_fail_without_panicking() {
    let key = key();
    for len in 0..=TAG_LEN {
        let ct = vec![0u8; len];
        assert_eq!(
            key.open(AAD, &[0; NONCE_LEN], &ct),
            Err(CryptoError::Integrity)
        );
    }
}

#[test]
fn nonces_are_fresh_per_seal() {
    let key = key();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        assert!(seen.insert(key.seal(AAD, PAN).nonce));
    }
}

#[test]
fn key_material_rejects_wrong_lengths() {
    assert!(KeyMaterial::from_slice(&[7; 31]).is_err());
    assert!(KeyMaterial::from_slice(&[7; 33]).is_err());
    let key = KeyMaterial::from_slice(&[7; 32]);
    assert_eq!(key.map(|k| *k.expose_secret()).ok(), Some([7; 32]));
}

#[test]
fn fingerprints_are_keyed_and_stable() {
    let material = KeyMaterial::from_slice(&[1; 32]).ok();
    let Some(material) = material else {
        unreachable!("32 bytes are a valid key")
    };
    let a = FingerprintKey::new(&material);
    let b = FingerprintKey::new(&KeyMaterial::generate());
    assert_eq!(a.fingerprint(PAN), a.fingerprint(PAN));
    assert_ne!(a.fingerprint(PAN), b.fingerprint(PAN));
    assert_ne!(a.fingerprint(PAN), a.fingerprint(b"4242424242424242"));
}

#[test]
fn fingerprint_matches_rfc_4231_case_2() {
    // RFC 4231 test case 2 uses a 4-byte key; HMAC pads keys shorter than the block size with
    // zeros, so the same key zero-padded to 32 bytes must give the published tag.
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(b"Jefe");
    let Ok(material) = KeyMaterial::from_slice(&key) else {
        unreachable!("32 bytes are a valid key")
    };
    let tag = FingerprintKey::new(&material).fingerprint(b"what do ya want for nothing?");
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn associated_data_is_unambiguous() {
    let a = associated_data("l", &[b"ab", b"c"]);
    let b = associated_data("l", &[b"a", b"bc"]);
    assert_ne!(a, b);
    assert_eq!(a, b"l\0\0\0\x02ab\0\0\0\x01c");
}

#[test]
fn sealed_debug_shows_no_bytes() {
    let sealed = key().seal(AAD, PAN);
    let printed = format!("{sealed:?}");
    assert!(!printed.contains(&format!("{:?}", sealed.ciphertext)));
}

/// Compile-time checks: key types wipe their state on drop, and none of them can be printed.
#[allow(dead_code)]
fn key_types_zeroize_on_drop() {
    fn zeroizes<T: zeroize::ZeroizeOnDrop>() {}
    zeroizes::<Aes256Gcm>();
    // `Hmac<Sha256>` holds its key only as two SHA-256 cores (the inner and outer padded-key
    // states); each wipes itself on drop with sha2's `zeroize` feature.
    zeroizes::<sha2::block_api::Sha256VarCore>();
    zeroizes::<Zeroizing<[u8; KEY_LEN]>>();
}

/// `KeyMaterial`, `AeadKey`, `FingerprintKey` and `SigningKey` must implement neither `Debug` nor `Clone`.
/// This uses the autoref trick: if one of them implemented the trait, the probe would say so.
#[test]
fn key_types_have_no_debug_and_no_clone() {
    struct CloneProbe<T>(std::marker::PhantomData<T>);
    trait ViaClone {
        fn implements_clone(&self) -> bool {
            true
        }
    }
    impl<T: Clone> ViaClone for CloneProbe<T> {}
    trait CloneFallback {
        fn implements_clone(&self) -> bool {
            false
        }
    }
    impl<T> CloneFallback for &CloneProbe<T> {}
    assert!(!(&CloneProbe::<KeyMaterial>(std::marker::PhantomData)).implements_clone());
    assert!(!(&CloneProbe::<AeadKey>(std::marker::PhantomData)).implements_clone());
    assert!(!(&CloneProbe::<FingerprintKey>(std::marker::PhantomData)).implements_clone());
    assert!(!(&CloneProbe::<SigningKey>(std::marker::PhantomData)).implements_clone());
    assert!(CloneProbe::<u8>(std::marker::PhantomData).implements_clone());

    struct Probe<T>(std::marker::PhantomData<T>);
    trait ViaDebug {
        fn implements_debug(&self) -> bool {
            true
        }
    }
    impl<T: std::fmt::Debug> ViaDebug for Probe<T> {}
    trait Fallback {
        fn implements_debug(&self) -> bool {
            false
        }
    }
    impl<T> Fallback for &Probe<T> {}
    assert!(!(&Probe::<KeyMaterial>(std::marker::PhantomData)).implements_debug());
    assert!(!(&Probe::<AeadKey>(std::marker::PhantomData)).implements_debug());
    assert!(!(&Probe::<FingerprintKey>(std::marker::PhantomData)).implements_debug());
    assert!(!(&Probe::<SigningKey>(std::marker::PhantomData)).implements_debug());
    // The probe itself works: a type with Debug is seen as such.
    assert!(Probe::<u8>(std::marker::PhantomData).implements_debug());
}

#[test]
fn signatures_verify_and_refuse_any_change() {
    let key = SigningKey::from_seed(&KeyMaterial::generate());
    let public = key.public_key();
    let signature = key.sign(b"checkpoint 7");
    assert!(verify_signature(&public, b"checkpoint 7", &signature));
    assert!(!verify_signature(&public, b"checkpoint 8", &signature));
    let other = SigningKey::from_seed(&KeyMaterial::generate()).public_key();
    assert!(!verify_signature(&other, b"checkpoint 7", &signature));
    for bit in 0..SIGNATURE_LEN * 8 {
        let mut flipped = signature;
        if let Some(byte) = flipped.get_mut(bit / 8) {
            *byte ^= 1 << (bit % 8);
        }
        assert!(
            !verify_signature(&public, b"checkpoint 7", &flipped),
            "bit {bit}"
        );
    }
    // The same seed makes the same key (it is stored wrapped and unwrapped at startup).
    let seed = KeyMaterial::generate();
    let a = SigningKey::from_seed(&KeyMaterial::from_slice(seed.expose_secret()).unwrap());
    let b = SigningKey::from_seed(&seed);
    assert_eq!(a.public_key(), b.public_key());
    assert_eq!(sha256(b"abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
}

#[test]
fn wrapped_keys_round_trip_bound_to_their_data_and_refuse_short_input() {
    let kek = key();
    let dek = KeyMaterial::generate();
    let wrapped = kek.wrap_key(AAD, &dek);
    assert_eq!(wrapped.len(), NONCE_LEN + KEY_LEN + TAG_LEN);
    let back = kek.unwrap_key(AAD, &wrapped).map(|k| *k.expose_secret());
    assert_eq!(back, Ok(*dek.expose_secret()));
    assert!(kek.unwrap_key(b"other", &wrapped).is_err());
    for len in 0..wrapped.len() {
        assert!(kek.unwrap_key(AAD, &wrapped[..len]).is_err(), "{len} bytes");
    }
}
