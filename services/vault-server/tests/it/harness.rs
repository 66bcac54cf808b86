//! Test harness: a throwaway PKI, a `vaultd` child process on port 0 with its own data
//! directory and captured output, and tonic clients for each identity.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vault_proto::v1::token_service_client::TokenServiceClient;
use vault_proto::v1::{self as pb};
use vault_server::pki::{DevCa, Issued};

pub const GATEWAY: &str = "spiffe://vault.test/gateway";
pub const PAYMENTS: &str = "spiffe://vault.test/payments";
pub const AUDITOR: &str = "spiffe://vault.test/auditor";
pub const ADMIN_1: &str = "spiffe://vault.test/admin-1";
pub const ADMIN_2: &str = "spiffe://vault.test/admin-2";
/// A CN from before the card-number rule joined digit groups across letters: refused as a new
/// identity today, usable while a policy lists it. No test policy lists it unless the test
/// adds it.
pub const LEGACY_CN: &str = "legacy 4000x0566y5566z5556";
/// A low-privilege caller (tokenize and metadata only): the enumeration tests' attacker.
pub const PROBER: &str = "spiffe://vault.test/prober";

/// One Luhn-valid test PAN per brand (and two for Visa and Mastercard's 2-series).
pub const PANS_BY_BRAND: [(&str, &str); 13] = [
    ("4111111111111111", "visa"),
    ("4000056655665556", "visa"),
    ("5555555555554444", "mastercard"),
    ("2223003122003222", "mastercard"),
    ("378282246310005", "amex"),
    ("6011111111111117", "discover"),
    ("6221260000000000", "discover"),
    ("3566002020360505", "jcb"),
    ("30569309025904", "diners"),
    ("6200000000000005", "unionpay"),
    ("6759649826438453", "maestro"),
    ("5018000000000009", "maestro"),
    ("9999999999999995", "unknown"),
];

/// A CA, its server certificate and one client per test identity, written to `dir/pki`.
pub struct TestPki {
    pub ca_pem: String,
    ca: DevCa,
    clients: Vec<(String, Issued)>,
}

impl TestPki {
    pub fn generate(dir: &Path) -> Self {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        let ca = DevCa::generate("vault test CA").unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::write(pki.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(pki.join("server.pem"), &server.cert_pem).unwrap();
        write_private(&pki.join("server.key"), &server.key_pem);
        // A certificate the CA signed that names no identity at all.
        let mut clients = vec![("anonymous".to_owned(), ca.issue_client(None, None).unwrap())];
        for (name, spiffe) in [
            ("gateway", Some(GATEWAY)),
            ("payments", Some(PAYMENTS)),
            ("auditor", Some(AUDITOR)),
            ("admin-1", Some(ADMIN_1)),
            ("admin-2", Some(ADMIN_2)),
            ("prober", Some(PROBER)),
            ("cn-only", None),
            (LEGACY_CN, None),
        ] {
            let issued = ca.issue_client(Some(name), spiffe).unwrap();
            std::fs::write(pki.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
            write_private(&pki.join(format!("{name}.key")), &issued.key_pem);
            clients.push((name.to_owned(), issued));
        }
        Self {
            ca_pem: ca.cert_pem(),
            ca,
            clients,
        }
    }

    pub fn client(&self, name: &str) -> &Issued {
        &self.clients.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// A CRL from the test CA, PEM, revoking the named test clients' certificates, due again
    /// in `next_update_days` (negative: already stale).
    pub fn revocation_list(&self, revoked: &[&str], number: u64, next_update_days: i64) -> String {
        let serials: Vec<&[u8]> = revoked
            .iter()
            .map(|name| self.client(name).serial.as_slice())
            .collect();
        self.ca
            .revocation_list(&serials, number, next_update_days)
            .unwrap()
    }

    /// A further client certificate from the test CA: subject CN `common_name` if given, one
    /// URI SAN per entry of `uris`.
    pub fn issue(&self, common_name: Option<&str>, uris: &[&str]) -> Issued {
        self.ca.issue_client_with_uris(common_name, uris).unwrap()
    }
}

/// Runs `vaultd serve` on `dir/vaultd.toml`, expects it to refuse to start (exit 78), and
/// returns what it printed.
pub fn refused_start(dir: &Path) -> String {
    let config = dir.join("vaultd.toml");
    let (code, printed) = run_vaultd(&["serve", "--config", &config.to_string_lossy()]);
    assert_eq!(code, Some(78), "{printed}");
    printed
}

/// Runs `vaultd` with `args` to its end; returns its exit code and everything it printed.
pub fn run_vaultd(args: &[&str]) -> (Option<i32>, String) {
    run_vaultd_env(args, &[])
}

/// [`run_vaultd`] with `env` added to its environment.
pub fn run_vaultd_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vaultd"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

/// Writes a secret file only its owner may read (vaultd refuses any other).
pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// The policy the tests run under: the gateway tokenizes, reads metadata and deletes; payments
/// detokenizes; the CN-only client reads metadata; the auditor has no card operations; the two
/// admins manage keys.
pub const POLICY: &str = r#"
[[caller]]
identity = "spiffe://vault.test/gateway"
operations = ["tokenize", "metadata", "delete"]
merchants = ["*"]

[[caller]]
identity = "spiffe://vault.test/payments"
operations = ["detokenize", "metadata", "forward"]
merchants = ["*"]

[[caller]]
identity = "cn-only"
operations = ["metadata"]
merchants = ["*"]

[[caller]]
identity = "spiffe://vault.test/auditor"
operations = ["audit.read"]
merchants = ["*"]

[[caller]]
identity = "spiffe://vault.test/admin-1"
operations = ["keys.admin", "audit.prune", "destinations.admin"]
merchants = ["*"]

[[caller]]
identity = "spiffe://vault.test/admin-2"
operations = ["keys.admin", "destinations.admin"]
merchants = ["*"]

[[caller]]
identity = "spiffe://vault.test/prober"
operations = ["tokenize", "metadata"]
merchants = ["*"]
"#;

/// Limits for tests that are not about limits: far above what any test sends (a test of the
/// limits writes its own `[limits]` or `[guard]` table, which replaces these).
pub const GENEROUS_LIMITS: &str = "[limits]\n\
    tokenize = { per_second = 1000000, burst = 1000000 }\n\
    detokenize = { per_second = 1000000, burst = 1000000 }\n\
    detokenize_per_merchant = { per_second = 1000000, burst = 1000000 }\n\
    forward = { per_second = 1000000, burst = 1000000 }\n\
    forward_per_merchant = { per_second = 1000000, burst = 1000000 }\n\
    destinations_admin = { per_second = 1000000, burst = 1000000 }\n\
    metadata = { per_second = 1000000, burst = 1000000 }\n\
    delete = { per_second = 1000000, burst = 1000000 }\n\
    keys_admin = { per_second = 1000000, burst = 1000000 }\n\
    audit_read = { per_second = 1000000, burst = 1000000 }\n\
    audit_prune = { per_second = 1000000, burst = 1000000 }\n\
    ungranted = { per_second = 1000000, burst = 1000000 }\n";

/// The guard for tests that are not about it: the default card guard (random test PANs never
/// trip it), but no practical cap on new merchants (some tests make a thousand).
pub const GENEROUS_GUARD: &str = "[guard]\nnew_merchants_per_hour = 1000000\n";

/// Waits up to ten seconds for `needle` to appear in the vault's logs.
pub async fn wait_for_log(vault: &TestVault, needle: &str) -> bool {
    wait_for_logs(vault, needle, 1).await
}

/// Waits up to ten seconds for `needle` to appear `n` times in the vault's logs.
pub async fn wait_for_logs(vault: &TestVault, needle: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if vault.logs().matches(needle).count() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The codes tonic reports when the server refuses the handshake or closes the connection
/// (which one depends on timing): a transport failure, never an answer from the service.
pub fn refused_by_transport(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// The development KEK's configuration (the file `kek.key` in the data directory).
pub const DEV_KEK: &str = "[kek]\nbackend = \"danger-local-file\"\npath = \"kek.key\"\n";

/// Writes a test PKI, the policy and `vaultd.toml` (listening on port 0) into `dir`.
pub fn write_config(dir: &Path, storage: &str, keys: &str) -> TestPki {
    let pki = TestPki::generate(dir);
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    write_vaultd_toml(dir, storage, keys);
    pki
}

/// Writes `vaultd.toml` (listening on port 0) into `dir`, next to its PKI and policy. Unless
/// `keys` holds its own `[limits]` or `[guard]`, the generous ones are added.
pub fn write_vaultd_toml(dir: &Path, storage: &str, keys: &str) {
    let mut keys = keys.to_owned();
    if !keys.contains("[limits]") {
        keys.push_str(GENEROUS_LIMITS);
    }
    if !keys.contains("[guard]") {
        keys.push_str(GENEROUS_GUARD);
    }
    std::fs::write(
        dir.join("vaultd.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\n\
             [storage]\n{storage}\
             [tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = \"pki/ca.pem\"\n\
             {keys}\
             [policy]\npath = \"policy.toml\"\n"
        ),
    )
    .unwrap();
}

/// A running `vaultd serve` with its own data directory.
pub struct TestVault {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub pki: TestPki,
    child: Child,
    env: Vec<(String, String)>,
}

impl TestVault {
    /// Starts `vaultd` with logging at `info`.
    pub async fn start() -> Self {
        Self::start_with_log("info").await
    }

    /// Starts `vaultd` with `RUST_LOG=log_filter`.
    pub async fn start_with_log(log_filter: &str) -> Self {
        Self::start_on("sqlite:vault.db", log_filter).await
    }

    /// Starts `vaultd` on the given storage URL with `RUST_LOG=log_filter`.
    pub async fn start_on(storage_url: &str, log_filter: &str) -> Self {
        Self::start_with_storage(&format!("url = {storage_url:?}\n"), log_filter).await
    }

    /// Starts `vaultd` with `storage` as the body of its `[storage]` table.
    pub async fn start_with_storage(storage: &str, log_filter: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
        Self::start_in(dir, storage, DEV_KEK, &[], log_filter).await
    }

    /// Starts `vaultd` with the development KEK plus `keys` (e.g. a `[dek]` table) in its
    /// configuration.
    pub async fn start_with_keys(storage: &str, keys: &str, log_filter: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
        Self::start_in(dir, storage, &format!("{DEV_KEK}{keys}"), &[], log_filter).await
    }

    /// Stops `vaultd`, rewrites its `vaultd.toml` with `storage` and `keys` (same PKI, policy,
    /// data and environment) and starts it again.
    pub async fn restart_with(mut self, storage: &str, keys: &str) -> Self {
        terminate_async(&mut self.child).await;
        write_vaultd_toml(self.dir.path(), storage, keys);
        self.relaunch().await
    }

    /// Kills `vaultd` with SIGKILL (no shutdown of any kind: a crash) and starts it again on
    /// the same configuration.
    pub async fn crash_and_restart(mut self) -> Self {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.relaunch().await
    }

    /// Stops `vaultd` with SIGTERM, runs `between` on its data directory while it is down
    /// (an offline tool, a broken file), and starts it again on the same configuration.
    pub async fn restart_after(mut self, between: impl FnOnce(&Path)) -> Self {
        terminate_async(&mut self.child).await;
        between(self.dir.path());
        self.relaunch().await
    }

    async fn relaunch(mut self) -> Self {
        let child = spawn_vaultd_env(
            &[
                "serve",
                "--config",
                &self.dir.path().join("vaultd.toml").to_string_lossy(),
            ],
            self.dir.path(),
            "info",
            &self.env,
        );
        let (addr, child) = wait_for_listening(self.dir.path(), child).await;
        self.addr = addr;
        self.child = child;
        self
    }

    /// Runs `vaultctl ARGS` (the real CLI code, in this process) as the named identity.
    pub async fn vaultctl(
        &self,
        identity: &str,
        args: &[&str],
    ) -> Result<vaultctl::Report, vaultctl::Error> {
        vaultctl_at(&self.addr, &self.dir.path().join("pki"), identity, args).await
    }

    /// Starts `vaultd` in `dir` with `storage` as the body of its `[storage]` table, `keys` as
    /// the configuration's key tables (`[kek]`, `[[previous_kek]]`, `[key_cache]` ...), and
    /// `env` added to its environment.
    pub async fn start_in(
        dir: tempfile::TempDir,
        storage: &str,
        keys: &str,
        env: &[(&str, &str)],
        log_filter: &str,
    ) -> Self {
        let pki = write_config(dir.path(), storage, keys);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = spawn_vaultd_env(
            &[
                "serve",
                "--config",
                &dir.path().join("vaultd.toml").to_string_lossy(),
            ],
            dir.path(),
            log_filter,
            &env,
        );
        let (addr, child) = wait_for_listening(dir.path(), child).await;
        Self {
            dir,
            addr,
            pki,
            child,
            env,
        }
    }

    /// The gRPC health of `vault.v1.TokenService`, or `None` if the vault does not answer.
    pub async fn health(&self) -> Option<ServingStatus> {
        let issued = self.pki.client("auditor");
        let channel = channel(
            &self.addr,
            &self.pki.ca_pem,
            Some((&issued.cert_pem, &issued.key_pem)),
        );
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "vault.v1.TokenService".into(),
            })
            .await
            .ok()
            .and_then(|r| ServingStatus::try_from(r.into_inner().status).ok())
    }

    /// Waits up to 30 s for health to become `want`.
    pub async fn wait_for_health(&self, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.health().await != Some(want) {
            assert!(Instant::now() < deadline, "health never became {want:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client presenting the named identity's certificate.
    pub async fn client(&self, name: &str) -> TokenServiceClient<Channel> {
        self.client_at(&self.addr, name).await
    }

    /// A client of the vault (or a replica) at `addr`, presenting the named identity.
    pub async fn client_at(&self, addr: &str, name: &str) -> TokenServiceClient<Channel> {
        let issued = self.pki.client(name);
        connect(
            addr,
            &self.pki.ca_pem,
            Some((&issued.cert_pem, &issued.key_pem)),
        )
        .await
    }

    /// An AuditService client presenting the named identity's certificate.
    pub fn audit_client(
        &self,
        name: &str,
    ) -> vault_proto::v1::audit_service_client::AuditServiceClient<Channel> {
        let issued = self.pki.client(name);
        vault_proto::v1::audit_service_client::AuditServiceClient::new(channel(
            &self.addr,
            &self.pki.ca_pem,
            Some((&issued.cert_pem, &issued.key_pem)),
        ))
    }

    /// Tokenizes `pan` for `merchant` as the gateway at `addr` and returns the token.
    pub async fn tokenize_at(&self, addr: &str, merchant: &str, pan: &str) -> String {
        self.client_at(addr, "gateway")
            .await
            .tokenize(tokenize_request(merchant, pan))
            .await
            .unwrap()
            .into_inner()
            .token
    }

    /// Detokenizes `token` of `merchant` as the payments service at `addr` and returns the PAN.
    pub async fn detokenize_at(&self, addr: &str, merchant: &str, token: &str) -> String {
        self.client_at(addr, "payments")
            .await
            .detokenize(detokenize_request(merchant, token))
            .await
            .unwrap()
            .into_inner()
            .take_pan()
    }

    /// Another `vaultd` process on the same configuration (same database, KEK, PKI and
    /// policy), on its own port, with its output in `replica-N/` of the data directory.
    pub async fn replica(&self, n: usize) -> Replica {
        let out = self.dir.path().join(format!("replica-{n}"));
        std::fs::create_dir_all(&out).unwrap();
        let config = self.dir.path().join("vaultd.toml");
        let child = spawn_vaultd_env(
            &["serve", "--config", &config.to_string_lossy()],
            &out,
            "info",
            &self.env,
        );
        let (addr, child) = wait_for_listening(&out, child).await;
        Replica { addr, child }
    }

    /// A pool on the vault's SQLite database, for tests that inspect or tamper with rows.
    pub async fn db(&self) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(self.db_path())
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await
            .unwrap()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("vault.db")
    }

    /// How many tokens the database holds.
    pub async fn token_count(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.db().await)
            .await
            .unwrap()
    }

    /// The `vaultd` process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything `vaultd` wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        read_logs(self.dir.path())
    }

    /// The metrics listener's address, from the line vaultd prints at start (with
    /// `[telemetry] metrics_listen` set).
    pub fn metrics_addr(&self) -> String {
        let logs = self.logs();
        logs.lines()
            .find_map(|line| line.strip_prefix("vaultd metrics on http://"))
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no metrics line:\n{logs}"))
            .to_owned()
    }

    /// Stops `vaultd` with SIGTERM and waits for it.
    pub fn stop(mut self) -> tempfile::TempDir {
        terminate(&mut self.child);
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestVault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            assert_pci_fields(&self.db_path());
        }
    }
}

/// Every audit record an end-to-end test left in its SQLite database has the six PCI DSS
/// 10.2.2 fields filled (caller, event, time, outcome, origin, resource; origin never
/// `unknown`): checked as each `TestVault` goes away, so every test on the embedded store
/// sweeps its own records. A database a test broke on purpose (no readable `audit_log`) is
/// skipped.
pub fn assert_pci_fields(db: &Path) {
    if !db.exists() {
        return;
    }
    let db = db.to_owned();
    let swept = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let options = SqliteConnectOptions::new().filename(&db).read_only(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .ok()?;
            sqlx::query_scalar::<_, String>(
                "SELECT writer || '#' || seq FROM audit_log WHERE caller = '' OR operation = '' \
                 OR outcome = '' OR origin = '' OR origin = 'unknown' OR resource = '' OR at <= 0",
            )
            .fetch_all(&pool)
            .await
            .ok()
        })
    })
    .join()
    .unwrap();
    if let Some(bad) = swept {
        assert!(
            bad.is_empty(),
            "audit records without all six PCI DSS 10.2.2 fields: {bad:?}"
        );
    }
}

/// A second or third `vaultd` sharing a [`TestVault`]'s configuration; killed on drop.
pub struct Replica {
    pub addr: String,
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the vaultd binary with output captured to files in `dir`.
pub fn spawn_vaultd(args: &[&str], dir: &Path, log_filter: &str) -> Child {
    spawn_vaultd_env(args, dir, log_filter, &[])
}

/// Starts the vaultd binary with `env` added to its environment and output captured to files
/// in `dir`.
pub fn spawn_vaultd_env(
    args: &[&str],
    dir: &Path,
    log_filter: &str,
    env: &[(String, String)],
) -> Child {
    let stdout = std::fs::File::create(dir.join("vaultd.stdout")).unwrap();
    let stderr = std::fs::File::create(dir.join("vaultd.stderr")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vaultd"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", log_filter)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

pub fn read_logs(dir: &Path) -> String {
    let mut all = String::new();
    for name in ["vaultd.stdout", "vaultd.stderr"] {
        if let Ok(mut file) = std::fs::File::open(dir.join(name)) {
            file.read_to_string(&mut all).unwrap();
        }
    }
    all
}

/// Starts `vaultd dev` on `data_dir` (ports 0), output in `logs`; returns it and its banner.
pub async fn start_dev(
    data_dir: &std::path::Path,
    logs: &std::path::Path,
) -> (std::process::Child, String) {
    let child = spawn_vaultd(
        &[
            "dev",
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        logs,
        "info",
    );
    let (_, child) = wait_for_listening(logs, child).await;
    (child, read_logs(logs))
}

/// Waits for the "vaultd listening on ADDR" line; panics with the logs if vaultd exits.
pub async fn wait_for_listening(dir: &Path, mut child: Child) -> (String, Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Only whole lines: a line still being written could hold half an address.
        let listening = ["vaultd.stderr", "vaultd.stdout"].iter().find_map(|name| {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            complete
                .lines()
                .find_map(|line| line.strip_prefix("vaultd listening on "))
                .map(|addr| addr.trim().to_owned())
        });
        if let Some(addr) = listening {
            return (addr, child);
        }
        let logs = read_logs(dir);
        if let Some(status) = child.try_wait().unwrap() {
            panic!("vaultd exited with {status} before listening:\n{logs}");
        }
        assert!(Instant::now() < deadline, "vaultd did not start:\n{logs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends SIGHUP: vaultd reloads its TLS settings and its policy.
pub fn sighup(vault: &TestVault) {
    let status = Command::new("kill")
        .args(["-HUP", &vault.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends SIGTERM (through the shell's `kill` builtin) and waits for the process to exit.
fn send_term(child: &Child) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {}", child.id()))
        .status();
}

/// How long a stopping `vaultd` gets before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(20);

/// [`terminate`] without blocking the test's runtime, so that its clients can answer the
/// server's GOAWAY and the graceful shutdown (with its `vault.stop` record) completes.
pub async fn terminate_async(child: &mut Child) {
    send_term(child);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Stops `child` with SIGTERM, killing it if it has not exited within [`TERM_GRACE`].
pub fn terminate(child: &mut Child) {
    send_term(child);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A tonic client over TLS trusting `ca_pem`, presenting `identity` if given.
pub async fn connect(
    addr: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> TokenServiceClient<Channel> {
    TokenServiceClient::new(channel(addr, ca_pem, identity))
}

/// A lazily connecting channel over TLS trusting `ca_pem`, presenting `identity` if given.
pub fn channel(addr: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

/// With the KEK down: health is NOT_SERVING, detokenizing `token` (whose DEK was cached) is
/// refused UNAVAILABLE without the PAN and audited as `unavailable`, and `new_merchant` (no keys
/// yet) cannot tokenize either.
pub async fn assert_kek_down_releases_nothing(
    vault: &TestVault,
    merchant: &str,
    token: &str,
    pan: &str,
    new_merchant: &str,
) {
    vault.wait_for_health(ServingStatus::NotServing).await;
    let refused = vault
        .client("payments")
        .await
        .detokenize(detokenize_request(merchant, token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(!refused.message().contains(pan), "{refused:?}");
    let refused = vault
        .client("gateway")
        .await
        .tokenize(tokenize_request(new_merchant, "4000056655665556"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let outcome: String = sqlx::query_scalar(
        "SELECT outcome FROM audit_log WHERE operation = 'detokenize' ORDER BY at DESC, seq DESC LIMIT 1",
    )
    .fetch_one(&vault.db().await)
    .await
    .unwrap();
    assert_eq!(outcome, "unavailable");
}

pub fn tokenize_request(merchant: &str, pan: &str) -> pb::TokenizeRequest {
    pb::TokenizeRequest {
        merchant_id: merchant.to_owned(),
        pan: pan.to_owned(),
        exp_month: Some(12),
        exp_year: Some(2031),
        token_format: pb::TokenFormat::Random.into(),
    }
}

pub fn detokenize_request(merchant: &str, token: &str) -> pb::DetokenizeRequest {
    pb::DetokenizeRequest {
        merchant_id: merchant.to_owned(),
        token: token.to_owned(),
        reason: "capture order 1001".to_owned(),
    }
}

/// A random Luhn-valid 16-digit PAN starting with `prefix`.
pub fn random_pan(prefix: &str) -> String {
    let mut digits: Vec<u32> = prefix.chars().map(|c| c.to_digit(10).unwrap()).collect();
    while digits.len() < 15 {
        digits.push(rand::random_range(0..10));
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect()
}

/// Audit rows for a request id: (caller, origin, operation, merchant, token, outcome, reason).
pub type AuditRow = (
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

pub async fn audit_rows(db: &SqlitePool, request_id: &str) -> Vec<AuditRow> {
    sqlx::query_as(
        "SELECT caller, origin, operation, merchant_id, token, outcome, reason FROM audit_log \
         WHERE request_id = ?",
    )
    .bind(request_id)
    .fetch_all(db)
    .await
    .unwrap()
}

/// The request id a response or status carries.
pub fn request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// A plain HTTP/1.1 GET (or another `method`) of `path` on `addr`: the status and the body.
pub async fn http(method: &str, addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The `[telemetry]` table that turns the metrics listener on, on a free port.
pub const METRICS_ON: &str = "[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n";

/// Runs `vaultctl ARGS` (the real CLI code, in this process) against `addr` as the named
/// identity, whose NAME.pem and NAME.key are in `pki` beside ca.pem.
pub async fn vaultctl_at(
    addr: &str,
    pki: &Path,
    identity: &str,
    args: &[&str],
) -> Result<vaultctl::Report, vaultctl::Error> {
    let file = |name: String| pki.join(name).to_string_lossy().into_owned();
    let mut argv = vec![
        "vaultctl".to_owned(),
        "--addr".to_owned(),
        addr.to_owned(),
        "--ca".to_owned(),
        file("ca.pem".to_owned()),
        "--cert".to_owned(),
        file(format!("{identity}.pem")),
        "--key".to_owned(),
        file(format!("{identity}.key")),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let cli = <vaultctl::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    vaultctl::run(&cli).await
}
