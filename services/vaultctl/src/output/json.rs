//! What each command prints for scripts: one `Serialize` struct per [`Report`] variant,
//! borrowing from it. Field names follow `admin.proto` and `audit.proto`.
//!
//! The object is printed through a `serde_json::Value`, whose map keeps its keys sorted: the
//! order scripts have always seen, whatever the order of the fields here.

use serde::{Serialize, Serializer};
use vault_audit::{PublicKey, WriterSummary};
use vault_proto::v1::{CacheStatus, GetKeyStatusResponse, KeyVersion, PruneResponse, ShredRequest};

use super::destinations::{List, Proposed, Revoked, Version};
use super::trace::Traced;
use super::{Report, hit_ratio};
use crate::audit::{Exported, Pruning};

/// Every report is one JSON object: the struct of its variant.
impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Status(status) => Status::new(status).serialize(serializer),
            Self::MerchantKeys { merchant_id, keys } => MerchantKeys {
                merchant_id,
                keys: keys.keys.iter().map(Key::new).collect(),
                shredded: keys.shredded,
                pending_shred: keys.pending_shred.as_ref().map(Shred::new),
            }
            .serialize(serializer),
            Self::Rotated {
                merchant_id,
                version,
            } => Rotated {
                merchant_id,
                version: *version,
            }
            .serialize(serializer),
            Self::Reencrypted {
                merchant_id,
                tokens,
                dek_version,
            } => Reencrypted {
                merchant_id,
                tokens_reencrypted: *tokens,
                dek_version: DekVersion::new(dek_version),
            }
            .serialize(serializer),
            Self::Rewrapped { keys, kek_id } => Rewrapped {
                keys_rewrapped: *keys,
                kek_id,
            }
            .serialize(serializer),
            Self::ShredRequested {
                request,
                approve_command,
            } => ShredRequested {
                request: Shred::new(request),
                approve_command,
            }
            .serialize(serializer),
            Self::ShredApproved {
                merchant_id,
                request_id,
                keys_destroyed,
            } => ShredApproved {
                merchant_id,
                request_id,
                keys_destroyed: *keys_destroyed,
            }
            .serialize(serializer),
            Self::AuditExported(exported) => AuditExported::new(exported).serialize(serializer),
            Self::PublicKeys { path, keys } => PublicKeys {
                path: path.display().to_string(),
                keys: keys
                    .iter()
                    .map(|key: &PublicKey| key.key_id.as_str())
                    .collect(),
            }
            .serialize(serializer),
            Self::AuditVerified(report) => AuditVerified::new(report).serialize(serializer),
            Self::AuditPruned(Pruning::Refused(report)) => PruneRefused {
                pruned: false,
                problems: report.problems.len(),
            }
            .serialize(serializer),
            Self::AuditPruned(Pruning::Done {
                export,
                checkpoints,
                answer,
            }) => Pruned::new(export.display().to_string(), *checkpoints, answer)
                .serialize(serializer),
            Self::AuditTraced(trace) => Traced::new(trace).serialize(serializer),
            Self::DestinationProposed {
                version,
                approve_command,
            } => Proposed {
                version: Version::new(version, false),
                approve_command,
            }
            .serialize(serializer),
            Self::DestinationApproved(version) => {
                Version::new(version, false).serialize(serializer)
            }
            Self::DestinationRevoked { name, revoked } => Revoked {
                name,
                revoked: *revoked,
            }
            .serialize(serializer),
            Self::Destinations {
                name,
                versions,
                spec,
            } => List {
                name: name.as_deref(),
                versions: versions.iter().map(|v| Version::new(v, *spec)).collect(),
            }
            .serialize(serializer),
        }
    }
}

/// `status`.
#[derive(Serialize)]
struct Status<'a> {
    kek: &'a str,
    current_kek_id: &'a str,
    previous_keks: &'a [String],
    keys_to_rewrap: u64,
    dek_rotate_after_uses: u64,
    dek_max_uses: u64,
    dek_rotate_after_days: u64,
    cache: Option<Cache>,
}

impl<'a> Status<'a> {
    fn new(status: &'a GetKeyStatusResponse) -> Self {
        Self {
            kek: &status.kek,
            current_kek_id: &status.current_kek_id,
            previous_keks: &status.previous_keks,
            keys_to_rewrap: status.keys_to_rewrap,
            dek_rotate_after_uses: status.dek_rotate_after_uses,
            dek_max_uses: status.dek_max_uses,
            dek_rotate_after_days: status.dek_rotate_after_days,
            cache: status.cache.as_ref().map(Cache::new),
        }
    }
}

/// The unwrapped-key cache of `status`, with its hit ratio (`null` before the first lookup).
#[derive(Serialize)]
struct Cache {
    hits: u64,
    misses: u64,
    entries: u64,
    max_entries: u64,
    max_age_secs: u64,
    hit_ratio: Option<f64>,
}

impl Cache {
    fn new(cache: &CacheStatus) -> Self {
        Self {
            hits: cache.hits,
            misses: cache.misses,
            entries: cache.entries,
            max_entries: cache.max_entries,
            max_age_secs: cache.max_age_secs,
            hit_ratio: hit_ratio(cache),
        }
    }
}

/// `keys show`.
#[derive(Serialize)]
struct MerchantKeys<'a> {
    merchant_id: &'a str,
    keys: Vec<Key<'a>>,
    shredded: bool,
    pending_shred: Option<Shred<'a>>,
}

/// One key version of `keys show`.
#[derive(Serialize)]
struct Key<'a> {
    purpose: &'a str,
    version: u32,
    kek_id: &'a str,
    uses: u64,
    tokens: u64,
    created_at: &'a str,
}

impl<'a> Key<'a> {
    fn new(key: &'a KeyVersion) -> Self {
        Self {
            purpose: &key.purpose,
            version: key.version,
            kek_id: &key.kek_id,
            uses: key.uses,
            tokens: key.tokens,
            created_at: &key.created_at,
        }
    }
}

/// A shred request, pending (`keys show`) or just made (`shred request`).
#[derive(Serialize)]
struct Shred<'a> {
    request_id: &'a str,
    merchant_id: &'a str,
    requested_by: &'a str,
    requested_at: &'a str,
    reason: &'a str,
}

impl<'a> Shred<'a> {
    fn new(request: &'a ShredRequest) -> Self {
        Self {
            request_id: &request.request_id,
            merchant_id: &request.merchant_id,
            requested_by: &request.requested_by,
            requested_at: &request.requested_at,
            reason: &request.reason,
        }
    }
}

/// `keys rotate`.
#[derive(Serialize)]
struct Rotated<'a> {
    merchant_id: &'a str,
    version: u32,
}

/// `keys reencrypt`.
#[derive(Serialize)]
struct Reencrypted<'a> {
    merchant_id: &'a str,
    tokens_reencrypted: u64,
    dek_version: DekVersion<'a>,
}

/// A number, as `keys rotate` prints it; the vault's text if it is not one.
#[derive(Serialize)]
#[serde(untagged)]
enum DekVersion<'a> {
    Number(u32),
    Text(&'a str),
}

impl<'a> DekVersion<'a> {
    fn new(text: &'a str) -> Self {
        text.parse().map_or(Self::Text(text), Self::Number)
    }
}

/// `kek rewrap`.
#[derive(Serialize)]
struct Rewrapped<'a> {
    keys_rewrapped: u64,
    kek_id: &'a str,
}

/// `shred request`: the request and the command that approves it.
#[derive(Serialize)]
struct ShredRequested<'a> {
    #[serde(flatten)]
    request: Shred<'a>,
    approve_command: &'a str,
}

/// `shred approve`.
#[derive(Serialize)]
struct ShredApproved<'a> {
    merchant_id: &'a str,
    request_id: &'a str,
    keys_destroyed: u64,
}

/// `audit export`.
#[derive(Serialize)]
struct AuditExported<'a> {
    path: String,
    records: u64,
    checkpoints: u64,
    exported_at: &'a str,
}

impl<'a> AuditExported<'a> {
    fn new(exported: &'a Exported) -> Self {
        Self {
            path: exported.path.display().to_string(),
            records: exported.records,
            checkpoints: exported.checkpoints,
            exported_at: &exported.header.exported_at,
        }
    }
}

/// `audit public-key`: the file and the ids of the keys written to it.
#[derive(Serialize)]
struct PublicKeys<'a> {
    path: String,
    keys: Vec<&'a str>,
}

/// `audit verify` (and the `verified` part of `audit trace`).
#[derive(Serialize)]
pub(super) struct AuditVerified<'a> {
    clean: bool,
    records: u64,
    checkpoints: u64,
    checkpoint_range: Option<(u64, u64)>,
    last_checkpoint_hash: Option<&'a str>,
    writers: Vec<Writer<'a>>,
    problems: Vec<Problem<'a>>,
}

impl<'a> AuditVerified<'a> {
    pub(super) fn new(report: &'a vault_audit::Report) -> Self {
        Self {
            clean: report.is_clean(),
            records: report.records,
            checkpoints: report.checkpoints,
            checkpoint_range: report.checkpoint_range,
            last_checkpoint_hash: report.last_checkpoint_hash.as_deref(),
            writers: report.writers.iter().map(Writer::new).collect(),
            problems: report.problems.iter().map(Problem::new).collect(),
        }
    }
}

/// One writer's chain in `audit verify`.
#[derive(Serialize)]
struct Writer<'a> {
    writer: &'a str,
    anchor: u64,
    head: u64,
    records: u64,
}

impl<'a> Writer<'a> {
    fn new(writer: &'a WriterSummary) -> Self {
        Self {
            writer: &writer.writer,
            anchor: writer.anchor,
            head: writer.head,
            records: writer.records,
        }
    }
}

/// One problem `audit verify` found.
#[derive(Serialize)]
struct Problem<'a> {
    kind: &'static str,
    file: &'a str,
    line: Option<usize>,
    subjects: &'a [String],
    message: &'a str,
}

impl<'a> Problem<'a> {
    fn new(problem: &'a vault_audit::Problem) -> Self {
        Self {
            kind: problem.kind.as_str(),
            file: &problem.file,
            line: problem.line,
            subjects: &problem.subjects,
            message: &problem.message,
        }
    }
}

/// `audit prune` refused: the export did not verify.
#[derive(Serialize)]
struct PruneRefused {
    pruned: bool,
    problems: usize,
}

/// `audit prune` done (`pruned` is false if nothing exported was old enough).
#[derive(Serialize)]
struct Pruned {
    pruned: bool,
    export: String,
    export_checkpoints: (u64, u64),
    through_checkpoint: u64,
    records_removed: u64,
    checkpoints_removed: u64,
    writers_pruned: u64,
    writers_closed: u64,
    checkpoints_written: u64,
}

impl Pruned {
    fn new(export: String, export_checkpoints: (u64, u64), answer: &PruneResponse) -> Self {
        Self {
            pruned: answer.through_checkpoint > 0,
            export,
            export_checkpoints,
            through_checkpoint: answer.through_checkpoint,
            records_removed: answer.records_removed,
            checkpoints_removed: answer.checkpoints_removed,
            writers_pruned: answer.writers_pruned,
            writers_closed: answer.writers_closed,
            checkpoints_written: answer.checkpoints_written,
        }
    }
}

#[cfg(test)]
mod tests {
    use vault_proto::v1::{GetMerchantKeysResponse, KeyVersion, PruneResponse};

    use super::*;
    use crate::cli::OutputFormat;

    fn reports() -> Vec<Report> {
        let status = GetKeyStatusResponse {
            kek: "pkcs11:vault/kek-2026".into(),
            current_kek_id: "pkcs11:vault/kek-2026".into(),
            previous_keks: vec!["a".into(), "b\"q".into()],
            keys_to_rewrap: 12,
            dek_rotate_after_uses: 1_000_000,
            dek_max_uses: 4_000_000,
            dek_rotate_after_days: 90,
            cache: Some(CacheStatus {
                hits: 1,
                misses: 2,
                entries: 4,
                max_entries: 1000,
                max_age_secs: 300,
            }),
        };
        let mut nocache = status.clone();
        nocache.cache = None;
        let mut zero = status.clone();
        zero.cache = Some(CacheStatus::default());
        let shred = ShredRequest {
            request_id: "7d1c".into(),
            merchant_id: "m-1".into(),
            requested_by: "x".into(),
            requested_at: "t".into(),
            reason: "r é".into(),
        };
        let keys = GetMerchantKeysResponse {
            keys: vec![KeyVersion {
                purpose: "dek".into(),
                version: 2,
                kek_id: "k".into(),
                uses: 15,
                created_at: "c".into(),
                tokens: 12,
            }],
            shredded: true,
            pending_shred: Some(shred.clone()),
        };
        let report = vault_audit::Report {
            records: 5,
            checkpoints: 2,
            checkpoint_range: Some((1, 2)),
            last_checkpoint_hash: Some("abcd".into()),
            writers: vec![vault_audit::WriterSummary {
                writer: "w".into(),
                anchor: 1,
                head: 3,
                records: 2,
            }],
            problems: vec![vault_audit::Problem {
                kind: vault_audit::ProblemKind::BadSignature,
                file: "f".into(),
                line: Some(3),
                subjects: vec!["w#1".into()],
                message: "m".into(),
            }],
        };
        let header = vault_audit::ExportHeader {
            format: "f".into(),
            from: None,
            to: None,
            exported_at: "2026".into(),
            checkpoints: 1,
            records: 2,
            keep_until: None,
        };
        vec![
            Report::Status(status),
            Report::Status(nocache),
            Report::Status(zero),
            Report::MerchantKeys {
                merchant_id: "m".into(),
                keys,
            },
            Report::MerchantKeys {
                merchant_id: "m".into(),
                keys: GetMerchantKeysResponse::default(),
            },
            Report::Rotated {
                merchant_id: "m".into(),
                version: 3,
            },
            Report::Reencrypted {
                merchant_id: "m".into(),
                tokens: 3,
                dek_version: "4".into(),
            },
            Report::Reencrypted {
                merchant_id: "m".into(),
                tokens: 3,
                dek_version: "v4".into(),
            },
            Report::Rewrapped {
                keys: 3,
                kek_id: "k".into(),
            },
            Report::ShredRequested {
                request: shred,
                approve_command: "vaultctl x".into(),
            },
            Report::ShredApproved {
                merchant_id: "m".into(),
                request_id: "r".into(),
                keys_destroyed: 2,
            },
            Report::AuditExported(crate::audit::Exported {
                path: "/tmp/x".into(),
                header,
                checkpoints: 1,
                records: 2,
            }),
            Report::PublicKeys {
                path: "/tmp/k".into(),
                keys: vec![vault_audit::PublicKey::ed25519([7; 32])],
            },
            Report::AuditVerified(report.clone()),
            Report::AuditVerified(vault_audit::Report::default()),
            Report::AuditPruned(crate::audit::Pruning::Refused(report)),
            Report::AuditPruned(crate::audit::Pruning::Done {
                export: "/e".into(),
                checkpoints: (1, 4),
                answer: PruneResponse {
                    through_checkpoint: 3,
                    records_removed: 4,
                    checkpoints_removed: 5,
                    writers_pruned: 6,
                    writers_closed: 7,
                    checkpoints_written: 8,
                },
            }),
            Report::AuditPruned(crate::audit::Pruning::Done {
                export: "/e".into(),
                checkpoints: (1, 4),
                answer: PruneResponse::default(),
            }),
        ]
    }

    /// Byte for byte what `--output json` printed when each object was built by hand: keys
    /// sorted, `null` for what is absent, numbers as numbers.
    const EXPECTED: [&str; 18] = [
        r#"{"cache":{"entries":4,"hit_ratio":0.3333333333333333,"hits":1,"max_age_secs":300,"max_entries":1000,"misses":2},"current_kek_id":"pkcs11:vault/kek-2026","dek_max_uses":4000000,"dek_rotate_after_days":90,"dek_rotate_after_uses":1000000,"kek":"pkcs11:vault/kek-2026","keys_to_rewrap":12,"previous_keks":["a","b\"q"]}"#,
        r#"{"cache":null,"current_kek_id":"pkcs11:vault/kek-2026","dek_max_uses":4000000,"dek_rotate_after_days":90,"dek_rotate_after_uses":1000000,"kek":"pkcs11:vault/kek-2026","keys_to_rewrap":12,"previous_keks":["a","b\"q"]}"#,
        r#"{"cache":{"entries":0,"hit_ratio":null,"hits":0,"max_age_secs":0,"max_entries":0,"misses":0},"current_kek_id":"pkcs11:vault/kek-2026","dek_max_uses":4000000,"dek_rotate_after_days":90,"dek_rotate_after_uses":1000000,"kek":"pkcs11:vault/kek-2026","keys_to_rewrap":12,"previous_keks":["a","b\"q"]}"#,
        r#"{"keys":[{"created_at":"c","kek_id":"k","purpose":"dek","tokens":12,"uses":15,"version":2}],"merchant_id":"m","pending_shred":{"merchant_id":"m-1","reason":"r é","request_id":"7d1c","requested_at":"t","requested_by":"x"},"shredded":true}"#,
        r#"{"keys":[],"merchant_id":"m","pending_shred":null,"shredded":false}"#,
        r#"{"merchant_id":"m","version":3}"#,
        r#"{"dek_version":4,"merchant_id":"m","tokens_reencrypted":3}"#,
        r#"{"dek_version":"v4","merchant_id":"m","tokens_reencrypted":3}"#,
        r#"{"kek_id":"k","keys_rewrapped":3}"#,
        r#"{"approve_command":"vaultctl x","merchant_id":"m-1","reason":"r é","request_id":"7d1c","requested_at":"t","requested_by":"x"}"#,
        r#"{"keys_destroyed":2,"merchant_id":"m","request_id":"r"}"#,
        r#"{"checkpoints":1,"exported_at":"2026","path":"/tmp/x","records":2}"#,
        r#"{"keys":["4bb06f8e4e3a7715"],"path":"/tmp/k"}"#,
        r#"{"checkpoint_range":[1,2],"checkpoints":2,"clean":false,"last_checkpoint_hash":"abcd","problems":[{"file":"f","kind":"bad signature","line":3,"message":"m","subjects":["w#1"]}],"records":5,"writers":[{"anchor":1,"head":3,"records":2,"writer":"w"}]}"#,
        r#"{"checkpoint_range":null,"checkpoints":0,"clean":true,"last_checkpoint_hash":null,"problems":[],"records":0,"writers":[]}"#,
        r#"{"problems":1,"pruned":false}"#,
        r#"{"checkpoints_removed":5,"checkpoints_written":8,"export":"/e","export_checkpoints":[1,4],"pruned":true,"records_removed":4,"through_checkpoint":3,"writers_closed":7,"writers_pruned":6}"#,
        r#"{"checkpoints_removed":0,"checkpoints_written":0,"export":"/e","export_checkpoints":[1,4],"pruned":false,"records_removed":0,"through_checkpoint":0,"writers_closed":0,"writers_pruned":0}"#,
    ];

    #[test]
    fn every_report_prints_as_it_always_has() {
        let reports = reports();
        assert_eq!(reports.len(), EXPECTED.len());
        for (report, expected) in reports.iter().zip(EXPECTED) {
            assert_eq!(
                report.render(OutputFormat::Json).unwrap(),
                format!("{expected}\n")
            );
        }
    }
}
