//! The mesh's certificate authority.

use crate::{IdentityError, SpiffeId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// A certificate the CA issued.
#[derive(Clone, Debug)]
pub struct SignedCertificate {
    /// The leaf certificate, PEM.
    pub certificate_pem: String,
    /// End of validity.
    pub not_after: SystemTime,
}

/// A self-signed root that signs workload certificates. Its key is kept by the controller (a
/// Kubernetes Secret, or a file in standalone mode) so that it survives restarts.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority").field("certificate_pem", &self.certificate_pem).finish_non_exhaustive()
    }
}

fn to_offset(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

impl CertificateAuthority {
    /// A new root for `trust_domain`, valid for `lifetime`.
    pub fn generate(trust_domain: &str, lifetime: Duration) -> Result<Self, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Nodus");
        // A distinct name per root: during a rotation old and new roots are told apart by name,
        // which is how chain building picks the right one.
        let tag: String = key.public_key_raw().iter().rev().take(4).map(|b| format!("{b:02x}")).collect();
        name.push(DnType::CommonName, format!("Nodus root CA {trust_domain} {tag}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(60));
        params.not_after = to_offset(now + lifetime);
        let certificate = params.self_signed(&key)?;
        let certificate_pem = certificate.pem();
        let key_pem = key.serialize_pem();
        Ok(Self { issuer: Issuer::new(params, key), certificate_pem, key_pem })
    }

    /// A CA from its stored certificate and key (PEM).
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(certificate_pem, key)?;
        Ok(Self { issuer, certificate_pem: certificate_pem.to_string(), key_pem: key_pem.to_string() })
    }

    /// The root certificate (PEM): what goes into trust bundles.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The root key (PEM), for the controller to store. Never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs `csr_pem` for `identity`, valid from now for `lifetime`.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<SignedCertificate, IdentityError> {
        let now = SystemTime::now();
        self.sign_valid(csr_pem, identity, now - Duration::from_secs(60), now + lifetime)
    }

    /// Signs `csr_pem` for `identity` with explicit validity (tests issue expired certificates).
    /// The CSR's signature is verified; of the CSR only the public key is used: names,
    /// extensions and CA flags it asks for are ignored.
    pub fn sign_valid(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<SignedCertificate, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let request = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let certificate = request.signed_by(&self.issuer)?;
        Ok(SignedCertificate { certificate_pem: certificate.pem(), not_after })
    }
}
