//! Group commit: concurrent token inserts and audit appends share one transaction, so one
//! COMMIT (one fsync) serves many callers.
//!
//! Each store has one committer. SQLite's runs on a thread and runtime of its own: on the
//! server's runtime it would wait behind every request task at each of its awaits (each a hop
//! to a SQLite connection thread), though it serves all of them. PostgreSQL's is a task on
//! the server's runtime, which owns its connections' sockets.
//! A caller hands it its write and waits. Whenever the committer is free it takes everything
//! queued (up to [`MAX_BATCH`] writes), writes it in one transaction, commits, and only then
//! answers each caller. There is no timer: a lone write commits at once, and writes that
//! arrive during a commit wait for the next one, so batches grow with the load by themselves. Durability is unchanged: a caller is answered only after
//! the COMMIT holding its write has returned, and both backends refuse to start unless a
//! COMMIT is durable (`sqlite.rs`, `postgres.rs`).
//!
//! Failures: when the database refuses a statement of a batch (before COMMIT), the batch is
//! rolled back and each write retried in a transaction of its own, so one bad write fails
//! alone. A lost connection, a failed COMMIT or a failed required audit sink fails every
//! caller of the batch with the same error (`UNAVAILABLE` at the edge). A caller that goes
//! away (a cancelled RPC) does not stop the batch it is in.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use vault_core::StoreError;
use vault_core::audit::AuditRecord;
use vault_core::ports::{InsertOutcome, Tallied, TallyRequest, TokenRecord};

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
}

/// What a committed write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    Token(InsertOutcome),
    Audit,
    Tally(Vec<Vec<Tallied>>),
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
}

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
    /// Starts `committer` on a thread of its own with its own single-threaded runtime (for
    /// SQLite, whose connections are threads of their own and belong to no runtime); if the
    /// thread cannot be started, writes commit one by one. The thread ends when every handle
    /// is dropped.
    pub(crate) fn start_on_own_thread<C: Committer>(committer: C) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let spawned = runtime.and_then(|runtime| {
            std::thread::Builder::new()
                .name("vault-committer".to_owned())
                .spawn(move || runtime.block_on(run(committer, pending)))
        });
        match spawned {
            Ok(_) => Self { queue: Some(queue) },
            Err(error) => {
                tracing::warn!(%error, "cannot start the group committer; writes commit one by one");
                Self::default()
            }
        }
    }

    /// Starts `committer` as a task on the current runtime (for PostgreSQL, whose pooled
    /// connections' sockets belong to the runtime that opened them: a second runtime would
    /// leave some of them waiting on a thread that is busy committing). Outside a runtime,
    /// writes commit one by one.
    pub(crate) fn start_on_runtime<C: Committer>(committer: C) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self::default();
        };
        let (queue, pending) = mpsc::channel(QUEUE);
        runtime.spawn(run(committer, pending));
        Self { queue: Some(queue) }
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
        queue
            .send(Pending { write, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
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

/// Commits one batch and answers its callers (a caller that went away is skipped).
async fn commit<C: Committer>(
    committer: &C,
    writes: &[Write],
    replies: Vec<oneshot::Sender<Result<Written, StoreError>>>,
) {
    let started = std::time::Instant::now();
    let result = committer.commit_writes(writes).await;
    tracing::trace!(
        writes = writes.len(),
        micros = started.elapsed().as_micros(),
        ok = result.is_ok(),
        "group commit"
    );
    match result {
        Ok(written) => {
            for (reply, written) in replies.into_iter().zip(written) {
                let _ = reply.send(Ok(written));
            }
        }
        Err(failed) if failed.retry_alone && writes.len() > 1 => {
            tracing::warn!(
                writes = writes.len(),
                error = %failed.error,
                "the database refused a statement of a group commit; retrying each write alone"
            );
            for (write, reply) in writes.iter().zip(replies) {
                let _ = reply.send(alone(committer, write).await);
            }
        }
        Err(failed) => {
            for reply in replies {
                let _ = reply.send(Err(Clone::clone(&failed.error)));
            }
        }
    }
}

/// Commits one write in a transaction of its own.
async fn alone<C: Committer>(committer: &C, write: &Write) -> Result<Written, StoreError> {
    committer
        .commit_writes(std::slice::from_ref(write))
        .await
        .map_err(|failed| failed.error)?
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

    #[tokio::test]
    async fn writes_that_arrive_during_a_commit_share_the_next_one() {
        let recorder = Arc::new(Recorder::default());
        let group = Group::start_on_own_thread(recorder.clone());
        let ids: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let failed = write_all(&group, &recorder, &ids).await;
        assert!(failed.iter().all(|f| !f));
        let batches = recorder.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 100);
        assert!(batches.len() < 10, "not grouped: {batches:?}");
    }

    #[tokio::test]
    async fn a_write_the_database_refuses_fails_alone() {
        let recorder = Arc::new(Recorder::default());
        let group = Group::start_on_runtime(recorder.clone());
        let failed = write_all(&group, &recorder, &["a", "b", "bad", "c", "d"]).await;
        assert_eq!(failed, [false, false, true, false, false]);
    }

    #[tokio::test]
    async fn a_store_without_a_committer_writes_directly() {
        let recorder = Arc::new(Recorder::default());
        let failed = write_all(&Group::default(), &recorder, &["a", "b"]).await;
        assert_eq!(failed, [false, false]);
        assert_eq!(*recorder.batches.lock().unwrap(), [1, 1]);
    }
}
