//! Cluster DNS, as CoreDNS's `kubernetes` plugin answers for a cluster: every pod resolves
//! `<service>.<namespace>.svc.cluster.local` (its ClusterIP, or for a headless Service the
//! addresses of its ready endpoints), `<pod>.<service>.<namespace>.svc.cluster.local` for the
//! pods of headless Services, and `<a-b-c-d>.<namespace>.pod.cluster.local`; short names work
//! through the search path of the resolv.conf each pod gets ([`resolv_conf`]).
//!
//! One server per node, on the node's address, port 53, UDP (the resolver's first try; answers
//! here always fit in a datagram, so TCP is not served). Answers are read from the API server's
//! Services and EndpointSlices as reflectors hold them, so a new Service resolves as soon as the
//! watch delivers it. The DNS wire format is hickory's; the zone logic ([`resolve`]) is ours and
//! pure, with table tests. Names outside `cluster.local` are refused: the lab has no upstream.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The cluster's domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Time to live of answers: short, so that changes show quickly, as CoreDNS's default (5 s).
const TTL: u32 = 5;

/// What the zone says of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name exists; these are its IPv4 addresses (possibly none: a headless Service
    /// without ready endpoints).
    Addresses(Vec<Ipv4Addr>),
    /// The name is in the cluster domain and does not exist.
    NoSuchName,
    /// Not a cluster name.
    NotOurs,
}

/// The resolv.conf of a pod in `namespace` whose node serves DNS at `nameserver`.
pub fn resolv_conf(namespace: &str, nameserver: Ipv4Addr) -> String {
    format!(
        "# Written by the Nodus node agent (docs/local-cluster.md#cluster-dns).\nnameserver {nameserver}\n\
         search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n"
    )
}

/// Answers `name` (any case, with or without the final dot) from `services` and `slices`.
pub fn resolve<'a>(
    name: &str,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
) -> Answer {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(local) = name.strip_suffix(CLUSTER_DOMAIN).and_then(|n| n.strip_suffix('.')) else {
        return if name == CLUSTER_DOMAIN { Answer::Addresses(Vec::new()) } else { Answer::NotOurs };
    };
    let labels: Vec<&str> = local.split('.').collect();
    match labels.as_slice() {
        [ip, _namespace, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(address) => Answer::Addresses(vec![address]),
            Err(_) => Answer::NoSuchName,
        },
        [service, namespace, "svc"] => {
            let Some(found) =
                services.into_iter().find(|s| s.namespace().as_deref() == Some(*namespace) && s.name_any() == *service)
            else {
                return Answer::NoSuchName;
            };
            let cluster_ip = found.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).unwrap_or_default();
            match cluster_ip.parse::<Ipv4Addr>() {
                Ok(address) => Answer::Addresses(vec![address]),
                // Headless: the ready endpoints themselves.
                Err(_) => Answer::Addresses(endpoints(slices, namespace, service, None)),
            }
        }
        [host, service, namespace, "svc"] => match endpoints(slices, namespace, service, Some(host)).as_slice() {
            [] => Answer::NoSuchName,
            found => Answer::Addresses(found.to_vec()),
        },
        // `svc.cluster.local`, `<ns>.svc.cluster.local` and the like: names with nothing below.
        [_, "svc"] | ["svc"] | ["pod"] | [_, "pod"] => Answer::Addresses(Vec::new()),
        _ => Answer::NoSuchName,
    }
}

/// Ready addresses of `namespace/service`'s slices; with `host`, only the endpoint whose
/// hostname or pod is `host`.
fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    namespace: &str,
    service: &str,
    host: Option<&str>,
) -> Vec<Ipv4Addr> {
    let mut found: Vec<Ipv4Addr> = slices
        .into_iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(namespace)
                && s.labels().get(crate::endpoint_slices::SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
        })
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter(|e| {
            host.is_none_or(|host| {
                e.hostname.as_deref() == Some(host)
                    || e.target_ref.as_ref().and_then(|t| t.name.as_deref()) == Some(host)
            })
        })
        .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The reply to one query datagram, or `None` for bytes that are not a DNS query.
pub fn reply(datagram: &[u8], services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Option<Vec<u8>> {
    let request = Message::from_vec(datagram).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    response.queries = request.queries.clone();
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    let name = query.name().to_ascii();
    match resolve(&name, services.iter().map(|s| s.as_ref()), slices.iter().map(|s| s.as_ref())) {
        Answer::Addresses(addresses) => {
            if matches!(query.query_type(), RecordType::A | RecordType::ANY) {
                let owner = Name::from_ascii(&name).ok()?;
                for address in addresses {
                    response.add_answer(Record::from_rdata(owner.clone(), TTL, RData::A(A(address))));
                }
            }
            // Other types of an existing name: no error and no answer (NODATA).
        }
        Answer::NoSuchName => response.metadata.response_code = ResponseCode::NXDomain,
        Answer::NotOurs => response.metadata.response_code = ResponseCode::Refused,
    }
    response.to_vec().ok()
}

/// Serves cluster DNS on every socket of `sockets` (one per node, bound in its namespace)
/// until the process ends.
pub async fn serve(client: kube::Client, sockets: Vec<std::net::UdpSocket>) {
    let (services, writer) = reflector::store::<Service>();
    let watch_services = reflector(writer, watcher(Api::<Service>::all(client.clone()), watcher::Config::default()));
    let (slices, writer) = reflector::store::<EndpointSlice>();
    let watch_slices = reflector(writer, watcher(Api::<EndpointSlice>::all(client), watcher::Config::default()));
    tokio::spawn(async move {
        use futures::StreamExt;
        let mut both = futures::stream::select(
            watch_services.default_backoff().map(|_| ()).boxed(),
            watch_slices.default_backoff().map(|_| ()).boxed(),
        );
        while both.next().await.is_some() {}
    });
    for socket in sockets {
        let (services, slices) = (services.clone(), slices.clone());
        tokio::spawn(async move {
            let Ok(socket) = socket.set_nonblocking(true).and_then(|()| tokio::net::UdpSocket::from_std(socket)) else {
                tracing::error!("cluster DNS: could not register a socket");
                return;
            };
            answer_forever(socket, services, slices).await;
        });
    }
}

async fn answer_forever(socket: tokio::net::UdpSocket, services: Store<Service>, slices: Store<EndpointSlice>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((length, peer)): std::io::Result<(usize, SocketAddr)> = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if let Some(answer) = reply(&buffer[..length], &services.state(), &slices.state()) {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Vec<Service> {
        [
            "metadata: { name: web, namespace: shop }\nspec: { clusterIP: 10.96.0.2 }",
            "metadata: { name: db, namespace: shop }\nspec: { clusterIP: None }",
        ]
        .iter()
        .map(|y| serde_norway::from_str(y).unwrap())
        .collect()
    }

    fn slices() -> Vec<EndpointSlice> {
        vec![serde_norway::from_str(
            "metadata: { name: db-0, namespace: shop, labels: { kubernetes.io/service-name: db } }\n\
             addressType: IPv4\n\
             endpoints:\n\
             - { addresses: [10.244.1.7], conditions: { ready: true }, targetRef: { kind: Pod, name: db-0 } }\n\
             - { addresses: [10.244.2.4], conditions: { ready: true }, hostname: db-1 }\n\
             - { addresses: [10.244.2.9], conditions: { ready: false }, targetRef: { kind: Pod, name: db-2 } }\n",
        )
        .unwrap()]
    }

    #[test]
    fn the_zone_answers_as_cluster_dns_does() {
        let (services, slices) = (services(), slices());
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let cases = [
            ("web.shop.svc.cluster.local", Answer::Addresses(vec![ip("10.96.0.2")])),
            ("WEB.shop.svc.cluster.local.", Answer::Addresses(vec![ip("10.96.0.2")])),
            ("db.shop.svc.cluster.local", Answer::Addresses(vec![ip("10.244.1.7"), ip("10.244.2.4")])),
            ("db-0.db.shop.svc.cluster.local", Answer::Addresses(vec![ip("10.244.1.7")])),
            ("db-1.db.shop.svc.cluster.local", Answer::Addresses(vec![ip("10.244.2.4")])),
            ("db-2.db.shop.svc.cluster.local", Answer::NoSuchName),
            ("10-244-1-7.shop.pod.cluster.local", Answer::Addresses(vec![ip("10.244.1.7")])),
            ("web.other.svc.cluster.local", Answer::NoSuchName),
            ("web.shop.cluster.local", Answer::NoSuchName),
            ("shop.svc.cluster.local", Answer::Addresses(vec![])),
            ("example.com", Answer::NotOurs),
        ];
        for (name, want) in cases {
            assert_eq!(resolve(name, &services, &slices), want, "{name}");
        }
    }

    #[test]
    fn datagrams_get_a_records_nodata_and_nxdomain() {
        let services: Vec<Arc<Service>> = services().into_iter().map(Arc::new).collect();
        let slices: Vec<Arc<EndpointSlice>> = slices().into_iter().map(Arc::new).collect();
        let ask = |name: &str, kind: RecordType| {
            let mut query = Message::query();
            query.metadata.id = 7;
            query.add_query(hickory_proto::op::Query::query(Name::from_ascii(name).unwrap(), kind));
            Message::from_vec(&reply(&query.to_vec().unwrap(), &services, &slices).unwrap()).unwrap()
        };
        let found = ask("web.shop.svc.cluster.local.", RecordType::A);
        assert_eq!((found.metadata.id, found.metadata.response_code), (7, ResponseCode::NoError));
        assert_eq!(found.answers.len(), 1);
        assert_eq!(found.answers[0].data, RData::A(A("10.96.0.2".parse().unwrap())));
        let nodata = ask("web.shop.svc.cluster.local.", RecordType::AAAA);
        assert_eq!((nodata.metadata.response_code, nodata.answers.len()), (ResponseCode::NoError, 0));
        assert_eq!(ask("nope.shop.svc.cluster.local.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ask("example.com.", RecordType::A).metadata.response_code, ResponseCode::Refused);
        assert!(reply(b"not dns", &services, &slices).is_none());
    }
}
