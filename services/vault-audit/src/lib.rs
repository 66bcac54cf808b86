//! The audit trail's format, shared by the vault (which writes it) and by `vaultctl audit
//! verify` (which checks an export offline, with no vault and no database).
//!
//! - [`Entry`]: one audit record. Each writer (one `vaultd` process) keeps its own chain: a
//!   record names its writer, its sequence number in that writer's chain (from 1, no gaps) and
//!   the hash of its predecessor ([`GENESIS`] for the first); its own hash covers every field
//!   ([`Entry::compute_hash`]).
//! - [`Checkpoint`]: a writer's chain head (seq and hash), signed with the vault's Ed25519
//!   audit key. Checkpoints form one chain of their own across all writers (`cp_seq` from 1,
//!   each naming its predecessor's hash), so a whole writer's chain cannot vanish unnoticed.
//! - [`Line`]: the JSON lines of an export (a header, the checkpoints, then the records).
//! - A writer's records in an export are exactly those after the lowest head signed for it
//!   (its first checkpoint, or the one a prune wrote at the cut) up to the highest.
//! - [`verify`]: checks one or more exports against the public key and names each broken
//!   record and how it broke ([`ProblemKind`]).

mod format;
mod verify;

pub use format::{
    Checkpoint, CheckpointDraft, CheckpointKind, EXPORT_FORMAT, Entry, ExportHeader, GENESIS,
    HASH_LEN, Line, PublicKey, format_time, key_id, parse_time,
};
pub use verify::{Problem, ProblemKind, Report, Segment, WriterSummary, parse_export, verify};

#[cfg(test)]
mod tests;
