//! The optional second audit sink, for a SIEM: every committed audit record, as the same JSON
//! line an export holds (`{"type":"record", ...}`, with its writer, seq and hashes), appended to
//! a file or written to standard output.
//!
//! A record reaches the sink inside its transaction, after its insert and just before COMMIT,
//! under the writer's chain lock, so each writer's lines come in chain order. A line is handed
//! to the operating system (written and flushed) before the commit; it is not fsynced: the
//! database is the durable copy, the sink a second one.
//!
//! When the sink is `required`, a failed write rolls the transaction back and fails the call
//! (UNAVAILABLE, no PAN released), exactly as a database that refuses the record does: the
//! two copies never disagree about a call that went ahead. When it is not, the failure is
//! logged and the call goes on. A COMMIT that fails after the copy leaves a line the database
//! does not have; the writer's next record then reuses its seq, so a `writer#seq` that appears
//! twice in the sink marks it (the database, and the later line, are right).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;

use vault_audit::{Entry, Line};

/// The open file, and whether the last write failed (it may have left a partial line).
struct Target {
    file: File,
    broken: bool,
}

/// Where committed audit records are copied to.
pub struct AuditSink {
    target: Mutex<Target>,
    name: String,
    required: bool,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("name", &self.name)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl AuditSink {
    fn new(file: File, name: String, required: bool) -> Self {
        Self {
            target: Mutex::new(Target {
                file,
                broken: false,
            }),
            name,
            required,
        }
    }

    /// A sink to standard output (its own descriptor, unbuffered: a failed write leaves
    /// nothing behind to be written later).
    ///
    /// # Errors
    /// If standard output cannot be duplicated.
    pub fn stdout(required: bool) -> std::io::Result<Self> {
        let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Self::new(
            File::from(fd),
            "standard output".to_owned(),
            required,
        ))
    }

    /// A sink appending to `path` (created with mode 0600 if missing).
    ///
    /// # Errors
    /// If the file cannot be opened for appending.
    pub fn file(path: &Path, required: bool) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self::new(file, path.display().to_string(), required))
    }

    /// True if a failed write must fail the call.
    #[must_use]
    pub fn required(&self) -> bool {
        self.required
    }

    /// Where it writes, for logs and errors.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `entries` as JSON lines, unbuffered. After a failed write the next one starts
    /// on a new line, so a partial line stays one unparseable line.
    pub(crate) fn write(&self, entries: &[Entry]) -> std::io::Result<()> {
        let mut text = Vec::with_capacity(entries.len() * 512 + 1);
        let mut target = self
            .target
            .lock()
            .map_err(|_| std::io::Error::other("the audit sink's lock is poisoned"))?;
        if target.broken {
            text.push(b'\n');
        }
        for entry in entries {
            serde_json::to_writer(&mut text, &LineRef::Record(entry))?;
            text.push(b'\n');
        }
        let written = target.file.write_all(&text);
        target.broken = written.is_err();
        written
    }
}

/// [`Line::Record`] without copying the entry.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LineRef<'a> {
    Record(&'a Entry),
}

// `LineRef` must stay what `Line` parses.
const _: fn(Entry) -> Line = Line::Record;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_export_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("siem.jsonl");
        let sink = AuditSink::file(&path, true).unwrap();
        let entry = Entry {
            writer: "w".into(),
            seq: 1,
            at: "2026-11-23T00:00:00.000000Z".into(),
            caller: "c".into(),
            origin: "o".into(),
            event: "tokenize".into(),
            detail: None,
            outcome: "success".into(),
            resource: "tokens".into(),
            merchant_id: Some("m".into()),
            token: None,
            request_id: "r".into(),
            reason: None,
            prev_hash: vault_audit::GENESIS,
            hash: [7; 32],
        };
        sink.write(&[entry.clone(), entry.clone()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Line> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![Line::Record(entry.clone()), Line::Record(entry)]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}
