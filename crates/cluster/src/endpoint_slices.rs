//! The EndpointSlice controller's job, as a pure function: a Service with a selector and the pods
//! of its namespace in, the EndpointSlices that list them out, to Kubernetes' conventions:
//!
//! - labels `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by` (our own
//!   value, [`MANAGED_BY`], so that nobody mistakes these for the built-in controller's);
//! - an owner reference to the Service (controller, blocking deletion), so deleting the Service
//!   deletes its slices;
//! - at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints per slice, and one group of slices per set of
//!   resolved ports (a named `targetPort` can resolve to different numbers in different pods);
//! - per endpoint: the pod's address, `nodeName`, a `targetRef` to the pod, and the conditions
//!   `ready` (the pod is Ready and not terminating), `serving` (Ready, terminating or not) and
//!   `terminating` (its deletion has begun).
//!
//! A Service without a selector gets no managed slices: its slices are the user's.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Our `endpointslice.kubernetes.io/managed-by` value.
pub const MANAGED_BY: &str = "endpointslice-controller.nodus.dev";
/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Kubernetes' default (and the EndpointSlice controller's `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Whether `labels` satisfy a Service's equality selector (every pair present).
pub fn selects(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector.iter().all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
}

/// The slices `service` should have, given `pods` (any namespace; only the Service's own and
/// selected ones count). Names are `<service>-<n>`, stable for the same inputs, so applying them
/// again changes nothing.
pub fn endpoint_slices<'p>(service: &Service, pods: impl IntoIterator<Item = &'p Pod>) -> Vec<EndpointSlice> {
    let Some(spec) = service.spec.as_ref() else { return Vec::new() };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else { return Vec::new() };
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let service_ports = spec.ports.as_deref().unwrap_or_default();

    // Endpoints grouped by the ports they resolve to; BTreeMaps keep the output in a stable order.
    let mut groups: BTreeMap<Vec<PortKey>, Vec<(String, Endpoint)>> = BTreeMap::new();
    for pod in pods {
        if pod.metadata.namespace.as_deref().unwrap_or("default") != namespace
            || !selects(selector, pod.metadata.labels.as_ref())
        {
            continue;
        }
        let Some(endpoint) = endpoint_of(pod) else { continue };
        let Some(ports) = resolve_ports(service_ports, pod) else { continue };
        let name = pod.metadata.name.clone().unwrap_or_default();
        groups.entry(ports).or_default().push((name, endpoint));
    }
    if groups.is_empty() {
        // An empty slice still says which ports the Service has, as Kubernetes writes one.
        let ports = service_ports
            .iter()
            .filter_map(|p| match target_port(p) {
                Some(IntOrString::String(_)) => None,
                Some(IntOrString::Int(port)) => Some(port_key(p, *port)),
                None => Some(port_key(p, p.port)),
            })
            .collect();
        groups.insert(ports, Vec::new());
    }

    let mut slices = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(|chunk| chunk.iter().map(|(_, e)| e.clone()).collect())
                .collect()
        };
        for chunk in chunks {
            slices.push(slice(service, namespace, slices.len(), &ports, chunk));
        }
    }
    slices
}

type PortKey = (String, i32, String);

/// A Service port's `targetPort`, if set: 0 and "" mean unset, as Kubernetes' defaulting reads
/// them (it then uses `port`); an API server without that defaulting (kapi) stores them as sent.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort) -> Option<&IntOrString> {
    port.target_port
        .as_ref()
        .filter(|t| !matches!(t, IntOrString::Int(0)) && !matches!(t, IntOrString::String(s) if s.is_empty()))
}

fn port_key(port: &k8s_openapi::api::core::v1::ServicePort, number: i32) -> PortKey {
    (port.name.clone().unwrap_or_default(), number, port.protocol.clone().unwrap_or_else(|| "TCP".into()))
}

/// The pod's ports for the Service's ports; `None` when a named `targetPort` is not a port of
/// the pod (Kubernetes leaves such a pod out).
fn resolve_ports(service_ports: &[k8s_openapi::api::core::v1::ServicePort], pod: &Pod) -> Option<Vec<PortKey>> {
    service_ports
        .iter()
        .map(|port| match target_port(port) {
            None => Some(port_key(port, port.port)),
            Some(IntOrString::Int(number)) => Some(port_key(port, *number)),
            Some(IntOrString::String(name)) => {
                let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
                containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| port_key(port, p.container_port))
            }
        })
        .collect()
}

/// The endpoint of a pod that has an address and has not ended; `None` otherwise.
fn endpoint_of(pod: &Pod) -> Option<Endpoint> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let address = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let ready_condition = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Some(Endpoint {
        addresses: vec![address],
        conditions: Some(EndpointConditions {
            ready: Some(ready_condition && !terminating),
            serving: Some(ready_condition),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn slice(
    service: &Service,
    namespace: &str,
    index: usize,
    ports: &[PortKey],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let name = service.metadata.name.clone().unwrap_or_default();
    let app_protocols: BTreeMap<&str, Option<String>> = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| (p.name.as_deref().unwrap_or_default(), p.app_protocol.clone()))
        .collect();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{index}")),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.to_owned(), name.clone()),
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name,
                uid: service.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(port_name, number, protocol)| EndpointPort {
                    name: Some(port_name.clone()),
                    port: Some(*number),
                    protocol: Some(protocol.clone()),
                    app_protocol: app_protocols.get(port_name.as_str()).cloned().flatten(),
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_norway::from_str(yaml).unwrap()
    }

    fn pod(name: &str, labels: &str, ip: Option<&str>, ready: bool, extra: &str) -> Pod {
        let status = match ip {
            Some(ip) => format!(
                "status: {{ phase: Running, podIP: {ip}, conditions: [{{ type: Ready, status: '{}' }}] }}",
                if ready { "True" } else { "False" }
            ),
            None => "status: { phase: Pending }".into(),
        };
        serde_norway::from_str(&format!(
            "metadata: {{ name: {name}, namespace: shop, uid: u-{name}, labels: {labels} {extra} }}\n\
             spec: {{ nodeName: node-1, containers: [{{ name: web, image: nodus-echo, ports: [{{ name: http, containerPort: 8080 }}] }}] }}\n{status}"
        ))
        .unwrap()
    }

    const WEB: &str = "metadata: { name: web, namespace: shop, uid: svc-uid }\n\
        spec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: http, appProtocol: http }] }";

    fn endpoints(slice: &EndpointSlice) -> Vec<(String, bool, bool, bool)> {
        slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (e.addresses[0].clone(), c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
            })
            .collect()
    }

    #[test]
    fn selected_pods_with_addresses_are_listed_with_their_conditions() {
        let pods = [
            pod("a", "{ app: web }", Some("10.244.1.2"), true, ""),
            pod("b", "{ app: web }", Some("10.244.1.3"), false, ""),
            pod("c", "{ app: web }", Some("10.244.1.4"), true, ", deletionTimestamp: '2026-01-01T00:00:00Z'"),
            pod("d", "{ app: web }", None, false, ""),
            pod("e", "{ app: db }", Some("10.244.1.5"), true, ""),
        ];
        let slices = endpoint_slices(&service(WEB), &pods);
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!(
            endpoints(slice),
            [
                ("10.244.1.2".into(), true, true, false),
                ("10.244.1.3".into(), false, false, false),
                ("10.244.1.4".into(), false, true, true),
            ]
        );
        assert_eq!(slice.metadata.name.as_deref(), Some("web-0"));
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Service", "svc-uid", Some(true)));
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.app_protocol.as_deref()), (Some(8080), Some("http")), "named targetPort resolved");
        let first = &slice.endpoints[0];
        assert_eq!(first.node_name.as_deref(), Some("node-1"));
        assert_eq!(first.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
    }

    #[test]
    fn an_unset_target_port_is_the_service_port_also_when_stored_as_zero() {
        // The conformance suite's `http-alt: 8080` and `grpc: 7070` have no targetPort; kapi
        // stores `targetPort: 0` where Kubernetes' defaulting would have written the port.
        let svc = service(
            "metadata: { name: echo, namespace: shop, uid: u }\n\
             spec: { selector: { app: web }, ports: [{ name: a, port: 8080 }, { name: b, port: 7070, targetPort: 0 }, { name: c, port: 80, targetPort: '' }] }",
        );
        let pods = [pod("a", "{ app: web }", Some("10.244.1.2"), true, "")];
        for slices in [endpoint_slices(&svc, &pods), endpoint_slices(&svc, &[])] {
            let ports: Vec<(Option<String>, Option<i32>)> =
                slices[0].ports.iter().flatten().map(|p| (p.name.clone(), p.port)).collect();
            assert_eq!(
                ports,
                [(Some("a".into()), Some(8080)), (Some("b".into()), Some(7070)), (Some("c".into()), Some(80))],
                "{slices:?}"
            );
        }
    }

    #[test]
    fn a_hundred_endpoints_fill_a_slice_and_the_rest_start_another() {
        let pods: Vec<Pod> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    "{ app: web }",
                    Some(&format!("10.244.{}.{}", i / 200 + 1, i % 200 + 2)),
                    true,
                    "",
                )
            })
            .collect();
        let slices = endpoint_slices(&service(WEB), &pods);
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 50]);
        assert_eq!(slices[1].metadata.name.as_deref(), Some("web-1"));
    }

    #[test]
    fn pods_without_the_named_port_are_left_out_and_an_empty_service_keeps_one_slice() {
        let mut other = pod("x", "{ app: web }", Some("10.244.1.9"), true, "");
        other.spec.as_mut().unwrap().containers[0].ports = None;
        let slices = endpoint_slices(&service(WEB), &[other]);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty());
        let numbered = service(
            "metadata: { name: api, namespace: shop }\nspec: { selector: { app: api }, ports: [{ port: 9090 }] }",
        );
        let slices = endpoint_slices(&numbered, std::iter::empty());
        assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(9090), "targetPort defaults to port");
    }

    #[test]
    fn services_without_a_selector_get_no_managed_slices() {
        let manual = service("metadata: { name: ext, namespace: shop }\nspec: { ports: [{ port: 80 }] }");
        assert!(endpoint_slices(&manual, &[pod("a", "{ app: web }", Some("10.244.1.2"), true, "")]).is_empty());
    }
}
