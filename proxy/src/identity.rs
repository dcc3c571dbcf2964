//! Workload certificates of the node's mesh pods.
//!
//! For every identity (namespace/service account) of a mesh workload on this node, the proxy
//! makes a key pair in memory (never written anywhere), sends a CSR to the controller's CA, and
//! keeps the certificate; it renews at half of the lifetime, so rotation never lets one expire,
//! and drops identities whose last pod has left the node. The server side of tunnels picks a
//! certificate by SNI from [`IdentityManager::resolver`].
//!
//! The roots to trust come with the config ([`crate::state::TrustRoots`]), not with
//! certificates: a trust-anchor rotation is a config push to every node (old and new roots
//! trusted, then the new one signing, then the old one gone). When the signing root changes,
//! every certificate from another root is re-issued at once, not at half-life.

use crate::metrics::Metrics;
use crate::state::{ConfigStore, TrustRoots};
use arc_swap::{ArcSwap, ArcSwapOption};
use nodus_identity::tls::{issued_by, server_config, IdentityResolver};
use nodus_identity::{SignedCertificate, SpiffeId, WorkloadCertificate, WorkloadKey};
use nodus_wire::proto::certificates_client::CertificatesClient;
use nodus_wire::proto::CertificateRequest;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate in use and when to renew it.
#[derive(Debug)]
pub struct HeldCertificate {
    /// Chain and key.
    pub certificate: Arc<WorkloadCertificate>,
    /// Half of the lifetime.
    pub renew_at: SystemTime,
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
    pub fn server_config(&self) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
        let roots = self.trust_roots().ok_or("no trust roots in the config yet")?;
        if let Some(cached) = self.server.load().as_ref().filter(|c| Arc::ptr_eq(&c.0, &roots)) {
            return Ok(cached.1.clone());
        }
        let config = Arc::new(server_config(self.resolver.clone(), &roots.bundle).map_err(|e| e.to_string())?);
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
                    .snapshot
                    .workloads
                    .iter()
                    .filter(|w| w.node == self.node && w.mesh_enabled)
                    .map(|w| SpiffeId::new(&self.trust_domain, &w.id.namespace, &w.service_account))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn issue(
        &self,
        client: &mut CertificatesClient<tonic::transport::Channel>,
        identity: &SpiffeId,
    ) -> Result<HeldCertificate, String> {
        let key = WorkloadKey::generate(identity.clone()).map_err(|e| e.to_string())?;
        let request = CertificateRequest {
            node: self.node.clone(),
            namespace: identity.namespace.clone(),
            service_account: identity.service_account.clone(),
            csr_pem: key.csr_pem().map_err(|e| e.to_string())?,
        };
        let request = crate::control::authenticated(request).map_err(|status| status.message().to_string())?;
        let response = client.sign(request).await.map_err(|status| status.message().to_string())?.into_inner();
        let issued = SystemTime::now();
        let not_after = UNIX_EPOCH + Duration::from_secs(response.not_after_unix);
        let certificate = key
            .with_certificate(&SignedCertificate { certificate_pem: response.certificate_pem, not_after })
            .map_err(|e| e.to_string())?;
        self.resolver.insert(&certificate).map_err(|e| e.to_string())?;
        let lifetime = not_after.duration_since(issued).unwrap_or_default();
        Ok(HeldCertificate { certificate: Arc::new(certificate), renew_at: issued + lifetime / 2 })
    }

    /// One pass: issue missing certificates, renew those past half-life, drop unneeded ones.
    pub async fn reconcile(
        &self,
        store: &ConfigStore,
        metrics: &Metrics,
        client: &mut CertificatesClient<tonic::transport::Channel>,
    ) {
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
            match self.issue(client, identity).await {
                Ok(certificate) => {
                    tracing::info!(%identity, renew_in_s = certificate.renew_at.duration_since(now).unwrap_or_default().as_secs(), "workload certificate issued");
                    metrics.certificates_issued.inc();
                    held.insert(identity.clone(), Arc::new(certificate));
                }
                Err(error) => {
                    // The one held (if any) stays until it expires: renewal started at half-life.
                    tracing::warn!(%identity, %error, "workload certificate not issued; retrying");
                    metrics.certificate_errors.inc();
                }
            }
        }
        self.held.store(Arc::new(held));
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

/// Keeps the node's certificates current, forever: on every config change and every second.
pub fn run(inputs: CertificateInputs, manager: Arc<IdentityManager>, endpoint: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = None;
        loop {
            if client.is_none() {
                client = match tonic::transport::Endpoint::from_shared(endpoint.clone()) {
                    Ok(e) => Some(CertificatesClient::new(e.connect_lazy())),
                    Err(error) => {
                        tracing::error!(%error, %endpoint, "bad controller address; no certificates");
                        return;
                    }
                };
            }
            if let Some(client) = client.as_mut() {
                manager.reconcile(&inputs.store, &inputs.metrics, client).await;
            }
            let applied = inputs.config_applied.notified();
            tokio::select! {
                () = applied => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}
