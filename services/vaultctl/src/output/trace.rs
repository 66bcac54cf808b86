//! What `audit trace` prints: what verifying the exports found, then one block per access to
//! the token (text), or one JSON object `{token, merchant, verified, accesses}` whose
//! `verified` is what `audit verify --output json` prints and whose `accesses` is `null` when
//! the exports did not verify.

use serde::Serialize;

use super::json::AuditVerified;
use super::{plural, verify_text};
use crate::trace::{Access, ForwardResult, Trace};

/// The text of `audit trace`.
pub(super) fn text(trace: &Trace) -> String {
    let mut out = verify_text(&trace.verified);
    let token = match &trace.merchant {
        Some(merchant) => format!("token {} of merchant {merchant}", trace.token),
        None => format!("token {}", trace.token),
    };
    let Some(accesses) = &trace.accesses else {
        out.push_str(&format!(
            "no trace of {token}: the exports do not verify, so what they say of it cannot be \
             trusted\n"
        ));
        return out;
    };
    if accesses.is_empty() {
        out.push_str(&format!(
            "{token}: no detokenize or forward of this token in these exports\n"
        ));
        return out;
    }
    let several = trace.several_merchants();
    out.push_str(&format!(
        "{token}: {} {}, oldest first{}\n",
        accesses.len(),
        plural(accesses.len() as u64, "access", "accesses"),
        if several {
            " (under several merchants: each names its own)"
        } else {
            ""
        }
    ));
    for access in accesses {
        out.push('\n');
        out.push_str(&access_text(access, several));
    }
    out
}

/// One access: a heading line (time, event, outcome), then labelled lines.
fn access_text(access: &Access, with_merchant: bool) -> String {
    let outcome = access
        .outcome
        .as_deref()
        .unwrap_or("(its forward record is not in these exports)");
    let mut out = format!("{}  {}  {outcome}", access.at, access.kind.as_str());
    if with_merchant {
        let merchant = access.merchant.as_deref().unwrap_or("-");
        out.push_str(&format!("  merchant {merchant}"));
    }
    out.push('\n');
    let mut rows: Vec<(&str, String)> = vec![
        ("caller", access.caller.clone()),
        ("origin", access.origin.clone()),
        (
            "reason",
            access
                .reason
                .as_ref()
                .map_or_else(|| "-".to_owned(), |reason| format!("{reason:?}")),
        ),
    ];
    let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    match &access.forward {
        Some(forward) => {
            rows.extend([
                ("destination", optional(&forward.destination)),
                ("fingerprint", optional(&forward.fingerprint)),
                ("template", optional(&forward.template)),
                ("method", optional(&forward.method)),
                ("path", optional(&forward.path)),
            ]);
            let parsed = [&forward.destination, &forward.template, &forward.path]
                .iter()
                .any(|value| value.is_some());
            if let (false, Some(detail)) = (parsed, &access.detail) {
                rows.push(("detail", detail.clone()));
            }
            let result = access.result_summary().unwrap_or_default();
            rows.push(("result", result));
            for result in &forward.results {
                rows.push((
                    "result record",
                    format!("{} at {}", result.record, result.at),
                ));
            }
        }
        None => {
            if let Some(detail) = &access.detail {
                rows.push(("detail", detail.clone()));
            }
        }
    }
    rows.push(("request id", access.request_id.clone()));
    if let Some(record) = &access.record {
        rows.push(("record", record.clone()));
    }
    for (label, value) in rows {
        out.push_str(&format!("  {label:<14}{value}\n"));
    }
    out
}

/// `audit trace`, for scripts.
#[derive(Serialize)]
pub(super) struct Traced<'a> {
    token: &'a str,
    merchant: Option<&'a str>,
    verified: AuditVerified<'a>,
    accesses: Option<Vec<AccessJson<'a>>>,
}

impl<'a> Traced<'a> {
    pub(super) fn new(trace: &'a Trace) -> Self {
        Self {
            token: &trace.token,
            merchant: trace.merchant.as_deref(),
            verified: AuditVerified::new(&trace.verified),
            accesses: trace
                .accesses
                .as_ref()
                .map(|accesses| accesses.iter().map(AccessJson::new).collect()),
        }
    }
}

/// One access. `outcome` and `record` are `null` for a forward known only by its result;
/// `forward` is `null` for a detokenize.
#[derive(Serialize)]
struct AccessJson<'a> {
    at: &'a str,
    merchant: Option<&'a str>,
    caller: &'a str,
    origin: &'a str,
    event: &'static str,
    outcome: Option<&'a str>,
    reason: Option<&'a str>,
    detail: Option<&'a str>,
    request_id: &'a str,
    record: Option<&'a str>,
    forward: Option<ForwardJson<'a>>,
}

impl<'a> AccessJson<'a> {
    fn new(access: &'a Access) -> Self {
        Self {
            at: &access.at,
            merchant: access.merchant.as_deref(),
            caller: &access.caller,
            origin: &access.origin,
            event: access.kind.as_str(),
            outcome: access.outcome.as_deref(),
            reason: access.reason.as_deref(),
            detail: access.detail.as_deref(),
            request_id: &access.request_id,
            record: access.record.as_deref(),
            forward: access.forward.as_ref().map(|forward| ForwardJson {
                destination: forward.destination.as_deref(),
                fingerprint: forward.fingerprint.as_deref(),
                template: forward.template.as_deref(),
                method: forward.method.as_deref(),
                path: forward.path.as_deref(),
                result: access.result_summary().unwrap_or_default(),
                results: forward.results.iter().map(ResultJson::new).collect(),
            }),
        }
    }
}

/// Where a forward went, and what came back: `result` in words (as the text prints it), and
/// each `forward.result` record.
#[derive(Serialize)]
struct ForwardJson<'a> {
    destination: Option<&'a str>,
    fingerprint: Option<&'a str>,
    template: Option<&'a str>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    result: String,
    results: Vec<ResultJson<'a>>,
}

/// One `forward.result` record.
#[derive(Serialize)]
struct ResultJson<'a> {
    at: &'a str,
    outcome: &'a str,
    status: Option<u16>,
    bytes: Option<u64>,
    error: Option<&'a str>,
    detail: Option<&'a str>,
    record: &'a str,
}

impl<'a> ResultJson<'a> {
    fn new(result: &'a ForwardResult) -> Self {
        Self {
            at: &result.at,
            outcome: &result.outcome,
            status: result.status,
            bytes: result.bytes,
            error: result.error.as_deref(),
            detail: result.detail.as_deref(),
            record: &result.record,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::Report;
    use super::*;
    use crate::trace::{AccessKind, Forward};

    fn verified() -> vault_audit::Report {
        vault_audit::Report {
            records: 12,
            checkpoints: 2,
            checkpoint_range: Some((1, 2)),
            last_checkpoint_hash: Some("abcd".into()),
            writers: vec![vault_audit::WriterSummary {
                writer: "w1".into(),
                anchor: 0,
                head: 12,
                records: 12,
            }],
            problems: vec![],
        }
    }

    fn detokenize(merchant: &str) -> Access {
        Access {
            at: "2026-11-23T10:15:00.000000Z".into(),
            merchant: Some(merchant.into()),
            caller: "spiffe://vault.test/support".into(),
            origin: "10.0.0.9:4000".into(),
            kind: AccessKind::Detokenize,
            outcome: Some("success".into()),
            reason: Some("refund 42".into()),
            detail: None,
            request_id: "r-1".into(),
            record: Some("w1#2".into()),
            forward: None,
        }
    }

    fn forward() -> Access {
        Access {
            at: "2026-11-23T10:16:00.000000Z".into(),
            caller: "spiffe://vault.test/payments".into(),
            kind: AccessKind::Forward,
            reason: Some("order 7".into()),
            detail: Some(
                "destination=acme fingerprint=sha256:ab template=charge method=POST \
                 path=/v1/charges"
                    .into(),
            ),
            request_id: "r-2".into(),
            record: Some("w1#3".into()),
            forward: Some(Forward {
                destination: Some("acme".into()),
                fingerprint: Some("sha256:ab".into()),
                template: Some("charge".into()),
                method: Some("POST".into()),
                path: Some("/v1/charges".into()),
                results: vec![ForwardResult {
                    at: "2026-11-23T10:16:01.000000Z".into(),
                    outcome: "success".into(),
                    status: Some(201),
                    bytes: Some(123),
                    error: None,
                    detail: Some("destination=acme status=201 bytes=123".into()),
                    record: "w1#4".into(),
                }],
            }),
            ..detokenize("m-1")
        }
    }

    fn trace(merchant: Option<&str>, accesses: Option<Vec<Access>>) -> Trace {
        Trace {
            token: "tok_1".into(),
            merchant: merchant.map(str::to_owned),
            verified: verified(),
            accesses,
        }
    }

    #[test]
    fn each_access_is_a_block() {
        let report =
            Report::AuditTraced(trace(Some("m-1"), Some(vec![detokenize("m-1"), forward()])));
        assert_eq!(report.exit_code(), 0);
        let text = report.to_text();
        assert!(
            text.starts_with("verified: 12 records from 1 writer, checkpoints #1..#2"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "token tok_1 of merchant m-1: 2 accesses, oldest first\n\
                 \n\
                 2026-11-23T10:15:00.000000Z  detokenize  success\n  \
                 caller        spiffe://vault.test/support\n  \
                 origin        10.0.0.9:4000\n  \
                 reason        \"refund 42\"\n  \
                 request id    r-1\n  \
                 record        w1#2\n\
                 \n\
                 2026-11-23T10:16:00.000000Z  forward  success\n  \
                 caller        spiffe://vault.test/payments\n  \
                 origin        10.0.0.9:4000\n  \
                 reason        \"order 7\"\n  \
                 destination   acme\n  \
                 fingerprint   sha256:ab\n  \
                 template      charge\n  \
                 method        POST\n  \
                 path          /v1/charges\n  \
                 result        status 201, 123 bytes\n  \
                 result record w1#4 at 2026-11-23T10:16:01.000000Z\n  \
                 request id    r-2\n  \
                 record        w1#3\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn several_merchants_are_named_on_each_access() {
        let text =
            Report::AuditTraced(trace(None, Some(vec![detokenize("m-1"), forward()]))).to_text();
        assert!(!text.contains("merchant m-1"), "{text}");
        let text =
            Report::AuditTraced(trace(None, Some(vec![detokenize("m-2"), forward()]))).to_text();
        assert!(text.contains("under several merchants"), "{text}");
        assert!(
            text.contains("2026-11-23T10:15:00.000000Z  detokenize  success  merchant m-2\n"),
            "{text}"
        );
        assert!(
            text.contains("2026-11-23T10:16:00.000000Z  forward  success  merchant m-1\n"),
            "{text}"
        );
    }

    #[test]
    fn no_access_and_refusal() {
        let report = Report::AuditTraced(trace(None, Some(vec![])));
        assert_eq!(report.exit_code(), 0);
        assert!(
            report.to_text().ends_with(
                "token tok_1: no detokenize or forward of this token in these exports\n"
            )
        );

        let mut refused = trace(Some("m-1"), None);
        refused.verified.problems.push(vault_audit::Problem {
            kind: vault_audit::ProblemKind::Edited,
            file: "q4.jsonl".into(),
            line: Some(7),
            subjects: vec!["w1#3".into()],
            message: "record w1#3 does not match its hash".into(),
        });
        let report = Report::AuditTraced(refused);
        assert_eq!(report.exit_code(), 1);
        let text = report.to_text();
        assert!(
            text.starts_with("edited: q4.jsonl line 7: record w1#3 does not match its hash\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "no trace of token tok_1 of merchant m-1: the exports do not verify, so what \
                 they say of it cannot be trusted\n"
            ),
            "{text}"
        );
        assert!(!text.contains("access"), "{text}");
        let value = report.to_json().unwrap();
        assert_eq!(value["accesses"], Value::Null);
        assert_eq!(value["verified"]["clean"], false);
        assert_eq!(
            value["verified"]["problems"][0]["subjects"],
            json!(["w1#3"])
        );
    }

    #[test]
    fn json_is_one_object_with_the_verification_and_the_accesses() {
        let report = Report::AuditTraced(trace(None, Some(vec![detokenize("m-1"), forward()])));
        let value = report.to_json().unwrap();
        assert_eq!(value["token"], "tok_1");
        assert_eq!(value["merchant"], Value::Null);
        assert_eq!(
            value["verified"],
            Report::AuditVerified(verified()).to_json().unwrap()
        );
        assert_eq!(value["accesses"][0]["event"], "detokenize");
        assert_eq!(value["accesses"][0]["forward"], Value::Null);
        assert_eq!(
            value["accesses"][1],
            json!({
                "at": "2026-11-23T10:16:00.000000Z",
                "merchant": "m-1",
                "caller": "spiffe://vault.test/payments",
                "origin": "10.0.0.9:4000",
                "event": "forward",
                "outcome": "success",
                "reason": "order 7",
                "detail": "destination=acme fingerprint=sha256:ab template=charge method=POST \
                           path=/v1/charges",
                "request_id": "r-2",
                "record": "w1#3",
                "forward": {
                    "destination": "acme",
                    "fingerprint": "sha256:ab",
                    "template": "charge",
                    "method": "POST",
                    "path": "/v1/charges",
                    "result": "status 201, 123 bytes",
                    "results": [{
                        "at": "2026-11-23T10:16:01.000000Z",
                        "outcome": "success",
                        "status": 201,
                        "bytes": 123,
                        "error": null,
                        "detail": "destination=acme status=201 bytes=123",
                        "record": "w1#4",
                    }],
                },
            })
        );
    }
}
