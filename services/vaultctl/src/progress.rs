//! Progress of the streamed jobs (re-encryption, rewrap): reading the stream, and showing it on
//! standard error as an `indicatif` bar on a terminal, or as a plain line per 10% otherwise.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use vault_proto::v1::Progress;

use crate::Error;

/// The job's size as of one message: items moved by this run plus items still to move.
#[must_use]
pub fn total(progress: &Progress) -> u64 {
    progress.done.saturating_add(progress.remaining)
}

/// Whole percent done, 0 to 100. A job with nothing to do is 100% done.
#[must_use]
pub fn percent(done: u64, remaining: u64) -> u64 {
    let total = u128::from(done) + u128::from(remaining);
    if total == 0 {
        return 100;
    }
    let percent = u128::from(done) * 100 / total;
    u64::try_from(percent).unwrap_or(100)
}

/// One plain progress line, e.g. `re-encrypting merchant m-1: 40% (400 of 1000)`.
#[must_use]
pub fn progress_line(label: &str, progress: &Progress) -> String {
    format!(
        "{label}: {}% ({} of {})",
        percent(progress.done, progress.remaining),
        progress.done,
        total(progress)
    )
}

/// The plain line for the last message, e.g. `re-encrypting merchant m-1: finished (1000 of
/// 1000)`.
#[must_use]
pub fn finished_line(label: &str, progress: &Progress) -> String {
    let skipped = if progress.failed > 0 {
        format!(
            "; {} skipped: they failed their integrity check and were left as they are",
            progress.failed
        )
    } else {
        String::new()
    };
    format!(
        "{label}: finished ({} of {}){skipped}",
        progress.done,
        total(progress)
    )
}

/// Decides which messages get a plain line when no bar can be drawn: the first, then the first
/// one in each new 10% step, and the finished one.
#[derive(Debug, Default)]
pub struct PlainSteps {
    last_step: Option<u64>,
}

impl PlainSteps {
    /// A fresh job: the next message prints.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The line to print for `progress`, if any.
    pub fn line(&mut self, label: &str, progress: &Progress) -> Option<String> {
        if progress.finished {
            return Some(finished_line(label, progress));
        }
        // 0..=9; 100% before `finished` stays in step 9 so it does not print twice.
        let step = (percent(progress.done, progress.remaining) / 10).min(9);
        if self.last_step.is_some_and(|last| step <= last) {
            return None;
        }
        self.last_step = Some(step);
        Some(progress_line(label, progress))
    }
}

/// Shows a job's progress on standard error.
#[derive(Debug)]
pub struct Reporter {
    label: String,
    bar: ProgressBar,
    /// `Some` when the bar is hidden (standard error is not a terminal): print plain lines.
    plain: Option<PlainSteps>,
}

impl Reporter {
    /// A bar on standard error, or plain lines there when it is not a terminal.
    #[must_use]
    pub fn stderr(label: impl Into<String>) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let plain = bar.is_hidden().then(PlainSteps::new);
        if plain.is_none() {
            let style = ProgressStyle::with_template(
                "{msg} [{bar:40.cyan/blue}] {pos}/{len} ({percent}%) {elapsed_precise} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        let label = label.into();
        bar.set_message(label.clone());
        Self { label, bar, plain }
    }

    /// Shows one message.
    pub fn update(&mut self, progress: &Progress) {
        match &mut self.plain {
            Some(steps) => {
                if let Some(line) = steps.line(&self.label, progress) {
                    eprintln!("{line}");
                }
            }
            None => {
                self.bar.set_length(total(progress));
                self.bar.set_position(progress.done);
            }
        }
    }

    /// Clears the bar once the job finished (the summary follows on standard output).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Leaves the bar where it stopped, for a job that failed.
    pub fn abandon(&self) {
        self.bar.abandon();
    }
}

/// Reads a job's progress stream to its `finished = true` message, calling `on_progress` for
/// each message, and returns that last message.
///
/// # Errors
/// [`Error::Rpc`] if the stream fails before its first message, [`Error::JobFailed`] if it
/// fails after, [`Error::Interrupted`] if it ends without a finished message.
pub async fn follow<S>(
    mut stream: S,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Progress, Error>
where
    S: Stream<Item = Result<Progress, Status>> + Unpin,
{
    let mut done = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(progress) => {
                on_progress(&progress);
                if progress.finished {
                    return Ok(progress);
                }
                done = Some(progress.done);
            }
            Err(status) => {
                return Err(match done {
                    None => Error::Rpc(status),
                    Some(done) => Error::JobFailed { status, done },
                });
            }
        }
    }
    Err(Error::Interrupted {
        done: done.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(done: u64, remaining: u64, finished: bool) -> Progress {
        Progress {
            done,
            remaining,
            target: "3".into(),
            finished,
            failed: 0,
        }
    }

    #[test]
    fn percent_is_whole_and_bounded() {
        assert_eq!(percent(0, 10), 0);
        assert_eq!(percent(1, 2), 33);
        assert_eq!(percent(999, 1), 99);
        assert_eq!(percent(10, 0), 100);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 50);
        assert_eq!(total(&msg(u64::MAX, 1, false)), u64::MAX);
    }

    #[test]
    fn lines_show_percent_done_and_total() {
        assert_eq!(
            progress_line("rewrapping keys", &msg(400, 600, false)),
            "rewrapping keys: 40% (400 of 1000)"
        );
        assert_eq!(
            finished_line("rewrapping keys", &msg(1000, 0, true)),
            "rewrapping keys: finished (1000 of 1000)"
        );
    }

    #[test]
    fn plain_lines_come_once_per_ten_percent_and_at_the_end() {
        let mut steps = PlainSteps::new();
        let mut printed = Vec::new();
        // 1000 items, one message per 25 items.
        for done in (0..=1000).step_by(25) {
            let remaining = 1000 - done;
            if let Some(line) = steps.line("job", &msg(done, remaining, false)) {
                printed.push(line);
            }
        }
        if let Some(line) = steps.line("job", &msg(1000, 0, true)) {
            printed.push(line);
        }
        assert_eq!(
            printed,
            [
                "job: 0% (0 of 1000)",
                "job: 10% (100 of 1000)",
                "job: 20% (200 of 1000)",
                "job: 30% (300 of 1000)",
                "job: 40% (400 of 1000)",
                "job: 50% (500 of 1000)",
                "job: 60% (600 of 1000)",
                "job: 70% (700 of 1000)",
                "job: 80% (800 of 1000)",
                "job: 90% (900 of 1000)",
                "job: finished (1000 of 1000)",
            ]
        );
    }

    #[test]
    fn a_job_with_nothing_to_do_prints_only_its_end() {
        let mut steps = PlainSteps::new();
        assert_eq!(
            steps.line("job", &msg(0, 0, true)).as_deref(),
            Some("job: finished (0 of 0)")
        );
    }

    #[test]
    fn a_jump_prints_one_line_not_one_per_step() {
        let mut steps = PlainSteps::new();
        assert!(steps.line("job", &msg(5, 95, false)).is_some());
        assert_eq!(
            steps.line("job", &msg(75, 25, false)).as_deref(),
            Some("job: 75% (75 of 100)")
        );
        assert!(steps.line("job", &msg(79, 21, false)).is_none());
        assert!(steps.line("job", &msg(80, 20, false)).is_some());
    }

    #[tokio::test]
    async fn follow_returns_the_finished_message() {
        let stream = tokio_stream::iter(vec![
            Ok(msg(0, 2, false)),
            Ok(msg(1, 1, false)),
            Ok(msg(2, 0, true)),
        ]);
        let mut seen = Vec::new();
        let last = follow(stream, |p| seen.push(p.done)).await.unwrap();
        assert_eq!(last, msg(2, 0, true));
        assert_eq!(seen, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_stream_that_ends_unfinished_is_interrupted() {
        let stream = tokio_stream::iter(vec![Ok(msg(0, 2, false)), Ok(msg(1, 1, false))]);
        let err = follow(stream, |_| {}).await.unwrap_err();
        assert!(matches!(err, Error::Interrupted { done: 1 }), "{err:?}");
        let err = follow(tokio_stream::iter(Vec::new()), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Interrupted { done: 0 }), "{err:?}");
    }

    #[tokio::test]
    async fn a_stream_error_before_or_after_the_start() {
        let err = follow(
            tokio_stream::iter(vec![Err(Status::permission_denied("no"))]),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Rpc(_)), "{err:?}");
        let err = follow(
            tokio_stream::iter(vec![
                Ok(msg(5, 5, false)),
                Err(Status::unavailable("KEK down")),
            ]),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::JobFailed { done: 5, .. }), "{err:?}");
    }
}
