//! Workload identity for the mesh.
//!
//! - [`SpiffeId`]: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//! - [`CertificateAuthority`]: the controller's CA (rcgen). It signs a CSR with the identity the
//!   controller decided on, never with names the CSR asks for; only the CSR's public key is used.
//! - [`WorkloadKey`]: a key pair made on the node (it never leaves it) and its CSR.
//! - [`tls`]: rustls configurations for node proxies: TLS 1.3 only, X25519MLKEM768 preferred,
//!   certificates verified against the trust bundle and by SPIFFE ID.

mod ca;
pub mod node_token;
mod spiffe;
pub mod tls;
mod workload;

pub use ca::{CertificateAuthority, SignedCertificate};
pub use spiffe::SpiffeId;
pub use workload::{WorkloadCertificate, WorkloadKey};

use thiserror::Error;

/// What can go wrong with identities and certificates.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// A text is not a SPIFFE ID of the mesh's form.
    #[error("{0:?} is not a SPIFFE ID of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    InvalidSpiffeId(String),
    /// Generating, parsing or signing failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A PEM or DER blob could not be read.
    #[error("{what}: {message}")]
    Decode {
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}
