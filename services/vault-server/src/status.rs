//! The one table that maps domain errors to gRPC status codes.
//!
//! Callers get a fixed message per error kind: it names the field for bad input, never the
//! value, and never carries internal detail (SQL errors, key ids). The full cause goes to the
//! log, which holds no PAN either.

use std::time::Duration;

use tonic::metadata::MetadataValue;
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
        VaultError::Timeout(_) => (
            Code::Unavailable,
            "the vault did not finish the call in time; no card data was released".into(),
        ),
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
        VaultError::Throttled { limit, .. } => (Code::ResourceExhausted, limit.to_string().into()),
        VaultError::Egress(failure) => {
            use vault_core::forward::EgressFailure as F;
            let code = match failure {
                F::Unreachable | F::Untrusted | F::Refused | F::Misconfigured => Code::Unavailable,
                F::Timeout => Code::DeadlineExceeded,
                F::Redirect | F::Compressed | F::TooLarge | F::Protocol => Code::FailedPrecondition,
            };
            let delivery = if failure.before_sending() {
                "nothing was sent"
            } else if failure.not_accepted() {
                "the request was not accepted"
            } else {
                "the request may have been delivered; its answer is withheld"
            };
            (code, format!("{failure}; {delivery}").into())
        }
    };
    let mut status = Status::new(code, message);
    if let VaultError::Throttled { retry_after, .. } = error {
        retry_hint(&mut status, *retry_after);
    }
    status
}

/// Response metadata saying when to retry: `retry-after` in whole seconds (rounded up, as HTTP
/// has it) and `grpc-retry-pushback-ms`, which gRPC clients with a retry policy obey.
fn retry_hint(status: &mut Status, after: Duration) {
    let millis = after.as_millis().max(1);
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    if let Ok(value) = MetadataValue::try_from(secs.max(1).to_string()) {
        status.metadata_mut().insert(RETRY_AFTER, value);
    }
    if let Ok(value) = MetadataValue::try_from(millis.to_string()) {
        status.metadata_mut().insert(RETRY_PUSHBACK, value);
    }
}

/// Response metadata: seconds until a refused call may succeed.
pub const RETRY_AFTER: &str = "retry-after";
/// Response metadata: milliseconds until a refused call may succeed (gRPC's retry pushback).
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

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
                VaultError::KeyUnavailable(vault_core::KekError::unavailable("secret-detail")),
                Code::Unavailable,
            ),
            (
                VaultError::StoreUnavailable(vault_core::StoreError::unavailable("secret-detail")),
                Code::Unavailable,
            ),
            (
                VaultError::AuditUnavailable(vault_core::StoreError::unavailable("secret-detail")),
                Code::Unavailable,
            ),
            (
                VaultError::Timeout(Duration::from_millis(2500)),
                Code::Unavailable,
            ),
            (VaultError::TokenSpaceExhausted, Code::ResourceExhausted),
            (
                VaultError::Throttled {
                    limit: vault_core::Throttle::RateLimit,
                    retry_after: Duration::from_millis(1500),
                },
                Code::ResourceExhausted,
            ),
            (
                VaultError::Throttled {
                    limit: vault_core::Throttle::Enumeration { tripped: true },
                    retry_after: Duration::from_secs(3600),
                },
                Code::ResourceExhausted,
            ),
            (
                VaultError::Throttled {
                    limit: vault_core::Throttle::NewMerchants,
                    retry_after: Duration::from_secs(60),
                },
                Code::ResourceExhausted,
            ),
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

    #[test]
    fn limits_say_when_to_retry() {
        let status = to_status(&VaultError::Throttled {
            limit: vault_core::Throttle::RateLimit,
            retry_after: Duration::from_millis(1500),
        });
        let get = |key| status.metadata().get(key).and_then(|v| v.to_str().ok());
        assert_eq!(get(RETRY_AFTER), Some("2"));
        assert_eq!(get(RETRY_PUSHBACK), Some("1500"));
        // Whether the guard's bucket tripped on this call or earlier, the answer is the same.
        let tripped = to_status(&VaultError::Throttled {
            limit: vault_core::Throttle::Enumeration { tripped: true },
            retry_after: Duration::from_secs(10),
        });
        let spent = to_status(&VaultError::Throttled {
            limit: vault_core::Throttle::Enumeration { tripped: false },
            retry_after: Duration::from_secs(10),
        });
        assert_eq!(tripped.message(), spent.message());
    }

    fn cases_first() -> VaultError {
        VaultError::InvalidArgument(InvalidArgument {
            field: "pan",
            problem: "fails the Luhn check",
        })
    }
}
