//! How sqlx's errors become the store port's: the one mapping every backend and the group
//! committer share.

use vault_core::StoreError;

/// A statement, connection or commit that failed: the store is unavailable.
pub(crate) fn unavailable(err: sqlx::Error) -> StoreError {
    unavailable_ref(&err)
}

/// [`unavailable`], for an error the caller keeps.
pub(crate) fn unavailable_ref(err: &sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// True if `err` is a unique-constraint violation (a row that already exists).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
}
