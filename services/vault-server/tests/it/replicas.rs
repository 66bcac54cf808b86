//! Several stateless `vaultd` replicas on one PostgreSQL database: any replica serves any
//! token, and concurrent first uses and duplicate cards settle on one key set and one token.

use std::collections::HashSet;

use vault_store::testing::TestDatabase;

use crate::harness::*;

async fn database() -> TestDatabase {
    TestDatabase::create()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_token_made_on_one_replica_detokenizes_on_the_others() {
    let db = database().await;
    let vault = TestVault::start_on(&db.url, "info").await;
    let (two, three) = (vault.replica(2).await, vault.replica(3).await);
    let token = vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    for addr in [&two.addr, &three.addr] {
        let pan = vault
            .client_at(addr, "payments")
            .await
            .detokenize(detokenize_request("m1", &token))
            .await
            .unwrap()
            .into_inner()
            .take_pan();
        assert_eq!(pan, "4111111111111111");
        let again = vault
            .client_at(addr, "gateway")
            .await
            .tokenize(tokenize_request("m1", "4111111111111111"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.token, token);
        assert!(again.existing);
    }
}

/// 1,000 trials: each a new merchant's first use and a new card, tokenized at once on three
/// replicas. Each trial must end with one token that all three calls return, one DEK
/// (version 1) and one fingerprint key, and the token must detokenize.
#[tokio::test]
async fn concurrent_first_use_and_same_card_across_three_replicas() {
    const TRIALS: usize = 1_000;
    let db = database().await;
    let vault = TestVault::start_on(&db.url, "warn").await;
    let (two, three) = (vault.replica(2).await, vault.replica(3).await);
    let gateways = [
        vault.client("gateway").await,
        vault.client_at(&two.addr, "gateway").await,
        vault.client_at(&three.addr, "gateway").await,
    ];
    let mut pans = HashSet::new();
    while pans.len() < TRIALS {
        pans.insert(random_pan("4"));
    }
    let mut issued = Vec::new();
    for (trial, pan) in pans.iter().enumerate() {
        let merchant = format!("race-{trial}");
        let calls = gateways.iter().cloned().map(|mut client| {
            let request = tokenize_request(&merchant, pan);
            tokio::spawn(async move { client.tokenize(request).await.map(|r| r.into_inner()) })
        });
        let mut tokens = HashSet::new();
        let mut created = 0;
        for call in calls.collect::<Vec<_>>() {
            let response = call.await.unwrap().unwrap();
            created += usize::from(!response.existing);
            tokens.insert(response.token);
        }
        assert_eq!(tokens.len(), 1, "trial {trial}: {tokens:?}");
        assert_eq!(
            created, 1,
            "trial {trial}: exactly one call creates the token"
        );
        issued.push((merchant, tokens.into_iter().next().unwrap(), pan.clone()));
    }

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let (keys, merchants, max_version): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT merchant_id), MAX(version) FROM data_keys \
             WHERE merchant_id <> '~vault'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(merchants, TRIALS as i64);
    assert_eq!(
        keys,
        2 * TRIALS as i64,
        "one DEK and one fingerprint key per merchant"
    );
    assert_eq!(max_version, 1);
    let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tokens, TRIALS as i64);

    let payments = [
        vault.client("payments").await,
        vault.client_at(&two.addr, "payments").await,
        vault.client_at(&three.addr, "payments").await,
    ];
    for (i, (merchant, token, pan)) in issued.iter().enumerate() {
        let mut client = payments[i % 3].clone();
        let detokenized = client
            .detokenize(detokenize_request(merchant, token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&detokenized.pan, pan);
    }
}

/// Rolling deploys: `vaultd migrate` prepares the schema; replicas started with
/// `migrate_on_start = false` refuse an unmigrated database and serve a migrated one.
#[tokio::test]
async fn vaultd_migrate_runs_ahead_of_replicas_that_do_not_migrate() {
    let db = database().await;
    let storage = format!("url = {:?}\nmigrate_on_start = false\n", db.url);
    // The harness writes a complete configuration; borrow it by starting on SQLite, then
    // point a second configuration at the fresh PostgreSQL database.
    let vault = TestVault::start().await;
    let config = vault.dir.path().join("rolling.toml");
    let text = std::fs::read_to_string(vault.dir.path().join("vaultd.toml"))
        .unwrap()
        .replace("url = \"sqlite:vault.db\"\n", &storage);
    std::fs::write(&config, text).unwrap();
    let out = vault.dir.path().join("rolling");
    std::fs::create_dir_all(&out).unwrap();

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_vaultd"))
        .args(["serve", "--config", &config.to_string_lossy()])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("run `vaultd migrate` first"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_vaultd"))
        .args(["migrate", "--config", &config.to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    let child = spawn_vaultd(
        &["serve", "--config", &config.to_string_lossy()],
        &out,
        "info",
    );
    let (addr, mut child) = wait_for_listening(&out, child).await;
    let token = vault.tokenize_at(&addr, "m1", "4111111111111111").await;
    assert!(token.starts_with("tok_"));
    terminate(&mut child);
}
