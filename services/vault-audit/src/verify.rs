//! The offline verifier: reads export files and names every record or checkpoint that breaks
//! the chains, and how.
//!
//! One file (a [`Segment`]) must stand on its own:
//! - its checkpoints carry valid signatures by a trusted key, hash to their stated hash, run
//!   without gaps by `cp_seq` and each names its predecessor's hash;
//! - each writer's records are exactly the seqs after its first checkpoint in the file (the
//!   anchor) up to its last one, each hashing to its stated hash and naming its predecessor's,
//!   and each checkpoint's head matches the record at its seq;
//! - lines come in the canonical order (header, checkpoints by `cp_seq`, records by writer and
//!   seq), so a swapped pair of lines is reported as reordered.
//!
//! Several files (an archived export and the pruned remainder, say) must also agree where they
//! overlap and leave no gap between them, in the checkpoint chain or in any writer's chain.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;

use vault_crypto::verify_signature;

use crate::format::{
    Checkpoint, CheckpointKind, EXPORT_FORMAT, Entry, ExportHeader, GENESIS, HASH_LEN, Line,
    PublicKey,
};

/// How a record or checkpoint broke the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// Its contents no longer match its hash, its successor's link, or a checkpoint; or the
    /// line no longer parses.
    Edited,
    /// Records or checkpoints that must be there are not.
    Missing,
    /// A record or checkpoint that no chain accounts for (a forgery or a copy).
    Inserted,
    /// Lines out of their canonical order.
    Reordered,
    /// A checkpoint whose signature does not verify under any trusted key.
    BadSignature,
}

impl ProblemKind {
    /// The kind's name as reports spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Missing => "missing",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
            Self::BadSignature => "bad signature",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing wrong with the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// How it broke.
    pub kind: ProblemKind,
    /// The file it was found in.
    pub file: String,
    /// The line, when one line is to blame (1-based).
    pub line: Option<usize>,
    /// The records (`WRITER#SEQ`) or checkpoints (`checkpoint #N`) it concerns.
    pub subjects: Vec<String>,
    /// What exactly is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.file)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The name of record `seq` of `writer` in reports.
fn record_name(writer: &str, seq: u64) -> String {
    format!("{writer}#{seq}")
}

fn checkpoint_name(cp_seq: u64) -> String {
    format!("checkpoint #{cp_seq}")
}

fn range_names(writer: &str, from: u64, to: u64) -> Vec<String> {
    // Name at most a handful: a truncated tail can be long.
    const NAMED: u64 = 16;
    let mut names: Vec<String> = (from..=to.min(from.saturating_add(NAMED - 1)))
        .map(|seq| record_name(writer, seq))
        .collect();
    if to >= from.saturating_add(NAMED) {
        names.push(record_name(writer, to));
    }
    names
}

fn range_text(writer: &str, from: u64, to: u64) -> String {
    if from == to {
        format!("record {}", record_name(writer, from))
    } else {
        format!(
            "records {}..{} ({} records)",
            record_name(writer, from),
            record_name(writer, to),
            to - from + 1
        )
    }
}

/// One export file, parsed.
#[derive(Debug, Clone, Default)]
pub struct Segment {
    /// The file's name, for reports.
    pub name: String,
    /// Its header, if the first line was one.
    pub header: Option<ExportHeader>,
    /// Its checkpoints with their line numbers, in file order.
    pub checkpoints: Vec<(usize, Checkpoint)>,
    /// Its records with their line numbers, in file order.
    pub records: Vec<(usize, Entry)>,
    /// Lines that did not parse or were out of place.
    problems: Vec<Problem>,
}

/// Reads an export. Lines that do not parse are reported (as edited) when it is verified.
///
/// # Errors
/// Only an I/O error from `input`.
pub fn parse_export(name: &str, input: impl BufRead) -> std::io::Result<Segment> {
    let mut segment = Segment {
        name: name.to_owned(),
        ..Segment::default()
    };
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let problem = |kind, message: &str| Problem {
            kind,
            file: name.to_owned(),
            line: Some(number),
            subjects: Vec::new(),
            message: message.to_owned(),
        };
        match serde_json::from_str::<Line>(&line) {
            Err(_) => segment.problems.push(problem(
                ProblemKind::Edited,
                "the line is not a valid export line (altered or damaged)",
            )),
            Ok(Line::Header(header)) => {
                if number == 1 {
                    if header.format != EXPORT_FORMAT {
                        segment.problems.push(problem(
                            ProblemKind::Edited,
                            "the header names a format this verifier does not know",
                        ));
                    }
                    segment.header = Some(header);
                } else {
                    segment.problems.push(problem(
                        ProblemKind::Inserted,
                        "a second header inside the file",
                    ));
                }
            }
            Ok(Line::Checkpoint(checkpoint)) => {
                if !segment.records.is_empty() {
                    segment.problems.push(Problem {
                        subjects: vec![checkpoint_name(checkpoint.cp_seq)],
                        ..problem(
                            ProblemKind::Reordered,
                            "a checkpoint after the records (checkpoints come first)",
                        )
                    });
                }
                segment.checkpoints.push((number, checkpoint));
            }
            Ok(Line::Record(entry)) => segment.records.push((number, entry)),
        }
    }
    if segment.header.is_none() {
        segment.problems.push(Problem {
            kind: ProblemKind::Missing,
            file: name.to_owned(),
            line: Some(1),
            subjects: Vec::new(),
            message: "the file does not start with an export header".to_owned(),
        });
    }
    Ok(segment)
}

/// One writer's chain as the files show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSummary {
    /// The writer.
    pub writer: String,
    /// Its anchor: the seq of its first checkpoint (its records start after it).
    pub anchor: u64,
    /// The seq of its last checkpoint (its records end there).
    pub head: u64,
    /// Records present.
    pub records: u64,
}

/// What the verifier found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Record lines read.
    pub records: u64,
    /// Checkpoint lines read.
    pub checkpoints: u64,
    /// The first and last checkpoint of the whole trail.
    pub checkpoint_range: Option<(u64, u64)>,
    /// The hash of the last checkpoint, in hex: keep it apart from the export to detect a
    /// later truncation of its tail.
    pub last_checkpoint_hash: Option<String>,
    /// Each writer's chain.
    pub writers: Vec<WriterSummary>,
    /// Everything wrong, by file and line.
    pub problems: Vec<Problem>,
}

impl Report {
    /// True if nothing is wrong.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies export `segments` against the trusted `keys`: each on its own, then together.
#[must_use]
pub fn verify(segments: &[Segment], keys: &[PublicKey]) -> Report {
    let mut report = Report::default();
    let mut checked = Vec::new();
    for segment in segments {
        report.records += segment.records.len() as u64;
        report.checkpoints += segment.checkpoints.len() as u64;
        report.problems.extend(segment.problems.iter().cloned());
        checked.push(check_segment(segment, keys, &mut report.problems));
    }
    check_together(&checked, &mut report.problems);

    let mut writers: BTreeMap<&str, WriterSummary> = BTreeMap::new();
    for chains in &checked {
        for (writer, chain) in &chains.writers {
            let summary = writers
                .entry(writer.as_str())
                .or_insert_with(|| WriterSummary {
                    writer: writer.clone(),
                    anchor: chain.anchor,
                    head: chain.head,
                    records: 0,
                });
            summary.anchor = summary.anchor.min(chain.anchor);
            summary.head = summary.head.max(chain.head);
            summary.records += chain.records;
        }
    }
    report.writers = writers.into_values().collect();
    let first = checked.iter().filter_map(|c| c.first_cp).min();
    let last = checked
        .iter()
        .filter_map(|c| c.last_cp.as_ref())
        .max_by_key(|c| c.0);
    report.checkpoint_range = first.zip(last.map(|l| l.0));
    report.last_checkpoint_hash = last.map(|l| hex::encode(l.1));
    report
}

/// A writer's chain within one segment.
struct Chain {
    anchor: u64,
    head: u64,
    records: u64,
    /// seq -> record hash, for comparing segments.
    hashes: BTreeMap<u64, [u8; HASH_LEN]>,
}

/// What one segment holds, for the checks across segments.
struct Checked {
    name: String,
    first_cp: Option<u64>,
    last_cp: Option<(u64, [u8; HASH_LEN])>,
    /// cp_seq -> (checkpoint hash, prev hash).
    checkpoints: BTreeMap<u64, ([u8; HASH_LEN], [u8; HASH_LEN])>,
    writers: BTreeMap<String, Chain>,
}

fn check_segment(segment: &Segment, keys: &[PublicKey], problems: &mut Vec<Problem>) -> Checked {
    let file = segment.name.as_str();
    let problem = |kind, line: Option<usize>, subjects: Vec<String>, message: String| Problem {
        kind,
        file: file.to_owned(),
        line,
        subjects,
        message,
    };

    if let Some(header) = &segment.header {
        let (records, checkpoints) = (
            segment.records.len() as u64,
            segment.checkpoints.len() as u64,
        );
        for (what, said, found) in [
            ("records", header.records, records),
            ("checkpoints", header.checkpoints, checkpoints),
        ] {
            if said != found {
                let kind = if found < said {
                    ProblemKind::Missing
                } else {
                    ProblemKind::Inserted
                };
                problems.push(problem(
                    kind,
                    Some(1),
                    Vec::new(),
                    format!("the header announces {said} {what}; the file holds {found}"),
                ));
            }
        }
    }

    // Checkpoints: order, signature, hash, then the chain by cp_seq.
    let mut by_cp: BTreeMap<u64, (usize, &Checkpoint)> = BTreeMap::new();
    let mut previous: Option<u64> = None;
    for (line, checkpoint) in &segment.checkpoints {
        let name = checkpoint_name(checkpoint.cp_seq);
        if let Some(prev) = previous {
            if checkpoint.cp_seq == prev || by_cp.contains_key(&checkpoint.cp_seq) {
                problems.push(problem(
                    ProblemKind::Inserted,
                    Some(*line),
                    vec![name.clone()],
                    format!("{name} appears twice"),
                ));
                continue;
            }
            if checkpoint.cp_seq < prev {
                problems.push(problem(
                    ProblemKind::Reordered,
                    Some(*line),
                    vec![name.clone(), checkpoint_name(prev)],
                    format!("{name} comes after {}", checkpoint_name(prev)),
                ));
            }
        }
        previous = Some(previous.map_or(checkpoint.cp_seq, |p| p.max(checkpoint.cp_seq)));
        let payload = checkpoint.payload();
        let trusted = keys.iter().find(|k| k.key_id == checkpoint.key_id);
        match trusted {
            None => problems.push(problem(
                ProblemKind::BadSignature,
                Some(*line),
                vec![name.clone()],
                format!(
                    "{name} is signed by key {}, which is not a trusted key",
                    checkpoint.key_id
                ),
            )),
            Some(key) if !verify_signature(&key.public_key, &payload, &checkpoint.signature) => {
                problems.push(problem(
                    ProblemKind::BadSignature,
                    Some(*line),
                    vec![name.clone()],
                    format!("{name}'s signature does not verify (the checkpoint was altered)"),
                ));
            }
            Some(_) => {
                if vault_crypto::sha256(&payload) != checkpoint.hash {
                    problems.push(problem(
                        ProblemKind::Edited,
                        Some(*line),
                        vec![name.clone()],
                        format!("{name}'s stated hash does not match its contents"),
                    ));
                }
            }
        }
        if CheckpointKind::from_name(&checkpoint.kind).is_none() {
            problems.push(problem(
                ProblemKind::Edited,
                Some(*line),
                vec![name.clone()],
                format!("{name} has an unknown kind"),
            ));
        }
        by_cp.insert(checkpoint.cp_seq, (*line, checkpoint));
    }
    let mut last: Option<&Checkpoint> = None;
    for (line, checkpoint) in by_cp.values() {
        let name = checkpoint_name(checkpoint.cp_seq);
        match last {
            None => {
                if checkpoint.cp_seq == 1 && checkpoint.prev_hash != GENESIS {
                    problems.push(problem(
                        ProblemKind::Edited,
                        Some(*line),
                        vec![name.clone()],
                        format!("{name} is the first checkpoint but names a predecessor"),
                    ));
                }
            }
            Some(before) if checkpoint.cp_seq > before.cp_seq + 1 => {
                let (from, to) = (before.cp_seq + 1, checkpoint.cp_seq - 1);
                problems.push(problem(
                    ProblemKind::Missing,
                    Some(*line),
                    (from..=to.min(from + 15)).map(checkpoint_name).collect(),
                    format!("checkpoints #{from}..#{to} are missing"),
                ));
            }
            Some(before) => {
                // The key may change only at a key_replaced checkpoint that names the key
                // before it; such a checkpoint must change it.
                let replacing = checkpoint.kind == CheckpointKind::KeyReplaced.as_str();
                let changed = checkpoint.key_id != before.key_id;
                let names_before = checkpoint.replaces_key.as_deref() == Some(&before.key_id);
                if changed != replacing || (replacing && !names_before) {
                    problems.push(problem(
                        ProblemKind::Edited,
                        Some(*line),
                        vec![name.clone(), checkpoint_name(before.cp_seq)],
                        format!(
                            "{name} is signed by key {} after {}, signed by {}: the signing key \
                             may change only at a key_replaced checkpoint that names the key it \
                             replaces",
                            checkpoint.key_id,
                            checkpoint_name(before.cp_seq),
                            before.key_id
                        ),
                    ));
                }
                if checkpoint.prev_hash != before.hash {
                    problems.push(problem(
                        ProblemKind::Edited,
                        Some(*line),
                        vec![name.clone(), checkpoint_name(before.cp_seq)],
                        format!(
                            "{name} does not follow {}: one of them was altered or replaced",
                            checkpoint_name(before.cp_seq)
                        ),
                    ));
                }
            }
        }
        last = Some(checkpoint);
    }

    // Records: canonical order, then each writer's chain.
    let mut by_writer: BTreeMap<&str, BTreeMap<u64, (usize, &Entry)>> = BTreeMap::new();
    let mut previous: Option<(&str, u64)> = None;
    for (line, entry) in &segment.records {
        let key = (entry.writer.as_str(), entry.seq);
        let name = record_name(key.0, key.1);
        let seen = by_writer
            .get(key.0)
            .is_some_and(|chain| chain.contains_key(&key.1));
        if seen {
            problems.push(problem(
                ProblemKind::Inserted,
                Some(*line),
                vec![name.clone()],
                format!("record {name} appears twice"),
            ));
            continue;
        }
        if let Some(prev) = previous
            && key < prev
        {
            problems.push(problem(
                ProblemKind::Reordered,
                Some(*line),
                vec![name.clone(), record_name(prev.0, prev.1)],
                format!(
                    "record {name} comes after record {}",
                    record_name(prev.0, prev.1)
                ),
            ));
        }
        previous = Some(previous.map_or(key, |p| p.max(key)));
        by_writer
            .entry(key.0)
            .or_default()
            .insert(key.1, (*line, entry));
    }

    let mut checkpoints_of: BTreeMap<&str, Vec<(usize, &Checkpoint)>> = BTreeMap::new();
    for (line, checkpoint) in by_cp.values() {
        checkpoints_of
            .entry(checkpoint.writer.as_str())
            .or_default()
            .push((*line, checkpoint));
    }
    let mut writers = BTreeMap::new();
    let mut names: Vec<&str> = by_writer.keys().copied().collect();
    names.extend(checkpoints_of.keys().copied());
    names.sort_unstable();
    names.dedup();
    for writer in names {
        let records = by_writer.remove(writer).unwrap_or_default();
        let cps = checkpoints_of.remove(writer).unwrap_or_default();
        let chain = check_writer(writer, &records, &cps, &problem, problems);
        writers.insert(writer.to_owned(), chain);
    }

    Checked {
        name: file.to_owned(),
        first_cp: by_cp.keys().next().copied(),
        last_cp: by_cp.values().next_back().map(|(_, c)| (c.cp_seq, c.hash)),
        checkpoints: by_cp
            .values()
            .map(|(_, c)| (c.cp_seq, (c.hash, c.prev_hash)))
            .collect(),
        writers,
    }
}

fn check_writer(
    writer: &str,
    records: &BTreeMap<u64, (usize, &Entry)>,
    checkpoints: &[(usize, &Checkpoint)],
    problem: &dyn Fn(ProblemKind, Option<usize>, Vec<String>, String) -> Problem,
    problems: &mut Vec<Problem>,
) -> Chain {
    // Each record hashes to its stated hash.
    for (seq, (line, entry)) in records {
        if entry.compute_hash() != entry.hash {
            let name = record_name(writer, *seq);
            problems.push(problem(
                ProblemKind::Edited,
                Some(*line),
                vec![name.clone()],
                format!("record {name} no longer matches its hash: a field was changed"),
            ));
        }
    }

    // The anchor is the lowest head signed for this writer: its first checkpoint, or the
    // checkpoint a prune wrote at the cut (records before it were pruned).
    let (Some((_, first)), Some((_, last))) = (
        checkpoints.iter().min_by_key(|(_, c)| (c.seq, c.cp_seq)),
        checkpoints.iter().max_by_key(|(_, c)| (c.seq, c.cp_seq)),
    ) else {
        for (seq, (line, _)) in records {
            let name = record_name(writer, *seq);
            problems.push(problem(
                ProblemKind::Inserted,
                Some(*line),
                vec![name.clone()],
                format!("record {name} belongs to a writer no checkpoint in the file signs"),
            ));
        }
        return Chain {
            anchor: 0,
            head: 0,
            records: records.len() as u64,
            hashes: BTreeMap::new(),
        };
    };
    let (anchor, head) = (
        first.seq,
        checkpoints
            .iter()
            .map(|c| c.1.seq)
            .max()
            .unwrap_or(last.seq),
    );

    // Only the seqs after the anchor, up to the last signed head, belong here.
    for (seq, (line, _)) in records {
        if *seq <= anchor || *seq > head {
            let name = record_name(writer, *seq);
            problems.push(problem(
                ProblemKind::Inserted,
                Some(*line),
                vec![name.clone()],
                format!(
                    "record {name} lies outside the checkpointed range {writer}#{}..{writer}#{head}",
                    anchor + 1
                ),
            ));
        }
    }
    let inside: BTreeMap<u64, (usize, &Entry)> = records
        .range(anchor + 1..=head)
        .map(|(seq, r)| (*seq, *r))
        .collect();

    // Gaps, and links between neighbours (the anchor's head before the first).
    let mut expected_seq = anchor + 1;
    let mut expected_prev = first.head_hash;
    for (seq, (line, entry)) in &inside {
        let name = record_name(writer, *seq);
        if *seq > expected_seq {
            problems.push(problem(
                ProblemKind::Missing,
                Some(*line),
                range_names(writer, expected_seq, seq - 1),
                format!(
                    "{} missing before record {name}",
                    range_text(writer, expected_seq, seq - 1)
                ),
            ));
        } else if entry.prev_hash != expected_prev {
            let before = if *seq == anchor + 1 {
                format!("the head signed by {}", checkpoint_name(first.cp_seq))
            } else {
                format!("record {}", record_name(writer, seq - 1))
            };
            let mut subjects = vec![name.clone()];
            if *seq > anchor + 1 {
                subjects.push(record_name(writer, seq - 1));
            }
            problems.push(problem(
                ProblemKind::Edited,
                Some(*line),
                subjects,
                format!(
                    "record {name} does not follow {before}: one of them was altered or replaced"
                ),
            ));
        }
        expected_seq = seq + 1;
        expected_prev = entry.hash;
    }
    if expected_seq <= head {
        let line = inside.values().next_back().map(|(l, _)| *l);
        problems.push(problem(
            ProblemKind::Missing,
            line,
            range_names(writer, expected_seq, head),
            format!(
                "{} missing: the chain ends before the head {} signs (truncated)",
                range_text(writer, expected_seq, head),
                checkpoint_name(last.cp_seq)
            ),
        ));
    }

    // Every signed head matches the record at its seq.
    let mut hashes: BTreeMap<u64, [u8; HASH_LEN]> =
        inside.iter().map(|(seq, (_, e))| (*seq, e.hash)).collect();
    hashes.entry(anchor).or_insert(first.head_hash);
    for (line, checkpoint) in checkpoints {
        if let Some(hash) = hashes.get(&checkpoint.seq)
            && *hash != checkpoint.head_hash
        {
            let name = record_name(writer, checkpoint.seq);
            problems.push(problem(
                ProblemKind::Edited,
                Some(*line),
                vec![name.clone(), checkpoint_name(checkpoint.cp_seq)],
                format!(
                    "record {name} is not the record {} signed: the chain up to it was rewritten",
                    checkpoint_name(checkpoint.cp_seq)
                ),
            ));
        }
    }
    Chain {
        anchor,
        head,
        records: records.len() as u64,
        hashes,
    }
}

fn check_together(segments: &[Checked], problems: &mut Vec<Problem>) {
    if segments.len() < 2 {
        return;
    }
    let between = |a: &Checked, b: &Checked| format!("{} and {}", a.name, b.name);
    let mut order: Vec<&Checked> = segments.iter().filter(|s| s.first_cp.is_some()).collect();
    order.sort_by_key(|s| s.first_cp);
    for pair in order.windows(2) {
        let [a, b] = pair else { continue };
        // Overlaps agree.
        for (cp_seq, (hash, _)) in &a.checkpoints {
            if let Some((other, _)) = b.checkpoints.get(cp_seq)
                && other != hash
            {
                problems.push(Problem {
                    kind: ProblemKind::Edited,
                    file: between(a, b),
                    line: None,
                    subjects: vec![checkpoint_name(*cp_seq)],
                    message: format!("{} differs between the files", checkpoint_name(*cp_seq)),
                });
            }
        }
        // No gap between them.
        if let (Some((a_last, a_hash)), Some(b_first)) = (a.last_cp, b.first_cp) {
            let joined = b_first <= a_last
                || (b_first == a_last + 1
                    && b.checkpoints
                        .get(&b_first)
                        .is_some_and(|(_, prev)| *prev == a_hash));
            if !joined {
                problems.push(Problem {
                    kind: ProblemKind::Missing,
                    file: between(a, b),
                    line: None,
                    subjects: vec![checkpoint_name(a_last + 1)],
                    message: format!(
                        "checkpoints #{}..#{} are in neither file",
                        a_last + 1,
                        b_first.saturating_sub(1).max(a_last + 1)
                    ),
                });
            }
        }
    }
    // Each writer's pieces overlap or touch, and agree where they overlap.
    let mut pieces: BTreeMap<&str, Vec<(&Checked, &Chain)>> = BTreeMap::new();
    for segment in segments {
        for (writer, chain) in &segment.writers {
            pieces.entry(writer).or_default().push((segment, chain));
        }
    }
    for (writer, mut list) in pieces {
        list.sort_by_key(|(_, c)| (c.anchor, c.head));
        for pair in list.windows(2) {
            let [(sa, a), (sb, b)] = pair else { continue };
            for (seq, hash) in &a.hashes {
                if let Some(other) = b.hashes.get(seq)
                    && other != hash
                {
                    let name = record_name(writer, *seq);
                    problems.push(Problem {
                        kind: ProblemKind::Edited,
                        file: between(sa, sb),
                        line: None,
                        subjects: vec![name.clone()],
                        message: format!("record {name} differs between the files"),
                    });
                }
            }
            if b.anchor > a.head {
                problems.push(Problem {
                    kind: ProblemKind::Missing,
                    file: between(sa, sb),
                    line: None,
                    subjects: range_names(writer, a.head + 1, b.anchor),
                    message: format!(
                        "{} are in neither file",
                        range_text(writer, a.head + 1, b.anchor)
                    ),
                });
            }
        }
    }
}
