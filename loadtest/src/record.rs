//! The record file: one line `merchant<TAB>token<TAB>pan` per tokenize the vault acknowledged,
//! appended and flushed to the OS as the answers arrive, so that a crash test knows which tokens
//! the vault had confirmed when it died.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Error;

/// The longest the writer keeps acknowledged lines in its buffer before flushing them.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Flush earlier when this many bytes are buffered.
const FLUSH_BYTES: usize = 64 * 1024;

/// A token the vault acknowledged, and the PAN behind it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// The merchant the token belongs to.
    pub merchant: String,
    /// The token the vault returned.
    pub token: String,
    /// The PAN that was tokenized (synthetic, but still kept out of `Debug`).
    pub pan: String,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last4 = self
            .pan
            .get(self.pan.len().saturating_sub(4)..)
            .unwrap_or("");
        f.debug_struct("Record")
            .field("merchant", &self.merchant)
            .field("token", &self.token)
            .field("pan", &format_args!("…{last4}"))
            .finish()
    }
}

impl Record {
    /// The record's line, without the newline.
    #[must_use]
    pub fn to_line(&self) -> String {
        format!("{}\t{}\t{}", self.merchant, self.token, self.pan)
    }

    /// Parses one line (without its newline).
    ///
    /// # Errors
    /// A description of what is wrong, if the line is not three non-empty tab-separated
    /// fields.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut fields = line.split('\t');
        let (Some(merchant), Some(token), Some(pan), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err("expected three tab-separated fields: merchant, token, pan".to_owned());
        };
        if merchant.is_empty() || token.is_empty() || pan.is_empty() {
            return Err("a field is empty".to_owned());
        }
        if !pan.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the pan field is not all digits".to_owned());
        }
        Ok(Self {
            merchant: merchant.to_owned(),
            token: token.to_owned(),
            pan: pan.to_owned(),
        })
    }
}

/// Reads a record file. Empty lines are skipped; duplicate lines are kept.
///
/// # Errors
/// [`Error::Config`] if the file cannot be read or a line is malformed (naming the line).
pub fn read_file(path: &Path) -> Result<Vec<Record>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::Config(format!("cannot read {}: {err}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            Record::parse(line)
                .map_err(|why| Error::Config(format!("{} line {}: {why}", path.display(), i + 1)))
        })
        .collect()
}

/// Sends acknowledged records to the writer. Cheap to clone; the writer stops when every
/// sender is dropped.
#[derive(Clone)]
pub(crate) struct RecordSender(mpsc::UnboundedSender<String>);

impl RecordSender {
    /// Queues `record` for the file.
    pub(crate) fn send(&self, record: &Record) {
        // The writer only goes away after an I/O error, which `RecordWriter::finish` reports.
        let mut line = record.to_line();
        line.push('\n');
        let _ = self.0.send(line);
    }
}

/// The writer behind a [`RecordSender`]: one blocking task appending lines and flushing them.
pub(crate) struct RecordWriter {
    path: PathBuf,
    task: JoinHandle<std::io::Result<u64>>,
}

impl RecordWriter {
    /// Opens `path` for appending (creating it) and starts the writer.
    ///
    /// # Errors
    /// [`Error::Config`] if the file cannot be opened.
    pub(crate) fn start(path: &Path) -> Result<(RecordSender, Self), Error> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|err| Error::Config(format!("cannot open {}: {err}", path.display())))?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::task::spawn_blocking(move || write_lines(file, receiver));
        Ok((
            RecordSender(sender),
            Self {
                path: path.to_owned(),
                task,
            },
        ))
    }

    /// Waits for the writer to write and flush everything sent (every sender must be dropped
    /// first) and returns the number of lines written.
    ///
    /// # Errors
    /// [`Error::Output`] if writing failed.
    pub(crate) async fn finish(self) -> Result<u64, Error> {
        self.task
            .await?
            .map_err(|err| Error::Output(format!("cannot write {}: {err}", self.path.display())))
    }
}

/// Writes each line (newline included) as it arrives; flushes whenever the queue runs dry, and at least every
/// [`FLUSH_EVERY`] while lines keep coming.
fn write_lines(file: File, mut lines: mpsc::UnboundedReceiver<String>) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(2 * FLUSH_BYTES, file);
    let mut written = 0_u64;
    while let Some(first) = lines.blocking_recv() {
        let batch_start = Instant::now();
        let mut next = Some(first);
        while let Some(line) = next {
            out.write_all(line.as_bytes())?;
            written += 1;
            if out.buffer().len() >= FLUSH_BYTES || batch_start.elapsed() >= FLUSH_EVERY {
                break;
            }
            next = lines.try_recv().ok();
        }
        out.flush()?;
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            merchant: "loadtest-3".to_owned(),
            token: "tok_4bS9ezq0dzvP7XzNfEhW2k".to_owned(),
            pan: "4242424242424242".to_owned(),
        }
    }

    #[test]
    fn a_line_is_merchant_tab_token_tab_pan_and_parses_back() {
        let record = sample();
        let line = record.to_line();
        assert_eq!(
            line,
            "loadtest-3\ttok_4bS9ezq0dzvP7XzNfEhW2k\t4242424242424242"
        );
        assert_eq!(Record::parse(&line).unwrap(), record);
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            "",
            "a\tb",
            "a\tb\t4242\textra",
            "\ttok\t4242",
            "m\ttok\t42x2",
            "m tok 4242",
        ] {
            assert!(Record::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn debug_hides_the_pan() {
        let text = format!("{:?}", sample());
        assert!(!text.contains("4242424242424242"), "{text}");
        assert!(text.contains("…4242"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn written_records_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks.tsv");
        std::fs::write(&path, "loadtest-1\ttok_earlier\t4111111111111111\n").unwrap();
        let (sender, writer) = RecordWriter::start(&path).unwrap();
        let mut records = Vec::new();
        for i in 0..100 {
            let record = Record {
                token: format!("tok_{i}"),
                ..sample()
            };
            sender.send(&record);
            records.push(record);
        }
        // Flushed promptly, before the writer is stopped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while read_file(&path).unwrap().len() < 101 {
            assert!(Instant::now() < deadline, "lines not flushed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(sender);
        assert_eq!(writer.finish().await.unwrap(), 100);
        let read = read_file(&path).unwrap();
        assert_eq!(read.len(), 101);
        assert_eq!(read.first().unwrap().token, "tok_earlier");
        assert_eq!(read.get(1..).unwrap(), records.as_slice());
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks.tsv");
        std::fs::write(&path, "m\tt\t4242\n\nbroken\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("line 3: expected three tab-separated fields: merchant, token, pan"),
            "{err}"
        );
    }
}
