//! The verifier against trails built here: clean ones pass, and each kind of tampering is
//! found and the record it touched is named.

use std::io::Cursor;

use rand::RngExt;
use vault_crypto::{KeyMaterial, SigningKey};

use super::*;

struct Trail {
    key: SigningKey,
    checkpoints: Vec<Checkpoint>,
    records: Vec<Entry>,
    heads: std::collections::BTreeMap<String, (u64, [u8; HASH_LEN])>,
    micros: i64,
}

impl Trail {
    fn new() -> Self {
        Self {
            key: SigningKey::from_seed(&KeyMaterial::generate()),
            checkpoints: Vec::new(),
            records: Vec::new(),
            heads: std::collections::BTreeMap::new(),
            micros: 1_795_000_000_000_000,
        }
    }

    fn tick(&mut self) -> String {
        self.micros += 1_000;
        format_time(self.micros).unwrap()
    }

    fn record(&mut self, writer: &str, merchant: &str) {
        let (seq, prev) = self.heads.get(writer).copied().unwrap_or((0, GENESIS));
        let at = self.tick();
        let entry = Entry {
            writer: writer.to_owned(),
            seq: seq + 1,
            at,
            caller: "spiffe://example/payments".to_owned(),
            origin: "127.0.0.1:50000".to_owned(),
            event: "detokenize".to_owned(),
            detail: None,
            outcome: "success".to_owned(),
            resource: format!("merchant/{merchant}/token/tok_{seq}"),
            merchant_id: Some(merchant.to_owned()),
            token: Some(format!("tok_{seq}")),
            request_id: format!("req-{writer}-{seq}"),
            reason: Some("refund".to_owned()),
            prev_hash: prev,
            hash: GENESIS,
        }
        .sealed();
        self.heads
            .insert(writer.to_owned(), (entry.seq, entry.hash));
        self.records.push(entry);
    }

    fn checkpoint(&mut self, writer: &str, kind: CheckpointKind) {
        // A key_replaced checkpoint names the key of the checkpoint before it.
        let replaces = (kind == CheckpointKind::KeyReplaced)
            .then(|| self.checkpoints.last().map(|c| c.key_id.clone()))
            .flatten();
        self.checkpoint_naming(writer, kind, replaces);
    }

    fn checkpoint_naming(&mut self, writer: &str, kind: CheckpointKind, replaces: Option<String>) {
        let (seq, head_hash) = self.heads.get(writer).copied().unwrap_or((0, GENESIS));
        let (cp_seq, prev_hash) = self
            .checkpoints
            .last()
            .map_or((1, GENESIS), |c| (c.cp_seq + 1, c.hash));
        let at = self.tick();
        let draft = CheckpointDraft {
            cp_seq,
            kind,
            at,
            writer: writer.to_owned(),
            seq,
            head_hash,
            prev_hash,
            replaces_key: replaces,
        };
        let public = self.key.public_key();
        let checkpoint = draft.sign(&public, |payload| self.key.sign(payload));
        self.checkpoints.push(checkpoint);
    }

    fn public_keys(&self) -> Vec<PublicKey> {
        vec![PublicKey::ed25519(self.key.public_key())]
    }

    /// A typical trail: two writers, interleaved, with interval checkpoints, both stopped.
    fn typical() -> Self {
        let mut trail = Self::new();
        trail.checkpoint("w1", CheckpointKind::Start);
        trail.checkpoint("w2", CheckpointKind::Start);
        for round in 0..60 {
            trail.record(if round % 3 == 0 { "w2" } else { "w1" }, "m-1");
            if round % 17 == 16 {
                trail.checkpoint("w1", CheckpointKind::Interval);
                trail.checkpoint("w2", CheckpointKind::Interval);
            }
        }
        trail.checkpoint("w1", CheckpointKind::Stop);
        trail.checkpoint("w2", CheckpointKind::Stop);
        trail
    }

    /// The trail as export lines, in canonical order.
    fn lines(&self) -> Vec<String> {
        let mut records = self.records.clone();
        records.sort_by(|a, b| (&a.writer, a.seq).cmp(&(&b.writer, b.seq)));
        let header = Line::Header(ExportHeader {
            format: EXPORT_FORMAT.to_owned(),
            from: None,
            to: None,
            exported_at: format_time(self.micros).unwrap(),
            checkpoints: self.checkpoints.len() as u64,
            records: records.len() as u64,
            keep_until: None,
        });
        std::iter::once(header)
            .chain(self.checkpoints.iter().cloned().map(Line::Checkpoint))
            .chain(records.into_iter().map(Line::Record))
            .map(|line| serde_json::to_string(&line).unwrap())
            .collect()
    }
}

fn check(lines: &[String], keys: &[PublicKey]) -> Report {
    let text = lines.join("\n");
    let segment = parse_export("export.jsonl", Cursor::new(text)).unwrap();
    verify(&[segment], keys)
}

fn names(report: &Report) -> Vec<String> {
    report
        .problems
        .iter()
        .flat_map(|p| p.subjects.iter().cloned())
        .collect()
}

#[test]
fn an_untouched_trail_verifies_clean() {
    let trail = Trail::typical();
    let report = check(&trail.lines(), &trail.public_keys());
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!(report.records, 60);
    assert_eq!(report.writers.len(), 2);
    assert_eq!(report.checkpoint_range, Some((1, 10)));
}

#[test]
fn an_untrusted_key_is_a_bad_signature() {
    let trail = Trail::typical();
    let stranger = Trail::new();
    let report = check(&trail.lines(), &stranger.public_keys());
    assert!(!report.is_clean());
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::BadSignature)
    );
}

#[test]
fn times_are_fixed_width_utc() {
    assert_eq!(format_time(0).unwrap(), "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        format_time(1_795_000_000_123_456).unwrap(),
        "2026-11-18T11:06:40.123456Z"
    );
    assert_eq!(
        parse_time("2026-11-18T11:06:40.123456Z"),
        Some(1_795_000_000_123_456)
    );
    assert_eq!(
        parse_time("2026-11-18T12:06:40.123456+01:00"),
        Some(1_795_000_000_123_456)
    );
    assert_eq!(parse_time("yesterday"), None);
}

/// Which record line (index into `lines`) holds record `n` of the export (0-based).
fn record_line(trail: &Trail, n: usize) -> usize {
    1 + trail.checkpoints.len() + n
}

fn record_at(lines: &[String], index: usize) -> Entry {
    match serde_json::from_str::<Line>(&lines[index]).unwrap() {
        Line::Record(entry) => entry,
        other => panic!("line {index} is not a record: {other:?}"),
    }
}

fn name_of(entry: &Entry) -> String {
    format!("{}#{}", entry.writer, entry.seq)
}

#[test]
fn every_kind_of_tampering_is_found_and_named() {
    let trail = Trail::typical();
    let keys = trail.public_keys();
    let clean = trail.lines();
    let records = trail.records.len();
    let mut rng = rand::rng();
    for trial in 0..300 {
        // Edit one field of one record (sometimes recomputing its hash, as a forger would).
        let n = rng.random_range(0..records);
        let index = record_line(&trail, n);
        let mut lines = clean.clone();
        let mut entry = record_at(&lines, index);
        let victim = name_of(&entry);
        match trial % 5 {
            0 => entry.outcome = "denied".to_owned(),
            1 => entry.caller = "spiffe://example/intruder".to_owned(),
            2 => entry.at = format_time(0).unwrap(),
            3 => entry.reason = None,
            _ => entry.merchant_id = Some("m-2".to_owned()),
        }
        if trial % 2 == 1 {
            entry = entry.sealed();
        }
        lines[index] = serde_json::to_string(&Line::Record(entry)).unwrap();
        let report = check(&lines, &keys);
        assert!(
            names(&report).contains(&victim),
            "edit {victim}: {:#?}",
            report.problems
        );

        // Delete one record.
        let mut lines = clean.clone();
        let gone = record_at(&lines, index);
        lines.remove(index);
        let report = check(&lines, &keys);
        assert!(
            names(&report).contains(&name_of(&gone)),
            "delete: {:#?}",
            report.problems
        );

        // Insert a forged record: a copy of a real one, altered and resealed, anywhere.
        let mut lines = clean.clone();
        let mut forged = record_at(&lines, index);
        forged.token = Some("tok_forged".to_owned());
        forged = forged.sealed();
        let at = rng.random_range(1..=lines.len());
        lines.insert(
            at,
            serde_json::to_string(&Line::Record(forged.clone())).unwrap(),
        );
        let report = check(&lines, &keys);
        assert!(
            names(&report).contains(&name_of(&forged)),
            "insert: {:#?}",
            report.problems
        );

        // Swap two records.
        let mut lines = clean.clone();
        let other = loop {
            let m = rng.random_range(0..records);
            if m != n {
                break record_line(&trail, m);
            }
        };
        let (a, b) = (record_at(&lines, index), record_at(&lines, other));
        lines.swap(index, other);
        let report = check(&lines, &keys);
        let found = names(&report);
        assert!(
            found.contains(&name_of(&a)) || found.contains(&name_of(&b)),
            "swap: {:#?}",
            report.problems
        );

        // Truncate the tail (the checkpoints before it stay).
        let mut lines = clean.clone();
        let cut = rng.random_range(record_line(&trail, 0)..lines.len());
        let first_gone = record_at(&lines, cut);
        lines.truncate(cut);
        let report = check(&lines, &keys);
        assert!(
            names(&report).contains(&name_of(&first_gone)),
            "truncate: {:#?}",
            report.problems
        );
    }
}

#[test]
fn checkpoints_that_are_altered_removed_or_reordered_are_found() {
    let trail = Trail::typical();
    let keys = trail.public_keys();
    let clean = trail.lines();
    // Altered: the signature breaks.
    let mut lines = clean.clone();
    lines[3] = lines[3]
        .replace("\"interval\"", "\"stop\"")
        .replace("\"start\"", "\"stop\"");
    let report = check(&lines, &keys);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::BadSignature)
    );
    // Removed from the middle.
    let mut lines = clean.clone();
    lines.remove(4);
    let report = check(&lines, &keys);
    assert!(
        names(&report).contains(&"checkpoint #4".to_owned()),
        "{:#?}",
        report.problems
    );
    // Swapped.
    let mut lines = clean.clone();
    lines.swap(4, 5);
    let report = check(&lines, &keys);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Reordered)
    );
}

#[test]
fn two_files_must_meet_without_a_gap() {
    let trail = Trail::typical();
    let keys = trail.public_keys();
    let lines = trail.lines();
    // File A holds checkpoints #1..#6 and the records they sign; file B starts at #5, the
    // last checkpoint of w1 in A (w2's is #6), as a pruned remainder does: each writer's
    // first checkpoint in B is at or before its last in A.
    let split = |from: u64, to: u64| -> Vec<String> {
        let cps: Vec<Checkpoint> = trail
            .checkpoints
            .iter()
            .filter(|c| (from..=to).contains(&c.cp_seq))
            .cloned()
            .collect();
        let mut bounds = std::collections::BTreeMap::new();
        for c in &cps {
            let e = bounds.entry(c.writer.clone()).or_insert((c.seq, c.seq));
            e.0 = e.0.min(c.seq);
            e.1 = e.1.max(c.seq);
        }
        let mut records: Vec<Entry> = trail
            .records
            .iter()
            .filter(|r| {
                bounds
                    .get(&r.writer)
                    .is_some_and(|(lo, hi)| r.seq > *lo && r.seq <= *hi)
            })
            .cloned()
            .collect();
        records.sort_by(|a, b| (&a.writer, a.seq).cmp(&(&b.writer, b.seq)));
        let header = Line::Header(ExportHeader {
            format: EXPORT_FORMAT.to_owned(),
            from: None,
            to: None,
            exported_at: "x".to_owned(),
            checkpoints: cps.len() as u64,
            records: records.len() as u64,
            keep_until: None,
        });
        std::iter::once(header)
            .chain(cps.into_iter().map(Line::Checkpoint))
            .chain(records.into_iter().map(Line::Record))
            .map(|l| serde_json::to_string(&l).unwrap())
            .collect()
    };
    let parse =
        |name: &str, lines: &[String]| parse_export(name, Cursor::new(lines.join("\n"))).unwrap();
    let a = split(1, 6);
    let b = split(5, 10);
    let report = verify(&[parse("a", &a), parse("b", &b)], &keys);
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!(lines.len(), 1 + 10 + 60);
    // A gap between the files is found.
    let c = split(8, 10);
    let report = verify(&[parse("a", &a), parse("c", &c)], &keys);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Missing),
        "{:#?}",
        report.problems
    );
}

/// The checkpoint chain may change signing keys only at a `key_replaced` checkpoint that
/// names the key it replaces: both keys trusted, such a change verifies clean; the same change
/// at any other kind, or at a key_replaced checkpoint naming another key (or none), is named,
/// so a key swapped in unannounced shows even to an auditor who trusts both keys.
#[test]
fn the_signing_key_may_change_only_at_a_key_replaced_checkpoint_naming_the_old_key() {
    let named = |trail: &Trail| trail.checkpoints.last().map(|c| c.key_id.clone());
    let cases: [(CheckpointKind, Option<&str>, bool); 5] = [
        (CheckpointKind::KeyReplaced, None, true),
        (CheckpointKind::Interval, None, false),
        (CheckpointKind::Start, None, false),
        (CheckpointKind::KeyReplaced, Some("another-key"), false),
        (CheckpointKind::KeyReplaced, Some(""), false),
    ];
    for (kind, naming, clean) in cases {
        let mut trail = Trail::new();
        trail.checkpoint("w1", CheckpointKind::Start);
        trail.record("w1", "m-1");
        trail.checkpoint("w1", CheckpointKind::Interval);
        let old = PublicKey::ed25519(trail.key.public_key());
        let replaces = match naming {
            None => (kind == CheckpointKind::KeyReplaced)
                .then(|| named(&trail))
                .flatten(),
            Some("") => None,
            Some(other) => Some(other.to_owned()),
        };
        trail.key = SigningKey::from_seed(&KeyMaterial::generate());
        trail.record("w1", "m-1");
        trail.checkpoint_naming("w1", kind, replaces);
        trail.checkpoint("w1", CheckpointKind::Stop);
        let mut keys = trail.public_keys();
        keys.push(old);
        let report = check(&trail.lines(), &keys);
        assert_eq!(
            report.is_clean(),
            clean,
            "{kind:?} {naming:?}: {:?}",
            report.problems
        );
        if !clean {
            assert_eq!(
                names(&report),
                ["checkpoint #3", "checkpoint #2"],
                "{kind:?}"
            );
        }
    }
}
