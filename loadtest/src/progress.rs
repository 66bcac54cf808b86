//! The progress line on standard error: elapsed time, requests answered, the current rate and
//! errors. indicatif hides it when standard error is not a terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the line is redrawn (and the current rate measured).
const TICK: Duration = Duration::from_millis(250);

/// Counters every task bumps as answers arrive (warm-up included). Relaxed atomics: no lock.
#[derive(Debug, Default)]
pub(crate) struct Live {
    answered: AtomicU64,
    errors: AtomicU64,
}

impl Live {
    /// Counts one answer.
    pub(crate) fn answered(&self, error: bool) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers counted so far.
    pub(crate) fn answered_total(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

/// A running progress line; [`Progress::finish`] clears it.
pub(crate) struct Progress {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts a line labelled `label` showing `live`, if `show` and standard error is a
    /// terminal.
    pub(crate) fn start(show: bool, label: &'static str, live: Arc<Live>) -> Self {
        let bar = if show {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if bar.is_hidden() {
            return Self { bar, ticker: None };
        }
        let style = ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(label);
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut last = (Instant::now(), 0_u64);
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                let now = Instant::now();
                let answered = live.answered.load(Ordering::Relaxed);
                let errors = live.errors.load(Ordering::Relaxed);
                let seconds = now.duration_since(last.0).as_secs_f64();
                let rate = if seconds > 0.0 {
                    answered.saturating_sub(last.1) as f64 / seconds
                } else {
                    0.0
                };
                last = (now, answered);
                shown.set_message(format!("{answered} answered  {rate:.0}/s  {errors} errors"));
                shown.tick();
            }
        });
        Self {
            bar,
            ticker: Some(ticker),
        }
    }

    /// Stops and clears the line.
    pub(crate) fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}
