//! Forwarding and destinations, against the in-memory store and a recording egress: dual
//! control, versions, and no forward without its first audit record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::*;
use crate::forward::admin::VersionState;
use crate::forward::{
    DestinationSpec, Egress, EgressFailure, ForwardCommand, OutboundRequest, ProcessorResponse,
};
use crate::testing::StoreFault;

/// An egress that records what it was asked to send and answers with the card echoed.
#[derive(Default)]
struct RecordingEgress {
    sent: Mutex<Vec<(String, Vec<u8>)>>,
}

#[async_trait::async_trait]
impl Egress for RecordingEgress {
    fn check(&self, _spec: &DestinationSpec) -> Result<(), crate::InvalidArgument> {
        Ok(())
    }

    async fn send(&self, request: OutboundRequest) -> Result<ProcessorResponse, EgressFailure> {
        let body = request.body.to_vec();
        self.sent.lock().unwrap().push((request.path, body.clone()));
        Ok(ProcessorResponse {
            status: 200,
            headers: vec![("x-echo".into(), body.clone())],
            body: Zeroizing::new(body),
        })
    }
}

fn spec_json(name: &str, amount_field: &str) -> String {
    serde_json::json!({
        "name": name,
        "base_url": "https://psp.example",
        "trust_anchor_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "methods": ["POST"],
        "path_patterns": ["/v1/charges"],
        "templates": {"charge": {"content_type": "json",
            "body": format!("{{\"number\":\"{{{{card.number}}}}\",\"{amount_field}\":{{{{var.amount}}}}}}")}},
        "timeout_ms": 1000,
        "max_response_bytes": 4096
    })
    .to_string()
}

fn world() -> (World, Arc<RecordingEgress>) {
    let egress = Arc::new(RecordingEgress::default());
    let world = World::build(|vault| vault.with_egress(egress.clone()));
    (world, egress)
}

fn command(token: &str) -> ForwardCommand {
    ForwardCommand {
        merchant_id: M1.into(),
        token: token.into(),
        reason: "order 42".into(),
        destination: "acme".into(),
        template: "charge".into(),
        method: "POST".into(),
        path: "/v1/charges".into(),
        variables: BTreeMap::from([("amount".to_owned(), "100".to_owned())]),
        headers: Vec::new(),
    }
}

#[tokio::test]
async fn a_destination_needs_two_admins_and_a_change_is_a_new_version() {
    let (world, _) = world();
    let v1 = world
        .vault
        .propose_destination(&ctx(ADMIN_A), &spec_json("acme", "amount"), "onboard")
        .await
        .unwrap();
    let own = world
        .vault
        .approve_destination(&ctx(ADMIN_A), &v1.id, &v1.fingerprint, "self")
        .await
        .unwrap_err();
    assert!(matches!(own, VaultError::FailedPrecondition(m) if m.contains("dual control")));
    let refused = world
        .vault
        .propose_destination(&ctx(PAYMENTS), &spec_json("evil", "amount"), "mine")
        .await
        .unwrap_err();
    assert!(matches!(refused, VaultError::PermissionDenied { .. }));
    // The approver names what they reviewed: another fingerprint, or none, approves nothing.
    let other = format!("sha256:{}", "0".repeat(64));
    for (fingerprint, field) in [(other.as_str(), None), ("", Some("fingerprint"))] {
        let error = world
            .vault
            .approve_destination(&ctx(ADMIN_B), &v1.id, fingerprint, "reviewed")
            .await
            .unwrap_err();
        match (error, field) {
            (VaultError::FailedPrecondition(m), None) => assert!(m.starts_with("fingerprint")),
            (VaultError::InvalidArgument(invalid), Some(field)) => {
                assert_eq!(invalid.field, field);
            }
            (error, _) => panic!("{error:?}"),
        }
    }
    world
        .vault
        .approve_destination(&ctx(ADMIN_B), &v1.id, &v1.fingerprint, "reviewed")
        .await
        .unwrap();
    let v2 = world
        .vault
        .propose_destination(&ctx(ADMIN_B), &spec_json("acme", "total"), "new field")
        .await
        .unwrap();
    assert_ne!(
        v1.fingerprint, v2.fingerprint,
        "the fingerprint covers the templates"
    );
    world
        .vault
        .approve_destination(&ctx(ADMIN_A), &v2.id, &v2.fingerprint, "reviewed")
        .await
        .unwrap();
    let states: Vec<(String, VersionState)> = world
        .vault
        .list_destinations(&ctx(ADMIN_A), Some("acme"))
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.stored.id, v.state))
        .collect();
    assert_eq!(
        states,
        [
            (v1.id.clone(), VersionState::Superseded),
            (v2.id.clone(), VersionState::InForce)
        ]
    );
    // Each step was one record, naming the version and its fingerprint.
    let records = world.records("destinations.admin");
    assert!(
        records
            .iter()
            .any(|r| r.detail.as_deref().is_some_and(|d| d.contains(&format!(
                "destination.approve destination=acme id={}",
                v2.id
            )) && d.contains(&v2.fingerprint)))
    );
    assert_eq!(
        world
            .vault
            .revoke_destination(&ctx(ADMIN_B), "acme", "ended")
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn no_first_record_no_forward() {
    let (world, egress) = world();
    let v1 = world
        .vault
        .propose_destination(&ctx(ADMIN_A), &spec_json("acme", "amount"), "onboard")
        .await
        .unwrap();
    world
        .vault
        .approve_destination(&ctx(ADMIN_B), &v1.id, &v1.fingerprint, "reviewed")
        .await
        .unwrap();
    let pan = cards(1).remove(0);
    let token = world.tokenize(M1, &pan).await.unwrap().token;
    let forwarded = world
        .vault
        .forward(&ctx(PAYMENTS), command(token.as_str()))
        .await
        .unwrap();
    assert_eq!(forwarded.status, 200);
    let masked = String::from_utf8(forwarded.body).unwrap();
    assert!(
        !masked.contains(&pan) && masked.contains(&pan[pan.len() - 4..]),
        "{masked}"
    );
    assert!(!String::from_utf8_lossy(&forwarded.headers[0].1).contains(&pan));
    assert_eq!(world.records("forward").len(), 1);
    assert_eq!(world.records("forward.result").len(), 1);
    world.assert_no_pan_in_audit(&pan);

    // The audit trail refuses writes: nothing is sent.
    world.store.set_fault(StoreFault::AuditWrites);
    let refused = world
        .vault
        .forward(&ctx(PAYMENTS), command(token.as_str()))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, VaultError::AuditUnavailable(_)),
        "{refused:?}"
    );
    assert_eq!(
        egress.sent.lock().unwrap().len(),
        1,
        "nothing left the vault"
    );
}
