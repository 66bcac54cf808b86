//! Test doubles for the ports, for use-case tests that run in milliseconds (feature `testing`,
//! and this crate's own tests). Not used by the vault itself.
//!
//! - [`MemoryStore`] implements every store port in memory and passes the same conformance
//!   suite as the SQLite and PostgreSQL stores, so it cannot drift from them; it can be told
//!   to fail ([`StoreFault`]).
//! - [`FakeKek`] wraps keys in memory, bound to their context like the real KEKs, counts its
//!   calls, and can be told to fail ([`KekFault`]).

mod kek;
mod memory;

pub use kek::{FakeKek, KekFault};
pub use memory::{MemoryStore, StoreFault};
