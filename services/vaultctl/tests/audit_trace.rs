//! The built `vaultctl audit trace` on a signed export made here: what it prints as text and
//! JSON, its exit codes, and that it refuses an export that does not verify. The trace itself
//! is tested in `src/trace.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use vault_audit::{
    CheckpointDraft, CheckpointKind, EXPORT_FORMAT, Entry, ExportHeader, GENESIS, Line, PublicKey,
    format_time,
};
use vault_crypto::{KeyMaterial, SigningKey};

/// A record: event, token, request id, outcome, detail, reason.
type Spec<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
);

/// Writes one writer's export of `records` (merchant m-1) and its public key into `dir`.
fn write_export(dir: &Path, records: &[Spec<'_>]) -> (PathBuf, PathBuf) {
    let key = SigningKey::from_seed(&KeyMaterial::generate());
    let public = key.public_key();
    let mut micros = 1_795_000_000_000_000_i64;
    let mut tick = || {
        micros += 1_000_000;
        format_time(micros).unwrap()
    };
    let mut checkpoints = Vec::new();
    let sign = |checkpoints: &mut Vec<vault_audit::Checkpoint>, kind, at, head: (u64, _)| {
        let (cp_seq, prev_hash) = checkpoints
            .last()
            .map_or((1, GENESIS), |c: &vault_audit::Checkpoint| {
                (c.cp_seq + 1, c.hash)
            });
        let draft = CheckpointDraft {
            cp_seq,
            kind,
            at,
            writer: "w1".to_owned(),
            seq: head.0,
            head_hash: head.1,
            prev_hash,
            replaces_key: None,
        };
        checkpoints.push(draft.sign(&public, |payload| key.sign(payload)));
    };
    sign(
        &mut checkpoints,
        CheckpointKind::Start,
        tick(),
        (0, GENESIS),
    );
    let mut head = (0, GENESIS);
    let mut entries = Vec::new();
    for &(event, token, request_id, outcome, detail, reason) in records {
        let entry = Entry {
            writer: "w1".to_owned(),
            seq: head.0 + 1,
            at: tick(),
            caller: "spiffe://vault.test/payments".to_owned(),
            origin: "10.0.0.7:50412".to_owned(),
            event: event.to_owned(),
            detail: detail.map(str::to_owned),
            outcome: outcome.to_owned(),
            resource: format!("merchant/m-1/token/{token}"),
            merchant_id: Some("m-1".to_owned()),
            token: Some(token.to_owned()),
            request_id: request_id.to_owned(),
            reason: reason.map(str::to_owned),
            prev_hash: head.1,
            hash: GENESIS,
        }
        .sealed();
        head = (entry.seq, entry.hash);
        entries.push(entry);
    }
    sign(&mut checkpoints, CheckpointKind::Stop, tick(), head);
    let header = Line::Header(ExportHeader {
        format: EXPORT_FORMAT.to_owned(),
        from: None,
        to: None,
        exported_at: tick(),
        checkpoints: checkpoints.len() as u64,
        records: entries.len() as u64,
        keep_until: None,
    });
    let lines: Vec<String> = std::iter::once(header)
        .chain(checkpoints.into_iter().map(Line::Checkpoint))
        .chain(entries.into_iter().map(Line::Record))
        .map(|line| serde_json::to_string(&line).unwrap())
        .collect();
    let export = dir.join("export.jsonl");
    std::fs::write(&export, lines.join("\n") + "\n").unwrap();
    let key_file = dir.join("vault-audit.pub");
    let keys = vec![PublicKey::ed25519(public)];
    std::fs::write(&key_file, serde_json::to_string(&keys).unwrap()).unwrap();
    (key_file, export)
}

const FORWARD: &str =
    "destination=acme fingerprint=sha256:ab12 template=charge method=POST path=/v1/charges";

fn trail(dir: &Path) -> (PathBuf, PathBuf) {
    write_export(
        dir,
        &[
            ("tokenize", "tok_1", "r-0", "success", None, None),
            (
                "detokenize",
                "tok_1",
                "r-1",
                "success",
                None,
                Some("refund 42"),
            ),
            (
                "forward",
                "tok_1",
                "r-2",
                "success",
                Some(FORWARD),
                Some("order 7"),
            ),
            (
                "forward.result",
                "tok_1",
                "r-2",
                "success",
                Some("destination=acme status=201 bytes=123"),
                None,
            ),
        ],
    )
}

fn vaultctl(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vaultctl"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_verified_export_is_traced_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (key, export) = trail(dir.path());
    let (key, export) = (key.to_str().unwrap(), export.to_str().unwrap());

    let out = vaultctl(&["audit", "trace", "tok_1", "--public-key", key, export]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("verified: 4 records from 1 writer"),
        "{stdout}"
    );
    assert!(
        stdout.contains("token tok_1: 2 accesses, oldest first\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  detokenize  success\n"), "{stdout}");
    assert!(stdout.contains("  forward  success\n"), "{stdout}");
    assert!(
        stdout.contains("  result        status 201, 123 bytes\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  path          /v1/charges\n"), "{stdout}");
    assert!(out.stderr.is_empty(), "{out:?}");

    let out = vaultctl(&[
        "--output",
        "json",
        "audit",
        "trace",
        "tok_1",
        "--merchant",
        "m-1",
        "--public-key",
        key,
        export,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).matches('\n').count(), 1);
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["token"], "tok_1");
    assert_eq!(value["merchant"], "m-1");
    assert_eq!(value["verified"]["clean"], true);
    assert_eq!(value["verified"]["records"], 4);
    assert_eq!(value["accesses"].as_array().map(Vec::len), Some(2));
    assert_eq!(value["accesses"][1]["forward"]["results"][0]["status"], 201);

    // The same records in two exports (an archive and a later export overlap) count once.
    let out = vaultctl(&[
        "audit",
        "trace",
        "tok_1",
        "--public-key",
        key,
        export,
        export,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("token tok_1: 2 accesses, oldest first\n"),
        "{out:?}"
    );

    let out = vaultctl(&["audit", "trace", "tok_9", "--public-key", key, export]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout)
            .ends_with("token tok_9: no detokenize or forward of this token in these exports\n"),
        "{out:?}"
    );
}

#[test]
fn a_tampered_export_is_refused_with_exit_code_one() {
    let dir = tempfile::tempdir().unwrap();
    let (key, export) = trail(dir.path());
    let original = std::fs::read_to_string(&export).unwrap();
    std::fs::write(&export, original.replace("refund 42", "refund 43")).unwrap();
    let (key, export) = (key.to_str().unwrap(), export.to_str().unwrap());

    let out = vaultctl(&["audit", "trace", "tok_1", "--public-key", key, export]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("edited: "), "{stdout}");
    assert!(stdout.contains("FAILED: "), "{stdout}");
    assert!(
        stdout.ends_with(
            "no trace of token tok_1: the exports do not verify, so what they say of it cannot \
             be trusted\n"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("refund"), "{stdout}");

    let out = vaultctl(&[
        "audit",
        "trace",
        "tok_1",
        "--public-key",
        key,
        export,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["accesses"], Value::Null);
    assert_eq!(value["verified"]["clean"], false);

    let out = vaultctl(&[
        "audit",
        "trace",
        "tok_1",
        "--public-key",
        key,
        "absent.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).starts_with("vaultctl: cannot read absent.jsonl"));
}
