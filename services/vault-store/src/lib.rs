//! Storage adapters for the card vault: `vault_core::ports::TokenStore` over sqlx.
//!
//! - [`SqliteStore`]: the embedded default. Refuses to start unless the database runs in WAL
//!   mode with `synchronous=FULL`, read back from the connection; its group-commit writer
//!   commits at `NORMAL` and fsyncs the log itself before answering anyone (`sqlite/writer.rs`).
//! - [`PgStore`]: production. Refuses to start unless commits are durable
//!   (`synchronous_commit`, `fsync`, `full_page_writes`); bounded connect and statement times,
//!   so a database outage fails calls fast instead of hanging them.
//!
//! Both share one implementation of the ports (`sql/`, a module per port) and the row
//! conversions (`rows.rs`); SQLite's hot path runs on rusqlite (`sqlite/`).
//! `tests/conformance.rs` runs the same suite against each, and against the in-memory test
//! store (`vault_core::testing::MemoryStore`).

mod chain;
mod error;
mod group;
mod postgres;
mod rows;
mod sink;
mod sql;
mod sqlite;
mod tally;
pub mod testing;

/// The spans and events the store emits through `tracing`, for `vaultd`'s traces and metrics.
pub mod spans {
    /// Waiting for one's write to be committed and durable (a span on the caller's path).
    pub const GROUP_COMMIT_WAIT: &str = "group_commit.wait";
    /// One group commit (an event at DEBUG on the committer: `writes`, `micros`, `ok`).
    pub const GROUP_COMMIT: &str = "group_commit";
}

pub use postgres::{PgSettings, PgStore, PgStoreError, redact_url};
pub use sink::AuditSink;

/// One connection pool's connections now, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Which pool (`reads`, `writes`, `pool`).
    pub pool: &'static str,
    /// Connections open and idle.
    pub idle: u32,
    /// Connections open and in use.
    pub in_use: u32,
}

impl PoolUsage {
    fn of_sqlx<DB: sqlx::Database>(pool: &'static str, of: &sqlx::Pool<DB>) -> Self {
        let idle = u32::try_from(of.num_idle()).unwrap_or(u32::MAX);
        Self {
            pool,
            idle,
            in_use: of.size().saturating_sub(idle),
        }
    }
}
pub use sqlite::{SqliteStore, SqliteStoreError};
