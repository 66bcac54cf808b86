//! Key administration: status, DEK rotation and re-encryption, KEK rewrap, and the
//! dual-controlled crypto-shred with its expiry.

use std::sync::Arc;

use super::*;
use crate::audit::AuditRecord;
use crate::clock::now;
use crate::keyring::{CacheLimits, KeyRing};
use crate::ports::{KeyPurpose, KeyStore, ShredRequest};
use crate::reason::Reason;
use crate::testing::FakeKek;

const WHY: &str = "quarterly rotation, change 7";

async fn dek_versions(world: &World, merchant: &str) -> Vec<(u32, u64)> {
    let merchant = MerchantId::parse("merchant_id", merchant).unwrap();
    world
        .store
        .key_versions(&merchant)
        .await
        .unwrap()
        .into_iter()
        .filter(|v| v.key.context.purpose == KeyPurpose::Dek)
        .map(|v| (v.key.context.version, v.tokens))
        .collect()
}

#[tokio::test]
async fn only_key_admins_administer_keys_and_every_call_is_recorded() {
    let world = World::new();
    world.tokenize(M1, &cards(1)[0]).await.unwrap();
    let status = world.vault.key_status(&ctx(ADMIN_A)).await.unwrap();
    assert_eq!(status.current_kek_id, "fake:kek-1");
    assert_eq!(status.keys_to_rewrap, 0);
    for caller in [GATEWAY, PAYMENTS, STRANGER] {
        let err = world.vault.key_status(&ctx(caller)).await.unwrap_err();
        assert!(
            matches!(err, VaultError::PermissionDenied { .. }),
            "{err:?}"
        );
        let err = world
            .vault
            .rotate_dek_now(&ctx(caller), M1, WHY)
            .await
            .unwrap_err();
        assert!(
            matches!(err, VaultError::PermissionDenied { .. }),
            "{err:?}"
        );
    }
    let records = world.records("keys.admin");
    assert_eq!(records.len(), 7);
    assert_eq!(records.iter().filter(|r| r.outcome == "denied").count(), 6);
    assert_eq!(dek_versions(&world, M1).await.len(), 1);
}

#[tokio::test]
async fn rotation_then_reencryption_moves_every_token_to_the_new_dek() {
    let world = World::new();
    let pans = cards(7);
    let mut tokens = Vec::new();
    for pan in &pans {
        tokens.push(world.tokenize(M1, pan).await.unwrap().token);
    }
    let version = world
        .vault
        .rotate_dek_now(&ctx(ADMIN_A), M1, WHY)
        .await
        .unwrap();
    assert_eq!(version, 2);
    // New cards go under the new version; old ones stay until re-encrypted.
    world.tokenize(M1, &cards(8)[7]).await.unwrap();
    assert_eq!(dek_versions(&world, M1).await, [(1, 7), (2, 1)]);

    let mut job = world
        .vault
        .start_reencrypt(&ctx(ADMIN_A), M1, WHY)
        .await
        .unwrap();
    let mut moved;
    loop {
        let progress = job.step().await.unwrap();
        moved = progress.done;
        assert_eq!(progress.failed, 0);
        if progress.finished {
            assert_eq!(progress.remaining, 0);
            break;
        }
    }
    assert_eq!(moved, 7);
    assert_eq!(dek_versions(&world, M1).await, [(1, 0), (2, 8)]);
    let cold = world.restarted();
    for (token, pan) in tokens.iter().zip(&pans) {
        let back = detokenize(&cold, PAYMENTS, M1, token.as_str())
            .await
            .unwrap();
        assert_eq!(back.pan.expose_digits(), pan);
    }
    // Rotation needs a reason, like every key change.
    let err = world
        .vault
        .rotate_dek_now(&ctx(ADMIN_A), M1, "")
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::InvalidArgument(_)), "{err:?}");
}

#[tokio::test]
async fn a_rewrap_moves_every_key_under_the_new_kek_and_the_old_one_can_go() {
    let world = World::new();
    let pans = cards(3);
    let mut tokens = Vec::new();
    for (pan, merchant) in pans.iter().zip([M1, M2, M1]) {
        tokens.push((merchant, world.tokenize(merchant, pan).await.unwrap().token));
    }
    let new_kek = FakeKek::new("fake:kek-2");
    let both = KeyRing::new(
        new_kek.clone(),
        vec![world.kek.clone()],
        CacheLimits::default(),
    );
    let vault = Vault::new(
        Arc::new(world.store.clone()),
        Arc::new(both),
        Arc::new(policy()),
    );
    let status = vault.key_status(&ctx(ADMIN_B)).await.unwrap();
    assert_eq!(
        status.keys_to_rewrap, 4,
        "two merchants, a DEK and a fingerprint key each"
    );
    let mut job = vault.start_rewrap(&ctx(ADMIN_B), WHY).await.unwrap();
    while !job.step().await.unwrap().finished {}
    let status = vault.key_status(&ctx(ADMIN_B)).await.unwrap();
    assert_eq!(status.keys_to_rewrap, 0);
    // Without the old KEK, every card still opens.
    let only_new = Vault::new(
        Arc::new(world.store.clone()),
        Arc::new(KeyRing::new(new_kek, vec![], CacheLimits::default())),
        Arc::new(policy()),
    );
    for (merchant, token) in &tokens {
        let allowed = if *merchant == M1 { PAYMENTS } else { continue };
        detokenize(&only_new, allowed, merchant, token.as_str())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_shred_needs_a_second_admin_and_destroys_every_key() {
    let world = World::new();
    let pan = &cards(1)[0];
    let token = world.tokenize(M1, pan).await.unwrap().token;
    let request = world
        .vault
        .request_shred(&ctx(ADMIN_A), M1, "merchant offboarded, ticket 9")
        .await
        .unwrap();
    // The requester cannot approve it; a second request cannot pile up.
    let err = world
        .vault
        .approve_shred(&ctx(ADMIN_A), M1, &request.request_id, WHY)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::FailedPrecondition(_)), "{err:?}");
    let err = world
        .vault
        .request_shred(&ctx(ADMIN_B), M1, WHY)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::FailedPrecondition(_)), "{err:?}");
    // Nothing changed yet.
    world
        .detokenize(PAYMENTS, M1, token.as_str())
        .await
        .unwrap();
    let err = world
        .vault
        .approve_shred(&ctx(ADMIN_B), M1, "not-the-request", WHY)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::FailedPrecondition(_)), "{err:?}");

    let destroyed = world
        .vault
        .approve_shred(&ctx(ADMIN_B), M1, &request.request_id, WHY)
        .await
        .unwrap();
    assert_eq!(destroyed, 2);
    // The card is gone for good, from every replica, and the merchant cannot come back.
    for vault in [&world.vault, &world.restarted()] {
        let err = detokenize(vault, PAYMENTS, M1, token.as_str())
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::KeyDestroyed), "{err:?}");
    }
    let err = world.tokenize(M1, pan).await.unwrap_err();
    assert!(matches!(err, VaultError::KeyDestroyed), "{err:?}");
    world.tokenize(M2, pan).await.unwrap();
    let admin = world.records("keys.admin");
    assert_eq!(
        admin.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
        [
            "success",
            "failed_precondition",
            "failed_precondition",
            "failed_precondition",
            "success"
        ]
    );
}

#[tokio::test]
async fn an_expired_shred_request_cannot_be_approved_and_may_be_made_again() {
    let world = World::new();
    world.tokenize(M1, &cards(1)[0]).await.unwrap();
    // A request made 25 hours ago, as the store would hold it.
    let merchant = MerchantId::parse("merchant_id", M1).unwrap();
    let old = ShredRequest {
        request_id: "req-old".into(),
        merchant,
        requested_by: CallerId::new(ADMIN_A),
        requested_at: now() - time::Duration::hours(25),
        reason: Reason::parse("reason", WHY).unwrap(),
    };
    let audit = AuditRecord::begin(&ctx(ADMIN_A), Operation::KeysAdmin);
    assert!(world.store.request_shred(&old, None, &audit).await.unwrap());
    let err = world
        .vault
        .approve_shred(&ctx(ADMIN_B), M1, "req-old", WHY)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the shred request expired; request it again"
    );
    assert_eq!(dek_versions(&world, M1).await.len(), 1);
    // A new request supersedes the expired one.
    let again = world
        .vault
        .request_shred(&ctx(ADMIN_B), M1, WHY)
        .await
        .unwrap();
    assert_ne!(again.request_id, "req-old");
    world
        .vault
        .approve_shred(&ctx(ADMIN_A), M1, &again.request_id, WHY)
        .await
        .unwrap();
    assert!(dek_versions(&world, M1).await.is_empty());
}

/// Replicas hold each merchant's key set in memory (`key_sets.rs`). A shred approved on one
/// replica stops another that holds the merchant's keys before the shred returns: its next
/// tokenize, of a known card or a new one, alone or in a batch, and its next detokenize.
#[tokio::test]
async fn a_shred_stops_a_replica_that_holds_the_merchants_keys() {
    let world = World::new();
    let replica = world.restarted();
    let pans = cards(4);
    let known = tokenize_on(&replica, &pans[0]).await.unwrap().token;
    // Warm: the replica holds M1's keys now.
    tokenize_on(&replica, &pans[1]).await.unwrap();

    let request = world
        .vault
        .request_shred(&ctx(ADMIN_A), M1, "merchant offboarded, ticket 9")
        .await
        .unwrap();
    world
        .vault
        .approve_shred(&ctx(ADMIN_B), M1, &request.request_id, WHY)
        .await
        .unwrap();

    for pan in [&pans[0], &pans[2]] {
        let err = tokenize_on(&replica, pan).await.unwrap_err();
        assert!(matches!(err, VaultError::KeyDestroyed), "{err:?}");
    }
    let batch = batch_command(M1, &[&pans[0], &pans[3]]);
    let err = replica
        .tokenize_batch(&ctx(GATEWAY), batch)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::KeyDestroyed), "{err:?}");
    let err = detokenize(&replica, PAYMENTS, M1, known.as_str())
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::KeyDestroyed), "{err:?}");
    // Nothing was stored after the shred: only the two cards tokenized before it.
    let merchant = MerchantId::parse("merchant_id", M1).unwrap();
    assert_eq!(
        world
            .store
            .count_tokens_under_older_dek(&merchant, 2)
            .await
            .unwrap(),
        2
    );
}

/// A rotation made on one replica reaches another that holds the merchant's keys within
/// `KEY_SET_MAX_AGE`; the version it sealed under meanwhile still opens.
#[tokio::test]
async fn a_rotation_reaches_a_replica_that_holds_the_keys_within_the_bound() {
    let world = World::new();
    let replica = world.restarted();
    let pans = cards(3);
    let before = tokenize_on(&replica, &pans[0]).await.unwrap().token;
    let version = world
        .vault
        .rotate_dek_now(&ctx(ADMIN_A), M1, WHY)
        .await
        .unwrap();
    assert_eq!(version, 2);
    // Perhaps still under version 1 (held), and it opens either way.
    let meanwhile = tokenize_on(&replica, &pans[1]).await.unwrap().token;
    tokio::time::sleep(crate::key_sets::KEY_SET_MAX_AGE).await;
    let after = tokenize_on(&replica, &pans[2]).await.unwrap().token;
    let merchant = MerchantId::parse("merchant_id", M1).unwrap();
    let version_of = |token: &crate::token::Token| {
        let (store, merchant, token) = (world.store.clone(), merchant.clone(), token.clone());
        async move {
            use crate::ports::TokenStore;
            store
                .token(&merchant, &token)
                .await
                .unwrap()
                .unwrap()
                .dek_version
        }
    };
    assert_eq!(version_of(&before).await, 1);
    assert_eq!(
        version_of(&after).await,
        2,
        "past the bound, the new version"
    );
    for token in [&before, &meanwhile, &after] {
        detokenize(&replica, PAYMENTS, M1, token.as_str())
            .await
            .unwrap();
    }
}

async fn tokenize_on(vault: &Vault, pan: &str) -> Result<Tokenized, VaultError> {
    vault
        .tokenize(&ctx(GATEWAY), tokenize_command(M1, pan))
        .await
}
