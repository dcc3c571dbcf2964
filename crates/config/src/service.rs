//! Services and their endpoints, as the proxy load-balances over them.

use crate::{ObjectRef, WorkloadRef};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A Kubernetes Service as the mesh sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// The Service's namespace and name.
    pub id: ObjectRef,
    /// Cluster IPs that clients dial (empty for headless services).
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    /// Ports the Service exposes.
    pub ports: Vec<ServicePort>,
    /// Ready and not-ready endpoints backing the Service.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// The service port with this number, if the Service exposes it.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// The port name, if the Service names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port clients dial on the cluster IP.
    pub port: u16,
    /// The port on the endpoints (named target ports are resolved by the controller).
    pub target_port: u16,
    /// How the proxy should treat the bytes on this port.
    #[serde(default)]
    pub app_protocol: AppProtocol,
}

/// The application protocol of a port (Kubernetes `appProtocol`), or detection when unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AppProtocol {
    /// Not declared: the proxy sniffs the first bytes (HTTP/1.1, HTTP/2 prior knowledge, else TCP).
    #[default]
    Detect,
    /// HTTP/1.1.
    Http,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP: never parsed.
    Tcp,
}

/// One endpoint address of a Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The endpoint's IP (a pod IP).
    pub address: IpAddr,
    /// Whether the endpoint is ready to receive traffic (EndpointSlice `conditions.ready`).
    #[serde(default = "default_true")]
    pub ready: bool,
    /// The workload (pod) behind the address, when it is in the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// The node hosting the endpoint, so a proxy knows which peer proxy terminates mTLS for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod's service account: with its namespace, the identity its node proxy proves in
    /// mutual TLS (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Whether the pod behind the address is in the mesh (its namespace is enrolled and its
    /// node runs a proxy). A mesh endpoint on another node is reached only through that node's
    /// proxy, over mutual TLS, and is unreachable while its node is unknown (never dialled in
    /// plaintext); an endpoint outside the mesh is dialled directly, in plaintext, from the
    /// source node. The controller always says; absent (a hand-written config), an endpoint is
    /// taken to be in the mesh when it names a workload ([`Endpoint::in_mesh`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<bool>,
}

impl Endpoint {
    /// Whether the endpoint is in the mesh: `mesh` when given, else whether it names a workload.
    pub fn in_mesh(&self) -> bool {
        self.mesh.unwrap_or(self.workload.is_some())
    }
}

fn default_true() -> bool {
    true
}
