//! The PKCS#11 KEK against a real SoftHSM2 token (created per test run by `scripts/test`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use vault_core::KekError;
use vault_core::ids::MerchantId;
use vault_core::ports::{KeyContext, KeyEncryptionKey, KeyPurpose};
use vault_crypto::KeyMaterial;
use vault_kms::{Pkcs11Error, Pkcs11Kek, Pkcs11Settings};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The tests of this binary take turns. A PKCS#11 module's initialization and a token's login
/// state belong to the whole process, and `the_kek_cannot_be_read_out` opens a second context
/// and session on the token the others use: run side by side, a GenerateKey was seen to fail
/// with "template ... conflicting attributes" (once in a clean CI run).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Settings for the run's throwaway token; fails (never skips) with how to get one.
fn settings(token: &str, pin: &str, key_label: &str) -> Pkcs11Settings {
    assert!(
        std::env::var_os("SOFTHSM2_CONF").is_some() && PathBuf::from(MODULE).exists(),
        "SoftHSM2 and a throwaway token are needed: run the tests with `scripts/test`, which \
         installs softhsm2 (apt) and creates the token under target/test-tools/softhsm"
    );
    Pkcs11Settings {
        module: PathBuf::from(MODULE),
        token_label: token.to_owned(),
        pin: AuthPin::new(pin.into()),
        key_label: key_label.to_owned(),
    }
}

fn context(merchant: &str, version: u32) -> KeyContext {
    KeyContext {
        merchant: MerchantId::parse("merchant_id", merchant).unwrap(),
        purpose: KeyPurpose::Dek,
        version,
    }
}

#[tokio::test]
async fn wraps_and_unwraps_bound_to_context() {
    let _turn = ONE_AT_A_TIME.lock().await;
    Pkcs11Kek::create_key(&settings("vault-test", "1234", "kek-round-trip")).unwrap();
    // Creating it again keeps the existing key.
    Pkcs11Kek::create_key(&settings("vault-test", "1234", "kek-round-trip")).unwrap();
    let kek = Pkcs11Kek::open(settings("vault-test", "1234", "kek-round-trip")).unwrap();
    assert_eq!(kek.name(), "pkcs11:vault-test/kek-round-trip");
    kek.check().await.unwrap();
    let dek = KeyMaterial::generate();
    let wrapping = kek.wrap(&context("m1", 1), &dek).await.unwrap();
    assert_eq!(wrapping.kek_id, kek.name());
    assert!(kek.owns(&wrapping.kek_id));
    let (id, wrapped) = (wrapping.kek_id, wrapping.wrapped);
    assert!(!wrapped.windows(32).any(|w| w == dek.expose_secret()));
    let unwrapped = kek.unwrap(&context("m1", 1), &id, &wrapped).await.unwrap();
    assert_eq!(unwrapped.expose_secret(), dek.expose_secret());

    // Another merchant or version, or a flipped bit: an integrity failure, not a key.
    for other in [context("m2", 1), context("m1", 2)] {
        assert!(matches!(
            kek.unwrap(&other, &id, &wrapped).await,
            Err(KekError::Integrity)
        ));
    }
    let mut tampered = wrapped.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(matches!(
        kek.unwrap(&context("m1", 1), &id, &tampered).await,
        Err(KekError::Integrity)
    ));
    // Sessions survive failures: the next call works.
    assert!(kek.unwrap(&context("m1", 1), &id, &wrapped).await.is_ok());

    // Many calls at once share the session pool.
    let kek = std::sync::Arc::new(kek);
    let calls = (0..32).map(|_| {
        let (kek, id, wrapped) = (kek.clone(), id.clone(), wrapped.clone());
        tokio::spawn(async move { kek.unwrap(&context("m1", 1), &id, &wrapped).await.is_ok() })
    });
    for call in calls.collect::<Vec<_>>() {
        assert!(call.await.unwrap());
    }
}

#[test]
fn the_kek_cannot_be_read_out() {
    let _turn = ONE_AT_A_TIME.blocking_lock();
    let kek_settings = settings("vault-test", "1234", "kek-sealed");
    Pkcs11Kek::create_key(&kek_settings).unwrap();
    Pkcs11Kek::open(settings("vault-test", "1234", "kek-sealed")).unwrap();

    // Look at the key from outside, as any PKCS#11 client would.
    let ctx = Pkcs11::new(MODULE).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "vault-test")
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&AuthPin::new("1234".into())));
    let key = session
        .find_objects(&[Attribute::Label(b"kek-sealed".to_vec())])
        .unwrap()[0];
    // A sensitive attribute comes back empty (or refused), never as bytes.
    let value = session.get_attributes(key, &[AttributeType::Value]);
    assert!(
        value
            .map(|attrs| attrs
                .iter()
                .all(|a| !matches!(a, Attribute::Value(v) if !v.is_empty())))
            .unwrap_or(true),
        "CKA_VALUE of the KEK was readable"
    );
}

#[test]
fn a_wrong_pin_is_a_clear_startup_error() {
    let _turn = ONE_AT_A_TIME.blocking_lock();
    let err = Pkcs11Kek::open(settings("vault-test-locked", "0000", "kek"))
        .err()
        .unwrap();
    assert!(matches!(err, Pkcs11Error::Login { .. }), "{err}");
    assert!(err.to_string().contains("vault-test-locked"), "{err}");
    assert!(
        !err.to_string().contains("0000"),
        "the PIN must not be printed: {err}"
    );
    let missing = Pkcs11Kek::open(settings("no-such-token", "1234", "kek"))
        .err()
        .unwrap();
    assert!(matches!(missing, Pkcs11Error::NoToken(_)), "{missing}");
}
