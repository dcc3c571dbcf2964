//! The local cluster's kube-proxy: ClusterIPs for pods outside the mesh.
//!
//! Mesh pods never need it: their node proxy captures their connections to a ClusterIP at
//! `connect()` and balances over the Service's endpoints itself. A pod outside the mesh calls a
//! Service as in any cluster, through rules in its node that rewrite a ClusterIP and port to
//! one ready endpoint, as kube-proxy's nftables mode does: one `nat` chain at `prerouting` in
//! every node's network namespace, `dnat` to an endpoint picked at random. A Service with no
//! ready endpoint gets no rule, so a call to it fails at once rather than waiting.
//!
//! [`ruleset`] is pure, with table tests; [`run`] applies it with `nft -f` in every node
//! whenever Services or EndpointSlices change.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The nftables table the rules live in (in each node's network namespace).
pub const TABLE: &str = "nodus_services";

/// One Service port and where it leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// Ready endpoints: address and target port.
    pub endpoints: BTreeSet<(Ipv4Addr, u16)>,
}

/// The TCP Service ports of `services` with a ClusterIP, and their ready endpoints from `slices`.
pub fn service_ports<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
) -> Vec<ServicePort> {
    let mut ports = Vec::new();
    for service in services {
        let Some(spec) = service.spec.as_ref() else { continue };
        let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let mine = slices.clone().into_iter().filter(|s| {
            s.namespace().as_deref() == Some(namespace.as_str())
                && s.labels().get("kubernetes.io/service-name") == Some(&name)
        });
        let mine: Vec<&EndpointSlice> = mine.collect();
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Ok(service_port) = u16::try_from(port.port) else { continue };
            let port_name = port.name.clone().unwrap_or_default();
            let mut endpoints = BTreeSet::new();
            for slice in &mine {
                let target = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.clone().unwrap_or_default() == port_name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok());
                let Some(target) = target else { continue };
                for endpoint in &slice.endpoints {
                    if endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(true) {
                        continue;
                    }
                    for address in &endpoint.addresses {
                        if let Ok(address) = address.parse() {
                            endpoints.insert((address, target));
                        }
                    }
                }
            }
            ports.push(ServicePort { cluster_ip, port: service_port, endpoints });
        }
    }
    ports.sort_by_key(|p| (p.cluster_ip, p.port));
    ports
}

/// The `nft -f` input that replaces the table with rules for `ports`.
pub fn ruleset(ports: &[ServicePort]) -> String {
    // Declaring the table first makes the delete succeed on the first run too.
    let mut text = format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  chain prerouting {{\n    \
         type nat hook prerouting priority dstnat; policy accept;\n"
    );
    for port in ports.iter().filter(|p| !p.endpoints.is_empty()) {
        let targets: Vec<String> = port
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, (address, target))| format!("{index} : {address} . {target}"))
            .collect();
        text.push_str(&format!(
            "    ip daddr {} tcp dport {} dnat ip to numgen random mod {} map {{ {} }}\n",
            port.cluster_ip,
            port.port,
            targets.len(),
            targets.join(", ")
        ));
    }
    text.push_str("  }\n}\n");
    text
}

/// Keeps every node's rules (`nodes`: their network namespaces) in step with the API server's
/// Services and EndpointSlices, until the process ends.
pub async fn run(client: kube::Client, nodes: Vec<nodus_harness::NetNs>) {
    use futures::StreamExt;
    let (services, writer) = reflector::store::<Service>();
    let watch_services = reflector(writer, watcher(Api::<Service>::all(client.clone()), watcher::Config::default()));
    let (slices, writer) = reflector::store::<EndpointSlice>();
    let watch_slices = reflector(writer, watcher(Api::<EndpointSlice>::all(client), watcher::Config::default()));
    let mut changes = futures::stream::select(
        watch_services.default_backoff().map(|_| ()).boxed(),
        watch_slices.default_backoff().map(|_| ()).boxed(),
    );
    let mut applied = String::new();
    loop {
        // Debounced: a burst of changes (a rollout) is one update.
        let more = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
        if matches!(more, Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let rules = ruleset(&service_ports(
            services.state().iter().map(|s| s.as_ref()),
            slices.state().iter().map(|s| s.as_ref()),
        ));
        if rules == applied {
            continue;
        }
        let nodes = nodes.clone();
        let input = rules.clone();
        let result = tokio::task::spawn_blocking(move || nodes.iter().try_for_each(|netns| apply(netns, &input))).await;
        match result {
            Ok(Ok(())) => applied = rules,
            Ok(Err(error)) => tracing::warn!(%error, "applying Service rules failed; the next change retries"),
            Err(error) => tracing::warn!(%error, "applying Service rules panicked"),
        }
    }
}

fn apply(netns: &nodus_harness::NetNs, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut command = netns.command("nft", None).map_err(|e| e.to_string())?;
    command
        .arg("-f")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("running nft (Debian's nftables package): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes()).map_err(|e| e.to_string())?;
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("nft in {}: {}", netns.name(), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_norway::from_str(yaml).expect("a Service")
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_norway::from_str(yaml).expect("an EndpointSlice")
    }

    const WEB: &str = "metadata: { name: web, namespace: shop }\n\
        spec: { clusterIP: 10.96.0.5, ports: [{ name: http, port: 80, targetPort: 8080 }, { name: dns, port: 53, protocol: UDP }] }";

    #[test]
    fn ready_endpoints_of_the_matching_port_name_only() {
        let slices = [
            slice(
                "metadata: { name: web-a, namespace: shop, labels: { kubernetes.io/service-name: web } }\n\
                 addressType: IPv4\nports: [{ name: http, port: 8080 }]\nendpoints:\n\
                 - { addresses: [10.244.1.2], conditions: { ready: true } }\n\
                 - { addresses: [10.244.1.3], conditions: { ready: false } }",
            ),
            slice(
                "metadata: { name: web-b, namespace: shop, labels: { kubernetes.io/service-name: web } }\n\
                 addressType: IPv4\nports: [{ name: http, port: 8080 }]\nendpoints:\n\
                 - { addresses: [10.244.2.2], conditions: { ready: true } }",
            ),
            // Another namespace's Service of the same name.
            slice(
                "metadata: { name: web-c, namespace: other, labels: { kubernetes.io/service-name: web } }\n\
                 addressType: IPv4\nports: [{ name: http, port: 8080 }]\nendpoints:\n\
                 - { addresses: [10.244.9.9], conditions: { ready: true } }",
            ),
        ];
        let services = [service(WEB)];
        let ports = service_ports(&services, &slices);
        assert_eq!(ports.len(), 1, "UDP ports are not proxied: {ports:?}");
        let expected: BTreeSet<(Ipv4Addr, u16)> =
            [(Ipv4Addr::new(10, 244, 1, 2), 8080), (Ipv4Addr::new(10, 244, 2, 2), 8080)].into();
        assert_eq!(ports[0].endpoints, expected);
        let rules = ruleset(&ports);
        assert!(
            rules.contains(
                "ip daddr 10.96.0.5 tcp dport 80 dnat ip to numgen random mod 2 map { 0 : 10.244.1.2 . 8080, 1 : 10.244.2.2 . 8080 }"
            ),
            "{rules}"
        );
    }

    #[test]
    fn services_without_endpoints_or_address_get_no_rule() {
        let headless =
            service("metadata: { name: db, namespace: shop }\nspec: { clusterIP: None, ports: [{ port: 5432 }] }");
        let lonely = service(WEB);
        let ports = service_ports([&headless, &lonely], std::iter::empty::<&EndpointSlice>());
        assert_eq!(ports.len(), 1);
        assert!(ports[0].endpoints.is_empty());
        let rules = ruleset(&ports);
        assert!(!rules.contains("dnat"), "{rules}");
        assert!(rules.starts_with("table ip nodus_services\ndelete table ip nodus_services\n"), "{rules}");
    }
}
