//! vault-store
