//! The proxy's view of the mesh: a config snapshot compiled for the request path, and the store
//! that swaps it atomically.
//!
//! A [`ProxyState`] is immutable. Requests load the current one with one atomic read and keep it
//! for their whole life, so a config change never affects a request half way, and applying a new
//! snapshot never waits for requests.

use crate::balance::{Balancer, BalancerRegistry, EndpointMeta, OutlierPolicy};
use crate::transport::credentials::TrustRoots;
use arc_swap::ArcSwapOption;
use nodus_config::{reach, AppProtocol, ConfigSnapshot, ObjectRef, Reach, UnplacedEndpoint, ValidationError};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use thiserror::Error;

/// A route rule compiled for this proxy: each backend resolved to its Service port's balancer.
pub type CompiledRule = nodus_policy::routes::CompiledRule<Arc<Balancer>>;
/// A rule's backend, resolved to its balancer.
pub type RuleBackend = nodus_policy::routes::RuleBackend<Arc<Balancer>>;
/// The routes of one Service port, compiled for this proxy.
pub type PortRoutes = nodus_policy::routes::PortRoutes<Arc<Balancer>>;
/// Every route of a snapshot, compiled for this proxy.
pub type RouteTable = nodus_policy::routes::RouteTable<Arc<Balancer>>;

/// A Service port clients dial, as the request path needs it.
#[derive(Debug)]
pub struct Destination {
    /// The Service.
    pub service: ObjectRef,
    /// The Service port.
    pub port: u16,
    /// `namespace/name:port`.
    pub label: Arc<str>,
    /// The Service's namespace, as metrics label it.
    pub namespace_label: Arc<str>,
    /// The Service's name, as metrics label it.
    pub name_label: Arc<str>,
    /// Declared protocol.
    pub protocol: AppProtocol,
    /// Routes attached to this port, if any.
    pub routes: Option<Arc<PortRoutes>>,
    /// The Service port's own endpoints (traffic with no route goes there).
    pub balancer: Arc<Balancer>,
    /// The rule for requests when no route is attached.
    pub default_rule: Arc<CompiledRule>,
}

/// A pod known to the mesh, as labels describe it.
#[derive(Debug, Clone)]
pub struct WorkloadInfo {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Owner (workload) name, never the pod name, for bounded metric cardinality.
    pub workload: Arc<str>,
    /// Service account.
    pub service_account: Arc<str>,
    /// Node.
    pub node: Arc<str>,
    /// Its namespace's MeshPolicy allows it only calls that go over mutual TLS (or to a mesh
    /// pod of its own node): a destination outside the mesh is refused.
    pub mtls_only_outbound: bool,
    /// Whether it is in the mesh (its namespace labelled).
    pub mesh: bool,
    /// Its namespace's MeshPolicy refuses plaintext to it (mode `Strict`).
    pub mtls_strict: bool,
    /// The authorization policies that select it, decided once per config rather than per
    /// stream and request.
    pub policies: Arc<[nodus_config::AuthorizationPolicy]>,
}

/// A pod on another node that backs a Service, as its endpoints describe it. Connections
/// dialled to the pod's own address (not the Service's) cross nodes through that node's proxy,
/// over mutual TLS, as Service traffic does: a strict namespace would refuse them in plaintext.
#[derive(Debug, Clone)]
pub struct RemotePod {
    /// Its node proxy's tunnel address.
    pub tunnel: SocketAddr,
    /// Namespace.
    pub namespace: Option<Arc<str>>,
    /// Service account (its identity).
    pub service_account: Option<Arc<str>>,
}

/// One compiled snapshot.
#[derive(Debug)]
pub struct ProxyState {
    /// The controller's version of the snapshot.
    pub version: u64,
    /// The snapshot as received (for the config dump).
    pub snapshot: Arc<ConfigSnapshot>,
    // Looked up on every request and connection: foldhash rather than std's SipHash (the keys
    // are lookups of addresses, never inserted from traffic, so flooding is no concern).
    destinations: foldhash::HashMap<SocketAddr, Arc<Destination>>,
    workloads: foldhash::HashMap<IpAddr, Arc<WorkloadInfo>>,
    /// The pods of this proxy's node, which its inbound side serves.
    local_pods: foldhash::HashMap<IpAddr, Arc<WorkloadInfo>>,
    remote_pods: foldhash::HashMap<IpAddr, RemotePod>,
    balancers: HashMap<(String, String, u16), Arc<Balancer>>,
    /// All routes.
    pub routes: RouteTable,
    /// The mesh CA roots to trust, if the config carries any.
    pub trust: Option<Arc<TrustRoots>>,
    /// Mesh endpoints left out because their node is not known (never dialled in plaintext).
    pub unplaced: Vec<UnplacedEndpoint>,
    unplaced_pods: foldhash::HashSet<IpAddr>,
}

impl ProxyState {
    /// The Service port behind a cluster IP and port.
    pub fn destination(&self, addr: SocketAddr) -> Option<&Arc<Destination>> {
        self.destinations.get(&addr)
    }

    /// The workload that owns a pod IP.
    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<WorkloadInfo>> {
        self.workloads.get(&ip)
    }

    /// The pod of this proxy's node at `ip`: what tunnels and captured connections may reach.
    pub fn local_pod(&self, ip: IpAddr) -> Option<&Arc<WorkloadInfo>> {
        self.local_pods.get(&ip)
    }

    /// The pods of this proxy's node (a pod with several addresses appears once per address).
    pub fn local_pods(&self) -> impl Iterator<Item = &Arc<WorkloadInfo>> {
        self.local_pods.values()
    }

    /// A pod on another node reached through its node's proxy, by its address.
    pub fn remote_pod(&self, ip: IpAddr) -> Option<&RemotePod> {
        self.remote_pods.get(&ip)
    }

    /// Whether `ip` is a mesh pod on another node whose node is not known: dialled by its
    /// address it must be refused, not reached in plaintext.
    pub fn is_unplaced_pod(&self, ip: IpAddr) -> bool {
        self.unplaced_pods.contains(&ip)
    }

    /// The balancer of a Service port (mirrors resolve their backend here).
    pub fn balancer(&self, service: &ObjectRef, port: u16) -> Option<&Arc<Balancer>> {
        self.balancers.get(&(service.namespace.clone(), service.name.clone(), port))
    }

    /// Compiles a validated snapshot, reusing long-lived balancers from `registry`.
    fn compile(
        snapshot: ConfigSnapshot,
        registry: &BalancerRegistry,
        local_node: Option<&str>,
    ) -> Result<Self, ApplyError> {
        let trust = TrustRoots::from_config(&snapshot.trust_roots).map_err(ApplyError::TrustRoots)?;
        let node_proxies = snapshot.node_proxies();
        let workload_by_pod: HashMap<(&str, &str), &nodus_config::Workload> =
            snapshot.workloads.iter().map(|w| ((w.id.namespace.as_str(), w.id.name.as_str()), w)).collect();
        let mut workloads = foldhash::HashMap::default();
        let mut local_pods = foldhash::HashMap::default();
        for w in &snapshot.workloads {
            let namespace_mtls = snapshot.mtls.iter().find(|m| m.namespace == w.id.namespace);
            let info = Arc::new(WorkloadInfo {
                namespace: Arc::from(w.id.namespace.as_str()),
                workload: Arc::from(w.owner.as_deref().unwrap_or(&w.id.name)),
                service_account: Arc::from(w.service_account.as_str()),
                node: Arc::from(w.node.as_str()),
                mtls_only_outbound: namespace_mtls.is_some_and(|m| m.outbound == nodus_config::MtlsMode::Strict),
                mesh: w.mesh_enabled,
                mtls_strict: namespace_mtls.is_some_and(|m| m.mode == nodus_config::MtlsMode::Strict),
                policies: nodus_policy::authz::selecting(&snapshot.authorization_policies, w).into(),
            });
            let local = local_node == Some(w.node.as_str());
            for ip in &w.ips {
                workloads.insert(*ip, info.clone());
                if local {
                    local_pods.insert(*ip, info.clone());
                }
            }
        }

        let mut balancers = HashMap::new();
        let mut unplaced = Vec::new();
        let mut remote_pods = foldhash::HashMap::default();
        let mut labels = HashSet::new();
        // Endpoint changes are applied only once the whole snapshot has compiled.
        let mut endpoint_updates = Vec::new();
        for service in &snapshot.services {
            // Each ready endpoint's transport, decided once for all the Service's ports.
            let mut reachable = Vec::with_capacity(service.endpoints.len());
            for e in service.endpoints.iter().filter(|e| e.ready) {
                match reach(e, local_node, |node| node_proxies.get(node)) {
                    Reach::Direct { mesh } => reachable.push((e, None, mesh)),
                    Reach::Tunnel(tunnel) => reachable.push((e, Some(tunnel), true)),
                    // Fail closed: never dialled in plaintext, left out like an unready one.
                    Reach::Unplaced(reason) => unplaced.push(UnplacedEndpoint::new(&service.id, e, reason)),
                }
            }
            for port in &service.ports {
                let label = format!("{}:{}", service.id, port.port);
                let balancer = registry.get(&label);
                let endpoints = reachable
                    .iter()
                    .map(|(e, via, mesh)| {
                        let workload =
                            e.workload.as_ref().and_then(|r| workload_by_pod.get(&(&*r.namespace, &*r.name)));
                        EndpointMeta {
                            addr: SocketAddr::new(e.address, port.target_port),
                            namespace: e.workload.as_ref().map(|r| Arc::from(r.namespace.as_str())),
                            workload: workload.map(|w| Arc::from(w.owner.as_deref().unwrap_or(&w.id.name))),
                            node: e.node.as_deref().map(Arc::from),
                            via: *via,
                            mesh: *mesh,
                            service_account: e.service_account.as_deref().map(Arc::from),
                        }
                    })
                    .collect::<Vec<_>>();
                for endpoint in &endpoints {
                    if let Some(tunnel) = endpoint.via {
                        let pod = RemotePod {
                            tunnel,
                            namespace: endpoint.namespace.clone(),
                            service_account: endpoint.service_account.clone(),
                        };
                        remote_pods.insert(endpoint.addr.ip(), pod);
                    }
                }
                endpoint_updates.push((balancer.clone(), endpoints));
                labels.insert(label);
                balancers.insert((service.id.namespace.clone(), service.id.name.clone(), port.port), balancer);
            }
        }
        let resolve = |service: &ObjectRef, port: u16| {
            balancers.get(&(service.namespace.clone(), service.name.clone(), port)).cloned()
        };
        let routes = RouteTable::compile(&snapshot, &resolve).map_err(ApplyError::RoutePattern)?;
        for (balancer, endpoints) in endpoint_updates {
            balancer.update(endpoints);
        }
        registry.retain(&labels);

        let mut destinations = foldhash::HashMap::default();
        for service in &snapshot.services {
            for port in &service.ports {
                let key = (service.id.namespace.clone(), service.id.name.clone(), port.port);
                let Some(balancer) = balancers.get(&key) else { continue };
                let destination = Arc::new(Destination {
                    service: service.id.clone(),
                    port: port.port,
                    label: balancer.label.clone(),
                    namespace_label: Arc::from(service.id.namespace.as_str()),
                    name_label: Arc::from(service.id.name.as_str()),
                    protocol: port.app_protocol,
                    routes: routes.port(&service.id.namespace, &service.id.name, port.port).cloned(),
                    balancer: balancer.clone(),
                    default_rule: Arc::new(CompiledRule::default_for(
                        &service.id,
                        port.port,
                        balancer.clone(),
                        balancer.label.clone(),
                    )),
                });
                for ip in &service.cluster_ips {
                    destinations.insert(SocketAddr::new(*ip, port.port), destination.clone());
                }
            }
        }
        Ok(Self {
            version: snapshot.version,
            snapshot: Arc::new(snapshot),
            destinations,
            workloads,
            local_pods,
            remote_pods,
            balancers,
            routes,
            trust,
            unplaced_pods: unplaced.iter().map(|u| u.address).collect(),
            unplaced,
        })
    }
}

/// Why a snapshot was rejected (the text goes back to the controller as a NACK).
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The snapshot failed validation.
    #[error("invalid config: {0}")]
    Invalid(#[from] ValidationError),
    /// The trust roots are not valid PEM certificates.
    #[error("config does not compile: trust roots: {0}")]
    TrustRoots(#[source] nodus_identity::IdentityError),
    /// A route's regular expression does not compile (validation checks them; this is the
    /// compiler's own word, should the two ever disagree).
    #[error("config does not compile: route pattern: {0}")]
    RoutePattern(#[source] regex::Error),
}

/// Holds the state in force and swaps in new snapshots.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwapOption<ProxyState>,
    registry: BalancerRegistry,
    node: Option<String>,
}

impl ConfigStore {
    /// An empty store: until a snapshot is applied the proxy refuses traffic it would have to
    /// route (fail closed). Its endpoints have a tunnel client of their own (plaintext until
    /// [`crate::transport::tunnel::Tunnels::use_mutual_tls`]).
    pub fn new(policy: OutlierPolicy) -> Self {
        let registry = BalancerRegistry::new(policy, Arc::new(crate::transport::tunnel::Tunnels::new()));
        Self { current: ArcSwapOption::empty(), registry, node: None }
    }

    /// The tunnel client of its endpoints on other nodes.
    pub fn tunnels(&self) -> &Arc<crate::transport::tunnel::Tunnels> {
        self.registry.tunnels()
    }

    /// A store for the proxy of `node`: endpoints on other nodes with a known proxy are reached
    /// through that proxy's tunnel.
    pub fn for_node(policy: OutlierPolicy, node: impl Into<String>) -> Self {
        Self { node: Some(node.into()), ..Self::new(policy) }
    }

    /// The node this proxy serves, if set.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The state in force, if any snapshot was applied.
    pub fn load(&self) -> Option<Arc<ProxyState>> {
        self.current.load_full()
    }

    /// Validates, compiles and installs a snapshot. On error the state in force stays.
    pub fn apply(&self, snapshot: ConfigSnapshot) -> Result<u64, ApplyError> {
        snapshot.validate()?;
        let state = ProxyState::compile(snapshot, &self.registry, self.node.as_deref())?;
        let version = state.version;
        self.current.store(Some(Arc::new(state)));
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// node-1's view: a mesh pod on node-2 (its proxy's address known), a pod outside the mesh
    /// on node-2, a mesh pod on node-3 (a proxy at an unknown address), a mesh pod on node-1, a
    /// pod on node-4 (no proxy there).
    const MIXED: &str = r#"
services:
  - id: { namespace: demo, name: web }
    clusterIps: [10.96.0.10]
    ports: [{ port: 80, targetPort: 8080 }, { port: 9090, targetPort: 9090 }]
    endpoints:
      - { address: 10.244.2.2, node: node-2, serviceAccount: web, workload: { namespace: demo, name: web-0 } }
      - { address: 10.244.2.3, node: node-2, mesh: false, workload: { namespace: plain, name: web-1 } }
      - { address: 10.244.3.2, node: node-3, workload: { namespace: demo, name: web-2 } }
      - { address: 10.244.1.3, node: node-1, workload: { namespace: demo, name: web-3 } }
      - { address: 10.244.4.2, node: node-4, workload: { namespace: demo, name: web-4 } }
nodes:
  - { name: node-1, tunnelAddress: "10.100.0.11:15008" }
  - { name: node-2, tunnelAddress: "10.100.0.12:15008" }
  - { name: node-3 }
"#;

    #[test]
    fn the_pods_of_this_node_are_indexed_with_their_strictness_and_policies() {
        let store = ConfigStore::for_node(OutlierPolicy::default(), "node-1");
        let config = r#"
workloads:
  - { id: { namespace: demo, name: web-0 }, node: node-1, ips: [10.244.1.2, "fd00::2"], serviceAccount: web, labels: { app: web }, meshEnabled: true }
  - { id: { namespace: demo, name: db-0 }, node: node-1, ips: [10.244.1.3], labels: { app: db }, meshEnabled: true }
  - { id: { namespace: demo, name: web-1 }, node: node-2, ips: [10.244.2.2], labels: { app: web }, meshEnabled: true }
  - { id: { namespace: plain, name: job-0 }, node: node-1, ips: [10.244.1.4] }
mtls: [{ namespace: demo, mode: Strict }]
authorizationPolicies:
  - { id: { namespace: demo, name: web-only }, selector: { app: web }, rules: [{ namespaces: [demo] }] }
  - { id: { namespace: plain, name: all }, rules: [{}] }
"#;
        store.apply(serde_norway::from_str(config).unwrap()).unwrap();
        let state = store.load().unwrap();
        let pod = |ip: &str| state.local_pod(ip.parse().unwrap());
        let web = pod("10.244.1.2").expect("a pod of node-1");
        assert!(Arc::ptr_eq(web, pod("fd00::2").unwrap()), "one pod, by each of its addresses");
        assert!(web.mtls_strict && web.mesh);
        assert_eq!(web.policies.iter().map(|p| p.id.name.as_str()).collect::<Vec<_>>(), ["web-only"]);
        let db = pod("10.244.1.3").unwrap();
        assert!(db.mtls_strict && db.policies.is_empty(), "the selector picks web pods only");
        let job = pod("10.244.1.4").unwrap();
        assert!(!job.mtls_strict && !job.mesh);
        assert_eq!(job.policies.len(), 1, "a policy without selector selects its whole namespace");
        assert!(pod("10.244.2.2").is_none(), "a pod of node-2 is not this node's");
        assert!(state.workload("10.244.2.2".parse().unwrap()).is_some(), "though known as a workload");
        assert_eq!(state.local_pods().count(), 4, "three pods, one with two addresses");
    }

    #[test]
    fn endpoints_are_tunnelled_dialled_or_left_out_by_mesh_membership_and_node() {
        let store = ConfigStore::for_node(OutlierPolicy::default(), "node-1");
        store.apply(serde_norway::from_str(MIXED).unwrap()).unwrap();
        let state = store.load().unwrap();
        let destination = state.destination("10.96.0.10:80".parse().unwrap()).unwrap();
        let mut endpoints: Vec<_> = destination
            .balancer
            .endpoints()
            .iter()
            .map(|e| (e.addr.to_string(), e.meta().via.map(|v| v.to_string()), e.meta().mesh))
            .collect();
        endpoints.sort();
        assert_eq!(
            endpoints,
            [
                ("10.244.1.3:8080".to_owned(), None, true),
                ("10.244.2.2:8080".to_owned(), Some("10.100.0.12:15008".to_owned()), true),
                ("10.244.2.3:8080".to_owned(), None, false),
                ("10.244.4.2:8080".to_owned(), None, false),
            ],
            "a pod outside the mesh, or on a node without a proxy, is dialled directly; the mesh pod \
             whose node's proxy has no known address is left out"
        );
        // Reported once per endpoint (not per port); dialled by its address it is refused.
        assert_eq!(state.unplaced.len(), 1, "{:?}", state.unplaced);
        assert_eq!(state.unplaced[0].address.to_string(), "10.244.3.2");
        assert!(state.is_unplaced_pod("10.244.3.2".parse().unwrap()));
        assert!(state.remote_pod("10.244.2.2".parse().unwrap()).is_some());
        assert!(state.remote_pod("10.244.2.3".parse().unwrap()).is_none(), "outside the mesh: no tunnel");
    }
}
