//! The metrics listener, seen as an operator sees it: a real Prometheus server (Debian's
//! `prometheus`) scrapes a running vaultd and answers queries over its HTTP API; the readiness
//! probe and the listener's refusals; no test PAN in anything it serves.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;

use crate::harness::*;

/// Debian's Prometheus, or a message saying how to get it.
fn prometheus_bin() -> PathBuf {
    let found = std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
                .iter()
                .map(PathBuf::from)
                .find(|path| path.exists())
        });
    found.unwrap_or_else(|| {
        panic!(
            "prometheus not found: install it with `apt-get install prometheus` (scripts/test \
             does), or set PROMETHEUS_BIN"
        )
    })
}

/// A throwaway Prometheus scraping `target` every second, on a free loopback port.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: vaultd\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of each series `query` returns, by its label set, or `None` while Prometheus
    /// is not up yet.
    async fn query(&self, query: &str) -> Option<Vec<(serde_json::Value, f64)>> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let connected = tokio::net::TcpStream::connect(&self.addr).await.ok()?;
        drop(connected);
        let (status, body) =
            http("GET", &self.addr, &format!("/api/v1/query?query={encoded}")).await;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let results = json["data"]["result"].as_array()?;
        Some(
            results
                .iter()
                .map(|r| {
                    let value = r["value"][1].as_str().unwrap_or("0").parse().unwrap_or(0.0);
                    (r["metric"].clone(), value)
                })
                .collect(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The count Prometheus holds for `method` and `code`.
fn calls(results: &[(serde_json::Value, f64)], method: &str, code: &str) -> f64 {
    results
        .iter()
        .filter(|(labels, _)| labels["method"] == method && labels["code"] == code)
        .map(|(_, value)| *value)
        .sum()
}

const TOKENIZE: &str = "/vault.v1.TokenService/Tokenize";
const DETOKENIZE: &str = "/vault.v1.TokenService/Detokenize";

#[tokio::test]
async fn prometheus_scrapes_the_calls_by_method_and_status() {
    let vault = TestVault::start_with_keys("url = \"sqlite:vault.db\"\n", METRICS_ON, "info").await;
    let metrics = vault.metrics_addr();
    let prometheus = Prometheus::start(&metrics);

    let pan = "4000056655665556";
    let token = vault.tokenize_at(&vault.addr, "m1", pan).await;
    assert_eq!(vault.detokenize_at(&vault.addr, "m1", &token).await, pan);
    let mut payments = vault.client("payments").await;
    let unknown = payments
        .detokenize(detokenize_request("m1", "tok_AAAAAAAAAAAAAAAAAAAAAA"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let mut gateway = vault.client("gateway").await;
    let bad = gateway
        .tokenize(tokenize_request("m1", "4000056655665557"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let deadline = Instant::now() + Duration::from_secs(60);
    let results = loop {
        if let Some(results) = prometheus.query("vault_grpc_calls_total").await
            && calls(&results, DETOKENIZE, "NOT_FOUND") >= 1.0
        {
            break results;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the calls:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(calls(&results, TOKENIZE, "OK"), 1.0, "{results:?}");
    assert_eq!(
        calls(&results, TOKENIZE, "INVALID_ARGUMENT"),
        1.0,
        "{results:?}"
    );
    assert_eq!(calls(&results, DETOKENIZE, "OK"), 1.0, "{results:?}");
    assert_eq!(calls(&results, DETOKENIZE, "NOT_FOUND"), 1.0, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(labels, _)| labels["job"] == "vaultd" && labels["method"] != ""),
        "{results:?}"
    );
    // The steps under the calls were observed too.
    for series in [
        "vault_kek_call_duration_seconds_count",
        "vault_store_call_duration_seconds_count",
        "vault_group_commit_wait_seconds_count",
        "vault_audit_write_duration_seconds_count",
        "vault_group_commit_writes_count",
    ] {
        let found = prometheus.query(series).await.unwrap_or_default();
        assert!(
            found.iter().any(|(_, value)| *value >= 1.0),
            "{series}: {found:?}"
        );
    }

    // Nothing the listener serves or the log holds carries a card number.
    let (status, text) = http("GET", &metrics, "/metrics").await;
    assert_eq!(status, 200);
    for leaked in [pan, "4000056655665557", "4000 0566 5566 5556"] {
        assert!(!text.contains(leaked), "a PAN in /metrics");
        assert!(!vault.logs().contains(leaked), "a PAN in the logs");
    }
    // No label value holds one either (values, being numbers, are not read as text).
    for labels in text.lines().filter_map(|line| {
        let open = line.find('{')?;
        let close = line.rfind('}')?;
        line.get(open..close)
    }) {
        assert!(!vault_core::pan::contains_card_number(labels), "{labels}");
    }
}

#[tokio::test]
async fn the_listener_counts_refused_handshakes_and_answers_only_its_paths() {
    let vault = TestVault::start_with_keys("url = \"sqlite:vault.db\"\n", METRICS_ON, "info").await;
    let metrics = vault.metrics_addr();
    let (status, body) = http("GET", &metrics, "/ready").await;
    // Ready once the first health check has run (within a second of start).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut status, mut body) = (status, body);
    while status != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, body) = http("GET", &metrics, "/ready").await;
    }
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(http("GET", &metrics, "/live").await.0, 200);
    assert_eq!(http("GET", &metrics, "/nothing").await.0, 404);
    assert_eq!(http("POST", &metrics, "/metrics").await.0, 405);

    // A client without a certificate is refused in the handshake, and counted by reason.
    let anonymous = channel(&vault.addr, &vault.pki.ca_pem, None);
    let refused = vault_proto::v1::token_service_client::TokenServiceClient::new(anonymous)
        .tokenize(tokenize_request("m1", "4111111111111111"))
        .await
        .unwrap_err();
    assert!(refused_by_transport(refused.code()), "{refused:?}");
    let (_, text) = http("GET", &metrics, "/metrics").await;
    let line = text
        .lines()
        .find(|line| {
            line.starts_with("vault_tls_handshake_refusals_total{reason=\"no_certificate\"}")
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!line.ends_with(" 0"), "{line}");
    assert!(!text.contains("4111111111111111"), "a PAN in /metrics");
}
