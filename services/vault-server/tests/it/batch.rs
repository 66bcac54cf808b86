//! TokenizeBatch over mutual TLS: results in card order, dedup within and across calls, one
//! audit record per card, and a bad card refusing the whole batch before anything is stored.

use std::collections::HashMap;

use tonic::Code;
use vault_proto::v1 as pb;

use crate::harness::*;

fn batch_request(merchant: &str, pans: &[String]) -> pb::TokenizeBatchRequest {
    pb::TokenizeBatchRequest {
        merchant_id: merchant.to_owned(),
        cards: pans
            .iter()
            .map(|pan| pb::BatchCard {
                pan: pan.clone(),
                exp_month: Some(12),
                exp_year: Some(2031),
            })
            .collect(),
        token_format: pb::TokenFormat::Random.into(),
    }
}

#[tokio::test]
async fn a_batch_tokenizes_each_card_in_order_and_dedups() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let mut payments = vault.client("payments").await;
    let earlier = random_pan("4");
    let before = gateway
        .tokenize(tokenize_request("m1", &earlier))
        .await
        .unwrap()
        .into_inner();

    let mut pans: Vec<String> = (0..60)
        .map(|i| random_pan(["4", "51", "37"][i % 3]))
        .collect();
    pans[10] = earlier.clone();
    pans[40] = pans[20].clone();
    let response = gateway
        .tokenize_batch(batch_request("m1", &pans))
        .await
        .unwrap();
    let request_id = request_id(response.metadata());
    let results = response.into_inner().results;
    assert_eq!(results.len(), pans.len());
    let mut first_token = HashMap::new();
    for (i, (pan, result)) in pans.iter().zip(&results).enumerate() {
        let metadata = result.metadata.as_ref().unwrap();
        assert_eq!(metadata.last4, pan[pan.len() - 4..], "card {i}");
        let token = first_token
            .entry(pan.clone())
            .or_insert(result.token.clone());
        assert_eq!(&result.token, token, "card {i}: one token per card");
        let detokenized = payments
            .detokenize(detokenize_request("m1", &result.token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&detokenized.pan, pan, "card {i}");
    }
    // The card tokenized before the batch keeps its token; the one given twice got one token.
    assert_eq!(results[10].token, before.token);
    assert!(results[10].existing);
    assert_eq!(results[40].token, results[20].token);
    // Of the card given twice, one copy stored it and the other found it.
    assert_ne!(results[20].existing, results[40].existing);
    assert_eq!(results.iter().filter(|r| r.existing).count(), 2);
    assert_eq!(vault.token_count().await, 60 - 1);

    // One audit record per card, under the call's request id, each naming its token.
    let rows = audit_rows(&vault.db().await, &request_id).await;
    assert_eq!(rows.len(), pans.len());
    let mut audited: Vec<_> = rows.iter().map(|r| r.4.clone().unwrap()).collect();
    let mut issued: Vec<_> = results.iter().map(|r| r.token.clone()).collect();
    audited.sort();
    issued.sort();
    assert_eq!(audited, issued);
    assert!(rows.iter().all(|r| r.2 == "tokenize" && r.5 == "success"));

    // The same batch again returns the same tokens, all existing, and stores nothing new.
    let again = gateway
        .tokenize_batch(batch_request("m1", &pans))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        again.iter().map(|r| &r.token).collect::<Vec<_>>(),
        results.iter().map(|r| &r.token).collect::<Vec<_>>()
    );
    assert!(again.iter().all(|r| r.existing));
    assert_eq!(vault.token_count().await, 60 - 1);
}

#[tokio::test]
async fn a_bad_card_refuses_the_whole_batch_naming_it() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let mut pans: Vec<String> = (0..5).map(|_| random_pan("4")).collect();
    // Luhn-invalid: the last digit moved by one.
    let bad = {
        let mut digits = pans[3].clone();
        let last = digits.pop().unwrap().to_digit(10).unwrap();
        digits.push(char::from_digit((last + 1) % 10, 10).unwrap());
        digits
    };
    pans[3] = bad.clone();
    let status = gateway
        .tokenize_batch(batch_request("m1", &pans))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("cards[3].pan: "),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains(&bad[..12]),
        "{}",
        status.message()
    );
    assert_eq!(
        vault.token_count().await,
        0,
        "nothing of a refused batch is stored"
    );
    let rows = audit_rows(&vault.db().await, &request_id(status.metadata())).await;
    assert_eq!(rows.len(), 1, "a refused batch is one audited call");
    assert_eq!(rows[0].5, "invalid_argument");

    for (cards, why) in [(0, "empty"), (1001, "too many")] {
        let pans: Vec<String> = (0..cards).map(|_| random_pan("4")).collect();
        let status = gateway
            .tokenize_batch(batch_request("m1", &pans))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{why}");
        assert!(
            status.message().starts_with("cards: "),
            "{why}: {}",
            status.message()
        );
    }
    // A caller without the tokenize permission is refused before any card is looked at.
    let mut payments = vault.client("payments").await;
    let status = payments
        .tokenize_batch(batch_request("m1", &[random_pan("4")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(vault.token_count().await, 0);
}

/// The loadtest tool's batch scenario against a real vaultd: every card of every batch gets a
/// token, and the check afterwards detokenizes each one back to its PAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_batches_all_check_out() {
    let vault = TestVault::start_with_log("warn").await;
    let report = loadtest::run(loadtest::Options {
        target: loadtest::Target::dev(vault.dir.path(), vault.addr.clone()),
        scenario: loadtest::Scenario::Batch { size: 25 },
        load: loadtest::Load::Closed { concurrency: 4 },
        length: loadtest::Length::Requests(12),
        merchants: 2,
        check: true,
        ..loadtest::Options::default()
    })
    .await
    .unwrap();
    assert_eq!(
        (report.count(), report.ok()),
        (12, 12),
        "{}",
        report.summary()
    );
    assert!(
        report.summary().contains("300 tokenized"),
        "{}",
        report.summary()
    );
    let check = report.check.as_ref().unwrap();
    assert!(check.passed(), "{check:?}");
    assert_eq!(check.checked, 300, "{check:?}");
    assert_eq!(vault.token_count().await, 300);
}

/// Cards that find the DEK's use lease spent at the same moment wait for one reservation
/// rather than each reserving a lease of their own: after a batch of 400 cards with leases of
/// 16, the store counts the uses made, rounded up to a lease, not hundreds of leases.
#[tokio::test]
async fn concurrent_cards_share_one_lease_reservation_at_a_time() {
    let vault =
        TestVault::start_with_keys("url = \"sqlite:vault.db\"\n", "[dek]\nlease = 16\n", "warn")
            .await;
    let mut gateway = vault.client("gateway").await;
    let pans: Vec<String> = (0..400).map(|_| random_pan("4")).collect();
    let results = gateway
        .tokenize_batch(batch_request("m1", &pans))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 400);
    let uses: i64 = sqlx::query_scalar(
        "SELECT uses FROM data_keys WHERE merchant_id = 'm1' AND purpose = 'dek' AND version = 1",
    )
    .fetch_one(&vault.db().await)
    .await
    .unwrap();
    assert!(
        (400..=416).contains(&uses),
        "{uses} uses reserved for 400 cards"
    );
}
