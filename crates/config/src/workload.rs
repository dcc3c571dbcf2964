//! Workloads (pods) and the identity they run as.

use crate::ObjectRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A pod known to the mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// The pod's namespace and name.
    pub id: ObjectRef,
    /// The node the pod is scheduled on.
    pub node: String,
    /// The pod's IP addresses.
    pub ips: Vec<IpAddr>,
    /// The service account the pod runs as; with the namespace it forms the SPIFFE identity.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The pod's labels (selectors in policies match on them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The name metrics use for the pod's owner (Deployment, StatefulSet...), never the pod name,
    /// so that short-lived pods cannot explode metric cardinality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Whether the pod's namespace is enrolled in the mesh (`nodus.dev/mesh=enabled`).
    #[serde(default)]
    pub mesh_enabled: bool,
}

fn default_service_account() -> String {
    "default".to_owned()
}

/// A reference from an endpoint to the workload behind it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}
