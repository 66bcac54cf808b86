//! The optional second audit sink (`[audit.sink]`) for a SIEM: it gets every record the
//! database gets, as export record lines; when it is required and fails, calls fail closed
//! (UNAVAILABLE, no PAN released) and succeed again once it takes records.

use std::io::{BufRead, BufReader};
use std::path::Path;

use tonic::Code;
use vault_audit::{Entry, Line};

use crate::harness::*;

fn sink_entries(text: &str) -> Vec<Entry> {
    text.lines()
        .map(|line| match serde_json::from_str(line).unwrap() {
            Line::Record(entry) => entry,
            other => panic!("the sink wrote {other:?}"),
        })
        .collect()
}

async fn stored(vault: &TestVault) -> Vec<(String, i64, Vec<u8>)> {
    sqlx::query_as("SELECT writer, seq, hash FROM audit_log ORDER BY writer, seq")
        .fetch_all(&vault.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_file_sink_gets_every_committed_record() {
    let sink = "[audit.sink]\npath = \"siem.jsonl\"\nrequired = true\n";
    let vault = TestVault::start_with_keys("url = \"sqlite:vault.db\"\n", sink, "info").await;
    let mut pans = Vec::new();
    for i in 0..5 {
        let pan = random_pan("411111");
        let token = vault
            .tokenize_at(&vault.addr, &format!("m-{i}"), &pan)
            .await;
        assert_eq!(
            vault
                .detokenize_at(&vault.addr, &format!("m-{i}"), &token)
                .await,
            pan
        );
        pans.push(pan);
    }
    let denied = vault
        .client("gateway")
        .await
        .detokenize(detokenize_request("m-0", "tok_AAAAAAAAAAAAAAAAAAAAAA"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let dir = vault.dir.path().to_owned();
    let expected = stored(&vault).await;
    let text = std::fs::read_to_string(dir.join("siem.jsonl")).unwrap();
    let entries = sink_entries(&text);
    let copied: Vec<(String, i64, Vec<u8>)> = entries
        .iter()
        .map(|e| {
            (
                e.writer.clone(),
                i64::try_from(e.seq).unwrap(),
                e.hash.to_vec(),
            )
        })
        .collect();
    assert_eq!(
        copied, expected,
        "the sink and the database hold the same records"
    );
    for entry in &entries {
        assert_eq!(entry.compute_hash(), entry.hash);
    }
    assert!(
        entries
            .iter()
            .any(|e| e.event == "detokenize" && e.outcome == "denied")
    );
    for pan in &pans {
        assert!(!text.contains(pan.as_str()), "a PAN reached the sink");
    }
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo (coreutils) is needed: apt-get install coreutils");
    assert!(made.success());
}

/// Reads the FIFO at `path` on a thread until a line passes `until`, then closes it (as a
/// SIEM forwarder that dies would); returns the lines read.
fn read_fifo_until(path: &Path, until: fn(&str) -> bool) -> std::thread::JoinHandle<Vec<String>> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let fifo = std::fs::File::open(&path).unwrap();
        let mut lines = Vec::new();
        for line in BufReader::new(fifo).lines() {
            let line = line.unwrap();
            let done = until(&line);
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
}

fn tokenize_line(line: &str) -> bool {
    line.contains("\"event\":\"tokenize\"")
}

#[tokio::test]
async fn a_required_sink_that_fails_refuses_calls_and_releases_no_pan() {
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    mkfifo(&dir.path().join("siem.fifo"));
    let reader = read_fifo_until(&dir.path().join("siem.fifo"), tokenize_line);
    let keys = format!("{DEV_KEK}[audit.sink]\npath = \"siem.fifo\"\nrequired = true\n");
    let vault = TestVault::start_in(dir, "url = \"sqlite:vault.db\"\n", &keys, &[], "info").await;
    let pan = random_pan("411111");
    let token = vault.tokenize_at(&vault.addr, "m-1", &pan).await;
    // The forwarder read the tokenize record and went away.
    let read = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert!(read.iter().any(|l| tokenize_line(l)));
    let before = stored(&vault).await;

    let mut payments = vault.client("payments").await;
    for _ in 0..3 {
        let refused = payments
            .detokenize(detokenize_request("m-1", &token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(!refused.message().contains(pan.as_str()));
        let tokenize = vault
            .client("gateway")
            .await
            .tokenize(tokenize_request("m-1", &random_pan("555555")))
            .await
            .unwrap_err();
        assert_eq!(tokenize.code(), Code::Unavailable);
    }
    // Nothing went ahead: the database holds no record the sink lacks, and no new token.
    assert_eq!(stored(&vault).await, before);
    assert_eq!(vault.token_count().await, 1);
    assert!(!vault.logs().contains(pan.as_str()));

    // A forwarder reads again: calls succeed again, and it gets their records.
    let fifo = vault.dir.path().join("siem.fifo");
    let again = read_fifo_until(&fifo, |l| {
        l.contains("\"event\":\"detokenize\"") && l.contains("\"success\"")
    });
    let mut released = None;
    for _ in 0..100 {
        match payments.detokenize(detokenize_request("m-1", &token)).await {
            Ok(answer) => {
                released = Some(answer.into_inner().take_pan());
                break;
            }
            Err(status) => {
                // Until the reader has opened the FIFO.
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(released.as_deref(), Some(pan.as_str()));
    let read = tokio::task::spawn_blocking(move || again.join().unwrap())
        .await
        .unwrap();
    assert!(read.last().is_some_and(|l| l.contains("\"detokenize\"")));
}

#[tokio::test]
async fn an_optional_sink_that_fails_is_logged_and_calls_go_on() {
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    mkfifo(&dir.path().join("siem.fifo"));
    let reader = read_fifo_until(&dir.path().join("siem.fifo"), |l| {
        l.contains("\"event\":\"vault.start\"")
    });
    let keys = format!("{DEV_KEK}[audit.sink]\npath = \"siem.fifo\"\nrequired = false\n");
    let vault = TestVault::start_in(dir, "url = \"sqlite:vault.db\"\n", &keys, &[], "info").await;
    tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let pan = random_pan("411111");
    let token = vault.tokenize_at(&vault.addr, "m-1", &pan).await;
    assert_eq!(vault.detokenize_at(&vault.addr, "m-1", &token).await, pan);
    assert!(wait_for_log(&vault, "audit sink write failed").await);
}
