//! The caller's identity, from its verified client certificate: the SPIFFE URI SAN if it has
//! one, else (unless `[identity] cn_fallback = false`) the subject CN. rustls has already
//! checked the chain against the client CA.
//!
//! Anything ambiguous names no identity (the call is then UNAUTHENTICATED and audited under the
//! certificate's digest): a certificate without the clientAuth extended key usage, a SAN
//! extension that does not parse, more than one SPIFFE URI (the scheme compared without regard
//! to case), a SPIFFE URI that is not a well-formed SPIFFE ID, more than one CN, a CN that
//! claims to be a SPIFFE ID (only a URI SAN may), an identity that is empty, too long, has
//! characters outside printable ASCII or a space at either end, one the vault records its own
//! events under (`vaultd`, in any case), or one holding a card number. The same rules, bar the
//! card-number rule, hold for the identities a policy lists (`config::load_policy`).

use serde::Deserialize;
use vault_core::audit::is_reserved_caller;
use vault_core::pan::contains_card_number;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Longest identity accepted, in bytes.
const MAX_IDENTITY: usize = 256;

/// The scheme a SPIFFE ID must be written with (lowercase, as the SPIFFE standard says).
const SPIFFE_SCHEME: &str = "spiffe://";

/// `[identity]`: how a client certificate names its caller.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// A certificate without a SPIFFE ID is named by its subject CN (default true). False in
    /// production, where every caller has a SPIFFE ID: a CN is then no identity at all.
    #[serde(default = "cn_fallback_default")]
    pub cn_fallback: bool,
}

fn cn_fallback_default() -> bool {
    true
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            cn_fallback: cn_fallback_default(),
        }
    }
}

/// The identity a DER certificate names, if exactly one, under the default rules.
#[must_use]
pub fn identity_of(der: &[u8]) -> Option<String> {
    identity_of_known(der, IdentityConfig::default(), |_| false)
}

/// The identity a DER certificate names under `rules`, except that an identity the
/// card-number rule refuses is accepted if `known(identity)`: the policy lists it, so it was in
/// use before the rule tightened (vaultd reports such identities at start). A new certificate
/// cannot get one in.
#[must_use]
pub fn identity_of_known(
    der: &[u8],
    rules: IdentityConfig,
    known: impl Fn(&str) -> bool,
) -> Option<String> {
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
            GeneralName::URI(uri) if claims_spiffe(uri) => Some(*uri),
            _ => None,
        });
    let identity = match (spiffe.next(), spiffe.next()) {
        (Some(uri), None) => uri,
        (Some(_), Some(_)) => return None,
        (None, _) if !rules.cn_fallback => return None,
        (None, _) => {
            let mut names = cert.subject().iter_common_name();
            let (Some(cn), None) = (names.next(), names.next()) else {
                return None;
            };
            let cn = cn.as_str().ok()?;
            if claims_spiffe(cn) {
                return None;
            }
            cn
        }
    };
    let acceptable =
        listable(identity).is_ok() && (!contains_card_number(identity) || known(identity));
    acceptable.then(|| identity.to_owned())
}

/// Whether `name` claims to be a SPIFFE ID: its scheme is `spiffe`, in any case.
fn claims_spiffe(name: &str) -> bool {
    name.get(..SPIFFE_SCHEME.len() - 2)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
}

/// Whether `name` is a SPIFFE ID as the vault accepts one.
#[must_use]
pub fn is_spiffe_id(name: &str) -> bool {
    claims_spiffe(name) && spiffe_problem(name).is_none()
}

/// What is wrong with a name that claims to be a SPIFFE ID (the SPIFFE standard's form:
/// `spiffe://` in lowercase, a trust domain of lowercase letters, digits, `.`, `-` and `_`,
/// then path segments of letters, digits, `.`, `-` and `_`, none empty, `.` or `..`; no
/// query, fragment, port, user or percent-encoding).
fn spiffe_problem(name: &str) -> Option<&'static str> {
    let Some(rest) = name.strip_prefix(SPIFFE_SCHEME) else {
        return Some("is not a SPIFFE ID: the scheme must be `spiffe://`, in lowercase");
    };
    let (domain, path) = rest
        .split_once('/')
        .map_or((rest, None), |(d, p)| (d, Some(p)));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
    if !domain_ok {
        return Some(
            "is not a SPIFFE ID: the trust domain must be lowercase letters, digits, `.`, `-` and `_`",
        );
    }
    let path_ok = path.is_none_or(|path| {
        path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
        })
    });
    if !path_ok {
        return Some(
            "is not a SPIFFE ID: each path segment must be letters, digits, `.`, `-` and `_`, not empty, `.` or `..`",
        );
    }
    None
}

/// Whether `identity` can name a caller at all, whatever the card-number rule says: the
/// rules a certificate's identity must meet, which a policy's identities must meet too.
///
/// # Errors
/// What is wrong with it, naming no part of it.
pub fn listable(identity: &str) -> Result<(), &'static str> {
    if identity.is_empty() {
        return Err("must not be empty");
    }
    if identity.len() > MAX_IDENTITY {
        return Err("must be at most 256 bytes");
    }
    if !identity.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("must be printable ASCII");
    }
    if identity.trim() != identity {
        return Err("must not begin or end with a space");
    }
    if is_reserved_caller(identity) {
        return Err("is a name the vault records its own events or unidentified callers under");
    }
    if claims_spiffe(identity) {
        return spiffe_problem(identity).map_or(Ok(()), Err);
    }
    Ok(())
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
            identity_of_known(&der(&pan.cert_pem), IdentityConfig::default(), |id| id
                == "4111 1111 1111 1111"),
            Some("4111 1111 1111 1111".to_owned())
        );
        let split = ca.issue_client(Some("4111a1111b1111c1111"), None).unwrap();
        assert_eq!(identity_of(&der(&split.cert_pem)), None);
        assert_eq!(
            identity_of_known(&der(&split.cert_pem), IdentityConfig::default(), |id| id
                == "other"),
            None
        );
        // One SPIFFE ID, whatever the case of its scheme: two is ambiguous.
        let two = ca
            .issue_client_with_uris(
                Some("payments"),
                &[
                    "spiffe://vault.test/payments",
                    "SPIFFE://vault.test/gateway",
                ],
            )
            .unwrap();
        assert_eq!(identity_of(&der(&two.cert_pem)), None);
        // A CN may not sit beside a SPIFFE ID it does not accept.
        for uri in [
            "SPIFFE://vault.test/gateway",
            "Spiffe://vault.test/gateway",
            "spiffe://Vault.Test/gateway",
            "spiffe://vault.test/gateway/",
            "spiffe://vault.test//gateway",
            "spiffe://vault.test/a/../gateway",
            "spiffe://vault.test/gateway?x=1",
            "spiffe://vault.test/gate%20way",
            "spiffe://vault.test:443/gateway",
            "spiffe:///gateway",
        ] {
            let bad = ca.issue_client(Some("payments"), Some(uri)).unwrap();
            assert_eq!(identity_of(&der(&bad.cert_pem)), None, "{uri}");
        }
        // Surrounding spaces, control characters, and the names of the vault's own records.
        for cn in [
            " payments",
            "payments ",
            "pay\tments",
            "pay\u{7f}ments",
            "vaultd",
            "VaultD",
            "no-certificate",
            "unidentified-certificate:sha256:00",
            "Spiffe:payments",
        ] {
            let bad = ca.issue_client(Some(cn), None).unwrap();
            assert_eq!(identity_of(&der(&bad.cert_pem)), None, "{cn:?}");
        }
        // A server certificate (no clientAuth usage) is not a client identity.
        let server = ca.issue_server(&["payments"]).unwrap();
        assert_eq!(identity_of(&der(&server.cert_pem)), None);
    }

    #[test]
    fn without_cn_fallback_only_a_spiffe_id_names_a_caller() {
        let ca = DevCa::generate("test ca").unwrap();
        let strict = IdentityConfig { cn_fallback: false };
        let cn_only = ca.issue_client(Some("payments"), None).unwrap();
        assert_eq!(
            identity_of_known(&der(&cn_only.cert_pem), strict, |_| true),
            None
        );
        let with_san = ca
            .issue_client(Some("payments"), Some("spiffe://vault.test/payments"))
            .unwrap();
        assert_eq!(
            identity_of_known(&der(&with_san.cert_pem), strict, |_| false).as_deref(),
            Some("spiffe://vault.test/payments")
        );
    }

    #[test]
    fn policy_identities_meet_the_same_rules() {
        for good in [
            "payments",
            "acme payments",
            "spiffe://vault.test/payments",
            "spiffe://vault.test",
            "spiffe://a-b_c.d/A.b-C_9/x",
        ] {
            assert_eq!(listable(good), Ok(()), "{good}");
        }
        assert!(is_spiffe_id("spiffe://vault.test/payments"));
        assert!(!is_spiffe_id("payments"));
        assert!(!is_spiffe_id("SPIFFE://vault.test/payments"));
        for bad in [
            "",
            " payments",
            "payments ",
            "pay\nments",
            "zahlungsdienst-\u{fc}",
            "VAULTD",
            "no-certificate",
            "unidentified-certificate:sha256:ab",
            "SPIFFE://vault.test/payments",
            "spiffe://vault.test/../payments",
        ] {
            assert!(listable(bad).is_err(), "{bad:?}");
        }
        assert!(listable(&"a".repeat(257)).is_err());
        assert_eq!(listable(&"a".repeat(256)), Ok(()));
    }
}
