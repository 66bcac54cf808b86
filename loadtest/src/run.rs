//! A run: connect, set up, drive the load in a closed or open loop, merge what each task
//! counted, optionally check every acknowledged token.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use vault_proto::v1::TokenizeRequest;

use crate::Error;
use crate::check::check_with;
use crate::client::{self, Clients};
use crate::options::{Length, Load, Options, Scenario};
use crate::pan::random_pan;
use crate::progress::{Live, Progress};
use crate::record::{Record, RecordSender, RecordWriter};
use crate::report::Report;
use crate::scenario::{Answer, Call, Planner, Workload, execute, judge};
use crate::stats::Stats;

/// Most tasks that schedule open-loop requests (each takes every n-th request).
const MAX_OPEN_LOOP_DRIVERS: usize = 8;
/// Calls in flight during the setup and the check of an open-loop run.
const OPEN_LOOP_SIDE_CONCURRENCY: usize = 64;

/// Runs the load `options` describe and returns what it measured.
///
/// Requests that fail (`UNAVAILABLE`, a wrong answer, ...) are counted in the [`Report`], not
/// returned as errors. Must be called inside a multi-threaded Tokio runtime.
///
/// # Errors
/// [`Error::Config`] for unusable options or files (before any request), [`Error::Setup`] if
/// the `detokenize` scenario cannot tokenize its pool, [`Error::Output`] if the record file
/// cannot be written.
pub async fn run(options: Options) -> Result<Report, Error> {
    options.validate()?;
    let target = &options.target;
    let tokenize_identity = target.tokenize.as_ref().ok_or_else(|| {
        Error::Config("every scenario tokenizes: a tokenize identity is needed".to_owned())
    })?;
    let tokenize = Clients::connect(target, tokenize_identity, options.connections)?;
    let detokenize = if options.scenario.detokenizes() || options.check {
        let identity = target.detokenize.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "{} needs a detokenize identity",
                if options.check {
                    "--check"
                } else {
                    options.scenario.name()
                }
            ))
        })?;
        Some(Clients::connect(target, identity, options.connections)?)
    } else {
        None
    };
    let (record, writer) = match &options.record {
        Some(path) => {
            let (sender, writer) = RecordWriter::start(path)?;
            (Some(sender), Some(writer))
        }
        None => (None, None),
    };
    // The record sender is gone once `load` returns, however it returns: the writer then
    // flushes everything and stops.
    let measured = load(&options, tokenize, detokenize.clone(), record).await;
    let recorded = match writer {
        Some(writer) => Some(writer.finish().await?),
        None => None,
    };
    let measured = measured?;
    let check = match (options.check, &detokenize) {
        (true, Some(clients)) => Some(
            check_with(
                clients,
                measured.acks,
                side_concurrency(options.load),
                options.timeout,
                options.progress,
            )
            .await?,
        ),
        _ => None,
    };
    Ok(Report {
        date: measured.date,
        elapsed: measured.elapsed,
        warmup_answers: measured.warmup_answers,
        setup_tokens: measured.setup_tokens,
        recorded,
        check,
        stats: measured.stats,
        options,
    })
}

/// Calls in flight during the setup and the check.
fn side_concurrency(load: Load) -> usize {
    match load {
        Load::Closed { concurrency } => concurrency,
        Load::Open { .. } => OPEN_LOOP_SIDE_CONCURRENCY,
    }
}

/// What the load itself measured.
struct Measured {
    date: OffsetDateTime,
    elapsed: Duration,
    warmup_answers: u64,
    setup_tokens: usize,
    stats: Stats,
    /// With `--check`: every token acknowledged (setup included).
    acks: Vec<Record>,
}

/// Sets up the scenario and drives the load.
async fn load(
    options: &Options,
    tokenize: Clients,
    detokenize: Option<Clients>,
    record: Option<RecordSender>,
) -> Result<Measured, Error> {
    let merchants = options.merchant_ids();
    let mut rng: SmallRng = rand::make_rng();
    let dedup = match options.scenario {
        Scenario::TokenizeDedup { pool } => Workload::dedup_pool(pool, merchants.len(), &mut rng),
        _ => Vec::new(),
    };
    let mut work = Workload {
        scenario: options.scenario,
        merchants,
        token_format: options.token_format as i32,
        timeout: options.timeout,
        tokenize,
        detokenize,
        dedup,
        tokens: Vec::new(),
    };
    if let (Scenario::Detokenize { .. }, Some(file)) = (options.scenario, &options.pool_file) {
        work.tokens = crate::record::read_file(file)?;
        if work.tokens.is_empty() {
            return Err(Error::Setup(format!("{} holds no records", file.display())));
        }
    } else if let Scenario::Detokenize { pool } = options.scenario {
        let messages = (0..pool)
            .map(|i| work.tokenize_request(i % work.merchants.len().max(1), &random_pan(&mut rng)))
            .collect();
        work.tokens = tokenize_all(
            &work,
            messages,
            side_concurrency(options.load),
            options.progress,
            record.as_ref(),
        )
        .await?;
    }
    let work = Arc::new(work);

    let live = Arc::new(Live::default());
    let date = OffsetDateTime::now_utc();
    let start = Instant::now();
    let clock = Arc::new(Clock {
        start,
        measure_from: start + options.warmup,
        length: options.length,
        started_after_warmup: AtomicU64::new(0),
        live: Arc::clone(&live),
    });
    let shared = Shared {
        work: Arc::clone(&work),
        clock: Arc::clone(&clock),
        record,
        keep_all: options.check,
    };
    let bar = Progress::start(options.progress, "run", live);
    let results = match options.load {
        Load::Closed { concurrency } => closed_loop(&shared, concurrency).await,
        Load::Open {
            rate,
            max_in_flight,
        } => {
            let schedule = Schedule::new(rate, options.warmup, options.length);
            open_loop(&shared, schedule, max_in_flight).await
        }
    };
    let end = Instant::now();
    bar.finish();
    let results = results?;

    let mut stats = Stats::new()?;
    let mut acks = if options.check {
        work.tokens.clone()
    } else {
        Vec::new()
    };
    for result in results {
        stats.merge(&result.stats)?;
        acks.extend(result.acks);
    }
    Ok(Measured {
        date,
        elapsed: end.saturating_duration_since(clock.measure_from),
        warmup_answers: clock.live_answered().saturating_sub(stats.count),
        setup_tokens: work.tokens.len(),
        stats,
        acks,
    })
}

/// What the load tasks share.
struct Shared {
    work: Arc<Workload>,
    clock: Arc<Clock>,
    record: Option<RecordSender>,
    keep_all: bool,
}

/// The run's time line and request budget.
struct Clock {
    start: Instant,
    /// The end of the warm-up: requests started (or due) from here on are counted.
    measure_from: Instant,
    length: Length,
    /// Closed loop with `Length::Requests`: requests started after the warm-up.
    started_after_warmup: AtomicU64,
    live: Arc<Live>,
}

impl Clock {
    /// Closed loop: whether a caller may start another request now.
    fn may_start(&self) -> bool {
        let now = Instant::now();
        match self.length {
            Length::Duration(duration) => now < self.measure_from + duration,
            Length::Requests(n) => {
                now < self.measure_from
                    || self.started_after_warmup.fetch_add(1, Ordering::Relaxed) < n
            }
        }
    }

    fn live_answered(&self) -> u64 {
        self.live.answered_total()
    }
}

/// When the open loop sends each request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Schedule {
    rate: f64,
    end: ScheduleEnd,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ScheduleEnd {
    /// Requests scheduled before this offset from the start.
    Before(Duration),
    /// This many requests.
    Count(u64),
}

impl Schedule {
    /// `rate` requests per second through the warm-up and then for `length`.
    pub(crate) fn new(rate: f64, warmup: Duration, length: Length) -> Self {
        let end = match length {
            Length::Duration(duration) => ScheduleEnd::Before(warmup.saturating_add(duration)),
            // Float to integer casts saturate; a warm-up of that many requests is not real.
            Length::Requests(n) => {
                ScheduleEnd::Count(((warmup.as_secs_f64() * rate).ceil() as u64).saturating_add(n))
            }
        };
        Self { rate, end }
    }

    /// The offset from the start at which request `i` (from 0) is due: `i / rate`; `None`
    /// once the schedule is over.
    pub(crate) fn at(&self, i: u64) -> Option<Duration> {
        let offset = scheduled_offset(i, self.rate);
        match self.end {
            ScheduleEnd::Before(end) => (offset < end).then_some(offset),
            ScheduleEnd::Count(n) => (i < n).then_some(offset),
        }
    }
}

/// `i / rate` seconds.
pub(crate) fn scheduled_offset(i: u64, rate: f64) -> Duration {
    Duration::try_from_secs_f64(i as f64 / rate).unwrap_or(Duration::MAX)
}

/// What one load task hands back.
struct TaskResult {
    stats: Stats,
    acks: Vec<Record>,
}

/// One load task's state: its planner and counts.
struct Task {
    planner: Planner,
    stats: Stats,
    record: Option<RecordSender>,
    clock: Arc<Clock>,
}

impl Task {
    fn new(shared: &Shared, id: usize) -> Result<Self, Error> {
        Ok(Self {
            planner: Planner::new(id, shared.keep_all),
            stats: Stats::new()?,
            record: shared.record.clone(),
            clock: Arc::clone(&shared.clock),
        })
    }

    /// Judges and counts an answer. `from` is when the request started (closed loop) or was
    /// due (open loop).
    fn finish(
        &mut self,
        work: &Workload,
        call: Call,
        answer: Answer,
        from: Instant,
        done: Instant,
    ) {
        let judged = judge(work, call, answer);
        for ack in judged.acks {
            if let Some(record) = &self.record {
                record.send(&ack);
            }
            if judged.new_ack {
                self.planner.keep(work, ack);
            }
        }
        self.clock.live.answered(judged.outcome.is_error());
        // Counted when started (open loop: due) after the warm-up: nothing answered in the
        // warm-up counts, and `Length::Requests(n)` counts exactly n.
        if from >= self.clock.measure_from {
            self.stats
                .record(&judged.outcome, done.saturating_duration_since(from));
        }
    }

    fn into_result(self) -> TaskResult {
        TaskResult {
            stats: self.stats,
            acks: self.planner.into_acks(),
        }
    }
}

/// `concurrency` callers, each sending its next request when the previous one answered.
async fn closed_loop(shared: &Shared, concurrency: usize) -> Result<Vec<TaskResult>, Error> {
    let mut callers = JoinSet::new();
    for id in 0..concurrency {
        let mut task = Task::new(shared, id)?;
        let work = Arc::clone(&shared.work);
        callers.spawn(async move {
            while task.clock.may_start() {
                let call = task.planner.plan(&work);
                let connection = task.planner.next_connection();
                let started = Instant::now();
                let answer = execute(&work, &call, connection).await;
                task.finish(&work, call, answer, started, Instant::now());
            }
            task.into_result()
        });
    }
    join_all(callers).await
}

/// Requests sent on `schedule` by a few driver tasks, each taking every n-th request, with at
/// most `max_in_flight` in flight. Each request's latency runs from when it was due.
async fn open_loop(
    shared: &Shared,
    schedule: Schedule,
    max_in_flight: usize,
) -> Result<Vec<TaskResult>, Error> {
    let drivers = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .clamp(1, MAX_OPEN_LOOP_DRIVERS);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    for id in 0..drivers {
        let task = Task::new(shared, id)?;
        let work = Arc::clone(&shared.work);
        let slots = Arc::clone(&slots);
        let first = id as u64;
        tasks.spawn(drive(task, work, schedule, first, drivers as u64, slots));
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined??);
    }
    Ok(results)
}

/// What an open-loop request hands back: its call, the answer, when it was due, when it ended.
type Finished = (Call, Answer, Instant, Instant);

/// One open-loop driver: requests `first`, `first + step`, ... of `schedule`.
async fn drive(
    mut task: Task,
    work: Arc<Workload>,
    schedule: Schedule,
    first: u64,
    step: u64,
    slots: Arc<Semaphore>,
) -> Result<TaskResult, Error> {
    let mut in_flight: JoinSet<Finished> = JoinSet::new();
    let mut i = first;
    while let Some(offset) = schedule.at(i) {
        let due = task.clock.start + offset;
        // Wait for the due time, taking in answers meanwhile.
        let sleep = tokio::time::sleep_until(due);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                Some(joined) = in_flight.join_next() => {
                    let (call, answer, due, done) = joined?;
                    task.finish(&work, call, answer, due, done);
                }
                () = &mut sleep => break,
            }
        }
        // Wait for a free slot; the request is late by as long, and its latency says so.
        let acquire = Arc::clone(&slots).acquire_owned();
        tokio::pin!(acquire);
        let permit = loop {
            tokio::select! {
                biased;
                permit = &mut acquire => {
                    break permit.map_err(|_| Error::Internal("in-flight slots closed".to_owned()))?;
                }
                Some(joined) = in_flight.join_next() => {
                    let (call, answer, due, done) = joined?;
                    task.finish(&work, call, answer, due, done);
                }
            }
        };
        let call = task.planner.plan(&work);
        let connection = task.planner.next_connection();
        let request_work = Arc::clone(&work);
        in_flight.spawn(async move {
            let answer = execute(&request_work, &call, connection).await;
            let done = Instant::now();
            drop(permit);
            (call, answer, due, done)
        });
        i = i.saturating_add(step);
    }
    while let Some(joined) = in_flight.join_next().await {
        let (call, answer, due, done) = joined?;
        task.finish(&work, call, answer, due, done);
    }
    Ok(task.into_result())
}

async fn join_all(mut tasks: JoinSet<TaskResult>) -> Result<Vec<TaskResult>, Error> {
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        results.push(joined?);
    }
    Ok(results)
}

/// The untimed setup of the `detokenize` scenario: sends every Tokenize in `messages`,
/// `concurrency` at a time, recording each acknowledged token; the tokens.
///
/// # Errors
/// [`Error::Setup`] if any Tokenize fails.
async fn tokenize_all(
    work: &Workload,
    messages: Vec<TokenizeRequest>,
    concurrency: usize,
    progress: bool,
    record: Option<&RecordSender>,
) -> Result<Vec<Record>, Error> {
    let total = messages.len();
    let messages = Arc::new(messages);
    let next = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(Live::default());
    let bar = Progress::start(progress, "setup", Arc::clone(&live));
    let mut workers = JoinSet::new();
    for worker in 0..concurrency.clamp(1, total.max(1)) {
        let (messages, next, live) = (Arc::clone(&messages), Arc::clone(&next), Arc::clone(&live));
        let (clients, record, timeout) = (work.tokenize.clone(), record.cloned(), work.timeout);
        workers.spawn(async move {
            let mut tokens = Vec::new();
            let mut failures = Vec::new();
            let mut connection = worker;
            while let Some(message) = messages.get(next.fetch_add(1, Ordering::Relaxed)) {
                let answer =
                    client::tokenize(clients.pick(connection), message.clone(), timeout).await;
                connection = connection.wrapping_add(1);
                live.answered(answer.is_err());
                match answer {
                    Ok(token) => {
                        let ack = Record {
                            merchant: message.merchant_id.clone(),
                            token,
                            pan: message.pan.clone(),
                        };
                        if let Some(record) = &record {
                            record.send(&ack);
                        }
                        tokens.push(ack);
                    }
                    Err(status) => failures.push(vault_client::status_text(&status)),
                }
            }
            (tokens, failures)
        });
    }
    let mut tokens = Vec::with_capacity(total);
    let mut failures = Vec::new();
    let mut joined = Ok(());
    while let Some(worker) = workers.join_next().await {
        match worker {
            Ok((done, failed)) => {
                tokens.extend(done);
                failures.extend(failed);
            }
            Err(err) => joined = Err(Error::from(err)),
        }
    }
    bar.finish();
    joined?;
    match failures.first() {
        None => Ok(tokens),
        Some(first) => Err(Error::Setup(format!(
            "{} of {total} Tokenize calls for the detokenize pool failed, the first: {first}",
            failures.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ith_request_is_due_at_i_over_rate() {
        assert_eq!(scheduled_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 1000.0), Duration::from_millis(1));
        assert_eq!(scheduled_offset(2500, 1000.0), Duration::from_millis(2500));
        assert_eq!(scheduled_offset(3, 4.0), Duration::from_millis(750));
        assert_eq!(scheduled_offset(1, 3.0).as_nanos(), 333_333_333);
        assert_eq!(scheduled_offset(u64::MAX, 1e-300), Duration::MAX);
    }

    #[test]
    fn a_timed_schedule_covers_warmup_and_duration() {
        let schedule = Schedule::new(
            100.0,
            Duration::from_secs(1),
            Length::Duration(Duration::from_secs(2)),
        );
        assert_eq!(schedule.at(0), Some(Duration::ZERO));
        assert_eq!(schedule.at(150), Some(Duration::from_millis(1500)));
        assert_eq!(schedule.at(299), Some(Duration::from_millis(2990)));
        assert_eq!(schedule.at(300), None);
    }

    #[test]
    fn a_counted_schedule_adds_the_warmup_requests() {
        let schedule = Schedule::new(10.0, Duration::from_millis(250), Length::Requests(5));
        // ceil(0.25 s * 10/s) = 3 warm-up requests, then 5.
        assert_eq!(schedule.at(7), Some(Duration::from_millis(700)));
        assert_eq!(schedule.at(8), None);
        let schedule = Schedule::new(10.0, Duration::ZERO, Length::Requests(5));
        assert_eq!(schedule.at(4), Some(Duration::from_millis(400)));
        assert_eq!(schedule.at(5), None);
    }
}
