//! A small certificate authority for the embedded default and for tests: a CA, a server
//! certificate, and client certificates carrying a SPIFFE URI SAN and a CN. Keys are ECDSA
//! P-256 (rcgen's default).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate's serial number (what a CRL names to revoke it).
    pub serial: Vec<u8>,
    /// The private key, PEM (PKCS#8). Zeroized on drop.
    pub key_pem: Zeroizing<String>,
}

/// A certificate authority that issues server and client certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: Zeroizing<String>,
}

impl DevCa {
    /// A new self-signed CA, valid for ten years, named `common_name`.
    ///
    /// # Errors
    /// If key generation or signing fails.
    pub fn generate(common_name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let key = KeyPair::generate()?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(params, key)?,
            key_pem,
        })
    }

    /// The CA certificate, PEM: what servers and clients trust.
    #[must_use]
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key, PEM.
    #[must_use]
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid for one year.
    ///
    /// # Errors
    /// If key generation or signing fails.
    pub fn issue_server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(names.first().copied().unwrap_or("vault"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with, if given, subject CN `common_name` and a SPIFFE URI SAN,
    /// valid for one year.
    ///
    /// # Errors
    /// If key generation or signing fails.
    pub fn issue_client(
        &self,
        common_name: Option<&str>,
        spiffe_id: Option<&str>,
    ) -> Result<Issued, rcgen::Error> {
        self.issue_client_with_uris(common_name, spiffe_id.as_slice())
    }

    /// A client certificate with, if given, subject CN `common_name` and one URI SAN per
    /// entry of `uris` (tests use it for certificates that name more than one), valid for one
    /// year.
    ///
    /// # Errors
    /// If a URI is not an IA5 string, or key generation or signing fails.
    pub fn issue_client_with_uris(
        &self,
        common_name: Option<&str>,
        uris: &[&str],
    ) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = common_name.map(name).unwrap_or_default();
        params.subject_alt_names = uris
            .iter()
            .map(|uri| Ok(SanType::URI((*uri).try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, rcgen::Error> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        // Positive (top bit clear) and unique: a random UUID's 16 bytes (RFC 5280 allows 20).
        let mut serial = uuid::Uuid::new_v4().into_bytes();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        validity(&mut params, 365);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial.to_vec(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// A certificate revocation list, PEM, revoking the certificates with these serial numbers
    /// (none: an empty list), issued now and due again in `next_update_days` (negative: a list
    /// already past its nextUpdate, for tests of a stale CRL).
    ///
    /// # Errors
    /// If signing fails.
    pub fn revocation_list(
        &self,
        serials: &[&[u8]],
        crl_number: u64,
        next_update_days: i64,
    ) -> Result<String, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let (this_update, next_update) = if next_update_days > 0 {
            (
                now - Duration::minutes(1),
                now + Duration::days(next_update_days),
            )
        } else {
            (
                now - Duration::days(2 - next_update_days),
                now - Duration::days(1),
            )
        };
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}
