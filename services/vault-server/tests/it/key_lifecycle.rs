//! The key lifecycle end to end, driven through `vaultctl` (the real CLI code) against real
//! `vaultd` processes: DEK use caps across replicas, DEK rotation and re-encryption, KEK
//! rotation in an HSM under load, and crypto-shred with dual control.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tonic::Code;
use vault_store::testing::TestDatabase;

use crate::harness::*;
use crate::hsm::{PIN, SoftHsm, hsm_data_dir};

/// Tokenizes every PAN for `merchant`, `clients` at a time, spread over `addrs` (one shared
/// connection to each, as a gateway's); returns token → PAN.
async fn tokenize_all(
    vault: &TestVault,
    addrs: &[String],
    merchant: &str,
    pans: Vec<String>,
    clients: usize,
) -> HashMap<String, String> {
    let mut gateways = Vec::new();
    for addr in addrs {
        gateways.push(vault.client_at(addr, "gateway").await);
    }
    let limit = Arc::new(Semaphore::new(clients));
    let mut calls = Vec::new();
    for (pan, gateway) in pans.into_iter().zip(gateways.iter().cycle()) {
        let mut client = gateway.clone();
        let (limit, merchant) = (limit.clone(), merchant.to_owned());
        calls.push(tokio::spawn(async move {
            let _slot = limit.acquire().await.unwrap();
            let token = client
                .tokenize(tokenize_request(&merchant, &pan))
                .await
                .unwrap()
                .into_inner()
                .token;
            (token, pan)
        }));
    }
    let mut tokens = HashMap::new();
    for call in calls {
        let (token, pan) = call.await.unwrap();
        tokens.insert(token, pan);
    }
    tokens
}

/// Detokenizes every token of `merchant`, `clients` at a time, and checks each PAN.
async fn all_detokenize(vault: &TestVault, merchant: &str, tokens: &HashMap<String, String>) {
    let payments = vault.client("payments").await;
    let limit = Arc::new(Semaphore::new(32));
    let mut calls = Vec::new();
    for (token, pan) in tokens {
        let mut client = payments.clone();
        let (limit, merchant, token, pan) = (
            limit.clone(),
            merchant.to_owned(),
            token.clone(),
            pan.clone(),
        );
        calls.push(tokio::spawn(async move {
            let _slot = limit.acquire().await.unwrap();
            let back = client
                .detokenize(detokenize_request(&merchant, &token))
                .await
                .unwrap()
                .into_inner()
                .take_pan();
            assert_eq!(back, pan);
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
}

fn distinct_pans(n: usize) -> Vec<String> {
    let mut pans = std::collections::HashSet::new();
    while pans.len() < n {
        pans.insert(random_pan("4"));
    }
    pans.into_iter().collect()
}

/// The cap configured to 1,000 uses per DEK version, 32 concurrent clients on three replicas
/// sharing one PostgreSQL: no version ever encrypts more than 1,000 cards, the vault rotates as
/// it goes, and every token still detokenizes.
#[tokio::test]
async fn no_dek_version_exceeds_its_use_cap_across_replicas() {
    const CARDS: usize = 3_500;
    let db = TestDatabase::create()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let vault = TestVault::start_with_keys(
        &format!("url = {:?}\n", db.url),
        "[dek]\nrotate_after_uses = 1000\nmax_uses = 1000\nlease = 16\n",
        "warn",
    )
    .await;
    let (two, three) = (vault.replica(2).await, vault.replica(3).await);
    let addrs = [vault.addr.clone(), two.addr.clone(), three.addr.clone()];
    let tokens = tokenize_all(&vault, &addrs, "m-cap", distinct_pans(CARDS), 32).await;
    assert_eq!(tokens.len(), CARDS);

    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect(&db.url)
        .await
        .unwrap();
    let per_version: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT dek_version, COUNT(*) FROM tokens WHERE merchant_id = 'm-cap' \
         GROUP BY dek_version ORDER BY dek_version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let uses: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, uses FROM data_keys WHERE merchant_id = 'm-cap' AND purpose = 'dek' \
         ORDER BY version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        per_version.iter().all(|&(_, n)| n <= 1_000),
        "{per_version:?}"
    );
    assert!(uses.iter().all(|&(_, n)| n <= 1_000), "{uses:?}");
    assert!(per_version.len() >= 4, "the vault rotated: {per_version:?}");
    // Every version's stored count covers the encryptions made under it.
    for (version, made) in &per_version {
        let reserved = uses.iter().find(|(v, _)| v == version).unwrap().1;
        assert!(reserved >= *made, "version {version}: {reserved} < {made}");
    }
    all_detokenize(&vault, "m-cap", &tokens).await;
}

/// `vaultctl keys rotate` starts a new DEK version; `vaultctl keys reencrypt` moves every older
/// token to it; `vaultctl keys show` tells the story; every token still detokenizes.
#[tokio::test]
async fn rotate_and_reencrypt_a_merchant_with_vaultctl() {
    let vault = TestVault::start().await;
    let old = tokenize_all(
        &vault,
        std::slice::from_ref(&vault.addr),
        "m-rot",
        distinct_pans(250),
        16,
    )
    .await;
    let rotated = vault
        .vaultctl(
            "admin-1",
            &["keys", "rotate", "m-rot", "--reason", "quarterly rotation"],
        )
        .await
        .unwrap();
    assert!(matches!(
        rotated,
        vaultctl::Report::Rotated { version: 2, .. }
    ));
    let new = tokenize_all(
        &vault,
        std::slice::from_ref(&vault.addr),
        "m-rot",
        distinct_pans(10),
        4,
    )
    .await;

    let moved = vault
        .vaultctl(
            "admin-2",
            &["keys", "reencrypt", "m-rot", "--reason", "retire DEK v1"],
        )
        .await
        .unwrap();
    match moved {
        vaultctl::Report::Reencrypted {
            tokens,
            dek_version,
            ..
        } => assert_eq!((tokens, dek_version.as_str()), (250, "2")),
        other => panic!("{other:?}"),
    }
    let versions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT dek_version, COUNT(*) FROM tokens WHERE merchant_id = 'm-rot' GROUP BY dek_version",
    )
    .fetch_all(&vault.db().await)
    .await
    .unwrap();
    assert_eq!(versions, [(2, 260)]);
    // Running it again finds nothing left to do.
    let again = vault
        .vaultctl(
            "admin-1",
            &["keys", "reencrypt", "m-rot", "--reason", "resume"],
        )
        .await
        .unwrap();
    assert!(matches!(
        again,
        vaultctl::Report::Reencrypted { tokens: 0, .. }
    ));

    let shown = vault
        .vaultctl("admin-1", &["keys", "show", "m-rot"])
        .await
        .unwrap();
    let vaultctl::Report::MerchantKeys { keys, .. } = shown else {
        panic!("{shown:?}")
    };
    let deks: Vec<(u32, u64)> = keys
        .keys
        .iter()
        .filter(|k| k.purpose == "dek")
        .map(|k| (k.version, k.tokens))
        .collect();
    assert_eq!(deks, [(1, 0), (2, 260)]);
    all_detokenize(&vault, "m-rot", &old).await;
    all_detokenize(&vault, "m-rot", &new).await;

    // The gateway holds no keys.admin: refused, and audited.
    let refused = vault
        .vaultctl("gateway", &["keys", "rotate", "m-rot", "--reason", "nope"])
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("PERMISSION_DENIED"),
        "{refused}"
    );
    let audited: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT caller, outcome, detail FROM audit_log WHERE operation = 'keys.admin' ORDER BY at, writer, seq",
    )
    .fetch_all(&vault.db().await)
    .await
    .unwrap();
    let seen: Vec<(&str, &str, &str)> = audited
        .iter()
        .map(|(c, o, d)| (c.as_str(), o.as_str(), d.as_deref().unwrap_or("")))
        .collect();
    for expected in [
        (ADMIN_1, "success", "dek.rotate"),
        (ADMIN_2, "success", "reencrypt.start"),
        (ADMIN_2, "success", "reencrypt.finished"),
        (GATEWAY, "denied", "dek.rotate"),
    ] {
        assert!(seen.contains(&expected), "{expected:?} not in {seen:?}");
    }
}

/// A thousand merchants' keys move from one HSM key to another while a load of tokenizes and
/// detokenizes runs: no request fails, every token still detokenizes, and every stored key
/// names the new KEK. The old KEK is then retired from the configuration.
#[tokio::test]
async fn kek_rotation_of_a_thousand_merchants_under_load() {
    const MERCHANTS: usize = 1_000;
    let (dir, hsm) = hsm_data_dir();
    // What this test asserts is that no call fails while keys move, not how fast calls are
    // (loadtest measures that): the store's call deadline is raised from 5 s so that a CI
    // machine whose two cores are busy with other tests cannot turn a slow call into a failure.
    let storage = "url = \"sqlite:vault.db\"\ncall_timeout_ms = 60000\n";
    let vault =
        TestVault::start_in(dir, storage, &SoftHsm::kek_config(), &hsm.env(PIN), "info").await;

    // One card for each of 1,000 merchants: 2,000 keys under kek-1. The calls share one
    // connection, as a gateway's do, so the vault is not also busy with 1,000 handshakes.
    let gateway = vault.client("gateway").await;
    let limit = Arc::new(Semaphore::new(16));
    let mut calls = Vec::new();
    for i in 0..MERCHANTS {
        let mut client = gateway.clone();
        let limit = limit.clone();
        calls.push(tokio::spawn(async move {
            let _slot = limit.acquire().await.unwrap();
            let (merchant, pan) = (format!("m-{i:04}"), random_pan("5"));
            let token = client
                .tokenize(tokenize_request(&merchant, &pan))
                .await
                .unwrap()
                .into_inner()
                .token;
            (merchant, token, pan)
        }));
    }
    let mut cards = Vec::new();
    for call in calls {
        cards.push(call.await.unwrap());
    }

    // The operator makes kek-2 in the HSM and restarts with kek-1 as the previous KEK.
    let rotated_keys = format!(
        "{}{}",
        SoftHsm::kek_table("kek", "kek-2"),
        SoftHsm::kek_table("previous_kek", "kek-1")
    );
    write_vaultd_toml(vault.dir.path(), storage, &rotated_keys);
    hsm.create_kek(vault.dir.path());
    let vault = vault.restart_with(storage, &rotated_keys).await;

    // Load: detokenize known cards and tokenize new ones, old merchants and new, until told.
    let cards = Arc::new(cards);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for worker in 0..8 {
        let mut payments = vault.client("payments").await;
        let mut gateway = vault.client("gateway").await;
        let (cards, stop, ok, failed) = (cards.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let (merchant, token, pan) = &cards[(worker * 131 + n * 17) % cards.len()];
                let result = if n.is_multiple_of(3) {
                    let merchant = if n.is_multiple_of(2) {
                        merchant.clone()
                    } else {
                        format!("new-{worker}-{n}")
                    };
                    gateway
                        .tokenize(tokenize_request(&merchant, &random_pan("4")))
                        .await
                        .map(|_| ())
                } else {
                    payments
                        .detokenize(detokenize_request(merchant, token))
                        .await
                        .map(|r| assert_eq!(&r.into_inner().take_pan(), pan))
                };
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(status) => {
                        eprintln!("load call failed: {status:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }

    let before = ok.load(Ordering::SeqCst);
    let rewrapped = vault
        .vaultctl(
            "admin-1",
            &["kek", "rewrap", "--reason", "annual KEK rotation"],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", vault.logs()));
    let during = ok.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    for worker in load {
        worker.await.unwrap();
    }
    match rewrapped {
        vaultctl::Report::Rewrapped { keys, kek_id } => {
            assert!(keys >= 2 * MERCHANTS as u64, "{keys}");
            assert_eq!(kek_id, "pkcs11:vault-e2e/kek-2");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
    assert!(during > 0, "the load ran while the keys were rewrapped");

    let kek_ids: Vec<(String, i64)> =
        sqlx::query_as("SELECT kek_id, COUNT(*) FROM data_keys GROUP BY kek_id")
            .fetch_all(&vault.db().await)
            .await
            .unwrap();
    assert_eq!(kek_ids.len(), 1, "{kek_ids:?}");
    assert_eq!(kek_ids[0].0, "pkcs11:vault-e2e/kek-2");

    // Retire kek-1: the vault no longer opens it, and every card still comes back.
    let vault = vault
        .restart_with(storage, &SoftHsm::kek_table("kek", "kek-2"))
        .await;
    let payments = vault.client("payments").await;
    let limit = Arc::new(Semaphore::new(32));
    let mut checks = Vec::new();
    for (merchant, token, pan) in cards.iter() {
        let mut client = payments.clone();
        let (limit, merchant, token, pan) =
            (limit.clone(), merchant.clone(), token.clone(), pan.clone());
        checks.push(tokio::spawn(async move {
            let _slot = limit.acquire().await.unwrap();
            let back = client
                .detokenize(detokenize_request(&merchant, &token))
                .await
                .unwrap();
            assert_eq!(back.into_inner().take_pan(), pan);
        }));
    }
    for check in checks {
        check.await.unwrap();
    }
}

/// Crypto-shred: one admin's request destroys nothing; the same admin cannot approve it; a
/// second admin's approval destroys the merchant's keys at once. Its tokens then answer
/// FAILED_PRECONDITION, it cannot tokenize again, other merchants are untouched, and the audit
/// log says who asked and who approved.
#[tokio::test]
async fn crypto_shred_needs_two_admins() {
    let vault = TestVault::start().await;
    let doomed = vault
        .tokenize_at(&vault.addr, "m-gone", "4111111111111111")
        .await;
    let kept = vault
        .tokenize_at(&vault.addr, "m-kept", "4111111111111111")
        .await;

    let requested = vault
        .vaultctl(
            "admin-1",
            &[
                "shred",
                "request",
                "m-gone",
                "--reason",
                "merchant offboarded",
            ],
        )
        .await
        .unwrap();
    let vaultctl::Report::ShredRequested { request, .. } = requested else {
        panic!("{requested:?}")
    };
    let request_id = request.request_id.clone();
    assert_eq!(request.requested_by, ADMIN_1);

    // One approval does nothing: the card still comes back.
    assert_eq!(
        vault.detokenize_at(&vault.addr, "m-gone", &doomed).await,
        "4111111111111111"
    );
    let own = vault
        .vaultctl(
            "admin-1",
            &[
                "shred",
                "approve",
                "m-gone",
                "--request-id",
                &request_id,
                "--reason",
                "approving my own",
            ],
        )
        .await
        .unwrap_err();
    assert!(own.to_string().contains("FAILED_PRECONDITION"), "{own}");
    assert!(own.to_string().contains("different admin"), "{own}");
    assert_eq!(
        vault.detokenize_at(&vault.addr, "m-gone", &doomed).await,
        "4111111111111111"
    );

    let approved = vault
        .vaultctl(
            "admin-2",
            &[
                "shred",
                "approve",
                "m-gone",
                "--request-id",
                &request_id,
                "--reason",
                "offboarding ticket 77",
            ],
        )
        .await
        .unwrap();
    assert!(
        matches!(
            approved,
            vaultctl::Report::ShredApproved {
                keys_destroyed: 2,
                ..
            }
        ),
        "{approved:?}"
    );

    let gone = vault
        .client("payments")
        .await
        .detokenize(detokenize_request("m-gone", &doomed))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
    assert!(gone.message().contains("destroyed"), "{gone:?}");
    let again = vault
        .client("gateway")
        .await
        .tokenize(tokenize_request("m-gone", "5555555555554444"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(
        vault.detokenize_at(&vault.addr, "m-kept", &kept).await,
        "4111111111111111"
    );
    let keys: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM data_keys WHERE merchant_id = 'm-gone'")
            .fetch_one(&vault.db().await)
            .await
            .unwrap();
    assert_eq!(keys, 0);

    let audited: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT caller, outcome, detail, reason FROM audit_log \
         WHERE operation = 'keys.admin' AND merchant_id = 'm-gone' ORDER BY at, writer, seq",
    )
    .fetch_all(&vault.db().await)
    .await
    .unwrap();
    let seen: Vec<(&str, &str, &str, &str)> = audited
        .iter()
        .map(|(c, o, d, r)| {
            (
                c.as_str(),
                o.as_str(),
                d.as_deref().unwrap_or(""),
                r.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (ADMIN_1, "success", "shred.request", "merchant offboarded"),
            (
                ADMIN_1,
                "failed_precondition",
                "shred.approve",
                "approving my own"
            ),
            (ADMIN_2, "success", "shred.approve", "offboarding ticket 77"),
        ]
    );
}
