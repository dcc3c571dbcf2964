//! rustls configurations for node proxies.
//!
//! TLS 1.3 only, aws-lc-rs, key exchange X25519MLKEM768 first (hybrid post-quantum), then
//! X25519 and P-256 for peers without it. Both sides present workload certificates issued by
//! the mesh CA; the client verifies the server's chain against the trust bundle and that its
//! SPIFFE ID is the one it expects (there are no DNS names in mesh certificates); the server
//! verifies the client's chain and reads the client's identity from it ([`peer_identity`]).

use crate::{IdentityError, SpiffeId, WorkloadCertificate};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;

/// The crypto provider of every mesh connection: aws-lc-rs with the hybrid post-quantum key
/// exchange preferred.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups =
        vec![aws_lc_rs::kx_group::X25519MLKEM768, aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1];
    Arc::new(provider)
}

/// The roots a proxy trusts: during a trust-anchor rotation, old and new.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Reads one or more PEM certificates.
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Decode { what: "trust bundle", message: e.to_string() })?;
        if roots.is_empty() {
            return Err(IdentityError::Decode { what: "trust bundle", message: "no certificate".to_string() });
        }
        for root in &roots {
            webpki::anchor_from_trusted_cert(root)
                .map_err(|e| IdentityError::Decode { what: "trust bundle", message: e.to_string() })?;
        }
        Ok(Self { roots })
    }

    /// The roots, in order.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    fn store(&self) -> Result<RootCertStore, IdentityError> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone())?;
        }
        Ok(store)
    }
}

/// The SPIFFE ID in a certificate's URI SAN.
pub fn identity_of(certificate: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri.parse().ok(),
        _ => None,
    })
}

/// Whether `leaf` names `root` as its issuer. Roots have distinct names (the CA puts a key tag
/// in each), so during a trust-anchor rotation this tells a certificate from the old root from
/// one from the new.
pub fn issued_by(leaf: &CertificateDer<'_>, root: &CertificateDer<'_>) -> bool {
    let (Ok((_, leaf)), Ok((_, root))) =
        (x509_parser::parse_x509_certificate(leaf), x509_parser::parse_x509_certificate(root))
    else {
        return false;
    };
    leaf.issuer().as_raw() == root.subject().as_raw()
}

/// The authenticated identity of the peer of an established connection.
pub fn peer_identity(connection: &rustls::CommonState) -> Option<SpiffeId> {
    connection.peer_certificates().and_then(|chain| chain.first()).and_then(identity_of)
}

/// The SNI a client sends to ask for `identity`'s certificate: `<sa>.<ns>.identity.nodus`
/// (namespace and service account names are DNS labels).
pub fn server_name_for(identity: &SpiffeId) -> Result<ServerName<'static>, IdentityError> {
    ServerName::try_from(format!("{}.{}.identity.nodus", identity.service_account, identity.namespace))
        .map_err(|e| IdentityError::Decode { what: "server name", message: e.to_string() })
}

/// Verifies the server's chain against the bundle and its SPIFFE ID against the expected one.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Vec<CertificateDer<'static>>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

fn pki_error(error: webpki::Error) -> rustls::Error {
    let certificate_error = match error {
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(certificate_error)
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors = self
            .roots
            .iter()
            .map(|root| webpki::anchor_from_trusted_cert(root).map_err(pki_error))
            .collect::<Result<Vec<_>, _>>()?;
        let certificate = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        certificate
            .verify_for_usage(
                self.provider.signature_verification_algorithms.all,
                &anchors,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(pki_error)?;
        match identity_of(end_entity) {
            Some(identity) if identity == self.expected => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config presenting `certificate` and accepting only a server proving `expected`.
pub fn client_config(
    certificate: &WorkloadCertificate,
    bundle: &TrustBundle,
    expected: SpiffeId,
) -> Result<ClientConfig, IdentityError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier { roots: bundle.roots.clone(), expected, provider: provider.clone() });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certificate.chain.clone(), certificate.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A server config presenting what `resolver` picks (by SNI) and requiring a client
/// certificate that chains to the bundle.
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    bundle: &TrustBundle,
) -> Result<ServerConfig, IdentityError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(bundle.store()?), provider.clone())
        .build()
        .map_err(|e| IdentityError::Decode { what: "client verifier", message: e.to_string() })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Serves certificates by the SNI [`server_name_for`] builds.
#[derive(Debug, Default)]
pub struct IdentityResolver {
    by_name: std::sync::RwLock<std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
}

impl IdentityResolver {
    /// Adds or replaces (rotation) the certificate of an identity.
    pub fn insert(&self, certificate: &WorkloadCertificate) -> Result<(), IdentityError> {
        let key = provider().key_provider.load_private_key(certificate.key.clone_key())?;
        let certified = Arc::new(rustls::sign::CertifiedKey::new(certificate.chain.clone(), key));
        let name = match server_name_for(&certificate.identity)? {
            ServerName::DnsName(name) => name.as_ref().to_string(),
            _ => return Err(IdentityError::Decode { what: "server name", message: "not a DNS name".to_string() }),
        };
        self.by_name.write().unwrap_or_else(|p| p.into_inner()).insert(name, certified);
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for IdentityResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            tracing::info!("tunnel handshake without a server name: refused");
            return None;
        };
        let found = self.by_name.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        if found.is_none() {
            // rustls answers AccessDenied; the caller's proxy says the same in its error.
            tracing::info!(
                server_name = name,
                "tunnel handshake for a workload (service-account.namespace.identity.nodus) this node holds no certificate for: refused"
            );
        }
        found
    }
}
