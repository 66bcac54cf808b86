//! A PostgreSQL outage under load, on a throwaway cluster (initdb and pg_ctl in a temp dir, a
//! random port; never the machine's own server): calls fail fast with UNAVAILABLE, health says
//! NOT_SERVING (and the HTTP readiness probe 503), the vault recovers by itself when the database returns, and every token it
//! acknowledged, before or during the outage, still detokenizes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::Code;

use crate::harness::*;
use crate::pg_cluster::ThrowawayCluster;

/// The vault's `storage.call_timeout_ms`: the most one call may spend on the store.
const CALL_TIMEOUT: Duration = Duration::from_millis(1_500);

#[tokio::test]
async fn database_outage_fails_fast_reports_not_serving_and_recovers() {
    let cluster = ThrowawayCluster::create(None);
    let vault = TestVault::start_with_keys(
        &format!(
            "url = {:?}\nconnect_timeout_ms = 1000\nstatement_timeout_ms = 1000\n\
             call_timeout_ms = {}\n",
            cluster.url(),
            CALL_TIMEOUT.as_millis()
        ),
        METRICS_ON,
        "info",
    )
    .await;
    vault.wait_for_health(ServingStatus::Serving).await;
    let metrics = vault.metrics_addr();
    assert_eq!(
        http("GET", &metrics, "/ready").await,
        (200, "ready\n".to_owned())
    );

    // Load: tokenize fresh cards until told to stop, recording every acknowledged token.
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        let mut gateway = vault.client("gateway").await;
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let pan = random_pan("5");
                if let Ok(response) = gateway.tokenize(tokenize_request("m1", &pan)).await {
                    acknowledged
                        .lock()
                        .await
                        .push((response.into_inner().token, pan));
                }
            }
        })
    };
    while acknowledged.lock().await.len() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.stop_immediately();
    // During the outage: UNAVAILABLE within the configured call timeout (plus the gRPC round
    // trip on a loaded 2-core machine).
    let mut gateway = vault.client("gateway").await;
    let mut payments = vault.client("payments").await;
    for _ in 0..3 {
        let started = Instant::now();
        let status = gateway
            .tokenize(tokenize_request("m1", &random_pan("4")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let elapsed = started.elapsed();
        assert!(
            elapsed < CALL_TIMEOUT + Duration::from_secs(1),
            "{elapsed:?}"
        );
        let (token, _) = acknowledged.lock().await[0].clone();
        let status = payments
            .detokenize(detokenize_request("m1", &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    vault.wait_for_health(ServingStatus::NotServing).await;
    // The HTTP readiness probe (Kubernetes') says so too, and names what is down.
    assert_eq!(
        http("GET", &metrics, "/ready").await,
        (503, "not ready: store unreachable\n".to_owned())
    );

    cluster.start();
    vault.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(http("GET", &metrics, "/ready").await.0, 200);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    // Nothing acknowledged was lost, and the vault needed no restart.
    let acknowledged = acknowledged.lock().await.clone();
    assert!(acknowledged.len() >= 50);
    for (token, pan) in &acknowledged {
        let detokenized = payments
            .detokenize(detokenize_request("m1", token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&detokenized.pan, pan);
    }
    // No token without its audit record: every stored token has a successful tokenize row.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url())
        .await
        .unwrap();
    let orphans: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tokens t WHERE NOT EXISTS (SELECT 1 FROM audit_log a \
         WHERE a.token = t.token AND a.operation = 'tokenize' AND a.outcome = 'success')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
    // No audit record of a created token without the token.
    let phantoms: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log a WHERE a.operation = 'tokenize' \
         AND a.outcome = 'success' AND a.detail IS NULL \
         AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.token = a.token)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(phantoms, 0);
}
