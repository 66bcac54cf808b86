//! Records, checkpoints and export lines, and the exact bytes their hashes and signatures cover.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use vault_crypto::{PUBLIC_KEY_LEN, SIGNATURE_LEN, associated_data, sha256};

/// Length of a record or checkpoint hash (SHA-256), in bytes.
pub const HASH_LEN: usize = 32;

/// The predecessor hash of a writer's first record, and of the first checkpoint.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

/// The `format` an export's header names.
pub const EXPORT_FORMAT: &str = "vault-audit-export/v1";

/// `micros` microseconds after the Unix epoch as the trail writes times: RFC 3339, UTC, always
/// six fractional digits (`2026-11-23T10:15:00.123456Z`). `None` outside years 0-9999.
#[must_use]
pub fn format_time(micros: i64) -> Option<String> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()?;
    if !(0..=9999).contains(&at.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    ))
}

/// Parses an RFC 3339 time (any offset) into microseconds since the Unix epoch.
#[must_use]
pub fn parse_time(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000).ok()
}

/// The id of a public key: the first eight bytes of its SHA-256, in hex.
#[must_use]
pub fn key_id(public_key: &[u8; PUBLIC_KEY_LEN]) -> String {
    let digest = sha256(public_key);
    hex::encode(digest.get(..8).unwrap_or(&digest))
}

/// One audit record, as stored, exported and streamed to a SIEM. Holds the six PCI DSS 10.2.2
/// fields (caller, event, at, outcome, origin, resource) and never a PAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The chain this record belongs to: one per `vaultd` process, named by its start time and
    /// a random suffix (`20261123T101500Z-3f9a1c2b`).
    pub writer: String,
    /// Position in the writer's chain, from 1, without gaps.
    pub seq: u64,
    /// When the event happened, UTC ([`format_time`]).
    pub at: String,
    /// Who: the caller's authenticated identity, the certificate digest of an unidentified
    /// caller, or `vaultd` for the vault's own events.
    pub caller: String,
    /// Where from: the peer's socket address, or `vaultd` for the vault's own events.
    pub origin: String,
    /// What: `tokenize`, `detokenize`, `metadata`, `delete`, `audit.read`, `keys.admin`,
    /// `vault.start`, `vault.stop`, `audit.prune`.
    pub event: String,
    /// A fixed note refining the event (an admin action, `existing`, a refused field's name).
    pub detail: Option<String>,
    /// How it ended: `success`, `denied`, `unauthenticated`, `invalid_argument`, ...
    pub outcome: String,
    /// What it touched: `merchant/M/token/T`, `merchant/M`, `keys`, `audit`, `vault`, or the
    /// service a refused call aimed at.
    pub resource: String,
    /// The merchant, when the request named a valid one.
    pub merchant_id: Option<String>,
    /// The token, when the request named a valid one or one was issued.
    pub token: Option<String>,
    /// The call's request id.
    pub request_id: String,
    /// The caller's stated reason (Detokenize, shred requests).
    pub reason: Option<String>,
    /// The hash of the writer's previous record ([`GENESIS`] for seq 1).
    #[serde(with = "hex_array")]
    pub prev_hash: [u8; HASH_LEN],
    /// This record's hash ([`Entry::compute_hash`]).
    #[serde(with = "hex_array")]
    pub hash: [u8; HASH_LEN],
}

fn optional(value: Option<&String>) -> Vec<u8> {
    match value {
        None => vec![0],
        Some(text) => {
            let mut part = Vec::with_capacity(text.len() + 1);
            part.push(1);
            part.extend_from_slice(text.as_bytes());
            part
        }
    }
}

impl Entry {
    /// SHA-256 over every field but `hash`, each length-prefixed (absent and empty optional
    /// fields differ), under the label `vault.audit.record.v1`.
    #[must_use]
    pub fn compute_hash(&self) -> [u8; HASH_LEN] {
        sha256(&associated_data(
            "vault.audit.record.v1",
            &[
                self.writer.as_bytes(),
                &self.seq.to_be_bytes(),
                self.at.as_bytes(),
                self.caller.as_bytes(),
                self.origin.as_bytes(),
                self.event.as_bytes(),
                &optional(self.detail.as_ref()),
                self.outcome.as_bytes(),
                self.resource.as_bytes(),
                &optional(self.merchant_id.as_ref()),
                &optional(self.token.as_ref()),
                self.request_id.as_bytes(),
                &optional(self.reason.as_ref()),
                &self.prev_hash,
            ],
        ))
    }

    /// Sets `hash` from the other fields.
    #[must_use]
    pub fn sealed(mut self) -> Self {
        self.hash = self.compute_hash();
        self
    }
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointKind {
    /// A writer's first checkpoint, before its first record (seq 0).
    Start,
    /// The periodic checkpoint.
    Interval,
    /// At shutdown, after the `vault.stop` record.
    Stop,
    /// Before an export, so that it ends on a signed head.
    Export,
    /// After a prune, over its `audit.prune` record.
    Prune,
    /// The first checkpoint of a replacement signing key (`vaultd replace-audit-key`), over
    /// the `audit.key_replaced` record that names the old key. The only place the checkpoint
    /// chain may change keys.
    KeyReplaced,
}

impl CheckpointKind {
    /// The kind's name as checkpoints spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Interval => "interval",
            Self::Stop => "stop",
            Self::Export => "export",
            Self::Prune => "prune",
            Self::KeyReplaced => "key_replaced",
        }
    }

    /// The kind named `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Start,
            Self::Interval,
            Self::Stop,
            Self::Export,
            Self::Prune,
            Self::KeyReplaced,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// A checkpoint before it is signed: everything the signature covers but the key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointDraft {
    /// Position in the checkpoint chain, from 1.
    pub cp_seq: u64,
    /// Why it was written.
    pub kind: CheckpointKind,
    /// When, UTC ([`format_time`]).
    pub at: String,
    /// Whose chain head it signs.
    pub writer: String,
    /// The head's seq (0: the chain is still empty).
    pub seq: u64,
    /// The head's hash ([`GENESIS`] for an empty chain).
    pub head_hash: [u8; HASH_LEN],
    /// The previous checkpoint's hash ([`GENESIS`] for `cp_seq` 1).
    pub prev_hash: [u8; HASH_LEN],
    /// On a `key_replaced` checkpoint: the id of the key it replaces.
    pub replaces_key: Option<String>,
}

impl CheckpointDraft {
    /// Signs the draft with the key whose public half is `public_key`; `sign` returns the
    /// Ed25519 signature of the bytes it is given.
    #[must_use]
    pub fn sign(
        self,
        public_key: &[u8; PUBLIC_KEY_LEN],
        sign: impl FnOnce(&[u8]) -> [u8; SIGNATURE_LEN],
    ) -> Checkpoint {
        let mut checkpoint = Checkpoint {
            cp_seq: self.cp_seq,
            kind: self.kind.as_str().to_owned(),
            at: self.at,
            writer: self.writer,
            seq: self.seq,
            head_hash: self.head_hash,
            prev_hash: self.prev_hash,
            key_id: key_id(public_key),
            replaces_key: self.replaces_key,
            signature: [0; SIGNATURE_LEN],
            hash: GENESIS,
        };
        let payload = checkpoint.payload();
        checkpoint.signature = sign(&payload);
        checkpoint.hash = sha256(&payload);
        checkpoint
    }
}

/// A signed chain head. `hash` is the SHA-256 of [`Checkpoint::payload`], which the signature
/// also covers; the next checkpoint names it as `prev_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Position in the checkpoint chain, from 1, without gaps.
    pub cp_seq: u64,
    /// Why it was written ([`CheckpointKind`]).
    pub kind: String,
    /// When, UTC.
    pub at: String,
    /// Whose chain head it signs.
    pub writer: String,
    /// The head's seq (0: empty chain).
    pub seq: u64,
    /// The head's hash.
    #[serde(with = "hex_array")]
    pub head_hash: [u8; HASH_LEN],
    /// The previous checkpoint's hash.
    #[serde(with = "hex_array")]
    pub prev_hash: [u8; HASH_LEN],
    /// The signing key's id ([`key_id`]).
    pub key_id: String,
    /// On a `key_replaced` checkpoint only: the id of the key it replaces (the key of the
    /// checkpoint before it). Signed like every other field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_key: Option<String>,
    /// Ed25519 over the payload.
    #[serde(with = "hex_array")]
    pub signature: [u8; SIGNATURE_LEN],
    /// SHA-256 of the payload.
    #[serde(with = "hex_array")]
    pub hash: [u8; HASH_LEN],
}

impl Checkpoint {
    /// The bytes signed and hashed: every field but `signature` and `hash`, length-prefixed,
    /// under the label `vault.audit.checkpoint.v1` (`replaces_key` only when present, so
    /// checkpoints without it keep the payload they were signed with).
    #[must_use]
    pub fn payload(&self) -> Vec<u8> {
        let cp_seq = self.cp_seq.to_be_bytes();
        let seq = self.seq.to_be_bytes();
        let mut parts: Vec<&[u8]> = vec![
            &cp_seq,
            self.kind.as_bytes(),
            self.at.as_bytes(),
            self.writer.as_bytes(),
            &seq,
            &self.head_hash,
            &self.prev_hash,
            self.key_id.as_bytes(),
        ];
        if let Some(replaced) = &self.replaces_key {
            parts.push(replaced.as_bytes());
        }
        associated_data("vault.audit.checkpoint.v1", &parts)
    }
}

/// A public key auditors verify checkpoints with (`vaultctl audit public-key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    /// [`key_id`] of the key.
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The 32-byte public key.
    #[serde(with = "hex_array")]
    pub public_key: [u8; PUBLIC_KEY_LEN],
}

impl PublicKey {
    /// The entry for `public_key`.
    #[must_use]
    pub fn ed25519(public_key: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self {
            key_id: key_id(&public_key),
            algorithm: "ed25519".to_owned(),
            public_key,
        }
    }
}

/// The first line of an export: what it covers. Informational: the checkpoints, not the
/// header, are what the verifier trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// The requested start, if any.
    pub from: Option<String>,
    /// The requested end, if any.
    pub to: Option<String>,
    /// When the export was made.
    pub exported_at: String,
    /// How many checkpoint lines follow.
    pub checkpoints: u64,
    /// How many record lines follow.
    pub records: u64,
    /// Keep the file at least until then (the vault's `[audit] retain_days` after the export;
    /// PCI DSS 10.5.1 asks for twelve months). Absent in exports made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_until: Option<String>,
}

/// One line of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// The first line.
    Header(ExportHeader),
    /// A checkpoint (all checkpoints come before the records, by `cp_seq`).
    Checkpoint(Checkpoint),
    /// A record (by writer, then seq).
    Record(Entry),
}

/// Fixed-size byte arrays as lowercase hex strings.
mod hex_array {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|_| D::Error::custom(format!("expected {N} bytes in hex")))?;
        Ok(out)
    }
}
