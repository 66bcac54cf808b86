//! `vaultctl` against an in-process stand-in for `vault.v1.KeyAdminService` and
//! `vault.v1.DestinationAdminService` over real mutual TLS: the library's `run` and the built binary (output, progress lines, exit codes). The real
//! server's end-to-end tests live with vault-server; this one checks the client's side of the
//! contract with canned answers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::pin::Pin;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use serde_json::{Value, json};
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};
use vault_proto::v1::destination_admin_service_server::{
    DestinationAdminService, DestinationAdminServiceServer,
};
use vault_proto::v1::key_admin_service_server::{KeyAdminService, KeyAdminServiceServer};
use vault_proto::v1::*;
use vaultctl::{Cli, Error, Report};

/// What the fake saw: (RPC, merchant, reason) per call.
type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

#[derive(Default)]
struct FakeVault {
    calls: Calls,
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<Progress, Status>> + Send>>;

fn progress(done: u64, remaining: u64, target: &str, finished: bool) -> Progress {
    Progress {
        done,
        remaining,
        target: target.to_owned(),
        finished,
        failed: 0,
    }
}

impl FakeVault {
    fn record<T>(&self, rpc: &str, request: &Request<T>, merchant: &str, reason: &str) {
        // Mutual TLS: the client presented a certificate.
        assert!(request.peer_certs().is_some_and(|certs| !certs.is_empty()));
        self.calls
            .lock()
            .unwrap()
            .push((rpc.to_owned(), merchant.to_owned(), reason.to_owned()));
    }
}

#[tonic::async_trait]
impl KeyAdminService for FakeVault {
    async fn get_key_status(
        &self,
        request: Request<GetKeyStatusRequest>,
    ) -> Result<Response<GetKeyStatusResponse>, Status> {
        self.record("GetKeyStatus", &request, "", "");
        Ok(Response::new(GetKeyStatusResponse {
            kek: "danger-local-file:dev".into(),
            current_kek_id: "dev-kek-2".into(),
            previous_keks: vec!["dev-kek-1".into()],
            keys_to_rewrap: 3,
            dek_rotate_after_uses: 100,
            dek_max_uses: 200,
            dek_rotate_after_days: 0,
            cache: Some(CacheStatus {
                hits: 9,
                misses: 1,
                entries: 2,
                max_entries: 10,
                max_age_secs: 60,
            }),
        }))
    }

    async fn get_merchant_keys(
        &self,
        request: Request<GetMerchantKeysRequest>,
    ) -> Result<Response<GetMerchantKeysResponse>, Status> {
        let merchant = request.get_ref().merchant_id.clone();
        self.record("GetMerchantKeys", &request, &merchant, "");
        match merchant.as_str() {
            "denied" => Err(Status::permission_denied("keys.admin needed for denied")),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Err(Status::internal("should have timed out"))
            }
            _ => Ok(Response::new(GetMerchantKeysResponse {
                keys: vec![KeyVersion {
                    purpose: "dek".into(),
                    version: 1,
                    kek_id: "dev-kek-2".into(),
                    uses: 5,
                    created_at: "2026-01-01T00:00:00Z".into(),
                    tokens: 4,
                }],
                shredded: false,
                pending_shred: None,
            })),
        }
    }

    async fn rotate_dek(
        &self,
        request: Request<RotateDekRequest>,
    ) -> Result<Response<RotateDekResponse>, Status> {
        let RotateDekRequest {
            merchant_id,
            reason,
        } = request.get_ref().clone();
        self.record("RotateDek", &request, &merchant_id, &reason);
        Ok(Response::new(RotateDekResponse { version: 4 }))
    }

    type ReencryptMerchantStream = ProgressStream;

    async fn reencrypt_merchant(
        &self,
        request: Request<ReencryptMerchantRequest>,
    ) -> Result<Response<Self::ReencryptMerchantStream>, Status> {
        let ReencryptMerchantRequest {
            merchant_id,
            reason,
        } = request.get_ref().clone();
        self.record("ReencryptMerchant", &request, &merchant_id, &reason);
        let items: Vec<Result<Progress, Status>> = match merchant_id.as_str() {
            // The job stops without saying it finished.
            "cut" => vec![
                Ok(progress(0, 10, "4", false)),
                Ok(progress(3, 7, "4", false)),
            ],
            // The job fails half-way.
            "fail" => vec![
                Ok(progress(0, 10, "4", false)),
                Ok(progress(5, 5, "4", false)),
                Err(Status::unavailable("KEK unavailable")),
            ],
            _ => (0..=40)
                .step_by(2)
                .map(|done| Ok(progress(done, 40 - done, "4", false)))
                .chain(std::iter::once(Ok(progress(40, 0, "4", true))))
                .collect(),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    type RewrapKeysStream = ProgressStream;

    async fn rewrap_keys(
        &self,
        request: Request<RewrapKeysRequest>,
    ) -> Result<Response<Self::RewrapKeysStream>, Status> {
        let reason = request.get_ref().reason.clone();
        self.record("RewrapKeys", &request, "", &reason);
        let items = vec![
            Ok(progress(0, 3, "dev-kek-2", false)),
            Ok(progress(3, 0, "dev-kek-2", true)),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn request_shred(
        &self,
        request: Request<RequestShredRequest>,
    ) -> Result<Response<RequestShredResponse>, Status> {
        let RequestShredRequest {
            merchant_id,
            reason,
        } = request.get_ref().clone();
        self.record("RequestShred", &request, &merchant_id, &reason);
        Ok(Response::new(RequestShredResponse {
            request: Some(ShredRequest {
                request_id: "req-1".into(),
                merchant_id,
                requested_by: "spiffe://vault.test/admin-1".into(),
                requested_at: "2026-03-01T12:00:00Z".into(),
                reason,
            }),
        }))
    }

    async fn approve_shred(
        &self,
        request: Request<ApproveShredRequest>,
    ) -> Result<Response<ApproveShredResponse>, Status> {
        let ApproveShredRequest {
            merchant_id,
            request_id,
            reason,
        } = request.get_ref().clone();
        self.record("ApproveShred", &request, &merchant_id, &reason);
        if request_id != "req-1" {
            return Err(Status::failed_precondition("no such pending shred request"));
        }
        Ok(Response::new(ApproveShredResponse { keys_destroyed: 2 }))
    }
}

/// The destination administration stand-in: records (RPC, spec/id/name, reason) per call in
/// the same list as [`FakeVault`].
struct FakeDestinations {
    calls: Calls,
}

fn destination_version(id: &str, name: &str, state: &str, spec_json: &str) -> DestinationVersion {
    DestinationVersion {
        id: id.into(),
        name: name.into(),
        fingerprint: "sha256:ab12".into(),
        state: state.into(),
        spec_json: spec_json.into(),
        proposed_by: "spiffe://vault.test/admin-1".into(),
        proposed_at: "2026-03-01T12:00:00Z".into(),
        ..DestinationVersion::default()
    }
}

impl FakeDestinations {
    fn record<T>(&self, rpc: &str, request: &Request<T>, subject: &str, reason: &str) {
        assert!(request.peer_certs().is_some_and(|certs| !certs.is_empty()));
        self.calls
            .lock()
            .unwrap()
            .push((rpc.to_owned(), subject.to_owned(), reason.to_owned()));
    }
}

#[tonic::async_trait]
impl DestinationAdminService for FakeDestinations {
    async fn propose_destination(
        &self,
        request: Request<ProposeDestinationRequest>,
    ) -> Result<Response<DestinationVersion>, Status> {
        let ProposeDestinationRequest { spec_json, reason } = request.get_ref().clone();
        self.record("ProposeDestination", &request, &spec_json, &reason);
        let spec: Value = serde_json::from_str(&spec_json)
            .map_err(|e| Status::invalid_argument(format!("spec_json: {e}")))?;
        let name = spec["name"].as_str().unwrap_or_default();
        Ok(Response::new(destination_version(
            "d-1", name, "proposed", &spec_json,
        )))
    }

    async fn approve_destination(
        &self,
        request: Request<ApproveDestinationRequest>,
    ) -> Result<Response<DestinationVersion>, Status> {
        let ApproveDestinationRequest {
            id,
            reason,
            fingerprint,
        } = request.get_ref().clone();
        self.record("ApproveDestination", &request, &id, &reason);
        if id != "d-1" {
            return Err(Status::failed_precondition(
                "the approver proposed this version",
            ));
        }
        if fingerprint != "sha256:ab12" {
            return Err(Status::failed_precondition(
                "fingerprint: not this version's",
            ));
        }
        Ok(Response::new(DestinationVersion {
            approved_by: "spiffe://vault.test/admin-2".into(),
            approved_at: "2026-03-01T13:00:00Z".into(),
            ..destination_version("d-1", "acme", "in_force", "{}")
        }))
    }

    async fn revoke_destination(
        &self,
        request: Request<RevokeDestinationRequest>,
    ) -> Result<Response<RevokeDestinationResponse>, Status> {
        let RevokeDestinationRequest { name, reason } = request.get_ref().clone();
        self.record("RevokeDestination", &request, &name, &reason);
        if name != "acme" {
            return Err(Status::not_found("no such destination"));
        }
        Ok(Response::new(RevokeDestinationResponse { revoked: 2 }))
    }

    async fn list_destinations(
        &self,
        request: Request<ListDestinationsRequest>,
    ) -> Result<Response<ListDestinationsResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.record("ListDestinations", &request, &name, "");
        let versions = [
            destination_version("d-0", "acme", "superseded", r#"{"name":"acme"}"#),
            destination_version("d-1", "acme", "in_force", r#"{"name":"acme"}"#),
            destination_version("d-2", "beta", "proposed", r#"{"name":"beta"}"#),
        ]
        .into_iter()
        .filter(|v| name.is_empty() || v.name == name)
        .collect();
        Ok(Response::new(ListDestinationsResponse { versions }))
    }
}

/// A running fake vault and a `vaultd dev`-style data directory with its PKI.
struct Fixture {
    dir: tempfile::TempDir,
    addr: String,
    calls: Calls,
}

fn issue(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: Vec<String>,
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(sans).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "fake vault CA");
    ca_params.distinguished_name = dn;
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(pki.join("ca.pem"), ca.pem()).unwrap();
    let (server_cert, server_key) = issue(
        &ca,
        vec!["localhost".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) =
        issue(&ca, vec![], "admin-1", ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(pki.join("admin-1.pem"), client_cert).unwrap();
    std::fs::write(pki.join("admin-1.key"), client_key).unwrap();

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(server_cert, server_key))
        .client_ca_root(Certificate::from_pem(ca.pem()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = FakeVault::default();
    let calls = fake.calls.clone();
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(DestinationAdminServiceServer::new(FakeDestinations {
            calls: calls.clone(),
        }))
        .add_service(KeyAdminServiceServer::new(fake))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    Fixture { dir, addr, calls }
}

impl Fixture {
    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "vaultctl",
            "--addr",
            &self.addr,
            "--dev-dir",
            self.dir.path().to_str().unwrap(),
        ];
        // admin-1 unless the test names another identity.
        if !rest.contains(&"--identity") {
            args.extend(["--identity", "admin-1"]);
        }
        args.extend(rest);
        args
    }

    async fn run(&self, rest: &[&str]) -> Result<Report, Error> {
        let cli = Cli::try_parse_from(self.args(rest)).unwrap();
        vaultctl::run(&cli).await
    }

    /// Runs the built binary; standard error is a pipe, so progress comes as plain lines.
    async fn binary(&self, rest: &[&str]) -> Output {
        let args = self.args(rest);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultctl"))
            .args(args.iter().skip(1))
            .env_clear()
            .output()
            .await
            .unwrap()
    }

    fn calls(&self) -> Vec<(String, String, String)> {
        self.calls.lock().unwrap().clone()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn every_command_makes_its_call_and_reports_the_answer() {
    let vault = start().await;

    let status = vault.run(&["status"]).await.unwrap();
    assert!(matches!(&status, Report::Status(s) if s.current_kek_id == "dev-kek-2"));

    let keys = vault.run(&["keys", "show", "m-1"]).await.unwrap();
    assert!(
        matches!(&keys, Report::MerchantKeys { merchant_id, keys } if merchant_id == "m-1" && keys.keys.len() == 1)
    );

    let rotated = vault
        .run(&["keys", "rotate", "m-1", "--reason", "quarterly"])
        .await
        .unwrap();
    assert_eq!(
        rotated,
        Report::Rotated {
            merchant_id: "m-1".into(),
            version: 4
        }
    );

    let reencrypted = vault
        .run(&["keys", "reencrypt", "m-1", "--reason", "after rotation"])
        .await
        .unwrap();
    assert_eq!(
        reencrypted,
        Report::Reencrypted {
            merchant_id: "m-1".into(),
            tokens: 40,
            dek_version: "4".into()
        }
    );

    let rewrapped = vault
        .run(&["kek", "rewrap", "--reason", "KEK rotation"])
        .await
        .unwrap();
    assert_eq!(
        rewrapped,
        Report::Rewrapped {
            keys: 3,
            kek_id: "dev-kek-2".into()
        }
    );

    let requested = vault
        .run(&["shred", "request", "m-1", "--reason", "contract ended"])
        .await
        .unwrap();
    match &requested {
        Report::ShredRequested {
            request,
            approve_command,
        } => {
            assert_eq!(request.request_id, "req-1");
            // Not the default address, so the command names it.
            assert_eq!(
                approve_command,
                &format!(
                    "vaultctl --addr {} shred approve m-1 --request-id req-1 --reason 'REASON'",
                    vault.addr
                )
            );
        }
        other => panic!("{other:?}"),
    }

    let approved = vault
        .run(&[
            "shred",
            "approve",
            "m-1",
            "--request-id",
            "req-1",
            "--reason",
            "confirmed",
        ])
        .await
        .unwrap();
    assert_eq!(
        approved,
        Report::ShredApproved {
            merchant_id: "m-1".into(),
            request_id: "req-1".into(),
            keys_destroyed: 2
        }
    );

    assert_eq!(
        vault.calls(),
        [
            ("GetKeyStatus", "", ""),
            ("GetMerchantKeys", "m-1", ""),
            ("RotateDek", "m-1", "quarterly"),
            ("ReencryptMerchant", "m-1", "after rotation"),
            ("RewrapKeys", "", "KEK rotation"),
            ("RequestShred", "m-1", "contract ended"),
            ("ApproveShred", "m-1", "confirmed"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
}

#[tokio::test]
async fn refusals_interruptions_and_timeouts_are_errors() {
    let vault = start().await;

    let err = vault.run(&["keys", "show", "denied"]).await.unwrap_err();
    assert_eq!(err.status().map(Status::code), Some(Code::PermissionDenied));
    assert_eq!(err.exit_code(), 1);

    let err = vault
        .run(&["keys", "reencrypt", "cut", "--reason", "r"])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted { done: 3 }), "{err:?}");

    let err = vault
        .run(&["keys", "reencrypt", "fail", "--reason", "r"])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobFailed { done: 5, .. }), "{err:?}");
    assert_eq!(err.status().map(Status::code), Some(Code::Unavailable));

    let started = std::time::Instant::now();
    let err = vault
        .run(&["--timeout-secs", "1", "keys", "show", "slow"])
        .await
        .unwrap_err();
    assert_eq!(err.status().map(Status::code), Some(Code::DeadlineExceeded));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn the_server_name_must_match_the_vault_certificate() {
    let vault = start().await;
    let err = vault
        .run(&["--server-name", "not-the-vault", "status"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not-the-vault"), "{err}");
    assert_eq!(err.status().map(Status::code), Some(Code::Unavailable));
    assert!(vault.calls().is_empty());
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let vault = start().await;
    let other = start().await;
    // The right CA for `vault`, but `other`'s client certificate and key.
    let pki = vault.dir.path().join("pki");
    let other_pki = other.dir.path().join("pki");
    for file in ["admin-1.pem", "admin-1.key"] {
        std::fs::copy(other_pki.join(file), pki.join(format!("x-{file}"))).unwrap();
    }
    let err = vault
        .run(&["--identity", "x-admin-1", "status"])
        .await
        .unwrap_err();
    // The TLS alert is printed, not just "transport error".
    assert!(err.to_string().contains("alert"), "{err}");
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(vault.calls().is_empty());
}

#[tokio::test]
async fn the_binary_prints_text_json_progress_and_exit_codes() {
    let vault = start().await;

    let out = vault
        .binary(&["keys", "reencrypt", "m-1", "--reason", "move"])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "re-encrypted 40 tokens to DEK version 4\n"
    );
    let progress = text(&out.stderr);
    let lines: Vec<&str> = progress.lines().collect();
    assert_eq!(lines.len(), 11, "{progress}");
    assert_eq!(
        lines.first(),
        Some(&"re-encrypting merchant m-1: 0% (0 of 40)")
    );
    assert_eq!(
        lines.last(),
        Some(&"re-encrypting merchant m-1: finished (40 of 40)")
    );

    let out = vault
        .binary(&["--output", "json", "kek", "rewrap", "--reason", "rotate"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value, json!({ "keys_rewrapped": 3, "kek_id": "dev-kek-2" }));

    let out = vault.binary(&["status", "--output", "json"]).await;
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["cache"]["hit_ratio"], 0.9);

    let out = vault
        .binary(&["shred", "request", "m-1", "--reason", "contract ended"])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains(" shred approve m-1 --request-id req-1 --reason 'REASON'\n"),
        "{out:?}"
    );

    let out = vault.binary(&["keys", "show", "denied"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vaultctl: PERMISSION_DENIED: keys.admin needed for denied\n"
    );
    assert!(out.stdout.is_empty());

    let out = vault
        .binary(&["keys", "reencrypt", "cut", "--reason", "r"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).ends_with(
            "vaultctl: job interrupted after 3 items; run the same command again to resume\n"
        ),
        "{out:?}"
    );

    let out = vault.binary(&["--identity", "nobody", "status"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("vaultctl: cannot read client certificate "),
        "{out:?}"
    );

    let out = vault.binary(&["keys", "rotate", "m-1"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test]
async fn destination_commands_make_their_calls() {
    let vault = start().await;
    let dir = vault.dir.path();
    std::fs::write(
        dir.join("acme-ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    )
    .unwrap();
    let spec = dir.join("acme.toml");
    std::fs::write(
        &spec,
        "name = \"acme\"\nbase_url = \"https://psp.example\"\n\
         trust_anchor_file = \"acme-ca.pem\"\nmethods = [\"POST\"]\ntimeout_ms = 10000\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();

    let proposed = vault
        .run(&["destination", "propose", spec, "--reason", "onboard"])
        .await
        .unwrap();
    match &proposed {
        Report::DestinationProposed {
            version,
            approve_command,
        } => {
            assert_eq!(
                (version.id.as_str(), version.name.as_str()),
                ("d-1", "acme")
            );
            assert_eq!(
                approve_command,
                &format!(
                    "vaultctl --addr {} destination approve d-1 --fingerprint sha256:ab12 \
                     --reason 'REASON'",
                    vault.addr
                )
            );
        }
        other => panic!("{other:?}"),
    }
    let sent: Value = serde_json::from_str(&vault.calls()[0].1).unwrap();
    assert_eq!(
        sent,
        json!({
            "name": "acme",
            "base_url": "https://psp.example",
            "trust_anchor_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n",
            "methods": ["POST"],
            "timeout_ms": 10000,
        })
    );

    let approved = vault
        .run(&[
            "destination",
            "approve",
            "d-1",
            "--fingerprint",
            "sha256:ab12",
            "--reason",
            "reviewed",
        ])
        .await
        .unwrap();
    assert!(matches!(&approved, Report::DestinationApproved(v) if v.state == "in_force"));
    let revoked = vault
        .run(&["destination", "revoke", "acme", "--reason", "ended"])
        .await
        .unwrap();
    assert_eq!(
        revoked,
        Report::DestinationRevoked {
            name: "acme".into(),
            revoked: 2
        }
    );
    let listed = vault.run(&["destination", "list", "acme"]).await.unwrap();
    assert!(
        matches!(&listed, Report::Destinations { versions, spec: false, .. } if versions.len() == 2)
    );

    let calls: Vec<(String, String)> = vault
        .calls()
        .into_iter()
        .skip(1)
        .map(|(rpc, subject, reason)| (format!("{rpc} {subject}"), reason))
        .collect();
    assert_eq!(
        calls,
        [
            ("ApproveDestination d-1", "reviewed"),
            ("RevokeDestination acme", "ended"),
            ("ListDestinations acme", ""),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );

    // The binary: text, JSON, refusals (exit 1) and a bad spec (exit 2, no call).
    let out = vault
        .binary(&["destination", "propose", spec, "--reason", "onboard"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("proposed destination acme\nid:          d-1\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" destination approve d-1 --fingerprint sha256:ab12 --reason 'REASON'\n"),
        "{stdout}"
    );

    let out = vault
        .binary(&["destination", "list", "--spec", "--output", "json"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["versions"].as_array().map(Vec::len), Some(3));
    assert_eq!(value["versions"][2]["spec"], json!({ "name": "beta" }));

    let out = vault
        .binary(&[
            "destination",
            "approve",
            "d-9",
            "--fingerprint",
            "sha256:ab12",
            "--reason",
            "mine",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "vaultctl: FAILED_PRECONDITION: the approver proposed this version\n"
    );
    let out = vault
        .binary(&[
            "destination",
            "revoke",
            "nope",
            "--reason",
            "r",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());

    let before = vault.calls().len();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "name = 1").unwrap();
    let out = vault
        .binary(&[
            "destination",
            "propose",
            bad.to_str().unwrap(),
            "--reason",
            "r",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("is not valid JSON"), "{out:?}");
    assert_eq!(vault.calls().len(), before);
}
