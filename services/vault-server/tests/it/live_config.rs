//! Configuration changed without a restart, and checked before one: SIGHUP swaps the policy
//! (recorded in the trail with the new digest), a policy file that fails to parse keeps the
//! one in force.

use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn sighup_swaps_the_policy_and_the_trail_records_it() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let mut payments = vault.client("payments").await;
    let pan = "4000056655665556";
    let token = vault.tokenize_at(&vault.addr, "m1", pan).await;
    let refused = payments
        .tokenize(tokenize_request("m1", "5555555555554444"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The payments service gains tokenize and loses detokenize; nothing else changes.
    let policy = POLICY.replace(
        "operations = [\"detokenize\", \"metadata\"]",
        "operations = [\"tokenize\", \"metadata\"]",
    );
    assert_ne!(policy, POLICY);
    std::fs::write(vault.dir.path().join("policy.toml"), &policy).unwrap();
    sighup(&vault);
    assert!(
        wait_for_log(&vault, "policy reloaded").await,
        "{}",
        vault.logs()
    );
    payments
        .tokenize(tokenize_request("m1", "5555555555554444"))
        .await
        .unwrap();
    let refused = payments
        .detokenize(detokenize_request("m1", &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    gateway
        .tokenize(tokenize_request("m1", "378282246310005"))
        .await
        .unwrap();

    // A file that does not parse keeps the policy in force, and the log says why.
    std::fs::write(
        vault.dir.path().join("policy.toml"),
        "[[caller]\nidentity = ",
    )
    .unwrap();
    sighup(&vault);
    assert!(
        wait_for_log(
            &vault,
            "policy not reloaded; the previous policy stays in force"
        )
        .await,
        "{}",
        vault.logs()
    );
    payments
        .tokenize(tokenize_request("m1", "6011111111111117"))
        .await
        .unwrap();

    let db = vault.db_path();
    let _dir = vault.stop();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT caller, outcome, detail FROM audit_log WHERE operation = 'policy.reload' \
         ORDER BY rowid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let was = hex::encode(Sha256::digest(POLICY.as_bytes()));
    let now = hex::encode(Sha256::digest(policy.as_bytes()));
    assert_eq!(
        rows,
        [
            (
                "vaultd".to_owned(),
                "success".to_owned(),
                format!("policy sha256:{now} in force (was sha256:{was})")
            ),
            (
                "vaultd".to_owned(),
                "failed_precondition".to_owned(),
                format!("policy file refused; sha256:{now} stays in force")
            ),
        ]
    );
    assert_pci_fields(&db);
}
