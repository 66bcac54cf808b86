//! vault-kms
