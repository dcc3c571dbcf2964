//! Workload certificates of the node's mesh pods.
//!
//! For every identity (namespace/service account) of a mesh workload on this node, the proxy
//! makes a key pair in memory (never written anywhere), sends a CSR to the controller's CA, and
//! keeps the certificate; it renews at half of the lifetime, so rotation never lets one expire,
//! and drops identities whose last pod has left the node. The server side of tunnels picks a
//! certificate by SNI from [`IdentityManager::resolver`].
//!
//! The roots to trust come with the config ([`TrustRoots`]), not with
//! certificates: a trust-anchor rotation is a config push to every node (old and new roots
//! trusted, then the new one signing, then the old one gone). When the signing root changes,
//! every certificate from another root is re-issued at once, not at half-life.

use crate::core::metrics::Metrics;
use crate::state::ConfigStore;
use crate::transport::credentials::{HeldCertificate, TrustRoots, TunnelCredentials, TunnelError};
use arc_swap::{ArcSwap, ArcSwapOption};
use nodus_identity::tls::{issued_by, server_config, IdentityResolver};
use nodus_identity::{SignedCertificate, SpiffeId, WorkloadKey};
use nodus_wire::proto::certificates_client::CertificatesClient;
use nodus_wire::proto::{CertificateRequest, CertificateResponse};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who signs the node's certificate requests: the controller's CA over gRPC
/// ([`ControllerSigner`]) in a running mesh; a test may sign in process with a CA of its own.
pub trait CertificateSigner: Send + Sync + 'static {
    /// Signs one workload's certificate request.
    fn sign(
        &self,
        request: CertificateRequest,
    ) -> Pin<Box<dyn Future<Output = Result<CertificateResponse, tonic::Status>> + Send + '_>>;
}

/// The controller's CA, called over gRPC with the node's credentials.
#[derive(Clone, Debug)]
pub struct ControllerSigner {
    client: CertificatesClient<tonic::transport::Channel>,
    credentials: crate::control::config_client::NodeCredentials,
}

impl ControllerSigner {
    /// A client of the controller at `endpoint` (connected on first use, reconnected as
    /// needed), proving the node with `credentials`.
    pub fn new(
        endpoint: &str,
        credentials: crate::control::config_client::NodeCredentials,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?.connect_lazy();
        Ok(Self { client: CertificatesClient::new(channel), credentials })
    }
}

impl CertificateSigner for ControllerSigner {
    fn sign(
        &self,
        request: CertificateRequest,
    ) -> Pin<Box<dyn Future<Output = Result<CertificateResponse, tonic::Status>> + Send + '_>> {
        Box::pin(async move {
            let request = self.credentials.authenticated(request)?;
            // A clone shares the channel; the generated client wants `&mut` only to sequence calls.
            Ok(self.client.clone().sign(request).await?.into_inner())
        })
    }
}

/// Why a workload certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The key pair or the certificate request could not be made, or the signed certificate
    /// does not fit the key.
    #[error("workload key or certificate")]
    Certificate(#[from] nodus_identity::IdentityError),
    /// The CA refused or could not be reached.
    #[error("the CA answered {}: {}", .0.code(), .0.message())]
    Signing(#[from] tonic::Status),
}

/// The certificates this node's proxy holds.
#[derive(Debug)]
pub struct IdentityManager {
    trust_domain: String,
    node: String,
    held: ArcSwap<BTreeMap<SpiffeId, Arc<HeldCertificate>>>,
    store: Arc<ConfigStore>,
    resolver: Arc<IdentityResolver>,
    /// The inbound TLS config, built once per set of trust roots (not per connection).
    server: ArcSwapOption<(Arc<TrustRoots>, Arc<tokio_rustls::rustls::ServerConfig>)>,
}

impl IdentityManager {
    /// A manager for `node`'s workloads in `trust_domain`, trusting the roots of the config
    /// in `store`.
    pub fn new(trust_domain: &str, node: &str, store: Arc<ConfigStore>) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            node: node.to_string(),
            held: ArcSwap::default(),
            store,
            resolver: Arc::default(),
            server: ArcSwapOption::empty(),
        }
    }

    /// The trust domain of the identities.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The certificate of an identity, if held.
    pub fn certificate(&self, identity: &SpiffeId) -> Option<Arc<HeldCertificate>> {
        self.held.load().get(identity).cloned()
    }

    /// Every identity held.
    pub fn identities(&self) -> Vec<SpiffeId> {
        self.held.load().keys().cloned().collect()
    }

    /// The roots of the config in force.
    pub fn trust_roots(&self) -> Option<Arc<TrustRoots>> {
        self.store.load().and_then(|state| state.trust.clone())
    }

    /// The TLS config of the inbound listener for the roots in force, cached until they change.
    pub fn server_config(&self) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, TunnelError> {
        let roots = self.trust_roots().ok_or(TunnelError::NoTrustRoots)?;
        if let Some(cached) = self.server.load().as_ref().filter(|c| Arc::ptr_eq(&c.0, &roots)) {
            return Ok(cached.1.clone());
        }
        let config = Arc::new(server_config(self.resolver.clone(), &roots.bundle)?);
        self.server.store(Some(Arc::new((roots, config.clone()))));
        Ok(config)
    }

    /// Certificates by SNI, for the inbound TLS listener.
    pub fn resolver(&self) -> Arc<IdentityResolver> {
        self.resolver.clone()
    }

    /// Whether a certificate is held for every identity this node needs now.
    pub fn has_all(&self, store: &ConfigStore) -> bool {
        let held = self.held.load();
        self.wanted(store).iter().all(|identity| held.contains_key(identity))
    }

    /// The identities this node needs now: its mesh workloads' service accounts.
    fn wanted(&self, store: &ConfigStore) -> BTreeSet<SpiffeId> {
        store
            .load()
            .map(|state| {
                state
                    .local_pods()
                    .filter(|pod| pod.mesh)
                    .map(|pod| SpiffeId::new(&self.trust_domain, &pod.namespace, &pod.service_account))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn issue(&self, signer: &dyn CertificateSigner, identity: &SpiffeId) -> Result<HeldCertificate, IssueError> {
        let key = WorkloadKey::generate(identity.clone())?;
        let request = CertificateRequest {
            node: self.node.clone(),
            namespace: identity.namespace.clone(),
            service_account: identity.service_account.clone(),
            csr_pem: key.csr_pem()?,
        };
        let response = signer.sign(request).await?;
        let issued = SystemTime::now();
        let not_after = UNIX_EPOCH + Duration::from_secs(response.not_after_unix);
        let certificate =
            key.with_certificate(&SignedCertificate { certificate_pem: response.certificate_pem, not_after })?;
        self.resolver.insert(&certificate)?;
        let lifetime = not_after.duration_since(issued).unwrap_or_default();
        Ok(HeldCertificate { certificate: Arc::new(certificate), renew_at: issued + lifetime / 2 })
    }

    /// One pass: issue missing certificates, renew those past half-life, drop unneeded ones.
    pub async fn reconcile(&self, store: &ConfigStore, metrics: &Metrics, signer: &dyn CertificateSigner) {
        let wanted = self.wanted(store);
        let now = SystemTime::now();
        let signing = self.trust_roots().and_then(|roots| roots.signing.clone());
        let mut held: BTreeMap<SpiffeId, Arc<HeldCertificate>> = self
            .held
            .load()
            .iter()
            .filter(|(id, _)| wanted.contains(*id))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for identity in &wanted {
            // Due: missing, past half-life, or from a root the CA no longer signs with (a
            // trust-anchor rotation).
            let due = held.get(identity).is_none_or(|h| {
                now >= h.renew_at
                    || signing
                        .as_ref()
                        .is_some_and(|root| h.certificate.chain.first().is_none_or(|leaf| !issued_by(leaf, root)))
            });
            if !due {
                continue;
            }
            match self.issue(signer, identity).await {
                Ok(certificate) => {
                    tracing::info!(%identity, renew_in_s = certificate.renew_at.duration_since(now).unwrap_or_default().as_secs(), "workload certificate issued");
                    metrics.certificates_issued.inc();
                    held.insert(identity.clone(), Arc::new(certificate));
                }
                Err(error) => {
                    // The one held (if any) stays until it expires: renewal started at half-life.
                    let error = crate::transport::with_causes(&error);
                    tracing::warn!(%identity, %error, "workload certificate not issued; retrying");
                    metrics.certificate_errors.inc();
                }
            }
        }
        self.held.store(Arc::new(held));
    }
}

impl TunnelCredentials for IdentityManager {
    fn trust_domain(&self) -> &str {
        IdentityManager::trust_domain(self)
    }
    fn certificate(&self, identity: &SpiffeId) -> Option<Arc<HeldCertificate>> {
        IdentityManager::certificate(self, identity)
    }
    fn trust_roots(&self) -> Option<Arc<TrustRoots>> {
        IdentityManager::trust_roots(self)
    }
    fn server_config(&self) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, TunnelError> {
        IdentityManager::server_config(self)
    }
}

/// What the certificate manager reads and reports to: the config in force (which workloads this
/// node runs), the metrics, and the signal that a config was applied.
#[derive(Clone)]
pub struct CertificateInputs {
    /// The config in force.
    pub store: Arc<ConfigStore>,
    /// Where issued and failed certificates are counted.
    pub metrics: Arc<Metrics>,
    /// Woken whenever a config is applied.
    pub config_applied: Arc<tokio::sync::Notify>,
}

/// Keeps the node's certificates current, forever, signed by `signer`: on every config change
/// and every second.
pub fn run(
    inputs: CertificateInputs,
    manager: Arc<IdentityManager>,
    signer: Arc<dyn CertificateSigner>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            manager.reconcile(&inputs.store, &inputs.metrics, &*signer).await;
            let applied = inputs.config_applied.notified();
            tokio::select! {
                () = applied => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}
