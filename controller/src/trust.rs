//! Trust-anchor rotation: replacing the mesh CA's root with no restarts and no failed request.
//!
//! An operator stages a new root next to the active one (`next.pem`/`next-key.pem` in the CA
//! directory, or `next.crt`/`next.key` in the CA Secret; `nodus-controller --generate-root`
//! makes one). The controller then walks every node through three config pushes, each waiting
//! for the previous one to be acknowledged by every connected node proxy:
//!
//! 1. **Trust both**: old (signing) and new roots. Every proxy accepts certificates from either.
//! 2. **Sign with the new root**: the CA switches; the push marks the new root signing, and each
//!    proxy re-issues at once every certificate from the old root. Connections already open
//!    keep going: a TLS session is verified once, at its handshake.
//! 3. **Retire the old root** once every connected node holds certificates only from the new
//!    one (or the certificate lifetime has passed, so old certificates have expired anyway).
//!    The store is rewritten: the new root becomes the active one.
//!
//! A controller restarted mid-rotation finds both roots in the store and starts again at step 1:
//! every step is safe to repeat.

use crate::certificates::{CaStoreError, CertificateService};
use crate::distribute::{Distributor, NodeStatus};
use nodus_config::{ConfigSnapshot, TrustRoot};
use nodus_identity::{CertificateAuthority, SpiffeId};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the CA's roots are kept.
#[derive(Clone)]
pub enum CaStore {
    /// A directory: `ca.pem`/`ca-key.pem` (active), `next.pem`/`next-key.pem` (staged).
    Dir(PathBuf),
    /// The Secret `nodus-ca` in this namespace: `ca.crt`/`ca.key`, `next.crt`/`next.key`.
    Secret {
        /// API client.
        client: kube::Client,
        /// The controller's namespace.
        namespace: String,
    },
    /// Nowhere (a CA made for one run): no rotation.
    Memory,
}

const DIR_NEXT: (&str, &str) = ("next.pem", "next-key.pem");
const SECRET_NEXT: (&str, &str) = ("next.crt", "next.key");

impl CaStore {
    /// The staged next root, if any.
    pub async fn load_next(&self) -> Result<Option<CertificateAuthority>, CaStoreError> {
        match self {
            Self::Dir(dir) => {
                let (cert, key) = (dir.join(DIR_NEXT.0), dir.join(DIR_NEXT.1));
                if !cert.exists() || !key.exists() {
                    return Ok(None);
                }
                Ok(Some(CertificateAuthority::from_pem(
                    &std::fs::read_to_string(&cert)?,
                    &std::fs::read_to_string(&key)?,
                )?))
            }
            Self::Secret { client, namespace } => {
                let secret = secrets(client, namespace).get(crate::certificates::CA_SECRET_NAME).await?;
                let data = secret.data.unwrap_or_default();
                match (data.get(SECRET_NEXT.0), data.get(SECRET_NEXT.1)) {
                    (Some(cert), Some(key)) => Ok(Some(CertificateAuthority::from_pem(
                        &String::from_utf8_lossy(&cert.0),
                        &String::from_utf8_lossy(&key.0),
                    )?)),
                    _ => Ok(None),
                }
            }
            Self::Memory => Ok(None),
        }
    }

    /// Makes `next` the active root and removes the staged copy.
    pub async fn promote(&self, next: &CertificateAuthority) -> Result<(), CaStoreError> {
        match self {
            Self::Dir(dir) => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                // Write aside, then rename: a crash leaves either root whole, never half of one.
                let key_tmp = dir.join("ca-key.pem.tmp");
                let _ = std::fs::remove_file(&key_tmp);
                let mut key = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_tmp)?;
                key.write_all(next.key_pem().as_bytes())?;
                key.sync_all()?;
                std::fs::write(dir.join("ca.pem.tmp"), next.certificate_pem())?;
                std::fs::rename(&key_tmp, dir.join("ca-key.pem"))?;
                std::fs::rename(dir.join("ca.pem.tmp"), dir.join("ca.pem"))?;
                // The staged root is the active one now.
                self.discard_next().await
            }
            Self::Secret { client, namespace } => {
                use k8s_openapi::ByteString;
                let api = secrets(client, namespace);
                let mut secret = api.get(crate::certificates::CA_SECRET_NAME).await?;
                let data = secret.data.get_or_insert_with(Default::default);
                data.insert("ca.crt".into(), ByteString(next.certificate_pem().as_bytes().to_vec()));
                data.insert("ca.key".into(), ByteString(next.key_pem().as_bytes().to_vec()));
                data.remove(SECRET_NEXT.0);
                data.remove(SECRET_NEXT.1);
                // `replace` carries the resourceVersion read: a concurrent edit fails it
                // instead of being overwritten, and the next poll tries again.
                api.replace(crate::certificates::CA_SECRET_NAME, &Default::default(), &secret).await?;
                Ok(())
            }
            Self::Memory => Ok(()),
        }
    }

    /// Removes a staged root equal to the active one (left by a crash after promotion).
    async fn discard_next(&self) -> Result<(), CaStoreError> {
        match self {
            Self::Dir(dir) => {
                std::fs::remove_file(dir.join(DIR_NEXT.1))?;
                std::fs::remove_file(dir.join(DIR_NEXT.0))?;
                Ok(())
            }
            Self::Secret { client, namespace } => {
                let api = secrets(client, namespace);
                let mut secret = api.get(crate::certificates::CA_SECRET_NAME).await?;
                if let Some(data) = secret.data.as_mut() {
                    data.remove(SECRET_NEXT.0);
                    data.remove(SECRET_NEXT.1);
                }
                api.replace(crate::certificates::CA_SECRET_NAME, &Default::default(), &secret).await?;
                Ok(())
            }
            Self::Memory => Ok(()),
        }
    }
}

fn secrets(client: &kube::Client, namespace: &str) -> kube::Api<k8s_openapi::api::core::v1::Secret> {
    kube::Api::namespaced(client.clone(), namespace)
}

/// The trust roots of one step of a rotation.
pub fn roots(trusted: &[&CertificateAuthority], signing: &CertificateAuthority) -> Vec<TrustRoot> {
    trusted
        .iter()
        .map(|ca| TrustRoot {
            certificate_pem: ca.certificate_pem().to_string(),
            signing: ca.certificate_pem() == signing.certificate_pem(),
        })
        .collect()
}

/// The (node, identity) pairs of connected nodes' mesh workloads whose last certificate is not
/// from `root`: what a rotation still waits for.
pub fn pending_reissue(
    snapshot: &ConfigSnapshot,
    nodes: &BTreeMap<String, NodeStatus>,
    trust_domain: &str,
    root_pem: &str,
    last_issued_root: impl Fn(&str, &SpiffeId) -> Option<Arc<str>>,
) -> Vec<(String, SpiffeId)> {
    let mut pending: Vec<(String, SpiffeId)> = snapshot
        .workloads
        .iter()
        .filter(|w| w.mesh_enabled && nodes.get(&w.node).is_some_and(|n| n.connected))
        .map(|w| (w.node.clone(), SpiffeId::new(trust_domain, &w.id.namespace, &w.service_account)))
        .filter(|(node, identity)| last_issued_root(node, identity).as_deref() != Some(root_pem))
        .collect();
    pending.sort();
    pending.dedup();
    pending
}

/// Drives rotations when a next root is staged.
pub struct TrustAnchorRotation {
    /// Where roots are kept.
    pub store: CaStore,
    /// The CA service (its signer is switched).
    pub certificates: CertificateService,
    /// Pushes the roots to every node.
    pub distributor: Distributor,
    /// How often the store is checked for a staged root.
    pub poll: Duration,
}

impl TrustAnchorRotation {
    /// Sets the active root as the one every push carries. Call before the first config is
    /// published, so that no push goes out without roots.
    pub fn publish_active(&self) {
        let active = self.certificates.signing();
        self.distributor.set_trust_roots(roots(&[&active], &active));
    }

    /// Publishes the active root, then watches the store forever.
    pub async fn run(self) {
        self.publish_active();
        loop {
            tokio::time::sleep(self.poll).await;
            let next = match self.store.load_next().await {
                Ok(Some(next)) => next,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the staged root; trying again");
                    continue;
                }
            };
            let active = self.certificates.signing();
            if next.certificate_pem() == active.certificate_pem() {
                if let Err(error) = self.store.discard_next().await {
                    tracing::warn!(%error, "cannot remove the staged copy of the active root");
                }
                continue;
            }
            self.rotate(active, Arc::new(next)).await;
        }
    }

    /// Waits until every connected proxy acknowledged `version` (or a later one).
    async fn acknowledged(&self, version: u64, step: &str) {
        let all_acked = |nodes: &BTreeMap<String, NodeStatus>| {
            nodes.values().filter(|n| n.connected).all(|n| n.acked_version >= version)
        };
        while !self.distributor.wait_for(Duration::from_secs(60), all_acked).await {
            let waiting: Vec<String> = self
                .distributor
                .node_statuses()
                .into_iter()
                .filter(|(_, n)| n.connected && n.acked_version < version)
                .map(|(name, _)| name)
                .collect();
            tracing::warn!(step, version, ?waiting, "trust-anchor rotation waits for node proxies to apply the config");
        }
    }

    async fn rotate(&self, old: Arc<CertificateAuthority>, new: Arc<CertificateAuthority>) {
        let started = Instant::now();
        tracing::info!("trust-anchor rotation: 1/3 every node trusts the old and the new root");
        let version = self.distributor.set_trust_roots(roots(&[&old, &new], &old));
        self.acknowledged(version, "trust both").await;

        tracing::info!("trust-anchor rotation: 2/3 the CA signs with the new root; proxies re-issue");
        self.certificates.set_signing(new.clone());
        let version = self.distributor.set_trust_roots(roots(&[&old, &new], &new));
        self.acknowledged(version, "sign with the new root").await;
        // After one certificate lifetime every certificate from the old root has expired.
        let deadline = Instant::now() + self.certificates.lifetime();
        loop {
            let pending = pending_reissue(
                &self.distributor.current().snapshot,
                &self.distributor.node_statuses(),
                self.certificates.trust_domain(),
                new.certificate_pem(),
                |node, identity| self.certificates.last_issued_root(node, identity),
            );
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(?pending, "certificates not re-issued within their lifetime; retiring the old root");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        tracing::info!("trust-anchor rotation: 3/3 the old root is retired");
        let version = self.distributor.set_trust_roots(roots(&[&new], &new));
        self.acknowledged(version, "retire the old root").await;
        loop {
            match self.store.promote(&new).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot store the new root as the active one; trying again");
                    tokio::time::sleep(self.poll).await;
                }
            }
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "trust-anchor rotation complete");
    }
}

/// Generates a new root and stages it in `dir` as the next one (`--generate-root`). The key file
/// is created 0600 and never replaced: staging twice is an error, not a silent overwrite.
pub fn stage_root(dir: &std::path::Path, trust_domain: &str) -> Result<CertificateAuthority, CaStoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let ca = CertificateAuthority::generate(trust_domain, Duration::from_secs(10 * 365 * 86_400))?;
    std::fs::create_dir_all(dir)?;
    let mut key = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join(DIR_NEXT.1))?;
    key.write_all(ca.key_pem().as_bytes())?;
    std::fs::write(dir.join(DIR_NEXT.0), ca.certificate_pem())?;
    Ok(ca)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_rotation_waits_for_connected_nodes_mesh_identities_only() {
        let snapshot: ConfigSnapshot = serde_norway::from_str(
            "workloads:
  - { id: { namespace: demo, name: web-0 }, node: node-1, ips: [10.0.0.1], serviceAccount: web, meshEnabled: true }
  - { id: { namespace: demo, name: web-1 }, node: node-1, ips: [10.0.0.2], serviceAccount: web, meshEnabled: true }
  - { id: { namespace: demo, name: api-0 }, node: node-2, ips: [10.0.0.3], serviceAccount: api, meshEnabled: true }
  - { id: { namespace: plain, name: db-0 }, node: node-2, ips: [10.0.0.4], serviceAccount: db, meshEnabled: false }
  - { id: { namespace: demo, name: job-0 }, node: node-3, ips: [10.0.0.5], serviceAccount: job, meshEnabled: true }
",
        )
        .unwrap();
        let connected = NodeStatus { connected: true, ..Default::default() };
        let nodes: BTreeMap<String, NodeStatus> = [
            ("node-1".to_string(), connected.clone()),
            ("node-2".to_string(), connected),
            ("node-3".to_string(), NodeStatus::default()),
        ]
        .into();
        let id = |sa: &str| SpiffeId::new("cluster.local", "demo", sa);
        let none = pending_reissue(&snapshot, &nodes, "cluster.local", "NEW", |_, _| None);
        assert_eq!(
            none,
            vec![("node-1".to_string(), id("web")), ("node-2".to_string(), id("api"))],
            "one entry per identity and node; not mesh: never; node-3 disconnected: not waited for"
        );
        let partly = pending_reissue(&snapshot, &nodes, "cluster.local", "NEW", |node, _| {
            Some(Arc::from(if node == "node-1" { "NEW" } else { "OLD" }))
        });
        assert_eq!(partly, vec![("node-2".to_string(), id("api"))]);
        assert!(pending_reissue(&snapshot, &nodes, "cluster.local", "NEW", |_, _| Some(Arc::from("NEW"))).is_empty());
    }

    #[test]
    fn roots_mark_exactly_the_signing_one() {
        let old = CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let new = CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let step2 = roots(&[&old, &new], &new);
        assert_eq!(step2.iter().map(|r| r.signing).collect::<Vec<_>>(), [false, true]);
        let snapshot = ConfigSnapshot { trust_roots: step2, ..Default::default() };
        snapshot.validate().unwrap();
    }

    #[tokio::test]
    async fn a_directory_store_promotes_the_staged_root() {
        let dir = tempfile::tempdir().unwrap();
        let active = crate::certificates::load_or_create_ca(dir.path(), "cluster.local").unwrap();
        let store = CaStore::Dir(dir.path().to_path_buf());
        assert!(store.load_next().await.unwrap().is_none());
        let next = stage_root(dir.path(), "cluster.local").unwrap();
        let staged = store.load_next().await.unwrap().unwrap();
        assert_eq!(staged.certificate_pem(), next.certificate_pem());
        assert_ne!(staged.certificate_pem(), active.certificate_pem());
        store.promote(&staged).await.unwrap();
        let reloaded = crate::certificates::load_or_create_ca(dir.path(), "cluster.local").unwrap();
        assert_eq!(reloaded.certificate_pem(), next.certificate_pem());
        assert!(store.load_next().await.unwrap().is_none(), "the staged copy is gone");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
