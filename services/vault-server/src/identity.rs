//! The caller's identity, from its verified client certificate: the SPIFFE URI SAN if it has
//! one, else the subject CN. rustls has already checked the chain against the client CA.
//!
//! Anything ambiguous names no identity (the call is then UNAUTHENTICATED and audited): a
//! certificate without the clientAuth extended key usage, a SAN extension that does not parse,
//! more than one SPIFFE ID, more than one CN, a CN that claims to be a SPIFFE ID (only a URI
//! SAN may), or an identity with characters outside printable ASCII or holding a card number.

use vault_core::pan::contains_card_number;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Longest identity accepted, in bytes.
const MAX_IDENTITY: usize = 256;

/// The identity a DER certificate names, if exactly one.
#[must_use]
pub fn identity_of(der: &[u8]) -> Option<String> {
    identity_of_known(der, |_| false)
}

/// [`identity_of`], except that an identity the card-number rule refuses is accepted if
/// `known(identity)`: the policy lists it, so it was in use before the rule tightened (vaultd
/// reports such identities at start). A new certificate cannot get one in.
#[must_use]
pub fn identity_of_known(der: &[u8], known: impl Fn(&str) -> bool) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let client_auth = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.client_auth);
    if !client_auth {
        return None;
    }
    let san = cert.subject_alternative_name().ok()?;
    let mut spiffe = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        });
    let identity = match (spiffe.next(), spiffe.next()) {
        (Some(uri), None) => uri,
        (Some(_), Some(_)) => return None,
        (None, _) => {
            let mut names = cert.subject().iter_common_name();
            let (Some(cn), None) = (names.next(), names.next()) else {
                return None;
            };
            let cn = cn.as_str().ok()?;
            if cn.to_ascii_lowercase().starts_with("spiffe:") {
                return None;
            }
            cn
        }
    };
    let acceptable = !identity.is_empty()
        && identity.len() <= MAX_IDENTITY
        && identity.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && (!contains_card_number(identity) || known(identity));
    acceptable.then(|| identity.to_owned())
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::pki::DevCa;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn spiffe_san_wins_over_common_name() {
        let ca = DevCa::generate("test ca").unwrap();
        let with_san = ca
            .issue_client(Some("gateway"), Some("spiffe://vault.test/gateway"))
            .unwrap();
        assert_eq!(
            identity_of(&der(&with_san.cert_pem)).as_deref(),
            Some("spiffe://vault.test/gateway")
        );
        let cn_only = ca.issue_client(Some("payments"), None).unwrap();
        assert_eq!(
            identity_of(&der(&cn_only.cert_pem)).as_deref(),
            Some("payments")
        );
        assert_eq!(identity_of(b"not a certificate"), None);
    }

    #[test]
    fn ambiguous_or_spoofing_certificates_name_no_identity() {
        let ca = DevCa::generate("test ca").unwrap();
        // A CN may not pose as a SPIFFE ID.
        let posing = ca
            .issue_client(Some("spiffe://vault.test/payments"), None)
            .unwrap();
        assert_eq!(identity_of(&der(&posing.cert_pem)), None);
        // Neither CN nor SAN.
        let anonymous = ca.issue_client(None, None).unwrap();
        assert_eq!(identity_of(&der(&anonymous.cert_pem)), None);
        // A CN holding a card number.
        let pan = ca.issue_client(Some("4111 1111 1111 1111"), None).unwrap();
        assert_eq!(identity_of(&der(&pan.cert_pem)), None);
        // ... unless the policy lists it (in use before the rule tightened).
        assert_eq!(
            identity_of_known(&der(&pan.cert_pem), |id| id == "4111 1111 1111 1111"),
            Some("4111 1111 1111 1111".to_owned())
        );
        let split = ca.issue_client(Some("4111a1111b1111c1111"), None).unwrap();
        assert_eq!(identity_of(&der(&split.cert_pem)), None);
        assert_eq!(
            identity_of_known(&der(&split.cert_pem), |id| id == "other"),
            None
        );
        // A server certificate (no clientAuth usage) is not a client identity.
        let server = ca.issue_server(&["payments"]).unwrap();
        assert_eq!(identity_of(&der(&server.cert_pem)), None);
    }
}
