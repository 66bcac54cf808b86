//! Group commit keeps its promise through a crash: the loadtest tool tokenizes as fast as it
//! can, `vaultd` is killed with SIGKILL mid-run, and after a restart every token the tool was
//! answered with (its record file) detokenizes to its PAN. On both backends.

use std::path::Path;
use std::time::{Duration, Instant};

use vault_store::testing::TestDatabase;

use crate::harness::*;

/// Tokens the vault must have committed before it is killed, so the kill lands mid-run.
const BEFORE_KILL: i64 = 300;

async fn tokens(vault: &TestVault, db: Option<&TestDatabase>) -> i64 {
    match db {
        None => vault.token_count().await,
        Some(db) => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        }
    }
}

async fn kill_mid_run_then_check(vault: TestVault, db: Option<&TestDatabase>) {
    let record = vault.dir.path().join("acknowledged.tsv");
    let load = tokio::spawn(loadtest::run(loadtest::Options {
        target: loadtest::Target::dev(vault.dir.path(), vault.addr.clone()),
        length: loadtest::Length::Duration(Duration::from_secs(6)),
        record: Some(record.clone()),
        ..loadtest::Options::default()
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokens(&vault, db).await < BEFORE_KILL {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let vault = vault.crash_and_restart().await;
    let report = load.await.unwrap().unwrap();
    assert!(
        report.count() > report.ok(),
        "the kill should have failed some calls: {}",
        report.summary()
    );

    let acknowledged = loadtest::record::read_file(&record).unwrap();
    assert!(
        acknowledged.len() >= usize::try_from(BEFORE_KILL).unwrap() / 2,
        "{} tokens acknowledged",
        acknowledged.len()
    );
    let check = loadtest::check_records(
        &loadtest::CheckOptions {
            target: loadtest::Target::dev(Path::new(vault.dir.path()), vault.addr.clone()),
            ..loadtest::CheckOptions::default()
        },
        acknowledged,
    )
    .await
    .unwrap();
    assert!(check.passed(), "after the crash: {check:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_token_survives_a_kill_9_on_sqlite() {
    kill_mid_run_then_check(TestVault::start_with_log("warn").await, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_token_survives_a_kill_9_on_postgres() {
    let db = TestDatabase::create()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let vault = TestVault::start_on(&db.url, "warn").await;
    kill_mid_run_then_check(vault, Some(&db)).await;
}
