//! The controller's CA service: signs node proxies' CSRs, with node authorization.

use crate::distribute::Distributor;
use arc_swap::ArcSwap;
use nodus_identity::{CertificateAuthority, SpiffeId};
use nodus_wire::proto::certificates_server::{Certificates, CertificatesServer};
use nodus_wire::proto::{CertificateRequest, CertificateResponse};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// The root (PEM) of the last certificate issued, by node and identity.
type IssuedRoots = HashMap<(String, SpiffeId), Arc<str>>;

/// Signs workload certificates for node proxies.
#[derive(Clone)]
pub struct CertificateService {
    /// The CA signing now (a trust-anchor rotation swaps it).
    ca: Arc<ArcSwap<CertificateAuthority>>,
    /// The root (PEM) of the last certificate issued to each node for each identity: a
    /// rotation is over when every node holds certificates from the new root.
    issued: Arc<Mutex<IssuedRoots>>,
    trust_domain: String,
    lifetime: Duration,
    /// Node authorization reads the published config: which workloads run where.
    distributor: Distributor,
}

impl CertificateService {
    /// A service signing with `ca` for `trust_domain`, certificates valid for `lifetime`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        trust_domain: &str,
        lifetime: Duration,
        distributor: Distributor,
    ) -> Self {
        Self {
            ca: Arc::new(ArcSwap::new(ca)),
            issued: Arc::default(),
            trust_domain: trust_domain.to_string(),
            lifetime,
            distributor,
        }
    }

    /// Signs with `ca` from now on.
    pub fn set_signing(&self, ca: Arc<CertificateAuthority>) {
        self.ca.store(ca);
    }

    /// The CA signing now.
    pub fn signing(&self) -> Arc<CertificateAuthority> {
        self.ca.load_full()
    }

    /// The root (PEM) of the last certificate issued to `node` for `identity`.
    pub fn last_issued_root(&self, node: &str, identity: &SpiffeId) -> Option<Arc<str>> {
        self.issued.lock().unwrap_or_else(|p| p.into_inner()).get(&(node.to_string(), identity.clone())).cloned()
    }

    /// The lifetime of the certificates issued.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The trust domain of the identities.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The tonic service to add to a server.
    pub fn service(&self) -> CertificatesServer<Self> {
        CertificatesServer::new(self.clone())
    }

    /// Signs if a workload of `namespace`/`service_account` runs on `node`.
    pub fn sign(&self, request: &CertificateRequest) -> Result<CertificateResponse, Status> {
        let published = self.distributor.current();
        let scheduled_here = published.snapshot.workloads.iter().any(|w| {
            w.node == request.node
                && w.id.namespace == request.namespace
                && w.service_account == request.service_account
        });
        if !scheduled_here {
            tracing::warn!(node = %request.node, namespace = %request.namespace, service_account = %request.service_account,
                "certificate refused: no such workload on that node");
            return Err(Status::permission_denied(format!(
                "no workload of {}/{} runs on node {}: a node proxy gets certificates only for its own workloads",
                request.namespace, request.service_account, request.node
            )));
        }
        let identity = SpiffeId::new(&self.trust_domain, &request.namespace, &request.service_account);
        let ca = self.ca.load_full();
        let signed = ca
            .sign(&request.csr_pem, &identity, self.lifetime)
            .map_err(|e| Status::invalid_argument(format!("cannot sign the CSR: {e}")))?;
        tracing::info!(node = %request.node, %identity, lifetime_s = self.lifetime.as_secs(), "certificate issued");
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((request.node.clone(), identity), Arc::from(ca.certificate_pem()));
        let roots = self.distributor.trust_roots();
        let trust_bundle_pem = if roots.is_empty() {
            ca.certificate_pem().to_string()
        } else {
            roots.iter().map(|r| r.certificate_pem.as_str()).collect::<Vec<_>>().join("\n")
        };
        Ok(CertificateResponse {
            certificate_pem: signed.certificate_pem,
            not_after_unix: signed.not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            trust_bundle_pem,
        })
    }
}

#[tonic::async_trait]
impl Certificates for CertificateService {
    async fn sign(&self, request: Request<CertificateRequest>) -> Result<Response<CertificateResponse>, Status> {
        // Node authorization starts from the node the caller proved, not the one it names.
        let authenticated = request.extensions().get::<crate::node_auth::AuthenticatedNode>();
        crate::node_auth::authorize_node(authenticated, &request.get_ref().node)?;
        CertificateService::sign(self, request.get_ref()).map(Response::new)
    }
}

/// Loads the CA from `dir` (`ca.pem`, `ca-key.pem`), or creates and stores one. The key file is
/// written with mode 0600 (standalone mode; in a cluster the key lives in a Secret).
pub fn load_or_create_ca(dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, std::io::Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let invalid =
        |e: nodus_identity::IdentityError| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    if cert_path.exists() && key_path.exists() {
        let ca =
            CertificateAuthority::from_pem(&std::fs::read_to_string(&cert_path)?, &std::fs::read_to_string(&key_path)?)
                .map_err(invalid)?;
        return Ok(ca);
    }
    std::fs::create_dir_all(dir)?;
    let ca = CertificateAuthority::generate(trust_domain, Duration::from_secs(10 * 365 * 86_400)).map_err(invalid)?;
    let mut key = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_path)?;
    key.write_all(ca.key_pem().as_bytes())?;
    std::fs::write(&cert_path, ca.certificate_pem())?;
    Ok(ca)
}

/// The Secret holding the CA in a cluster.
pub const CA_SECRET_NAME: &str = "nodus-ca";

/// Why the CA could not be loaded, created or stored.
#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    /// Reading or writing the CA directory.
    #[error("CA directory: {0}")]
    Io(#[from] std::io::Error),
    /// Reading or writing the CA Secret.
    #[error("CA Secret: {0}")]
    Kube(#[from] kube::Error),
    /// The stored certificate or key does not parse, or a new one could not be made.
    #[error("CA certificate: {0}")]
    Certificate(#[from] nodus_identity::IdentityError),
    /// The Secret lacks a field.
    #[error("Secret {namespace}/{CA_SECRET_NAME} has no {field}")]
    MissingField {
        /// The Secret's namespace.
        namespace: String,
        /// The missing data key.
        field: String,
    },
}

/// Loads the CA from the Secret `namespace/nodus-ca` (`ca.crt`, `ca.key`), or creates one and
/// stores it there. Creation uses `create`, which fails if another replica won the race; then
/// the winner's CA is read, so every replica signs with the same root.
pub async fn load_or_create_ca_secret(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaStoreError> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    use kube::api::{Api, PostParams};
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |secret: &Secret| -> Result<CertificateAuthority, CaStoreError> {
        let data = secret.data.clone().unwrap_or_default();
        let field = |name: &str| {
            data.get(name)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .ok_or_else(|| CaStoreError::MissingField { namespace: namespace.to_owned(), field: name.to_owned() })
        };
        Ok(CertificateAuthority::from_pem(&field("ca.crt")?, &field("ca.key")?)?)
    };
    if let Some(secret) = secrets.get_opt(CA_SECRET_NAME).await? {
        return read(&secret);
    }
    let ca = CertificateAuthority::generate(trust_domain, Duration::from_secs(10 * 365 * 86_400))?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(CA_SECRET_NAME.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(
            [
                ("ca.crt".to_string(), ByteString(ca.certificate_pem().as_bytes().to_vec())),
                ("ca.key".to_string(), ByteString(ca.key_pem().as_bytes().to_vec())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(%namespace, secret = CA_SECRET_NAME, "created the mesh CA");
            Ok(ca)
        }
        Err(kube::Error::Api(response)) if response.code == 409 => read(&secrets.get(CA_SECRET_NAME).await?),
        Err(error) => Err(error.into()),
    }
}
