//! The caller's identity, from its verified client certificate: the SPIFFE URI SAN if it has
//! one, else the subject CN. rustls has already checked the chain against the client CA.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The identity a DER certificate names, if any.
#[must_use]
pub fn identity_of(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let spiffe = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        });
        if spiffe.is_some() {
            return spiffe;
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_owned)
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
}
