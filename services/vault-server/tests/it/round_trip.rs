//! Tokenize, detokenize, dedup and token formats over mutual TLS.

use tonic::Code;
use vault_core::pan::{Brand, luhn_valid};
use vault_proto::v1 as pb;

use crate::harness::*;

#[tokio::test]
async fn every_brand_round_trips() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let mut payments = vault.client("payments").await;
    for (pan, brand) in PANS_BY_BRAND {
        let tokenized = gateway
            .tokenize(tokenize_request("m1", pan))
            .await
            .unwrap()
            .into_inner();
        assert!(tokenized.token.starts_with("tok_"), "{brand}");
        assert!(!tokenized.existing);
        let metadata = tokenized.metadata.unwrap();
        assert_eq!(metadata.brand, brand, "{pan}");
        // The truncation rule: at most six leading digits, and six digits hidden at least.
        assert_eq!(metadata.bin, pan[..shown_leading(pan)], "{pan}");
        assert_eq!(metadata.last4, pan[pan.len() - 4..]);
        assert_eq!(metadata.pan_length as usize, pan.len());
        assert_eq!(
            metadata.expiry,
            Some(pb::Expiry {
                month: 12,
                year: 2031
            })
        );

        let detokenized = payments
            .detokenize(detokenize_request("m1", &tokenized.token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(detokenized.pan, pan);
        assert_eq!(
            detokenized.expiry,
            Some(pb::Expiry {
                month: 12,
                year: 2031
            })
        );
    }
}

#[tokio::test]
async fn same_pan_same_merchant_same_token_other_merchant_differs() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let pan = "4000056655665556";
    let first = gateway
        .tokenize(tokenize_request("m1", pan))
        .await
        .unwrap()
        .into_inner();
    // Separators are stripped: the same card written differently is the same card.
    let again = gateway
        .tokenize(tokenize_request("m1", "4000 0566-5566 5556"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.token, first.token);
    assert_eq!(again.fingerprint, first.fingerprint);
    assert!(!first.existing);
    assert!(again.existing);

    let other = gateway
        .tokenize(tokenize_request("m2", pan))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.token, first.token);
    assert_ne!(other.fingerprint, first.fingerprint);
    assert!(!other.existing);

    // Each merchant sees only its own token.
    let mut payments = vault.client("payments").await;
    let status = payments
        .detokenize(detokenize_request("m2", &first.token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// The leading digits a card of this length may show: min(6, length - 10), so that at least
/// six digits stay hidden (16 digits or more: 6; 15: 5; 14: 4; 13: 3; 12: 2).
fn shown_leading(pan: &str) -> usize {
    (pan.len() - 10).min(6)
}

/// Short cards: 13 and 12 digits.
const SHORT_PANS: [&str; 2] = ["4222222222222", "411111111117"];

#[tokio::test]
async fn pan_shaped_tokens_keep_allowed_leading_digits_last4_and_length_and_fail_luhn() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let mut payments = vault.client("payments").await;
    let pans = PANS_BY_BRAND.iter().map(|(pan, _)| *pan).chain(SHORT_PANS);
    for pan in pans {
        let mut request = tokenize_request("m-shaped", pan);
        request.token_format = pb::TokenFormat::PanShaped.into();
        let tokenized = gateway.tokenize(request).await.unwrap().into_inner();
        let token = &tokenized.token;
        let shown = shown_leading(pan);
        assert_eq!(token.len(), pan.len(), "{pan}");
        assert_eq!(token[..shown], pan[..shown]);
        assert_eq!(token[token.len() - 4..], pan[pan.len() - 4..]);
        assert!(token.len() - shown - 4 >= 6, "six digits hidden at least");
        assert!(token.bytes().all(|b| b.is_ascii_digit()));
        assert!(!luhn_valid(token), "{token} passes Luhn");
        assert_ne!(token, pan);
        let metadata = tokenized.metadata.unwrap();
        assert_eq!(metadata.token_format, i32::from(pb::TokenFormat::PanShaped));
        assert_eq!(metadata.bin, pan[..shown]);
        let detokenized = payments
            .detokenize(detokenize_request("m-shaped", token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(detokenized.pan, pan);
    }
}

/// Rows written before the truncation rule hold the first six digits of every card; no call
/// shows more than the rule allows, whatever the row holds.
#[tokio::test]
async fn metadata_stored_before_the_truncation_rule_is_cut_on_the_way_out() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let db = vault.db().await;
    // The last: a 12-digit Maestro card, whose brand its two shown digits (67) do not decide.
    for pan in SHORT_PANS
        .into_iter()
        .chain(["378282246310005", "675912345674"])
    {
        let mut request = tokenize_request("m-old", pan);
        request.token_format = pb::TokenFormat::PanShaped.into();
        let tokenized = gateway
            .tokenize(request.clone())
            .await
            .unwrap()
            .into_inner();
        let shown = &pan[..shown_leading(pan)];
        // New rows store only what may be shown.
        let stored: String = sqlx::query_scalar("SELECT bin FROM tokens WHERE token = ?")
            .bind(&tokenized.token)
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(stored, shown);
        // A row as the release before the rule wrote it.
        sqlx::query("UPDATE tokens SET bin = ? WHERE token = ?")
            .bind(&pan[..6])
            .bind(&tokenized.token)
            .execute(&db)
            .await
            .unwrap();
        let metadata = gateway
            .get_token_metadata(pb::GetTokenMetadataRequest {
                merchant_id: "m-old".into(),
                token: tokenized.token.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .metadata
            .unwrap();
        assert_eq!(metadata.bin, shown, "{pan}");
        assert_eq!(metadata.last4, pan[pan.len() - 4..]);
        let brand = if pan.starts_with("67") {
            "unknown"
        } else {
            Brand::of(pan).as_str()
        };
        assert_eq!(metadata.brand, brand, "the brand the shown digits decide");
        assert_eq!(
            tokenized.metadata.as_ref().unwrap().brand,
            brand,
            "{pan} on tokenize"
        );
        // Tokenizing the card again returns the existing token, cut the same way.
        let again = gateway.tokenize(request).await.unwrap().into_inner();
        assert!(again.existing);
        assert_eq!(again.token, tokenized.token);
        assert_eq!(again.metadata.unwrap().bin, shown);
    }
}

#[tokio::test]
async fn metadata_and_delete() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let tokenized = gateway
        .tokenize(tokenize_request("m1", "5555555555554444"))
        .await
        .unwrap()
        .into_inner();
    // The CN-only identity is recognised by its subject CN and may read metadata.
    let mut cn_only = vault.client("cn-only").await;
    let metadata = cn_only
        .get_token_metadata(pb::GetTokenMetadataRequest {
            merchant_id: "m1".into(),
            token: tokenized.token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap();
    assert_eq!(metadata, tokenized.metadata.unwrap());

    gateway
        .delete_token(pb::DeleteTokenRequest {
            merchant_id: "m1".into(),
            token: tokenized.token.clone(),
        })
        .await
        .unwrap();
    let mut payments = vault.client("payments").await;
    let status = payments
        .detokenize(detokenize_request("m1", &tokenized.token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = gateway
        .delete_token(pb::DeleteTokenRequest {
            merchant_id: "m1".into(),
            token: tokenized.token,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn tokens_survive_a_restart() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let tokenized = gateway
        .tokenize(tokenize_request("m1", "378282246310005"))
        .await
        .unwrap()
        .into_inner();
    let addr = vault.addr.clone();
    let dir = vault.stop();
    // Same data directory, fresh process.
    let config = dir.path().join("vaultd.toml");
    let child = spawn_vaultd(
        &["serve", "--config", &config.to_string_lossy()],
        dir.path(),
        "info",
    );
    let (new_addr, mut child) = wait_for_listening(dir.path(), child).await;
    assert_ne!(new_addr, addr, "a new process on a new port");
    let ca = std::fs::read_to_string(dir.path().join("pki/ca.pem")).unwrap();
    let cert = std::fs::read_to_string(dir.path().join("pki/payments.pem")).unwrap();
    let key = std::fs::read_to_string(dir.path().join("pki/payments.key")).unwrap();
    let mut payments = connect(&new_addr, &ca, Some((&cert, &key))).await;
    let detokenized = payments
        .detokenize(detokenize_request("m1", &tokenized.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detokenized.pan, "378282246310005");
    terminate(&mut child);
}

#[tokio::test]
async fn concurrent_first_use_and_same_card_end_with_one_key_and_one_token() {
    let vault = TestVault::start().await;
    let gateway = vault.client("gateway").await;
    let calls = (0..16).map(|_| {
        let mut client = gateway.clone();
        tokio::spawn(async move {
            client
                .tokenize(tokenize_request("m-race", "6759649826438453"))
                .await
                .map(|r| r.into_inner())
        })
    });
    let mut tokens = std::collections::HashSet::new();
    let mut fresh = 0;
    for call in calls.collect::<Vec<_>>() {
        let response = call.await.unwrap().unwrap();
        fresh += usize::from(!response.existing);
        tokens.insert(response.token);
    }
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(fresh, 1, "exactly one call created the token");
    let db = vault.db().await;
    let keys: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM data_keys WHERE merchant_id = 'm-race'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(keys, 2, "one DEK and one fingerprint key");
    assert_eq!(vault.token_count().await, 1);
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE operation = 'tokenize' AND outcome = 'success'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(audited, 16, "every call is audited");
}
