//! What each command prints: a [`Report`] rendered as text for people (here; `destinations`
//! and `trace` for those commands) or as one JSON object for scripts (`json`: `Report` is
//! `Serialize`). Plain functions of the vault's answers, testable without a server.

mod destinations;
mod json;
mod trace;

use serde_json::Value;
use vault_proto::v1::{
    CacheStatus, DestinationVersion, GetKeyStatusResponse, GetMerchantKeysResponse, ShredRequest,
};

pub use destinations::approve_command as destination_approve_command;

use crate::cli::OutputFormat;

/// The result of one successful command.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// `status`: the GetKeyStatus answer.
    Status(GetKeyStatusResponse),
    /// `keys show`: the GetMerchantKeys answer for `merchant_id`.
    MerchantKeys {
        /// The merchant asked about.
        merchant_id: String,
        /// The vault's answer.
        keys: GetMerchantKeysResponse,
    },
    /// `keys rotate`: the merchant's new DEK version.
    Rotated {
        /// The merchant whose DEK rotated.
        merchant_id: String,
        /// The new DEK version.
        version: u32,
    },
    /// `keys reencrypt`: the finished job.
    Reencrypted {
        /// The merchant whose tokens moved.
        merchant_id: String,
        /// Tokens re-encrypted by this run.
        tokens: u64,
        /// The DEK version they now use, as the vault sent it (`Progress.target`).
        dek_version: String,
    },
    /// `kek rewrap`: the finished job.
    Rewrapped {
        /// Keys rewrapped by this run.
        keys: u64,
        /// The KEK id they are now wrapped under (`Progress.target`).
        kek_id: String,
    },
    /// `shred request`: the pending request, and how the second admin approves it.
    ShredRequested {
        /// The request as the vault recorded it.
        request: ShredRequest,
        /// The command the second admin runs (with their own credentials).
        approve_command: String,
    },
    /// `shred approve`: the merchant's keys are gone.
    ShredApproved {
        /// The shredded merchant.
        merchant_id: String,
        /// The approved request.
        request_id: String,
        /// How many keys the vault destroyed.
        keys_destroyed: u64,
    },
    /// `audit export`: the file written.
    AuditExported(crate::audit::Exported),
    /// `audit public-key`: the keys, and the file they were written to.
    PublicKeys {
        /// The file.
        path: std::path::PathBuf,
        /// The keys.
        keys: Vec<vault_audit::PublicKey>,
    },
    /// `audit verify`: what the verifier found.
    AuditVerified(vault_audit::Report),
    /// `audit prune`: refused (the export did not verify), or what the vault removed.
    AuditPruned(crate::audit::Pruning),
    /// `audit trace`: refused (the exports did not verify), or every access to the token.
    AuditTraced(crate::trace::Trace),
    /// `destination propose`: the proposed version, and how a second admin approves it.
    DestinationProposed {
        /// The version as the vault recorded it.
        version: DestinationVersion,
        /// The command the second admin runs (with their own credentials).
        approve_command: String,
    },
    /// `destination approve`: the version now in force.
    DestinationApproved(DestinationVersion),
    /// `destination revoke`: how many versions of the destination were revoked.
    DestinationRevoked {
        /// The destination.
        name: String,
        /// Versions revoked.
        revoked: u64,
    },
    /// `destination list`: every version (of `name`, if given), oldest first.
    Destinations {
        /// The destination asked about, if one was.
        name: Option<String>,
        /// The versions.
        versions: Vec<DestinationVersion>,
        /// Whether to show each version's spec (`--spec`).
        spec: bool,
    },
}

fn pruned_text(pruning: &crate::audit::Pruning) -> String {
    use crate::audit::Pruning;
    match pruning {
        Pruning::Refused(report) if report.is_clean() => {
            "nothing pruned: the export holds no checkpoints\n".to_owned()
        }
        Pruning::Refused(report) => format!(
            "{}nothing pruned: the export does not verify\n",
            verify_text(report)
        ),
        Pruning::Done { answer, .. } if answer.through_checkpoint == 0 => {
            "nothing pruned: no exported checkpoint is older than the cutoff\n".to_owned()
        }
        Pruning::Done {
            export,
            checkpoints: (first, last),
            answer,
        } => format!(
            "pruned {} {} and {} {} through checkpoint #{} ({} {}, {} closed; {} prune {} \
             written)\nThey are kept in {} (checkpoints #{first}..#{last}); keep it, and verify \
             it together with a new export.\n",
            answer.records_removed,
            plural(answer.records_removed, "record", "records"),
            answer.checkpoints_removed,
            plural(answer.checkpoints_removed, "checkpoint", "checkpoints"),
            answer.through_checkpoint,
            answer.writers_pruned,
            plural(answer.writers_pruned, "writer", "writers"),
            answer.writers_closed,
            answer.checkpoints_written,
            plural(answer.checkpoints_written, "checkpoint", "checkpoints"),
            export.display(),
        ),
    }
}

fn verify_text(report: &vault_audit::Report) -> String {
    let mut text = String::new();
    for problem in &report.problems {
        text.push_str(&format!("{problem}\n"));
    }
    let writers = report.writers.len();
    let range = report.checkpoint_range.map_or_else(
        || "no checkpoints".to_owned(),
        |(a, b)| format!("checkpoints #{a}..#{b}"),
    );
    if report.is_clean() {
        text.push_str(&format!(
            "verified: {} records from {writers} {}, {range}, every signature valid; nothing \
             edited, missing, inserted or reordered\n",
            report.records,
            plural(writers as u64, "writer", "writers")
        ));
        if let Some(hash) = &report.last_checkpoint_hash {
            text.push_str(&format!(
                "last checkpoint hash {hash} (keep it apart from the export: it pins the tail)\n"
            ));
        }
    } else {
        text.push_str(&format!(
            "FAILED: {} {} in {} records, {range}\n",
            report.problems.len(),
            plural(report.problems.len() as u64, "problem", "problems"),
            report.records
        ));
    }
    text
}

impl Report {
    /// The exit code the report calls for: 1 for an export that failed verification.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::AuditVerified(report) if !report.is_clean() => crate::EXIT_FAILED,
            Self::AuditPruned(crate::audit::Pruning::Refused(_)) => crate::EXIT_FAILED,
            Self::AuditTraced(trace) if trace.refused() => crate::EXIT_FAILED,
            _ => 0,
        }
    }

    /// The report as `format` asks, ending in a newline.
    ///
    /// # Errors
    /// As [`Report::to_json`].
    pub fn render(&self, format: OutputFormat) -> serde_json::Result<String> {
        Ok(match format {
            OutputFormat::Text => self.to_text(),
            OutputFormat::Json => format!("{}\n", self.to_json()?),
        })
    }

    /// The report for people, ending in a newline.
    #[must_use]
    pub fn to_text(&self) -> String {
        match self {
            Self::Status(status) => status_text(status),
            Self::MerchantKeys { merchant_id, keys } => merchant_keys_text(merchant_id, keys),
            Self::Rotated {
                merchant_id,
                version,
            } => format!(
                "rotated merchant {merchant_id} to DEK version {version}\n\
                 New tokens are encrypted under it; older versions still decrypt until \
                 `vaultctl keys reencrypt {} --reason TEXT` moves their tokens.\n",
                shell_quote(merchant_id)
            ),
            Self::Reencrypted {
                tokens,
                dek_version,
                ..
            } => format!("{}\n", reencrypted_summary(*tokens, dek_version)),
            Self::Rewrapped { keys, kek_id } => format!("{}\n", rewrapped_summary(*keys, kek_id)),
            Self::ShredRequested {
                request,
                approve_command,
            } => shred_requested_text(request, approve_command),
            Self::ShredApproved {
                merchant_id,
                request_id,
                keys_destroyed,
            } => format!(
                "shredded merchant {merchant_id}: {keys_destroyed} {} destroyed (request \
                 {request_id})\nIts tokens can no longer be detokenized, and it cannot tokenize \
                 again.\n",
                plural(*keys_destroyed, "key", "keys")
            ),
            Self::AuditExported(e) => format!(
                "exported {} {} and {} {} to {}\nVerify it offline with `vaultctl audit verify \
                 --public-key FILE {}`.\n",
                e.records,
                plural(e.records, "record", "records"),
                e.checkpoints,
                plural(e.checkpoints, "checkpoint", "checkpoints"),
                e.path.display(),
                e.path.display()
            ),
            Self::PublicKeys { path, keys } => format!(
                "wrote {} audit public {} to {} ({})\n",
                keys.len(),
                plural(keys.len() as u64, "key", "keys"),
                path.display(),
                keys.iter()
                    .map(|k| k.key_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::AuditVerified(report) => verify_text(report),
            Self::AuditPruned(pruning) => pruned_text(pruning),
            Self::AuditTraced(trace) => trace::text(trace),
            Self::DestinationProposed {
                version,
                approve_command,
            } => destinations::proposed_text(version, approve_command),
            Self::DestinationApproved(version) => destinations::approved_text(version),
            Self::DestinationRevoked { name, revoked } => {
                destinations::revoked_text(name, *revoked)
            }
            Self::Destinations {
                name,
                versions,
                spec,
            } => destinations::list_text(name.as_deref(), versions, *spec),
        }
    }

    /// The report for scripts: one JSON object (the `json` module says which fields each has).
    ///
    /// # Errors
    /// If serde cannot encode it (not expected: strings, numbers and lists only).
    pub fn to_json(&self) -> serde_json::Result<Value> {
        serde_json::to_value(self)
    }
}

/// The final line of `keys reencrypt`.
#[must_use]
pub fn reencrypted_summary(tokens: u64, dek_version: &str) -> String {
    format!(
        "re-encrypted {tokens} {} to DEK version {dek_version}",
        plural(tokens, "token", "tokens")
    )
}

/// The final line of `kek rewrap`.
#[must_use]
pub fn rewrapped_summary(keys: u64, kek_id: &str) -> String {
    format!(
        "rewrapped {keys} {} under {kek_id}",
        plural(keys, "key", "keys")
    )
}

/// Cache hits over lookups, or `None` before the first lookup.
#[must_use]
pub fn hit_ratio(cache: &CacheStatus) -> Option<f64> {
    let lookups = cache.hits.saturating_add(cache.misses);
    #[allow(clippy::cast_precision_loss)] // a ratio for display; exact counts are printed too
    (lookups > 0).then(|| cache.hits as f64 / lookups as f64)
}

/// The `vaultctl shred approve` command line for `request`, as a second admin would type it.
/// `addr` is added when the vault is not at the default address.
#[must_use]
pub fn approve_command(addr: Option<&str>, merchant_id: &str, request_id: &str) -> String {
    let addr = addr.map_or_else(String::new, |addr| format!("--addr {} ", shell_quote(addr)));
    format!(
        "vaultctl {addr}shred approve {} --request-id {} --reason 'REASON'",
        shell_quote(merchant_id),
        shell_quote(request_id)
    )
}

/// `word` quoted for a POSIX shell if it needs it.
#[must_use]
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/@%+=".contains(c));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn plural<'a>(count: u64, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 { one } else { many }
}

fn status_text(status: &GetKeyStatusResponse) -> String {
    let previous = if status.previous_keks.is_empty() {
        "none".to_owned()
    } else {
        status.previous_keks.join(", ")
    };
    let rewrap = if status.keys_to_rewrap == 0 {
        "0".to_owned()
    } else {
        format!(
            "{} (move them with `vaultctl kek rewrap --reason TEXT`)",
            status.keys_to_rewrap
        )
    };
    let age = if status.dek_rotate_after_days == 0 {
        " (no age limit)".to_owned()
    } else {
        format!(
            " or {} {}",
            status.dek_rotate_after_days,
            plural(status.dek_rotate_after_days, "day", "days")
        )
    };
    let limits = format!(
        "rotate after {} uses{age}; at most {} uses per version",
        status.dek_rotate_after_uses, status.dek_max_uses
    );
    let cache = status.cache.as_ref().map_or_else(
        || "not reported".to_owned(),
        |cache| {
            let ratio = hit_ratio(cache).map_or_else(
                || "n/a".to_owned(),
                |ratio| format!("{:.1}%", ratio * 100.0),
            );
            format!(
                "{} hits, {} misses (hit ratio {ratio}); {} of {} entries, max age {} s",
                cache.hits, cache.misses, cache.entries, cache.max_entries, cache.max_age_secs
            )
        },
    );
    let rows = [
        ("KEK", status.kek.clone()),
        ("current KEK id", status.current_kek_id.clone()),
        ("previous KEKs", previous),
        ("keys to rewrap", rewrap),
        ("DEK limits", limits),
        ("key cache", cache),
    ];
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(label, value)| format!("{label:<width$}  {value}\n"))
        .collect()
}

fn merchant_keys_text(merchant_id: &str, keys: &GetMerchantKeysResponse) -> String {
    let mut out = format!("merchant {merchant_id}\n");
    if keys.keys.is_empty() {
        out.push_str("no keys\n");
    } else {
        let rows: Vec<Vec<String>> = keys
            .keys
            .iter()
            .map(|key| {
                // Uses and tokens are counted for DEKs only.
                let dek = key.purpose == "dek";
                let count = |n: u64| if dek { n.to_string() } else { "-".to_owned() };
                vec![
                    key.purpose.clone(),
                    key.version.to_string(),
                    key.kek_id.clone(),
                    count(key.uses),
                    count(key.tokens),
                    key.created_at.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                ("PURPOSE", Align::Left),
                ("VERSION", Align::Right),
                ("KEK ID", Align::Left),
                ("USES RESERVED", Align::Right),
                ("TOKENS", Align::Right),
                ("CREATED", Align::Left),
            ],
            &rows,
        ));
        out.push_str(
            "(uses reserved: encryptions each replica reserves in leases ahead of making them, an \
             upper bound on those made; tokens: stored under the version)\n",
        );
    }
    out.push_str(if keys.shredded {
        "shredded: yes (keys destroyed)\n"
    } else {
        "shredded: no\n"
    });
    match &keys.pending_shred {
        None => out.push_str("pending shred: none\n"),
        Some(request) => out.push_str(&format!(
            "pending shred: request {} by {} at {}, reason {:?}; awaiting a second admin\n",
            request.request_id, request.requested_by, request.requested_at, request.reason
        )),
    }
    out
}

fn shred_requested_text(request: &ShredRequest, approve_command: &str) -> String {
    format!(
        "shred requested for merchant {merchant}\n\
         request id:    {id}\n\
         requested by:  {by}\n\
         requested at:  {at}\n\
         reason:        {reason}\n\
         \n\
         Nothing is destroyed yet. A second admin, with a keys.admin identity different from the \
         requester's, must approve within 24 hours by running (with their own credentials, and \
         their own reason in place of REASON):\n\
         \n  {approve_command}\n",
        merchant = request.merchant_id,
        id = request.request_id,
        by = request.requested_by,
        at = request.requested_at,
        reason = request.reason,
    )
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A plain-text table: columns two spaces apart, each as wide as its widest cell.
fn table(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(column, (header, _))| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .chain(std::iter::once(header.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text = cells
            .zip(headers.iter().zip(&widths))
            .map(|(cell, ((_, align), width))| match align {
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            })
            .collect::<Vec<_>>()
            .join("  ");
        format!("{}\n", text.trim_end())
    };
    let mut out = line(&mut headers.iter().map(|(header, _)| *header));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use vault_proto::v1::KeyVersion;

    use super::*;

    fn status() -> GetKeyStatusResponse {
        GetKeyStatusResponse {
            kek: "pkcs11:vault/kek-2026".into(),
            current_kek_id: "pkcs11:vault/kek-2026".into(),
            previous_keks: vec!["pkcs11:vault/kek-2025".into()],
            keys_to_rewrap: 12,
            dek_rotate_after_uses: 1_000_000,
            dek_max_uses: 4_000_000,
            dek_rotate_after_days: 90,
            cache: Some(CacheStatus {
                hits: 3,
                misses: 1,
                entries: 4,
                max_entries: 1000,
                max_age_secs: 300,
            }),
        }
    }

    fn merchant_keys() -> GetMerchantKeysResponse {
        GetMerchantKeysResponse {
            keys: vec![
                KeyVersion {
                    purpose: "dek".into(),
                    version: 2,
                    kek_id: "pkcs11:vault/kek-2026".into(),
                    uses: 1500,
                    created_at: "2026-02-01T00:00:00Z".into(),
                    tokens: 1200,
                },
                KeyVersion {
                    purpose: "dek".into(),
                    version: 1,
                    kek_id: "pkcs11:vault/kek-2025".into(),
                    uses: 7,
                    created_at: "2026-01-01T00:00:00Z".into(),
                    tokens: 3,
                },
                KeyVersion {
                    purpose: "fingerprint".into(),
                    version: 1,
                    kek_id: "pkcs11:vault/kek-2026".into(),
                    uses: 0,
                    created_at: "2026-01-01T00:00:00Z".into(),
                    tokens: 0,
                },
            ],
            shredded: false,
            pending_shred: Some(shred_request()),
        }
    }

    fn shred_request() -> ShredRequest {
        ShredRequest {
            request_id: "7d1c".into(),
            merchant_id: "m-1".into(),
            requested_by: "spiffe://vault.dev/admin-1".into(),
            requested_at: "2026-03-01T12:00:00Z".into(),
            reason: "contract ended".into(),
        }
    }

    #[test]
    fn status_text_names_every_part() {
        let text = Report::Status(status()).to_text();
        assert_eq!(
            text,
            "KEK             pkcs11:vault/kek-2026\n\
             current KEK id  pkcs11:vault/kek-2026\n\
             previous KEKs   pkcs11:vault/kek-2025\n\
             keys to rewrap  12 (move them with `vaultctl kek rewrap --reason TEXT`)\n\
             DEK limits      rotate after 1000000 uses or 90 days; at most 4000000 uses per \
             version\n\
             key cache       3 hits, 1 misses (hit ratio 75.0%); 4 of 1000 entries, max age \
             300 s\n"
        );
    }

    #[test]
    fn status_text_without_previous_keks_age_limit_or_lookups() {
        let mut status = status();
        status.previous_keks.clear();
        status.keys_to_rewrap = 0;
        status.dek_rotate_after_days = 0;
        status.cache = Some(CacheStatus::default());
        let text = Report::Status(status).to_text();
        assert!(text.contains("previous KEKs   none\n"), "{text}");
        assert!(text.contains("keys to rewrap  0\n"), "{text}");
        assert!(
            text.contains("rotate after 1000000 uses (no age limit);"),
            "{text}"
        );
        assert!(text.contains("(hit ratio n/a)"), "{text}");
    }

    #[test]
    fn status_json_shape() {
        let value = Report::Status(status()).to_json().unwrap();
        assert_eq!(
            value,
            json!({
                "kek": "pkcs11:vault/kek-2026",
                "current_kek_id": "pkcs11:vault/kek-2026",
                "previous_keks": ["pkcs11:vault/kek-2025"],
                "keys_to_rewrap": 12,
                "dek_rotate_after_uses": 1_000_000,
                "dek_max_uses": 4_000_000,
                "dek_rotate_after_days": 90,
                "cache": {
                    "hits": 3,
                    "misses": 1,
                    "entries": 4,
                    "max_entries": 1000,
                    "max_age_secs": 300,
                    "hit_ratio": 0.75,
                },
            })
        );
        let mut empty = status();
        empty.cache = Some(CacheStatus::default());
        assert_eq!(
            Report::Status(empty).to_json().unwrap()["cache"]["hit_ratio"],
            Value::Null
        );
    }

    #[test]
    fn merchant_keys_table() {
        let report = Report::MerchantKeys {
            merchant_id: "m-1".into(),
            keys: merchant_keys(),
        };
        assert_eq!(
            report.to_text(),
            "merchant m-1\n\
             PURPOSE      VERSION  KEK ID                 USES RESERVED  TOKENS  CREATED\n\
             dek                2  pkcs11:vault/kek-2026           1500    1200  2026-02-01T00:00:00Z\n\
             dek                1  pkcs11:vault/kek-2025              7       3  2026-01-01T00:00:00Z\n\
             fingerprint        1  pkcs11:vault/kek-2026              -       -  2026-01-01T00:00:00Z\n\
             (uses reserved: encryptions each replica reserves in leases ahead of making them, an \
             upper bound on those made; tokens: stored under the version)\n\
             shredded: no\n\
             pending shred: request 7d1c by spiffe://vault.dev/admin-1 at \
             2026-03-01T12:00:00Z, reason \"contract ended\"; awaiting a second admin\n"
        );
    }

    #[test]
    fn a_shredded_merchant_without_keys() {
        let report = Report::MerchantKeys {
            merchant_id: "m-2".into(),
            keys: GetMerchantKeysResponse {
                keys: vec![],
                shredded: true,
                pending_shred: None,
            },
        };
        assert_eq!(
            report.to_text(),
            "merchant m-2\nno keys\nshredded: yes (keys destroyed)\npending shred: none\n"
        );
    }

    #[test]
    fn merchant_keys_json_shape() {
        let report = Report::MerchantKeys {
            merchant_id: "m-1".into(),
            keys: merchant_keys(),
        };
        let value = report.to_json().unwrap();
        assert_eq!(value["merchant_id"], "m-1");
        assert_eq!(value["shredded"], false);
        assert_eq!(
            value["keys"][0],
            json!({
                "purpose": "dek",
                "version": 2,
                "kek_id": "pkcs11:vault/kek-2026",
                "uses": 1500,
                "tokens": 1200,
                "created_at": "2026-02-01T00:00:00Z",
            })
        );
        assert_eq!(value["keys"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            value["pending_shred"],
            json!({
                "request_id": "7d1c",
                "merchant_id": "m-1",
                "requested_by": "spiffe://vault.dev/admin-1",
                "requested_at": "2026-03-01T12:00:00Z",
                "reason": "contract ended",
            })
        );
        let none = Report::MerchantKeys {
            merchant_id: "m-1".into(),
            keys: GetMerchantKeysResponse::default(),
        };
        assert_eq!(none.to_json().unwrap()["pending_shred"], Value::Null);
    }

    #[test]
    fn job_summaries() {
        assert_eq!(
            reencrypted_summary(1200, "3"),
            "re-encrypted 1200 tokens to DEK version 3"
        );
        assert_eq!(
            reencrypted_summary(1, "3"),
            "re-encrypted 1 token to DEK version 3"
        );
        assert_eq!(
            rewrapped_summary(42, "transit:transit/vault-kek:v2"),
            "rewrapped 42 keys under transit:transit/vault-kek:v2"
        );
        let report = Report::Reencrypted {
            merchant_id: "m-1".into(),
            tokens: 0,
            dek_version: "3".into(),
        };
        assert_eq!(
            report.render(OutputFormat::Text).unwrap(),
            "re-encrypted 0 tokens to DEK version 3\n"
        );
    }

    #[test]
    fn job_json_is_the_final_summary_only() {
        let report = Report::Reencrypted {
            merchant_id: "m-1".into(),
            tokens: 1200,
            dek_version: "3".into(),
        };
        let text = report.render(OutputFormat::Json).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            json!({ "merchant_id": "m-1", "tokens_reencrypted": 1200, "dek_version": 3 })
        );
        let odd = Report::Reencrypted {
            merchant_id: "m-1".into(),
            tokens: 1,
            dek_version: "v3".into(),
        };
        assert_eq!(odd.to_json().unwrap()["dek_version"], "v3");
        let report = Report::Rewrapped {
            keys: 42,
            kek_id: "pkcs11:vault/kek-2026".into(),
        };
        assert_eq!(
            report.to_json().unwrap(),
            json!({ "keys_rewrapped": 42, "kek_id": "pkcs11:vault/kek-2026" })
        );
    }

    #[test]
    fn rotate_prints_the_new_version() {
        let report = Report::Rotated {
            merchant_id: "m-1".into(),
            version: 4,
        };
        assert!(
            report
                .to_text()
                .starts_with("rotated merchant m-1 to DEK version 4\n")
        );
        assert_eq!(
            report.to_json().unwrap(),
            json!({ "merchant_id": "m-1", "version": 4 })
        );
    }

    #[test]
    fn a_shred_request_says_who_must_approve_and_how() {
        let command = approve_command(None, "m-1", "7d1c");
        assert_eq!(
            command,
            "vaultctl shred approve m-1 --request-id 7d1c --reason 'REASON'"
        );
        let report = Report::ShredRequested {
            request: shred_request(),
            approve_command: command.clone(),
        };
        let text = report.to_text();
        assert!(text.contains("request id:    7d1c\n"), "{text}");
        assert!(text.contains("different from the requester's"), "{text}");
        assert!(text.ends_with(&format!("\n  {command}\n")), "{text}");
        let value = report.to_json().unwrap();
        assert_eq!(value["request_id"], "7d1c");
        assert_eq!(value["merchant_id"], "m-1");
        assert_eq!(value["approve_command"], command.as_str());
        assert_eq!(value.as_object().map(serde_json::Map::len), Some(6));
    }

    #[test]
    fn the_approve_command_quotes_what_a_shell_would_split() {
        assert_eq!(
            approve_command(Some("vault.internal:50051"), "acme corp", "it's"),
            "vaultctl --addr vault.internal:50051 shred approve 'acme corp' --request-id \
             'it'\\''s' --reason 'REASON'"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn approval_prints_the_keys_destroyed() {
        let report = Report::ShredApproved {
            merchant_id: "m-1".into(),
            request_id: "7d1c".into(),
            keys_destroyed: 3,
        };
        assert!(
            report
                .to_text()
                .starts_with("shredded merchant m-1: 3 keys destroyed (request 7d1c)\n")
        );
        assert_eq!(
            report.to_json().unwrap(),
            json!({ "merchant_id": "m-1", "request_id": "7d1c", "keys_destroyed": 3 })
        );
    }

    #[test]
    fn every_json_report_is_one_line_of_one_object() {
        let reports = [
            Report::Status(status()),
            Report::MerchantKeys {
                merchant_id: "m-1".into(),
                keys: merchant_keys(),
            },
            Report::Rotated {
                merchant_id: "m-1".into(),
                version: 1,
            },
            Report::Rewrapped {
                keys: 1,
                kek_id: "k".into(),
            },
        ];
        for report in reports {
            let text = report.render(OutputFormat::Json).unwrap();
            assert_eq!(text.matches('\n').count(), 1, "{text}");
            let parsed: Value = serde_json::from_str(&text).unwrap();
            assert!(parsed.is_object(), "{text}");
        }
    }
}
