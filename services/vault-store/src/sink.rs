//! The optional second audit sink, for a SIEM: every audit record, as the same JSON line an
//! export holds (`{"type":"record", ...}`, with its writer, seq and hashes), appended to a file
//! or written to standard output.
//!
//! Records are handed to the sink inside their transaction, after their insert and just before
//! COMMIT, under the writer's chain lock, so each writer's lines come in chain order. One
//! thread owns the file and writes the lines unbuffered, in the order they were handed over
//! (a bounded queue of [`QUEUE`] batches); nothing is fsynced: the database is the durable
//! copy, the sink a second one. A sink that stalls (a full pipe) never blocks the vault's
//! async workers: calls wait at most [`TIMEOUT`] for it.
//!
//! When the sink is `required`, a call waits until its lines are written; a failed write, a
//! full queue or the timeout rolls the transaction back and fails the call (UNAVAILABLE, no
//! PAN released), exactly as a database that refuses the record does. When it is not, the
//! lines are queued and the call goes on; a failure is logged (`audit sink write failed`).
//!
//! Two cases leave a line the database does not have: a COMMIT that fails after the hand-over,
//! and a required write that timed out but lands later. The writer's next record then reuses
//! that seq, so a `writer#seq` that appears twice in the sink marks it (the database, and the
//! later line, are right). After a failed write the next one starts on a new line, so a partial
//! line stays one unparseable line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tokio::sync::oneshot;
use vault_audit::Entry;

/// Batches the sink's queue holds before calls are refused (required) or lines dropped.
pub const QUEUE: usize = 1024;

/// How long a call waits for a required sink.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Lines to write, and who waits for the outcome (a required sink's call).
struct Batch {
    text: Vec<u8>,
    done: Option<oneshot::Sender<std::io::Result<()>>>,
}

/// Where audit records are copied to.
pub struct AuditSink {
    queue: SyncSender<Batch>,
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

/// The writer thread: writes each batch, answers whoever waits, logs failures nobody waits
/// for. Ends when the sink is dropped.
fn write_batches(mut file: File, name: &str, batches: &Receiver<Batch>) {
    let mut broken = false;
    while let Ok(batch) = batches.recv() {
        let written = if broken {
            file.write_all(b"\n")
                .and_then(|()| file.write_all(&batch.text))
        } else {
            file.write_all(&batch.text)
        };
        broken = written.is_err();
        match (batch.done, written) {
            (Some(done), written) => {
                let _ = done.send(written);
            }
            (None, Err(error)) => tracing::warn!(
                sink = name,
                %error,
                "audit sink write failed; the records are in the database only"
            ),
            (None, Ok(())) => {}
        }
    }
}

impl AuditSink {
    fn start(file: File, name: String, required: bool) -> std::io::Result<Self> {
        let (queue, batches) = sync_channel(QUEUE);
        let thread_name = name.clone();
        std::thread::Builder::new()
            .name("audit-sink".to_owned())
            .spawn(move || write_batches(file, &thread_name, &batches))?;
        Ok(Self {
            queue,
            name,
            required,
        })
    }

    /// A sink to standard output (its own descriptor, unbuffered: a failed write leaves
    /// nothing behind to be written later).
    ///
    /// # Errors
    /// If standard output cannot be duplicated or the writer thread cannot start.
    pub fn stdout(required: bool) -> std::io::Result<Self> {
        let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
        Self::start(File::from(fd), "standard output".to_owned(), required)
    }

    /// A sink appending to `path` (created with mode 0600 if missing).
    ///
    /// # Errors
    /// If the file cannot be opened for appending or the writer thread cannot start.
    pub fn file(path: &Path, required: bool) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Self::start(file, path.display().to_string(), required)
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

    /// Copies committed-to-be `entries` here, as the store's commit does before its COMMIT:
    /// an error only if this sink is required (then the commit must not happen); an optional
    /// sink's failure is logged.
    pub(crate) async fn copy(&self, entries: &[Entry]) -> Result<(), vault_core::StoreError> {
        let Err(error) = self.write(entries).await else {
            return Ok(());
        };
        if self.required {
            return Err(vault_core::StoreError::unavailable(format!(
                "the required audit sink ({}) failed: {error}",
                self.name
            )));
        }
        tracing::warn!(
            sink = %self.name,
            %error,
            "audit sink write failed; the records are in the database only"
        );
        Ok(())
    }

    /// Hands `entries` to the writer thread as JSON lines. A required sink answers once they
    /// are written (or failed, or [`TIMEOUT`] passed); an optional one once they are queued.
    pub(crate) async fn write(&self, entries: &[Entry]) -> std::io::Result<()> {
        let mut text = Vec::with_capacity(entries.len() * 512);
        for entry in entries {
            serde_json::to_writer(&mut text, &LineRef::Record(entry))?;
            text.push(b'\n');
        }
        let (done, outcome) = if self.required {
            let (done, outcome) = oneshot::channel();
            (Some(done), Some(outcome))
        } else {
            (None, None)
        };
        self.queue
            .try_send(Batch { text, done })
            .map_err(|error| match error {
                TrySendError::Full(_) => std::io::Error::other("its queue is full (it is stalled)"),
                TrySendError::Disconnected(_) => std::io::Error::other("its writer has stopped"),
            })?;
        let Some(outcome) = outcome else {
            return Ok(());
        };
        match tokio::time::timeout(TIMEOUT, outcome).await {
            Ok(Ok(written)) => written,
            Ok(Err(_)) => Err(std::io::Error::other("its writer has stopped")),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "it took no record for 5 s (it is stalled)",
            )),
        }
    }
}

/// `vault_audit::Line::Record` without copying the entry (the unit test below checks that
/// `Line` parses what it writes).
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LineRef<'a> {
    Record(&'a Entry),
}

#[cfg(test)]
mod tests {
    use vault_audit::Line;

    use super::*;

    #[tokio::test]
    async fn lines_parse_as_export_records() {
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
        sink.write(&[entry.clone(), entry.clone()]).await.unwrap();
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
