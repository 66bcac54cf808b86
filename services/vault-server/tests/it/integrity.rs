//! Ciphertexts are bound to merchant, token and key version: tampering with rows yields an
//! integrity error, never a wrong PAN.

use tonic::Code;

use crate::harness::*;

async fn tokenize(vault: &TestVault, merchant: &str, pan: &str) -> String {
    vault.tokenize_at(&vault.addr, merchant, pan).await
}

async fn detokenize_code(vault: &TestVault, merchant: &str, token: &str) -> (Code, String) {
    match vault
        .client("payments")
        .await
        .detokenize(detokenize_request(merchant, token))
        .await
    {
        Ok(response) => (Code::Ok, response.into_inner().take_pan()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

#[tokio::test]
async fn ciphertext_moved_to_another_row_fails_integrity() {
    let vault = TestVault::start().await;
    let a = tokenize(&vault, "m1", "4111111111111111").await;
    let b = tokenize(&vault, "m1", "5555555555554444").await;
    let db = vault.db().await;
    sqlx::query(
        "UPDATE tokens SET (nonce, ciphertext) = \
         (SELECT nonce, ciphertext FROM tokens WHERE token = ?) WHERE token = ?",
    )
    .bind(&b)
    .bind(&a)
    .execute(&db)
    .await
    .unwrap();
    let (code, message) = detokenize_code(&vault, "m1", &a).await;
    assert_eq!(code, Code::DataLoss, "{message}");
    assert!(!message.contains("5555"));
    // The untouched row still works.
    assert_eq!(
        detokenize_code(&vault, "m1", &b).await,
        (Code::Ok, "5555555555554444".into())
    );
}

#[tokio::test]
async fn row_moved_to_another_merchant_fails_integrity() {
    let vault = TestVault::start().await;
    let a = tokenize(&vault, "m1", "4111111111111111").await;
    // m2 has keys of its own; m3 has none.
    tokenize(&vault, "m2", "378282246310005").await;
    let db = vault.db().await;
    for merchant in ["m2", "m3"] {
        sqlx::query("UPDATE tokens SET merchant_id = ? WHERE token = ?")
            .bind(merchant)
            .bind(&a)
            .execute(&db)
            .await
            .unwrap();
        let (code, message) = detokenize_code(&vault, merchant, &a).await;
        assert_eq!(code, Code::DataLoss, "{merchant}: {message}");
    }
    // Moved back, it opens again: the failure was the binding, not damage.
    sqlx::query("UPDATE tokens SET merchant_id = 'm1' WHERE token = ?")
        .bind(&a)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        detokenize_code(&vault, "m1", &a).await,
        (Code::Ok, "4111111111111111".into())
    );
}

#[tokio::test]
async fn token_renamed_or_key_version_changed_fails_integrity() {
    let vault = TestVault::start().await;
    let a = tokenize(&vault, "m1", "4111111111111111").await;
    let db = vault.db().await;
    let renamed = "tok_AAAAAAAAAAAAAAAAAAAAAA";
    sqlx::query("UPDATE tokens SET token = ? WHERE token = ?")
        .bind(renamed)
        .bind(&a)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        detokenize_code(&vault, "m1", renamed).await.0,
        Code::DataLoss
    );

    // A second DEK version for m1, copied from the first: the right key bytes, but wrapped
    // under version 1's associated data, so it must not unwrap as version 2.
    let b = tokenize(&vault, "m1", "5555555555554444").await;
    sqlx::query(
        "INSERT INTO data_keys (merchant_id, purpose, version, kek_id, wrapped, created_at) \
         SELECT merchant_id, purpose, 2, kek_id, wrapped, created_at FROM data_keys \
         WHERE merchant_id = 'm1' AND purpose = 'dek' AND version = 1",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE tokens SET dek_version = 2 WHERE token = ?")
        .bind(&b)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(detokenize_code(&vault, "m1", &b).await.0, Code::DataLoss);
    // New tokens would be sealed under the newest version once the vault reads the merchant's
    // keys again (within `KEY_SET_MAX_AGE`, as for a rotation made by another replica): it
    // refuses rather than encrypt under a key whose binding does not check out.
    tokio::time::sleep(vault_core::key_sets::KEY_SET_MAX_AGE).await;
    let status = vault
        .client("gateway")
        .await
        .tokenize(tokenize_request("m1", "378282246310005"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
}

#[tokio::test]
async fn flipped_ciphertext_bit_fails_integrity() {
    let vault = TestVault::start().await;
    let a = tokenize(&vault, "m1", "4111111111111111").await;
    let db = vault.db().await;
    let ciphertext: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM tokens WHERE token = ?")
        .bind(&a)
        .fetch_one(&db)
        .await
        .unwrap();
    for i in [0, ciphertext.len() / 2, ciphertext.len() - 1] {
        let mut flipped = ciphertext.clone();
        flipped[i] ^= 0x01;
        sqlx::query("UPDATE tokens SET ciphertext = ? WHERE token = ?")
            .bind(&flipped)
            .bind(&a)
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(detokenize_code(&vault, "m1", &a).await.0, Code::DataLoss);
    }
    let rows = sqlx::query_scalar::<_, String>(
        "SELECT outcome FROM audit_log WHERE operation = 'detokenize'",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|o| o == "integrity_failure"), "{rows:?}");
}

#[tokio::test]
async fn edited_expiry_fails_integrity() {
    let vault = TestVault::start().await;
    let a = tokenize(&vault, "m1", "4111111111111111").await;
    sqlx::query("UPDATE tokens SET exp_year = 2039 WHERE token = ?")
        .bind(&a)
        .execute(&vault.db().await)
        .await
        .unwrap();
    assert_eq!(detokenize_code(&vault, "m1", &a).await.0, Code::DataLoss);
}

#[tokio::test]
async fn fingerprint_copied_onto_another_row_never_hands_out_that_token() {
    let vault = TestVault::start().await;
    let a = tokenize(&vault, "m1", "4111111111111111").await;
    let b = tokenize(&vault, "m1", "5555555555554444").await;
    let db = vault.db().await;
    let fingerprint_a: Vec<u8> =
        sqlx::query_scalar("SELECT fingerprint FROM tokens WHERE token = ?")
            .bind(&a)
            .fetch_one(&db)
            .await
            .unwrap();
    // Move card A's row aside and give row B card A's fingerprint.
    sqlx::query("UPDATE tokens SET fingerprint = x'00' WHERE token = ?")
        .bind(&a)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE tokens SET fingerprint = ? WHERE token = ?")
        .bind(&fingerprint_a)
        .bind(&b)
        .execute(&db)
        .await
        .unwrap();
    // Tokenizing card A again finds row B by fingerprint: the vault opens it, sees another
    // card, and refuses instead of handing out B's token.
    let status = vault
        .client("gateway")
        .await
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
}
