//! What goes over the wire: Transit's request and reply bodies (JSON), built in zeroizing
//! buffers, and the shape of its ciphertexts (`vault:v<N>:<base64>`).

use secrecy::{SecretSlice, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::client::Failure;

/// The data of a Vault reply (`{"data": {...}}`).
pub(super) fn parse_data<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice::<Reply<T>>(body)
        .map(|reply| reply.data)
        .map_err(|e| Failure::Malformed(format!("unreadable reply: {e}")))
}

/// A JSON request body, held as a secret: zeroized on drop, never printed.
pub(super) fn json_body<T: Serialize>(value: &T) -> Result<SecretSlice<u8>, String> {
    let mut exact = sized_json(value)?;
    // Its capacity is its length, so boxing it keeps the allocation: no copy is left behind.
    Ok(SecretSlice::from(std::mem::take(&mut *exact)))
}

/// `value` as JSON in a zeroizing buffer sized up front, so that serializing never reallocates
/// (which would leave a copy of a secret behind).
fn sized_json<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, String> {
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

pub(super) fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// The key version in a Transit ciphertext, `vault:v<N>:<base64>`.
pub(super) fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    let (version, payload) = ciphertext.strip_prefix("vault:v")?.split_once(':')?;
    if payload.is_empty() {
        return None;
    }
    parse_version(version)
}

/// A key version: decimal digits, from 1.
pub(super) fn parse_version(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|v| *v >= 1)
}

#[derive(Deserialize)]
pub(super) struct Reply<T> {
    pub(super) data: T,
}

#[derive(Deserialize)]
pub(super) struct ErrorReply {
    #[serde(default)]
    pub(super) errors: Vec<String>,
}

/// What `GET <mount>/keys/<key>` says about the key.
#[derive(Deserialize)]
pub(super) struct KeyInfo {
    #[serde(rename = "type")]
    pub(super) key_type: String,
    pub(super) exportable: bool,
    pub(super) allow_plaintext_backup: bool,
    #[serde(default)]
    pub(super) derived: bool,
    pub(super) latest_version: u32,
}

#[derive(Serialize)]
pub(super) struct CreateKey {
    #[serde(rename = "type")]
    pub(super) key_type: &'static str,
    pub(super) exportable: bool,
    pub(super) allow_plaintext_backup: bool,
}

#[derive(Serialize)]
pub(super) struct Encrypt<'a> {
    pub(super) plaintext: &'a str,
    pub(super) associated_data: &'a str,
}

#[derive(Deserialize)]
pub(super) struct Encrypted {
    pub(super) ciphertext: String,
}

#[derive(Serialize)]
pub(super) struct Decrypt<'a> {
    pub(super) ciphertext: &'a str,
    pub(super) associated_data: &'a str,
}

#[derive(Deserialize)]
pub(super) struct Decrypted {
    pub(super) plaintext: SecretString,
}

#[derive(Serialize)]
pub(super) struct Login<'a> {
    pub(super) role_id: &'a str,
    pub(super) secret_id: &'a str,
}

#[derive(Deserialize)]
pub(super) struct LoginReply {
    pub(super) auth: LoginAuth,
}

#[derive(Deserialize)]
pub(super) struct LoginAuth {
    pub(super) client_token: SecretString,
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

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
    fn json_bodies_are_exactly_sized() {
        let request = Encrypt {
            plaintext: "AAAA",
            associated_data: "BBBB",
        };
        let exact = sized_json(&request).unwrap();
        assert_eq!(exact.len(), exact.capacity());
        let body = json_body(&request).unwrap();
        assert_eq!(
            body.expose_secret(),
            br#"{"plaintext":"AAAA","associated_data":"BBBB"}"#
        );
        assert!(format!("{body:?}").contains("REDACTED"));
    }
}
