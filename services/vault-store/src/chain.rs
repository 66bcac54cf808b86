//! This store's writer chain: the head that the next audit record links to.
//!
//! Every transaction that writes audit records takes the head's lock as its last step before
//! inserting them and holds it through the commit, so records join the chain in commit order
//! and a rolled-back transaction leaves no gap. The lock is taken after the transaction's other
//! statements, so it never waits on a database lock while holding it. When a commit's outcome
//! is unknown (an error during COMMIT), the head is forgotten and read back from the database
//! before the next record.

use tokio::sync::{Mutex, MutexGuard};
use vault_audit::{GENESIS, HASH_LEN};

/// A writer's chain head as this process knows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: [u8; HASH_LEN],
}

#[derive(Debug)]
pub(crate) struct Chain {
    pub writer: String,
    /// `None` until read from the database (at the first record, or after an unknown commit).
    head: Mutex<Option<Head>>,
    /// The second sink committed records are copied to, if one is configured.
    pub sink: std::sync::OnceLock<crate::sink::AuditSink>,
}

impl Chain {
    /// A new writer ([`vault_core::audit::new_writer`]).
    pub(crate) fn new_writer() -> Self {
        let writer = vault_core::audit::new_writer();
        Self {
            writer,
            head: Mutex::new(None),
            sink: std::sync::OnceLock::new(),
        }
    }

    pub(crate) async fn lock(&self) -> MutexGuard<'_, Option<Head>> {
        self.head.lock().await
    }

    /// The same, from a thread outside any runtime (SQLite's writer).
    pub(crate) fn blocking_lock(&self) -> MutexGuard<'_, Option<Head>> {
        self.head.blocking_lock()
    }
}

/// The head of an empty chain.
pub(crate) const EMPTY: Head = Head {
    seq: 0,
    hash: GENESIS,
};
