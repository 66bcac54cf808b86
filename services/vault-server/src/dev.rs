//! `vaultd dev`: the embedded default. The first run creates a data directory holding an SQLite
//! database, a development KEK file, a dev CA with a server certificate and five client
//! identities (gateway, payments, auditor, and two key admins), the policy and a `vaultd.toml`;
//! later runs reuse it, so tokens survive a restart.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use vault_kms::DangerLocalFileKek;

use crate::pki::DevCa;

/// The config file inside a dev data directory.
pub const CONFIG_FILE: &str = "vaultd.toml";
/// The KEK file inside a dev data directory; its name says what it is not.
pub const KEK_FILE: &str = "DANGER-dev-kek-not-an-hsm.key";
/// The default listen address of the dev vault.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// The client identities `vaultd dev` creates: name, SPIFFE ID, operations.
/// Two admins, because a crypto-shred needs a second one to approve (dual control).
pub const DEV_IDENTITIES: [(&str, &str, &[&str]); 5] = [
    (
        "gateway",
        "spiffe://vault.dev/gateway",
        &["tokenize", "metadata"],
    ),
    (
        "payments",
        "spiffe://vault.dev/payments",
        &["detokenize", "forward", "metadata"],
    ),
    ("auditor", "spiffe://vault.dev/auditor", &["audit.read"]),
    (
        "admin-1",
        "spiffe://vault.dev/admin-1",
        &["keys.admin", "audit.prune", "destinations.admin"],
    ),
    (
        "admin-2",
        "spiffe://vault.dev/admin-2",
        &["keys.admin", "audit.prune", "destinations.admin"],
    ),
];

/// Creates the dev data directory at `dir` unless it already holds a `vaultd.toml`, and returns
/// the config file's path.
///
/// # Errors
/// If a file cannot be written or a certificate cannot be generated.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let config = dir.join(CONFIG_FILE);
    if config.exists() {
        return Ok(config);
    }
    fs::create_dir_all(dir.join("pki")).with_context(|| format!("creating {}", dir.display()))?;
    restrict_dir(dir)?;

    let ca = DevCa::generate("vault dev CA")?;
    write_file(&dir.join("pki/ca.pem"), &ca.cert_pem(), 0o644)?;
    write_file(&dir.join("pki/ca.key"), ca.key_pem(), 0o600)?;
    let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
    write_file(&dir.join("pki/server.pem"), &server.cert_pem, 0o644)?;
    write_file(&dir.join("pki/server.key"), &server.key_pem, 0o600)?;

    let mut policy = String::from(
        "# Access policy: identities not listed here may do nothing (deny by default).\n\
         # operations: tokenize, detokenize, forward, metadata, delete, audit.read, keys.admin,\n\
         #   audit.prune, destinations.admin\n\
         # merchants: [\"*\"] for every merchant, or a list of merchant ids.\n",
    );
    for (name, spiffe, operations) in DEV_IDENTITIES {
        let client = ca.issue_client(Some(name), Some(spiffe))?;
        write_file(
            &dir.join(format!("pki/{name}.pem")),
            &client.cert_pem,
            0o644,
        )?;
        write_file(&dir.join(format!("pki/{name}.key")), &client.key_pem, 0o600)?;
        let ops: Vec<String> = operations.iter().map(|op| format!("{op:?}")).collect();
        let _ = write!(
            policy,
            "\n[[caller]]\nidentity = {spiffe:?}\noperations = [{}]\nmerchants = [\"*\"]\n",
            ops.join(", ")
        );
    }
    write_file(&dir.join("policy.toml"), &policy, 0o644)?;
    DangerLocalFileKek::create(&dir.join(KEK_FILE))?;

    let text = format!(
        "# vaultd configuration written by `vaultd dev`. Relative paths are relative to this file.\n\
         listen = {DEFAULT_LISTEN:?}\n\n\
         [storage]\nurl = \"sqlite:vault.db\"\n\n\
         [tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = \"pki/ca.pem\"\n\n\
         [kek]\n# Development only: a key in a local file is not an HSM.\n\
         backend = \"danger-local-file\"\npath = {KEK_FILE:?}\n\n\
         [policy]\npath = \"policy.toml\"\n\n\
         [identity]\n# Every dev client has a SPIFFE ID: a certificate's CN names no caller.\n\
         cn_fallback = false\n\n\
         [telemetry]\n# Plain HTTP, no certificate: /metrics (Prometheus), /ready, /live.\n\
         metrics_listen = \"127.0.0.1:9464\"\n\
         # otlp_endpoint = \"http://127.0.0.1:4317\"   # export traces over OTLP/gRPC\n\n\
         {LIMITS}"
    );
    // Written last: its presence marks a complete data directory.
    write_file(&config, &text, 0o644)?;
    Ok(config)
}

/// The abuse limits as `vaultd dev` writes them: the defaults, spelled out so they can be tuned
/// (docs/security.md).
const LIMITS: &str = "\
# Per caller identity and operation, per replica (N replicas allow N times as much).
[limits]
tokenize = { per_second = 10000, burst = 20000 }      # cards: a TokenizeBatch counts its cards
detokenize = { per_second = 100, burst = 200 }
detokenize_per_merchant = { per_second = 20, burst = 50 }
metadata = { per_second = 1000, burst = 2000 }
delete = { per_second = 100, burst = 200 }
keys_admin = { per_second = 5, burst = 20 }
audit_read = { per_second = 10, burst = 50 }
audit_prune = { per_second = 1, burst = 5 }
ungranted = { per_second = 10, burst = 20 }           # operations the policy grants a caller nowhere
record_refusals_every_secs = 60                       # one refusal record per caller and operation

# Vault-wide, counted in the store: the enumeration guard and the new-merchant cap.
[guard]
cards_per_bucket = 12               # distinct cards per caller, length, shown digits, last 4
window_secs = 86400                 # ... per day
cards_per_bucket_per_batch = 4      # more in one request spends the bucket at once
new_merchants_per_hour = 60         # per caller, whatever its policy allows
";

/// Ready-to-paste grpcurl commands for the dev vault at `addr` with data directory `dir`, and
/// where its metrics are (`metrics`, if on).
#[must_use]
pub fn grpcurl_help(dir: &Path, addr: SocketAddr, metrics: Option<SocketAddr>) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let pki = dir.join("pki");
    let target = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let client = |name: &str| {
        format!(
            "grpcurl -cacert {pki}/ca.pem -cert {pki}/{name}.pem -key {pki}/{name}.key",
            pki = pki.display()
        )
    };
    format!(
        "\nvaultd dev is serving on {target} (data directory {dir}).\n\n\
         Tokenize a test card as the gateway:\n  {gateway} \\\n    -d '{{\"merchant_id\":\"merchant-1\",\"pan\":\"4242 4242 4242 4242\",\"exp_month\":12,\"exp_year\":2030}}' \\\n    {target} vault.v1.TokenService/Tokenize\n\n\
         Detokenize it as the payments service (put the token from above in place of TOKEN):\n  {payments} \\\n    -d '{{\"merchant_id\":\"merchant-1\",\"token\":\"TOKEN\",\"reason\":\"capture order 1001\"}}' \\\n    {target} vault.v1.TokenService/Detokenize\n\n\
         List services:\n  {gateway} {target} list\n\n\
         Key administration (status, DEK rotation, KEK rewrap, crypto-shred) as a key admin:\n  \
         cargo run --bin vaultctl -- --dev-dir {dir} --identity admin-1 --addr {target} status\n\
         {metrics}",
        dir = dir.display(),
        gateway = client("gateway"),
        payments = client("payments"),
        metrics = metrics.map_or_else(String::new, |m| format!(
            "\nMetrics (Prometheus text) and readiness, plain HTTP:\n  curl http://{m}/metrics\n  \
             curl http://{m}/ready\n"
        )),
    )
}

fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn restrict_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
}
