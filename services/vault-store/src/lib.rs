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

pub use postgres::{PgSettings, PgStore, PgStoreError, redact_url};
pub use sink::AuditSink;
pub use sqlite::{SqliteStore, SqliteStoreError};
