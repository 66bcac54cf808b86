//! How sqlx's errors become the store port's: the one mapping every backend and the group
//! committer share.

use vault_core::StoreError;

/// A statement, connection or commit that failed: the store is unavailable, and sqlx's error
/// is kept as the cause.
pub(crate) fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::caused_by("the database failed", err)
}

/// True if `err` is a unique-constraint violation (a row that already exists).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
}

/// The same for the SQLite writer's rusqlite errors.
pub(crate) fn sqlite_unavailable(err: rusqlite::Error) -> StoreError {
    StoreError::caused_by("the database failed", err)
}
