//! The compose stack (`deploy/compose/`), brought up the way docs/operations.md tells an
//! operator to: `deploy/compose/up` (two replicas, PostgreSQL, OpenBao Transit, Prometheus).
//! A round trip on each replica, Prometheus scraping both, the server certificate rotated
//! under load without a failed call, and the audit trail exported and verified.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::container::{image, podman, podman_ok, repo};
use crate::harness::*;

/// podman-compose: `$PODMAN_COMPOSE`, which scripts/test sets. Fails with how to get it.
fn podman_compose() -> String {
    let found = std::env::var("PODMAN_COMPOSE").unwrap_or_default();
    assert!(
        !found.is_empty() && Path::new(&found).exists(),
        "PODMAN_COMPOSE is not set to podman-compose: run the suite with scripts/test, which \
         installs it (PyPI podman-compose==1.6.0) into target/test-tools/venv"
    );
    found
}

/// The dependencies' image (PostgreSQL, OpenBao, Prometheus): `$VAULT_TEST_DEPS_IMAGE`.
fn deps_image() -> String {
    let tag = std::env::var("VAULT_TEST_DEPS_IMAGE").unwrap_or_default();
    assert!(
        !tag.is_empty() && podman(&["image", "exists", &tag]).status.success(),
        "VAULT_TEST_DEPS_IMAGE is not set to a built image: run the suite with scripts/test, \
         which builds it with deploy/compose/images/build (as root: debootstrap)"
    );
    tag
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A compose project of this test's own, taken down with its volumes when dropped.
struct Stack {
    project: String,
    state: PathBuf,
    env: Vec<(String, String)>,
    vault_1: String,
    vault_2: String,
    prometheus: String,
}

impl Stack {
    fn script(&self, script: &str, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(repo().join("deploy/compose").join(script));
        command.args(args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.output().unwrap()
    }

    fn up(state: &Path) -> Self {
        let project = format!("cvtest{}", std::process::id());
        let (p1, p2, p3) = (free_port(), free_port(), free_port());
        let env = vec![
            ("VAULT_IMAGE".to_owned(), image()),
            ("DEPS_IMAGE".to_owned(), deps_image()),
            ("PODMAN_COMPOSE".to_owned(), podman_compose()),
            ("COMPOSE_PROJECT".to_owned(), project.clone()),
            (
                "VAULT_COMPOSE_STATE".to_owned(),
                state.display().to_string(),
            ),
            ("VAULT_1_PORT".to_owned(), p1.to_string()),
            ("VAULT_2_PORT".to_owned(), p2.to_string()),
            ("PROMETHEUS_PORT".to_owned(), p3.to_string()),
        ];
        let stack = Stack {
            project,
            state: state.to_owned(),
            env,
            vault_1: format!("127.0.0.1:{p1}"),
            vault_2: format!("127.0.0.1:{p2}"),
            prometheus: format!("127.0.0.1:{p3}"),
        };
        let up = stack.script("up", &[&state.to_string_lossy()]);
        assert!(
            up.status.success(),
            "deploy/compose/up failed:\n{}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
        stack
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn logs(&self) -> String {
        ["vault-1", "vault-2", "postgres", "openbao", "prometheus"]
            .iter()
            .map(|service| {
                let out = podman(&["logs", &self.container(service)]);
                format!(
                    "== {service}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .collect()
    }

    async fn client(&self, addr: &str, name: &str) -> TokenServiceClient {
        let clients = self.state.join("clients");
        let read = |file: String| std::fs::read_to_string(clients.join(file)).unwrap();
        connect(
            addr,
            &read("ca.pem".to_owned()),
            Some((&read(format!("{name}.pem")), &read(format!("{name}.key")))),
        )
        .await
    }

    /// The serial number of the certificate a new TLS connection to `addr` is shown.
    fn served_serial(&self, addr: &str) -> String {
        let clients = self.state.join("clients");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo | openssl s_client -connect {addr} -CAfile {c}/ca.pem -cert {c}/gateway.pem \
                 -key {c}/gateway.key 2>/dev/null | openssl x509 -noout -serial",
                c = clients.display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.script("down", &["--volumes"]);
    }
}

type TokenServiceClient =
    vault_proto::v1::token_service_client::TokenServiceClient<tonic::transport::Channel>;

fn file_serial(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn the_compose_stack_serves_both_replicas_rotates_its_certificate_and_exports_its_trail() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let stack = Stack::up(&state);

    // A round trip on each replica, and across them (one PostgreSQL, one KEK).
    let mut tokens = Vec::new();
    for (made_on, read_on) in [
        (&stack.vault_1, &stack.vault_2),
        (&stack.vault_2, &stack.vault_1),
    ] {
        let pan = random_pan("5");
        let mut gateway = stack.client(made_on, "gateway").await;
        let token = gateway
            .tokenize(tokenize_request("m-compose", &pan))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()))
            .into_inner()
            .token;
        for addr in [made_on, read_on] {
            let mut payments = stack.client(addr, "payments").await;
            let back = payments
                .detokenize(detokenize_request("m-compose", &token))
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()))
                .into_inner()
                .take_pan();
            assert_eq!(back, pan);
        }
        tokens.push((token, pan));
    }

    // The replicas' database role uses rows but does not own the schema: it cannot drop the
    // audit log's append-only guard (the migrations ran as the owner).
    let dropped = podman(&[
        "exec",
        &stack.container("postgres"),
        "sh",
        "-c",
        "PGPASSWORD=\"$(cat /run/pg/pg-password)\" psql --no-psqlrc -h postgres -U vault \
         -d vault -v ON_ERROR_STOP=1 -c 'DROP TRIGGER audit_log_guard ON audit_log'",
    ]);
    let said = String::from_utf8_lossy(&dropped.stderr).into_owned();
    assert!(
        !dropped.status.success(),
        "the replicas' role dropped a trigger"
    );
    assert!(said.contains("must be owner"), "{said}");

    // Prometheus scrapes both replicas' metrics listeners over the stack's network.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http("GET", &stack.prometheus, "/api/v1/targets").await;
        let up = body.matches("\"health\":\"up\"").count();
        if status == 200 && up == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "targets not up: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Rotate the server certificate under load: one caller keeps its connection, another
    // connects afresh for every call. Not one call fails, and new connections see the new
    // certificate.
    let old_serial = stack.served_serial(&stack.vault_1);
    assert_eq!(
        old_serial,
        file_serial(&state.join("vault/tls/server.pem")),
        "the replicas serve the certificate setup issued"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for fresh_connections in [false, true] {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let addr = stack.vault_1.clone();
        let clients = state.join("clients");
        let kept = stack.client(&addr, "gateway").await;
        load.push(tokio::spawn(async move {
            let read = |file: &str| std::fs::read_to_string(clients.join(file)).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let mut client = if fresh_connections {
                    connect(
                        &addr,
                        &read("ca.pem"),
                        Some((&read("gateway.pem"), &read("gateway.key"))),
                    )
                    .await
                } else {
                    kept.clone()
                };
                match client
                    .tokenize(tokenize_request("m-rotate", &random_pan("4")))
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(status) => {
                        eprintln!("call failed during rotation: {status:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotated = stack.script("setup", &["rotate-server-cert", &state.to_string_lossy()]);
    assert!(rotated.status.success(), "{rotated:?}");
    podman_ok(&[
        "kill",
        "--signal",
        "HUP",
        &stack.container("vault-1"),
        &stack.container("vault-2"),
    ]);
    let new_serial = file_serial(&state.join("vault/tls/server.pem"));
    assert_ne!(new_serial, old_serial);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.served_serial(&stack.vault_1) != new_serial
        || stack.served_serial(&stack.vault_2) != new_serial
    {
        assert!(Instant::now() < deadline, "still the old certificate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in load {
        worker.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "a call failed");
    assert!(
        ok.load(Ordering::SeqCst) > before,
        "calls went on after the reload"
    );

    // The auditor exports the trail from a replica and verifies it offline.
    let clients = state.join("clients");
    let (key, export) = (
        work.path().join("audit-key.json"),
        work.path().join("trail.jsonl"),
    );
    for args in [
        vec!["audit", "public-key", "--out", key.to_str().unwrap()],
        vec!["audit", "export", "--out", export.to_str().unwrap()],
    ] {
        vaultctl_at(&stack.vault_2, &clients, "auditor", &args)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    }
    let verified = vaultctl_at(
        &stack.vault_1,
        &clients,
        "auditor",
        &[
            "audit",
            "verify",
            "--public-key",
            key.to_str().unwrap(),
            export.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let vaultctl::Report::AuditVerified(report) = verified else {
        panic!("{verified:?}")
    };
    assert!(report.is_clean(), "{report:?}");
    let trail = std::fs::read_to_string(&export).unwrap();
    for (token, pan) in &tokens {
        assert!(trail.contains(token.as_str()), "{token} not in the trail");
        assert!(!trail.contains(pan.as_str()), "a PAN in the trail");
    }

    // No test PAN in anything the stack's containers printed.
    let logs = stack.logs();
    for (_, pan) in &tokens {
        assert!(!logs.contains(pan.as_str()), "a PAN in the stack's logs");
    }
}
