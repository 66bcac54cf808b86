//! Group commit: concurrent token inserts and audit appends share one transaction, so one
//! COMMIT (one fsync) serves many callers.
//!
//! Each store has one committer. SQLite's is a thread that owns its connection
//! ([`BlockingCommitter`], `sqlite/writer.rs`): a batch's statements run one after another on
//! it, with no hand-off to another thread and no await between them. PostgreSQL's is a task on
//! a thread and runtime of its own, with its own connection.
//! A caller hands it its write and waits. Whenever the committer is free it takes everything
//! queued (up to [`MAX_BATCH`] writes), writes it in one transaction, commits, and only then
//! answers each caller. There is no timer: a lone write commits at once, and writes that
//! arrive during a commit wait for the next one, so batches grow with the load by themselves. Durability is unchanged: a caller is answered only after
//! the COMMIT holding its write has returned, and both backends refuse to start unless a
//! COMMIT is durable (`sqlite/`, `postgres.rs`).
//!
//! Failures: when the database refuses a statement of a batch (before COMMIT), the batch is
//! rolled back and each write retried in a transaction of its own, so one bad write fails
//! alone. A lost connection, a failed COMMIT or a failed required audit sink fails every
//! caller of the batch with the same error (`UNAVAILABLE` at the edge). A caller that goes
//! away (a cancelled RPC) does not stop the batch it is in.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use vault_core::StoreError;
use vault_core::audit::AuditRecord;
use vault_core::ids::MerchantId;
use vault_core::ports::{InsertOutcome, Tallied, TallyRequest, TokenRecord, UseReservation};

/// Most writes in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Writes waiting for the committer; past this, callers wait to hand theirs over.
const QUEUE: usize = 4 * MAX_BATCH;

/// One caller's write.
pub(crate) enum Write {
    /// A new token and its tokenize record: the record commits only if the token does.
    Token {
        record: Box<TokenRecord>,
        audit: AuditRecord,
    },
    /// An audit record on its own (detokenize, metadata, refusals).
    Audit(AuditRecord),
    /// Abuse tallies (the enumeration guard, the new-merchant cap): counted in the batch's
    /// transaction, so a tally costs a share of a commit rather than one of its own.
    Tally(Vec<TallyRequest>),
    /// A reservation of DEK uses (`KeyStore::reserve_dek_uses`), on SQLite: made on the
    /// writer's connection, because a commit on any other connection empties the writer's page
    /// cache. PostgreSQL's committer refuses it (its reservations stay a compare-and-set).
    Reserve {
        merchant: MerchantId,
        version: u32,
        want: u64,
        limit: u64,
    },
}

impl Write {
    /// The token records of a batch's token writes, in order.
    pub(crate) fn tokens(writes: &[Self]) -> Vec<&TokenRecord> {
        writes
            .iter()
            .filter_map(|write| match write {
                Self::Token { record, .. } => Some(&**record),
                Self::Audit(_) | Self::Tally(_) | Self::Reserve { .. } => None,
            })
            .collect()
    }

    /// The tally requests of a batch's tally writes, in order.
    pub(crate) fn tallies(writes: &[Self]) -> Vec<&TallyRequest> {
        writes
            .iter()
            .flat_map(|write| match write {
                Self::Tally(requests) => requests.as_slice(),
                Self::Token { .. } | Self::Audit(_) | Self::Reserve { .. } => &[],
            })
            .collect()
    }

    /// A batch's answers, from its token writes' outcomes, its tally requests' answers and its
    /// reservations (each in order), and the audit records it appends: each audit write's, and
    /// each inserted token's.
    pub(crate) fn answers(
        writes: &[Self],
        outcomes: Vec<InsertOutcome>,
        tallies: Vec<Vec<Tallied>>,
        reserved: Vec<UseReservation>,
    ) -> (Vec<Written>, Vec<&AuditRecord>) {
        let mut outcomes = outcomes.into_iter();
        let mut tallies = tallies.into_iter();
        let mut reserved = reserved.into_iter();
        let mut written = Vec::with_capacity(writes.len());
        let mut audits = Vec::with_capacity(writes.len());
        for write in writes {
            match write {
                Self::Token { audit, .. } => {
                    let outcome = outcomes.next().unwrap_or(InsertOutcome::FingerprintTaken);
                    if outcome == InsertOutcome::Inserted {
                        audits.push(audit);
                    }
                    written.push(Written::Token(outcome));
                }
                Self::Audit(audit) => {
                    audits.push(audit);
                    written.push(Written::Audit);
                }
                Self::Tally(requests) => {
                    written.push(Written::Tally(
                        tallies.by_ref().take(requests.len()).collect(),
                    ));
                }
                Self::Reserve { .. } => {
                    // Nothing granted is the safe answer to a missing one.
                    let none = UseReservation {
                        granted: 0,
                        total: 0,
                    };
                    written.push(Written::Reserved(reserved.next().unwrap_or(none)));
                }
            }
        }
        (written, audits)
    }
}

/// What a committed write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    Token(InsertOutcome),
    Audit,
    Tally(Vec<Vec<Tallied>>),
    Reserved(UseReservation),
}

/// Why a batch did not commit.
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: StoreError,
    /// The database refused one of the batch's statements: each write may succeed alone.
    pub retry_alone: bool,
}

impl Failed {
    /// A failure of the batch as a whole (connection, COMMIT, audit sink).
    pub(crate) fn whole(error: StoreError) -> Self {
        Self {
            error,
            retry_alone: false,
        }
    }

    /// A failed statement: retried write by write if the database refused it (rather than
    /// the connection failing).
    pub(crate) fn statement(error: sqlx::Error) -> Self {
        Self {
            retry_alone: error.as_database_error().is_some(),
            error: crate::error::unavailable(error),
        }
    }

    /// A failed rusqlite statement (SQLite's writer), likewise.
    pub(crate) fn sqlite_statement(error: rusqlite::Error) -> Self {
        Self {
            retry_alone: matches!(error, rusqlite::Error::SqliteFailure(..)),
            error: crate::error::sqlite_unavailable(error),
        }
    }
}

/// Writes a batch in one transaction, on a thread of its own: one [`Written`] per write, in
/// order, or nothing at all.
pub(crate) trait BlockingCommitter: Send + 'static {
    fn commit_writes(&mut self, writes: &[Write]) -> Result<Vec<Written>, Failed>;

    /// Work for the gap between two commits (SQLite's WAL checkpoint).
    fn between_commits(&mut self) {}

    /// For a committer whose commits are not durable when `commit_writes` returns: what makes
    /// every commit so far durable (an fsync of the log). The callers of a commit are then
    /// answered only after a sync that started after it returned (see [`Durable`]). Asked once,
    /// at start.
    fn syncer(&mut self) -> Option<Syncer> {
        None
    }
}

/// Makes every commit made so far durable.
pub(crate) type Syncer = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// Writes a batch in one transaction: one [`Written`] per write, in order, or nothing at all.
#[async_trait]
pub(crate) trait Committer: Send + Sync + 'static {
    async fn commit_writes(&self, writes: &[Write]) -> Result<Vec<Written>, Failed>;
}

struct Pending {
    write: Write,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// A store's handle on its committer. A store without one (the committer's own copy, or one
/// whose committer thread could not start) commits each write by itself.
#[derive(Clone, Default)]
pub(crate) struct Group {
    queue: Option<mpsc::Sender<Pending>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("committer", &self.queue.is_some())
            .finish()
    }
}

impl Group {
    /// Starts `committer` on a thread of its own (SQLite's: it owns its connection and runs
    /// each batch's statements one after another, with no await between them). Between
    /// batches, once their callers are answered, the thread calls
    /// [`BlockingCommitter::between_commits`]. The thread ends when every handle is dropped.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub(crate) fn start_on_thread<C: BlockingCommitter>(mut committer: C) -> std::io::Result<Self> {
        let (queue, mut pending) = mpsc::channel::<Pending>(QUEUE);
        let durable = committer.syncer().map(Durable::start).transpose()?;
        std::thread::Builder::new()
            .name("vault-committer".to_owned())
            .spawn(move || {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                while let Some(first) = pending.blocking_recv() {
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        let Ok(next) = pending.try_recv() else { break };
                        batch.push(next);
                    }
                    let (writes, replies): (Vec<Write>, Vec<_>) =
                        batch.drain(..).map(|p| (p.write, p.reply)).unzip();
                    if let Some(error) = durable.as_ref().and_then(Durable::failed) {
                        for reply in replies {
                            let _ = reply.send(Err(Clone::clone(&error)));
                        }
                        continue;
                    }
                    let started = std::time::Instant::now();
                    let result = committer.commit_writes(&writes);
                    traced(writes.len(), started, &result);
                    let mut done = Vec::with_capacity(writes.len());
                    for (write, reply) in answer(&writes, result, replies, &mut done) {
                        match committer
                            .commit_writes(std::slice::from_ref(write))
                            .map_err(|failed| failed.error)
                            .and_then(only)
                        {
                            Ok(written) => done.push((reply, written)),
                            Err(error) => {
                                let _ = reply.send(Err(error));
                            }
                        }
                    }
                    match &durable {
                        Some(durable) => durable.answer_once_synced(done),
                        None => send_all(done),
                    }
                    committer.between_commits();
                }
            })?;
        Ok(Self { queue: Some(queue) })
    }

    /// Starts the committer `open` makes on a thread of its own, running a runtime of its own
    /// (PostgreSQL's). On the server's runtime, each of the committer's awaits (BEGIN, the
    /// inserts, COMMIT) waited behind every request task queued on its two workers. `open`
    /// runs on that runtime, so the connections it opens belong to it, not to the server's.
    /// The thread ends when every handle is dropped.
    ///
    /// # Errors
    /// If the runtime or the thread cannot be started.
    pub(crate) fn start_on_own_runtime<C: Committer>(
        open: impl FnOnce() -> C + Send + 'static,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (queue, pending) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("vault-committer".to_owned())
            .spawn(move || runtime.block_on(async move { run(open(), pending).await }))?;
        Ok(Self { queue: Some(queue) })
    }

    /// Commits `write` through the committer task (together with whatever else is waiting),
    /// or through `direct` when this handle has none. Returns once the write is durable.
    pub(crate) async fn write<C: Committer>(
        &self,
        direct: &C,
        write: Write,
    ) -> Result<Written, StoreError> {
        let Some(queue) = &self.queue else {
            return alone(direct, &write).await;
        };
        let (reply, answer) = oneshot::channel();
        let waited = async {
            queue
                .send(Pending { write, reply })
                .await
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        };
        waited
            .instrument(tracing::debug_span!(crate::spans::GROUP_COMMIT_WAIT))
            .await
    }
}

fn stopped() -> StoreError {
    StoreError::unavailable(
        "the store's committer stopped before answering; the write's outcome is unknown",
    )
}

async fn run<C: Committer>(committer: C, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (writes, replies): (Vec<Write>, Vec<_>) =
            batch.drain(..).map(|p| (p.write, p.reply)).unzip();
        commit(&committer, &writes, replies).await;
    }
}

type Reply = oneshot::Sender<Result<Written, StoreError>>;

/// Commits one batch and answers its callers (a caller that went away is skipped).
async fn commit<C: Committer>(committer: &C, writes: &[Write], replies: Vec<Reply>) {
    let started = std::time::Instant::now();
    let result = committer.commit_writes(writes).await;
    traced(writes.len(), started, &result);
    let mut done = Vec::with_capacity(writes.len());
    for (write, reply) in answer(writes, result, replies, &mut done) {
        let _ = reply.send(alone(committer, write).await);
    }
    send_all(done);
}

fn traced(writes: usize, started: std::time::Instant, result: &Result<Vec<Written>, Failed>) {
    tracing::debug!(
        name: crate::spans::GROUP_COMMIT,
        writes,
        micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        ok = result.is_ok(),
        "group commit"
    );
}

/// Sorts a batch's callers by its outcome: the answers of a commit go to `done` (to be sent
/// once they are durable), a failure's error is sent at once, and when the database refused
/// one of the batch's statements each write is to be retried alone: those are returned with
/// their callers.
fn answer<'w>(
    writes: &'w [Write],
    result: Result<Vec<Written>, Failed>,
    replies: Vec<Reply>,
    done: &mut Vec<(Reply, Written)>,
) -> Vec<(&'w Write, Reply)> {
    match result {
        Ok(written) => {
            done.extend(replies.into_iter().zip(written));
            Vec::new()
        }
        Err(failed) if failed.retry_alone && writes.len() > 1 => {
            tracing::warn!(
                writes = writes.len(),
                error = %failed.error,
                "the database refused a statement of a group commit; retrying each write alone"
            );
            writes.iter().zip(replies).collect()
        }
        Err(failed) => {
            for reply in replies {
                let _ = reply.send(Err(Clone::clone(&failed.error)));
            }
            Vec::new()
        }
    }
}

fn send_all(done: Vec<(Reply, Written)>) {
    for (reply, written) in done {
        let _ = reply.send(Ok(written));
    }
}

/// Makes commits durable after the fact, for a committer whose commits are not durable by
/// themselves ([`BlockingCommitter::syncer`]): a thread of its own takes the answers of every
/// commit made since its last sync, syncs once, and only then sends them. The committer goes
/// on with the next batch meanwhile, so a sync (an fsync) overlaps the next commit's work
/// instead of stopping it.
///
/// A failed sync fails its callers, and every write after it: whether the commits before it
/// reached the disk is unknown (the page cache may have dropped what it could not write), so
/// the store refuses writes until it is restarted and SQLite's recovery reads the log back.
struct Durable {
    queue: std::sync::mpsc::Sender<Vec<(Reply, Written)>>,
    failed: Arc<OnceLock<StoreError>>,
}

impl Durable {
    fn start(mut sync: Syncer) -> std::io::Result<Self> {
        let (queue, synced) = std::sync::mpsc::channel::<Vec<(Reply, Written)>>();
        let failed = Arc::new(OnceLock::new());
        let failure = Arc::clone(&failed);
        std::thread::Builder::new()
            .name("vault-sync".to_owned())
            .spawn(move || {
                while let Ok(mut done) = synced.recv() {
                    while let Ok(more) = synced.try_recv() {
                        done.extend(more);
                    }
                    let synced = match failure.get() {
                        Some(error) => Err(Clone::clone(error)),
                        None => sync().map_err(|error| {
                            tracing::error!(%error, "the store's log could not be synced; it refuses writes until restarted");
                            Clone::clone(failure.get_or_init(|| {
                                StoreError::caused_by(
                                    "the database's log could not be synced to disk; writes are refused until vaultd restarts",
                                    error,
                                )
                            }))
                        }),
                    };
                    match synced {
                        Ok(()) => send_all(done),
                        Err(error) => {
                            for (reply, _) in done {
                                let _ = reply.send(Err(Clone::clone(&error)));
                            }
                        }
                    }
                }
            })?;
        Ok(Self { queue, failed })
    }

    /// The error every write fails with once a sync has failed.
    fn failed(&self) -> Option<StoreError> {
        self.failed.get().cloned()
    }

    fn answer_once_synced(&self, done: Vec<(Reply, Written)>) {
        if done.is_empty() {
            return;
        }
        if let Err(lost) = self.queue.send(done) {
            for (reply, _) in lost.0 {
                let _ = reply.send(Err(stopped()));
            }
        }
    }
}

/// Commits one write in a transaction of its own.
async fn alone<C: Committer>(committer: &C, write: &Write) -> Result<Written, StoreError> {
    committer
        .commit_writes(std::slice::from_ref(write))
        .await
        .map_err(|failed| failed.error)
        .and_then(only)
}

/// The one answer of a one-write commit.
fn only(mut written: Vec<Written>) -> Result<Written, StoreError> {
    written
        .pop()
        .ok_or_else(|| StoreError::unavailable("a commit answered no write"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::{Arc, Mutex};

    use super::*;
    use vault_core::ids::{CallContext, CallerId};
    use vault_core::policy::Operation;

    /// A committer that records the size of each batch it is given and refuses any batch
    /// holding a record whose request id is "bad" (as a database refusing one statement would).
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl Committer for Arc<Recorder> {
        async fn commit_writes(&self, writes: &[Write]) -> Result<Vec<Written>, Failed> {
            self.batches.lock().unwrap().push(writes.len());
            // A commit takes a while: long enough for the other callers to queue behind it.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let bad = writes
                .iter()
                .any(|w| matches!(w, Write::Audit(a) if a.request_id == "bad"));
            if bad {
                return Err(Failed {
                    error: StoreError::unavailable("refused"),
                    retry_alone: true,
                });
            }
            Ok(writes.iter().map(|_| Written::Audit).collect())
        }
    }

    fn audit(request_id: &str) -> Write {
        let ctx = CallContext {
            caller: CallerId::new("test"),
            peer: None,
            request_id: request_id.to_owned(),
        };
        Write::Audit(AuditRecord::begin(&ctx, Operation::Detokenize))
    }

    /// Starts `ids.len()` concurrent writes and returns which failed.
    async fn write_all(group: &Group, recorder: &Arc<Recorder>, ids: &[&str]) -> Vec<bool> {
        let calls: Vec<_> = ids
            .iter()
            .map(|id| {
                let (group, recorder, write) = (group.clone(), recorder.clone(), audit(id));
                tokio::spawn(async move { group.write(&recorder, write).await })
            })
            .collect();
        let mut failed = Vec::new();
        for call in calls {
            failed.push(call.await.unwrap().is_err());
        }
        failed
    }

    /// The same, committing on a thread of its own, and counting the gaps between commits.
    #[derive(Clone, Default)]
    struct BlockingRecorder {
        recorder: Arc<Recorder>,
        gaps: Arc<Mutex<usize>>,
        /// If set, commits are not durable by themselves: each sync waits for an outcome here.
        syncs: Arc<Mutex<Option<std::sync::mpsc::Receiver<std::io::Result<()>>>>>,
    }

    impl BlockingCommitter for BlockingRecorder {
        fn commit_writes(&mut self, writes: &[Write]) -> Result<Vec<Written>, Failed> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(self.recorder.commit_writes(writes))
        }

        fn between_commits(&mut self) {
            *self.gaps.lock().unwrap() += 1;
        }

        fn syncer(&mut self) -> Option<Syncer> {
            let syncs = self.syncs.lock().unwrap().take()?;
            Some(Box::new(move || syncs.recv().unwrap_or(Ok(()))))
        }
    }

    /// A group committing through `blocking` on a thread, and one committing on a runtime of
    /// its own, each with the recorder to read back.
    fn both(blocking: &BlockingRecorder) -> [(Group, Arc<Recorder>); 2] {
        let on_runtime = Arc::new(Recorder::default());
        let committer = on_runtime.clone();
        [
            (
                Group::start_on_thread(blocking.clone()).unwrap(),
                blocking.recorder.clone(),
            ),
            (
                Group::start_on_own_runtime(move || committer).unwrap(),
                on_runtime,
            ),
        ]
    }

    fn numbered(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    #[tokio::test]
    async fn writes_that_arrive_during_a_commit_share_the_next_one() {
        let ids = numbered(100);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let blocking = BlockingRecorder::default();
        for (group, recorder) in both(&blocking) {
            let failed = write_all(&group, &recorder, &ids).await;
            assert!(failed.iter().all(|f| !f));
            let batches = recorder.batches.lock().unwrap().clone();
            assert_eq!(batches.iter().sum::<usize>(), 100);
            assert!(batches.len() < 10, "not grouped: {batches:?}");
        }
        // Every commit is followed by a gap (the last one's may still be running).
        let commits = blocking.recorder.batches.lock().unwrap().len();
        assert!(*blocking.gaps.lock().unwrap() + 1 >= commits);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_wait_for_the_sync_and_a_failed_sync_refuses_every_write_after() {
        let (sync, syncs) = std::sync::mpsc::channel();
        let blocking = BlockingRecorder {
            syncs: Arc::new(Mutex::new(Some(syncs))),
            ..BlockingRecorder::default()
        };
        let recorder = blocking.recorder.clone();
        let group = Group::start_on_thread(blocking).unwrap();
        let commits = || recorder.batches.lock().unwrap().len();
        let write = |id: &'static str| {
            let (group, recorder) = (group.clone(), recorder.clone());
            tokio::spawn(async move { group.write(&recorder, audit(id)).await })
        };

        // Committed, and still unanswered until its sync returns.
        let first = write("a");
        while commits() < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !first.is_finished(),
            "answered before its commit was synced"
        );
        sync.send(Ok(())).unwrap();
        assert!(first.await.unwrap().is_ok());

        // A failed sync fails its callers, and every write after it fails without a commit.
        let second = write("b");
        sync.send(Err(std::io::Error::other("disk gone"))).unwrap();
        assert!(second.await.unwrap().is_err());
        let after = commits();
        assert!(write("c").await.unwrap().is_err());
        assert_eq!(commits(), after);
    }

    #[tokio::test]
    async fn a_write_the_database_refuses_fails_alone() {
        let blocking = BlockingRecorder::default();
        for (group, recorder) in both(&blocking) {
            let failed = write_all(&group, &recorder, &["a", "b", "bad", "c", "d"]).await;
            assert_eq!(failed, [false, false, true, false, false]);
        }
    }

    #[tokio::test]
    async fn a_store_without_a_committer_writes_directly() {
        let recorder = Arc::new(Recorder::default());
        let failed = write_all(&Group::default(), &recorder, &["a", "b"]).await;
        assert_eq!(failed, [false, false]);
        assert_eq!(*recorder.batches.lock().unwrap(), [1, 1]);
    }
}
