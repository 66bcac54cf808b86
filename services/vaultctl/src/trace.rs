//! `vaultctl audit trace`: where did this card go? Every detokenize and forward of one token,
//! from audit exports, offline.
//!
//! The exports are verified first, exactly as `audit verify` does ([`vault_audit::verify`]);
//! if anything is wrong the trace is refused ([`Trace::accesses`] is `None`): records that do
//! not verify say nothing trustworthy about where a card went. Otherwise every record naming
//! the token (under the merchant, if one is given) whose event is `detokenize`, `forward` or
//! `forward.result` becomes an [`Access`], oldest first. A forward is two records with one
//! request id: the `forward` record (written before the request left) and its
//! `forward.result` (status and bytes, the error, or `unknown`); they are joined into one
//! access. A result whose `forward` record is not in the exports (it is older than the first
//! export) is an access of its own, with what its detail says.
//!
//! The `detail` of these records is written by the vault as space-separated `key=value`
//! words; only the known keys ([`DETAIL_KEYS`]) are read, the rest is free text
//! ([`detail_field`], [`detail_text`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use vault_audit::Entry;

use crate::audit::{read_public_keys, read_segments};
use crate::error::Error;

/// The event of a detokenize record.
pub const DETOKENIZE: &str = "detokenize";
/// The event of a forward's first record.
pub const FORWARD: &str = "forward";
/// The event of a forward's second record.
pub const FORWARD_RESULT: &str = "forward.result";
/// The outcome of a call that succeeded (for a forward record: the request was sent).
pub const SUCCESS: &str = "success";
/// The outcome of a forward result the sending replica could not record.
pub const UNKNOWN: &str = "unknown";

/// The keys read from a forward's details; any other word is free text.
pub const DETAIL_KEYS: [&str; 8] = [
    "destination",
    "fingerprint",
    "template",
    "method",
    "path",
    "status",
    "bytes",
    "error",
];

/// What `audit trace` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The token traced.
    pub token: String,
    /// The merchant it was traced under (`--merchant`), if given.
    pub merchant: Option<String>,
    /// What verifying the exports found.
    pub verified: vault_audit::Report,
    /// Every access, oldest first; `None` if the exports did not verify (refused).
    pub accesses: Option<Vec<Access>>,
}

impl Trace {
    /// True if the exports did not verify, so nothing was traced.
    #[must_use]
    pub fn refused(&self) -> bool {
        self.accesses.is_none()
    }

    /// True if no merchant was given and the accesses name the token under several
    /// merchants: each access must then say which.
    #[must_use]
    pub fn several_merchants(&self) -> bool {
        let merchants: BTreeSet<Option<&str>> = self
            .accesses
            .iter()
            .flatten()
            .map(|access| access.merchant.as_deref())
            .collect();
        self.merchant.is_none() && merchants.len() > 1
    }
}

/// Which kind of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// A `detokenize` call: the card returned to the caller, if it succeeded.
    Detokenize,
    /// A `forward` call: the card sent to a destination, if it succeeded.
    Forward,
}

impl AccessKind {
    /// The event name, as records spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Detokenize => DETOKENIZE,
            Self::Forward => FORWARD,
        }
    }
}

/// One detokenize or forward of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// When (the record's `at`; for a forward, its first record's).
    pub at: String,
    /// The merchant the record names.
    pub merchant: Option<String>,
    /// Who called.
    pub caller: String,
    /// From where.
    pub origin: String,
    /// Detokenize or forward.
    pub kind: AccessKind,
    /// How the call ended (`success`, `denied`, `failed_precondition`, ...); `None` for a
    /// forward whose first record is not in the exports (only its result is).
    pub outcome: Option<String>,
    /// The caller's stated reason.
    pub reason: Option<String>,
    /// The record's detail, as written.
    pub detail: Option<String>,
    /// The call's request id.
    pub request_id: String,
    /// The record (`WRITER#SEQ`), as `audit verify` names records; `None` as for `outcome`.
    pub record: Option<String>,
    /// For a forward: where to, and what came back.
    pub forward: Option<Forward>,
}

/// A forward's destination and request (from its first record's detail) and its results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forward {
    /// The destination's name.
    pub destination: Option<String>,
    /// The fingerprint of the approved destination version (`sha256:HEX`).
    pub fingerprint: Option<String>,
    /// The template.
    pub template: Option<String>,
    /// The HTTP method.
    pub method: Option<String>,
    /// The path below the destination's base URL.
    pub path: Option<String>,
    /// The `forward.result` records (one, normally), oldest first.
    pub results: Vec<ForwardResult>,
}

/// One `forward.result` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardResult {
    /// When it was recorded.
    pub at: String,
    /// `success` (an answer came), `unknown`, or why none came (`unavailable`, ...).
    pub outcome: String,
    /// The HTTP status of the answer.
    pub status: Option<u16>,
    /// The size of the answer's body, in bytes.
    pub bytes: Option<u64>,
    /// Why no answer came (`timeout`, ...).
    pub error: Option<String>,
    /// The detail, as written.
    pub detail: Option<String>,
    /// The record (`WRITER#SEQ`).
    pub record: String,
}

impl ForwardResult {
    fn new(entry: &Entry) -> Self {
        let detail = entry.detail.as_deref().unwrap_or_default();
        Self {
            at: entry.at.clone(),
            outcome: entry.outcome.clone(),
            status: detail_field(detail, "status").and_then(|s| s.parse().ok()),
            bytes: detail_field(detail, "bytes").and_then(|b| b.parse().ok()),
            error: detail_field(detail, "error").map(str::to_owned),
            detail: entry.detail.clone(),
            record: record_name(entry),
        }
    }

    /// What came back, in a few words: `status 201, 123 bytes`, `error timeout
    /// (unavailable)`, `unknown (...)`.
    #[must_use]
    pub fn summary(&self) -> String {
        let detail = self.detail.as_deref().unwrap_or_default();
        match (self.status, &self.error) {
            (Some(status), _) if self.outcome == SUCCESS => match self.bytes {
                Some(bytes) => format!("status {status}, {bytes} bytes"),
                None => format!("status {status}"),
            },
            (_, Some(error)) => format!("error {error} ({})", self.outcome),
            _ if self.outcome == UNKNOWN => match detail_text(detail) {
                text if text.is_empty() => UNKNOWN.to_owned(),
                text => format!("{UNKNOWN} ({text})"),
            },
            _ if detail.is_empty() => self.outcome.clone(),
            _ => format!("{} ({detail})", self.outcome),
        }
    }
}

impl Access {
    /// What came back of a forward, in a few words: each result's [`ForwardResult::summary`],
    /// `no result recorded` for a forward sent without one in the exports, or `not sent` for
    /// a refused one. `None` for a detokenize.
    #[must_use]
    pub fn result_summary(&self) -> Option<String> {
        let forward = self.forward.as_ref()?;
        Some(if forward.results.is_empty() {
            match self.outcome.as_deref() {
                Some(SUCCESS) | None => "no result recorded".to_owned(),
                Some(_) => "not sent (refused)".to_owned(),
            }
        } else {
            forward
                .results
                .iter()
                .map(ForwardResult::summary)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn from_record(entry: &Entry, kind: AccessKind) -> Self {
        let forward = (kind == AccessKind::Forward).then(|| {
            let detail = entry.detail.as_deref().unwrap_or_default();
            let field = |key| detail_field(detail, key).map(str::to_owned);
            Forward {
                destination: field("destination"),
                fingerprint: field("fingerprint"),
                template: field("template"),
                method: field("method"),
                path: field("path"),
                results: Vec::new(),
            }
        });
        Self {
            at: entry.at.clone(),
            merchant: entry.merchant_id.clone(),
            caller: entry.caller.clone(),
            origin: entry.origin.clone(),
            kind,
            outcome: Some(entry.outcome.clone()),
            reason: entry.reason.clone(),
            detail: entry.detail.clone(),
            request_id: entry.request_id.clone(),
            record: Some(record_name(entry)),
            forward,
        }
    }

    /// A forward known only by its result (its first record is not in the exports).
    fn from_result(entry: &Entry) -> Self {
        let detail = entry.detail.as_deref().unwrap_or_default();
        let field = |key| detail_field(detail, key).map(str::to_owned);
        Self {
            at: entry.at.clone(),
            merchant: entry.merchant_id.clone(),
            caller: entry.caller.clone(),
            origin: entry.origin.clone(),
            kind: AccessKind::Forward,
            outcome: None,
            reason: None,
            detail: None,
            request_id: entry.request_id.clone(),
            record: None,
            forward: Some(Forward {
                destination: field("destination"),
                fingerprint: field("fingerprint"),
                results: vec![ForwardResult::new(entry)],
                ..Forward::default()
            }),
        }
    }
}

/// The value of `key` in a `detail` the vault wrote: the first space-separated word
/// `key=VALUE` with a non-empty value.
#[must_use]
pub fn detail_field<'a>(detail: &'a str, key: &str) -> Option<&'a str> {
    detail
        .split(' ')
        .filter_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .find(|value| !value.is_empty())
}

/// The free text of a `detail`: its words but the `KEY=VALUE` ones of [`DETAIL_KEYS`].
#[must_use]
pub fn detail_text(detail: &str) -> String {
    detail
        .split(' ')
        .filter(|word| {
            !word.is_empty()
                && !word
                    .split_once('=')
                    .is_some_and(|(key, _)| DETAIL_KEYS.contains(&key))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn record_name(entry: &Entry) -> String {
    format!("{}#{}", entry.writer, entry.seq)
}

/// Verifies the export `files` against the keys in `public_key`, as `audit verify` does, and
/// if they verify, traces `token` (of `merchant`, if given) through them.
///
/// # Errors
/// [`Error::Config`] if a file cannot be read. Exports that do not verify are not an error:
/// the trace is refused ([`Trace::refused`]) with what the verifier found.
pub fn trace(
    public_key: &Path,
    files: &[PathBuf],
    token: &str,
    merchant: Option<&str>,
) -> Result<Trace, Error> {
    let keys = read_public_keys(public_key)?;
    let segments = read_segments(files)?;
    let verified = vault_audit::verify(&segments, &keys);
    let accesses = verified.is_clean().then(|| {
        accesses(
            segments
                .iter()
                .flat_map(|segment| segment.records.iter().map(|(_, entry)| entry)),
            token,
            merchant,
        )
    });
    Ok(Trace {
        token: token.to_owned(),
        merchant: merchant.map(str::to_owned),
        verified,
        accesses,
    })
}

/// The time an access or record sorts by: its `at` in microseconds (records are verified, so
/// it parses), then its text.
fn time_key(at: &str) -> (Option<i64>, &str) {
    (vault_audit::parse_time(at), at)
}

/// The accesses to `token` (of `merchant`, if given) among `records`, oldest first. A record
/// found in several exports (where they overlap) counts once.
pub fn accesses<'a>(
    records: impl IntoIterator<Item = &'a Entry>,
    token: &str,
    merchant: Option<&str>,
) -> Vec<Access> {
    let mut seen = BTreeSet::new();
    let mut picked: Vec<&Entry> = records
        .into_iter()
        .filter(|entry| {
            entry.token.as_deref() == Some(token)
                && merchant.is_none_or(|m| entry.merchant_id.as_deref() == Some(m))
                && [DETOKENIZE, FORWARD, FORWARD_RESULT].contains(&entry.event.as_str())
        })
        .filter(|entry| seen.insert((entry.writer.as_str(), entry.seq)))
        .collect();
    picked.sort_by(|a, b| {
        (time_key(&a.at), &a.writer, a.seq).cmp(&(time_key(&b.at), &b.writer, b.seq))
    });

    let mut accesses = Vec::new();
    // A forward by (merchant, request id): the index of its access.
    let mut forwards: BTreeMap<(Option<&str>, &str), usize> = BTreeMap::new();
    let mut results = Vec::new();
    for entry in picked {
        let kind = match entry.event.as_str() {
            FORWARD_RESULT => {
                results.push(entry);
                continue;
            }
            FORWARD => {
                let key = (entry.merchant_id.as_deref(), entry.request_id.as_str());
                forwards.insert(key, accesses.len());
                AccessKind::Forward
            }
            _ => AccessKind::Detokenize,
        };
        accesses.push(Access::from_record(entry, kind));
    }
    for entry in results {
        let key = (entry.merchant_id.as_deref(), entry.request_id.as_str());
        let forward = forwards
            .get(&key)
            .and_then(|&index| accesses.get_mut(index))
            .and_then(|access| access.forward.as_mut());
        match forward {
            Some(forward) => forward.results.push(ForwardResult::new(entry)),
            None => {
                forwards.insert(key, accesses.len());
                accesses.push(Access::from_result(entry));
            }
        }
    }
    // Forwards known only by their result go in their place (a stable sort: ties keep the
    // order of the records).
    accesses.sort_by(|a, b| time_key(&a.at).cmp(&time_key(&b.at)));
    accesses
}

#[cfg(test)]
mod tests {
    use vault_audit::{
        Checkpoint, CheckpointDraft, CheckpointKind, EXPORT_FORMAT, ExportHeader, GENESIS, Line,
        PublicKey, format_time,
    };
    use vault_crypto::{KeyMaterial, SigningKey};

    use super::*;

    const PAYMENTS: &str = "spiffe://vault.test/payments";
    const FP: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// One writer's trail, signed, written as an export the way the vault writes one.
    struct Export {
        key: SigningKey,
        checkpoints: Vec<Checkpoint>,
        records: Vec<Entry>,
        head: (u64, [u8; 32]),
        micros: i64,
    }

    /// A record to add: event, merchant, token, request id, outcome, detail, reason.
    type Spec<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
    );

    impl Export {
        fn new() -> Self {
            let mut export = Self {
                key: SigningKey::from_seed(&KeyMaterial::generate()),
                checkpoints: Vec::new(),
                records: Vec::new(),
                head: (0, GENESIS),
                micros: 1_795_000_000_000_000,
            };
            export.checkpoint(CheckpointKind::Start);
            export
        }

        fn tick(&mut self) -> String {
            self.micros += 1_000_000;
            format_time(self.micros).unwrap()
        }

        fn record(&mut self, spec: Spec<'_>) -> &mut Self {
            let (event, merchant, token, request_id, outcome, detail, reason) = spec;
            let (seq, prev_hash) = self.head;
            let at = self.tick();
            let entry = Entry {
                writer: "w1".to_owned(),
                seq: seq + 1,
                at,
                caller: PAYMENTS.to_owned(),
                origin: "10.0.0.7:50412".to_owned(),
                event: event.to_owned(),
                detail: detail.map(str::to_owned),
                outcome: outcome.to_owned(),
                resource: format!("merchant/{merchant}/token/{token}"),
                merchant_id: Some(merchant.to_owned()),
                token: Some(token.to_owned()),
                request_id: request_id.to_owned(),
                reason: reason.map(str::to_owned),
                prev_hash,
                hash: GENESIS,
            }
            .sealed();
            self.head = (entry.seq, entry.hash);
            self.records.push(entry);
            self
        }

        fn checkpoint(&mut self, kind: CheckpointKind) {
            let (cp_seq, prev_hash) = self
                .checkpoints
                .last()
                .map_or((1, GENESIS), |c| (c.cp_seq + 1, c.hash));
            let draft = CheckpointDraft {
                cp_seq,
                kind,
                at: self.tick(),
                writer: "w1".to_owned(),
                seq: self.head.0,
                head_hash: self.head.1,
                prev_hash,
                replaces_key: None,
            };
            let public = self.key.public_key();
            let checkpoint = draft.sign(&public, |payload| self.key.sign(payload));
            self.checkpoints.push(checkpoint);
        }

        /// Stops the writer and writes the export and the public key file into `dir`.
        fn write(mut self, dir: &Path) -> (PathBuf, PathBuf) {
            self.checkpoint(CheckpointKind::Stop);
            let header = Line::Header(ExportHeader {
                format: EXPORT_FORMAT.to_owned(),
                from: None,
                to: None,
                exported_at: self.tick(),
                checkpoints: self.checkpoints.len() as u64,
                records: self.records.len() as u64,
                keep_until: None,
            });
            let lines: Vec<String> = std::iter::once(header)
                .chain(self.checkpoints.iter().cloned().map(Line::Checkpoint))
                .chain(self.records.iter().cloned().map(Line::Record))
                .map(|line| serde_json::to_string(&line).unwrap())
                .collect();
            let export = dir.join("export.jsonl");
            std::fs::write(&export, lines.join("\n") + "\n").unwrap();
            let key = dir.join("vault-audit.pub");
            let keys = vec![PublicKey::ed25519(self.key.public_key())];
            std::fs::write(&key, serde_json::to_string(&keys).unwrap()).unwrap();
            (key, export)
        }
    }

    fn forward_detail(path: &str) -> String {
        format!("destination=acme fingerprint={FP} template=charge method=POST path={path}")
    }

    /// Every kind of access to tok_1 of m-1, and records that are not one.
    fn trail() -> Export {
        let mut export = Export::new();
        let charge = forward_detail("/v1/charges");
        let capture = forward_detail("/v1/payments/p_1/capture");
        let unknown = format!(
            "destination=acme fingerprint={FP} outcome not recorded by the replica that sent \
             it; found in flight after its deadline"
        );
        export
            .record(("tokenize", "m-1", "tok_1", "r-0", SUCCESS, None, None))
            .record((
                DETOKENIZE,
                "m-1",
                "tok_1",
                "r-1",
                SUCCESS,
                None,
                Some("refund 42"),
            ))
            .record((
                FORWARD,
                "m-1",
                "tok_1",
                "r-2",
                SUCCESS,
                Some(&charge),
                Some("order 7"),
            ))
            .record((
                DETOKENIZE,
                "m-1",
                "tok_2",
                "r-3",
                SUCCESS,
                None,
                Some("other card"),
            ))
            .record((
                FORWARD_RESULT,
                "m-1",
                "tok_1",
                "r-2",
                SUCCESS,
                Some("destination=acme status=201 bytes=123"),
                None,
            ))
            .record((
                FORWARD,
                "m-1",
                "tok_1",
                "r-4",
                "failed_precondition",
                Some("destination=acme"),
                Some("order 8"),
            ))
            .record((
                FORWARD,
                "m-1",
                "tok_1",
                "r-5",
                SUCCESS,
                Some(&capture),
                Some("order 9"),
            ))
            .record((
                FORWARD_RESULT,
                "m-1",
                "tok_1",
                "r-5",
                "unavailable",
                Some("destination=acme error=timeout"),
                None,
            ))
            .record((
                FORWARD,
                "m-1",
                "tok_1",
                "r-6",
                SUCCESS,
                Some(&charge),
                Some("order 10"),
            ))
            .record((
                FORWARD_RESULT,
                "m-1",
                "tok_1",
                "r-6",
                UNKNOWN,
                Some(&unknown),
                None,
            ))
            .record((
                FORWARD,
                "m-1",
                "tok_1",
                "r-7",
                SUCCESS,
                Some(&charge),
                Some("order 11"),
            ))
            .record((
                DETOKENIZE,
                "m-2",
                "tok_1",
                "r-8",
                "denied",
                Some("reason"),
                None,
            ));
        export
    }

    fn traced(export: Export, merchant: Option<&str>) -> Trace {
        let dir = tempfile::tempdir().unwrap();
        let (key, file) = export.write(dir.path());
        trace(&key, &[file], "tok_1", merchant).unwrap()
    }

    #[test]
    fn a_forward_and_its_result_are_one_access() {
        let trace = traced(trail(), Some("m-1"));
        assert!(trace.verified.is_clean(), "{:?}", trace.verified.problems);
        assert!(!trace.refused());
        assert!(!trace.several_merchants());
        let accesses = trace.accesses.unwrap();
        let summary: Vec<(&str, &str, Option<&str>, Option<String>)> = accesses
            .iter()
            .map(|a| {
                (
                    a.kind.as_str(),
                    a.request_id.as_str(),
                    a.outcome.as_deref(),
                    a.result_summary(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (DETOKENIZE, "r-1", Some(SUCCESS), None),
                (
                    FORWARD,
                    "r-2",
                    Some(SUCCESS),
                    Some("status 201, 123 bytes".to_owned())
                ),
                (
                    FORWARD,
                    "r-4",
                    Some("failed_precondition"),
                    Some("not sent (refused)".to_owned())
                ),
                (
                    FORWARD,
                    "r-5",
                    Some(SUCCESS),
                    Some("error timeout (unavailable)".to_owned())
                ),
                (
                    FORWARD,
                    "r-6",
                    Some(SUCCESS),
                    Some(
                        "unknown (outcome not recorded by the replica that sent it; found in \
                         flight after its deadline)"
                            .to_owned()
                    )
                ),
                (
                    FORWARD,
                    "r-7",
                    Some(SUCCESS),
                    Some("no result recorded".to_owned())
                ),
            ]
        );
        let charge = accesses.get(1).unwrap();
        assert_eq!(charge.caller, PAYMENTS);
        assert_eq!(charge.origin, "10.0.0.7:50412");
        assert_eq!(charge.reason.as_deref(), Some("order 7"));
        assert_eq!(charge.record.as_deref(), Some("w1#3"));
        let forward = charge.forward.as_ref().unwrap();
        assert_eq!(forward.destination.as_deref(), Some("acme"));
        assert_eq!(forward.fingerprint.as_deref(), Some(FP));
        assert_eq!(forward.template.as_deref(), Some("charge"));
        assert_eq!(forward.method.as_deref(), Some("POST"));
        assert_eq!(forward.path.as_deref(), Some("/v1/charges"));
        let [result] = forward.results.as_slice() else {
            panic!("{forward:?}")
        };
        assert_eq!(
            (result.outcome.as_str(), result.status, result.bytes),
            (SUCCESS, Some(201), Some(123))
        );
        assert_eq!(result.record, "w1#5");
        let refused = accesses.get(2).unwrap().forward.as_ref().unwrap();
        assert_eq!(refused.destination.as_deref(), Some("acme"));
        assert_eq!(refused.path, None);
        let capture = accesses.get(3).unwrap().forward.as_ref().unwrap();
        assert_eq!(capture.path.as_deref(), Some("/v1/payments/p_1/capture"));
        // Oldest first.
        let times: Vec<&str> = accesses.iter().map(|a| a.at.as_str()).collect();
        let mut sorted = times.clone();
        sorted.sort_unstable();
        assert_eq!(times, sorted);
    }

    #[test]
    fn without_a_merchant_every_merchant_of_the_token_is_traced() {
        let trace = traced(trail(), None);
        assert!(trace.several_merchants());
        let accesses = trace.accesses.unwrap();
        assert_eq!(accesses.len(), 7);
        let last = accesses.last().unwrap();
        assert_eq!(last.merchant.as_deref(), Some("m-2"));
        assert_eq!(last.outcome.as_deref(), Some("denied"));
        assert_eq!(last.detail.as_deref(), Some("reason"));
        assert_eq!(last.forward, None);

        let trace = traced(trail(), Some("m-3"));
        assert_eq!(trace.accesses, Some(Vec::new()));
    }

    #[test]
    fn a_result_without_its_forward_record_is_an_access_of_its_own() {
        let mut export = Export::new();
        export.record((
            FORWARD_RESULT,
            "m-1",
            "tok_1",
            "r-9",
            SUCCESS,
            Some("destination=acme status=402 bytes=17"),
            None,
        ));
        let accesses = traced(export, None).accesses.unwrap();
        let [access] = accesses.as_slice() else {
            panic!("{accesses:?}")
        };
        assert_eq!(access.kind, AccessKind::Forward);
        assert_eq!(
            (access.outcome.as_deref(), access.record.as_deref()),
            (None, None)
        );
        assert_eq!(
            access.result_summary().as_deref(),
            Some("status 402, 17 bytes")
        );
        let forward = access.forward.as_ref().unwrap();
        assert_eq!(forward.destination.as_deref(), Some("acme"));
    }

    #[test]
    fn a_tampered_export_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, file) = trail().write(dir.path());
        let text = std::fs::read_to_string(&file).unwrap();
        // Another destination in one forward record, its hash left as it was.
        let tampered = text.replacen(
            "destination=acme fingerprint",
            "destination=evil fingerprint",
            1,
        );
        assert_ne!(tampered, text);
        std::fs::write(&file, tampered).unwrap();
        let trace = trace(&key, &[file], "tok_1", Some("m-1")).unwrap();
        assert!(trace.refused());
        assert_eq!(trace.accesses, None);
        assert!(!trace.verified.is_clean());
        assert!(
            trace
                .verified
                .problems
                .iter()
                .any(|p| p.kind == vault_audit::ProblemKind::Edited
                    && p.subjects.contains(&"w1#3".to_owned())),
            "{:?}",
            trace.verified.problems
        );
    }

    #[test]
    fn an_export_under_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, file) = trail().write(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (key, _) = Export::new().write(other.path());
        let trace = trace(&key, &[file], "tok_1", None).unwrap();
        assert!(trace.refused());
        assert!(
            trace
                .verified
                .problems
                .iter()
                .any(|p| p.kind == vault_audit::ProblemKind::BadSignature)
        );
    }

    #[test]
    fn unreadable_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = Export::new().write(dir.path());
        let err = trace(&key, &[dir.path().join("absent")], "tok_1", None).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }

    #[test]
    fn details_are_read_by_their_known_keys() {
        let detail = forward_detail("/v1/a=b");
        assert_eq!(detail_field(&detail, "destination"), Some("acme"));
        assert_eq!(detail_field(&detail, "fingerprint"), Some(FP));
        assert_eq!(detail_field(&detail, "template"), Some("charge"));
        assert_eq!(detail_field(&detail, "method"), Some("POST"));
        assert_eq!(detail_field(&detail, "path"), Some("/v1/a=b"));
        assert_eq!(detail_field(&detail, "status"), None);
        assert_eq!(detail_field(&detail, "dest"), None);
        assert_eq!(detail_field("variables", "destination"), None);
        assert_eq!(detail_field("destination= x=1", "destination"), None);
        assert_eq!(
            detail_field("destination=a status=201 bytes=9", "bytes"),
            Some("9")
        );
        assert_eq!(detail_text(&detail), "");
        assert_eq!(
            detail_text("destination=a fingerprint=sha256:ab outcome not recorded  by x"),
            "outcome not recorded by x"
        );
        assert_eq!(detail_text("variables"), "variables");
    }

    #[test]
    fn results_say_what_came_back() {
        let result = |outcome: &str, detail: Option<&str>| {
            ForwardResult::new(&Entry {
                writer: "w".into(),
                seq: 1,
                at: "t".into(),
                caller: "c".into(),
                origin: "o".into(),
                event: FORWARD_RESULT.into(),
                detail: detail.map(str::to_owned),
                outcome: outcome.into(),
                resource: "r".into(),
                merchant_id: None,
                token: None,
                request_id: "q".into(),
                reason: None,
                prev_hash: GENESIS,
                hash: GENESIS,
            })
            .summary()
        };
        assert_eq!(
            result(SUCCESS, Some("destination=a status=200")),
            "status 200"
        );
        assert_eq!(
            result("failed_precondition", Some("destination=a error=redirect")),
            "error redirect (failed_precondition)"
        );
        assert_eq!(result(UNKNOWN, Some("destination=a")), "unknown");
        assert_eq!(result("internal", None), "internal");
        assert_eq!(result("internal", Some("odd")), "internal (odd)");
    }
}
