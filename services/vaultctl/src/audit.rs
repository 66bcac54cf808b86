//! `vaultctl audit ...`: export the trail (`vault.v1.AuditService`), fetch the public key,
//! verify exports offline with `vault_audit::verify` (no vault, no database), and prune what a
//! verified export holds.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use tonic::transport::Channel;
use vault_audit::{ExportHeader, Line, PublicKey};
use vault_proto::v1 as pb;
use vault_proto::v1::audit_service_client::AuditServiceClient;

use crate::error::Error;
use crate::progress::Reporter;

/// Opens `path` for writing an export: created with mode 0600, or truncated and set to 0600
/// if it exists. Records name callers, merchants and tokens; an export is for auditors only.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

fn write_error(path: &Path, err: &std::io::Error) -> Error {
    Error::Config(format!("cannot write {}: {err}", path.display()))
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The file.
    pub path: PathBuf,
    /// Its header.
    pub header: ExportHeader,
    /// Checkpoint lines written.
    pub checkpoints: u64,
    /// Record lines written.
    pub records: u64,
}

/// Streams an export into `path` (JSON lines), with progress on standard error.
///
/// # Errors
/// [`Error::Rpc`] if the vault refuses or fails; [`Error::Config`] if the file cannot be
/// written; [`Error::Protocol`] for a malformed answer.
pub async fn export(
    channel: Channel,
    from: Option<String>,
    to: Option<String>,
    path: &Path,
) -> Result<Exported, Error> {
    let mut client = AuditServiceClient::new(channel);
    let mut stream = client
        .export(pb::ExportRequest {
            from: from.unwrap_or_default(),
            to: to.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let file = create_private(path).map_err(|e| write_error(path, &e))?;
    let mut out = BufWriter::new(file);
    let mut header = None;
    let (mut checkpoints, mut records) = (0u64, 0u64);
    let mut reporter = Reporter::stderr(format!("exporting the audit trail to {}", path.display()));
    let mut total = 0;
    while let Some(item) = stream.message().await? {
        let line = Line::try_from(item)?;
        match &line {
            Line::Header(h) => {
                total = h.checkpoints + h.records;
                header = Some(h.clone());
            }
            Line::Checkpoint(_) => checkpoints += 1,
            Line::Record(_) => records += 1,
        }
        let text = serde_json::to_string(&line)
            .map_err(|e| Error::Protocol(format!("cannot encode a line: {e}")))?;
        writeln!(out, "{text}").map_err(|e| write_error(path, &e))?;
        let done = checkpoints + records;
        if done % 512 == 0 || done == total {
            reporter.update(&pb::Progress {
                done,
                remaining: total.saturating_sub(done),
                target: String::new(),
                finished: false,
                failed: 0,
            });
        }
    }
    out.flush().map_err(|e| write_error(path, &e))?;
    out.get_ref()
        .sync_all()
        .map_err(|e| write_error(path, &e))?;
    reporter.finish();
    let header = header.ok_or_else(|| Error::Protocol("the export had no header".to_owned()))?;
    Ok(Exported {
        path: path.to_owned(),
        header,
        checkpoints,
        records,
    })
}

/// The vault's audit public keys.
///
/// # Errors
/// [`Error::Rpc`] or [`Error::Protocol`].
pub async fn public_keys(channel: Channel) -> Result<Vec<PublicKey>, Error> {
    let mut client = AuditServiceClient::new(channel);
    let answer = client
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await?
        .into_inner();
    answer
        .keys
        .into_iter()
        .map(|k| Ok(PublicKey::try_from(k)?))
        .collect()
}

/// Reads a public key file (as `vaultctl audit public-key` writes it: a JSON list).
///
/// # Errors
/// [`Error::Config`] if it cannot be read or parsed.
pub fn read_public_keys(path: &Path) -> Result<Vec<PublicKey>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let keys: Vec<PublicKey> = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{} is not a public key file: {e}", path.display())))?;
    for key in &keys {
        if key.key_id != vault_audit::key_id(&key.public_key) {
            return Err(Error::Config(format!(
                "{}: key {} does not match its id",
                path.display(),
                key.key_id
            )));
        }
    }
    Ok(keys)
}

/// Reads the export `files` (as `audit verify` and `audit trace` do).
pub(crate) fn read_segments(files: &[PathBuf]) -> Result<Vec<vault_audit::Segment>, Error> {
    let mut segments = Vec::new();
    for path in files {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let segment = vault_audit::parse_export(&path.display().to_string(), BufReader::new(file))
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        segments.push(segment);
    }
    Ok(segments)
}

/// Verifies the export `files` against the keys in `public_key`, offline.
///
/// # Errors
/// [`Error::Config`] if a file cannot be read.
pub fn verify(public_key: &Path, files: &[PathBuf]) -> Result<vault_audit::Report, Error> {
    let keys = read_public_keys(public_key)?;
    Ok(vault_audit::verify(&read_segments(files)?, &keys))
}

/// How a prune went.
#[derive(Debug, Clone, PartialEq)]
pub enum Pruning {
    /// The export did not verify: nothing was sent, nothing removed.
    Refused(vault_audit::Report),
    /// The vault pruned (possibly nothing, if nothing exported was old enough).
    Done {
        /// The export that holds what went.
        export: PathBuf,
        /// Its checkpoints.
        checkpoints: (u64, u64),
        /// What the vault removed.
        answer: pb::PruneResponse,
    },
}

/// Verifies `export` offline against `public_key`, then asks the vault to remove records
/// older than `before` that it holds (needs `audit.prune`).
///
/// # Errors
/// [`Error::Config`] if a file cannot be read; [`Error::Rpc`] if the vault refuses or fails.
pub async fn prune(
    channel: impl FnOnce() -> Result<Channel, Error>,
    before: &str,
    export: &Path,
    public_key: &Path,
) -> Result<Pruning, Error> {
    let keys = read_public_keys(public_key)?;
    let segments = read_segments(&[export.to_owned()])?;
    let report = vault_audit::verify(&segments, &keys);
    let last = segments.first().and_then(|s| {
        s.checkpoints
            .iter()
            .map(|(_, c)| c)
            .max_by_key(|c| c.cp_seq)
    });
    let (Some((first, last_seq)), Some(last), true) =
        (report.checkpoint_range, last, report.is_clean())
    else {
        return Ok(Pruning::Refused(report));
    };
    let mut client = AuditServiceClient::new(channel()?);
    let answer = client
        .prune(pb::PruneRequest {
            before: before.to_owned(),
            export_first_checkpoint: first,
            export_last_checkpoint: last_seq,
            export_last_hash: last.hash.to_vec(),
        })
        .await?
        .into_inner();
    Ok(Pruning::Done {
        export: export.to_owned(),
        checkpoints: (first, last_seq),
        answer,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn exports_are_written_for_their_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let new = dir.path().join("new.jsonl");
        drop(create_private(&new).unwrap());
        assert_eq!(mode(&new), 0o600);
        let old = dir.path().join("old.jsonl");
        std::fs::write(&old, "stale").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private(&old).unwrap());
        assert_eq!(mode(&old), 0o600);
        assert_eq!(std::fs::read(&old).unwrap(), b"");
    }
}
