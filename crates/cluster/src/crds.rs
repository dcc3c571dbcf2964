//! The CRDs a cluster starts with: the Gateway API's (HTTPRoute, GRPCRoute, ReferenceGrant, of
//! the experimental channel, which carries HTTPRoute `retry`) and Nodus's own (MeshPolicy,
//! AuthorizationPolicy), applied server-side and waited for until Established.

use crate::local::ClusterError;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use std::path::Path;
use std::time::{Duration, Instant};

/// Applies every CRD of `gateway_dir` and `nodus_dir` (YAML files) and waits until each is
/// Established.
pub async fn install(client: &kube::Client, gateway_dir: &Path, nodus_dir: &Path) -> Result<(), ClusterError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut files = Vec::new();
    for dir in [gateway_dir, nodus_dir] {
        let entries = std::fs::read_dir(dir)
            .map_err(|source| ClusterError::Io { what: format!("reading {}", dir.display()), source })?;
        let mut yaml: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        yaml.sort();
        files.extend(yaml);
    }
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|source| ClusterError::Io { what: format!("reading {}", file.display()), source })?;
        for document in text.split("\n---").filter(|d| d.contains("kind: CustomResourceDefinition")) {
            let crd: CustomResourceDefinition = serde_norway::from_str(document)
                .map_err(|e| ClusterError::Kubeconfig(format!("{}: {e}", file.display())))?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            crds.patch(&name, &PatchParams::apply(crate::controllers::FIELD_MANAGER).force(), &Patch::Apply(&crd))
                .await?;
            names.push(name);
        }
    }
    for name in names {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = crds
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(ClusterError::CrdNotEstablished(name));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
