//! The store conformance suite: one set of behaviours every `TokenStore` backend must show.
//! Each check takes a fresh store and a way to count its audit rows; the runners at the bottom
//! call them for each backend: the in-memory test store (`vault_core::testing`), SQLite and
//! PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::future::Future;
use std::pin::Pin;

use vault_core::audit::AuditRecord;
use vault_core::clock::now;
use vault_core::ids::{CallContext, CallerId, MerchantId};
use vault_core::pan::Brand;
use vault_core::policy::Operation;
use vault_core::ports::{
    CardMetadata, ForwardInFlight, InsertOutcome, KeyContext, KeyPurpose, MerchantKeySet,
    ShredRequest, StoredDestination, Tallied, TallyRequest, TokenRecord, TokenStore,
    UseReservation, WrappedKey,
};
use vault_core::reason::Reason;
use vault_core::token::{Token, TokenFormat};
use vault_crypto::Sealed;

/// Counts the audit rows of the store under test.
type Count = Box<dyn Fn() -> Pin<Box<dyn Future<Output = i64> + Send>>>;

fn merchant(id: &str) -> MerchantId {
    MerchantId::parse("merchant_id", id).unwrap()
}

fn audit(request_id: &str) -> AuditRecord {
    AuditRecord::begin(
        &CallContext {
            caller: CallerId::new("spiffe://test/gateway"),
            peer: Some("127.0.0.1:1".into()),
            request_id: request_id.into(),
        },
        Operation::Tokenize,
    )
}

fn key(merchant_id: &str, purpose: KeyPurpose, bytes: u8) -> WrappedKey {
    WrappedKey {
        context: KeyContext {
            merchant: merchant(merchant_id),
            purpose,
            version: 1,
        },
        kek_id: "test-kek:1".into(),
        wrapped: vec![bytes; 61],
    }
}

/// A merchant's first keys; `bytes` and `bytes + 1` fill the wrapped DEK and fingerprint key.
fn key_set(merchant_id: &str, bytes: u8) -> MerchantKeySet {
    MerchantKeySet {
        dek: key(merchant_id, KeyPurpose::Dek, bytes),
        dek_created_at: now(),
        fingerprint: key(merchant_id, KeyPurpose::Fingerprint, bytes + 1),
    }
}

/// Gives each merchant its first keys (DEK version 1): a token is stored only under a DEK its
/// merchant holds.
async fn holding(store: &dyn TokenStore, merchants: &[&str]) {
    for (i, m) in merchants.iter().enumerate() {
        let bytes = 100 + 2 * u8::try_from(i).unwrap();
        store
            .create_merchant_keys(&key_set(m, bytes))
            .await
            .unwrap();
    }
}

/// A shred of `m` requested by `spiffe://test/admin-1`.
fn shred_request(m: &MerchantId, request_id: &str) -> ShredRequest {
    ShredRequest {
        request_id: request_id.into(),
        merchant: m.clone(),
        requested_by: CallerId::new("spiffe://test/admin-1"),
        requested_at: now(),
        reason: Reason::parse("reason", "merchant offboarded").unwrap(),
    }
}

fn version(mut key: WrappedKey, version: u32) -> WrappedKey {
    key.context.version = version;
    key
}

fn record(merchant_id: &str, token: &str, fingerprint: u8, format: TokenFormat) -> TokenRecord {
    TokenRecord {
        token: Token::parse("token", token).unwrap(),
        merchant: merchant(merchant_id),
        fingerprint: [fingerprint; 32],
        dek_version: 1,
        sealed: Sealed {
            nonce: [7; 12],
            ciphertext: vec![9; 32],
        },
        metadata: CardMetadata {
            brand: Brand::Visa,
            bin: "411111".into(),
            last4: "1111".into(),
            pan_length: 16,
            expiry: None,
            created_at: now(),
            format,
        },
    }
}

async fn first_keys_win(store: &dyn TokenStore) {
    let m = merchant("m1");
    assert_eq!(store.merchant_keys(&m).await.unwrap(), None);
    let first = key_set("m1", 1);
    let second = key_set("m1", 3);
    assert!(store.create_merchant_keys(&first).await.unwrap());
    assert!(!store.create_merchant_keys(&second).await.unwrap());
    assert_eq!(store.merchant_keys(&m).await.unwrap(), Some(first.clone()));
    assert_eq!(store.data_key(&m, 1).await.unwrap(), Some(first.dek));
    assert_eq!(store.data_key(&m, 2).await.unwrap(), None);
    assert_eq!(store.data_key(&merchant("m2"), 1).await.unwrap(), None);
}

async fn uniqueness_is_enforced(store: &dyn TokenStore, audit_rows: Count) {
    holding(store, &["m1", "m2"]).await;
    let a = record("m1", "tok_AAAAAAAAAAAAAAAAAAAAAA", 1, TokenFormat::Random);
    assert_eq!(
        store.insert_token(&a, &audit("r1")).await.unwrap(),
        InsertOutcome::Inserted
    );
    assert_eq!(audit_rows().await, 1);
    // The same token string for the same merchant is taken (another card that drew it).
    let same_token = record("m1", "tok_AAAAAAAAAAAAAAAAAAAAAA", 2, TokenFormat::Random);
    assert_eq!(
        store.insert_token(&same_token, &audit("r2")).await.unwrap(),
        InsertOutcome::TokenTaken
    );
    // The same card and format for the same merchant is taken.
    let same_card = record("m1", "tok_BBBBBBBBBBBBBBBBBBBBBB", 1, TokenFormat::Random);
    assert_eq!(
        store.insert_token(&same_card, &audit("r3")).await.unwrap(),
        InsertOutcome::FingerprintTaken
    );
    // A refused insert writes no audit record: token and audit commit together or not at all.
    assert_eq!(audit_rows().await, 1);
    // The same card in the other format, or for another merchant, is a new token.
    let shaped = record("m1", "4111110000001112", 1, TokenFormat::PanShaped);
    assert_eq!(
        store.insert_token(&shaped, &audit("r4")).await.unwrap(),
        InsertOutcome::Inserted
    );
    let other = record("m2", "tok_CCCCCCCCCCCCCCCCCCCCCC", 1, TokenFormat::Random);
    assert_eq!(
        store.insert_token(&other, &audit("r5")).await.unwrap(),
        InsertOutcome::Inserted
    );
    assert_eq!(audit_rows().await, 3);
}

/// Tokens are unique per merchant, not across the vault: a short PAN's PAN-shaped tokens are
/// few, and one merchant must not be able to take another's.
async fn tokens_are_unique_per_merchant(store: &dyn TokenStore, audit_rows: Count) {
    holding(store, &["m1", "m2"]).await;
    let shaped = "411111000000111";
    let mut m1 = record("m1", shaped, 1, TokenFormat::PanShaped);
    m1.sealed.ciphertext = vec![1; 32];
    let mut m2 = record("m2", shaped, 2, TokenFormat::PanShaped);
    m2.sealed.ciphertext = vec![2; 32];
    for (row, id) in [(&m1, "r1"), (&m2, "r2")] {
        assert_eq!(
            store.insert_token(row, &audit(id)).await.unwrap(),
            InsertOutcome::Inserted
        );
    }
    // Each merchant reads back its own row.
    assert_eq!(
        store.token(&m1.merchant, &m1.token).await.unwrap(),
        Some(m1.clone())
    );
    assert_eq!(
        store.token(&m2.merchant, &m2.token).await.unwrap(),
        Some(m2.clone())
    );
    assert_eq!(store.token(&merchant("m3"), &m1.token).await.unwrap(), None);

    // The same token for the same merchant, on another card, is taken.
    let again = record("m1", shaped, 3, TokenFormat::PanShaped);
    assert_eq!(
        store.insert_token(&again, &audit("r3")).await.unwrap(),
        InsertOutcome::TokenTaken
    );
    // m1's card tokenized again, drawing a token only m2 holds, is the card taken, not the
    // token: m2's row must not make m1 draw again instead of returning its own token.
    let m1_card = record("m1", "411111000000211", 1, TokenFormat::PanShaped);
    let m2_only = record("m2", "411111000000311", 4, TokenFormat::PanShaped);
    assert_eq!(
        store.insert_token(&m2_only, &audit("r4")).await.unwrap(),
        InsertOutcome::Inserted
    );
    let mut m1_card_again = m1_card.clone();
    m1_card_again.token = m2_only.token.clone();
    assert_eq!(
        store
            .insert_token(&m1_card_again, &audit("r5"))
            .await
            .unwrap(),
        InsertOutcome::FingerprintTaken
    );
    assert_eq!(audit_rows().await, 3);

    // Re-encrypting and deleting one merchant's token leaves the other's alone.
    let mut moved = m1.clone();
    moved.dek_version = 2;
    moved.sealed.ciphertext = vec![5; 32];
    assert!(store.reencrypt_token(&moved, 1).await.unwrap());
    assert_eq!(
        store.token(&m2.merchant, &m2.token).await.unwrap(),
        Some(m2.clone())
    );
    assert!(
        store
            .delete_token(&m1.merchant, &m1.token, &audit("r6"))
            .await
            .unwrap()
    );
    assert_eq!(store.token(&m1.merchant, &m1.token).await.unwrap(), None);
    assert_eq!(
        store.token(&m2.merchant, &m2.token).await.unwrap(),
        Some(m2)
    );
}

async fn tokens_read_back_scoped_to_their_merchant(store: &dyn TokenStore) {
    holding(store, &["m1", "m2"]).await;
    let a = record("m1", "tok_DDDDDDDDDDDDDDDDDDDDDD", 5, TokenFormat::Random);
    store.insert_token(&a, &audit("r1")).await.unwrap();
    assert_eq!(
        store.token(&a.merchant, &a.token).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.token(&merchant("m2"), &a.token).await.unwrap(), None);
    assert_eq!(
        store
            .token_by_fingerprint(&a.merchant, &[5; 32], TokenFormat::Random, 1)
            .await
            .unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store
            .token_by_fingerprint(&a.merchant, &[5; 32], TokenFormat::PanShaped, 1)
            .await
            .unwrap(),
        None
    );
}

/// A batch's lookup finds exactly the merchant's tokens of that format among many fingerprints,
/// across the statements it is split into.
async fn a_batch_of_fingerprints_is_looked_up_at_once(store: &dyn TokenStore) {
    holding(store, &["m1", "m2", "m3"]).await;
    let fingerprint = |i: u32| {
        let mut f = [0u8; 32];
        f[..4].copy_from_slice(&i.to_be_bytes());
        f
    };
    let mut stored = Vec::new();
    for i in (0..1200).step_by(100) {
        // Letters only: a run of digits in a token could read as a card number.
        let letters: String = i
            .to_string()
            .bytes()
            .map(|d| char::from(d - b'0' + b'a'))
            .collect();
        let mut row = record("m1", &format!("tok_{letters:A>22}"), 0, TokenFormat::Random);
        row.fingerprint = fingerprint(i);
        store.insert_token(&row, &audit("r1")).await.unwrap();
        stored.push(row);
    }
    // The same fingerprints under another merchant or format are not the batch's.
    let mut other_merchant = record("m2", "tok_MMMMMMMMMMMMMMMMMMMMMM", 0, TokenFormat::Random);
    other_merchant.fingerprint = fingerprint(700);
    store
        .insert_token(&other_merchant, &audit("r2"))
        .await
        .unwrap();
    let mut other_format = record("m1", "4111110000001112", 0, TokenFormat::PanShaped);
    other_format.fingerprint = fingerprint(800);
    store
        .insert_token(&other_format, &audit("r3"))
        .await
        .unwrap();

    let asked: Vec<_> = (0..1000).map(fingerprint).collect();
    let mut found = store
        .tokens_by_fingerprints(&merchant("m1"), &asked, TokenFormat::Random, 1)
        .await
        .unwrap();
    found.sort_by_key(|a| a.fingerprint);
    assert_eq!(found, stored[..10].to_vec());
    assert!(
        store
            .tokens_by_fingerprints(&merchant("m3"), &asked, TokenFormat::Random, 1)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A token is found, and stored, only while its merchant holds the DEK version the caller
/// names: how a replica working from keys held in memory learns of a shred made elsewhere.
async fn only_a_held_dek_finds_or_stores_a_token(store: &dyn TokenStore, audit_rows: Count) {
    holding(store, &["m1"]).await;
    let m = merchant("m1");
    let stored = record("m1", "tok_GGGGGGGGGGGGGGGGGGGGGG", 3, TokenFormat::Random);
    let mut unheld = record("m1", "tok_HHHHHHHHHHHHHHHHHHHHHH", 4, TokenFormat::Random);
    unheld.dek_version = 2;
    assert_eq!(
        store.insert_token(&unheld, &audit("r1")).await.unwrap(),
        InsertOutcome::KeyGone
    );
    assert_eq!(audit_rows().await, 0, "nothing stored, not even the record");
    assert_eq!(
        store.insert_token(&stored, &audit("r2")).await.unwrap(),
        InsertOutcome::Inserted
    );
    let find = |held| store.token_by_fingerprint(&m, &[3; 32], TokenFormat::Random, held);
    assert_eq!(find(1).await.unwrap(), Some(stored.clone()));
    assert_eq!(find(2).await.unwrap(), None, "version 2 is not held");
    let batch =
        |held| store.tokens_by_fingerprints(&m, &[[3; 32], [4; 32]], TokenFormat::Random, held);
    assert_eq!(batch(1).await.unwrap(), std::slice::from_ref(&stored));
    assert!(batch(2).await.unwrap().is_empty());

    // Shredded: the token is still there, but nothing finds it and nothing joins it.
    let request = shred_request(&m, "shred-1");
    assert!(
        store
            .request_shred(&request, None, &audit("r3"))
            .await
            .unwrap()
    );
    let approver = CallerId::new("spiffe://test/admin-2");
    assert!(
        store
            .execute_shred(&m, "shred-1", &approver, &audit("r4"))
            .await
            .unwrap()
            .is_some()
    );
    let before = audit_rows().await;
    assert_eq!(find(1).await.unwrap(), None);
    assert!(batch(1).await.unwrap().is_empty());
    let mut late = record("m1", "tok_JJJJJJJJJJJJJJJJJJJJJJ", 5, TokenFormat::Random);
    late.dek_version = 1;
    assert_eq!(
        store.insert_token(&late, &audit("r5")).await.unwrap(),
        InsertOutcome::KeyGone
    );
    assert_eq!(audit_rows().await, before);
    assert_eq!(store.token(&m, &late.token).await.unwrap(), None);
}

/// Detokenize's read: a token with the DEK version it names (not the newest), and no key once
/// the merchant's keys are destroyed.
async fn a_token_is_read_with_the_key_it_names(store: &dyn TokenStore) {
    let m = merchant("m1");
    let keys = key_set("m1", 1);
    store.create_merchant_keys(&keys).await.unwrap();
    let v2 = version(key("m1", KeyPurpose::Dek, 7), 2);
    assert!(store.add_data_key(&v2, None).await.unwrap());
    let stored = record("m1", "tok_KKKKKKKKKKKKKKKKKKKKKK", 3, TokenFormat::Random);
    store.insert_token(&stored, &audit("r1")).await.unwrap();
    assert_eq!(
        store.token_and_key(&m, &stored.token).await.unwrap(),
        Some((stored.clone(), Some(keys.dek)))
    );
    assert_eq!(
        store
            .token_and_key(&merchant("m2"), &stored.token)
            .await
            .unwrap(),
        None
    );
    store
        .request_shred(&shred_request(&m, "shred-1"), None, &audit("r2"))
        .await
        .unwrap();
    let approver = CallerId::new("spiffe://test/admin-2");
    store
        .execute_shred(&m, "shred-1", &approver, &audit("r3"))
        .await
        .unwrap();
    assert_eq!(
        store.token_and_key(&m, &stored.token).await.unwrap(),
        Some((stored, None))
    );
}

async fn delete_writes_audit_only_when_it_deletes(store: &dyn TokenStore, audit_rows: Count) {
    holding(store, &["m1", "m2"]).await;
    let a = record("m1", "tok_EEEEEEEEEEEEEEEEEEEEEE", 6, TokenFormat::Random);
    store.insert_token(&a, &audit("r1")).await.unwrap();
    assert!(
        !store
            .delete_token(&merchant("m2"), &a.token, &audit("r2"))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, 1);
    assert!(
        store
            .delete_token(&a.merchant, &a.token, &audit("r3"))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, 2);
    assert_eq!(store.token(&a.merchant, &a.token).await.unwrap(), None);
    store.append_audit(&audit("r4")).await.unwrap();
    assert_eq!(audit_rows().await, 3);
}

async fn dek_uses_are_reserved_up_to_the_cap(store: std::sync::Arc<dyn TokenStore>) {
    let m = merchant("m1");
    store.create_merchant_keys(&key_set("m1", 1)).await.unwrap();
    let reserve = |want| {
        let (store, m) = (store.clone(), m.clone());
        async move { store.reserve_dek_uses(&m, 1, want, 25).await.unwrap() }
    };
    let got = |granted, total| UseReservation { granted, total };
    assert_eq!(reserve(10).await, got(10, 10));
    assert_eq!(reserve(10).await, got(10, 20));
    assert_eq!(reserve(10).await, got(5, 25), "capped");
    assert_eq!(reserve(10).await, got(0, 25), "full");

    // Racing reservations never grant more than the cap in total.
    store
        .add_data_key(&version(key("m1", KeyPurpose::Dek, 2), 2), None)
        .await
        .unwrap();
    let racers = (0..8).map(|_| {
        let (store, m) = (store.clone(), m.clone());
        tokio::spawn(async move {
            let mut granted = 0;
            loop {
                let r = store.reserve_dek_uses(&m, 2, 3, 20).await.unwrap();
                if r.granted == 0 {
                    return granted;
                }
                granted += r.granted;
            }
        })
    });
    let mut total = 0;
    for racer in racers.collect::<Vec<_>>() {
        total += racer.await.unwrap();
    }
    assert_eq!(total, 20);
    let versions = store.key_versions(&m).await.unwrap();
    let uses: Vec<(KeyPurpose, u32, u64)> = versions
        .iter()
        .map(|v| (v.key.context.purpose, v.key.context.version, v.uses))
        .collect();
    assert_eq!(
        uses,
        [
            (KeyPurpose::Dek, 1, 25),
            (KeyPurpose::Dek, 2, 20),
            (KeyPurpose::Fingerprint, 1, 0)
        ]
    );
}

async fn rotation_adds_each_version_once(store: &dyn TokenStore, audit_rows: Count) {
    let m = merchant("m1");
    store.create_merchant_keys(&key_set("m1", 1)).await.unwrap();
    let v2 = version(key("m1", KeyPurpose::Dek, 7), 2);
    assert!(store.add_data_key(&v2, None).await.unwrap());
    assert!(
        !store
            .add_data_key(&version(key("m1", KeyPurpose::Dek, 8), 2), None)
            .await
            .unwrap()
    );
    let newest = store.merchant_keys(&m).await.unwrap().unwrap();
    assert_eq!(newest.dek, v2);
    assert_eq!(newest.fingerprint.context.version, 1);
    assert_eq!(
        store.data_key(&m, 1).await.unwrap().unwrap().wrapped,
        vec![1; 61]
    );

    store
        .insert_token(
            &record("m1", "tok_AAAAAAAAAAAAAAAAAAAAAA", 1, TokenFormat::Random),
            &audit("r1"),
        )
        .await
        .unwrap();
    let tokens: Vec<(u32, u64)> = store
        .key_versions(&m)
        .await
        .unwrap()
        .iter()
        .filter(|v| v.key.context.purpose == KeyPurpose::Dek)
        .map(|v| (v.key.context.version, v.tokens))
        .collect();
    assert_eq!(tokens, [(1, 1), (2, 0)]);

    // An admin's rotation commits its audit record with the key, even if it lost the race.
    let before = audit_rows().await;
    let v3 = version(key("m1", KeyPurpose::Dek, 9), 3);
    assert!(
        store
            .add_data_key(&v3, Some(&audit("rot-1")))
            .await
            .unwrap()
    );
    assert!(
        !store
            .add_data_key(&v3, Some(&audit("rot-2")))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, before + 2);
}

async fn reencryption_pages_and_compares_and_sets(store: &dyn TokenStore) {
    holding(store, &["m1", "m2"]).await;
    let m = merchant("m1");
    let names = [
        "tok_CCCCCCCCCCCCCCCCCCCCCC",
        "tok_AAAAAAAAAAAAAAAAAAAAAA",
        "tok_BBBBBBBBBBBBBBBBBBBBBB",
    ];
    for (i, name) in names.iter().enumerate() {
        let r = record("m1", name, u8::try_from(i).unwrap(), TokenFormat::Random);
        store
            .insert_token(&r, &audit(&format!("r{i}")))
            .await
            .unwrap();
    }
    store
        .insert_token(
            &record("m2", "tok_DDDDDDDDDDDDDDDDDDDDDD", 9, TokenFormat::Random),
            &audit("r9"),
        )
        .await
        .unwrap();
    assert_eq!(store.count_tokens_under_older_dek(&m, 2).await.unwrap(), 3);
    assert_eq!(store.count_tokens_under_older_dek(&m, 1).await.unwrap(), 0);
    let page = store.tokens_under_older_dek(&m, 2, "", 2).await.unwrap();
    let order: Vec<&str> = page.iter().map(|r| r.token.as_str()).collect();
    assert_eq!(order, [names[1], names[2]]);
    let rest = store
        .tokens_under_older_dek(&m, 2, page[1].token.as_str(), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);

    let mut moved = page[0].clone();
    moved.dek_version = 2;
    moved.sealed.ciphertext = vec![1; 32];
    assert!(store.reencrypt_token(&moved, 1).await.unwrap());
    assert!(
        !store.reencrypt_token(&moved, 1).await.unwrap(),
        "no longer under version 1"
    );
    assert_eq!(store.token(&m, &moved.token).await.unwrap(), Some(moved));
    assert_eq!(store.count_tokens_under_older_dek(&m, 2).await.unwrap(), 2);
}

async fn rewrap_pages_and_compares_and_sets(store: &dyn TokenStore) {
    for (i, m) in ["m1", "m2", "m3"].iter().enumerate() {
        let set = key_set(m, u8::try_from(i * 2).unwrap());
        store.create_merchant_keys(&set).await.unwrap();
    }
    assert_eq!(store.count_keys_not_under("new-kek:1").await.unwrap(), 6);
    assert_eq!(store.count_keys_not_under("test-kek:1").await.unwrap(), 0);
    let page = store.keys_not_under("new-kek:1", None, 4).await.unwrap();
    assert_eq!(page.len(), 4);
    let rest = store
        .keys_not_under("new-kek:1", Some(&page[3].context), 4)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[1].context.merchant.as_str(), "m3");

    let old = page[0].clone();
    let new = WrappedKey {
        kek_id: "new-kek:1".into(),
        wrapped: vec![0xee; 61],
        ..old.clone()
    };
    assert!(store.rewrap_key(&old, &new).await.unwrap());
    assert!(
        !store.rewrap_key(&old, &new).await.unwrap(),
        "already rewrapped"
    );
    assert_eq!(store.count_keys_not_under("new-kek:1").await.unwrap(), 5);
    let mut moved = new.clone();
    moved.context.version = 9;
    assert!(
        store.rewrap_key(&old, &moved).await.is_err(),
        "a rewrap keeps the context"
    );
}

async fn a_shred_needs_a_second_admin(store: &dyn TokenStore, audit_rows: Count) {
    let m = merchant("m1");
    store.create_merchant_keys(&key_set("m1", 1)).await.unwrap();
    store.create_merchant_keys(&key_set("m2", 3)).await.unwrap();
    let first_admin = CallerId::new("spiffe://test/admin-1");
    let request = shred_request(&m, "shred-1");
    assert!(
        store
            .request_shred(&request, None, &audit("r1"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.pending_shred(&m).await.unwrap(),
        Some(request.clone())
    );
    let again = ShredRequest {
        request_id: "shred-2".into(),
        ..request.clone()
    };
    assert!(
        !store
            .request_shred(&again, None, &audit("r2"))
            .await
            .unwrap(),
        "one pending"
    );
    assert_eq!(audit_rows().await, 1);

    // The requester cannot approve, nor can anyone approve another request id.
    assert_eq!(
        store
            .execute_shred(&m, "shred-1", &first_admin, &audit("r3"))
            .await
            .unwrap(),
        None
    );
    let second_admin = CallerId::new("spiffe://test/admin-2");
    assert_eq!(
        store
            .execute_shred(&m, "shred-9", &second_admin, &audit("r4"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(audit_rows().await, 1);
    assert!(store.merchant_keys(&m).await.unwrap().is_some());

    assert_eq!(
        store
            .execute_shred(&m, "shred-1", &second_admin, &audit("r5"))
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(audit_rows().await, 2);
    assert!(store.is_shredded(&m).await.unwrap());
    assert_eq!(store.merchant_keys(&m).await.unwrap(), None);
    assert_eq!(store.data_key(&m, 1).await.unwrap(), None);
    assert_eq!(store.pending_shred(&m).await.unwrap(), None);
    assert_eq!(
        store
            .reserve_dek_uses(&m, 1, 10, 100)
            .await
            .unwrap()
            .granted,
        0,
        "a destroyed DEK grants no use"
    );
    // No key is ever created for a shredded merchant again, by first use or by rotation.
    assert!(!store.create_merchant_keys(&key_set("m1", 5)).await.unwrap());
    assert!(
        !store
            .add_data_key(&version(key("m1", KeyPurpose::Dek, 5), 2), None)
            .await
            .unwrap()
    );
    assert_eq!(store.merchant_keys(&m).await.unwrap(), None);
    // Other merchants are untouched.
    assert!(!store.is_shredded(&merchant("m2")).await.unwrap());
    assert!(
        store
            .merchant_keys(&merchant("m2"))
            .await
            .unwrap()
            .is_some()
    );

    // An expired request is superseded by a new one.
    let m2 = merchant("m2");
    let old = ShredRequest {
        request_id: "shred-3".into(),
        merchant: m2.clone(),
        ..request.clone()
    };
    store.request_shred(&old, None, &audit("r6")).await.unwrap();
    let newer = ShredRequest {
        request_id: "shred-4".into(),
        ..old.clone()
    };
    assert!(
        store
            .request_shred(&newer, Some("shred-3"), &audit("r7"))
            .await
            .unwrap()
    );
    assert_eq!(store.pending_shred(&m2).await.unwrap(), Some(newer));
}

/// A shred racing a rotation (or a first use) on another replica: whichever commits first, no
/// key of the merchant survives the shred.
async fn a_shred_racing_a_rotation_leaves_no_key(store: &dyn TokenStore) {
    let second_admin = CallerId::new("spiffe://test/admin-2");
    for trial in 0..40 {
        let id = format!("race-{trial}");
        let m = merchant(&id);
        store.create_merchant_keys(&key_set(&id, 1)).await.unwrap();
        let request = shred_request(&m, &format!("shred-{trial}"));
        assert!(
            store
                .request_shred(&request, None, &audit(&format!("r-{trial}")))
                .await
                .unwrap()
        );
        let rotation = version(key(&id, KeyPurpose::Dek, 2), 2);
        let approval = audit(&format!("a-{trial}"));
        let (shred, _) = tokio::join!(
            store.execute_shred(&m, &request.request_id, &second_admin, &approval),
            store.add_data_key(&rotation, None),
        );
        assert_eq!(shred.unwrap().map(|n| n >= 2), Some(true));
        assert_eq!(
            store.merchant_keys(&m).await.unwrap(),
            None,
            "trial {trial}"
        );
        assert_eq!(store.data_key(&m, 2).await.unwrap(), None, "trial {trial}");
    }
}

/// The suite's tests for one backend. `$fresh` is an async fn returning a guard that keeps the
/// backend's database alive, the store, and its audit-row counter.
/// Every audit write joins the store's writer chain in commit order: seqs from 1 without gaps
/// (a refused insert leaves none), each record linked to its predecessor and hashing to its
/// stated hash, even when many writes race.
async fn audit_records_form_one_chain_per_writer(store: std::sync::Arc<dyn TokenStore>) {
    holding(store.as_ref(), &["m1"]).await;
    let mut tasks = Vec::new();
    for i in 0..40u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                store.append_audit(&audit(&format!("a{i}"))).await.unwrap();
            } else {
                // Half of these lose on the fingerprint and must leave no record and no gap.
                let token = format!(
                    "tok_{}{}{}",
                    "Q".repeat(20),
                    char::from(b'A' + i % 26),
                    char::from(b'a' + i / 26)
                );
                let r = record("m1", &token, i % 4, TokenFormat::Random);
                store
                    .insert_token(&r, &audit(&format!("t{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let writer = store.audit_writer().to_owned();
    let records = store
        .writer_records(&writer, 0, u64::MAX >> 1, 1000)
        .await
        .unwrap();
    assert!(records.len() >= 22, "{} records", records.len());
    let mut prev = vault_audit::GENESIS;
    for (i, entry) in records.iter().enumerate() {
        assert_eq!(entry.seq, i as u64 + 1);
        assert_eq!(entry.prev_hash, prev, "record {} does not link", entry.seq);
        assert_eq!(
            entry.compute_hash(),
            entry.hash,
            "record {} does not hash",
            entry.seq
        );
        assert_eq!(entry.origin, "127.0.0.1:1");
        assert!(!entry.resource.is_empty());
        prev = entry.hash;
    }
    let head = store.audit_head().await.unwrap();
    assert_eq!((head.seq, head.hash), (records.len() as u64, prev));
    // Paging by seq returns the same records.
    let tail = store.writer_records(&writer, 10, 15, 100).await.unwrap();
    assert_eq!(tail, records[10..15].to_vec());
}

/// A distinct well-formed random-format token: `tok_`, 18 times `fill`, then `n` in letters.
fn numbered_token(fill: char, n: usize) -> String {
    let letters: String = (0..4)
        .rev()
        .map(|place| char::from(b'A' + u8::try_from(n / 26usize.pow(place) % 26).unwrap()))
        .collect();
    format!("tok_{}{letters}", fill.to_string().repeat(18))
}

/// Racing writes (which the store may commit together) each get their own outcome: of the
/// inserts of one card exactly one wins and the rest see the fingerprint taken, of two cards
/// of one merchant drawing the same token one wins and the other sees the token taken, two
/// merchants drawing the same token both win, and exactly the winners' and the appends' audit
/// records are stored.
async fn racing_writes_each_get_their_own_outcome(
    store: std::sync::Arc<dyn TokenStore>,
    audit_rows: Count,
) {
    holding(store.as_ref(), &["m1", "m2", "m-0", "m-1"]).await;
    let mut tasks = Vec::new();
    // 60 cards, each tokenized three times at once under different tokens.
    for card in 0..60usize {
        for attempt in 0..3usize {
            let token = numbered_token('F', card * 3 + attempt);
            let r = record(
                "m1",
                &token,
                100 + u8::try_from(card).unwrap(),
                TokenFormat::Random,
            );
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = store.insert_token(&r, &audit(&token)).await.unwrap();
                (("card", card), outcome, r)
            }));
        }
    }
    // 20 pairs of different cards that drew the same token.
    for pair in 0..20usize {
        for side in 0..2usize {
            let token = numbered_token('T', pair);
            let card = 170 + u8::try_from(pair * 2 + side).unwrap();
            let r = record("m2", &token, card, TokenFormat::Random);
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = store.insert_token(&r, &audit(&token)).await.unwrap();
                (("token", pair), outcome, r)
            }));
        }
    }
    // 20 pairs of merchants that drew the same token (tokens are unique per merchant).
    for pair in 0..20usize {
        for side in 0..2usize {
            let token = numbered_token('M', pair);
            let card = 210 + u8::try_from(pair).unwrap();
            let r = record(&format!("m-{side}"), &token, card, TokenFormat::Random);
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = store.insert_token(&r, &audit(&token)).await.unwrap();
                (("merchants", pair), outcome, r)
            }));
        }
    }
    let appends: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append_audit(&audit(&format!("a{i}"))).await })
        })
        .collect();
    let mut outcomes = std::collections::BTreeMap::<_, Vec<InsertOutcome>>::new();
    let mut winners = Vec::new();
    for task in tasks {
        let (key, outcome, r) = task.await.unwrap();
        outcomes.entry(key).or_default().push(outcome);
        if outcome == InsertOutcome::Inserted {
            winners.push(r);
        }
    }
    for append in appends {
        append.await.unwrap().unwrap();
    }
    for ((kind, n), mut got) in outcomes {
        got.sort_by_key(|o| format!("{o:?}"));
        let want: &[InsertOutcome] = match kind {
            "card" => &[
                InsertOutcome::FingerprintTaken,
                InsertOutcome::FingerprintTaken,
                InsertOutcome::Inserted,
            ],
            "token" => &[InsertOutcome::Inserted, InsertOutcome::TokenTaken],
            _ => &[InsertOutcome::Inserted, InsertOutcome::Inserted],
        };
        assert_eq!(got, want, "{kind} {n}");
    }
    assert_eq!(winners.len(), 120);
    for r in &winners {
        assert_eq!(
            store.token(&r.merchant, &r.token).await.unwrap().as_ref(),
            Some(r)
        );
    }
    assert_eq!(audit_rows().await, 120 + 40);
}

fn checkpoint(cp_seq: u64, writer: &str, seq: u64, prev: [u8; 32]) -> vault_audit::Checkpoint {
    vault_audit::CheckpointDraft {
        cp_seq,
        kind: vault_audit::CheckpointKind::Interval,
        at: vault_audit::format_time(1_795_000_000_000_000 + cp_seq as i64).unwrap(),
        writer: writer.to_owned(),
        seq,
        head_hash: [seq as u8; 32],
        prev_hash: prev,
        replaces_key: None,
    }
    .sign(&[1; 32], |_| [cp_seq as u8; 64])
}

/// Checkpoints are a compare-and-set chain: a taken `cp_seq` is refused, and they read back
/// exactly as written (the signature covers every field).
async fn checkpoints_are_a_compare_and_set_chain(store: &dyn TokenStore) {
    assert_eq!(store.checkpoint_tip().await.unwrap(), None);
    let first = checkpoint(1, "w", 0, vault_audit::GENESIS);
    assert!(store.insert_checkpoint(&first).await.unwrap());
    assert!(
        !store
            .insert_checkpoint(&checkpoint(1, "x", 3, vault_audit::GENESIS))
            .await
            .unwrap()
    );
    let second = checkpoint(2, "w", 4, first.hash);
    assert!(store.insert_checkpoint(&second).await.unwrap());
    assert_eq!(
        store.checkpoint_tip().await.unwrap(),
        Some((2, second.hash))
    );
    assert_eq!(
        store.checkpoints(1, 9, 10).await.unwrap(),
        vec![first, second.clone()]
    );
    assert_eq!(store.checkpoints(2, 2, 10).await.unwrap(), vec![second]);
}

/// An export plan spans whole checkpoints, and each writer's records between the lowest and
/// highest head signed for it; a head no checkpoint signs is reported unsealed.
async fn export_plans_follow_the_signed_heads(store: &dyn TokenStore) {
    let writer = store.audit_writer().to_owned();
    let head = store.audit_head().await.unwrap();
    assert_eq!((head.seq, head.hash), (0, vault_audit::GENESIS));
    assert!(store.unsealed_heads().await.unwrap().is_empty());
    let start = checkpoint(1, &writer, 0, vault_audit::GENESIS);
    assert!(store.insert_checkpoint(&start).await.unwrap());
    for i in 0..5 {
        store.append_audit(&audit(&format!("r{i}"))).await.unwrap();
    }
    let unsealed = store.unsealed_heads().await.unwrap();
    assert_eq!(unsealed.len(), 1);
    assert_eq!(
        (unsealed[0].writer.as_str(), unsealed[0].seq),
        (writer.as_str(), 5)
    );
    assert!(
        store
            .insert_checkpoint(&checkpoint(2, &writer, 5, start.hash))
            .await
            .unwrap()
    );
    assert!(store.unsealed_heads().await.unwrap().is_empty());
    let plan = store.plan_export(None, None).await.unwrap();
    assert_eq!(plan.checkpoints, Some((1, 2)));
    assert_eq!(plan.writers, vec![(writer.clone(), 0, 5)]);
}

fn signed(
    cp_seq: u64,
    kind: vault_audit::CheckpointKind,
    at_secs: i64,
    head: &vault_core::ports::ChainHead,
    prev: [u8; 32],
) -> vault_audit::Checkpoint {
    vault_audit::CheckpointDraft {
        cp_seq,
        kind,
        at: vault_audit::format_time(at_secs * 1_000_000).unwrap(),
        writer: head.writer.clone(),
        seq: head.seq,
        head_hash: head.hash,
        prev_hash: prev,
        replaces_key: None,
    }
    .sign(&[1; 32], |_| [cp_seq as u8; 64])
}

/// A prune removes a prefix of the checkpoint chain and each writer's records up to the
/// newest head a removed checkpoint signs: only what was exported (up to the named
/// checkpoint) and older than the cutoff. It is all or nothing: a lost compare-and-set on its
/// checkpoints changes nothing. A writer that stopped is closed; the chain goes on after.
async fn prunes_remove_only_exported_old_records(store: &dyn TokenStore) {
    use vault_audit::CheckpointKind::{Export, Interval, Prune, Start, Stop};
    use vault_core::ports::{ChainHead, PruneCounts};
    let t0 = 1_790_000_000;
    let mut cps: Vec<vault_audit::Checkpoint> = Vec::new();
    let add = |kind, at, head: &ChainHead, cps: &mut Vec<vault_audit::Checkpoint>| {
        let prev = cps.last().map_or(vault_audit::GENESIS, |c| c.hash);
        let cp = signed(cps.len() as u64 + 1, kind, at, head, prev);
        cps.push(cp.clone());
        cp
    };
    let start = store.audit_head().await.unwrap();
    let cp = add(Start, t0, &start, &mut cps);
    assert!(store.insert_checkpoint(&cp).await.unwrap());
    for i in 0..3 {
        store.append_audit(&audit(&format!("p{i}"))).await.unwrap();
    }
    let head3 = store.audit_head().await.unwrap();
    let cp = add(Interval, t0 + 10, &head3, &mut cps);
    assert!(store.insert_checkpoint(&cp).await.unwrap());
    for i in 3..5 {
        store.append_audit(&audit(&format!("p{i}"))).await.unwrap();
    }
    let head5 = store.audit_head().await.unwrap();
    let cp = add(Interval, t0 + 20, &head5, &mut cps);
    assert!(store.insert_checkpoint(&cp).await.unwrap());
    // A writer that stopped with no records, and the export's checkpoint.
    let stopped = ChainHead {
        writer: "19700101T000000Z-00000000".to_owned(),
        seq: 0,
        hash: vault_audit::GENESIS,
    };
    let cp = add(Stop, t0 + 30, &stopped, &mut cps);
    assert!(store.insert_checkpoint(&cp).await.unwrap());
    let cp = add(Export, t0 + 40, &head5, &mut cps);
    assert!(store.insert_checkpoint(&cp).await.unwrap());
    let writer = store.audit_writer().to_owned();

    // Nothing exported, or nothing old enough: nothing to do.
    assert_eq!(store.plan_prune(0, now()).await.unwrap(), None);
    let early = time::OffsetDateTime::from_unix_timestamp(t0).unwrap();
    assert_eq!(store.plan_prune(5, early).await.unwrap(), None);

    // Only checkpoints older than the cutoff go: through #2, the writer cut at 3, kept from 5.
    let cutoff = time::OffsetDateTime::from_unix_timestamp(t0 + 15).unwrap();
    let plan = store.plan_prune(5, cutoff).await.unwrap().unwrap();
    assert_eq!(plan.through, 2);
    assert_eq!(plan.writers.len(), 1);
    let cut = &plan.writers[0];
    assert_eq!(
        (
            cut.writer.as_str(),
            cut.cut,
            cut.cut_hash,
            cut.kept_low,
            cut.finished
        ),
        (writer.as_str(), 3, head3.hash, Some(5), false)
    );
    // Only what was exported goes: named checkpoint #1, the cut is the start (nothing).
    let plan1 = store.plan_prune(1, now()).await.unwrap().unwrap();
    assert_eq!((plan1.through, plan1.writers[0].cut), (1, 0));

    // A lost compare-and-set (cp_seq 5 is taken) changes nothing.
    let anchor = ChainHead {
        writer: writer.clone(),
        seq: 3,
        hash: head3.hash,
    };
    let stale = signed(5, Prune, t0 + 50, &anchor, cps[3].hash);
    let lost = store
        .prune_audit(&plan, &[stale], &audit("prune-lost"))
        .await
        .unwrap();
    assert_eq!(lost, None);
    assert_eq!(
        store
            .writer_records(&writer, 0, 99, 99)
            .await
            .unwrap()
            .len(),
        5
    );
    assert_eq!(store.checkpoints(1, 99, 99).await.unwrap().len(), 5);

    let anchor_cp = add(Prune, t0 + 50, &anchor, &mut cps);
    let removed = store
        .prune_audit(&plan, std::slice::from_ref(&anchor_cp), &audit("prune-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        removed,
        PruneCounts {
            records: 3,
            checkpoints: 2,
            writers_closed: 0
        }
    );
    let left = store.writer_records(&writer, 0, 99, 99).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6],
        "records after the cut stay, and the prune's record follows them"
    );
    assert_eq!(left[2].prev_hash, head5.hash);
    assert_eq!(left[2].request_id, "prune-1");
    let kept = store.checkpoints(1, 99, 99).await.unwrap();
    assert_eq!(kept.first().map(|c| c.cp_seq), Some(3));
    assert_eq!(kept.last(), Some(&anchor_cp));
    // The remainder's export starts at the prune checkpoint's cut.
    let remainder = store.plan_export(None, None).await.unwrap();
    assert_eq!(remainder.checkpoints, Some((3, 6)));
    assert!(remainder.writers.contains(&(writer.clone(), 3, 5)));

    // A later prune whose cutoff keeps the first prune's checkpoint: the live writer's cut
    // stays at that checkpoint's anchor (3), though removed checkpoints sign 5; nothing of it
    // goes and it needs no new checkpoint. The stopped writer is closed.
    let between = time::OffsetDateTime::from_unix_timestamp(t0 + 45).unwrap();
    let plan = store.plan_prune(6, between).await.unwrap().unwrap();
    assert_eq!(plan.through, 5);
    let cuts: Vec<(&str, u64, Option<u64>, bool)> = plan
        .writers
        .iter()
        .map(|c| (c.writer.as_str(), c.cut, c.kept_low, c.finished))
        .collect();
    assert_eq!(
        cuts,
        vec![
            (stopped.writer.as_str(), 0, None, true),
            (writer.as_str(), 3, Some(3), false)
        ]
    );
    let removed = store
        .prune_audit(&plan, &[], &audit("prune-2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((removed.records, removed.checkpoints), (0, 3));
    let left = store.writer_records(&writer, 0, 99, 99).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    let remainder = store.plan_export(None, None).await.unwrap();
    assert_eq!(remainder.checkpoints, Some((6, 6)));

    // A plan the trail no longer gives (made before that prune) changes nothing.
    let stale = store
        .prune_audit(&plan, &[], &audit("prune-stale"))
        .await
        .unwrap();
    assert_eq!(stale, None);

    // Everything exported goes; the live writer is anchored at its new head.
    let head7 = store.audit_head().await.unwrap();
    assert_eq!(head7.seq, 7);
    let cp = add(Export, t0 + 70, &head7, &mut cps);
    assert!(store.insert_checkpoint(&cp).await.unwrap());
    let plan = store.plan_prune(7, now()).await.unwrap().unwrap();
    assert_eq!(plan.through, 7);
    let cut = &plan.writers[0];
    assert_eq!((cut.cut, cut.kept_low, cut.finished), (7, None, false));
    let anchor_cp = add(Prune, t0 + 80, &head7, &mut cps);
    let removed = store
        .prune_audit(&plan, &[anchor_cp], &audit("prune-3"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((removed.records, removed.checkpoints), (4, 2));
    let left = store.writer_records(&writer, 0, 99, 99).await.unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![8]);
    assert_eq!(store.checkpoints(1, 99, 99).await.unwrap().len(), 1);
    // The head survives the prune: a store that forgot it reads it back.
    assert_eq!(store.audit_head().await.unwrap().seq, 8);
}

/// Audit reads filter by merchant, caller, event, outcome and time, and page by a cursor.
async fn audit_reads_filter_and_page(store: &dyn TokenStore) {
    for i in 0..30u32 {
        let mut record = audit(&format!("q{i}"));
        record.merchant = Some(merchant(if i % 3 == 0 { "m-a" } else { "m-b" }));
        if i % 5 == 0 {
            record.outcome = vault_core::audit::Outcome::Denied;
        }
        store.append_audit(&record).await.unwrap();
    }
    let query = |merchant_id: Option<&str>, outcome: Option<&str>| vault_core::ports::AuditQuery {
        merchant: merchant_id.map(merchant),
        outcome: outcome.map(str::to_owned),
        ..Default::default()
    };
    assert_eq!(
        store
            .find_audit(&query(Some("m-a"), None), None, 100)
            .await
            .unwrap()
            .len(),
        10
    );
    assert_eq!(
        store
            .find_audit(&query(None, Some("denied")), None, 100)
            .await
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        store
            .find_audit(&query(Some("m-a"), Some("denied")), None, 100)
            .await
            .unwrap()
            .len(),
        2
    );
    // Paging: three pages of 12, 12 and 6, together every record once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .find_audit(&query(None, None), cursor.as_ref(), 12)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(vault_core::ports::AuditCursor {
            at_micros: vault_audit::parse_time(&last.at).unwrap(),
            writer: last.writer.clone(),
            seq: last.seq,
        });
        seen.extend(page.into_iter().map(|e| e.request_id));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30);
    let later = vault_core::ports::AuditQuery {
        from: Some(now() + time::Duration::hours(1)),
        ..Default::default()
    };
    assert!(store.find_audit(&later, None, 10).await.unwrap().is_empty());
}

fn tally(subject: &str, window_end: i64, items: &[&str], limit: u64, trip: bool) -> TallyRequest {
    TallyRequest {
        scope: "test.scope",
        subject: subject.to_owned(),
        window_end,
        items: items.iter().map(|i| i.as_bytes().to_vec()).collect(),
        limit,
        trip,
    }
}

fn counts(tallies: &[Tallied]) -> Vec<(u64, bool)> {
    tallies.iter().map(|t| (t.count, t.new)).collect()
}

/// The abuse tallies (enumeration guard, new-merchant cap): distinct items counted up to a
/// limit, per subject and window; nothing stored past the limit; a trip spends the tally;
/// ended windows are purged.
async fn tallies_count_distinct_items_up_to_their_limit(store: &dyn TokenStore) {
    let w = 1_000_000;
    let got = store
        .tally(&[tally("a", w, &["x", "y", "x", "z"], 2, false)])
        .await
        .unwrap();
    // The third distinct item passes the limit: it is counted (3), and the tally is spent.
    assert_eq!(
        counts(&got[0]),
        [(1, true), (2, true), (2, false), (3, true)]
    );
    let got = store
        .tally(&[tally("a", w, &["x", "new"], 2, false)])
        .await
        .unwrap();
    // Past the limit nothing is added: a seen item and a new one read the same count.
    assert_eq!(counts(&got[0]), [(3, false), (3, false)]);
    // Other subjects, other windows, other scopes have their own tallies; one call holds many.
    let mut other_scope = tally("a", w, &["x"], 2, false);
    other_scope.scope = "test.other";
    let got = store
        .tally(&[
            tally("b", w, &["x"], 2, false),
            tally("a", w + 60, &["x"], 2, false),
            other_scope,
        ])
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|t| counts(t) == [(1, true)]));
    // An item seen before is not counted again, first or not, in another call.
    let got = store
        .tally(&[tally("d", w, &["p", "q"], 5, false)])
        .await
        .unwrap();
    assert_eq!(counts(&got[0]), [(1, true), (2, true)]);
    let got = store
        .tally(&[tally("d", w, &["q", "p", "r"], 5, false)])
        .await
        .unwrap();
    assert_eq!(counts(&got[0]), [(2, false), (2, false), (3, true)]);
    // A trip spends the tally at once.
    let got = store
        .tally(&[tally("c", w, &["p", "q"], 5, true)])
        .await
        .unwrap();
    assert_eq!(counts(&got[0]), [(1, true), (2, true)]);
    let got = store
        .tally(&[tally("c", w, &["p"], 5, false)])
        .await
        .unwrap();
    assert_eq!(counts(&got[0]), [(6, false)]);
    // Purging the ended window forgets its tallies (not the later window's).
    assert_eq!(store.purge_tallies(w).await.unwrap(), 5);
    let got = store
        .tally(&[tally("a", w, &["x"], 2, false)])
        .await
        .unwrap();
    assert_eq!(counts(&got[0]), [(1, true)]);
    let got = store
        .tally(&[tally("a", w + 60, &["x"], 2, false)])
        .await
        .unwrap();
    assert_eq!(counts(&got[0]), [(1, false)]);
    // A purge of more tallies than one page takes (1,000 per transaction) takes them all.
    let many: Vec<TallyRequest> = (0..1_100)
        .map(|i| tally(&format!("s{i}"), w + 120, &["x"], 2, false))
        .collect();
    store.tally(&many).await.unwrap();
    assert_eq!(store.purge_tallies(w + 120).await.unwrap(), 1_102);
    let got = store
        .tally(&[tally("s7", w + 120, &["x"], 2, false)])
        .await
        .unwrap();
    assert_eq!(counts(&got[0]), [(1, true)]);
}

/// Racing tallies of one subject (distinct items, one at a time) never let more than `limit`
/// items in: each new item gets its own count.
async fn racing_tallies_admit_at_most_the_limit(store: std::sync::Arc<dyn TokenStore>) {
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let item = format!("card-{i}");
                let got = store
                    .tally(&[tally("race", 2_000_000, &[item.as_str()], 10, false)])
                    .await
                    .unwrap();
                got[0][0]
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    let admitted = seen.iter().filter(|t| t.count <= 10).count();
    assert_eq!(admitted, 10, "{seen:?}");
    let mut new_counts: Vec<u64> = seen.iter().filter(|t| t.new).map(|t| t.count).collect();
    new_counts.sort_unstable();
    new_counts.dedup();
    assert_eq!(new_counts.len(), seen.iter().filter(|t| t.new).count());
}

/// Racing tallies that bring the same items again and again (retries, a card sent twice at
/// once), spread over `stores` (replicas of one database): whatever the interleaving, the
/// distinct items ever answered within the limit are at most the limit.
async fn racing_repeated_items_admit_at_most_the_limit(
    stores: Vec<std::sync::Arc<dyn TokenStore>>,
) {
    let limit = 6;
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                // Two of 16 items per request, so most items arrive many times.
                let items = [
                    format!("card-{}", i % 16),
                    format!("card-{}", (i * 7 + 3) % 16),
                ];
                let refs: Vec<&str> = items.iter().map(String::as_str).collect();
                let got = store
                    .tally(&[tally("repeat", 3_000_000, &refs, limit, false)])
                    .await
                    .unwrap();
                items.into_iter().zip(got[0].clone()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut admitted = std::collections::HashSet::new();
    for task in tasks {
        for (item, tallied) in task.await.unwrap() {
            if tallied.count <= limit {
                admitted.insert(item);
            }
        }
    }
    assert!(!admitted.is_empty());
    assert!(
        admitted.len() <= 6,
        "{} items admitted: {admitted:?}",
        admitted.len()
    );
}

const PROPOSER: &str = "spiffe://test/admin-1";
const APPROVER: &str = "spiffe://test/admin-2";

/// Version `id` of destination `name`, proposed by [`PROPOSER`] at `proposed_at`.
fn destination(id: &str, name: &str, proposed_at: time::OffsetDateTime) -> StoredDestination {
    StoredDestination {
        id: id.into(),
        name: name.into(),
        spec_json: format!(r#"{{"name":"{name}","base_url":"https://{id}.example"}}"#),
        fingerprint: format!("sha256:{}", "ab".repeat(32)),
        proposed_by: PROPOSER.into(),
        proposed_at,
        approved_by: None,
        approved_at: None,
        approval_seal: None,
        revoked_by: None,
        revoked_at: None,
    }
}

fn approved(
    mut version: StoredDestination,
    by: &str,
    at: time::OffsetDateTime,
) -> StoredDestination {
    version.approved_by = Some(by.into());
    version.approved_at = Some(at);
    version.approval_seal = Some(b"seal".to_vec());
    version
}

fn revoked(
    mut version: StoredDestination,
    by: &str,
    at: time::OffsetDateTime,
) -> StoredDestination {
    version.revoked_by = Some(by.into());
    version.revoked_at = Some(at);
    version
}

/// Proposed versions read back exactly as stored, by id and by name, oldest first; a proposal
/// is not in force.
async fn destinations_proposed_read_back_oldest_first(store: &dyn TokenStore, audit_rows: Count) {
    let t0 = now();
    let second = time::Duration::seconds(1);
    // Proposed out of order: listed by when they were proposed.
    let acme_2 = destination("v-acme-2", "acme", t0 + second);
    let acme_1 = destination("v-acme-1", "acme", t0);
    let other = destination("v-other-1", "other", t0 + second * 2);
    for (version, id) in [(&acme_2, "r1"), (&acme_1, "r2"), (&other, "r3")] {
        store
            .propose_destination(version, &audit(id))
            .await
            .unwrap();
    }
    assert_eq!(audit_rows().await, 3, "one record per proposal");
    assert_eq!(
        store.destination_versions(None).await.unwrap(),
        vec![acme_1.clone(), acme_2.clone(), other.clone()]
    );
    assert_eq!(
        store.destination_versions(Some("acme")).await.unwrap(),
        vec![acme_1.clone(), acme_2.clone()]
    );
    assert_eq!(
        store.destination_versions(Some("nobody")).await.unwrap(),
        Vec::new()
    );
    assert_eq!(
        store.destination_version("v-acme-2").await.unwrap(),
        Some(acme_2)
    );
    assert_eq!(store.destination_version("v-none").await.unwrap(), None);
    assert_eq!(store.approved_destination("acme").await.unwrap(), None);
    // A version id is proposed once.
    assert!(
        store
            .propose_destination(&destination("v-acme-1", "acme", t0), &audit("r4"))
            .await
            .is_err()
    );
    assert_eq!(audit_rows().await, 3, "a refused proposal writes no record");
}

/// Dual control: the proposer cannot approve; another admin approves once; a second approval,
/// or one of an unknown version, changes nothing and writes no record.
async fn destination_approval_needs_a_second_admin(store: &dyn TokenStore, audit_rows: Count) {
    let t0 = now();
    let at = t0 + time::Duration::seconds(5);
    let proposed = destination("v-1", "acme", t0);
    store
        .propose_destination(&proposed, &audit("r1"))
        .await
        .unwrap();
    assert!(
        !store
            .approve_destination("v-1", PROPOSER, at, b"seal", &audit("r2"))
            .await
            .unwrap(),
        "the proposer cannot approve"
    );
    assert_eq!(
        store.destination_version("v-1").await.unwrap(),
        Some(proposed.clone())
    );
    assert!(
        !store
            .approve_destination("v-9", APPROVER, at, b"seal", &audit("r3"))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, 1);
    assert_eq!(store.approved_destination("acme").await.unwrap(), None);

    assert!(
        store
            .approve_destination("v-1", APPROVER, at, b"seal", &audit("r4"))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, 2);
    let in_force = approved(proposed, APPROVER, at);
    assert_eq!(
        store.destination_version("v-1").await.unwrap(),
        Some(in_force.clone())
    );
    assert_eq!(
        store.approved_destination("acme").await.unwrap(),
        Some(in_force.clone())
    );
    // Approved once: a second approval (by anyone) changes nothing.
    let later = at + time::Duration::seconds(1);
    assert!(
        !store
            .approve_destination("v-1", "spiffe://test/admin-3", later, b"seal", &audit("r5"))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, 2);
    assert_eq!(
        store.destination_version("v-1").await.unwrap(),
        Some(in_force)
    );
}

/// The version in force is the one approved last of those not revoked; a revocation takes
/// every version of the name out of force at once, and a revoked version cannot be approved.
async fn destination_in_force_is_the_latest_approved_unrevoked(
    store: &dyn TokenStore,
    audit_rows: Count,
) {
    let t0 = now();
    let s = time::Duration::seconds(1);
    let v1 = destination("v-1", "acme", t0);
    store.propose_destination(&v1, &audit("r1")).await.unwrap();
    assert!(
        store
            .approve_destination("v-1", APPROVER, t0 + s, b"seal", &audit("r2"))
            .await
            .unwrap()
    );
    let v1 = approved(v1, APPROVER, t0 + s);
    assert_eq!(
        store.approved_destination("acme").await.unwrap(),
        Some(v1.clone())
    );
    // A new proposal leaves the approved version in force until it is approved itself.
    let v2 = destination("v-2", "acme", t0 + s * 2);
    store.propose_destination(&v2, &audit("r3")).await.unwrap();
    assert_eq!(
        store.approved_destination("acme").await.unwrap(),
        Some(v1.clone())
    );
    assert!(
        store
            .approve_destination("v-2", APPROVER, t0 + s * 3, b"seal", &audit("r4"))
            .await
            .unwrap()
    );
    let v2 = approved(v2, APPROVER, t0 + s * 3);
    assert_eq!(
        store.approved_destination("acme").await.unwrap(),
        Some(v2.clone())
    );
    // Another name is not affected by any of it.
    let other = destination("v-other", "other", t0);
    store
        .propose_destination(&other, &audit("r5"))
        .await
        .unwrap();
    assert!(
        store
            .approve_destination("v-other", APPROVER, t0 + s, b"seal", &audit("r6"))
            .await
            .unwrap()
    );
    let other = approved(other, APPROVER, t0 + s);
    // A pending proposal goes with the revocation too.
    let v3 = destination("v-3", "acme", t0 + s * 4);
    store.propose_destination(&v3, &audit("r7")).await.unwrap();
    assert_eq!(audit_rows().await, 7);

    let revoker = "spiffe://test/admin-3";
    let at = t0 + s * 5;
    assert_eq!(
        store
            .revoke_destination("acme", revoker, at, &audit("r8"))
            .await
            .unwrap(),
        3
    );
    assert_eq!(audit_rows().await, 8, "one record for the whole revocation");
    assert_eq!(store.approved_destination("acme").await.unwrap(), None);
    assert_eq!(
        store.destination_versions(Some("acme")).await.unwrap(),
        vec![
            revoked(v1, revoker, at),
            revoked(v2, revoker, at),
            revoked(v3, revoker, at),
        ]
    );
    assert_eq!(
        store.approved_destination("other").await.unwrap(),
        Some(other)
    );
    assert!(
        !store
            .approve_destination("v-3", APPROVER, at + s, b"seal", &audit("r9"))
            .await
            .unwrap(),
        "a revoked version cannot be approved"
    );
    assert_eq!(audit_rows().await, 8);

    // A new version after a revocation is a fresh start; of two approved at the same time, the
    // greater id is in force (the order is total).
    let v4 = destination("v-4", "acme", at + s);
    let v5 = destination("v-5", "acme", at + s);
    store.propose_destination(&v5, &audit("r10")).await.unwrap();
    store.propose_destination(&v4, &audit("r11")).await.unwrap();
    for (id, record) in [("v-5", "r12"), ("v-4", "r13")] {
        assert!(
            store
                .approve_destination(id, APPROVER, at + s * 2, b"seal", &audit(record))
                .await
                .unwrap()
        );
    }
    assert_eq!(
        store.approved_destination("acme").await.unwrap(),
        Some(approved(v5, APPROVER, at + s * 2))
    );
    assert_eq!(audit_rows().await, 12);
}

/// A revocation that finds nothing to revoke (an unknown name, or one revoked already) answers
/// 0 and writes no record.
async fn destination_revocation_of_nothing_writes_nothing(
    store: &dyn TokenStore,
    audit_rows: Count,
) {
    let t0 = now();
    let at = t0 + time::Duration::seconds(1);
    assert_eq!(
        store
            .revoke_destination("nobody", APPROVER, at, &audit("r1"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(audit_rows().await, 0);
    store
        .propose_destination(&destination("v-1", "acme", t0), &audit("r2"))
        .await
        .unwrap();
    assert_eq!(
        store
            .revoke_destination("acme", APPROVER, at, &audit("r3"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(audit_rows().await, 2);
    assert_eq!(
        store
            .revoke_destination("acme", PROPOSER, at, &audit("r4"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(audit_rows().await, 2);
    // The first revocation stands.
    assert_eq!(
        store.destination_version("v-1").await.unwrap(),
        Some(revoked(destination("v-1", "acme", t0), APPROVER, at))
    );
}

fn in_flight(request_id: &str, begun_at: time::OffsetDateTime, timeout_ms: i64) -> ForwardInFlight {
    ForwardInFlight {
        request_id: request_id.into(),
        caller: "spiffe://test/payments".into(),
        merchant_id: "m1".into(),
        token: "tok_AAAAAAAAAAAAAAAAAAAAAA".into(),
        destination: "acme".into(),
        fingerprint: format!("sha256:{}", "cd".repeat(32)),
        begun_at,
        deadline_at: begun_at + time::Duration::milliseconds(timeout_ms),
    }
}

/// A forward is in flight from its first record's transaction to its second's: listed once
/// its deadline is before the time asked, by deadline; finished once (a second finish, another
/// replica's, writes nothing).
async fn forwards_in_flight_are_marked_until_finished(store: &dyn TokenStore, audit_rows: Count) {
    let t0 = now();
    let s = time::Duration::seconds(1);
    let slow = in_flight("req-slow", t0, 30_000);
    let fast = in_flight("req-fast", t0 + s, 2_000);
    store
        .begin_forward(&slow, &audit("req-slow"))
        .await
        .unwrap();
    store
        .begin_forward(&fast, &audit("req-fast"))
        .await
        .unwrap();
    assert_eq!(audit_rows().await, 2);
    assert_eq!(store.forwards_in_flight(t0).await.unwrap(), Vec::new());
    assert_eq!(
        store.forwards_in_flight(t0 - s).await.unwrap(),
        Vec::new(),
        "nothing before the begin"
    );
    // Strictly before: a deadline equal to the time asked is not yet due.
    assert_eq!(
        store.forwards_in_flight(fast.deadline_at).await.unwrap(),
        Vec::new()
    );
    assert_eq!(
        store
            .forwards_in_flight(fast.deadline_at + s)
            .await
            .unwrap(),
        vec![fast.clone()]
    );
    assert_eq!(
        store
            .forwards_in_flight(slow.deadline_at + s)
            .await
            .unwrap(),
        vec![fast.clone(), slow.clone()],
        "by deadline, not by begin"
    );
    // A request id is in flight once.
    assert!(
        store
            .begin_forward(&in_flight("req-fast", t0, 1_000), &audit("req-fast"))
            .await
            .is_err()
    );
    assert_eq!(audit_rows().await, 2);

    assert!(
        store
            .finish_forward("req-fast", &audit("req-fast"))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, 3);
    assert!(
        !store
            .finish_forward("req-fast", &audit("req-fast"))
            .await
            .unwrap(),
        "finished already"
    );
    assert!(
        !store
            .finish_forward("req-none", &audit("req-none"))
            .await
            .unwrap()
    );
    assert_eq!(
        audit_rows().await,
        3,
        "a finish that finds nothing writes nothing"
    );
    assert_eq!(
        store
            .forwards_in_flight(slow.deadline_at + s)
            .await
            .unwrap(),
        vec![slow]
    );
}

macro_rules! conformance_suite {
    ($fresh:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn racing_repeated_items_admit_at_most_the_limit() {
            let (_guard, store, _) = $fresh().await;
            super::racing_repeated_items_admit_at_most_the_limit(vec![std::sync::Arc::new(store)])
                .await;
        }

        #[tokio::test]
        async fn audit_records_form_one_chain_per_writer() {
            let (_guard, store, _) = $fresh().await;
            super::audit_records_form_one_chain_per_writer(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn a_batch_of_fingerprints_is_looked_up_at_once() {
            let (_guard, store, _) = $fresh().await;
            super::a_batch_of_fingerprints_is_looked_up_at_once(&store).await;
        }

        #[tokio::test]
        async fn checkpoints_are_a_compare_and_set_chain() {
            let (_guard, store, _) = $fresh().await;
            super::checkpoints_are_a_compare_and_set_chain(&store).await;
        }

        #[tokio::test]
        async fn export_plans_follow_the_signed_heads() {
            let (_guard, store, _) = $fresh().await;
            super::export_plans_follow_the_signed_heads(&store).await;
        }

        #[tokio::test]
        async fn prunes_remove_only_exported_old_records() {
            let (_guard, store, _) = $fresh().await;
            super::prunes_remove_only_exported_old_records(&store).await;
        }

        #[tokio::test]
        async fn audit_reads_filter_and_page() {
            let (_guard, store, _) = $fresh().await;
            super::audit_reads_filter_and_page(&store).await;
        }

        #[tokio::test]
        async fn first_keys_win() {
            let (_guard, store, _) = $fresh().await;
            super::first_keys_win(&store).await;
        }

        #[tokio::test]
        async fn uniqueness_is_enforced() {
            let (_guard, store, count) = $fresh().await;
            super::uniqueness_is_enforced(&store, count).await;
        }

        #[tokio::test]
        async fn tokens_are_unique_per_merchant() {
            let (_guard, store, count) = $fresh().await;
            super::tokens_are_unique_per_merchant(&store, count).await;
        }

        #[tokio::test]
        async fn tokens_read_back_scoped_to_their_merchant() {
            let (_guard, store, _) = $fresh().await;
            super::tokens_read_back_scoped_to_their_merchant(&store).await;
        }

        #[tokio::test]
        async fn only_a_held_dek_finds_or_stores_a_token() {
            let (_guard, store, count) = $fresh().await;
            super::only_a_held_dek_finds_or_stores_a_token(&store, count).await;
        }

        #[tokio::test]
        async fn a_token_is_read_with_the_key_it_names() {
            let (_guard, store, _) = $fresh().await;
            super::a_token_is_read_with_the_key_it_names(&store).await;
        }

        #[tokio::test]
        async fn delete_writes_audit_only_when_it_deletes() {
            let (_guard, store, count) = $fresh().await;
            super::delete_writes_audit_only_when_it_deletes(&store, count).await;
        }

        #[tokio::test]
        async fn dek_uses_are_reserved_up_to_the_cap() {
            let (_guard, store, _) = $fresh().await;
            super::dek_uses_are_reserved_up_to_the_cap(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn rotation_adds_each_version_once() {
            let (_guard, store, count) = $fresh().await;
            super::rotation_adds_each_version_once(&store, count).await;
        }

        #[tokio::test]
        async fn reencryption_pages_and_compares_and_sets() {
            let (_guard, store, _) = $fresh().await;
            super::reencryption_pages_and_compares_and_sets(&store).await;
        }

        #[tokio::test]
        async fn rewrap_pages_and_compares_and_sets() {
            let (_guard, store, _) = $fresh().await;
            super::rewrap_pages_and_compares_and_sets(&store).await;
        }

        #[tokio::test]
        async fn a_shred_needs_a_second_admin() {
            let (_guard, store, count) = $fresh().await;
            super::a_shred_needs_a_second_admin(&store, count).await;
        }

        #[tokio::test]
        async fn a_shred_racing_a_rotation_leaves_no_key() {
            let (_guard, store, _) = $fresh().await;
            super::a_shred_racing_a_rotation_leaves_no_key(&store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn racing_writes_each_get_their_own_outcome() {
            let (_guard, store, count) = $fresh().await;
            super::racing_writes_each_get_their_own_outcome(std::sync::Arc::new(store), count)
                .await;
        }

        #[tokio::test]
        async fn tallies_count_distinct_items_up_to_their_limit() {
            let (_guard, store, _) = $fresh().await;
            super::tallies_count_distinct_items_up_to_their_limit(&store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn racing_tallies_admit_at_most_the_limit() {
            let (_guard, store, _) = $fresh().await;
            super::racing_tallies_admit_at_most_the_limit(std::sync::Arc::new(store)).await;
        }

        #[tokio::test]
        async fn destinations_proposed_read_back_oldest_first() {
            let (_guard, store, count) = $fresh().await;
            super::destinations_proposed_read_back_oldest_first(&store, count).await;
        }

        #[tokio::test]
        async fn destination_approval_needs_a_second_admin() {
            let (_guard, store, count) = $fresh().await;
            super::destination_approval_needs_a_second_admin(&store, count).await;
        }

        #[tokio::test]
        async fn destination_in_force_is_the_latest_approved_unrevoked() {
            let (_guard, store, count) = $fresh().await;
            super::destination_in_force_is_the_latest_approved_unrevoked(&store, count).await;
        }

        #[tokio::test]
        async fn destination_revocation_of_nothing_writes_nothing() {
            let (_guard, store, count) = $fresh().await;
            super::destination_revocation_of_nothing_writes_nothing(&store, count).await;
        }

        #[tokio::test]
        async fn forwards_in_flight_are_marked_until_finished() {
            let (_guard, store, count) = $fresh().await;
            super::forwards_in_flight_are_marked_until_finished(&store, count).await;
        }

        #[tokio::test]
        async fn appended_audit_records_are_stored() {
            let (_guard, store, count) = $fresh().await;
            store.append_audit(&super::audit("r1")).await.unwrap();
            assert_eq!(count().await, 1);
        }
    };
}

mod memory {
    use vault_core::testing::MemoryStore;

    use super::*;

    async fn fresh() -> ((), MemoryStore, Count) {
        let store = MemoryStore::new();
        let handle = store.clone();
        let count: Count = Box::new(move || {
            let n = i64::try_from(handle.audit_count()).unwrap();
            Box::pin(async move { n })
        });
        ((), store, count)
    }

    conformance_suite!(fresh);
}

mod sqlite {
    use sqlx::sqlite::SqlitePoolOptions;
    use vault_store::SqliteStore;

    use super::*;

    async fn fresh() -> (tempfile::TempDir, SqliteStore, Count) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let pool = SqlitePoolOptions::new()
            .connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        let count: Count = Box::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            })
        });
        (dir, store, count)
    }

    conformance_suite!(fresh);

    #[tokio::test]
    async fn database_is_private_and_in_wal_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let _store = SqliteStore::open(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "database readable by others: {mode:o}");
        let pool = SqlitePoolOptions::new()
            .connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
    }
}

mod postgres {
    use std::time::Duration;

    use sqlx::postgres::PgPoolOptions;
    use vault_store::testing::TestDatabase;
    use vault_store::{PgSettings, PgStore};

    use super::*;

    pub(crate) fn settings(url: &str) -> PgSettings {
        PgSettings {
            url: url.to_owned(),
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            password: None,
        }
    }

    async fn fresh() -> (TestDatabase, PgStore, Count) {
        let db = TestDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let store = PgStore::connect(&settings(&db.url)).await.unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.url)
            .await
            .unwrap();
        let count: Count = Box::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            })
        });
        (db, store, count)
    }

    conformance_suite!(fresh);

    /// Two replicas' stores on one database: tallies racing across them still admit at most
    /// the limit (the upsert's row lock orders them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tallies_racing_across_replicas_admit_at_most_the_limit() {
        let (_db, a, _) = fresh().await;
        let b = PgStore::connect(&settings(&_db.url)).await.unwrap();
        let stores: [std::sync::Arc<dyn TokenStore>; 2] =
            [std::sync::Arc::new(a), std::sync::Arc::new(b)];
        let tasks: Vec<_> = (0..80)
            .map(|i| {
                let store = stores[i % 2].clone();
                tokio::spawn(async move {
                    let item = format!("card-{i}");
                    store
                        .tally(&[super::tally("race", 7, &[item.as_str()], 12, false)])
                        .await
                        .unwrap()[0][0]
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            if task.await.unwrap().count <= 12 {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 12);
    }

    /// The same with items brought again and again, across two replicas.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_items_racing_across_replicas_admit_at_most_the_limit() {
        let (_db, a, _) = fresh().await;
        let b = PgStore::connect(&settings(&_db.url)).await.unwrap();
        super::racing_repeated_items_admit_at_most_the_limit(vec![
            std::sync::Arc::new(a),
            std::sync::Arc::new(b),
        ])
        .await;
    }

    #[tokio::test]
    async fn audit_rows_cannot_be_changed() {
        let (db, store, _) = fresh().await;
        store.append_audit(&super::audit("r1")).await.unwrap();
        let pool = PgPoolOptions::new().connect(&db.url).await.unwrap();
        assert!(
            sqlx::query("UPDATE audit_log SET outcome = 'denied'")
                .execute(&pool)
                .await
                .is_err()
        );
        assert!(
            sqlx::query("DELETE FROM audit_log")
                .execute(&pool)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_database_without_durable_commits_is_refused() {
        let db = TestDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = PgPoolOptions::new().connect(&db.url).await.unwrap();
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} SET synchronous_commit = off"
        )))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let err = PgStore::connect(&settings(&db.url)).await.unwrap_err();
        assert!(
            err.to_string().contains("synchronous_commit is off"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn migrations_are_idempotent_across_replicas() {
        let db = TestDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let settings = settings(&db.url);
        let (a, b, c) = tokio::join!(
            PgStore::connect(&settings),
            PgStore::connect(&settings),
            PgStore::connect(&settings),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
    }
}
