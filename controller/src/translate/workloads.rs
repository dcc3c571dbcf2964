//! Services and their endpoints, pods as workloads, and nodes.

use super::{TranslateOptions, MESH_ENABLED, MESH_LABEL};
use crate::cluster::ClusterState;
use k8s_openapi::api::core::v1::{Pod, ServicePort as K8sServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use nodus_config::{AppProtocol, Endpoint, NodeInfo, ObjectRef, Service, ServicePort, Workload, WorkloadRef};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// The label EndpointSlices carry to name their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every Service, with the endpoints of its EndpointSlices; `nodes` are the nodes with a proxy.
pub(super) fn services(state: &ClusterState, nodes: &[NodeInfo]) -> Vec<Service> {
    let mut slices_by_service: BTreeMap<ObjectRef, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in state.endpoint_slices.values() {
        if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
            let namespace = slice.namespace().unwrap_or_default();
            slices_by_service.entry(ObjectRef::new(namespace, service.clone())).or_default().push(slice);
        }
    }
    state
        .services
        .iter()
        .map(|(id, service)| {
            let spec = service.spec.clone().unwrap_or_default();
            let slices = slices_by_service.get(id).map(Vec::as_slice).unwrap_or_default();
            let cluster_ips = spec
                .cluster_ips
                .clone()
                .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default()
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .collect();
            let ports = spec.ports.unwrap_or_default().iter().filter_map(|port| service_port(port, slices)).collect();
            Service { id: id.clone(), cluster_ips, ports, endpoints: endpoints(slices, state, nodes) }
        })
        .collect()
}

fn service_port(port: &K8sServicePort, slices: &[&EndpointSlice]) -> Option<ServicePort> {
    let number = u16::try_from(port.port).ok()?;
    // EndpointSlice ports carry the Service port's name and the resolved container port, which
    // is the only place a named targetPort is resolved.
    let from_slices = slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.name == port.name || (p.name.as_deref().unwrap_or("").is_empty() && port.name.is_none()))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok());
    let target_port = from_slices
        .or(match &port.target_port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
            _ => None,
        })
        .unwrap_or(number);
    Some(ServicePort {
        name: port.name.clone(),
        port: number,
        target_port,
        app_protocol: app_protocol(port.app_protocol.as_deref(), port.name.as_deref()),
    })
}

/// `appProtocol` first (the standard and Kubernetes-prefixed values), then Istio-style port
/// name prefixes, which users of other meshes already write; otherwise detection.
pub(super) fn app_protocol(app_protocol: Option<&str>, port_name: Option<&str>) -> AppProtocol {
    let from = |value: &str| match value.to_ascii_lowercase().as_str() {
        "http" | "http1" | "kubernetes.io/ws" => Some(AppProtocol::Http),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(AppProtocol::Http2),
        "grpc" => Some(AppProtocol::Grpc),
        "tcp" | "opaque" | "tls" | "https" | "kubernetes.io/wss" => Some(AppProtocol::Tcp),
        _ => None,
    };
    if let Some(protocol) = app_protocol.and_then(from) {
        return protocol;
    }
    let prefix = port_name.map(|n| n.split('-').next().unwrap_or(n));
    prefix.and_then(from).unwrap_or(AppProtocol::Detect)
}

fn endpoints(slices: &[&EndpointSlice], state: &ClusterState, nodes: &[NodeInfo]) -> Vec<Endpoint> {
    let mut seen = BTreeSet::new();
    let mut endpoints = Vec::new();
    for slice in slices {
        let namespace = slice.namespace().unwrap_or_default();
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let workload =
                endpoint.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).map(|r| WorkloadRef {
                    namespace: r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                    name: r.name.clone().unwrap_or_default(),
                });
            let pod =
                workload.as_ref().and_then(|w| state.pods.get(&ObjectRef::new(w.namespace.clone(), w.name.clone())));
            // The pod's service account is its identity in mutual TLS.
            let service_account = workload.as_ref().map(|_| {
                pod.and_then(|pod| pod.spec.as_ref()?.service_account_name.clone())
                    .unwrap_or_else(|| "default".to_string())
            });
            // The slice's nodeName, else the pod's own: where the endpoint runs decides which
            // proxy terminates mutual TLS for it.
            let node = endpoint.node_name.clone().or_else(|| pod.and_then(|pod| pod.spec.as_ref()?.node_name.clone()));
            // In the mesh: a pod of an enrolled namespace, on a node with a proxy (or on a node
            // not known yet: then it is reported, never dialled in plaintext). Anything else (a
            // pod outside the mesh, on a node without a proxy, an address that is not a pod) is
            // dialled directly, in plaintext.
            let has_proxy = node.as_ref().is_none_or(|node| nodes.iter().any(|n| &n.name == node));
            let mesh = has_proxy && workload.as_ref().is_some_and(|w| namespace_in_mesh(state, &w.namespace));
            for address in endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                if seen.insert(address) {
                    endpoints.push(Endpoint {
                        address,
                        ready,
                        workload: workload.clone(),
                        node: node.clone(),
                        service_account: service_account.clone(),
                        mesh: Some(mesh),
                    });
                }
            }
        }
    }
    endpoints
}

/// Whether a namespace is enrolled in the mesh (labelled `nodus.dev/mesh=enabled`).
fn namespace_in_mesh(state: &ClusterState, namespace: &str) -> bool {
    state
        .namespace_labels(namespace)
        .and_then(|labels| labels.get(MESH_LABEL))
        .is_some_and(|value| value == MESH_ENABLED)
}

fn is_running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The name metrics use for a pod's owner: the Deployment for a ReplicaSet's pod (the
/// `pod-template-hash` suffix removed), else the controlling owner, else the pod itself.
fn owner_name(pod: &Pod) -> Option<String> {
    let owner = pod.owner_references().iter().find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet" {
        if let Some(hash) = pod.labels().get("pod-template-hash") {
            if let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}")) {
                return Some(deployment.to_string());
            }
        }
    }
    Some(owner.name.clone())
}

/// Every scheduled, running pod with an IP.
pub(super) fn workloads(state: &ClusterState) -> Vec<Workload> {
    state
        .pods
        .iter()
        .filter(|(_, pod)| is_running(pod))
        .filter_map(|(id, pod)| {
            let spec = pod.spec.as_ref()?;
            let node = spec.node_name.clone()?;
            let status = pod.status.as_ref()?;
            let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|ip| ip.ip.parse().ok()).collect();
            if ips.is_empty() {
                ips.extend(status.pod_ip.as_ref().and_then(|ip| ip.parse::<IpAddr>().ok()));
            }
            if ips.is_empty() {
                return None;
            }
            let mesh_enabled = namespace_in_mesh(state, &id.namespace);
            Some(Workload {
                id: id.clone(),
                node,
                ips,
                service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".to_string()),
                labels: pod.labels().clone(),
                owner: owner_name(pod),
                mesh_enabled,
            })
        })
        .collect()
}

/// The label of node-proxy pods (the chart's DaemonSet sets it): where such a pod runs, the node
/// has a Nodus proxy.
pub const NODE_PROXY_LABEL: &str = "nodus.dev/node-proxy";

/// The nodes that run a Nodus proxy, with the address of each when known.
///
/// Which nodes: where a running pod carries [`NODE_PROXY_LABEL`]; while no pod in the cluster
/// carries it (node proxies not shown as pods, as in a manifest directory), every node a pod is
/// scheduled on is taken to have one — the safe guess, since a mesh pod wrongly assumed to be
/// behind a proxy fails loudly, while one wrongly assumed without would be reached in plaintext.
/// The address: any pod's `status.hostIP` on that node, else a node proxy's own pod address (it
/// runs in the node's network namespace); a node whose address no pod reports is listed without
/// one, and its mesh endpoints are reported unreachable rather than dialled in plaintext.
pub(super) fn nodes(state: &ClusterState, options: &TranslateOptions) -> Vec<NodeInfo> {
    let running = || state.pods.values().filter(|p| is_running(p));
    let node_of = |pod: &Pod| pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let is_node_proxy = |pod: &Pod| pod.labels().get(NODE_PROXY_LABEL).is_some_and(|v| v == "true");
    let declared = running().any(is_node_proxy);
    let mut nodes: BTreeMap<String, Option<IpAddr>> = BTreeMap::new();
    for pod in running().filter(|p| !declared || is_node_proxy(p)) {
        if let Some(node) = node_of(pod) {
            nodes.entry(node).or_default();
        }
    }
    for pod in running() {
        let status = pod.status.as_ref();
        let host_ip = status.and_then(|s| s.host_ip.as_ref()).and_then(|ip| ip.parse().ok());
        // A node proxy runs with hostNetwork: its own address is the node's.
        let own_ip = status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok());
        let address = host_ip.or(if is_node_proxy(pod) { own_ip } else { None });
        if let (Some(node), Some(address)) = (node_of(pod), address) {
            if let Some(known @ None) = nodes.get_mut(&node) {
                *known = Some(address);
            }
        }
    }
    nodes
        .into_iter()
        .map(|(name, ip)| NodeInfo { name, tunnel_address: ip.map(|ip| SocketAddr::new(ip, options.tunnel_port)) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocol_prefers_app_protocol_then_port_name() {
        let cases = [
            (Some("kubernetes.io/h2c"), None, AppProtocol::Http2),
            (Some("grpc"), Some("http"), AppProtocol::Grpc),
            (None, Some("grpc-api"), AppProtocol::Grpc),
            (None, Some("http"), AppProtocol::Http),
            (None, Some("tcp-db"), AppProtocol::Tcp),
            (Some("example.com/custom"), Some("web"), AppProtocol::Detect),
            (None, None, AppProtocol::Detect),
        ];
        for (app, name, want) in cases {
            assert_eq!(app_protocol(app, name), want, "{app:?} {name:?}");
        }
    }
}
