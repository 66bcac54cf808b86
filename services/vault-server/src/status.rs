//! The one table that maps domain errors to gRPC status codes.
//!
//! Callers get a fixed message per error kind: it names the field for bad input, never the
//! value, and never carries internal detail (SQL errors, key ids). The full cause goes to the
//! log, which holds no PAN either.

use tonic::{Code, Status};
use vault_core::VaultError;

/// The gRPC status for a domain error.
#[must_use]
pub fn to_status(error: &VaultError) -> Status {
    let (code, message): (Code, std::borrow::Cow<'static, str>) = match error {
        VaultError::Unauthenticated => (
            Code::Unauthenticated,
            "client certificate has neither a SPIFFE URI SAN nor a subject common name".into(),
        ),
        VaultError::InvalidArgument(invalid) => (Code::InvalidArgument, invalid.to_string().into()),
        VaultError::InvalidCard { .. } => (Code::InvalidArgument, error.to_string().into()),
        VaultError::PermissionDenied { operation } => (
            Code::PermissionDenied,
            format!("caller is not allowed to {operation} for this merchant").into(),
        ),
        VaultError::NotFound => (Code::NotFound, "token not found for this merchant".into()),
        VaultError::Integrity => (
            Code::DataLoss,
            "stored card data failed its integrity check; no card data was released".into(),
        ),
        VaultError::KeyUnavailable(_) => (
            Code::Unavailable,
            "key service unavailable; no card data was released".into(),
        ),
        VaultError::StoreUnavailable(_) => (Code::Unavailable, "storage unavailable".into()),
        VaultError::AuditUnavailable(_) => (
            Code::Unavailable,
            "audit log unavailable; the call was refused and no card data was released".into(),
        ),
        VaultError::KeyDestroyed => (
            Code::FailedPrecondition,
            "this merchant's keys were destroyed (crypto-shred); its card data can never be \
             released"
                .into(),
        ),
        VaultError::FailedPrecondition(rule) => (Code::FailedPrecondition, (*rule).into()),
        VaultError::TokenSpaceExhausted => (
            Code::ResourceExhausted,
            "no free PAN_SHAPED token left for this merchant with this card's shown digits; use \
             RANDOM"
                .into(),
        ),
    };
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use vault_core::InvalidArgument;
    use vault_core::policy::Operation;

    use super::*;

    #[test]
    fn every_error_has_its_code_and_no_internal_detail() {
        let cases = [
            (
                VaultError::InvalidArgument(InvalidArgument {
                    field: "pan",
                    problem: "fails the Luhn check",
                }),
                Code::InvalidArgument,
            ),
            (
                VaultError::PermissionDenied {
                    operation: Operation::Detokenize,
                },
                Code::PermissionDenied,
            ),
            (VaultError::NotFound, Code::NotFound),
            (VaultError::Unauthenticated, Code::Unauthenticated),
            (VaultError::Integrity, Code::DataLoss),
            (
                VaultError::KeyUnavailable("secret-detail".into()),
                Code::Unavailable,
            ),
            (
                VaultError::StoreUnavailable("secret-detail".into()),
                Code::Unavailable,
            ),
            (
                VaultError::AuditUnavailable("secret-detail".into()),
                Code::Unavailable,
            ),
            (VaultError::TokenSpaceExhausted, Code::ResourceExhausted),
            (VaultError::KeyDestroyed, Code::FailedPrecondition),
            (
                VaultError::FailedPrecondition("a shred needs a second admin"),
                Code::FailedPrecondition,
            ),
        ];
        for (error, code) in cases {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert!(!status.message().contains("secret-detail"));
        }
        assert_eq!(
            to_status(&cases_first()).message(),
            "pan: fails the Luhn check"
        );
    }

    fn cases_first() -> VaultError {
        VaultError::InvalidArgument(InvalidArgument {
            field: "pan",
            problem: "fails the Luhn check",
        })
    }
}
