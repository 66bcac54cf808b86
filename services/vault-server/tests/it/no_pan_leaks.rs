//! After 1,000 test PANs are tokenized (and some detokenized), and 200 more in batches, neither
//! the SQLite files nor the captured logs, at the most verbose log level, contain any of them
//! as a digit string.

use std::collections::HashSet;

use crate::harness::*;

#[tokio::test]
async fn thousand_pans_leave_no_trace_in_database_or_logs() {
    let vault = TestVault::start_with_log("trace").await;
    let mut gateway = vault.client("gateway").await;
    let mut payments = vault.client("payments").await;
    let mut pans = HashSet::new();
    while pans.len() < 1_000 {
        pans.insert(random_pan(["4", "51", "37", "6011"][pans.len() % 4]));
    }
    let mut tokens = Vec::new();
    for (i, pan) in pans.iter().enumerate() {
        let merchant = format!("merchant-{}", i % 7);
        // Some with separators, some bad ones that must be refused without echo.
        let sent = if i % 3 == 0 {
            format!(
                "{} {} {} {}",
                &pan[..4],
                &pan[4..8],
                &pan[8..12],
                &pan[12..]
            )
        } else {
            pan.clone()
        };
        let response = gateway
            .tokenize(tokenize_request(&merchant, &sent))
            .await
            .unwrap()
            .into_inner();
        tokens.push((merchant, response.token, pan.clone()));
    }
    // Two batches of 100 more, and a batch refused for one bad card (its good cards must not
    // be stored or logged either).
    let mut batch_pans = Vec::new();
    while batch_pans.len() < 300 {
        let pan = random_pan("4");
        if pans.insert(pan.clone()) {
            batch_pans.push(pan);
        }
    }
    let batch = |pans: &[String]| vault_proto::v1::TokenizeBatchRequest {
        merchant_id: "merchant-batch".to_owned(),
        cards: pans
            .iter()
            .map(|pan| vault_proto::v1::BatchCard {
                pan: pan.clone(),
                exp_month: Some(12),
                exp_year: Some(2031),
            })
            .collect(),
        token_format: vault_proto::v1::TokenFormat::Random.into(),
    };
    for chunk in batch_pans[..200].chunks(100) {
        let results = gateway
            .tokenize_batch(batch(chunk))
            .await
            .unwrap()
            .into_inner()
            .results;
        for (pan, result) in chunk.iter().zip(results) {
            tokens.push(("merchant-batch".to_owned(), result.token, pan.clone()));
        }
    }
    let mut refused = batch_pans[200..].to_vec();
    refused[50] = "4111111111111112".to_owned();
    assert!(gateway.tokenize_batch(batch(&refused)).await.is_err());

    for (merchant, token, pan) in tokens.iter().step_by(10) {
        let detokenized = payments
            .detokenize(detokenize_request(merchant, token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&detokenized.pan, pan);
        // A reason holding the PAN is refused, and must not be logged either.
        let mut request = detokenize_request(merchant, token);
        request.reason = format!("customer says {pan}");
        assert!(payments.detokenize(request).await.is_err());
        // A PAN sent where a token belongs is refused too.
        assert!(
            payments
                .detokenize(detokenize_request(merchant, pan))
                .await
                .is_err()
        );
    }
    // A checkpoint would move WAL pages into the main file; scan both as they are.
    let mut files = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", vault.db_path().display());
        if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    assert!(
        files.iter().any(|(p, _)| p.ends_with("-wal")),
        "the WAL is scanned"
    );
    let logs = vault.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "logs are verbose"
    );
    for (path, bytes) in &files {
        assert_eq!(find_pan(bytes, &pans), None, "a test PAN is in {path}");
    }
    assert_eq!(
        find_pan(logs.as_bytes(), &pans),
        None,
        "a test PAN is in the logs"
    );
    // The scanner itself finds a PAN where there is one.
    let planted = format!("x{}y", pans.iter().next().unwrap());
    assert!(find_pan(planted.as_bytes(), &pans).is_some());
}

/// A PAN from `pans` that appears in `haystack` as a digit string, in one pass: every run of
/// digits is checked at every offset for every PAN length.
fn find_pan(haystack: &[u8], pans: &HashSet<String>) -> Option<String> {
    let lengths: HashSet<usize> = pans.iter().map(String::len).collect();
    haystack
        .split(|b| !b.is_ascii_digit())
        .filter(|run| run.len() >= 12)
        .find_map(|run| {
            lengths.iter().find_map(|&len| {
                run.windows(len)
                    .filter_map(|w| std::str::from_utf8(w).ok())
                    .find(|w| pans.contains(*w))
                    .map(str::to_owned)
            })
        })
}
