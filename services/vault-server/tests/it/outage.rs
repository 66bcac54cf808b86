//! A PostgreSQL outage under load, on a throwaway cluster (initdb and pg_ctl in a temp dir, a
//! random port; never the machine's own server): calls fail fast with UNAVAILABLE, health says
//! NOT_SERVING, the vault recovers by itself when the database returns, and every token it
//! acknowledged, before or during the outage, still detokenizes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::*;

/// How long the vault waits for a database connection (its `connect_timeout_ms`).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);

/// A PostgreSQL cluster of our own, run as the unprivileged `postgres` user (initdb refuses
/// root). Stopped and removed on drop.
struct ThrowawayCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
}

impl ThrowawayCluster {
    fn create() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|v| v.path().join("bin"))
                    .filter(|bin| bin.join("initdb").exists())
                    .max()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no PostgreSQL server binaries under /usr/lib/postgresql: \
                     apt-get install postgresql (initdb and pg_ctl are needed)"
                )
            });
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        std::fs::create_dir_all(&socket_dir).unwrap();
        let log = dir.path().join("postgres.log");
        shell(
            &format!("chown -R postgres {}", dir.path().display()),
            false,
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        shell(
            &format!(
                "{} -D {} -A trust -U postgres --no-sync >/dev/null",
                bin.join("initdb").display(),
                data.display()
            ),
            true,
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            _dir: dir,
            data,
            bin,
            socket_dir,
            log,
            port,
        };
        cluster.start();
        cluster
    }

    fn start(&self) {
        shell(
            &format!(
                "{} -D {} -l {} -w -o \"-p {} -c listen_addresses=127.0.0.1 -k {}\" start >/dev/null",
                self.bin.join("pg_ctl").display(),
                self.data.display(),
                self.log.display(),
                self.port,
                self.socket_dir.display()
            ),
            true,
        );
    }

    /// Stops the server at once, as a crash would (no checkpoint).
    fn stop_immediately(&self) {
        shell(
            &format!(
                "{} -D {} -m immediate -w stop >/dev/null",
                self.bin.join("pg_ctl").display(),
                self.data.display()
            ),
            true,
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c"])
            .arg(format!(
                "{} -D {} -m immediate stop",
                self.bin.join("pg_ctl").display(),
                self.data.display()
            ))
            .output();
    }
}

/// Runs a shell command, as the `postgres` user or as ourselves (root, for `chown`),
/// panicking with its output if it fails.
fn shell(command: &str, as_postgres: bool) {
    let output = if !as_postgres {
        Command::new("sh").arg("-c").arg(command).output()
    } else {
        Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", command])
            .output()
    }
    .unwrap_or_else(|e| panic!("{command}: {e} (runuser from util-linux is needed)"));
    assert!(
        output.status.success(),
        "{command}\n{}{}\n(the throwaway cluster runs as the unprivileged `postgres` user, \
         which the postgresql package creates)",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn health(vault: &TestVault) -> Option<ServingStatus> {
    let issued = vault.pki.client("auditor");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&vault.pki.ca_pem))
        .identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", vault.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "vault.v1.TokenService".into(),
        })
        .await
        .ok()
        .and_then(|r| ServingStatus::try_from(r.into_inner().status).ok())
}

async fn wait_for_health(vault: &TestVault, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(vault).await != Some(want) {
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn database_outage_fails_fast_reports_not_serving_and_recovers() {
    let cluster = ThrowawayCluster::create();
    let vault = TestVault::start_with_storage(
        &format!(
            "url = {:?}\nconnect_timeout_ms = {}\nstatement_timeout_ms = 1000\n",
            cluster.url(),
            CONNECT_TIMEOUT.as_millis()
        ),
        "info",
    )
    .await;
    wait_for_health(&vault, ServingStatus::Serving).await;

    // Load: tokenize fresh cards until told to stop, recording every acknowledged token.
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        let mut gateway = vault.client("gateway").await;
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let pan = random_pan("5");
                if let Ok(response) = gateway.tokenize(tokenize_request("m1", &pan)).await {
                    acknowledged
                        .lock()
                        .await
                        .push((response.into_inner().token, pan));
                }
            }
        })
    };
    while acknowledged.lock().await.len() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.stop_immediately();
    // During the outage: UNAVAILABLE, fast. A call makes at most two attempts on the store
    // (the operation, then its audit record), each bounded by the connect timeout.
    let mut gateway = vault.client("gateway").await;
    let mut payments = vault.client("payments").await;
    for _ in 0..3 {
        let started = Instant::now();
        let status = gateway
            .tokenize(tokenize_request("m1", &random_pan("4")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(started.elapsed() < 2 * CONNECT_TIMEOUT + Duration::from_secs(2));
        let (token, _) = acknowledged.lock().await[0].clone();
        let status = payments
            .detokenize(detokenize_request("m1", &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    wait_for_health(&vault, ServingStatus::NotServing).await;

    cluster.start();
    wait_for_health(&vault, ServingStatus::Serving).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    // Nothing acknowledged was lost, and the vault needed no restart.
    let acknowledged = acknowledged.lock().await.clone();
    assert!(acknowledged.len() >= 50);
    for (token, pan) in &acknowledged {
        let detokenized = payments
            .detokenize(detokenize_request("m1", token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&detokenized.pan, pan);
    }
    // No token without its audit record: every stored token has a successful tokenize row.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url())
        .await
        .unwrap();
    let orphans: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tokens t WHERE NOT EXISTS (SELECT 1 FROM audit_log a \
         WHERE a.token = t.token AND a.operation = 'tokenize' AND a.outcome = 'success')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
}
