//! The KEK itself: opens and checks the key, wraps and unwraps through Transit's `encrypt` and
//! `decrypt` endpoints, and names key versions in KEK ids (`transit:<mount>/<key>:v<N>`).

use std::fmt;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use vault_core::KekError;
use vault_core::ports::{KeyContext, KeyEncryptionKey, Wrapping};
use vault_crypto::{KEY_LEN, KeyMaterial};
use zeroize::Zeroizing;

use super::client::{Client, Failure, truncate};
use super::settings::TransitSettings;
use super::wire::{
    CreateKey, Decrypt, Decrypted, Encrypt, Encrypted, KeyInfo, base64_len, ciphertext_version,
    json_body, parse_data, parse_version,
};
use super::{BACKEND, KEY_TYPE, TransitError};

/// First byte of every key this backend wraps: the wrapping format's version. The rest is the
/// server's ciphertext string (`vault:vN:<base64>`).
const FORMAT_V1: u8 = 1;

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

    /// The KEK error for a failed request: a timeout is its own error (a slow server, not a
    /// down one), a transport failure keeps reqwest's error as its cause, and an answer the
    /// server gave is described (never with the token).
    fn unavailable(&self, failure: Failure) -> KekError {
        match failure {
            Failure::Transport(e) if e.is_timeout() => KekError::Timeout {
                what: format!("{}: no answer", self.name),
                after: self.client.timeout(),
            },
            Failure::Transport(e) => KekError::caused_by(format!("{}: unreachable", self.name), e),
            other => KekError::unavailable(self.client.describe(&other)),
        }
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
        let info = self.read_key().await.map_err(|f| self.unavailable(f))?;
        self.validate(&info)
            .map_err(|detail| KekError::unavailable(format!("{}: key {detail}", self.name)))?;
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
        .map_err(KekError::unavailable)?;
        let reply = self
            .client
            .send(
                Method::POST,
                &format!("{}/encrypt/{}", self.mount, self.key),
                Some(&body),
            )
            .await
            .map_err(|f| self.unavailable(f))?;
        let data: Encrypted = parse_data(&reply).map_err(|f| self.unavailable(f))?;
        let version = ciphertext_version(&data.ciphertext).ok_or_else(|| {
            KekError::unavailable(format!(
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
        .map_err(KekError::unavailable)?;
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
                    self.unavailable(failure)
                }
            })?;
        let data: Decrypted = parse_data(&reply).map_err(|f| self.unavailable(f))?;
        let mut plain = Zeroizing::new(Vec::with_capacity(data.plaintext.expose_secret().len()));
        BASE64
            .decode_vec(data.plaintext.expose_secret().as_bytes(), &mut plain)
            .map_err(|_| KekError::Integrity)?;
        KeyMaterial::from_slice(&plain).map_err(|_| KekError::Integrity)
    }
}
