//! What mutual TLS tunnels are made with: a workload's certificate, the roots peers are
//! verified against, and the trait through which the tunnel client and the inbound listener
//! get them. The certificate manager (a layer above, `control::identity`) implements it; a
//! test may bring its own.

use nodus_identity::tls::TrustBundle;
use nodus_identity::{SpiffeId, WorkloadCertificate};
use std::sync::Arc;
use std::time::SystemTime;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::ServerConfig;

/// A certificate in use and when to renew it.
#[derive(Debug)]
pub struct HeldCertificate {
    /// Chain and key.
    pub certificate: Arc<WorkloadCertificate>,
    /// Half of the lifetime.
    pub renew_at: SystemTime,
}

/// The trust roots of a config, parsed once per config.
#[derive(Debug)]
pub struct TrustRoots {
    /// Every root trusted now (old and new during a trust-anchor rotation).
    pub bundle: TrustBundle,
    /// The root the CA signs with now: certificates from another root are re-issued.
    pub signing: Option<CertificateDer<'static>>,
}

impl TrustRoots {
    /// The roots a config lists (`None`: it lists none, as a config file without identities).
    pub fn from_config(roots: &[nodus_config::TrustRoot]) -> Result<Option<Arc<Self>>, nodus_identity::IdentityError> {
        if roots.is_empty() {
            return Ok(None);
        }
        let pem: String = roots.iter().map(|r| r.certificate_pem.as_str()).collect::<Vec<_>>().join("\n");
        let bundle = TrustBundle::from_pem(&pem)?;
        let signing = roots.iter().position(|r| r.signing).and_then(|i| bundle.roots().get(i).cloned());
        Ok(Some(Arc::new(Self { bundle, signing })))
    }
}

/// What mutual TLS tunnels are made with, in both directions. The certificate manager
/// (`control::identity::IdentityManager`, a layer above) implements it; a test may bring its own.
pub trait TunnelCredentials: Send + Sync + std::fmt::Debug + 'static {
    /// The trust domain of the mesh's identities.
    fn trust_domain(&self) -> &str;
    /// The certificate of a workload identity of this node, if held.
    fn certificate(&self, identity: &SpiffeId) -> Option<Arc<HeldCertificate>>;
    /// The roots peers are verified against (those of the config in force).
    fn trust_roots(&self) -> Option<Arc<TrustRoots>>;
    /// The TLS config of the inbound tunnel listener: certificates by SNI, client certificates
    /// required and verified against the roots in force.
    fn server_config(&self) -> Result<Arc<ServerConfig>, TunnelError>;
}

/// Why a tunnel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// No workload certificate is held for the source identity.
    #[error("no workload certificate for {0} yet")]
    NoCertificate(SpiffeId),
    /// The config in force carries no trust roots.
    #[error("no trust roots in the config yet")]
    NoTrustRoots,
    /// The TLS configuration could not be built from the credentials.
    #[error("mTLS configuration")]
    Tls(#[from] nodus_identity::IdentityError),
}
