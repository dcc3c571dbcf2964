//! Workload certificates of the node's mesh pods.
//!
//! For every identity (namespace/service account) of a mesh workload on this node, the proxy
//! makes a key pair in memory (never written anywhere), sends a CSR to the controller's CA, and
//! keeps the certificate; it renews at half of the lifetime, so rotation never lets one expire,
//! and drops identities whose last pod has left the node. The server side of tunnels picks a
//! certificate by SNI from [`IdentityManager::resolver`].

use crate::app::Proxy;
use arc_swap::ArcSwap;
use nodus_identity::tls::{IdentityResolver, TrustBundle};
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
    bundle: ArcSwap<Option<TrustBundle>>,
    resolver: Arc<IdentityResolver>,
}

impl IdentityManager {
    /// A manager for `node`'s workloads in `trust_domain`.
    pub fn new(trust_domain: &str, node: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            node: node.to_string(),
            held: ArcSwap::default(),
            bundle: ArcSwap::from_pointee(None),
            resolver: Arc::default(),
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

    /// The trust bundle the CA sent with the last certificate.
    pub fn trust_bundle(&self) -> Option<TrustBundle> {
        (**self.bundle.load()).clone()
    }

    /// Certificates by SNI, for the inbound TLS listener.
    pub fn resolver(&self) -> Arc<IdentityResolver> {
        self.resolver.clone()
    }

    /// The identities this node needs now: its mesh workloads' service accounts.
    fn wanted(&self, proxy: &Proxy) -> BTreeSet<SpiffeId> {
        proxy
            .store
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
        let response = client.sign(request).await.map_err(|status| status.message().to_string())?.into_inner();
        let issued = SystemTime::now();
        let not_after = UNIX_EPOCH + Duration::from_secs(response.not_after_unix);
        let certificate = key
            .with_certificate(&SignedCertificate { certificate_pem: response.certificate_pem, not_after })
            .map_err(|e| e.to_string())?;
        let bundle = TrustBundle::from_pem(&response.trust_bundle_pem).map_err(|e| e.to_string())?;
        self.bundle.store(Arc::new(Some(bundle)));
        self.resolver.insert(&certificate).map_err(|e| e.to_string())?;
        let lifetime = not_after.duration_since(issued).unwrap_or_default();
        Ok(HeldCertificate { certificate: Arc::new(certificate), renew_at: issued + lifetime / 2 })
    }

    /// One pass: issue missing certificates, renew those past half-life, drop unneeded ones.
    pub async fn reconcile(&self, proxy: &Proxy, client: &mut CertificatesClient<tonic::transport::Channel>) {
        let wanted = self.wanted(proxy);
        let now = SystemTime::now();
        let mut held: BTreeMap<SpiffeId, Arc<HeldCertificate>> = self
            .held
            .load()
            .iter()
            .filter(|(id, _)| wanted.contains(*id))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for identity in &wanted {
            let due = held.get(identity).is_none_or(|h| now >= h.renew_at);
            if !due {
                continue;
            }
            match self.issue(client, identity).await {
                Ok(certificate) => {
                    tracing::info!(%identity, renew_in_s = certificate.renew_at.duration_since(now).unwrap_or_default().as_secs(), "workload certificate issued");
                    proxy.metrics.certificates_issued.inc();
                    held.insert(identity.clone(), Arc::new(certificate));
                }
                Err(error) => {
                    // The one held (if any) stays until it expires: renewal started at half-life.
                    tracing::warn!(%identity, %error, "workload certificate not issued; retrying");
                    proxy.metrics.certificate_errors.inc();
                }
            }
        }
        self.held.store(Arc::new(held));
    }
}

/// Keeps the node's certificates current, forever: on every config change and every second.
pub fn run(proxy: Arc<Proxy>, manager: Arc<IdentityManager>, endpoint: String) -> tokio::task::JoinHandle<()> {
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
                manager.reconcile(&proxy, client).await;
            }
            let applied = proxy.config_applied.notified();
            tokio::select! {
                () = applied => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}
