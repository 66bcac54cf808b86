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

mod client;
mod error;
mod kek;
mod settings;
mod wire;

#[cfg(feature = "testing")]
pub(crate) use client::http_client;
pub use error::TransitError;
pub use kek::TransitKek;
pub use settings::{
    DEFAULT_APPROLE_MOUNT, DEFAULT_MOUNT, DEFAULT_TIMEOUT, TransitAuth, TransitSettings,
};

/// The backend name, as configuration files and stored key records spell it.
pub const BACKEND: &str = "transit";

/// The only key type the KEK accepts.
pub const KEY_TYPE: &str = "aes256-gcm96";
