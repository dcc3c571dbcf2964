//! The mesh configuration model shared by the Nodus controller (producer) and node proxies (consumer).
//!
//! A [`ConfigSnapshot`] is a complete, self-contained view of what one node proxy must know: the
//! services its pods can reach with their endpoints, the workloads it serves, and the L7 routes
//! attached to those services. The controller translates Kubernetes objects into a snapshot; the
//! proxy swaps snapshots atomically. Every snapshot the proxy accepts has passed [`ConfigSnapshot::validate`],
//! so the data path never meets a dangling reference or a regular expression that does not compile.
//!
//! Snapshots deserialize from YAML/JSON (camelCase fields, unknown fields rejected) so tests and the
//! local mesh can write them by hand.

mod duration;
mod policy;
mod reach;
mod route;
mod service;
mod validate;
mod workload;

pub use duration::{parse_gateway_duration, GatewayDuration};
pub use policy::{AuthorizationAction, AuthorizationPolicy, AuthorizationRule, MtlsMode, NamespaceMtls, TrustRoot};
pub use reach::{reach, NodeProxies, NodeProxy, Reach, Unplaced, UnplacedEndpoint};
pub use route::{
    BackendRef, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule, HeaderMatch, HeaderModifier, HttpFilter,
    HttpRoute, HttpRouteMatch, HttpRouteRule, MatchKind, NameValue, PathMatch, PathModifier, QueryParamMatch,
    RedirectFilter, RetryPolicy, RouteParent, RouteTimeouts, StringMatch, UrlRewriteFilter,
};
pub use service::{AppProtocol, Endpoint, Service, ServicePort};
pub use validate::{RouteValidator, ValidationError, MAX_RETRY_ATTEMPTS};
pub use workload::{Workload, WorkloadRef};

use serde::{Deserialize, Serialize};
use std::fmt;

/// The port node proxies accept tunnels on by default (the same on every node; the controller
/// writes it into each node's `tunnelAddress`). Istio's HBONE port, so firewall rules written for
/// ambient meshes fit.
pub const TUNNEL_PORT: u16 = 15008;

/// A namespaced Kubernetes object name, `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name within its namespace.
    pub name: String,
}

impl ObjectRef {
    /// Builds a reference from a namespace and a name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything one node proxy needs, as of one controller version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSnapshot {
    /// Monotonic version assigned by the controller; proxies report it in metrics and ACKs.
    #[serde(default)]
    pub version: u64,
    /// Services reachable from this node's pods, with their endpoints.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Workloads (pods) known to the mesh; the node proxy captures and serves the ones on its node.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// HTTPRoutes attached to services (GAMMA), already filtered to those this node needs.
    #[serde(default)]
    pub http_routes: Vec<HttpRoute>,
    /// GRPCRoutes attached to services (GAMMA).
    #[serde(default)]
    pub grpc_routes: Vec<GrpcRoute>,
    /// The nodes that run a Nodus proxy, and where each accepts tunnels. A mesh endpoint on a
    /// listed node other than the proxy's own is reached through that node's proxy; one on a node
    /// not listed has no proxy to vouch for it and is dialled directly ([`reach`]).
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
    /// mTLS mode of namespaces that set one (others are permissive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mtls: Vec<NamespaceMtls>,
    /// Authorization policies selecting this node's workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// The mesh CA roots proxies trust (empty without workload identities, e.g. a config file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_roots: Vec<TrustRoot>,
}

/// A node that runs a Nodus proxy, and where that proxy accepts tunnels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeInfo {
    /// Node name (as workloads and endpoints name it).
    pub name: String,
    /// Where the node's proxy accepts tunnels (its inbound listener); absent while the node's
    /// address is not known, when its mesh endpoints cannot be reached ([`reach`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<std::net::SocketAddr>,
}

impl ConfigSnapshot {
    /// Finds a service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.id.namespace == namespace && s.id.name == name)
    }
}
