//! Cutting a config snapshot into keyed resources, diffing them, and putting them back together.

use crate::proto::{ConfigPush, Resource, ResourceKind};
use nodus_config::{
    AuthorizationPolicy, ConfigSnapshot, GrpcRoute, HttpRoute, NamespaceMtls, NodeInfo, Service, TrustRoot, Workload,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// Why a push could not be turned into a snapshot.
#[derive(Debug, Error)]
pub enum WireError {
    /// A resource's body is not the JSON of its kind.
    #[error("resource {key}: cannot decode body: {source}")]
    Decode {
        /// The resource key.
        key: String,
        /// The decoder's error.
        source: serde_json::Error,
    },
    /// A resource has a kind this proxy does not know (a newer controller).
    #[error("resource {key}: unknown kind {kind}")]
    UnknownKind {
        /// The resource key.
        key: String,
        /// The numeric kind.
        kind: i32,
    },
    /// A resource could not be encoded (a bug: config objects always serialize).
    #[error("cannot encode {key}: {source}")]
    Encode {
        /// The resource key.
        key: String,
        /// The encoder's error.
        source: serde_json::Error,
    },
}

/// Resources by key, in key order (so pushes and hashes are deterministic).
pub type ResourceMap = BTreeMap<String, Resource>;

/// FNV-1a: a stable content hash, identical in every build and process, so versions survive
/// restarts of either end (resume compares them).
fn content_version(body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The key of every object of a snapshot, with its kind and position within its kind.
fn keyed(snapshot: &ConfigSnapshot) -> impl Iterator<Item = (String, u64)> + '_ {
    let keys = |prefix: &'static str, names: Vec<String>| {
        names.into_iter().enumerate().map(move |(order, name)| (format!("{prefix}/{name}"), order as u64))
    };
    keys("service", snapshot.services.iter().map(|s| s.id.to_string()).collect())
        .chain(keys("workload", snapshot.workloads.iter().map(|w| w.id.to_string()).collect()))
        .chain(keys("httproute", snapshot.http_routes.iter().map(|r| r.id.to_string()).collect()))
        .chain(keys("grpcroute", snapshot.grpc_routes.iter().map(|r| r.id.to_string()).collect()))
        .chain(keys("node", snapshot.nodes.iter().map(|n| n.name.clone()).collect()))
        .chain(keys("mtls", snapshot.mtls.iter().map(|m| m.namespace.clone()).collect()))
        .chain(keys("authorizationpolicy", snapshot.authorization_policies.iter().map(|p| p.id.to_string()).collect()))
        // A root is named by its content: the same root keeps its key while its signing flag changes.
        .chain(keys(
            "trustroot",
            snapshot.trust_roots.iter().map(|r| content_version(r.certificate_pem.as_bytes())).collect(),
        ))
}

/// Cuts a snapshot into resources keyed `<kind>/<namespace>/<name>`.
pub fn split(snapshot: &ConfigSnapshot) -> Result<ResourceMap, WireError> {
    let mut keys = keyed(snapshot);
    let mut map = ResourceMap::new();
    let mut next = |kind: ResourceKind, item: &dyn ErasedItem| -> Result<(), WireError> {
        let (key, order) = keys.next().ok_or_else(|| WireError::Encode {
            key: String::new(),
            source: serde::ser::Error::custom("key and object counts differ"),
        })?;
        let body = item.to_json().map_err(|source| WireError::Encode { key: key.clone(), source })?;
        map.insert(key.clone(), Resource { version: content_version(&body), key, kind: kind as i32, body, order });
        Ok(())
    };
    for s in &snapshot.services {
        next(ResourceKind::Service, s)?;
    }
    for w in &snapshot.workloads {
        next(ResourceKind::Workload, w)?;
    }
    for r in &snapshot.http_routes {
        next(ResourceKind::HttpRoute, r)?;
    }
    for r in &snapshot.grpc_routes {
        next(ResourceKind::GrpcRoute, r)?;
    }
    for n in &snapshot.nodes {
        next(ResourceKind::Node, n)?;
    }
    for m in &snapshot.mtls {
        next(ResourceKind::NamespaceMtls, m)?;
    }
    for p in &snapshot.authorization_policies {
        next(ResourceKind::AuthorizationPolicy, p)?;
    }
    for r in &snapshot.trust_roots {
        next(ResourceKind::TrustRoot, r)?;
    }
    Ok(map)
}

/// Serialization without a generic parameter, so one closure encodes every kind.
trait ErasedItem {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
}

impl<T: Serialize> ErasedItem for T {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// The resources of `view` (a subset of the snapshot `all` was split from), taken from `all`
/// instead of encoding them again: the controller encodes each object once per change, not
/// once per node. Positions are those in the whole snapshot, which keeps the relative order.
pub fn select(all: &ResourceMap, view: &ConfigSnapshot) -> ResourceMap {
    keyed(view).filter_map(|(key, _)| all.get(&key).map(|r| (key, r.clone()))).collect()
}

/// A decoded resource body.
#[derive(Debug)]
enum Item {
    Service(Service),
    Workload(Workload),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    Node(NodeInfo),
    NamespaceMtls(NamespaceMtls),
    AuthorizationPolicy(AuthorizationPolicy),
    TrustRoot(TrustRoot),
}

fn decode(r: &Resource) -> Result<Item, WireError> {
    fn json<T: DeserializeOwned>(r: &Resource) -> Result<T, WireError> {
        serde_json::from_slice(&r.body).map_err(|source| WireError::Decode { key: r.key.clone(), source })
    }
    Ok(match ResourceKind::try_from(r.kind) {
        Ok(ResourceKind::Service) => Item::Service(json(r)?),
        Ok(ResourceKind::Workload) => Item::Workload(json(r)?),
        Ok(ResourceKind::HttpRoute) => Item::HttpRoute(json(r)?),
        Ok(ResourceKind::GrpcRoute) => Item::GrpcRoute(json(r)?),
        Ok(ResourceKind::Node) => Item::Node(json(r)?),
        Ok(ResourceKind::NamespaceMtls) => Item::NamespaceMtls(json(r)?),
        Ok(ResourceKind::AuthorizationPolicy) => Item::AuthorizationPolicy(json(r)?),
        Ok(ResourceKind::TrustRoot) => Item::TrustRoot(json(r)?),
        Ok(ResourceKind::Unspecified) | Err(_) => {
            return Err(WireError::UnknownKind { key: r.key.clone(), kind: r.kind })
        }
    })
}

fn in_order<T>(mut items: Vec<(u64, T)>) -> Vec<T> {
    items.sort_by_key(|(order, _)| *order);
    items.into_iter().map(|(_, item)| item).collect()
}

/// A snapshot of `version` from decoded items and their positions.
fn build<'i>(version: u64, items: impl IntoIterator<Item = (u64, &'i Item)>) -> ConfigSnapshot {
    let (mut services, mut workloads, mut http, mut grpc, mut nodes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut mtls, mut policies, mut roots) = (Vec::new(), Vec::new(), Vec::new());
    for (order, item) in items {
        match item {
            Item::Service(s) => services.push((order, s.clone())),
            Item::Workload(w) => workloads.push((order, w.clone())),
            Item::HttpRoute(r) => http.push((order, r.clone())),
            Item::GrpcRoute(r) => grpc.push((order, r.clone())),
            Item::Node(n) => nodes.push((order, n.clone())),
            Item::NamespaceMtls(m) => mtls.push((order, m.clone())),
            Item::AuthorizationPolicy(p) => policies.push((order, p.clone())),
            Item::TrustRoot(r) => roots.push((order, r.clone())),
        }
    }
    ConfigSnapshot {
        version,
        services: in_order(services),
        workloads: in_order(workloads),
        http_routes: in_order(http),
        grpc_routes: in_order(grpc),
        nodes: in_order(nodes),
        mtls: in_order(mtls),
        authorization_policies: in_order(policies),
        trust_roots: in_order(roots),
    }
}

/// Puts resources back together into a snapshot of `version` (not yet validated).
pub fn assemble<'r>(
    version: u64,
    resources: impl IntoIterator<Item = &'r Resource>,
) -> Result<ConfigSnapshot, WireError> {
    let items = resources.into_iter().map(|r| Ok((r.order, decode(r)?))).collect::<Result<Vec<_>, WireError>>()?;
    Ok(build(version, items.iter().map(|(order, item)| (*order, item))))
}

/// What a node must be sent to go from one set of resources to another.
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    /// Resources new or changed (content or order).
    pub updated: Vec<Resource>,
    /// Keys no longer present.
    pub removed: Vec<String>,
}

impl Delta {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

/// Computes deltas between resource views.
impl ResourceMapDelta for ResourceMap {
    fn delta_to(&self, held: &BTreeMap<String, String>) -> Delta {
        let updated = self
            .values()
            .filter(|r| held.get(&r.key).is_none_or(|version| *version != versioned(r)))
            .cloned()
            .collect();
        let removed = held.keys().filter(|key| !self.contains_key(*key)).cloned().collect();
        Delta { updated, removed }
    }

    fn versions(&self) -> BTreeMap<String, String> {
        self.values().map(|r| (r.key.clone(), versioned(r))).collect()
    }
}

/// Versions compared for deltas include the order, so a re-ordered route is re-sent.
fn versioned(r: &Resource) -> String {
    format!("{}.{}", r.version, r.order)
}

/// Delta computation for a node's view.
pub trait ResourceMapDelta {
    /// What to send a proxy that holds `held` (key -> version) so that it holds `self`.
    fn delta_to(&self, held: &BTreeMap<String, String>) -> Delta;
    /// Key -> version of every resource: what a proxy holding this view reports on resume.
    fn versions(&self) -> BTreeMap<String, String>;
}

/// A resource the proxy holds: its version and position, and its body decoded once.
#[derive(Clone, Debug)]
struct Held {
    version: String,
    order: u64,
    item: Arc<Item>,
}

/// The proxy's side: the resources it holds, updated push by push, all or nothing. Bodies are
/// decoded when they arrive, never again: a delta costs what it changes.
#[derive(Debug, Default)]
pub struct ResourceSet {
    held: BTreeMap<String, Held>,
}

impl ResourceSet {
    /// Key -> version of what is held, for a resuming Hello.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.held.iter().map(|(key, h)| (key.clone(), format!("{}.{}", h.version, h.order))).collect()
    }

    /// Applies a push tentatively: returns the snapshot it would produce and the resource set
    /// to keep if the caller accepts that snapshot. `self` is untouched, so a rejected push
    /// leaves the proxy exactly where it was.
    pub fn stage(&self, push: &ConfigPush) -> Result<(ConfigSnapshot, ResourceSet), WireError> {
        let mut next = if push.full { BTreeMap::new() } else { self.held.clone() };
        for key in &push.removed {
            next.remove(key);
        }
        for r in &push.updated {
            let item = Arc::new(decode(r)?);
            next.insert(r.key.clone(), Held { version: r.version.clone(), order: r.order, item });
        }
        let snapshot = build(push.version, next.values().map(|h| (h.order, &*h.item)));
        Ok((snapshot, ResourceSet { held: next }))
    }

    /// Number of resources held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodus_config::{ObjectRef, ServicePort};

    fn service(name: &str, port: u16) -> Service {
        Service {
            id: ObjectRef::new("demo", name),
            cluster_ips: vec![],
            ports: vec![ServicePort { name: None, port, target_port: port, app_protocol: Default::default() }],
            endpoints: vec![],
        }
    }

    fn snapshot(services: Vec<Service>) -> ConfigSnapshot {
        ConfigSnapshot { version: 1, services, ..Default::default() }
    }

    #[test]
    fn split_and_assemble_round_trip() {
        let original = snapshot(vec![service("b", 80), service("a", 81)]);
        let map = split(&original).unwrap();
        assert_eq!(map.len(), 2);
        let back = assemble(1, map.values()).unwrap();
        assert_eq!(back, original, "order within a kind is kept even though keys sort differently");
    }

    #[test]
    fn trust_roots_keep_their_key_when_the_signing_flag_moves() {
        let root = |pem: &str, signing: bool| nodus_config::TrustRoot { certificate_pem: pem.to_string(), signing };
        let mut before = snapshot(vec![]);
        before.trust_roots = vec![root("old", true), root("new", false)];
        let mut after = before.clone();
        after.trust_roots = vec![root("old", false), root("new", true)];
        let (a, b) = (split(&before).unwrap(), split(&after).unwrap());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        assert_eq!(b.delta_to(&a.versions()).updated.len(), 2, "both flags changed");
        assert_eq!(assemble(1, b.values()).unwrap(), after);
    }

    #[test]
    fn select_takes_a_views_resources_from_the_whole() {
        let all = snapshot(vec![service("a", 80), service("b", 80), service("c", 80)]);
        let view = snapshot(vec![service("a", 80), service("c", 80)]);
        let selected = select(&split(&all).unwrap(), &view);
        assert_eq!(selected.keys().collect::<Vec<_>>(), ["service/demo/a", "service/demo/c"]);
        assert_eq!(assemble(1, selected.values()).unwrap(), view);
    }

    #[test]
    fn delta_sends_only_what_changed_and_names_removals() {
        let before = split(&snapshot(vec![service("a", 80), service("b", 80), service("c", 80)])).unwrap();
        let after = split(&snapshot(vec![service("a", 80), service("b", 8080), service("c", 80)])).unwrap();
        assert!(after.delta_to(&after.versions()).is_empty());
        let delta = after.delta_to(&before.versions());
        assert_eq!(delta.updated.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["service/demo/b"]);
        assert!(delta.removed.is_empty());
        let fewer = split(&snapshot(vec![service("a", 80), service("b", 80)])).unwrap();
        let delta = fewer.delta_to(&before.versions());
        assert_eq!(delta.removed, ["service/demo/c"]);
        assert!(delta.updated.is_empty());
    }

    #[test]
    fn staged_pushes_build_snapshots_and_a_bad_push_changes_nothing() {
        let mut set = ResourceSet::default();
        let full = split(&snapshot(vec![service("a", 80), service("b", 80)])).unwrap();
        let push = ConfigPush {
            version: 1,
            nonce: "1".into(),
            full: true,
            updated: full.values().cloned().collect(),
            removed: vec![],
        };
        let (snap, next) = set.stage(&push).unwrap();
        assert_eq!(snap.services.len(), 2);
        set = next;

        let delta = ConfigPush {
            version: 2,
            nonce: "2".into(),
            full: false,
            updated: vec![],
            removed: vec!["service/demo/a".into()],
        };
        let (snap, _) = set.stage(&delta).unwrap();
        assert_eq!(snap.services.iter().map(|s| s.id.name.as_str()).collect::<Vec<_>>(), ["b"]);

        let mut broken = full["service/demo/a"].clone();
        broken.body = b"{not json".to_vec();
        let bad = ConfigPush { version: 3, nonce: "3".into(), full: false, updated: vec![broken], removed: vec![] };
        let error = set.stage(&bad).unwrap_err().to_string();
        assert!(error.contains("service/demo/a"), "{error}");
        assert_eq!(set.len(), 2, "the held set is untouched by a rejected push");
    }
}
