//! What each node receives: its share of the mesh's config.
//!
//! A node proxy needs the workloads of its own node (to capture them and to accept tunnels
//! for them), the node list (where to tunnel), and, when at least one of its pods is in the
//! mesh, the Services and routes those pods can reach: every Service and producer route
//! (a route in the Service's namespace), and only the consumer routes written in the
//! namespaces of its own mesh pods, since consumer routes apply to clients of that namespace
//! only. A node without mesh pods gets no Services or routes at all. Inbound policy (mTLS modes,
//! authorization policies) is sent for the node's own workloads only.

use nodus_config::{ConfigSnapshot, RouteParent};
use std::collections::BTreeSet;

/// The part of `snapshot` that node `node` needs, as a snapshot of the same version.
pub fn node_view(snapshot: &ConfigSnapshot, node: &str) -> ConfigSnapshot {
    let workloads: Vec<_> = snapshot.workloads.iter().filter(|w| w.node == node).cloned().collect();
    let client_namespaces: BTreeSet<&str> =
        workloads.iter().filter(|w| w.mesh_enabled).map(|w| w.id.namespace.as_str()).collect();
    // Inbound policy: the modes of its workloads' namespaces, the policies selecting them.
    let mtls =
        snapshot.mtls.iter().filter(|m| workloads.iter().any(|w| w.id.namespace == m.namespace)).cloned().collect();
    let authorization_policies = snapshot
        .authorization_policies
        .iter()
        .filter(|p| workloads.iter().any(|w| p.selects(&w.id.namespace, &w.labels)))
        .cloned()
        .collect();
    if client_namespaces.is_empty() {
        return ConfigSnapshot {
            version: snapshot.version,
            workloads,
            nodes: snapshot.nodes.clone(),
            mtls,
            authorization_policies,
            trust_roots: snapshot.trust_roots.clone(),
            ..Default::default()
        };
    }
    // Producer routes (in their Service's namespace) serve every client; consumer routes only
    // clients in the route's own namespace.
    let wanted = |route_namespace: &str, parents: &[RouteParent]| {
        client_namespaces.contains(route_namespace) || parents.iter().any(|p| p.service.namespace == route_namespace)
    };
    let http_routes = snapshot.http_routes.iter().filter(|r| wanted(&r.id.namespace, &r.parents)).cloned().collect();
    let grpc_routes = snapshot.grpc_routes.iter().filter(|r| wanted(&r.id.namespace, &r.parents)).cloned().collect();
    ConfigSnapshot {
        version: snapshot.version,
        services: snapshot.services.clone(),
        workloads,
        http_routes,
        grpc_routes,
        nodes: snapshot.nodes.clone(),
        mtls,
        authorization_policies,
        trust_roots: snapshot.trust_roots.clone(),
    }
}
