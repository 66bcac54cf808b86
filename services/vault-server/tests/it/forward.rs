//! The forward proxy end to end, against a fake payment processor (`processor.rs`): the card
//! arrives rendered in JSON and form bodies, and comes back masked however the processor
//! echoes it; every refusal is audited; two records per forward; a lost second record is
//! recorded as `unknown` later; nothing of the card leaks into logs, metrics or files.

use std::collections::HashMap;

use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use vault_proto::v1 as pb;
use vault_proto::v1::destination_admin_service_client::DestinationAdminServiceClient;

use crate::harness::*;
use crate::processor::Processor;

/// A destination for `processor`: JSON and form templates, charges and captures, an
/// idempotency header in, the request id and the card-echoing header out.
pub fn spec(name: &str, processor: &Processor) -> Value {
    json!({
        "name": name,
        "base_url": processor.base_url,
        "trust_anchor_pem": processor.ca_pem,
        "methods": ["POST"],
        "path_patterns": ["/v1/charges", "/v1/payments/*/capture", "/v1/echo/*",
                          "/v1/redirect", "/v1/gzip", "/v1/gzip-te", "/v1/big", "/v1/hang"],
        "request_headers": ["idempotency-key"],
        "response_headers": ["content-type", "x-request-id", "x-card"],
        "templates": {
            "charge_json": {
                "content_type": "json",
                "body": "{\"card\":{\"number\":\"{{card.number}}\",\"exp_month\":\"{{card.exp_month}}\",\"exp_year\":{{card.exp_year}}},\"amount\":{{var.amount}},\"order\":\"{{var.order}}\"}"
            },
            "charge_form": {
                "content_type": "form",
                "body": "number={{card.number}}&amount={{var.amount}}&order={{var.order}}"
            }
        },
        "timeout_ms": 2000,
        "max_response_bytes": 65536
    })
}

pub async fn admin(vault: &TestVault, who: &str) -> DestinationAdminServiceClient<Channel> {
    let issued = vault.pki.client(who);
    DestinationAdminServiceClient::new(channel(
        &vault.addr,
        &vault.pki.ca_pem,
        Some((&issued.cert_pem, &issued.key_pem)),
    ))
}

/// Proposes `spec` as admin-1 and approves it as admin-2; returns the version.
pub async fn approve(vault: &TestVault, spec: &Value) -> pb::DestinationVersion {
    let proposed = admin(vault, "admin-1")
        .await
        .propose_destination(pb::ProposeDestinationRequest {
            spec_json: spec.to_string(),
            reason: "onboarding CHG-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    admin(vault, "admin-2")
        .await
        .approve_destination(pb::ApproveDestinationRequest {
            id: proposed.id,
            reason: "reviewed CHG-1".into(),
            fingerprint: proposed.fingerprint,
        })
        .await
        .unwrap()
        .into_inner()
}

pub fn forward(token: &str, destination: &str, template: &str, path: &str) -> pb::ForwardRequest {
    pb::ForwardRequest {
        merchant_id: "m1".into(),
        token: token.into(),
        reason: "charge order 42".into(),
        destination: destination.into(),
        template: template.into(),
        method: "POST".into(),
        path: path.into(),
        variables: HashMap::from([
            ("amount".to_owned(), "1999".to_owned()),
            ("order".to_owned(), "ord_42".to_owned()),
        ]),
        headers: HashMap::from([("Idempotency-Key".to_owned(), "idem-1".to_owned())]),
    }
}

/// `(event, outcome, detail)` of every record of `request_id`, in order.
pub async fn records(vault: &TestVault, request_id: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT operation, outcome, COALESCE(detail, '') FROM audit_log WHERE request_id = ? \
         ORDER BY at, seq",
    )
    .bind(request_id)
    .fetch_all(&vault.db().await)
    .await
    .unwrap()
}

/// Tokenizes `pan` (with an expiry) for merchant m1.
pub async fn tokenize(vault: &TestVault, pan: &str) -> String {
    let mut request = tokenize_request("m1", pan);
    request.exp_month = Some(7);
    request.exp_year = Some(2031);
    vault
        .client("gateway")
        .await
        .tokenize(request)
        .await
        .unwrap()
        .into_inner()
        .token
}

fn digits_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

#[tokio::test]
async fn a_card_goes_out_in_json_and_form_and_comes_back_masked_however_echoed() {
    let vault =
        TestVault::start_with_keys("url = \"sqlite:vault.db\"\n", METRICS_ON, "trace").await;
    let processor = Processor::start().await;
    let version = approve(&vault, &spec("acme", &processor)).await;
    assert_eq!(version.state, "in_force");
    assert!(version.fingerprint.starts_with("sha256:"));
    let pan = random_pan("4");
    let token = tokenize(&vault, &pan).await;
    let last4 = &pan[pan.len() - 4..];
    let mut payments = vault.client("payments").await;

    // JSON: the card and expiry where the template puts them, the variables escaped.
    let mut request = forward(&token, "acme", "charge_json", "/v1/charges");
    request.variables.insert("order".into(), "o\"rd\\42".into());
    let response = payments.forward(request).await.unwrap();
    let request_id = request_id(response.metadata());
    let answer = response.into_inner();
    assert_eq!(answer.status, 201);
    let received = processor.received();
    let sent: Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(sent["card"]["number"], pan.as_str());
    assert_eq!(sent["card"]["exp_month"], "07");
    assert_eq!(sent["card"]["exp_year"], 2031);
    assert_eq!(sent["amount"], 1999);
    assert_eq!(sent["order"], "o\"rd\\42");
    assert_eq!(received[0].header("content-type"), Some("application/json"));
    assert_eq!(received[0].header("accept-encoding"), Some("identity"));
    assert_eq!(received[0].header("idempotency-key"), Some("idem-1"));
    assert_eq!(
        (received[0].method.as_str(), received[0].path.as_str()),
        ("POST", "/v1/charges")
    );
    // The answer: the processor echoed the card in its body and a header; both masked.
    let body = String::from_utf8(answer.body.clone()).unwrap();
    assert!(!body.contains(&pan), "{body}");
    assert!(
        body.contains(&format!("{}{last4}", "*".repeat(pan.len() - 4))),
        "{body}"
    );
    let headers: HashMap<String, Vec<u8>> = answer
        .headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    assert!(!digits_of(&headers["x-card"]).contains(&pan[..pan.len() - 4]));
    assert_eq!(headers["x-request-id"], b"req_123");
    assert!(
        !headers.contains_key("set-cookie"),
        "only approved headers return"
    );
    // Two records: durable before the request left, and the processor's status after.
    let trail = records(&vault, &request_id).await;
    assert_eq!(trail.len(), 2, "{trail:?}");
    assert_eq!(
        (trail[0].0.as_str(), trail[0].1.as_str()),
        ("forward", "success")
    );
    assert!(trail[0].2.contains("destination=acme"));
    assert!(
        trail[0]
            .2
            .contains(&format!("fingerprint={}", version.fingerprint))
    );
    assert!(trail[0].2.contains("template=charge_json"));
    assert_eq!(trail[1].0, "forward.result");
    assert!(trail[1].2.contains("status=201"), "{trail:?}");

    // A form body, percent-encoded variables.
    let mut request = forward(&token, "acme", "charge_form", "/v1/charges");
    request.variables.insert("order".into(), "a&b=c d".into());
    let answer = payments.forward(request).await.unwrap().into_inner();
    assert_eq!(answer.status, 201);
    let form = &processor.received()[1];
    assert_eq!(
        form.body,
        format!("number={pan}&amount=1999&order=a%26b%3Dc%20d")
    );
    assert_eq!(
        form.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(!String::from_utf8_lossy(&answer.body).contains(&pan));

    // However the processor echoes it: plain, split, \u-escaped, percent-encoded, a header.
    for mode in ["plain", "split", "unicode", "percent", "header"] {
        let path = format!("/v1/echo/{mode}");
        let answer = payments
            .forward(forward(&token, "acme", "charge_json", &path))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, 200, "{mode}");
        let mut everything = answer.body.clone();
        for header in &answer.headers {
            everything.extend_from_slice(&header.value);
        }
        let text = String::from_utf8_lossy(&everything).into_owned();
        // Decode what a reader could decode, then look for the card's digits in a row.
        let decoded = text
            .replace("\\u00", "%")
            .split('%')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 || part.len() < 2 {
                    return part.to_owned();
                }
                match u8::from_str_radix(&part[..2], 16) {
                    Ok(b) => format!("{}{}", b as char, &part[2..]),
                    Err(_) => part.to_owned(),
                }
            })
            .collect::<String>();
        assert!(
            !digits_of(decoded.as_bytes()).contains(&pan[..pan.len() - 4]),
            "{mode}: {text}"
        );
        assert_eq!(text.matches('*').count(), pan.len() - 4, "{mode}: {text}");
    }

    // Nothing of the card in the logs, the metrics, or any file of the vault's directory.
    let (_, metrics) = http("GET", &vault.metrics_addr(), "/metrics").await;
    assert!(!metrics.contains(&pan));
    assert!(
        metrics.contains("/vault.v1.TokenService/Forward"),
        "{metrics}"
    );
    assert!(!vault.logs().contains(&pan));
    let dir = vault.stop();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(pan.len()).any(|w| w == pan.as_bytes()),
                "{} holds the card",
                path.display()
            );
        }
    }
}

/// Forwards `request` and returns its status code and records; the code must be `want`.
async fn refused(
    vault: &TestVault,
    as_who: &str,
    request: pb::ForwardRequest,
    want: Code,
) -> Vec<(String, String, String)> {
    let status = vault
        .client(as_who)
        .await
        .forward(request)
        .await
        .expect_err("the forward must be refused");
    assert_eq!(status.code(), want, "{}", status.message());
    let trail = records(vault, &request_id(status.metadata())).await;
    assert!(!trail.is_empty(), "every refusal is audited");
    assert!(
        trail
            .iter()
            .all(|(_, outcome, _)| outcome != "success" || trail.len() == 2)
    );
    trail
}

#[tokio::test]
async fn forwards_outside_the_approval_are_refused_and_audited() {
    let vault = TestVault::start_with_log("debug").await;
    let processor = Processor::start().await;
    let impostor = Processor::start().await;
    let pan = random_pan("5");
    let token = tokenize(&vault, &pan).await;
    let fw = |destination: &str, path: &str| forward(&token, destination, "charge_json", path);
    let sent = || processor.received().len();

    // Unknown, proposed-only, self-approved and revoked destinations are refused alike.
    refused(
        &vault,
        "payments",
        fw("nobody", "/v1/charges"),
        Code::FailedPrecondition,
    )
    .await;
    let proposed = admin(&vault, "admin-1")
        .await
        .propose_destination(pb::ProposeDestinationRequest {
            spec_json: spec("pending", &processor).to_string(),
            reason: "onboarding".into(),
        })
        .await
        .unwrap()
        .into_inner();
    refused(
        &vault,
        "payments",
        fw("pending", "/v1/charges"),
        Code::FailedPrecondition,
    )
    .await;
    let own = admin(&vault, "admin-1")
        .await
        .approve_destination(pb::ApproveDestinationRequest {
            id: proposed.id.clone(),
            reason: "self".into(),
            fingerprint: proposed.fingerprint.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::FailedPrecondition);
    assert!(own.message().contains("dual control"));
    let own_trail = records(&vault, &request_id(own.metadata())).await;
    assert_eq!(own_trail[0].1, "failed_precondition");
    refused(
        &vault,
        "payments",
        fw("pending", "/v1/charges"),
        Code::FailedPrecondition,
    )
    .await;
    approve(&vault, &spec("acme", &processor)).await;
    approve(&vault, &spec("gone", &processor)).await;
    let revoked = admin(&vault, "admin-1")
        .await
        .revoke_destination(pb::RevokeDestinationRequest {
            name: "gone".into(),
            reason: "offboarded".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);
    refused(
        &vault,
        "payments",
        fw("gone", "/v1/charges"),
        Code::FailedPrecondition,
    )
    .await;

    // What the approval does not allow.
    let mut no_template = fw("acme", "/v1/charges");
    no_template.template = "refund".into();
    refused(&vault, "payments", no_template, Code::FailedPrecondition).await;
    let denied = refused(
        &vault,
        "gateway",
        fw("acme", "/v1/charges"),
        Code::PermissionDenied,
    )
    .await;
    assert_eq!(denied[0].1, "denied");
    refused(
        &vault,
        "payments",
        fw("acme", "/v1/refunds"),
        Code::FailedPrecondition,
    )
    .await;
    let mut header = fw("acme", "/v1/charges");
    header
        .headers
        .insert("x-forwarded-host".into(), "evil".into());
    refused(&vault, "payments", header, Code::FailedPrecondition).await;
    let mut get = fw("acme", "/v1/charges");
    get.method = "GET".into();
    refused(&vault, "payments", get, Code::FailedPrecondition).await;
    let mut bogus = fw("acme", "/v1/charges");
    bogus.method = "TRACE".into();
    let trail = refused(&vault, "payments", bogus, Code::InvalidArgument).await;
    assert_eq!(trail[0].2, "method");
    for path in [
        "//evil.example/v1/charges",
        "/v1/echo/../charges",
        "/v1/echo/%2e%2e/charges",
        "/v1/echo/a@evil.example",
        "/v1\\charges",
        "/v1/charges?number=1",
        "/v1/echo/..;/charges",
        "/v1/echo/%c0%ae%c0%ae/charges",
    ] {
        let trail = refused(&vault, "payments", fw("acme", path), Code::InvalidArgument).await;
        assert_eq!(trail[0].2, "path", "{path}: {trail:?}");
    }
    let mut card_in_variable = fw("acme", "/v1/charges");
    card_in_variable
        .variables
        .insert("order".into(), format!("order {}", &pan));
    let trail = refused(&vault, "payments", card_in_variable, Code::InvalidArgument).await;
    assert_eq!(trail[0].2, "variables");
    let mut card_in_header = fw("acme", "/v1/charges");
    card_in_header
        .headers
        .insert("idempotency-key".into(), pan.clone());
    refused(&vault, "payments", card_in_header, Code::InvalidArgument).await;
    assert_eq!(sent(), 0, "nothing refused so far reached the processor");

    // A processor presenting another certificate: nothing is sent.
    let mut wrong = spec("impostor", &impostor);
    wrong["trust_anchor_pem"] = json!(processor.ca_pem);
    approve(&vault, &wrong).await;
    let trail = refused(
        &vault,
        "payments",
        fw("impostor", "/v1/charges"),
        Code::Unavailable,
    )
    .await;
    assert_eq!(trail.len(), 2);
    assert!(
        trail[1].2.contains("error=untrusted_certificate"),
        "{trail:?}"
    );
    assert!(impostor.received().is_empty());
    // A pin that does not match the processor's leaf: refused too; the right pin works.
    let mut pinned = spec("pinned", &processor);
    pinned["pinned_sha256"] = json!("00".repeat(32));
    approve(&vault, &pinned).await;
    refused(
        &vault,
        "payments",
        fw("pinned", "/v1/charges"),
        Code::Unavailable,
    )
    .await;
    pinned["pinned_sha256"] = json!(hex::encode(vault_crypto::sha256(&processor.leaf_der)));
    approve(&vault, &pinned).await;
    let ok = vault
        .client("payments")
        .await
        .forward(fw("pinned", "/v1/charges"))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status, 201);
    assert_eq!(sent(), 1);

    // Answers that are withheld: a redirect, a compressed body, a body over the cap, no
    // answer before the deadline. Each was delivered, so each has its second record.
    for (path, code, error) in [
        ("/v1/redirect", Code::FailedPrecondition, "redirect"),
        ("/v1/gzip", Code::FailedPrecondition, "compressed"),
        ("/v1/gzip-te", Code::FailedPrecondition, "compressed"),
        ("/v1/big", Code::FailedPrecondition, "too_large"),
        ("/v1/hang", Code::DeadlineExceeded, "timeout"),
    ] {
        let trail = refused(&vault, "payments", fw("acme", path), code).await;
        assert_eq!(trail.len(), 2, "{path}: {trail:?}");
        assert_eq!(trail[0].1, "success", "the first record: the request left");
        assert!(trail[1].2.contains(&format!("error={error}")), "{trail:?}");
    }
    assert_eq!(sent(), 6);
    assert!(!vault.logs().contains(&pan));
}

/// What a row written into the database holds for `spec`: its canonical JSON and fingerprint.
fn stored_form(spec: &Value) -> (String, String) {
    use vault_core::forward::spec::DestinationSpec;
    let json = DestinationSpec::from_json(&spec.to_string())
        .unwrap()
        .canonical_json();
    let fingerprint = DestinationSpec::fingerprint_of(&json);
    (json, fingerprint)
}

#[tokio::test]
async fn a_destination_written_into_the_database_is_never_in_force() {
    let vault = TestVault::start().await;
    let processor = Processor::start().await;
    let attacker = Processor::start().await;
    let token = tokenize(&vault, &random_pan("4")).await;
    let first = approve(&vault, &spec("acme", &processor)).await;
    let db = vault.db().await;

    // Someone with write access to the database points the approved destination elsewhere,
    // with a spec and fingerprint that match each other.
    let point_acme_at = |to: &Processor| {
        let (json, fingerprint) = stored_form(&spec("acme", to));
        sqlx::query("UPDATE destinations SET spec_json = ?, fingerprint = ? WHERE name = 'acme'")
            .bind(json)
            .bind(fingerprint)
            .execute(&db)
    };
    point_acme_at(&attacker).await.unwrap();
    let request = forward(&token, "acme", "charge_json", "/v1/charges");
    refused(&vault, "payments", request.clone(), Code::DataLoss).await;

    // Or adds an approved row of their own, with the seal of another approval.
    let (json, fingerprint) = stored_form(&spec("shadow", &attacker));
    sqlx::query(
        "INSERT INTO destinations (id, name, spec_json, fingerprint, proposed_by, proposed_at, \
         approved_by, approved_at, approval_seal) SELECT '00000000-0000-4000-8000-000000000001', \
         'shadow', ?, ?, proposed_by, proposed_at, approved_by, approved_at, approval_seal \
         FROM destinations WHERE name = 'acme'",
    )
    .bind(&json)
    .bind(&fingerprint)
    .execute(&db)
    .await
    .unwrap();
    let mut shadow = request.clone();
    shadow.destination = "shadow".into();
    let trail = refused(&vault, "payments", shadow, Code::DataLoss).await;
    assert_eq!(trail.len(), 1, "refused before anything left: {trail:?}");
    assert!(attacker.received().is_empty());
    assert!(processor.received().is_empty());

    // What the vault approved itself still works once the row is as it approved it.
    point_acme_at(&processor).await.unwrap();
    let answer = vault
        .client("payments")
        .await
        .forward(request.clone())
        .await;
    assert_eq!(answer.unwrap().into_inner().status, 201);

    // Nor can it bring back a superseded version by moving its approval time past the newer
    // one's: the version in force is the one approved last, and the seal names when.
    let mut second = spec("acme", &processor);
    second["timeout_ms"] = json!(3000);
    approve(&vault, &second).await;
    sqlx::query("UPDATE destinations SET approved_at = approved_at + 3600000000 WHERE id = ?")
        .bind(&first.id)
        .execute(&db)
        .await
        .unwrap();
    refused(&vault, "payments", request, Code::DataLoss).await;
}

/// On PostgreSQL, with two replicas: what one replica approved, the other forwards, with both
/// records in the shared trail; a row forged in the database is refused by either.
#[tokio::test]
async fn replicas_on_postgresql_forward_what_either_approved_and_refuse_a_forged_row() {
    let db = vault_store::testing::TestDatabase::create()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let vault = TestVault::start_on(&db.url, "info").await;
    let two = vault.replica(2).await;
    let processor = Processor::start().await;
    let attacker = Processor::start().await;
    let pan = random_pan("4");
    let token = tokenize(&vault, &pan).await;
    approve(&vault, &spec("acme", &processor)).await;

    let request = forward(&token, "acme", "charge_json", "/v1/charges");
    let answer = vault
        .client_at(&two.addr, "payments")
        .await
        .forward(request.clone())
        .await
        .unwrap();
    let id = request_id(answer.metadata());
    let answer = answer.into_inner();
    assert_eq!(answer.status, 201);
    assert!(!String::from_utf8_lossy(&answer.body).contains(&pan));
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let trail: Vec<(String, String)> = sqlx::query_as(
        "SELECT operation, outcome FROM audit_log WHERE request_id = $1 ORDER BY at, seq",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(trail.len(), 2, "{trail:?}");
    assert!(trail.iter().all(|(_, outcome)| outcome == "success"));

    let (json, fingerprint) = stored_form(&spec("acme", &attacker));
    sqlx::query("UPDATE destinations SET spec_json = $1, fingerprint = $2 WHERE name = 'acme'")
        .bind(json)
        .bind(fingerprint)
        .execute(&pool)
        .await
        .unwrap();
    for addr in [&vault.addr, &two.addr] {
        let status = vault
            .client_at(addr, "payments")
            .await
            .forward(request.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DataLoss, "{}", status.message());
    }
    assert!(attacker.received().is_empty());
    assert_eq!(processor.received().len(), 1);
    pool.close().await;
}

#[tokio::test]
async fn a_caller_cannot_forward_more_distinct_tokens_than_its_hourly_limit() {
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    let guard = "[guard]\nnew_merchants_per_hour = 1000\nforwarded_tokens_per_hour = 3\n";
    let vault = TestVault::start_in(
        dir,
        "url = \"sqlite:vault.db\"\n",
        &format!("{DEV_KEK}{guard}"),
        &[],
        "info",
    )
    .await;
    let processor = Processor::start().await;
    approve(&vault, &spec("acme", &processor)).await;
    let mut payments = vault.client("payments").await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(tokenize(&vault, &random_pan("4")).await);
    }
    for token in &tokens[..3] {
        let request = forward(token, "acme", "charge_json", "/v1/charges");
        payments.forward(request.clone()).await.unwrap();
        // The same token again does not count twice.
        payments.forward(request).await.unwrap();
    }
    let status = payments
        .forward(forward(&tokens[3], "acme", "charge_json", "/v1/charges"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("different tokens"),
        "{}",
        status.message()
    );
    assert_eq!(processor.received().len(), 6);
}

#[tokio::test]
async fn a_lost_second_record_is_recorded_as_unknown_after_the_deadline() {
    let vault = TestVault::start().await;
    let processor = Processor::start().await;
    approve(&vault, &spec("acme", &processor)).await;
    let token = tokenize(&vault, &random_pan("4")).await;
    // The store refuses to clear the in-flight mark, so the second record cannot be written.
    let db = vault.db().await;
    sqlx::query(
        "CREATE TRIGGER lose_results BEFORE DELETE ON forwards_in_flight \
         BEGIN SELECT RAISE(ABORT, 'test: results are lost'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    let response = vault
        .client("payments")
        .await
        .forward(forward(&token, "acme", "charge_json", "/v1/charges"))
        .await
        .unwrap();
    let request_id = request_id(response.metadata());
    // The processor acted: the caller still gets its (masked) answer.
    assert_eq!(response.into_inner().status, 201);
    assert!(wait_for_log(&vault, "forward.result could not be recorded").await);
    let trail = records(&vault, &request_id).await;
    assert_eq!(trail.len(), 1, "only the first record: {trail:?}");
    sqlx::query("DROP TRIGGER lose_results")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    // After the deadline (2 s) and the grace for a slow replica (10 s), a start records it.
    tokio::time::sleep(std::time::Duration::from_secs(13)).await;
    let vault = vault
        .restart_with("url = \"sqlite:vault.db\"\n", DEV_KEK)
        .await;
    // The start records it right after the trail starts (the port may be open already).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut trail = records(&vault, &request_id).await;
    while trail.len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        trail = records(&vault, &request_id).await;
    }
    assert_eq!(trail.len(), 2, "{trail:?}\n{}", vault.logs());
    assert_eq!(
        (trail[1].0.as_str(), trail[1].1.as_str()),
        ("forward.result", "unknown")
    );
    assert!(trail[1].2.contains("destination=acme"));
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM forwards_in_flight")
        .fetch_one(&vault.db().await)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn audit_trace_lists_a_tokens_forwards_and_detokenizes_from_verified_exports() {
    let vault = TestVault::start().await;
    let processor = Processor::start().await;
    let version = approve(&vault, &spec("acme", &processor)).await;
    let pan = random_pan("4");
    let token = tokenize(&vault, &pan).await;
    let other = tokenize(&vault, &random_pan("4")).await;
    let mut payments = vault.client("payments").await;
    payments
        .forward(forward(&token, "acme", "charge_json", "/v1/charges"))
        .await
        .unwrap();
    payments
        .forward(forward(&other, "acme", "charge_json", "/v1/charges"))
        .await
        .unwrap();
    let redirected = payments
        .forward(forward(&token, "acme", "charge_form", "/v1/redirect"))
        .await
        .unwrap_err();
    assert_eq!(redirected.code(), Code::FailedPrecondition);
    payments
        .detokenize(detokenize_request("m1", &token))
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let key = out.path().join("vault-audit.pub");
    let export = out.path().join("trail.jsonl");
    let (key_s, export_s) = (key.to_string_lossy(), export.to_string_lossy());
    vault
        .vaultctl("auditor", &["audit", "public-key", "--out", &key_s])
        .await
        .unwrap();
    vault
        .vaultctl("auditor", &["audit", "export", "--out", &export_s])
        .await
        .unwrap();
    let trace = |file: String| {
        let (token, key) = (token.clone(), key_s.to_string());
        let vault = &vault;
        async move {
            let args = ["audit", "trace", &token, "--public-key", &key, &file];
            match vault.vaultctl("auditor", &args).await.unwrap() {
                vaultctl::Report::AuditTraced(trace) => trace,
                other => panic!("trace printed {other:?}"),
            }
        }
    };
    let traced = trace(export_s.to_string()).await;
    assert!(!traced.refused());
    let accesses = traced.accesses.unwrap();
    assert_eq!(
        accesses.len(),
        3,
        "two forwards and a detokenize: {accesses:#?}"
    );
    let first = accesses[0].forward.as_ref().expect("a forward first");
    assert_eq!(accesses[0].caller, PAYMENTS);
    assert_eq!(accesses[0].reason.as_deref(), Some("charge order 42"));
    assert_eq!(first.destination.as_deref(), Some("acme"));
    assert_eq!(
        first.fingerprint.as_deref(),
        Some(version.fingerprint.as_str())
    );
    assert_eq!(first.template.as_deref(), Some("charge_json"));
    assert_eq!(first.path.as_deref(), Some("/v1/charges"));
    assert_eq!(first.results[0].status, Some(201));
    let second = accesses[1].forward.as_ref().unwrap();
    assert_eq!(second.results[0].error.as_deref(), Some("redirect"));
    assert!(accesses[2].forward.is_none(), "then the detokenize");
    // The export holds no card.
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(!text.contains(&pan));

    // One record changed: the whole export is refused, and no trace is given.
    let tampered = out.path().join("tampered.jsonl");
    std::fs::write(
        &tampered,
        text.replacen("destination=acme", "destination=evil", 1),
    )
    .unwrap();
    let refused = trace(tampered.to_string_lossy().into_owned()).await;
    assert!(refused.refused());
    assert!(refused.accesses.is_none());
}

#[tokio::test]
async fn a_destination_with_a_client_identity_presents_it_to_the_processor() {
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    let client_ca = vault_server::pki::DevCa::generate("vault to processor CA").unwrap();
    let client = client_ca.issue_client(Some("card-vault"), None).unwrap();
    std::fs::write(dir.path().join("acme-client.pem"), &client.cert_pem).unwrap();
    write_private(&dir.path().join("acme-client.key"), &client.key_pem);
    let forward_config = "[forward.client_identities.acme]\n\
                          certificate = \"acme-client.pem\"\nkey = \"acme-client.key\"\n";
    let vault = TestVault::start_in(
        dir,
        "url = \"sqlite:vault.db\"\n",
        &format!("{DEV_KEK}{forward_config}"),
        &[],
        "info",
    )
    .await;
    let processor = Processor::start_with(Some(&client_ca.cert_pem())).await;
    let mut with_identity = spec("acme", &processor);
    with_identity["client_identity"] = json!("acme");
    approve(&vault, &with_identity).await;
    approve(&vault, &spec("anonymous", &processor)).await;
    let token = tokenize(&vault, &random_pan("4")).await;
    let mut payments = vault.client("payments").await;
    let answer = payments
        .forward(forward(&token, "acme", "charge_json", "/v1/charges"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, 201);
    // Without the certificate the processor refuses the handshake: written, not accepted.
    let status = payments
        .forward(forward(&token, "anonymous", "charge_json", "/v1/charges"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().ends_with("the request was not accepted"));
    let trail = records(&vault, &request_id(status.metadata())).await;
    assert!(trail[1].2.contains("error=handshake_refused"), "{trail:?}");
    assert_eq!(processor.received().len(), 1);
    // A destination naming an identity the vault does not have is refused at proposal.
    let mut unknown = spec("other", &processor);
    unknown["client_identity"] = json!("nobody");
    let refused = admin(&vault, "admin-1")
        .await
        .propose_destination(pb::ProposeDestinationRequest {
            spec_json: unknown.to_string(),
            reason: "onboarding".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("client_identity:"),
        "{}",
        refused.message()
    );
    // A client key others may read is refused at start, as every secret file is.
    let dir = vault.stop();
    let key = dir.path().join("acme-client.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let printed = refused_start(dir.path());
    assert!(printed.contains("acme-client.key"), "{printed}");
    let config = dir.path().join("vaultd.toml");
    let (code, printed) = run_vaultd(&["check-config", "--config", &config.to_string_lossy()]);
    assert_eq!(
        code,
        Some(78),
        "check-config finds it before a start does: {printed}"
    );
    assert!(printed.contains("acme-client.key"), "{printed}");
}

/// The example destination in `examples/` is a spec the vault accepts once its trust anchor
/// is given: a newcomer starts from something that works.
#[test]
fn the_example_destination_is_a_valid_spec() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/destinations/acme.toml");
    let mut spec: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(spec.remove("trust_anchor_file").is_some());
    let ca = vault_server::pki::DevCa::generate("example CA").unwrap();
    spec.insert(
        "trust_anchor_pem".into(),
        toml::Value::String(ca.cert_pem()),
    );
    let json = serde_json::to_string(&spec).unwrap();
    let parsed = vault_core::forward::DestinationSpec::from_json(&json).unwrap();
    assert_eq!(parsed.templates.len(), 2);
}
