//! How a node proxy reaches an endpoint: the one rule both the controller (to report endpoints
//! the mesh cannot reach) and the proxy (to pick the transport) apply.
//!
//! - An endpoint outside the mesh is dialled directly, in plaintext, from the source node: its
//!   node's proxy holds no certificate for it and would refuse a tunnel. So is one on a node
//!   without a Nodus proxy (not in the snapshot's node list): nothing there could terminate
//!   mutual TLS for it.
//! - A mesh endpoint on the proxy's own node is dialled directly (no network is crossed).
//! - A mesh endpoint on another node with a proxy goes through that proxy, over mutual TLS.
//! - A mesh endpoint whose node is not known (no node name), or whose node has a proxy at an
//!   address nobody reports, cannot be reached safely: dialling it in plaintext would silently
//!   drop mutual TLS and the caller's identity, so it is left out, like an endpoint that is not
//!   ready, and reported.

use crate::{ConfigSnapshot, Endpoint, ObjectRef};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// How to reach one endpoint from a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Dial it directly; `mesh` says whether the pod is in the mesh (on this node) or not.
    Direct {
        /// The pod is a mesh pod on the proxy's own node.
        mesh: bool,
    },
    /// Through the peer node proxy at this tunnel address.
    Tunnel(SocketAddr),
    /// Not reachable for mesh traffic.
    Unplaced(Unplaced),
}

/// Why a mesh endpoint cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unplaced {
    /// Neither its EndpointSlice nor its Pod names a node.
    NoNode,
    /// Its node runs a proxy whose address is not known (no pod there reports `status.hostIP`).
    NodeUnknown,
}

impl Unplaced {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Unplaced::NoNode => "no_node",
            Unplaced::NodeUnknown => "node_unknown",
        }
    }
}

/// What a proxy knows of another node's proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeProxy {
    /// It accepts tunnels at this address.
    At(SocketAddr),
    /// The node runs a proxy, but its address is not known.
    AddressUnknown,
    /// The node runs no Nodus proxy (it is not in the node list).
    Absent,
}

/// Decides how a proxy on `local_node` reaches `endpoint`; `node_proxy` says what is known of a
/// node's proxy. A proxy that does not know its own node (`None`: a config file, in tests)
/// dials everything directly.
pub fn reach(endpoint: &Endpoint, local_node: Option<&str>, node_proxy: impl Fn(&str) -> NodeProxy) -> Reach {
    if !endpoint.in_mesh() {
        return Reach::Direct { mesh: false };
    }
    let Some(local) = local_node else {
        return Reach::Direct { mesh: true };
    };
    match endpoint.node.as_deref() {
        Some(node) if node == local => Reach::Direct { mesh: true },
        Some(node) => match node_proxy(node) {
            NodeProxy::At(address) => Reach::Tunnel(address),
            NodeProxy::AddressUnknown => Reach::Unplaced(Unplaced::NodeUnknown),
            NodeProxy::Absent => Reach::Direct { mesh: false },
        },
        None => Reach::Unplaced(Unplaced::NoNode),
    }
}

/// A mesh endpoint that no proxy can reach, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnplacedEndpoint {
    /// The Service it backs.
    pub service: ObjectRef,
    /// Its address.
    pub address: IpAddr,
    /// The pod behind it, if known.
    pub pod: Option<ObjectRef>,
    /// Its node as the config names it.
    pub node: Option<String>,
    /// Why.
    pub reason: Unplaced,
}

impl UnplacedEndpoint {
    /// `endpoint` of `service`, left out for `reason`.
    pub fn new(service: &ObjectRef, endpoint: &Endpoint, reason: Unplaced) -> Self {
        Self {
            service: service.clone(),
            address: endpoint.address,
            pod: endpoint.workload.as_ref().map(|w| ObjectRef::new(w.namespace.clone(), w.name.clone())),
            node: endpoint.node.clone(),
            reason,
        }
    }
}

impl fmt::Display for UnplacedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pod = self.pod.as_ref().map_or_else(|| self.address.to_string(), ToString::to_string);
        match (self.reason, &self.node) {
            (Unplaced::NodeUnknown, Some(node)) => write!(
                f,
                "mesh endpoint {pod} of {} is not reachable: the address of node {node}'s proxy is not known (no pod on it reports status.hostIP)",
                self.service
            ),
            _ => write!(f, "mesh endpoint {pod} of {} is not reachable: its node is not known", self.service),
        }
    }
}

/// The snapshot's node proxies, by node name.
#[derive(Clone, Debug, Default)]
pub struct NodeProxies<'a>(HashMap<&'a str, Option<SocketAddr>>);

impl NodeProxies<'_> {
    /// What is known of `node`'s proxy.
    pub fn get(&self, node: &str) -> NodeProxy {
        match self.0.get(node) {
            Some(Some(address)) => NodeProxy::At(*address),
            Some(None) => NodeProxy::AddressUnknown,
            None => NodeProxy::Absent,
        }
    }
}

impl ConfigSnapshot {
    /// The node proxies of the snapshot's node list.
    pub fn node_proxies(&self) -> NodeProxies<'_> {
        NodeProxies(self.nodes.iter().map(|n| (n.name.as_str(), n.tunnel_address)).collect())
    }

    /// The mesh endpoints that no other node's proxy can reach (see the module docs), for the
    /// controller to report. Endpoints that are not ready are left out: nobody dials them.
    pub fn unplaced_mesh_endpoints(&self) -> Vec<UnplacedEndpoint> {
        let proxies = self.node_proxies();
        let mut unplaced = Vec::new();
        for service in &self.services {
            for endpoint in service.endpoints.iter().filter(|e| e.ready && e.in_mesh()) {
                // Seen from a node that is not the endpoint's own.
                if let Reach::Unplaced(reason) = reach(endpoint, Some(""), |node| proxies.get(node)) {
                    unplaced.push(UnplacedEndpoint::new(&service.id, endpoint, reason));
                }
            }
        }
        unplaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(node: Option<&str>, mesh: bool) -> Endpoint {
        Endpoint {
            address: "10.244.2.2".parse().unwrap(),
            ready: true,
            workload: None,
            node: node.map(str::to_owned),
            service_account: None,
            mesh: Some(mesh),
        }
    }

    #[test]
    fn reach_follows_mesh_membership_and_node() {
        let node2: SocketAddr = "10.100.0.12:15008".parse().unwrap();
        let proxies = |node: &str| match node {
            "node-2" => NodeProxy::At(node2),
            "node-3" => NodeProxy::AddressUnknown,
            _ => NodeProxy::Absent,
        };
        let cases = [
            // (endpoint node, in the mesh, proxy's node, expected)
            (Some("node-2"), true, Some("node-1"), Reach::Tunnel(node2)),
            (Some("node-1"), true, Some("node-1"), Reach::Direct { mesh: true }),
            (Some("node-2"), false, Some("node-1"), Reach::Direct { mesh: false }),
            (Some("node-1"), false, Some("node-1"), Reach::Direct { mesh: false }),
            (None, false, Some("node-1"), Reach::Direct { mesh: false }),
            (Some("node-3"), true, Some("node-1"), Reach::Unplaced(Unplaced::NodeUnknown)),
            (Some("node-4"), true, Some("node-1"), Reach::Direct { mesh: false }),
            (None, true, Some("node-1"), Reach::Unplaced(Unplaced::NoNode)),
            (Some("node-2"), true, None, Reach::Direct { mesh: true }),
        ];
        for (node, mesh, local, expected) in cases {
            assert_eq!(reach(&endpoint(node, mesh), local, proxies), expected, "{node:?} mesh={mesh} from {local:?}");
        }
        // Not said (a hand-written config): in the mesh when it names a workload. An address
        // that is no mesh pod (a benchmark's backend) is dialled directly, not left out.
        let mut unsaid = Endpoint { mesh: None, ..endpoint(None, false) };
        assert_eq!(reach(&unsaid, Some("node-1"), proxies), Reach::Direct { mesh: false });
        unsaid.workload = Some(crate::WorkloadRef { namespace: "demo".into(), name: "web-0".into() });
        assert_eq!(reach(&unsaid, Some("node-1"), proxies), Reach::Unplaced(Unplaced::NoNode));
    }

    #[test]
    fn unplaced_mesh_endpoints_are_listed_with_their_reason() {
        let snapshot: ConfigSnapshot = serde_norway::from_str(
            r#"
services:
  - id: { namespace: demo, name: web }
    ports: [{ port: 80, targetPort: 8080 }]
    endpoints:
      - { address: 10.244.2.2, node: node-2, workload: { namespace: demo, name: web-0 } }
      - { address: 10.244.3.2, node: node-3, workload: { namespace: demo, name: web-1 } }
      - { address: 10.244.3.3, node: node-3, ready: false }
      - { address: 10.244.3.4, node: node-3, mesh: false }
      - { address: 10.244.4.2, node: node-4, workload: { namespace: demo, name: web-2 } }
      - { address: 10.244.9.9, mesh: true }
nodes: [{ name: node-2, tunnelAddress: "10.100.0.12:15008" }, { name: node-3 }]
"#,
        )
        .unwrap();
        let unplaced = snapshot.unplaced_mesh_endpoints();
        let found: Vec<_> = unplaced.iter().map(|u| (u.address.to_string(), u.reason)).collect();
        assert_eq!(
            found,
            [("10.244.3.2".to_owned(), Unplaced::NodeUnknown), ("10.244.9.9".to_owned(), Unplaced::NoNode)]
        );
        assert_eq!(
            unplaced[0].to_string(),
            "mesh endpoint demo/web-1 of demo/web is not reachable: the address of node node-3's proxy is not known (no pod on it reports status.hostIP)"
        );
    }
}
