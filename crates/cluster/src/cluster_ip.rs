//! ClusterIP allocation, the API server's job in a real cluster (kapi does not do it): Services
//! of type ClusterIP (the default) without a `clusterIP` get the lowest free address of
//! [`SERVICE_CIDR`]. `None` (headless) and ExternalName Services get none.

use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The Service address range, as kubeadm's default: `10.96.0.0/16`.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);

/// Addresses never handed out: the network address, `.1` (the API server's Service in a real
/// cluster), `.10` (cluster DNS's, by kubeadm's convention) and the broadcast address.
fn reserved(ip: Ipv4Addr) -> bool {
    let offset = u32::from(ip) - u32::from(SERVICE_CIDR.0);
    let size = 1u32 << (32 - SERVICE_CIDR.1);
    matches!(offset, 0 | 1 | 10) || offset == size - 1
}

/// Whether `service` needs an address allocated.
pub fn needs_address(service: &Service) -> bool {
    let Some(spec) = service.spec.as_ref() else { return true };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    matches!(kind, "ClusterIP" | "NodePort" | "LoadBalancer") && spec.cluster_ip.as_deref().is_none_or(str::is_empty)
}

/// The addresses Services hold already.
pub fn used_addresses<'s>(services: impl IntoIterator<Item = &'s Service>) -> BTreeSet<Ipv4Addr> {
    services.into_iter().filter_map(|s| s.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok()).collect()
}

/// The lowest free address of the range, if any is left.
pub fn allocate(used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(SERVICE_CIDR.0);
    let size = 1u32 << (32 - SERVICE_CIDR.1);
    (first..first + size).map(Ipv4Addr::from).find(|ip| !reserved(*ip) && !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: &str) -> Service {
        serde_norway::from_str(&format!("metadata: {{ name: s }}\nspec: {spec}")).unwrap()
    }

    #[test]
    fn the_lowest_free_unreserved_address_is_allocated() {
        let mut used = BTreeSet::new();
        assert_eq!(allocate(&used), Some(Ipv4Addr::new(10, 96, 0, 2)));
        used.extend((2..=9).map(|i| Ipv4Addr::new(10, 96, 0, i)));
        assert_eq!(allocate(&used), Some(Ipv4Addr::new(10, 96, 0, 11)), ".10 is reserved for cluster DNS");
    }

    #[test]
    fn only_cluster_ip_services_without_an_address_need_one() {
        let cases = [
            ("{ ports: [{ port: 80 }] }", true),
            ("{ type: NodePort, ports: [{ port: 80 }] }", true),
            ("{ clusterIP: 10.96.5.5, ports: [{ port: 80 }] }", false),
            ("{ clusterIP: None, ports: [{ port: 80 }] }", false),
            ("{ type: ExternalName, externalName: example.com }", false),
        ];
        for (spec, want) in cases {
            assert_eq!(needs_address(&service(spec)), want, "{spec}");
        }
        let used = used_addresses(&[service("{ clusterIP: 10.96.5.5 }"), service("{ clusterIP: None }")]);
        assert_eq!(used.into_iter().collect::<Vec<_>>(), [Ipv4Addr::new(10, 96, 5, 5)]);
    }
}
