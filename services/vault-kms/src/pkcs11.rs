//! The HSM KEK: a non-extractable AES-256 key inside a PKCS#11 token. DEKs and fingerprint keys
//! are wrapped by the token itself with CKM_AES_GCM, whose associated data binds merchant,
//! purpose and version (`KeyContext::associated_data`). The key never leaves the token; the
//! vault only asks it to encrypt and decrypt 32-byte keys.
//!
//! PKCS#11 calls block, so they run on tokio's blocking pool. Sessions are pooled (a
//! `cryptoki::Session` is `Send` but not `Sync`): each call takes an idle session or opens one,
//! and returns it afterwards unless the token reported it broken.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use vault_core::KekError;
use vault_core::ports::{KeyContext, KeyEncryptionKey, Wrapping};
use vault_crypto::{KEY_LEN, KeyMaterial, NONCE_LEN, TAG_LEN};
use zeroize::Zeroizing;

/// The backend name, as configuration files and stored key records spell it.
pub const BACKEND: &str = "pkcs11";

/// First byte of every key this backend wraps: the wrapping format's version.
const FORMAT_V1: u8 = 1;

/// Where the KEK lives and how to log in. The PIN is never printed.
pub struct Pkcs11Settings {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The user PIN.
    pub pin: AuthPin,
    /// The KEK's label (CKA_LABEL) inside the token.
    pub key_label: String,
}

impl fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("key_label", &self.key_label)
            .finish()
    }
}

/// Why the HSM KEK could not be opened. Messages name the module, token and key, never the PIN.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The module could not be loaded or initialized.
    #[error("pkcs11 module {module}: {detail}")]
    Module {
        /// The module path.
        module: PathBuf,
        /// What failed.
        detail: String,
    },
    /// No token with that label.
    #[error("pkcs11: no token labelled {0:?}")]
    NoToken(String),
    /// Login failed (wrong PIN, locked token).
    #[error("pkcs11: login to token {token:?} failed: {detail}")]
    Login {
        /// The token label.
        token: String,
        /// The token's answer.
        detail: String,
    },
    /// The key is missing, ambiguous, or not a sensitive, non-extractable AES-256 key.
    #[error("pkcs11: key {key:?} in token {token:?}: {detail}")]
    Key {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

/// A KEK held in a PKCS#11 token.
pub struct Pkcs11Kek {
    inner: Arc<Inner>,
    kek_id: String,
}

struct Inner {
    ctx: Pkcs11,
    module: PathBuf,
    token_label: String,
    /// The token's slot; found again by label when the token comes back after an outage.
    slot: Mutex<Slot>,
    pin: AuthPin,
    key_label: String,
    idle: Mutex<Vec<Session>>,
    /// When the module was last re-initialized (at most once per `RECOVERY_INTERVAL`).
    last_recovery: Mutex<Option<Instant>>,
}

/// The shortest time between two re-initializations of the module.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// PKCS#11 modules must be initialized once per process: contexts are shared by module path.
fn context(module: &Path) -> Result<Pkcs11, Pkcs11Error> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let error = |detail: String| Pkcs11Error::Module {
        module: module.to_owned(),
        detail,
    };
    let mut contexts = CONTEXTS
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| error("context registry poisoned".to_owned()))?;
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| error(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(error(e.to_string())),
    }
    contexts.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

fn find_slot(ctx: &Pkcs11, module: &Path, token_label: &str) -> Result<Slot, Pkcs11Error> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| Pkcs11Error::Module {
            module: module.to_owned(),
            detail: e.to_string(),
        })?;
    slots
        .into_iter()
        .find(|slot| {
            ctx.get_token_info(*slot)
                .is_ok_and(|info| info.label().trim_end() == token_label)
        })
        .ok_or_else(|| Pkcs11Error::NoToken(token_label.to_owned()))
}

/// The module's context, the token's slot, and a logged-in read-write session on it.
fn logged_in(settings: &Pkcs11Settings) -> Result<(Pkcs11, Slot, Session), Pkcs11Error> {
    let ctx = context(&settings.module)?;
    let slot = find_slot(&ctx, &settings.module, &settings.token_label)?;
    let login_error = |e: CkError| Pkcs11Error::Login {
        token: settings.token_label.clone(),
        detail: e.to_string(),
    };
    let session = ctx.open_rw_session(slot).map_err(login_error)?;
    login(&session, &settings.pin).map_err(login_error)?;
    Ok((ctx, slot, session))
}

fn login(session: &Session, pin: &AuthPin) -> Result<(), CkError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn key_template(label: &str) -> [Attribute; 3] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

impl Pkcs11Kek {
    /// Opens the token, logs in and finds the KEK, checking that it is a sensitive,
    /// non-extractable AES-256 key.
    ///
    /// # Errors
    /// [`Pkcs11Error`] for a missing module, token or key, a wrong PIN, or an exportable key.
    pub fn open(settings: Pkcs11Settings) -> Result<Self, Pkcs11Error> {
        let (ctx, slot, session) = logged_in(&settings)?;
        let key_error = |detail: String| Pkcs11Error::Key {
            token: settings.token_label.clone(),
            key: settings.key_label.clone(),
            detail,
        };
        let keys = session
            .find_objects(&key_template(&settings.key_label))
            .map_err(|e| key_error(e.to_string()))?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => return Err(key_error("not found".to_owned())),
            _ => return Err(key_error("more than one key has this label".to_owned())),
        };
        let attributes = session
            .get_attributes(
                key,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::ValueLen,
                ],
            )
            .map_err(|e| key_error(e.to_string()))?;
        let safe = attributes.iter().all(|a| match a {
            Attribute::Sensitive(sensitive) => *sensitive,
            Attribute::Extractable(extractable) => !*extractable,
            Attribute::ValueLen(len) => u64::from(*len) == KEY_LEN as u64,
            _ => true,
        }) && attributes.len() == 3;
        if !safe {
            return Err(key_error(
                "must be a sensitive, non-extractable AES-256 key".to_owned(),
            ));
        }
        let kek_id = format!("{BACKEND}:{}/{}", settings.token_label, settings.key_label);
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                module: settings.module,
                token_label: settings.token_label,
                slot: Mutex::new(slot),
                pin: settings.pin,
                key_label: settings.key_label,
                idle: Mutex::new(vec![session]),
                last_recovery: Mutex::new(None),
            }),
            kek_id,
        })
    }

    /// Creates the KEK in the token unless a key with its label exists: AES-256, generated by
    /// the token, sensitive and non-extractable, usable only to encrypt and decrypt.
    ///
    /// # Errors
    /// [`Pkcs11Error`] if the token cannot be reached or refuses.
    pub fn create_key(settings: &Pkcs11Settings) -> Result<(), Pkcs11Error> {
        let (_, _, session) = logged_in(settings)?;
        let key_error = |e: CkError| Pkcs11Error::Key {
            token: settings.token_label.clone(),
            key: settings.key_label.clone(),
            detail: e.to_string(),
        };
        if !session
            .find_objects(&key_template(&settings.key_label))
            .map_err(key_error)?
            .is_empty()
        {
            return Ok(());
        }
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen((KEY_LEN as u64).into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Label(settings.key_label.as_bytes().to_vec()),
                ],
            )
            .map_err(key_error)?;
        Ok(())
    }

    /// Runs `op` on a pooled, logged-in session with the KEK's handle, on the blocking pool.
    async fn with_session<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Session, ObjectHandle) -> Result<T, CkError> + Send + 'static,
    ) -> Result<T, KekError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.run(op))
            .await
            .map_err(|e| KekError::caused_by("pkcs11 worker failed", e))?
    }
}

impl Inner {
    fn run<T>(
        &self,
        op: impl FnOnce(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, KekError> {
        let (session, key) = self.session_with_key()?;
        match op(&session, key) {
            Ok(value) => {
                self.give_back(session);
                Ok(value)
            }
            Err(e) => {
                // A decryption the token refuses while the session is still healthy means the
                // wrapped key or its context does not authenticate (SoftHSM reports tampering as
                // CKR_GENERAL_ERROR). Anything else means the token is not usable.
                let healthy = session.get_session_info().is_ok()
                    && matches!(
                        e,
                        CkError::Pkcs11(
                            RvError::EncryptedDataInvalid
                                | RvError::EncryptedDataLenRange
                                | RvError::GeneralError,
                            _
                        )
                    );
                if healthy {
                    self.give_back(session);
                    Err(KekError::Integrity)
                } else {
                    Err(unavailable(e))
                }
            }
        }
    }

    fn give_back(&self, session: Session) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
        }
    }

    /// A logged-in session that finds the KEK: a pooled one, else a fresh one, else, once the
    /// token looks gone, a fresh one after re-initializing the module (a token that was pulled
    /// and put back, or an HSM that restarted, is only seen again after C_Initialize).
    fn session_with_key(&self) -> Result<(Session, ObjectHandle), KekError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        if let Some(session) = pooled
            && let Ok(key) = self.find_key(&session)
        {
            return Ok((session, key));
        }
        // A pooled session that fails is dropped (closed), not returned.
        match self.fresh_session() {
            Ok(found) => Ok(found),
            Err(first) => {
                if !self.reinitialize() {
                    return Err(first);
                }
                self.fresh_session()
            }
        }
    }

    fn fresh_session(&self) -> Result<(Session, ObjectHandle), KekError> {
        let slot = *self
            .slot
            .lock()
            .map_err(|_| KekError::unavailable("pkcs11: slot lock poisoned"))?;
        let session = self.ctx.open_rw_session(slot).map_err(unavailable)?;
        login(&session, &self.pin).map_err(unavailable)?;
        let key = self.find_key(&session)?;
        Ok((session, key))
    }

    fn find_key(&self, session: &Session) -> Result<ObjectHandle, KekError> {
        match session
            .find_objects(&key_template(&self.key_label))
            .map_err(unavailable)?
            .as_slice()
        {
            [key] => Ok(*key),
            _ => Err(KekError::unavailable(
                "pkcs11: the KEK is missing from the token",
            )),
        }
    }

    /// Finalizes and initializes the module again and finds the token's slot by label. Returns
    /// false if it was done less than `RECOVERY_INTERVAL` ago or did not find the token.
    fn reinitialize(&self) -> bool {
        let Ok(mut last) = self.last_recovery.lock() else {
            return false;
        };
        if last.is_some_and(|at| at.elapsed() < RECOVERY_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        let _ = self.ctx.clone().finalize();
        match self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(_) => return false,
        }
        match (
            find_slot(&self.ctx, &self.module, &self.token_label),
            self.slot.lock(),
        ) {
            (Ok(found), Ok(mut slot)) => {
                *slot = found;
                true
            }
            _ => false,
        }
    }
}

fn unavailable(e: CkError) -> KekError {
    KekError::caused_by("pkcs11", e)
}

#[async_trait]
impl KeyEncryptionKey for Pkcs11Kek {
    fn name(&self) -> &str {
        &self.kek_id
    }

    fn owns(&self, kek_id: &str) -> bool {
        kek_id == self.kek_id
    }

    async fn current_id(&self) -> Result<String, KekError> {
        Ok(self.kek_id.clone())
    }

    async fn check(&self) -> Result<(), KekError> {
        // A pooled (or new, logged-in) session that still finds the KEK.
        self.with_session(|_, _| Ok(())).await
    }

    async fn wrap(&self, context: &KeyContext, key: &KeyMaterial) -> Result<Wrapping, KekError> {
        let aad = context.associated_data();
        let plaintext = Zeroizing::new(key.expose_secret().to_vec());
        let mut iv = [0u8; NONCE_LEN];
        rand::fill(&mut iv[..]);
        let sealed = self
            .with_session(move |session, kek| {
                let mut gcm_iv = iv;
                let params = GcmParams::new(&mut gcm_iv, &aad, (TAG_LEN as u64 * 8).into())?;
                session.encrypt(&Mechanism::AesGcm(params), kek, &plaintext)
            })
            .await?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(Wrapping {
            kek_id: self.kek_id.clone(),
            wrapped: out,
        })
    }

    async fn unwrap(
        &self,
        context: &KeyContext,
        _kek_id: &str,
        wrapped: &[u8],
    ) -> Result<KeyMaterial, KekError> {
        let Some((&FORMAT_V1, rest)) = wrapped.split_first() else {
            return Err(KekError::Integrity);
        };
        if rest.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
            return Err(KekError::Integrity);
        }
        let (iv, sealed) = rest.split_at(NONCE_LEN);
        let mut iv: [u8; NONCE_LEN] = iv.try_into().map_err(|_| KekError::Integrity)?;
        let sealed = sealed.to_vec();
        let aad = context.associated_data();
        let plain = self
            .with_session(move |session, kek| {
                let params = GcmParams::new(&mut iv, &aad, (TAG_LEN as u64 * 8).into())?;
                session
                    .decrypt(&Mechanism::AesGcm(params), kek, &sealed)
                    .map(Zeroizing::new)
            })
            .await?;
        KeyMaterial::from_slice(&plain).map_err(|_| KekError::Integrity)
    }
}
