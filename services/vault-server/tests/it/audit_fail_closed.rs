//! If the audit record cannot be written, no PAN leaves the vault and nothing is half-written.

use tonic::Code;

use crate::harness::*;

const BREAK_AUDIT: &str = "CREATE TRIGGER test_audit_down BEFORE INSERT ON audit_log \
                           BEGIN SELECT RAISE(ABORT, 'audit store rejects writes'); END";

#[tokio::test]
async fn detokenize_fails_without_a_pan_when_audit_writes_fail() {
    let vault = TestVault::start().await;
    let pan = "6011111111111117";
    let token = vault
        .client("gateway")
        .await
        .tokenize(tokenize_request("m1", pan))
        .await
        .unwrap()
        .into_inner()
        .token;
    let db = vault.db().await;
    sqlx::query(BREAK_AUDIT).execute(&db).await.unwrap();

    let mut payments = vault.client("payments").await;
    let status = payments
        .detokenize(detokenize_request("m1", &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("audit"), "{}", status.message());
    assert!(!status.message().contains(pan));
    assert!(!format!("{status:?}").contains(pan));

    // Tokenize fails too, and leaves no token behind (token and audit commit together).
    let before = vault.token_count().await;
    let status = vault
        .client("gateway")
        .await
        .tokenize(tokenize_request("m1", "3566002020360505"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(vault.token_count().await, before);

    // Once the audit store accepts writes again, calls succeed without a restart.
    sqlx::query("DROP TRIGGER test_audit_down")
        .execute(&db)
        .await
        .unwrap();
    let detokenized = payments
        .detokenize(detokenize_request("m1", &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detokenized.pan, pan);
}

#[tokio::test]
async fn audit_log_is_append_only() {
    let vault = TestVault::start().await;
    vault
        .client("gateway")
        .await
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap();
    let db = vault.db().await;
    assert!(
        sqlx::query("UPDATE audit_log SET outcome = 'denied'")
            .execute(&db)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&db)
            .await
            .is_err()
    );
}
