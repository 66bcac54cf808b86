//! The front door: what reaches the vault before a caller is identified (TLS handshakes).

use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;

/// Opens `n` TCP connections to `addr` from `source` and never sends a byte.
async fn idle_connections(source: &str, addr: &str, n: usize) -> Vec<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        held.push(socket.connect(addr).await.unwrap());
    }
    held
}

/// An attacker on 127.0.0.2 holding idle connections (it never sends a ClientHello) cannot
/// stop a client on 127.0.0.1 from connecting and being served. It holds four times the global
/// cap, and the handshake deadline is long, so without the per-source cap the attacker would
/// hold every place until its connections time out.
#[tokio::test]
async fn idle_connections_from_one_source_do_not_lock_out_another() {
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    // These lines land in `[tls]`: the harness writes `keys` right after it.
    let tls = "handshake_timeout_ms = 60000\nmax_handshakes = 8\nmax_handshakes_per_source = 4\n";
    let vault = TestVault::start_in(
        dir,
        "url = \"sqlite:vault.db\"\n",
        &format!("{tls}{DEV_KEK}"),
        &[],
        "info",
    )
    .await;

    let held = idle_connections("127.0.0.2", &vault.addr, 32).await;
    // The vault has taken up the attacker's connections past its four places (the client's
    // connection below queues behind all of them).
    assert!(
        wait_for_log(
            &vault,
            "too many tls handshakes in progress from this source"
        )
        .await,
        "the attacker's fifth connection is closed at once"
    );
    assert!(
        !vault
            .logs()
            .contains("too many tls handshakes in progress;")
    );

    let token = vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    assert!(
        token.starts_with("tok_"),
        "the client on 127.0.0.1 is served"
    );
    drop(held);
}

/// Connections refused before a caller is known reach the audit trail: counted by reason and
/// source, and written as one `tls.refused` summary (here at shutdown; also once per
/// `record_refusals_every_secs`), so an auditor sees failed access attempts and a flood adds one
/// record per interval, not one per attempt.
#[tokio::test]
async fn refused_connections_are_summarized_in_the_audit_trail() {
    let vault = TestVault::start().await;
    // Three certificates from another CA, from 127.0.0.1.
    let rogue_ca = vault_server::pki::DevCa::generate("rogue CA").unwrap();
    let rogue = rogue_ca
        .issue_client(Some("gateway"), Some(GATEWAY))
        .unwrap();
    for _ in 0..3 {
        let mut client = connect(
            &vault.addr,
            &vault.pki.ca_pem,
            Some((rogue.cert_pem.as_str(), rogue.key_pem.as_str())),
        )
        .await;
        assert!(
            client
                .tokenize(tokenize_request("m1", "4111111111111111"))
                .await
                .is_err()
        );
    }
    // Two connections from 127.0.0.3 that send something other than TLS.
    for mut garbage in idle_connections("127.0.0.3", &vault.addr, 2).await {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = garbage.read_to_end(&mut rest).await;
    }
    // Every refusal is logged as it happens (and counted right after).
    assert!(wait_for_logs(&vault, "tls handshake refused", 5).await);
    let db = vault.db_path();
    let _dir = vault.stop();

    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT caller, origin, outcome, detail FROM audit_log WHERE operation = 'tls.refused'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (caller, origin, outcome, detail) = &rows[0];
    assert_eq!((caller.as_str(), origin.as_str()), ("vaultd", "vaultd"));
    assert_eq!(outcome, "unauthenticated");
    let detail = detail.as_deref().unwrap_or_default();
    // By reason: certificates from another CA, then connections that never spoke TLS.
    assert!(
        detail.contains(
            "handshake refused: certificate not valid 3 (from 127.0.0.1 3); \
             handshake refused 2 (from 127.0.0.3 2)"
        ),
        "{detail}"
    );
    assert!(!detail.contains("4111"), "{detail}");
    // The summary carries every PCI DSS 10.2.2 field, like any record.
    assert_pci_fields(&db);
}

fn metadata_request() -> vault_proto::v1::GetTokenMetadataRequest {
    vault_proto::v1::GetTokenMetadataRequest {
        merchant_id: "m1".to_owned(),
        token: "tok_ZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
    }
}

/// `[tls] client_crls`: a revoked client certificate is refused at the handshake; a new CRL
/// (SIGHUP here; a changed file is picked up within 5 s too) takes effect without a restart
/// and closes the connections already open under a certificate it revokes, while other
/// callers go on; a CRL past its nextUpdate refuses everyone it covers (fail closed).
#[tokio::test]
async fn revoked_certificates_are_refused_and_their_open_connections_closed_on_reload() {
    let vault = TestVault::start().await;
    let crl = vault.dir.path().join("pki/crl.pem");
    std::fs::write(&crl, vault.pki.revocation_list(&["payments"], 1, 30)).unwrap();
    let vault = vault
        .restart_with(
            "url = \"sqlite:vault.db\"\n",
            &format!("client_crls = [\"pki/crl.pem\"]\n{DEV_KEK}"),
        )
        .await;

    let status = vault
        .client("payments")
        .await
        .get_token_metadata(metadata_request())
        .await
        .unwrap_err();
    assert!(
        refused_by_transport(status.code()),
        "revoked at start: {status:?}"
    );

    // The gateway is served and keeps its connection open; so does the auditor's client.
    let mut gateway = vault.client("gateway").await;
    gateway
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap();
    let mut cn_only = vault.client("cn-only").await;
    let answer = cn_only.get_token_metadata(metadata_request()).await;
    assert_eq!(answer.unwrap_err().code(), tonic::Code::NotFound);

    // The gateway's certificate is revoked: its open connection is closed, a new one refused.
    std::fs::write(
        &crl,
        vault.pki.revocation_list(&["payments", "gateway"], 2, 30),
    )
    .unwrap();
    sighup(&vault);
    assert!(wait_for_logs(&vault, "tls settings reloaded", 1).await);
    assert!(vault.logs().contains("closed=1"), "{}", vault.logs());
    let status = gateway
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap_err();
    assert!(
        refused_by_transport(status.code()),
        "revoked on reload: {status:?}"
    );
    let answer = cn_only.get_token_metadata(metadata_request()).await;
    assert_eq!(
        answer.unwrap_err().code(),
        tonic::Code::NotFound,
        "a caller not revoked keeps its connection"
    );

    // A stale CRL refuses every certificate it covers until a fresh one is in place.
    std::fs::write(&crl, vault.pki.revocation_list(&[], 3, -1)).unwrap();
    sighup(&vault);
    assert!(wait_for_logs(&vault, "tls settings reloaded", 2).await);
    let status = vault
        .client("auditor")
        .await
        .get_token_metadata(metadata_request())
        .await
        .unwrap_err();
    assert!(refused_by_transport(status.code()), "stale CRL: {status:?}");
}
