//! The Transit KEK: an AES-256-GCM key in a HashiCorp Vault or OpenBao Transit secrets engine.
//! DEKs and fingerprint keys are sent to the server's `encrypt` endpoint and come back as a
//! versioned ciphertext (`vault:v3:...`); the key itself never leaves the server.
//!
//! Binding: every encrypt and decrypt passes `KeyContext::associated_data` (merchant, purpose,
//! version) as Transit's `associated_data` parameter, which AES-GCM keys authenticate as AAD.
//! (Tested against OpenBao 2.7: a wrong context fails with "message authentication failed".)
//! A derived key (`derived=true` with a per-call `context`) is not used: it would make the
//! server derive a key per merchant for no gain, and the key is refused at open.
//!
//! KEK ids name the key version: `transit:<mount>/<key>:v<N>`, with `N` taken from the
//! ciphertext the server returned, so a rotation on the server (`bao write -f
//! transit/keys/<key>/rotate`) shows up in new wraps and in [`KeyEncryptionKey::current_id`],
//! while keys wrapped under older versions still unwrap.
//!
//! TLS is rustls with the ring provider, trusting exactly the configured CA (no system roots,
//! no proxy, no redirects: the token is sent to the configured address only).
//!
//! Authentication is a token (read from a file, e.g. an agent's sink, or an environment
//! variable) or AppRole (role id and secret id, each from a file or an environment variable,
//! logged in at open). When the server answers 403 the KEK gets a fresh token once (re-reads the
//! token source, or logs in again with AppRole) and retries. The token, the AppRole secret id
//! and key material never appear in errors or `Debug` output. Secrets are held in zeroizing
//! buffers; the HTTP and TLS stacks' own buffers are outside our control.
//!
//! A least-privilege policy for the vault's token (note: no `create` on the encrypt path, so a
//! deleted key is never silently recreated by an encrypt):
//!
//! ```hcl
//! path "transit/keys/vault-kek"    { capabilities = ["read"] }
//! path "transit/encrypt/vault-kek" { capabilities = ["update"] }
//! path "transit/decrypt/vault-kek" { capabilities = ["update"] }
//! ```

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Deserializer, Serialize};
use vault_core::KekError;
use vault_core::ports::{KeyContext, KeyEncryptionKey, Wrapping};
use vault_crypto::{KEY_LEN, KeyMaterial};
use zeroize::Zeroizing;

/// The backend name, as configuration files and stored key records spell it.
pub const BACKEND: &str = "transit";

/// The mount Transit is enabled at unless configured otherwise.
pub const DEFAULT_MOUNT: &str = "transit";

/// The mount AppRole is enabled at unless configured otherwise.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";

/// How long one request to the server may take, connecting included, unless configured
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The only key type the KEK accepts.
pub const KEY_TYPE: &str = "aes256-gcm96";

/// First byte of every key this backend wraps: the wrapping format's version. The rest is the
/// server's ciphertext string (`vault:vN:<base64>`).
const FORMAT_V1: u8 = 1;

const TOKEN_HEADER: &str = "x-vault-token";

/// The largest reply read from the server; Transit's are a few hundred bytes.
const MAX_REPLY: usize = 1 << 20;

/// Where a secret (a token, an AppRole role id or secret id) is read from. Configuration names
/// the source, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the secret (surrounding whitespace is ignored), e.g. an agent's token sink
    /// or a mounted secret.
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

impl SecretSource {
    /// Reads the secret. `what` names it in errors ("token", "AppRole secret id").
    fn read(&self, what: &'static str) -> Result<Secret, TransitError> {
        let error = |detail: String| TransitError::Credential { what, detail };
        let raw = match self {
            Self::File(path) => {
                crate::check_private(path).map_err(|e| error(e.to_string()))?;
                Zeroizing::new(
                    fs::read_to_string(path)
                        .map_err(|e| error(format!("{}: {e}", path.display())))?,
                )
            }
            // Never format the VarError: NotUnicode carries the value.
            Self::Env(name) => Zeroizing::new(std::env::var(name).map_err(|e| {
                error(match e {
                    std::env::VarError::NotPresent => {
                        format!("environment variable {name} is not set")
                    }
                    std::env::VarError::NotUnicode(_) => {
                        format!("environment variable {name} is not valid UTF-8")
                    }
                })
            })?),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(error(format!("{} is empty", self.describe())));
        }
        if trimmed.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(error(format!(
                "{} holds more than one word or control characters",
                self.describe()
            )));
        }
        Ok(Secret(Zeroizing::new(trimmed.to_owned())))
    }

    fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("file {}", path.display()),
            Self::Env(name) => format!("environment variable {name}"),
        }
    }
}

/// How the KEK authenticates to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitAuth {
    /// A token. Read at open, and read again if the server refuses it (an agent may have
    /// replaced the file).
    Token(SecretSource),
    /// AppRole: logs in at open, and again if the server refuses the token (it expired). Give
    /// the role a secret id that allows more than one use, or none of these re-logins work.
    AppRole {
        /// The mount AppRole is enabled at ([`DEFAULT_APPROLE_MOUNT`]).
        mount: String,
        /// The role id.
        role_id: SecretSource,
        /// The secret id.
        secret_id: SecretSource,
    },
}

/// Where the KEK lives and how to reach it. Holds no secret: credentials are read from the
/// files or environment variables [`TransitAuth`] names.
#[derive(Debug, Clone)]
pub struct TransitSettings {
    /// The server, `https://host:port`.
    pub address: String,
    /// A PEM file with the CA certificate(s) the server's certificate must chain to. Only these
    /// are trusted.
    pub ca_cert: PathBuf,
    /// The mount Transit is enabled at ([`DEFAULT_MOUNT`]).
    pub mount: String,
    /// The key's name within the mount.
    pub key: String,
    /// How to authenticate.
    pub auth: TransitAuth,
    /// How long one request may take, connecting included ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
}

impl TransitSettings {
    /// Settings with the default mount and timeout.
    #[must_use]
    pub fn new(
        address: impl Into<String>,
        ca_cert: impl Into<PathBuf>,
        key: impl Into<String>,
        auth: TransitAuth,
    ) -> Self {
        Self {
            address: address.into(),
            ca_cert: ca_cert.into(),
            mount: DEFAULT_MOUNT.to_owned(),
            key: key.into(),
            auth,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Why the Transit KEK could not be opened. Messages name the address, files, mount and key,
/// never a token, secret id or key material.
#[derive(Debug, thiserror::Error)]
pub enum TransitError {
    /// The settings are unusable (address not https, bad mount or key name, zero timeout).
    #[error("transit settings: {0}")]
    Settings(String),
    /// The CA file could not be read or holds no certificate.
    #[error("transit CA certificate {path}: {detail}")]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A credential could not be read from its file or environment variable.
    #[error("transit {what}: {detail}")]
    Credential {
        /// Which credential.
        what: &'static str,
        /// What failed (names the source, never the value).
        detail: String,
    },
    /// AppRole login was refused or failed.
    #[error("transit {address}: AppRole login failed: {detail}")]
    Login {
        /// The server.
        address: String,
        /// The server's answer.
        detail: String,
    },
    /// The server could not be used: unreachable, sealed, or it refused the request.
    #[error("{0}")]
    Unavailable(String),
    /// The key is missing or is not a non-exportable AES-256-GCM key.
    #[error("transit key {mount}/{key}: {detail}")]
    Key {
        /// The mount.
        mount: String,
        /// The key name.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

/// A KEK held by a Vault / OpenBao Transit engine.
pub struct TransitKek {
    client: Client,
    mount: String,
    key: String,
    /// `transit:<mount>/<key>`: the KEK's name, and every KEK id's prefix.
    name: String,
}

impl fmt::Debug for TransitKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitKek")
            .field("name", &self.name)
            .field("address", &self.client.base)
            .field("auth", &self.client.auth)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl TransitKek {
    /// Connects, authenticates and reads the key, checking that it is an AES-256-GCM key that
    /// can be neither exported nor backed up in plaintext, and not derived.
    ///
    /// # Errors
    /// [`TransitError`] for unusable settings or CA file, unreadable credentials, a refused
    /// login, an unreachable or sealed server, or a missing or unsafe key.
    pub async fn open(settings: TransitSettings) -> Result<Self, TransitError> {
        let client = Client::connect(&settings).await?;
        let kek = Self {
            name: format!("{BACKEND}:{}/{}", settings.mount, settings.key),
            client,
            mount: settings.mount,
            key: settings.key,
        };
        let info = kek.read_key().await.map_err(|failure| match failure {
            Failure::Status {
                status: StatusCode::NOT_FOUND,
                errors,
            } => kek.key_error(format!(
                "not found (is Transit enabled at this mount, and the key created?){}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", truncate(&errors.join("; ")))
                }
            )),
            other => TransitError::Unavailable(kek.client.describe(&other)),
        })?;
        kek.validate(&info)
            .map_err(|detail| kek.key_error(detail))?;
        Ok(kek)
    }

    /// Creates the key on the server unless one with its name exists: an `aes256-gcm96` key
    /// that is not exportable and allows no plaintext backup. For tests and development; the
    /// token needs `create`/`update` on `<mount>/keys/<key>`. An existing key is left as it is
    /// ([`TransitKek::open`] then checks it).
    ///
    /// # Errors
    /// [`TransitError`] if the server cannot be reached or refuses.
    pub async fn create_key(settings: &TransitSettings) -> Result<(), TransitError> {
        let client = Client::connect(settings).await?;
        let body = json_body(&CreateKey {
            key_type: KEY_TYPE,
            exportable: false,
            allow_plaintext_backup: false,
        })
        .map_err(TransitError::Unavailable)?;
        client
            .send(
                Method::POST,
                &format!("{}/keys/{}", settings.mount, settings.key),
                Some(&body),
            )
            .await
            .map_err(|failure| TransitError::Unavailable(client.describe(&failure)))?;
        Ok(())
    }

    fn key_error(&self, detail: String) -> TransitError {
        TransitError::Key {
            mount: self.mount.clone(),
            key: self.key.clone(),
            detail,
        }
    }

    async fn read_key(&self) -> Result<KeyInfo, Failure> {
        let body = self
            .client
            .send(
                Method::GET,
                &format!("{}/keys/{}", self.mount, self.key),
                None,
            )
            .await?;
        parse_data(&body)
    }

    /// Refuses a key that is not a plain, non-exportable AES-256-GCM key.
    fn validate(&self, info: &KeyInfo) -> Result<(), String> {
        if info.key_type != KEY_TYPE {
            return Err(format!(
                "type is {:?}; the KEK must be an {KEY_TYPE} key",
                info.key_type
            ));
        }
        if info.exportable {
            return Err(
                "is exportable: its key material can be read out of the server; use a key \
                 created with exportable=false"
                    .to_owned(),
            );
        }
        if info.allow_plaintext_backup {
            return Err(
                "allows plaintext backup: its key material can be read out of the server; use a \
                 key created with allow_plaintext_backup=false"
                    .to_owned(),
            );
        }
        if info.derived {
            return Err(
                "is a derived key; the KEK binds its context as associated data and needs a \
                 key created with derived=false"
                    .to_owned(),
            );
        }
        if info.latest_version == 0 {
            return Err("has no versions".to_owned());
        }
        Ok(())
    }

    fn kek_id(&self, version: u32) -> String {
        format!("{}:v{version}", self.name)
    }

    /// The key version a KEK id names, if this KEK owns it.
    fn id_version(&self, kek_id: &str) -> Option<u32> {
        kek_id
            .strip_prefix(self.name.as_str())
            .and_then(|rest| rest.strip_prefix(":v"))
            .and_then(parse_version)
    }

    fn unavailable(&self, failure: &Failure) -> KekError {
        KekError::Unavailable(self.client.describe(failure))
    }
}

#[async_trait]
impl KeyEncryptionKey for TransitKek {
    fn name(&self) -> &str {
        &self.name
    }

    fn owns(&self, kek_id: &str) -> bool {
        self.id_version(kek_id).is_some()
    }

    async fn current_id(&self) -> Result<String, KekError> {
        let info = self.read_key().await.map_err(|f| self.unavailable(&f))?;
        self.validate(&info)
            .map_err(|detail| KekError::Unavailable(format!("{}: key {detail}", self.name)))?;
        Ok(self.kek_id(info.latest_version))
    }

    async fn check(&self) -> Result<(), KekError> {
        self.current_id().await.map(drop)
    }

    async fn wrap(&self, context: &KeyContext, key: &KeyMaterial) -> Result<Wrapping, KekError> {
        let mut plaintext = Zeroizing::new(String::with_capacity(base64_len(KEY_LEN)));
        BASE64.encode_string(key.expose_secret(), &mut plaintext);
        let associated_data = BASE64.encode(context.associated_data());
        let body = json_body(&Encrypt {
            plaintext: &plaintext,
            associated_data: &associated_data,
        })
        .map_err(KekError::Unavailable)?;
        let reply = self
            .client
            .send(
                Method::POST,
                &format!("{}/encrypt/{}", self.mount, self.key),
                Some(&body),
            )
            .await
            .map_err(|f| self.unavailable(&f))?;
        let data: Encrypted = parse_data(&reply).map_err(|f| self.unavailable(&f))?;
        let version = ciphertext_version(&data.ciphertext).ok_or_else(|| {
            KekError::Unavailable(format!(
                "{}: the server returned a ciphertext without a key version",
                self.name
            ))
        })?;
        let mut wrapped = Vec::with_capacity(1 + data.ciphertext.len());
        wrapped.push(FORMAT_V1);
        wrapped.extend_from_slice(data.ciphertext.as_bytes());
        Ok(Wrapping {
            kek_id: self.kek_id(version),
            wrapped,
        })
    }

    async fn unwrap(
        &self,
        context: &KeyContext,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<KeyMaterial, KekError> {
        let Some((&FORMAT_V1, rest)) = wrapped.split_first() else {
            return Err(KekError::Integrity);
        };
        let ciphertext = std::str::from_utf8(rest).map_err(|_| KekError::Integrity)?;
        // The version the store recorded must be the one the ciphertext names: a wrapped key
        // moved under another KEK id does not unwrap.
        match (self.id_version(kek_id), ciphertext_version(ciphertext)) {
            (Some(recorded), Some(found)) if recorded == found => {}
            _ => return Err(KekError::Integrity),
        }
        let associated_data = BASE64.encode(context.associated_data());
        let body = json_body(&Decrypt {
            ciphertext,
            associated_data: &associated_data,
        })
        .map_err(KekError::Unavailable)?;
        let reply = self
            .client
            .send(
                Method::POST,
                &format!("{}/decrypt/{}", self.mount, self.key),
                Some(&body),
            )
            .await
            .map_err(|failure| {
                if failure.is_integrity() {
                    KekError::Integrity
                } else {
                    self.unavailable(&failure)
                }
            })?;
        let data: Decrypted = parse_data(&reply).map_err(|f| self.unavailable(&f))?;
        let mut plain = Zeroizing::new(Vec::with_capacity(data.plaintext.0.len()));
        BASE64
            .decode_vec(data.plaintext.0.as_bytes(), &mut plain)
            .map_err(|_| KekError::Integrity)?;
        KeyMaterial::from_slice(&plain).map_err(|_| KekError::Integrity)
    }
}

/// A secret string: zeroized on drop, never printed.
struct Secret(Zeroizing<String>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Self(Zeroizing::new(s)))
    }
}

/// A request body that is zeroized when the HTTP stack drops it.
struct SecretBody(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for SecretBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Why a request failed.
enum Failure {
    /// No answer: connection refused, TLS failure, timeout.
    Transport(reqwest::Error),
    /// The server answered with an error status.
    Status {
        status: StatusCode,
        errors: Vec<String>,
    },
    /// The server answered 2xx with a body we could not read.
    Malformed(String),
}

impl Failure {
    /// A 400 from decrypt that says the ciphertext or its associated data does not
    /// authenticate or is not a ciphertext at all.
    fn is_integrity(&self) -> bool {
        match self {
            Self::Status { status, errors } if *status == StatusCode::BAD_REQUEST => {
                errors.iter().any(|e| {
                    let e = e.to_ascii_lowercase();
                    e.contains("message authentication")
                        || e.contains("invalid ciphertext")
                        || e.contains("failed to decrypt")
                        || e.contains("decryption failed")
                })
            }
            _ => false,
        }
    }
}

/// The HTTP client and the current token.
struct Client {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    auth: TransitAuth,
    token: RwLock<Arc<Secret>>,
    relogin: tokio::sync::Mutex<()>,
}

impl Client {
    async fn connect(settings: &TransitSettings) -> Result<Self, TransitError> {
        let base = check_settings(settings)?;
        let http = http_client(&settings.ca_cert, settings.timeout)?;
        let mut client = Self {
            http,
            base,
            timeout: settings.timeout,
            auth: settings.auth.clone(),
            token: RwLock::new(Arc::new(Secret(Zeroizing::default()))),
            relogin: tokio::sync::Mutex::new(()),
        };
        let token = client.fresh_token().await?;
        client.token = RwLock::new(Arc::new(token));
        Ok(client)
    }

    /// A token from the configured source: read it, or log in with AppRole.
    async fn fresh_token(&self) -> Result<Secret, TransitError> {
        match &self.auth {
            TransitAuth::Token(source) => source.read("token"),
            TransitAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let role_id = role_id.read("AppRole role id")?;
                let secret_id = secret_id.read("AppRole secret id")?;
                let body = json_body(&Login {
                    role_id: &role_id.0,
                    secret_id: &secret_id.0,
                })
                .map_err(TransitError::Unavailable)?;
                let login_error = |detail: String| TransitError::Login {
                    address: self.base.clone(),
                    detail,
                };
                let reply = match self
                    .send_once(
                        &Method::POST,
                        &format!("auth/{mount}/login"),
                        Some(&body),
                        None,
                    )
                    .await
                {
                    Ok(reply) => reply,
                    Err(failure @ Failure::Status { status, .. }) if status.is_client_error() => {
                        return Err(login_error(self.describe(&failure)));
                    }
                    Err(failure) => return Err(TransitError::Unavailable(self.describe(&failure))),
                };
                let parsed: LoginReply = serde_json::from_slice(&reply).map_err(|_| {
                    login_error("the server's answer holds no client token".to_owned())
                })?;
                Ok(parsed.auth.client_token)
            }
        }
    }

    fn current_token(&self) -> Arc<Secret> {
        match self.token.read() {
            Ok(token) => token.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces `used` by a fresh token, unless another call already did. False if no fresher
    /// token could be had (the source still holds the refused one, or login failed).
    async fn refresh(&self, used: &Arc<Secret>) -> bool {
        let _guard = self.relogin.lock().await;
        if !Arc::ptr_eq(used, &self.current_token()) {
            return true;
        }
        let Ok(fresh) = self.fresh_token().await else {
            return false;
        };
        if fresh.0 == used.0 {
            return false;
        }
        match self.token.write() {
            Ok(mut token) => *token = Arc::new(fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
        }
        true
    }

    /// Sends an authenticated request to `/v1/<path>`; on 403 gets a fresh token once and
    /// retries. Returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Zeroizing<Vec<u8>>>,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let token = self.current_token();
        match self.send_once(&method, path, body, Some(&token)).await {
            Err(Failure::Status {
                status: StatusCode::FORBIDDEN,
                errors,
            }) => {
                if self.refresh(&token).await {
                    let token = self.current_token();
                    self.send_once(&method, path, body, Some(&token)).await
                } else {
                    Err(Failure::Status {
                        status: StatusCode::FORBIDDEN,
                        errors,
                    })
                }
            }
            other => other,
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Zeroizing<Vec<u8>>>,
        token: Option<&Arc<Secret>>,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.base));
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&token.0).map_err(|_| {
                Failure::Malformed("the token is not a valid header value".to_owned())
            })?;
            value.set_sensitive(true);
            request = request.header(HeaderName::from_static(TOKEN_HEADER), value);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(Bytes::from_owner(SecretBody(body.clone())));
        }
        let mut response = request.send().await.map_err(Failure::Transport)?;
        let status = response.status();
        let capacity = response
            .content_length()
            .and_then(|len| usize::try_from(len).ok())
            .unwrap_or(1024)
            .min(MAX_REPLY);
        let mut reply = Zeroizing::new(Vec::with_capacity(capacity));
        while let Some(chunk) = response.chunk().await.map_err(Failure::Transport)? {
            if reply.len() + chunk.len() > MAX_REPLY {
                return Err(Failure::Malformed(format!(
                    "HTTP {}: reply larger than {MAX_REPLY} bytes",
                    status.as_u16()
                )));
            }
            if reply.len() + chunk.len() > reply.capacity() {
                // Grow by hand so that no unzeroized copy is left behind by a reallocation.
                let mut bigger = Zeroizing::new(Vec::with_capacity(
                    (reply.len() + chunk.len()).max(2 * reply.capacity()),
                ));
                bigger.extend_from_slice(&reply);
                reply = bigger;
            }
            reply.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(reply)
        } else {
            let errors = serde_json::from_slice::<ErrorReply>(&reply)
                .map(|e| e.errors)
                .unwrap_or_default();
            Err(Failure::Status { status, errors })
        }
    }

    /// An error message for `failure`: says whether the server is unreachable, sealed, or
    /// refused the request. Never contains the token or a secret id.
    fn describe(&self, failure: &Failure) -> String {
        let what = match failure {
            Failure::Transport(e) if e.is_timeout() => format!(
                "unreachable (no answer within {:?}): {}",
                self.timeout,
                error_chain(e)
            ),
            Failure::Transport(e) => format!("unreachable: {}", error_chain(e)),
            Failure::Status { status, errors } => {
                let said = errors.join("; ");
                let lower = said.to_ascii_lowercase();
                let kind = if *status == StatusCode::SERVICE_UNAVAILABLE && lower.contains("sealed")
                {
                    "sealed"
                } else if *status == StatusCode::FORBIDDEN {
                    "permission denied"
                } else if *status == StatusCode::NOT_FOUND {
                    "not found"
                } else if status.is_server_error() {
                    "server error"
                } else {
                    "request refused"
                };
                format!("{kind} (HTTP {}): {}", status.as_u16(), truncate(&said))
            }
            Failure::Malformed(detail) => format!("unexpected answer: {detail}"),
        };
        self.redact(format!("transit {}: {what}", self.base))
    }

    /// Belt and braces: the current token never appears in a message, whatever a server or
    /// library put into it.
    fn redact(&self, mut message: String) -> String {
        let token = self.current_token();
        if !token.0.is_empty() && message.contains(token.0.as_str()) {
            message = message.replace(token.0.as_str(), "<redacted>");
        }
        message
    }
}

/// Checks the settings and returns the base URL (`https://host:port`, no trailing slash).
fn check_settings(settings: &TransitSettings) -> Result<String, TransitError> {
    let bad = |detail: String| TransitError::Settings(detail);
    let url = Url::parse(&settings.address)
        .map_err(|e| bad(format!("address {:?}: {e}", settings.address)))?;
    if url.scheme() != "https" {
        return Err(bad(format!(
            "address {:?}: must be an https:// URL",
            settings.address
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("address: must not contain credentials".to_owned()));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!(
            "address {:?}: expected https://host:port",
            settings.address
        )));
    }
    let name_ok = |name: &str, slash: bool| {
        !name.is_empty()
            && !name.starts_with('/')
            && !name.ends_with('/')
            && !name
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
            && name.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || (slash && c == '/')
            })
    };
    if !name_ok(&settings.mount, true) {
        return Err(bad(format!(
            "mount {:?}: expected a path like \"transit\"",
            settings.mount
        )));
    }
    if !name_ok(&settings.key, false) {
        return Err(bad(format!(
            "key {:?}: expected letters, digits, '-', '_' or '.'",
            settings.key
        )));
    }
    if let TransitAuth::AppRole { mount, .. } = &settings.auth
        && !name_ok(mount, true)
    {
        return Err(bad(format!("AppRole mount {mount:?}: expected a path")));
    }
    if settings.timeout.is_zero() {
        return Err(bad("timeout must be more than zero".to_owned()));
    }
    Ok(settings.address.trim_end_matches('/').to_owned())
}

/// An HTTPS client that trusts exactly the CAs in `ca_cert`, over rustls with ring.
pub(crate) fn http_client(
    ca_cert: &Path,
    timeout: Duration,
) -> Result<reqwest::Client, TransitError> {
    let ca_error = |detail: String| TransitError::Ca {
        path: ca_cert.to_owned(),
        detail,
    };
    let pem = fs::read(ca_cert).map_err(|e| ca_error(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ca_error(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_error("holds no certificate".to_owned()));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ca_error(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| TransitError::Settings(format!("HTTP client: {}", error_chain(&e))))
}

/// The data of a Vault reply (`{"data": {...}}`).
fn parse_data<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice::<Reply<T>>(body)
        .map(|reply| reply.data)
        .map_err(|e| Failure::Malformed(format!("unreadable reply: {e}")))
}

/// A JSON request body in a zeroizing buffer, sized up front so that serializing never
/// reallocates (which would leave a copy of a secret behind).
fn json_body<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut size = SizeCounter(0);
    serde_json::to_writer(&mut size, value).map_err(|e| format!("request body: {e}"))?;
    let mut body = Zeroizing::new(Vec::with_capacity(size.0));
    serde_json::to_writer(&mut *body, value).map_err(|e| format!("request body: {e}"))?;
    Ok(body)
}

struct SizeCounter(usize);

impl std::io::Write for SizeCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// The key version in a Transit ciphertext, `vault:v<N>:<base64>`.
fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    let (version, payload) = ciphertext.strip_prefix("vault:v")?.split_once(':')?;
    if payload.is_empty() {
        return None;
    }
    parse_version(version)
}

/// A key version: decimal digits, from 1.
fn parse_version(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|v| *v >= 1)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The server's error text, cut to a sensible length for a log line.
fn truncate(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[derive(Deserialize)]
struct Reply<T> {
    data: T,
}

#[derive(Deserialize)]
struct ErrorReply {
    #[serde(default)]
    errors: Vec<String>,
}

/// What `GET <mount>/keys/<key>` says about the key.
#[derive(Deserialize)]
struct KeyInfo {
    #[serde(rename = "type")]
    key_type: String,
    exportable: bool,
    allow_plaintext_backup: bool,
    #[serde(default)]
    derived: bool,
    latest_version: u32,
}

#[derive(Serialize)]
struct CreateKey {
    #[serde(rename = "type")]
    key_type: &'static str,
    exportable: bool,
    allow_plaintext_backup: bool,
}

#[derive(Serialize)]
struct Encrypt<'a> {
    plaintext: &'a str,
    associated_data: &'a str,
}

#[derive(Deserialize)]
struct Encrypted {
    ciphertext: String,
}

#[derive(Serialize)]
struct Decrypt<'a> {
    ciphertext: &'a str,
    associated_data: &'a str,
}

#[derive(Deserialize)]
struct Decrypted {
    plaintext: Secret,
}

#[derive(Serialize)]
struct Login<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

#[derive(Deserialize)]
struct LoginReply {
    auth: LoginAuth,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_versions() {
        assert_eq!(ciphertext_version("vault:v1:abc="), Some(1));
        assert_eq!(ciphertext_version("vault:v42:abc="), Some(42));
        for bad in [
            "vault:v0:abc",
            "vault:v:abc",
            "vault:v+1:abc",
            "vault:v1:",
            "vault:v1",
            "vault:1:abc",
            "vault:v99999999999:abc",
            "",
        ] {
            assert_eq!(ciphertext_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_come_from_files_or_the_environment_and_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "s.secret-token\n").unwrap();
        // A token file other users can read is refused, naming its mode, not its contents.
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let err = SecretSource::File(path.clone()).read("token").unwrap_err();
        assert!(err.to_string().contains("mode 644"), "{err}");
        assert!(!err.to_string().contains("secret-token"), "{err}");
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let secret = SecretSource::File(path.clone()).read("token").unwrap();
        assert_eq!(secret.0.as_str(), "s.secret-token");
        assert_eq!(format!("{secret:?}"), "<redacted>");

        fs::write(&path, "  \n").unwrap();
        let err = SecretSource::File(path.clone()).read("token").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        fs::write(&path, "two words").unwrap();
        let err = SecretSource::File(path).read("token").unwrap_err();
        assert!(!err.to_string().contains("words"), "{err}");

        // cargo sets this for every test process.
        let env = SecretSource::Env("CARGO_PKG_NAME".to_owned());
        assert_eq!(env.read("token").unwrap().0.as_str(), "vault-kms");
        let missing = SecretSource::Env("VAULT_KMS_NO_SUCH_VARIABLE".to_owned());
        let err = missing.read("token").unwrap_err();
        assert!(
            err.to_string().contains("VAULT_KMS_NO_SUCH_VARIABLE"),
            "{err}"
        );
    }

    #[test]
    fn settings_are_checked() {
        let auth = TransitAuth::Token(SecretSource::Env("T".to_owned()));
        let ok = TransitSettings::new("https://127.0.0.1:8200/", "/ca.pem", "vault-kek", auth);
        assert_eq!(check_settings(&ok).unwrap(), "https://127.0.0.1:8200");
        let variants: [fn(&mut TransitSettings); 7] = [
            |s| s.address = "http://127.0.0.1:8200".to_owned(),
            |s| s.address = "https://user:pw@127.0.0.1:8200".to_owned(),
            |s| s.address = "not a url".to_owned(),
            |s| s.mount = "../sys".to_owned(),
            |s| s.mount = String::new(),
            |s| s.key = "a/b".to_owned(),
            |s| s.timeout = Duration::ZERO,
        ];
        for change in variants {
            let mut bad = ok.clone();
            change(&mut bad);
            let err = check_settings(&bad).unwrap_err();
            assert!(matches!(err, TransitError::Settings(_)), "{err}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
        let mut nested = ok.clone();
        nested.mount = "team/transit".to_owned();
        assert!(check_settings(&nested).is_ok());
    }

    #[test]
    fn json_bodies_are_exactly_sized() {
        let body = json_body(&Encrypt {
            plaintext: "AAAA",
            associated_data: "BBBB",
        })
        .unwrap();
        assert_eq!(body.len(), body.capacity());
        assert_eq!(
            &body[..],
            br#"{"plaintext":"AAAA","associated_data":"BBBB"}"#
        );
    }
}
