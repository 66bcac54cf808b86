//! Envelope encryption primitives for the card vault.
//!
//! - [`KeyMaterial`]: 32 secret bytes (a DEK, a fingerprint key, a dev KEK). Zeroized on drop, no
//!   `Debug`, no `Clone`.
//! - [`AeadKey`]: an AES-256-GCM key ready for use. [`AeadKey::seal`] draws a fresh random 96-bit
//!   nonce for every message; [`AeadKey::open`] fails with [`CryptoError::Integrity`] on any
//!   mismatch of key, nonce, ciphertext, tag or associated data, and never panics on short input.
//! - [`FingerprintKey`]: HMAC-SHA256 for keyed fingerprints (PCI DSS 3.5.1.1: never a plain hash).
//! - [`associated_data`]: an unambiguous encoding of the context a ciphertext is bound to.
//! - [`SigningKey`]: Ed25519 for audit checkpoints (its seed is a [`KeyMaterial`], wrapped by
//!   the KEK like any other key); [`verify_signature`] and [`sha256`] for offline verifiers.
//!
//! Nothing here does I/O or knows what a merchant or a token is.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length of every key in the vault, in bytes (AES-256, HMAC-SHA256).
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce, in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag, in bytes.
pub const TAG_LEN: usize = 16;
/// Length of a fingerprint, in bytes.
pub const FINGERPRINT_LEN: usize = 32;

/// What can go wrong in this crate. Messages carry no secret and no input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Authentication failed: wrong key, tampered data, or other associated data.
    #[error("ciphertext failed authentication")]
    Integrity,
    /// Key material of the wrong length.
    #[error("key material must be exactly 32 bytes")]
    KeyLength,
}

/// Secret key bytes. Zeroized on drop; cannot be printed or cloned.
pub struct KeyMaterial(Zeroizing<[u8; KEY_LEN]>);

impl KeyMaterial {
    /// Fresh key material from the thread-local CSPRNG (ChaCha, seeded from the OS).
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::fill(&mut bytes[..]);
        Self(bytes)
    }

    /// Takes key material from a byte slice, which must be exactly [`KEY_LEN`] long.
    ///
    /// # Errors
    /// [`CryptoError::KeyLength`] for any other length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::KeyLength)?;
        Ok(Self(Zeroizing::new(array)))
    }

    /// The raw bytes, for a KEK backend to wrap or a key file to store. Handle with care.
    #[must_use]
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// A sealed message: the nonce it was sealed under, and ciphertext followed by the 16-byte tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The random 96-bit nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext with the GCM tag appended.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// An AES-256-GCM key with its expanded schedule. Zeroized on drop (aes-gcm's `zeroize`
/// feature); no `Debug`, no `Clone`.
pub struct AeadKey {
    cipher: Aes256Gcm,
}

impl AeadKey {
    /// Expands `key` for AES-256-GCM.
    #[must_use]
    pub fn new(key: &KeyMaterial) -> Self {
        let bytes: &[u8; KEY_LEN] = &key.0;
        Self {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// Encrypts `plaintext` under a fresh random nonce, authenticating `aad` with it.
    #[must_use]
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let mut buffer = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buffer.extend_from_slice(plaintext);
        let tag = self.cipher.encrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            buffer.as_mut_slice().into(),
        );
        match tag {
            Ok(tag) => buffer.extend_from_slice(&tag),
            // Only reachable with a plaintext or aad longer than GCM's 2^36-byte limit, which
            // nothing in the vault comes near; an empty buffer then fails every open.
            Err(_) => buffer.clear(),
        }
        Sealed {
            nonce,
            ciphertext: buffer,
        }
    }

    /// Decrypts and authenticates. The plaintext is zeroized when dropped.
    ///
    /// # Errors
    /// [`CryptoError::Integrity`] if anything does not match, including a ciphertext shorter
    /// than a tag.
    pub fn open(
        &self,
        aad: &[u8],
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let body_len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(CryptoError::Integrity)?;
        let (body, tag) = ciphertext.split_at(body_len);
        let tag = Tag::try_from(tag).map_err(|_| CryptoError::Integrity)?;
        let mut buffer = Zeroizing::new(body.to_vec());
        self.cipher
            .decrypt_inout_detached(
                &Nonce::from(*nonce),
                aad,
                buffer.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| CryptoError::Integrity)?;
        Ok(buffer)
    }

    /// Wraps `key` bound to `aad`, as one byte string: the nonce, then ciphertext and tag (the
    /// framing the in-process KEKs store).
    #[must_use]
    pub fn wrap_key(&self, aad: &[u8], key: &KeyMaterial) -> Vec<u8> {
        let sealed = self.seal(aad, key.expose_secret());
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.ciphertext.len());
        out.extend_from_slice(&sealed.nonce);
        out.extend_from_slice(&sealed.ciphertext);
        out
    }

    /// Unwraps what [`AeadKey::wrap_key`] made under the same `aad`.
    ///
    /// # Errors
    /// [`CryptoError::Integrity`] if the bytes are too short, altered, or bound to other data.
    pub fn unwrap_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<KeyMaterial, CryptoError> {
        let (nonce, ciphertext) = wrapped
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(CryptoError::Integrity)?;
        let plain = self.open(aad, nonce, ciphertext)?;
        KeyMaterial::from_slice(&plain).map_err(|_| CryptoError::Integrity)
    }
}

/// A key for HMAC-SHA256 fingerprints. The keyed state is computed once and zeroized on drop
/// (the keyed state is two SHA-256 cores, which sha2's `zeroize` feature wipes; `tests.rs`
/// checks that at compile time); no
/// `Debug`, no `Clone`.
pub struct FingerprintKey {
    mac: Hmac<Sha256>,
}

impl FingerprintKey {
    /// Keys HMAC-SHA256 with `key`.
    #[must_use]
    pub fn new(key: &KeyMaterial) -> Self {
        // HMAC zero-pads keys shorter than its 64-byte block, so padding here ourselves gives the
        // same MAC through the infallible constructor.
        let mut block = Zeroizing::new([0u8; 64]);
        for (padded, byte) in block.iter_mut().zip(key.0.iter()) {
            *padded = *byte;
        }
        let block: &[u8; 64] = &block;
        let mac = <Hmac<Sha256> as hmac::KeyInit>::new(block.into());
        Self { mac }
    }

    /// HMAC-SHA256 of `data` under this key.
    #[must_use]
    pub fn fingerprint(&self, data: &[u8]) -> [u8; FINGERPRINT_LEN] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// Encodes associated data as `label`, then each part preceded by its length as a big-endian
/// `u32`. Unambiguous: no two different lists of parts encode alike (`("ab","c")` and
/// `("a","bc")` differ), so a ciphertext bound to one context never opens under another.
#[must_use]
pub fn associated_data(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let len = label.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(label.as_bytes());
    for part in parts {
        // Parts are identifiers of at most a few hundred bytes; saturate rather than wrap.
        let n = u32::try_from(part.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Length of an Ed25519 public key, in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature, in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signing key (RFC 8032), made from a 32-byte seed. Zeroized on drop
/// (ed25519-dalek's `ZeroizeOnDrop`); no `Debug`, no `Clone`.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// The key whose secret seed is `seed`.
    #[must_use]
    pub fn from_seed(seed: &KeyMaterial) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed.expose_secret()))
    }

    /// The public half, for verifiers.
    #[must_use]
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs `message` (deterministic: the same message always gets the same signature).
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes()
    }
}

/// True if `signature` is `public_key`'s Ed25519 signature of `message`. Strict verification:
/// weak public keys and non-canonical signatures are refused, so a signature cannot be mauled
/// into another that also verifies.
#[must_use]
pub fn verify_signature(
    public_key: &[u8; PUBLIC_KEY_LEN],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &signature).is_ok()
}

/// SHA-256 of `data` (hash chains, key ids). Not for secrets: see [`FingerprintKey`].
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests;
