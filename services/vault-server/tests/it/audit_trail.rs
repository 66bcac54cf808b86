//! The tamper-evident audit trail end to end: exports made by `vaultctl audit export` from a
//! running vault verify offline with `vaultctl audit verify`, every record carries the six
//! PCI DSS 10.2.2 fields, each kind of tampering is found and the record named (1,000
//! randomized trials each), reading the trail needs `audit.read` and is itself audited, and a
//! pruned remainder verifies together with the export that holds what was pruned.

use std::path::{Path, PathBuf};

use rand::RngExt;
use tonic::Code;
use vault_audit::{Entry, Line};
use vault_proto::v1 as pb;

use crate::harness::*;

/// A vault with some history: card calls allowed and refused, an admin call.
async fn vault_with_history() -> TestVault {
    let vault = TestVault::start().await;
    for i in 0..12 {
        let pan = random_pan("411111");
        let token = vault
            .tokenize_at(&vault.addr, &format!("m-{}", i % 3), &pan)
            .await;
        if i % 2 == 0 {
            vault
                .detokenize_at(&vault.addr, &format!("m-{}", i % 3), &token)
                .await;
        }
    }
    let mut gateway = vault.client("gateway").await;
    let denied = gateway
        .detokenize(detokenize_request("m-0", "tok_AAAAAAAAAAAAAAAAAAAAAA"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    vault.vaultctl("admin-1", &["status"]).await.unwrap();
    vault
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Fetches the public key and exports the trail, as the auditor, into `work`.
async fn key_and_export(vault: &TestVault, work: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, file) = (path(work, "audit.pub"), path(work, name));
    vault
        .vaultctl(
            "auditor",
            &["audit", "public-key", "--out", &key.to_string_lossy()],
        )
        .await
        .unwrap();
    export(vault, &file).await;
    (key, file)
}

async fn export(vault: &TestVault, out: &Path) {
    let report = vault
        .vaultctl(
            "auditor",
            &["audit", "export", "--out", &out.to_string_lossy()],
        )
        .await
        .unwrap();
    assert!(matches!(report, vaultctl::Report::AuditExported(_)));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "an export is for its owner only");
}

async fn verify(vault: &TestVault, key: &Path, files: &[&Path]) -> vault_audit::Report {
    let mut args = vec![
        "audit".to_owned(),
        "verify".to_owned(),
        "--public-key".to_owned(),
        key.to_string_lossy().into_owned(),
    ];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match vault.vaultctl("auditor", &args).await.unwrap() {
        vaultctl::Report::AuditVerified(report) => {
            let code = vaultctl::Report::AuditVerified(report.clone()).exit_code();
            assert_eq!(code == 0, report.is_clean());
            report
        }
        other => panic!("verify printed {other:?}"),
    }
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn parse(line: &str) -> Line {
    serde_json::from_str(line).unwrap()
}

fn record_lines(lines: &[String]) -> Vec<usize> {
    (0..lines.len())
        .filter(|i| matches!(parse(&lines[*i]), Line::Record(_)))
        .collect()
}

fn entry(line: &str) -> Entry {
    match parse(line) {
        Line::Record(entry) => entry,
        other => panic!("not a record: {other:?}"),
    }
}

fn name(entry: &Entry) -> String {
    format!("{}#{}", entry.writer, entry.seq)
}

fn named(report: &vault_audit::Report) -> Vec<String> {
    report
        .problems
        .iter()
        .flat_map(|p| p.subjects.iter().cloned())
        .collect()
}

#[tokio::test]
async fn exports_verify_offline_and_carry_the_pci_fields() {
    let vault = vault_with_history().await;
    let work = tempfile::tempdir().unwrap();
    let (key, first) = key_and_export(&vault, work.path(), "a.jsonl").await;
    let report = verify(&vault, &key, &[&first]).await;
    assert!(report.is_clean(), "{:#?}", report.problems);

    // Every record has all six PCI DSS 10.2.2 fields, and the trail has the vault's own
    // events and the audit reads.
    let all = lines(&first);
    let records: Vec<Entry> = record_lines(&all)
        .into_iter()
        .map(|i| entry(&all[i]))
        .collect();
    assert!(records.len() >= 20, "{} records", records.len());
    for r in &records {
        assert!(!r.caller.is_empty() && !r.event.is_empty() && !r.outcome.is_empty());
        assert!(!r.origin.is_empty() && !r.resource.is_empty());
        assert!(vault_audit::parse_time(&r.at).is_some(), "{}", r.at);
        assert!(r.origin != "unknown", "{r:?}");
    }
    let has = |event: &str, detail: Option<&str>| {
        records
            .iter()
            .any(|r| r.event == event && detail.is_none_or(|d| r.detail.as_deref() == Some(d)))
    };
    assert!(has("vault.start", None));
    let policy = vault_crypto::sha256(POLICY.as_bytes());
    let digest: String = policy.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        records.iter().any(|r| r.event == "vault.start"
            && r.detail
                .as_deref()
                .is_some_and(|d| d.ends_with(&format!("policy sha256:{digest}")))),
        "vault.start names the policy it serves under"
    );
    assert!(has("audit.read", Some("audit.public_key")));
    assert!(has("audit.read", Some("audit.export")));
    assert!(has("keys.admin", Some("keys.status")));
    assert!(
        records
            .iter()
            .any(|r| r.event == "detokenize" && r.outcome == "denied")
    );

    // After a restart the trail has two writers: the first ends with vault.stop under a stop
    // checkpoint; an export of everything, and both exports together, verify clean.
    let vault = vault
        .restart_with("url = \"sqlite:vault.db\"\n", DEV_KEK)
        .await;
    vault
        .tokenize_at(&vault.addr, "m-9", &random_pan("555555"))
        .await;
    let second = path(work.path(), "b.jsonl");
    export(&vault, &second).await;
    let report = verify(&vault, &key, &[&second]).await;
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!(report.writers.len(), 2);
    let all = lines(&second);
    let stops: Vec<Entry> = record_lines(&all)
        .into_iter()
        .map(|i| entry(&all[i]))
        .filter(|e| e.event == "vault.stop")
        .collect();
    assert_eq!(stops.len(), 1);
    let report = verify(&vault, &key, &[&first, &second]).await;
    assert!(report.is_clean(), "{:#?}", report.problems);
}

/// Writes `lines` to `file` and verifies it.
async fn verify_lines(
    vault: &TestVault,
    key: &Path,
    file: &Path,
    lines: &[String],
) -> vault_audit::Report {
    std::fs::write(file, lines.join("\n")).unwrap();
    verify(vault, key, &[file]).await
}

#[tokio::test]
async fn every_tampering_of_an_export_is_found_and_named() {
    const TRIALS: usize = 1_000;
    let vault = vault_with_history().await;
    let work = tempfile::tempdir().unwrap();
    let (key, clean_file) = key_and_export(&vault, work.path(), "x.jsonl").await;
    let clean = lines(&clean_file);
    let rows = record_lines(&clean);
    assert!(rows.len() >= 20);
    let tampered = path(work.path(), "tampered.jsonl");
    let mut rng = rand::rng();
    let mut found = [0usize; 5];

    for trial in 0..TRIALS {
        let at = rows[rng.random_range(0..rows.len())];

        // 1. Edit one field of one record (every other time resealing its hash too).
        let mut lines = clean.clone();
        let mut edited = entry(&lines[at]);
        let victim = name(&edited);
        match trial % 6 {
            0 => edited.outcome = "success-forged".to_owned(),
            1 => edited.caller = "spiffe://vault.test/intruder".to_owned(),
            2 => edited.at = vault_audit::format_time(0).unwrap(),
            3 => edited.reason = Some("nothing to see".to_owned()),
            4 => edited.merchant_id = Some("m-other".to_owned()),
            _ => edited.origin = "10.0.0.66:443".to_owned(),
        }
        if trial % 2 == 1 {
            edited = edited.sealed();
        }
        lines[at] = serde_json::to_string(&Line::Record(edited)).unwrap();
        let report = verify_lines(&vault, &key, &tampered, &lines).await;
        if named(&report).contains(&victim) {
            found[0] += 1;
        }

        // 2. Delete one record.
        let mut lines = clean.clone();
        let gone = entry(&lines[at]);
        lines.remove(at);
        let report = verify_lines(&vault, &key, &tampered, &lines).await;
        if named(&report).contains(&name(&gone)) {
            found[1] += 1;
        }

        // 3. Insert one forged record: a real one altered and resealed, anywhere after the
        //    header.
        let mut lines = clean.clone();
        let mut forged = entry(&lines[at]);
        forged.token = Some("tok_FORGEDFORGEDFORGEDFOR".to_owned());
        forged.outcome = "success".to_owned();
        let forged = forged.sealed();
        let place = rng.random_range(1..=lines.len());
        lines.insert(
            place,
            serde_json::to_string(&Line::Record(forged.clone())).unwrap(),
        );
        let report = verify_lines(&vault, &key, &tampered, &lines).await;
        if named(&report).contains(&name(&forged)) {
            found[2] += 1;
        }

        // 4. Swap two records.
        let mut lines = clean.clone();
        let other = loop {
            let o = rows[rng.random_range(0..rows.len())];
            if o != at {
                break o;
            }
        };
        let (a, b) = (entry(&lines[at]), entry(&lines[other]));
        lines.swap(at, other);
        let report = verify_lines(&vault, &key, &tampered, &lines).await;
        let names = named(&report);
        if names.contains(&name(&a)) || names.contains(&name(&b)) {
            found[3] += 1;
        }

        // 5. Truncate the tail: every checkpoint stays, the records from a random one on go.
        let mut lines = clean.clone();
        let first_gone = entry(&lines[at]);
        let cut = rows.iter().position(|r| *r == at).unwrap();
        let keep: Vec<usize> = rows[cut..].to_vec();
        lines = lines
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !keep.contains(i))
            .map(|(_, l)| l)
            .collect();
        let report = verify_lines(&vault, &key, &tampered, &lines).await;
        if named(&report).contains(&name(&first_gone)) {
            found[4] += 1;
        }
    }
    // 100% detection, each naming the record touched.
    assert_eq!(found, [TRIALS; 5], "edit, delete, insert, swap, truncate");
    // And the untouched export still verifies clean.
    let report = verify(&vault, &key, &[&clean_file]).await;
    assert!(report.is_clean(), "{:#?}", report.problems);
}

#[tokio::test]
async fn audit_read_needs_the_permission_and_every_read_is_logged() {
    let vault = vault_with_history().await;
    let mut gateway = vault.audit_client("gateway");
    let refused = gateway
        .read_records(pb::ReadRecordsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = gateway
        .export(pb::ExportRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = gateway
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // A bad filter names the field, never the value.
    let mut auditor = vault.audit_client("auditor");
    let bad = auditor
        .read_records(pb::ReadRecordsRequest {
            merchant_id: "4111111111111111".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("merchant_id") && !bad.message().contains("4111"));

    // The auditor reads the audit reads: the gateway's three refusals and its own read.
    let mut stream = auditor
        .read_records(pb::ReadRecordsRequest {
            event: "audit.read".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut reads = Vec::new();
    while let Some(record) = stream.message().await.unwrap() {
        reads.push(record);
    }
    let denied = reads
        .iter()
        .filter(|r| r.caller == GATEWAY && r.outcome == "denied")
        .count();
    assert_eq!(denied, 3, "{reads:#?}");
    assert!(
        reads.iter().any(|r| r.caller == AUDITOR
            && r.outcome == "success"
            && r.detail.as_deref() == Some("audit.read")),
        "the read is logged before its results are returned: {reads:#?}"
    );
    assert!(
        reads
            .iter()
            .any(|r| r.caller == AUDITOR && r.outcome == "invalid_argument")
    );

    // Filters: one merchant's detokenizes only.
    let mut stream = auditor
        .read_records(pb::ReadRecordsRequest {
            merchant_id: "m-0".to_owned(),
            event: "detokenize".to_owned(),
            outcome: "success".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(record) = stream.message().await.unwrap() {
        assert_eq!(record.merchant_id.as_deref(), Some("m-0"));
        assert_eq!(
            (record.event.as_str(), record.outcome.as_str()),
            ("detokenize", "success")
        );
        assert!(record.resource.starts_with("merchant/m-0/token/"));
        n += 1;
    }
    assert_eq!(n, 2);
}

/// `[audit]` for tests that prune: no online window (not PCI compliant; tests only).
const PRUNE_NOW: &str = "[audit]\ndanger_online_days = 0\n";

fn status(result: Result<vaultctl::Report, vaultctl::Error>) -> tonic::Status {
    match result {
        Err(vaultctl::Error::Rpc(status)) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn prune(
    vault: &TestVault,
    identity: &str,
    before: &str,
    export: &Path,
    key: &Path,
) -> Result<vaultctl::Report, vaultctl::Error> {
    vault
        .vaultctl(
            identity,
            &[
                "audit",
                "prune",
                "--before",
                before,
                "--export",
                &export.to_string_lossy(),
                "--public-key",
                &key.to_string_lossy(),
            ],
        )
        .await
}

fn records_of(file: &Path) -> Vec<Entry> {
    let all = lines(file);
    record_lines(&all)
        .into_iter()
        .map(|i| entry(&all[i]))
        .collect()
}

#[tokio::test]
async fn export_prune_then_the_remainder_and_the_export_verify_together() {
    let storage = "url = \"sqlite:vault.db\"\n";
    let vault = TestVault::start_with_keys(storage, PRUNE_NOW, "info").await;
    for i in 0..4 {
        vault
            .tokenize_at(&vault.addr, &format!("m-{i}"), &random_pan("411111"))
            .await;
    }
    // A restart: the first writer stops cleanly, the second goes on.
    let vault = vault
        .restart_with(storage, &format!("{DEV_KEK}{PRUNE_NOW}"))
        .await;
    let token = vault
        .tokenize_at(&vault.addr, "m-1", &random_pan("555555"))
        .await;
    let work = tempfile::tempdir().unwrap();
    let (key, archived) = key_and_export(&vault, work.path(), "archived.jsonl").await;
    let archived_records = records_of(&archived);
    let writers: std::collections::BTreeSet<String> =
        archived_records.iter().map(|e| e.writer.clone()).collect();
    assert_eq!(writers.len(), 2, "{writers:?}");
    // Written after the export: never pruned with it.
    vault.detokenize_at(&vault.addr, "m-1", &token).await;
    let now = vault_audit::format_time(
        i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000).unwrap(),
    )
    .unwrap();

    // Refusals, each audited: no audit.prune; a cutoff inside the online window (the future,
    // with a zero-day window); a tampered export (caught before anything is sent).
    let denied = status(prune(&vault, "gateway", &now, &archived, &key).await);
    assert_eq!(denied.code(), Code::PermissionDenied);
    let future = status(prune(&vault, "admin-1", "2999-01-01T00:00:00Z", &archived, &key).await);
    assert_eq!(future.code(), Code::InvalidArgument);
    assert!(future.message().contains("before"), "{}", future.message());
    let mut forged = lines(&archived);
    let at = *record_lines(&forged).first().unwrap();
    forged[at] = forged[at].replace("\"success\"", "\"denied\"");
    let forged_file = path(work.path(), "forged.jsonl");
    std::fs::write(&forged_file, forged.join("\n")).unwrap();
    let refused = prune(&vault, "admin-1", &now, &forged_file, &key)
        .await
        .unwrap();
    assert!(
        matches!(
            refused,
            vaultctl::Report::AuditPruned(vaultctl::audit::Pruning::Refused(_))
        ),
        "{refused:?}"
    );
    assert_eq!(refused.exit_code(), 1);

    // The prune: everything the export holds is older than `now`.
    let done = prune(&vault, "admin-1", &now, &archived, &key)
        .await
        .unwrap();
    let vaultctl::Report::AuditPruned(vaultctl::audit::Pruning::Done { answer, .. }) = &done else {
        panic!("prune printed {done:?}");
    };
    assert_eq!(done.exit_code(), 0);
    assert_eq!(answer.records_removed, archived_records.len() as u64);
    assert_eq!(answer.writers_pruned, 2);
    assert_eq!(answer.writers_closed, 1, "the stopped writer is closed");
    assert_eq!(
        answer.checkpoints_written, 1,
        "the live writer is anchored at its cut"
    );
    assert!(answer.checkpoints_removed >= 3, "{answer:?}");

    // The remainder verifies alone and together with the archived export; it holds only the
    // records written after the export, the refusals and the prune.
    let remainder = path(work.path(), "remainder.jsonl");
    export(&vault, &remainder).await;
    let alone = verify(&vault, &key, &[&remainder]).await;
    assert!(alone.is_clean(), "{:#?}", alone.problems);
    let together = verify(&vault, &key, &[&archived, &remainder]).await;
    assert!(together.is_clean(), "{:#?}", together.problems);
    let kept = records_of(&remainder);
    assert!(kept.iter().all(|e| {
        !archived_records
            .iter()
            .any(|a| a.writer == e.writer && a.seq >= e.seq)
    }));
    assert!(
        kept.iter()
            .any(|e| e.event == "detokenize" && e.outcome == "success")
    );
    let prunes: Vec<(&str, &str)> = kept
        .iter()
        .filter(|e| e.event == "audit.prune")
        .map(|e| (e.caller.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        prunes,
        vec![
            (GATEWAY, "denied"),
            (ADMIN_1, "invalid_argument"),
            (ADMIN_1, "success")
        ]
    );
    let remainder_lines = lines(&remainder);
    assert!(
        remainder_lines
            .iter()
            .any(|l| matches!(parse(l), Line::Checkpoint(c) if c.kind == "prune"))
    );
    assert!(
        matches!(parse(&remainder_lines[0]), Line::Header(h) if h.keep_until.is_some()),
        "the export header says until when to keep it"
    );

    // The same export again: its checkpoints are gone, so it proves nothing more.
    let again = status(prune(&vault, "admin-1", &now, &archived, &key).await);
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Nobody else can remove records: the trail's tables stay append-only outside a prune.
    let db = vault.db().await;
    let refused = sqlx::query("DELETE FROM audit_log").execute(&db).await;
    assert!(refused.is_err());
}

/// With the default online window (92 days), nothing recent can be pruned.
#[tokio::test]
async fn the_online_window_keeps_recent_records() {
    let vault = TestVault::start().await;
    vault
        .tokenize_at(&vault.addr, "m-1", &random_pan("411111"))
        .await;
    let work = tempfile::tempdir().unwrap();
    let (key, archived) = key_and_export(&vault, work.path(), "archived.jsonl").await;
    let now = vault_audit::format_time(
        i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000).unwrap(),
    )
    .unwrap();
    let refused = status(prune(&vault, "admin-1", &now, &archived, &key).await);
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("online"),
        "{}",
        refused.message()
    );
    // Older than the window, but nothing that old exists: nothing goes.
    let done = prune(&vault, "admin-1", "2020-01-01T00:00:00Z", &archived, &key)
        .await
        .unwrap();
    let vaultctl::Report::AuditPruned(vaultctl::audit::Pruning::Done { answer, .. }) = done else {
        panic!("prune printed {done:?}");
    };
    assert_eq!((answer.through_checkpoint, answer.records_removed), (0, 0));
    let after = path(work.path(), "after.jsonl");
    export(&vault, &after).await;
    let report = verify(&vault, &key, &[&archived, &after]).await;
    assert!(report.is_clean(), "{:#?}", report.problems);
}

/// The sweep every `TestVault` runs as it goes away (`harness.rs::assert_pci_fields`) fails on
/// a record without all six PCI fields.
#[tokio::test]
async fn the_pci_field_sweep_catches_an_incomplete_record() {
    let vault = TestVault::start().await;
    vault
        .tokenize_at(&vault.addr, "m-1", &random_pan("411111"))
        .await;
    sqlx::query(
        "INSERT INTO audit_log (writer, seq, at, caller, origin, operation, outcome, resource, \
         request_id, prev_hash, hash) VALUES ('w', 1, 1, 'c', 'unknown', 'tokenize', 'success', \
         'tokens', 'r', zeroblob(32), zeroblob(32))",
    )
    .execute(&vault.db().await)
    .await
    .unwrap();
    let swept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(vault)));
    assert!(swept.is_err(), "the sweep let an unknown origin pass");
}

/// Signed checkpoints whose key is gone stop vaultd at start (exit 78, saying what to do),
/// instead of a new key made silently and served as the public key; so does a key the KEK
/// cannot unwrap. Nothing is served, so nothing is signed by another key.
#[tokio::test]
async fn a_missing_or_unreadable_audit_key_stops_vaultd_at_start() {
    let vault = TestVault::start().await;
    vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    let db = vault.db_path();
    let dir = vault.stop();
    let keys = |db: PathBuf| async move {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
            .await
            .unwrap();
        let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_checkpoints")
            .fetch_one(&pool)
            .await
            .unwrap();
        (pool, checkpoints)
    };

    // The KEK that wrapped the key is not the configured one.
    let kek = dir.path().join("kek.key");
    let original = std::fs::read(&kek).unwrap();
    std::fs::remove_file(&kek).unwrap();
    vault_kms::DangerLocalFileKek::create(&kek).unwrap();
    let printed = refused_start(dir.path());
    assert!(
        printed.contains("cannot load the audit signing key"),
        "{printed}"
    );
    std::fs::write(&kek, &original).unwrap();

    // The key's row is gone while checkpoints it signed remain.
    let (pool, before) = keys(db.clone()).await;
    assert!(before >= 2, "the first run signed its start and stop");
    sqlx::query("DELETE FROM data_keys WHERE purpose = 'audit_signing'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let printed = refused_start(dir.path());
    assert!(
        printed.contains("audit signing key") && printed.contains("restore that row"),
        "{printed}"
    );
    let (pool, after) = keys(db).await;
    assert_eq!(after, before, "nothing signed by a new key");
    let made: i64 =
        sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE purpose = 'audit_signing'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(made, 0, "no key made silently");
}

/// Runs `vaultd replace-audit-key` on `dir/vaultd.toml`; returns its exit code and output.
fn replace_audit_key(dir: &Path) -> (Option<i32>, String) {
    run_vaultd(&[
        "replace-audit-key",
        "--config",
        &dir.join("vaultd.toml").to_string_lossy(),
        "--operator",
        "alice",
        "--reason",
        "key row lost in the restore of 2026-12-01, ticket 4711",
    ])
}

/// A lost audit key is replaced only by an explicit operator action, which the trail records:
/// `vaultd replace-audit-key` refuses while the key is fine, and once it is lost makes a new
/// key whose first checkpoint covers an `audit.key_replaced` record naming the old key, the
/// operator and the reason. vaultd then starts, and an export verifies with the old and the
/// new public key together (with the new key alone, the old checkpoints are untrusted).
#[tokio::test]
async fn a_lost_audit_key_is_replaced_only_by_a_recorded_operator_action() {
    let vault = TestVault::start().await;
    vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    let keys_dir = tempfile::tempdir().unwrap();
    let old_key = keys_dir.path().join("old.pub");
    vault
        .vaultctl(
            "auditor",
            &["audit", "public-key", "--out", &old_key.to_string_lossy()],
        )
        .await
        .unwrap();
    let mut printed = String::new();
    let vault = vault
        .restart_after(|dir| {
            let (code, out) = replace_audit_key(dir);
            assert_eq!(code, Some(78), "{out}");
            assert!(out.contains("nothing to replace"), "{out}");
            let db = dir.join("vault.db");
            let deleted = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                     c.execute(\"DELETE FROM data_keys WHERE purpose='audit_signing'\"); c.commit()",
                    &db.to_string_lossy(),
                ])
                .status()
                .unwrap();
            assert!(deleted.success());
            let (code, out) = replace_audit_key(dir);
            assert_eq!(code, Some(0), "{out}");
            printed = out;
        })
        .await;
    assert!(printed.contains("new audit signing key"), "{printed}");

    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT caller, detail FROM audit_log WHERE operation = 'audit.key_replaced'",
    )
    .fetch_all(&vault.db().await)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let detail = rows[0].1.clone().unwrap_or_default();
    let old: Vec<vault_audit::PublicKey> =
        serde_json::from_str(&std::fs::read_to_string(&old_key).unwrap()).unwrap();
    let old = old.into_iter().next().unwrap();
    assert!(
        detail.contains(&format!("audit signing key {} missing", old.key_id))
            && detail.contains("operator alice")
            && detail.contains("ticket 4711"),
        "{detail}"
    );

    let new_key = keys_dir.path().join("new.pub");
    vault
        .vaultctl(
            "auditor",
            &["audit", "public-key", "--out", &new_key.to_string_lossy()],
        )
        .await
        .unwrap();
    let both = keys_dir.path().join("both.pub");
    let new: Vec<vault_audit::PublicKey> =
        serde_json::from_str(&std::fs::read_to_string(&new_key).unwrap()).unwrap();
    let new = new.into_iter().next().unwrap();
    assert_ne!(new.key_id, old.key_id);
    std::fs::write(&both, serde_json::to_string(&[&old, &new]).unwrap()).unwrap();
    let file = keys_dir.path().join("trail.jsonl");
    export(&vault, &file).await;
    let report = verify(&vault, &both, &[&file]).await;
    assert!(report.is_clean(), "{:?}", report.problems);
    // The new key's first checkpoint names the old key, signed.
    let replaced: Vec<vault_audit::Checkpoint> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter_map(|line| match serde_json::from_str::<Line>(line) {
            Ok(Line::Checkpoint(c)) if c.kind == "key_replaced" => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].key_id, new.key_id);
    assert_eq!(
        replaced[0].replaces_key.as_deref(),
        Some(old.key_id.as_str())
    );
    assert!(!verify(&vault, &new_key, &[&file]).await.is_clean());
}
