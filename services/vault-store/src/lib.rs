//! Storage adapters for the card vault: `vault_core::ports::TokenStore` over sqlx.
//!
//! [`SqliteStore`] is the embedded default. It refuses to start unless the database runs in WAL
//! mode with `synchronous=FULL`, read back from the connection, so that a commit is durable
//! before a caller is answered.

mod rows;
mod sqlite;

pub use sqlite::{SqliteStore, SqliteStoreError};
