//! The audit trail's wire form (feature `audit`): `vault_audit`'s records, checkpoints and
//! export lines to and from their `vault.v1` messages, in both directions in one place, for
//! the server that sends them and the clients that read them.

use vault_audit::{Checkpoint, Entry, ExportHeader, Line, PublicKey};

use crate::v1 as pb;

/// An answer that breaks `audit.proto`'s contract (a hash of the wrong length, an export item
/// without content). Names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

fn bytes<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], WireError> {
    value
        .try_into()
        .map_err(|_| WireError(format!("{what} is not {N} bytes")))
}

impl From<Entry> for pb::AuditRecord {
    fn from(entry: Entry) -> Self {
        Self {
            writer: entry.writer,
            seq: entry.seq,
            at: entry.at,
            caller: entry.caller,
            origin: entry.origin,
            event: entry.event,
            detail: entry.detail,
            outcome: entry.outcome,
            resource: entry.resource,
            merchant_id: entry.merchant_id,
            token: entry.token,
            request_id: entry.request_id,
            reason: entry.reason,
            prev_hash: entry.prev_hash.to_vec(),
            hash: entry.hash.to_vec(),
        }
    }
}

impl TryFrom<pb::AuditRecord> for Entry {
    type Error = WireError;

    fn try_from(record: pb::AuditRecord) -> Result<Self, WireError> {
        Ok(Self {
            prev_hash: bytes(&record.prev_hash, "a record's prev_hash")?,
            hash: bytes(&record.hash, "a record's hash")?,
            writer: record.writer,
            seq: record.seq,
            at: record.at,
            caller: record.caller,
            origin: record.origin,
            event: record.event,
            detail: record.detail,
            outcome: record.outcome,
            resource: record.resource,
            merchant_id: record.merchant_id,
            token: record.token,
            request_id: record.request_id,
            reason: record.reason,
        })
    }
}

impl From<Checkpoint> for pb::Checkpoint {
    fn from(checkpoint: Checkpoint) -> Self {
        Self {
            cp_seq: checkpoint.cp_seq,
            kind: checkpoint.kind,
            at: checkpoint.at,
            writer: checkpoint.writer,
            seq: checkpoint.seq,
            head_hash: checkpoint.head_hash.to_vec(),
            prev_hash: checkpoint.prev_hash.to_vec(),
            key_id: checkpoint.key_id,
            signature: checkpoint.signature.to_vec(),
            hash: checkpoint.hash.to_vec(),
            replaces_key: checkpoint.replaces_key.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Checkpoint> for Checkpoint {
    type Error = WireError;

    fn try_from(c: pb::Checkpoint) -> Result<Self, WireError> {
        Ok(Self {
            head_hash: bytes(&c.head_hash, "a checkpoint's head_hash")?,
            prev_hash: bytes(&c.prev_hash, "a checkpoint's prev_hash")?,
            signature: bytes(&c.signature, "a checkpoint's signature")?,
            hash: bytes(&c.hash, "a checkpoint's hash")?,
            cp_seq: c.cp_seq,
            kind: c.kind,
            at: c.at,
            writer: c.writer,
            seq: c.seq,
            key_id: c.key_id,
            replaces_key: Some(c.replaces_key).filter(|key| !key.is_empty()),
        })
    }
}

impl From<ExportHeader> for pb::ExportHeader {
    fn from(h: ExportHeader) -> Self {
        Self {
            format: h.format,
            from: h.from,
            to: h.to,
            exported_at: h.exported_at,
            checkpoints: h.checkpoints,
            records: h.records,
            keep_until: h.keep_until,
        }
    }
}

impl From<pb::ExportHeader> for ExportHeader {
    fn from(h: pb::ExportHeader) -> Self {
        Self {
            format: h.format,
            from: h.from,
            to: h.to,
            exported_at: h.exported_at,
            checkpoints: h.checkpoints,
            records: h.records,
            keep_until: h.keep_until,
        }
    }
}

impl From<Line> for pb::ExportItem {
    fn from(line: Line) -> Self {
        use pb::export_item::Item;
        let item = match line {
            Line::Header(h) => Item::Header(h.into()),
            Line::Checkpoint(c) => Item::Checkpoint(c.into()),
            Line::Record(e) => Item::Record(e.into()),
        };
        Self { item: Some(item) }
    }
}

impl TryFrom<pb::ExportItem> for Line {
    type Error = WireError;

    fn try_from(item: pb::ExportItem) -> Result<Self, WireError> {
        use pb::export_item::Item;
        match item.item {
            Some(Item::Header(h)) => Ok(Self::Header(h.into())),
            Some(Item::Checkpoint(c)) => Checkpoint::try_from(c).map(Self::Checkpoint),
            Some(Item::Record(r)) => Entry::try_from(r).map(Self::Record),
            None => Err(WireError("an export item without content".to_owned())),
        }
    }
}

impl From<PublicKey> for pb::PublicKey {
    fn from(key: PublicKey) -> Self {
        Self {
            key_id: key.key_id,
            algorithm: key.algorithm,
            public_key: key.public_key.to_vec(),
        }
    }
}

impl TryFrom<pb::PublicKey> for PublicKey {
    type Error = WireError;

    /// Refuses a key whose id is not its own (never pass on a key under another key's id).
    fn try_from(k: pb::PublicKey) -> Result<Self, WireError> {
        let key = Self {
            key_id: k.key_id,
            algorithm: k.algorithm,
            public_key: bytes(&k.public_key, "a public key")?,
        };
        if key.key_id == vault_audit::key_id(&key.public_key) && key.algorithm == "ed25519" {
            Ok(key)
        } else {
            Err(WireError("a public key does not match its id".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry() -> Entry {
        Entry {
            writer: "20261204T000000Z-00000001".into(),
            seq: 3,
            at: "2026-12-04T00:00:00.000001Z".into(),
            caller: "spiffe://test/gateway".into(),
            origin: "127.0.0.1:9".into(),
            event: "tokenize".into(),
            detail: Some("existing".into()),
            outcome: "success".into(),
            resource: "merchant/m1/token/tok_A".into(),
            merchant_id: Some("m1".into()),
            token: None,
            request_id: "r1".into(),
            reason: None,
            prev_hash: [1; 32],
            hash: [2; 32],
        }
    }

    #[test]
    fn lines_survive_the_wire_both_ways() {
        let record = Line::Record(entry());
        assert_eq!(
            Line::try_from(pb::ExportItem::from(record.clone())),
            Ok(record)
        );
        let checkpoint = Line::Checkpoint(Checkpoint {
            cp_seq: 2,
            kind: "interval".into(),
            at: "2026-12-04T00:00:00Z".into(),
            writer: "w".into(),
            seq: 3,
            head_hash: [3; 32],
            prev_hash: [4; 32],
            key_id: "k".into(),
            signature: [5; 64],
            hash: [6; 32],
            replaces_key: None,
        });
        assert_eq!(
            Line::try_from(pb::ExportItem::from(checkpoint.clone())),
            Ok(checkpoint)
        );
    }

    #[test]
    fn a_broken_answer_names_the_field() {
        let mut record = pb::AuditRecord::from(entry());
        record.hash.pop();
        let err = Entry::try_from(record).unwrap_err();
        assert_eq!(err.to_string(), "a record's hash is not 32 bytes");
        let err = Line::try_from(pb::ExportItem { item: None }).unwrap_err();
        assert_eq!(err.to_string(), "an export item without content");
    }
}
