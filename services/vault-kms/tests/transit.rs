//! The Transit KEK against a real OpenBao server: each test starts its own throwaway server
//! (`vault_kms::testing::BaoServer`, about 0.4 s) so that sealing, stopping and rotating in one
//! test cannot disturb another. `bao` comes from `BAO_BIN` (`scripts/test` installs it); a run
//! without it fails and says how to get it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vault_core::KekError;
use vault_core::ids::MerchantId;
use vault_core::ports::{KeyContext, KeyEncryptionKey, KeyPurpose};
use vault_crypto::KeyMaterial;
use vault_kms::testing::{BaoServer, KEY, MOUNT};
use vault_kms::{SecretSource, TransitAuth, TransitError, TransitKek};

fn context(merchant: &str, purpose: KeyPurpose, version: u32) -> KeyContext {
    KeyContext {
        merchant: MerchantId::parse("merchant_id", merchant).unwrap(),
        purpose,
        version,
    }
}

fn dek_context() -> KeyContext {
    context("m1", KeyPurpose::Dek, 1)
}

async fn server() -> BaoServer {
    BaoServer::start().await.unwrap_or_else(|e| panic!("{e}"))
}

async fn open(bao: &BaoServer) -> TransitKek {
    TransitKek::open(bao.settings(KEY)).await.unwrap()
}

/// The message of an `Unavailable`, or a panic naming what came instead.
fn unavailable<T>(result: Result<T, KekError>) -> String {
    match result {
        Err(err @ KekError::Unavailable(_)) => vault_core::error::chain(&err),
        Err(KekError::Integrity) => panic!("expected Unavailable, got Integrity"),
        Err(err @ KekError::Timeout { .. }) => panic!("expected Unavailable, got {err}"),
        Ok(_) => panic!("expected Unavailable, got Ok"),
    }
}

fn is_integrity<T>(result: &Result<T, KekError>) -> bool {
    matches!(result, Err(KekError::Integrity))
}

fn write_secret(path: &Path, secret: &str) {
    std::fs::write(path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn wraps_and_unwraps_bound_to_context() {
    let bao = server().await;
    let kek = open(&bao).await;
    assert_eq!(kek.name(), "transit:transit/vault-kek");
    kek.check().await.unwrap();
    assert_eq!(
        kek.current_id().await.unwrap(),
        "transit:transit/vault-kek:v1"
    );

    let dek = KeyMaterial::generate();
    let wrapping = kek.wrap(&dek_context(), &dek).await.unwrap();
    assert_eq!(wrapping.kek_id, "transit:transit/vault-kek:v1");
    assert!(kek.owns(&wrapping.kek_id));
    for foreign in [
        "transit:transit/vault-kek",
        "transit:transit/vault-kek:v0",
        "transit:transit/other:v1",
        "transit:other/vault-kek:v1",
        "pkcs11:vault-test/kek",
    ] {
        assert!(!kek.owns(foreign), "{foreign}");
    }
    let (id, wrapped) = (wrapping.kek_id, wrapping.wrapped);
    assert_eq!(wrapped[0], 1, "format byte");
    assert!(wrapped[1..].starts_with(b"vault:v1:"));
    assert!(!wrapped.windows(32).any(|w| w == dek.expose_secret()));
    let unwrapped = kek.unwrap(&dek_context(), &id, &wrapped).await.unwrap();
    assert_eq!(unwrapped.expose_secret(), dek.expose_secret());

    // Another merchant, purpose or key version: the server refuses to decrypt.
    for other in [
        context("m2", KeyPurpose::Dek, 1),
        context("m1", KeyPurpose::Fingerprint, 1),
        context("m1", KeyPurpose::Dek, 2),
    ] {
        assert!(is_integrity(&kek.unwrap(&other, &id, &wrapped).await));
    }

    // Tampered bytes: a different base64 character (still valid base64), a flipped bit, a
    // wrong format byte, a truncation, a claimed version that does not exist.
    let mut tampered = wrapped.clone();
    let at = tampered.len() - 6;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let mut flipped = wrapped.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut format = wrapped.clone();
    format[0] = 2;
    let truncated = wrapped[..wrapped.len() - 4].to_vec();
    for bad in [tampered, flipped, format, truncated, Vec::new()] {
        assert!(is_integrity(&kek.unwrap(&dek_context(), &id, &bad).await));
    }
    let mut later = wrapped.clone();
    later[8] = b'2'; // "vault:v1:" -> "vault:v2:"
    assert!(is_integrity(
        &kek.unwrap(&dek_context(), "transit:transit/vault-kek:v2", &later)
            .await
    ));
    // The KEK id the store recorded must name the ciphertext's version, and this KEK.
    for wrong_id in [
        "transit:transit/vault-kek:v2",
        "transit:transit/other:v1",
        "transit:transit/vault-kek",
    ] {
        assert!(is_integrity(
            &kek.unwrap(&dek_context(), wrong_id, &wrapped).await
        ));
    }

    // Failures leave the KEK usable, and calls can run concurrently.
    let kek = Arc::new(kek);
    let calls = (0..16).map(|_| {
        let (kek, id, wrapped) = (kek.clone(), id.clone(), wrapped.clone());
        tokio::spawn(async move { kek.unwrap(&dek_context(), &id, &wrapped).await.is_ok() })
    });
    for call in calls.collect::<Vec<_>>() {
        assert!(call.await.unwrap());
    }
}

#[tokio::test]
async fn a_rotation_on_the_server_moves_new_wraps_to_the_new_version() {
    let bao = server().await;
    let kek = open(&bao).await;
    let old_dek = KeyMaterial::generate();
    let old = kek.wrap(&dek_context(), &old_dek).await.unwrap();
    assert!(old.kek_id.ends_with(":v1"));

    bao.rotate_key(KEY).await.unwrap();
    assert_eq!(
        kek.current_id().await.unwrap(),
        "transit:transit/vault-kek:v2"
    );
    let new_dek = KeyMaterial::generate();
    let new = kek.wrap(&dek_context(), &new_dek).await.unwrap();
    assert_eq!(new.kek_id, "transit:transit/vault-kek:v2");
    assert!(new.wrapped[1..].starts_with(b"vault:v2:"));
    assert!(kek.owns(&old.kek_id) && kek.owns(&new.kek_id));

    let old_back = kek
        .unwrap(&dek_context(), &old.kek_id, &old.wrapped)
        .await
        .unwrap();
    assert_eq!(old_back.expose_secret(), old_dek.expose_secret());
    let new_back = kek
        .unwrap(&dek_context(), &new.kek_id, &new.wrapped)
        .await
        .unwrap();
    assert_eq!(new_back.expose_secret(), new_dek.expose_secret());

    // A v1 ciphertext relabelled as v2 (and stored under v2) is decrypted with v2: it fails.
    let mut relabelled = old.wrapped.clone();
    relabelled[8] = b'2';
    assert!(is_integrity(
        &kek.unwrap(&dek_context(), &new.kek_id, &relabelled).await
    ));
}

#[tokio::test]
async fn a_sealed_server_is_unavailable_until_unsealed() {
    let bao = server().await;
    let kek = open(&bao).await;
    let wrapping = kek
        .wrap(&dek_context(), &KeyMaterial::generate())
        .await
        .unwrap();

    bao.seal().await.unwrap();
    let messages = [
        unavailable(kek.wrap(&dek_context(), &KeyMaterial::generate()).await),
        unavailable(
            kek.unwrap(&dek_context(), &wrapping.kek_id, &wrapping.wrapped)
                .await,
        ),
        unavailable(kek.check().await),
        unavailable(kek.current_id().await),
    ];
    for message in &messages {
        assert!(message.contains("sealed"), "{message}");
        assert!(message.contains(&bao.address()), "{message}");
        assert!(!message.contains(bao.root_token()), "{message}");
    }
    // Opening a sealed server's KEK is a startup error that says so.
    let err = TransitKek::open(bao.settings(KEY)).await.unwrap_err();
    assert!(matches!(err, TransitError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("sealed"), "{err}");

    bao.unseal().await.unwrap();
    kek.check().await.unwrap();
    kek.unwrap(&dek_context(), &wrapping.kek_id, &wrapping.wrapped)
        .await
        .unwrap();
    kek.wrap(&dek_context(), &KeyMaterial::generate())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stopped_server_fails_fast_and_a_restart_keeps_the_keys() {
    let mut bao = server().await;
    let settings = bao.settings(KEY);
    let timeout = settings.timeout;
    let kek = TransitKek::open(settings).await.unwrap();
    let dek = KeyMaterial::generate();
    let wrapping = kek.wrap(&dek_context(), &dek).await.unwrap();

    bao.stop();
    let started = Instant::now();
    let messages = [
        unavailable(kek.wrap(&dek_context(), &KeyMaterial::generate()).await),
        unavailable(
            kek.unwrap(&dek_context(), &wrapping.kek_id, &wrapping.wrapped)
                .await,
        ),
        unavailable(kek.check().await),
    ];
    assert!(
        started.elapsed() < timeout,
        "three calls to a stopped server took {:?}",
        started.elapsed()
    );
    for message in &messages {
        assert!(message.contains("unreachable"), "{message}");
        assert!(!message.contains(bao.root_token()), "{message}");
    }

    bao.restart().await.unwrap();
    kek.check().await.unwrap();
    let back = kek
        .unwrap(&dek_context(), &wrapping.kek_id, &wrapping.wrapped)
        .await
        .unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret());
    let after = kek
        .wrap(&dek_context(), &KeyMaterial::generate())
        .await
        .unwrap();
    assert_eq!(after.kek_id, wrapping.kek_id);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // A loopback listener that accepts connections (the kernel does) but never speaks TLS.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bao = server().await;
    let mut settings = bao.settings(KEY);
    settings.address = format!("https://{}", silent.local_addr().unwrap());
    settings.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = TransitKek::open(settings).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(matches!(err, TransitError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

/// A server that stops answering (paused with SIGSTOP) is a timeout, not an outage: the KEK
/// says which, so a slow KEK is never reported as something else.
#[tokio::test]
async fn a_server_that_stops_answering_is_a_timeout() {
    let bao = server().await;
    let mut settings = bao.settings(KEY);
    settings.timeout = Duration::from_millis(400);
    let kek = TransitKek::open(settings).await.unwrap();
    let pid = bao.pid().unwrap().to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    let result = kek.wrap(&dek_context(), &KeyMaterial::generate()).await;
    signal("-CONT");
    match result {
        Err(KekError::Timeout { what, after }) => {
            assert_eq!(after, Duration::from_millis(400));
            assert!(what.starts_with("transit:"), "{what}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    kek.check().await.unwrap();
}

#[tokio::test]
async fn open_refuses_unsafe_missing_or_untrusted_keys() {
    let bao = server().await;
    bao.create_key("exportable", true).await.unwrap();
    bao.write(
        &format!("{MOUNT}/keys/backup"),
        json!({"type": "aes256-gcm96", "allow_plaintext_backup": true}),
    )
    .await
    .unwrap();
    bao.write(
        &format!("{MOUNT}/keys/chacha"),
        json!({"type": "chacha20-poly1305"}),
    )
    .await
    .unwrap();
    bao.write(
        &format!("{MOUNT}/keys/derived"),
        json!({"type": "aes256-gcm96", "derived": true}),
    )
    .await
    .unwrap();
    for (key, says) in [
        ("exportable", "exportable"),
        ("backup", "plaintext backup"),
        ("chacha", "aes256-gcm96"),
        ("derived", "derived"),
        ("missing", "not found"),
    ] {
        let err = TransitKek::open(bao.settings(key)).await.unwrap_err();
        assert!(matches!(err, TransitError::Key { .. }), "{key}: {err}");
        assert!(err.to_string().contains(says), "{key}: {err}");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }

    let mut no_mount = bao.settings(KEY);
    no_mount.mount = "no-such-mount".to_owned();
    let err = TransitKek::open(no_mount).await.unwrap_err();
    assert!(matches!(err, TransitError::Key { .. }), "{err}");
    assert!(err.to_string().contains("not found"), "{err}");

    // create_key makes a key open accepts; creating it again keeps it.
    TransitKek::create_key(&bao.settings("created"))
        .await
        .unwrap();
    TransitKek::create_key(&bao.settings("created"))
        .await
        .unwrap();
    let created = bao.read(&format!("{MOUNT}/keys/created")).await.unwrap();
    assert_eq!(created["data"]["exportable"], json!(false));
    assert_eq!(created["data"]["type"], json!("aes256-gcm96"));
    let kek = TransitKek::open(bao.settings("created")).await.unwrap();
    assert_eq!(
        kek.current_id().await.unwrap(),
        "transit:transit/created:v1"
    );

    // Only the configured CA is trusted: another server's CA does not verify this one.
    let other = server().await;
    let mut settings = bao.settings(KEY);
    settings.ca_cert = other.ca_pem_path();
    let err = TransitKek::open(settings).await.unwrap_err();
    assert!(matches!(err, TransitError::Unavailable(_)), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Plain http is refused before anything is sent.
    let mut settings = bao.settings(KEY);
    settings.address = bao.address().replace("https://", "http://");
    let err = TransitKek::open(settings).await.unwrap_err();
    assert!(matches!(err, TransitError::Settings(_)), "{err}");
}

#[tokio::test]
async fn a_token_is_read_again_when_refused_and_never_printed() {
    let bao = server().await;
    bao.write(
        "sys/policies/acl/kek",
        json!({"policy": format!(
            "path \"{MOUNT}/keys/{KEY}\" {{ capabilities = [\"read\"] }}\n\
             path \"{MOUNT}/encrypt/{KEY}\" {{ capabilities = [\"update\"] }}\n\
             path \"{MOUNT}/decrypt/{KEY}\" {{ capabilities = [\"update\"] }}\n"
        )}),
    )
    .await
    .unwrap();
    let new_token = async || {
        let reply = bao
            .write("auth/token/create", json!({"policies": ["kek"]}))
            .await
            .unwrap();
        reply["auth"]["client_token"].as_str().unwrap().to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let first = new_token().await;
    write_secret(&token_file, &first);
    let mut settings = bao.settings(KEY);
    settings.auth = TransitAuth::Token(SecretSource::File(token_file.clone()));
    let kek = TransitKek::open(settings.clone()).await.unwrap();
    let debug = format!("{kek:?} {settings:?}");
    assert!(!debug.contains(&first), "{debug}");
    let wrapping = kek
        .wrap(&dek_context(), &KeyMaterial::generate())
        .await
        .unwrap();

    // The token is revoked and an agent writes a new one: the next call re-reads the file.
    bao.write("auth/token/revoke", json!({"token": first}))
        .await
        .unwrap();
    let second = new_token().await;
    write_secret(&token_file, &second);
    kek.unwrap(&dek_context(), &wrapping.kek_id, &wrapping.wrapped)
        .await
        .unwrap();

    // Revoked with nothing new in the file: permission denied, and no token in the message.
    bao.write("auth/token/revoke", json!({"token": second}))
        .await
        .unwrap();
    let messages = [
        unavailable(kek.wrap(&dek_context(), &KeyMaterial::generate()).await),
        unavailable(
            kek.unwrap(&dek_context(), &wrapping.kek_id, &wrapping.wrapped)
                .await,
        ),
        unavailable(kek.check().await),
    ];
    for message in &messages {
        assert!(message.contains("permission denied"), "{message}");
        assert!(!message.contains(&first) && !message.contains(&second));
    }
    let debug = format!("{kek:?}");
    assert!(
        !debug.contains(&first) && !debug.contains(&second),
        "{debug}"
    );

    // A token the server does not know: a startup error without the token.
    let bogus = "s.this-token-does-not-exist-0123456789";
    write_secret(&token_file, bogus);
    let err = TransitKek::open(settings).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert!(!err.to_string().contains(bogus), "{err}");
    assert!(!format!("{err:?}").contains(bogus), "{err:?}");

    // The policy does not cover another key.
    let err = TransitKek::open({
        let mut other = bao.settings("other");
        other.auth = TransitAuth::Token(SecretSource::File(token_file.clone()));
        write_secret(&token_file, &new_token().await);
        other
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn approle_logs_in_and_logs_in_again_when_its_token_expires() {
    let bao = server().await;
    let files = bao.approle("vault", KEY).await.unwrap();
    // A second role reuses the AppRole mount.
    bao.approle("second", KEY).await.unwrap();
    // Tokens live two seconds, so the test sees one expire.
    bao.write(
        "auth/approle/role/vault",
        json!({"token_ttl": "2s", "token_max_ttl": "2s"}),
    )
    .await
    .unwrap();
    let secret_id = std::fs::read_to_string(&files.secret_id).unwrap();
    let secret_id = secret_id.trim();
    let mut settings = bao.settings(KEY);
    settings.auth = TransitAuth::AppRole {
        mount: "approle".to_owned(),
        role_id: SecretSource::File(files.role_id.clone()),
        secret_id: SecretSource::File(files.secret_id.clone()),
    };
    let kek = TransitKek::open(settings.clone()).await.unwrap();
    let debug = format!("{kek:?} {settings:?}");
    assert!(!debug.contains(secret_id), "{debug}");
    let dek = KeyMaterial::generate();
    let wrapping = kek.wrap(&dek_context(), &dek).await.unwrap();
    assert_eq!(wrapping.kek_id, "transit:transit/vault-kek:v1");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let back = kek
        .unwrap(&dek_context(), &wrapping.kek_id, &wrapping.wrapped)
        .await
        .unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret());
    kek.check().await.unwrap();

    // A wrong secret id is a login error that does not print it.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("secret-id");
    let wrong_secret = "00000000-dead-beef-0000-000000000000";
    write_secret(&wrong, wrong_secret);
    settings.auth = TransitAuth::AppRole {
        mount: "approle".to_owned(),
        role_id: SecretSource::File(files.role_id.clone()),
        secret_id: SecretSource::File(wrong),
    };
    let err = TransitKek::open(settings).await.unwrap_err();
    assert!(matches!(err, TransitError::Login { .. }), "{err}");
    assert!(!err.to_string().contains(wrong_secret), "{err}");
    assert!(!format!("{err:?}").contains(wrong_secret), "{err:?}");
}
