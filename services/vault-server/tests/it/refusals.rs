//! Calls the vault must refuse, with the right status, an audit record, and no echo of input.

use tonic::Code;
use vault_proto::v1 as pb;
use vault_server::pki::DevCa;

use crate::harness::*;

/// Calls the vault presenting `identity` (or no certificate) and checks the TLS handshake is
/// refused: the call fails in the transport, the server logs `log_needle`, nothing is stored.
async fn assert_refused_at_handshake(
    vault: &TestVault,
    identity: Option<(&str, &str)>,
    log_needle: &str,
) {
    let mut client = connect(&vault.addr, &vault.pki.ca_pem, identity).await;
    // TLS 1.3: the client finishes its side of the handshake before the server refuses it, so
    // the refusal shows on the first call.
    let status = client
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap_err();
    assert!(refused_by_transport(status.code()), "{status:?}");
    assert!(wait_for_log(vault, log_needle).await, "{log_needle}");
    assert_eq!(vault.token_count().await, 0);
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let vault = TestVault::start().await;
    assert_refused_at_handshake(&vault, None, "peer sent no certificates").await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let vault = TestVault::start().await;
    let rogue_ca = DevCa::generate("rogue CA").unwrap();
    let rogue = rogue_ca
        .issue_client(Some("gateway"), Some(GATEWAY))
        .unwrap();
    let identity = Some((rogue.cert_pem.as_str(), rogue.key_pem.as_str()));
    assert_refused_at_handshake(&vault, identity, "tls handshake refused").await;
}

#[tokio::test]
async fn gateway_may_not_detokenize_and_the_denial_is_audited() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let token = vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    let status = gateway
        .detokenize(detokenize_request("m1", &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(!status.message().contains("4111"));
    let id = request_id(status.metadata());
    let rows = audit_rows(&vault.db().await, &id).await;
    assert_eq!(rows.len(), 1);
    let (caller, peer, operation, merchant, audited_token, outcome, reason) = &rows[0];
    assert_eq!(caller, GATEWAY);
    assert!(peer.as_deref().is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert_eq!(operation, "detokenize");
    assert_eq!(merchant.as_deref(), Some("m1"));
    assert_eq!(audited_token.as_deref(), Some(token.as_str()));
    assert_eq!(outcome, "denied");
    assert_eq!(reason.as_deref(), Some("capture order 1001"));

    // The auditor has no card operations at all.
    let mut auditor = vault.client("auditor").await;
    let status = auditor
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn detokenize_needs_a_reason_without_card_numbers() {
    let vault = TestVault::start().await;
    let token = vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    let mut payments = vault.client("payments").await;
    for (reason, expect) in [
        ("", "reason: is required"),
        ("   ", "reason: is required"),
        (
            "refund card 4111 1111 1111 1111",
            "reason: must not contain a card number",
        ),
    ] {
        let mut request = detokenize_request("m1", &token);
        request.reason = reason.to_owned();
        let status = payments.detokenize(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), expect);
        let rows = audit_rows(&vault.db().await, &request_id(status.metadata())).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].5, "invalid_argument");
        assert_eq!(rows[0].6, None, "a refused reason is not stored");
    }
}

#[tokio::test]
async fn unknown_token_is_not_found() {
    let vault = TestVault::start().await;
    let mut payments = vault.client("payments").await;
    let status = payments
        .detokenize(detokenize_request("m1", "tok_ZZZZZZZZZZZZZZZZZZZZZZ"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let rows = audit_rows(&vault.db().await, &request_id(status.metadata())).await;
    assert_eq!(rows[0].5, "not_found");
}

#[tokio::test]
async fn bad_pans_are_invalid_argument_without_their_digits() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let long = "4".repeat(10 * 1024);
    for pan in [
        "4111abcd11111111",
        "41111111111",
        "41111111111111111110",
        "4111111111111112",
        "",
        long.as_str(),
    ] {
        let status = gateway
            .tokenize(tokenize_request("m1", pan))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().starts_with("pan: "),
            "{}",
            status.message()
        );
        assert!(
            !status.message().chars().any(|c| c.is_ascii_digit()),
            "{}",
            status.message()
        );
        let rows = audit_rows(&vault.db().await, &request_id(status.metadata())).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].5, "invalid_argument");
    }
    // Other fields name themselves too.
    let mut request = tokenize_request("m1", "4111111111111111");
    request.exp_month = Some(13);
    let status = gateway.tokenize(request).await.unwrap_err();
    assert_eq!(
        status.message(),
        "exp_month: must be a month from one to twelve"
    );
    let mut request = tokenize_request("bad merchant!", "4111111111111111");
    request.token_format = 7;
    let status = gateway.tokenize(request).await.unwrap_err();
    assert!(status.message().starts_with("merchant_id: "));
    let mut request = tokenize_request("m1", "4111111111111111");
    request.token_format = 7;
    let status = gateway.tokenize(request).await.unwrap_err();
    assert!(status.message().starts_with("token_format: "));
    assert_eq!(vault.token_count().await, 0, "nothing half-written");
}

/// A TLS handshake with only the given protocol version, presenting the gateway certificate.
async fn handshake_with(
    vault: &TestVault,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::io::Result<()> {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(vault.pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let gateway = vault.pki.client("gateway");
    let chain = vec![CertificateDer::from_pem_slice(gateway.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(gateway.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(&vault.addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // TLS 1.3 client auth completes after the client's Finished: read to see the verdict.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 9];
    tls.read_exact(&mut buf).await.map(|_| ())
}

#[tokio::test]
async fn only_tls_1_3_is_accepted() {
    let vault = TestVault::start().await;
    assert!(
        handshake_with(&vault, &rustls::version::TLS13)
            .await
            .is_ok(),
        "control: TLS 1.3 with a valid certificate connects"
    );
    let refused = handshake_with(&vault, &rustls::version::TLS12).await;
    assert!(refused.is_err(), "TLS 1.2 must be refused");
}

/// Calls `vault` with a certificate for `common_name` and `uris` that the test CA signed, and
/// checks it names no caller: UNAUTHENTICATED, one audit record under the certificate's digest
/// (never the name it claims), nothing stored.
async fn assert_unidentified(vault: &TestVault, common_name: Option<&str>, uris: &[&str]) {
    let issued = vault.pki.issue(common_name, uris);
    let mut client = connect(
        &vault.addr,
        &vault.pki.ca_pem,
        Some((issued.cert_pem.as_str(), issued.key_pem.as_str())),
    )
    .await;
    let status = client
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap_err();
    let named = format!("{common_name:?} {uris:?}");
    assert_eq!(status.code(), Code::Unauthenticated, "{named}: {status:?}");
    let rows = audit_rows(&vault.db().await, &request_id(status.metadata())).await;
    assert_eq!(rows.len(), 1, "{named}");
    assert!(
        rows[0].0.starts_with("unidentified-certificate:sha256:"),
        "{named}: recorded as {}",
        rows[0].0
    );
    assert_eq!(rows[0].5, "unauthenticated", "{named}");
    assert_eq!(vault.token_count().await, 0, "{named}");
}

/// Certificates the CA signed that name no single well-formed identity: two SPIFFE IDs that
/// differ in the case of their scheme, a SPIFFE ID in upper case or with a path that is not
/// one, a CN with a space at either end, and CNs claiming the names the vault records its own
/// events and unidentified callers under. Each would otherwise be a caller the policy knows,
/// or one an auditor could mistake for the vault.
#[tokio::test]
async fn certificates_naming_no_single_well_formed_identity_are_unauthenticated() {
    let vault = TestVault::start().await;
    let refused: [(Option<&str>, &[&str]); 10] = [
        (Some("payments"), &[PAYMENTS, "SPIFFE://vault.test/gateway"]),
        (Some("gateway"), &["SPIFFE://vault.test/gateway"]),
        (Some("gateway"), &["spiffe://vault.test/gateway/"]),
        (Some("gateway"), &["spiffe://VAULT.test/gateway"]),
        (Some(" cn-only"), &[]),
        (Some("cn-only "), &[]),
        (Some("vaultd"), &[]),
        (Some("VaultD"), &[]),
        (Some("no-certificate"), &[]),
        (Some("unidentified-certificate:sha256:00"), &[]),
    ];
    for (common_name, uris) in refused {
        assert_unidentified(&vault, common_name, uris).await;
    }
    // The same CA's well-formed certificates still work.
    let mut cn_only = vault.client("cn-only").await;
    let status = cn_only
        .get_token_metadata(pb::GetTokenMetadataRequest {
            merchant_id: "m1".to_owned(),
            token: "tok_ZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

/// With `[identity] cn_fallback = false` a CN names no caller, even one the policy once
/// listed; SPIFFE IDs still do.
#[tokio::test]
async fn without_the_cn_fallback_only_spiffe_ids_name_callers() {
    let vault = TestVault::start().await;
    let policy = POLICY.replace(
        "[[caller]]\nidentity = \"cn-only\"\noperations = [\"metadata\"]\nmerchants = [\"*\"]\n",
        "",
    );
    assert!(!policy.contains("cn-only"), "the policy's CN entry is gone");
    std::fs::write(vault.dir.path().join("policy.toml"), policy).unwrap();
    let vault = vault
        .restart_with(
            "url = \"sqlite:vault.db\"\n",
            &format!("{DEV_KEK}[identity]\ncn_fallback = false\n"),
        )
        .await;
    assert_unidentified(&vault, Some("cn-only"), &[]).await;
    let token = vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    assert!(!token.is_empty());
}

#[tokio::test]
async fn certificate_without_identity_is_unauthenticated_and_audited() {
    let vault = TestVault::start().await;
    let mut anonymous = vault.client("anonymous").await;
    let status = anonymous
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let rows = audit_rows(&vault.db().await, &request_id(status.metadata())).await;
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].0.starts_with("unidentified-certificate:sha256:"),
        "{}",
        rows[0].0
    );
    assert_eq!(rows[0].2, "tokenize");
    assert_eq!(rows[0].5, "unauthenticated");
    assert_eq!(vault.token_count().await, 0);
}
