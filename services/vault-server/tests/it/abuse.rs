//! Abuse resistance end to end: the tokenize dedup oracle is closed by the enumeration guard
//! (two replicas on PostgreSQL and a restart between), and a flooding caller is rate-limited
//! without touching another caller's quota or growing the audit trail without bound.

use std::collections::HashSet;
use std::time::Duration;

use rand::seq::SliceRandom;
use tonic::Code;
use vault_core::pan::luhn_valid;
use vault_proto::v1::token_service_client::TokenServiceClient;
use vault_proto::v1::{self as pb};
use vault_store::testing::TestDatabase;

use crate::harness::*;

/// The guard's budget in these tests: the default (12 distinct cards per bucket per window,
/// 4 per request).
const BUDGET: usize = 12;

/// `n` Luhn-valid 16-digit cards with the victim's first six and last four digits (what its
/// metadata shows), the victim's own card among them at `victim_at`.
fn candidates(victim: &str, n: usize, victim_at: usize) -> Vec<String> {
    let (bin, last4) = (&victim[..6], &victim[12..]);
    let mut middles: Vec<u32> = (0..1_000_000).collect();
    middles.shuffle(&mut rand::rng());
    let mut out: Vec<String> = middles
        .into_iter()
        .map(|m| format!("{bin}{m:06}{last4}"))
        .filter(|pan| luhn_valid(pan) && pan != victim)
        .take(n - 1)
        .collect();
    out.insert(victim_at, victim.to_owned());
    out
}

fn format_of(i: usize) -> pb::TokenFormat {
    if i.is_multiple_of(2) {
        pb::TokenFormat::Random
    } else {
        pb::TokenFormat::PanShaped
    }
}

/// One probe: a single Tokenize or a batch; what came back.
#[derive(Debug)]
enum Answer {
    /// Tokens and fingerprints, one per card.
    Tokens(Vec<(String, String)>),
    /// The refusal: code and message, and whether it said when to retry.
    Refused(Code, String, bool),
}

async fn probe(
    client: &mut TokenServiceClient<tonic::transport::Channel>,
    merchant: &str,
    cards: &[String],
    format: pb::TokenFormat,
) -> Answer {
    let result = if let [pan] = cards {
        let mut request = tokenize_request(merchant, pan);
        request.token_format = format.into();
        client.tokenize(request).await.map(|r| {
            let r = r.into_inner();
            vec![(r.token, r.fingerprint)]
        })
    } else {
        client
            .tokenize_batch(pb::TokenizeBatchRequest {
                merchant_id: merchant.to_owned(),
                cards: cards
                    .iter()
                    .map(|pan| pb::BatchCard {
                        pan: pan.clone(),
                        exp_month: None,
                        exp_year: None,
                    })
                    .collect(),
                token_format: format.into(),
            })
            .await
            .map(|r| {
                r.into_inner()
                    .results
                    .into_iter()
                    .map(|r| (r.token, r.fingerprint))
                    .collect()
            })
    };
    match result {
        Ok(tokens) => Answer::Tokens(tokens),
        Err(status) => Answer::Refused(
            status.code(),
            status.message().to_owned(),
            status.metadata().get("retry-after").is_some(),
        ),
    }
}

/// What the prober got out of one bucket.
struct Probed {
    cards: Vec<String>,
    /// Candidates answered with a token, and the tokens.
    answered: Vec<(String, String)>,
    /// The victim's token and fingerprint, if it was answered.
    victim_answer: Option<(String, String)>,
    /// Each refusal: whether it held the victim, and its message.
    refusals: Vec<(bool, String)>,
}

/// Sends `cards` as the prober: singles and batches of three (under the per-request rule),
/// alternating formats and replicas (`addrs`); `between(i)` runs before the i-th request.
async fn enumerate(
    vault: &mut Option<TestVault>,
    replica: &str,
    merchant: &str,
    victim: &str,
    cards: Vec<String>,
    restart_after: Option<(usize, &str)>,
) -> Probed {
    let mut probed = Probed {
        cards: cards.clone(),
        answered: Vec::new(),
        victim_answer: None,
        refusals: Vec::new(),
    };
    let mut next = 0;
    let mut step = 0;
    let mut restarted = false;
    while next < cards.len() {
        if let Some((after, storage)) = restart_after
            && next >= after
            && !restarted
        {
            let v = vault.take().unwrap().restart_with(storage, DEV_KEK).await;
            *vault = Some(v);
            restarted = true;
        }
        let v = vault.as_ref().unwrap();
        let size = if step % 3 == 2 { 3 } else { 1 };
        let chunk = cards[next..(next + size).min(cards.len())].to_vec();
        let addr = if step % 2 == 0 {
            v.addr.as_str()
        } else {
            replica
        };
        let mut client = v.client_at(addr, "prober").await;
        match probe(&mut client, merchant, &chunk, format_of(step)).await {
            Answer::Tokens(tokens) => {
                for (pan, (t, f)) in chunk.iter().zip(tokens) {
                    if pan == victim {
                        probed.victim_answer = Some((t.clone(), f.clone()));
                    }
                    probed.answered.push((pan.clone(), t));
                }
            }
            Answer::Refused(code, message, retry) => {
                assert_eq!(code, Code::ResourceExhausted, "{message}");
                assert!(retry, "a refusal says when to retry");
                probed
                    .refusals
                    .push((chunk.iter().any(|c| c == victim), message));
            }
        }
        next += chunk.len();
        step += 1;
    }
    probed
}

/// A tokenize-only caller (tokenize and metadata) enumerates a victim's bucket: Luhn-valid
/// cards with the BIN and last four its metadata shows, through single calls and batches, in
/// both formats, on two replicas sharing PostgreSQL, the first restarted half way. At most the
/// budget of candidates is ever answered; once it is spent the victim's card gets exactly the
/// refusal every other candidate gets and never its token or fingerprint, whatever is deleted;
/// the trip is in the audit trail. The gateway's ordinary dedup still works.
#[tokio::test]
async fn the_dedup_oracle_answers_at_most_the_budget_then_the_same_refusal_for_all() {
    let db = TestDatabase::create()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let storage = format!("url = {:?}\n", db.url);
    // The guard at its defaults; other limits generous (the harness adds them).
    let mut vault = Some(TestVault::start_on(&db.url, "info").await);
    let two = vault.as_ref().unwrap().replica(2).await;
    let merchant = "shop-1";

    // The gateway tokenizes two customers' cards, as at ingress.
    let victims = [random_pan("4"), random_pan("5")];
    let mut gateway = vault.as_ref().unwrap().client("gateway").await;
    let mut issued = Vec::new();
    for victim in &victims {
        let first = gateway
            .tokenize(tokenize_request(merchant, victim))
            .await
            .unwrap()
            .into_inner();
        issued.push((first.token, first.fingerprint));
    }

    // The prober reads what metadata shows: first six, last four, length.
    let mut prober = vault.as_ref().unwrap().client("prober").await;
    let shown = prober
        .get_token_metadata(pb::GetTokenMetadataRequest {
            merchant_id: merchant.into(),
            token: issued[0].0.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap();
    assert_eq!(shown.bin, victims[0][..6]);
    assert_eq!(shown.last4, victims[0][12..]);

    // Bucket one: the victim anywhere among 40 candidates, a restart after 15. Bucket two: the
    // victim after the budget, so its answer must be the refusal.
    let n = 40;
    let plans = [
        (0, rand::random_range(0..n), Some((15, storage.as_str()))),
        (1, rand::random_range(BUDGET..n), None),
    ];
    let mut message = None;
    let mut sent: Vec<String> = victims.to_vec();
    for (v, at, restart) in plans {
        let victim = &victims[v];
        let (token, fingerprint) = &issued[v];
        let cards = candidates(victim, n, at);
        sent.extend(cards.iter().cloned());
        let probed = enumerate(&mut vault, &two.addr, merchant, victim, cards, restart).await;
        let distinct: HashSet<_> = probed.answered.iter().map(|(pan, _)| pan).collect();
        assert!(distinct.len() <= BUDGET, "answered {}", distinct.len());
        assert_eq!(distinct.len(), probed.answered.len());
        // Every refusal reads the same, the victim's included, in both buckets.
        for (_, m) in &probed.refusals {
            assert_eq!(message.get_or_insert_with(|| m.clone()), m);
        }
        let victim_index = probed.cards.iter().position(|c| c == victim).unwrap();
        if victim_index >= BUDGET {
            assert!(probed.refusals.iter().any(|(has, _)| *has));
            assert!(probed.victim_answer.is_none());
        }
        if let Some(answer) = &probed.victim_answer {
            // Answered within the budget: the residual the guard allows (k per window).
            // Same card, same fingerprint; the same token if asked in the gateway's format
            // (RANDOM), else the card's own PAN-shaped token.
            assert!(victim_index < BUDGET);
            assert_eq!(&answer.1, fingerprint);
            assert!(
                &answer.0 == token || answer.0.bytes().all(|b| b.is_ascii_digit()),
                "{answer:?}"
            );
        }

        let v = vault.as_ref().unwrap();
        // Deleting the probe tokens does not reset the count.
        for (_, probe_token) in &probed.answered {
            if probe_token != token {
                v.client("gateway")
                    .await
                    .delete_token(pb::DeleteTokenRequest {
                        merchant_id: merchant.into(),
                        token: probe_token.clone(),
                    })
                    .await
                    .unwrap();
            }
        }
        // Once spent, the victim's card gets the refusal: either format, alone or in a
        // batch, on either replica.
        for (addr, format) in [
            (v.addr.as_str(), pb::TokenFormat::Random),
            (two.addr.as_str(), pb::TokenFormat::PanShaped),
        ] {
            let mut client = v.client_at(addr, "prober").await;
            for cards in [
                vec![victim.clone()],
                vec![victim.clone(), probed.cards[0].clone()],
            ] {
                match probe(&mut client, merchant, &cards, format).await {
                    Answer::Refused(Code::ResourceExhausted, m, true) => {
                        assert_eq!(Some(&m), message.as_ref());
                    }
                    other => panic!("the spent bucket answered {other:?}"),
                }
            }
        }
        // One caller's trip never refuses another: the gateway's dedup still answers.
        let again = v
            .client_at(&two.addr, "gateway")
            .await
            .tokenize(tokenize_request(merchant, victim))
            .await
            .unwrap()
            .into_inner();
        assert!(again.existing);
        assert_eq!((&again.token, &again.fingerprint), (token, fingerprint));
    }

    // One request with more than four cards of a fresh bucket spends it at once.
    let fresh = random_pan("37");
    let five = candidates(&fresh, 5, 0);
    let v = vault.as_ref().unwrap();
    let mut client = v.client("prober").await;
    assert!(matches!(
        probe(&mut client, merchant, &five, pb::TokenFormat::Random).await,
        Answer::Refused(Code::ResourceExhausted, ..)
    ));
    assert!(matches!(
        probe(&mut client, merchant, &five[..1], pb::TokenFormat::Random).await,
        Answer::Refused(Code::ResourceExhausted, ..)
    ));

    // Each trip is an audit record naming the bucket (three trips), and each refusal is
    // recorded as refused by the guard.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let details: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE caller = $1 AND outcome = 'enumeration_refused'",
    )
    .bind(PROBER)
    .fetch_all(&pool)
    .await
    .unwrap();
    let tripped: Vec<_> = details
        .iter()
        .flatten()
        .filter(|d| d.starts_with("enumeration guard tripped"))
        .collect();
    assert_eq!(tripped.len(), 3, "{details:?}");
    let named = format!("16-digit cards {}…{}", &victims[0][..6], &victims[0][12..]);
    assert!(tripped.iter().any(|d| d.contains(&named)), "{tripped:?}");
    let v = vault.as_ref().unwrap();
    let logs = v.logs() + &read_logs(&v.dir.path().join("replica-2"));
    assert!(logs.contains("enumeration guard tripped"));
    // No card the prober or the gateway sent is in the logs, the trail or the tallies.
    let stored: String = sqlx::query_scalar(
        "SELECT COALESCE(string_agg(concat_ws(' ', caller, origin, operation, detail, outcome, \
         resource, merchant_id, token, request_id, reason), ' '), '') FROM audit_log",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let tallies: String = sqlx::query_scalar(
        "SELECT COALESCE(string_agg(subject || ' ' || encode(first_item, 'escape'), ' '), '') \
         FROM abuse_tallies",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for pan in &sent {
        assert!(!logs.contains(pan.as_str()), "a PAN in the logs");
        assert!(!stored.contains(pan.as_str()), "a PAN in the audit trail");
        assert!(!tallies.contains(pan.as_str()), "a PAN in the tallies");
    }
    drop(two);
}

/// Calls `send` every `every` for `for_how_long`, each call in a task of its own (so a slow
/// answer does not slow the sender); returns (answered, refused with a retry hint).
async fn send_at<F, Fut>(every: Duration, for_how_long: Duration, send: F) -> (usize, usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::now() + for_how_long;
    let mut calls = Vec::new();
    while tokio::time::Instant::now() < end {
        ticks.tick().await;
        calls.push(tokio::spawn(send()));
    }
    let (mut ok, mut limited) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.metadata().get("retry-after").is_some());
                assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
                limited += 1;
            }
        }
    }
    (ok, limited)
}

/// A caller sending five times its quota is limited while a second caller at half its own
/// quota sees no refusal. The flood adds its answered calls to the audit trail, but its
/// refusals only one record per interval, and their count when the interval (or the vault)
/// ends.
#[tokio::test]
async fn a_flood_is_limited_without_touching_another_callers_quota_or_the_trail() {
    let vault = TestVault::start_with_keys(
        "url = \"sqlite:vault.db\"\n",
        "[limits]\nmetadata = { per_second = 20, burst = 20 }\nrecord_refusals_every_secs = 60\n",
        "info",
    )
    .await;
    let token = vault.tokenize_at(&vault.addr, "m1", &random_pan("4")).await;
    let request = move || pb::GetTokenMetadataRequest {
        merchant_id: "m1".into(),
        token: token.clone(),
    };
    let (flooder, calm) = (vault.client("gateway").await, vault.client("cn-only").await);
    let seconds = Duration::from_secs(3);
    let flood = send_at(Duration::from_millis(10), seconds, || {
        let (mut client, request) = (flooder.clone(), request());
        async move { client.get_token_metadata(request).await.map(|_| ()) }
    });
    let steady = send_at(Duration::from_millis(100), seconds, || {
        let (mut client, request) = (calm.clone(), request());
        async move { client.get_token_metadata(request).await.map(|_| ()) }
    });
    let ((flood_ok, flood_limited), (calm_ok, calm_limited)) = tokio::join!(flood, steady);
    assert_eq!(calm_limited, 0, "the calm caller was refused");
    assert!(calm_ok >= 25, "{calm_ok}");
    assert!(
        flood_limited >= 100,
        "{flood_ok} answered, {flood_limited} limited"
    );
    // At most the burst plus the rate over the run (with a second's slack) got through.
    assert!(flood_ok <= 20 + 20 * 4, "{flood_ok}");

    // The trail: every answered call, one recorded refusal, and the count of the others,
    // written when the vault stops.
    let records = |db: sqlx::SqlitePool| async move {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT outcome, detail FROM audit_log WHERE caller = ?1 AND operation = 'metadata'",
        )
        .bind(GATEWAY)
        .fetch_all(&db)
        .await
        .unwrap()
    };
    let before_stop = records(vault.db().await).await;
    let refused: Vec<_> = before_stop
        .iter()
        .filter(|(outcome, _)| outcome == "rate_limited")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(before_stop.len(), flood_ok + 1, "{before_stop:?}");
    let dir = vault.stop();
    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .connect(&format!("sqlite:{}", dir.path().join("vault.db").display()))
        .await
        .unwrap();
    let after_stop = records(db).await;
    assert_eq!(after_stop.len(), flood_ok + 2);
    let summary = format!("rate limit: {} refused calls since", flood_limited - 1);
    assert!(
        after_stop
            .iter()
            .any(|(_, detail)| detail.as_deref().is_some_and(|d| d.starts_with(&summary))),
        "{after_stop:?}"
    );
}

async fn legacy_metadata(
    vault: &TestVault,
    merchant: &str,
    token: &str,
) -> Result<tonic::Response<pb::GetTokenMetadataResponse>, tonic::Status> {
    vault
        .client(LEGACY_CN)
        .await
        .get_token_metadata(pb::GetTokenMetadataRequest {
            merchant_id: merchant.into(),
            token: token.into(),
        })
        .await
}

/// Merchant ids and identities accepted before the card-number rule joined digit groups
/// across letters (here: a vault run with `card_number_max_gap = 0`) stay usable and their
/// tokens reachable under the tighter rule; vaultd reports them at start by digest only. New
/// ones are refused.
#[tokio::test]
async fn ids_in_use_before_the_rule_tightened_stay_usable_and_are_reported() {
    let storage = "url = \"sqlite:vault.db\"\n";
    let lax = format!("{DEV_KEK}[input]\ncard_number_max_gap = 0\n");
    let vault =
        TestVault::start_with_keys(storage, "[input]\ncard_number_max_gap = 0\n", "info").await;
    let policy = vault.dir.path().join("policy.toml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(&format!(
        "\n[[caller]]\nidentity = \"{LEGACY_CN}\"\noperations = [\"metadata\"]\nmerchants = [\"*\"]\n"
    ));
    std::fs::write(&policy, text).unwrap();
    let vault = vault.restart_with(storage, &lax).await;
    let (merchant, pan) = ("m4111x1111y1111z1111", random_pan("4"));
    let token = vault.tokenize_at(&vault.addr, merchant, &pan).await;
    assert!(legacy_metadata(&vault, merchant, &token).await.is_ok());

    // The tighter default rule.
    let vault = vault.restart_with(storage, DEV_KEK).await;
    let logs = vault.logs();
    let reported: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("the card-number rule"))
        .collect();
    assert_eq!(reported.len(), 2, "{reported:?}");
    assert!(reported.iter().any(|l| l.contains("policy identity")));
    assert!(reported.iter().any(|l| l.contains("stored merchant")));
    assert!(
        !logs.contains(merchant) && !logs.contains("4000x0566"),
        "ids in the log"
    );
    // Still usable: the listed identity, the stored merchant, its token and its dedup.
    assert!(legacy_metadata(&vault, merchant, &token).await.is_ok());
    assert_eq!(
        vault.detokenize_at(&vault.addr, merchant, &token).await,
        pan
    );
    let again = vault
        .client("gateway")
        .await
        .tokenize(tokenize_request(merchant, &pan))
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing);
    // New ones are refused: a merchant, a reason.
    let refused = vault
        .client("gateway")
        .await
        .tokenize(tokenize_request("m4111y1111z1111x1111", &pan))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "merchant_id: must not contain a card number"
    );
    let mut request = detokenize_request(merchant, &token);
    request.reason = "refund 4111 x 1111 y 1111 z 1111".into();
    let refused = vault
        .client("payments")
        .await
        .detokenize(request)
        .await
        .unwrap_err();
    assert_eq!(refused.message(), "reason: must not contain a card number");
    // A caller the policy refuses learns nothing of which such ids exist: the stored one and
    // an unknown one get the same refusal, and the unknown one is not written to the trail.
    let unknown = "m4111z1111x1111y1111";
    for id in [merchant, unknown] {
        let refused = vault
            .client("cn-only")
            .await
            .tokenize(tokenize_request(id, &pan))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{id}");
    }
    let named: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT merchant_id FROM audit_log WHERE caller = 'cn-only' ORDER BY seq",
    )
    .fetch_all(&vault.db().await)
    .await
    .unwrap();
    assert_eq!(named, [None, None]);
}

/// A caller may create only `new_merchants_per_hour` merchants an hour, whatever its policy
/// (`merchants = ["*"]`) allows; the refusal comes before any key is made, names no merchant
/// it did not create, and another caller's allowance is its own. Merchants that exist are
/// unaffected.
#[tokio::test]
async fn new_merchants_are_capped_per_caller_before_any_key_is_made() {
    let vault = TestVault::start_with_keys(
        "url = \"sqlite:vault.db\"\n",
        "[guard]\nnew_merchants_per_hour = 3\n",
        "info",
    )
    .await;
    let pan = random_pan("4");
    let mut gateway = vault.client("gateway").await;
    for m in ["m1", "m2", "m3"] {
        gateway.tokenize(tokenize_request(m, &pan)).await.unwrap();
    }
    let keys_before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys")
        .fetch_one(&vault.db().await)
        .await
        .unwrap();
    let refused = gateway
        .tokenize(tokenize_request("m4", &pan))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.metadata().get("retry-after").is_some());
    assert_eq!(
        refused.message(),
        "this caller created too many new merchants this hour"
    );
    let keys_after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys")
        .fetch_one(&vault.db().await)
        .await
        .unwrap();
    assert_eq!(
        keys_after, keys_before,
        "no key was made for the refused merchant"
    );
    // Existing merchants still work; another caller has its own allowance.
    let again = gateway
        .tokenize(tokenize_request("m2", &pan))
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing);
    vault
        .client("prober")
        .await
        .tokenize(tokenize_request("m4", &pan))
        .await
        .unwrap();
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM audit_log WHERE caller = ?1 AND merchant_id = 'm4'",
    )
    .bind(GATEWAY)
    .fetch_all(&vault.db().await)
    .await
    .unwrap();
    assert_eq!(outcomes, ["rate_limited"]);
}

/// A caller allowed every merchant gets the budget once per bucket, not once per merchant
/// that holds the card: the victim's card stored at five merchants, probed at each in turn
/// (four other candidates, then the victim), is answered for at most the budget of
/// (merchant, card) pairs in all, and refused at the merchants probed after that.
#[tokio::test]
async fn the_budget_is_per_bucket_across_every_merchant() {
    let vault = TestVault::start().await;
    let victim = random_pan("4");
    let merchants: Vec<String> = (0..5).map(|i| format!("shop-{i}")).collect();
    let mut gateway = vault.client("gateway").await;
    for merchant in &merchants {
        gateway
            .tokenize(tokenize_request(merchant, &victim))
            .await
            .unwrap();
    }
    let others = candidates(&victim, merchants.len() * 4 + 1, 0);
    let mut prober = vault.client("prober").await;
    let (mut answered, mut victim_refused_at) = (0, Vec::new());
    for (i, merchant) in merchants.iter().enumerate() {
        let mut cards = others[1 + i * 4..1 + (i + 1) * 4].to_vec();
        cards.push(victim.clone());
        for card in &cards {
            match probe(
                &mut prober,
                merchant,
                std::slice::from_ref(card),
                format_of(i),
            )
            .await
            {
                Answer::Tokens(_) => answered += 1,
                Answer::Refused(code, message, _) => {
                    assert_eq!(code, Code::ResourceExhausted, "{message}");
                    if *card == victim {
                        victim_refused_at.push(i);
                    }
                }
            }
        }
    }
    assert_eq!(answered, BUDGET, "answered across merchants");
    // 5 + 5 answered at the first two merchants, 2 at the third: the victim's card is refused
    // at the last three.
    assert_eq!(victim_refused_at, [2, 3, 4]);
    // The gateway, another caller, still gets its dedup at every merchant.
    for merchant in &merchants {
        let again = gateway
            .tokenize(tokenize_request(merchant, &victim))
            .await
            .unwrap()
            .into_inner();
        assert!(again.existing);
    }
}

/// A call the policy refuses costs one unit of the small `ungranted` quota whatever it
/// carries: a batch larger than that quota's burst is refused as denied (and recorded so),
/// not as rate-limited forever.
#[tokio::test]
async fn an_ungranted_batch_costs_one_call_and_is_recorded_as_denied() {
    let vault = TestVault::start_with_keys(
        "url = \"sqlite:vault.db\"\n",
        "[limits]\nungranted = { per_second = 1, burst = 3 }\n",
        "info",
    )
    .await;
    let cards: Vec<String> = (0..100).map(|_| random_pan("4")).collect();
    let mut metadata_only = vault.client("cn-only").await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        match probe(&mut metadata_only, "m1", &cards, pb::TokenFormat::Random).await {
            Answer::Refused(code, ..) => codes.push(code),
            Answer::Tokens(_) => panic!("a metadata-only caller tokenized"),
        }
    }
    assert_eq!(
        codes,
        [
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::ResourceExhausted
        ]
    );
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM audit_log WHERE caller = 'cn-only' AND operation = 'tokenize' \
         ORDER BY seq",
    )
    .fetch_all(&vault.db().await)
    .await
    .unwrap();
    assert_eq!(outcomes, ["denied", "denied", "denied", "rate_limited"]);
}
