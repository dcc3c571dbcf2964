//! Cutting a config snapshot into keyed resources, diffing them, and putting them back together.

use crate::proto::{ConfigPush, Resource, ResourceKind};
use nodus_config::{ConfigSnapshot, GrpcRoute, HttpRoute, NodeInfo, Service, Workload};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
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

fn resource<T: Serialize>(kind: ResourceKind, key: String, order: u64, item: &T) -> Result<Resource, WireError> {
    let body = serde_json::to_vec(item).map_err(|source| WireError::Encode { key: key.clone(), source })?;
    Ok(Resource { version: content_version(&body), key, kind: kind as i32, body, order })
}

/// Cuts a snapshot into resources keyed `<kind>/<namespace>/<name>`.
pub fn split(snapshot: &ConfigSnapshot) -> Result<ResourceMap, WireError> {
    let mut map = ResourceMap::new();
    let mut insert = |r: Resource| {
        map.insert(r.key.clone(), r);
    };
    for (order, s) in snapshot.services.iter().enumerate() {
        insert(resource(ResourceKind::Service, format!("service/{}", s.id), order as u64, s)?);
    }
    for (order, w) in snapshot.workloads.iter().enumerate() {
        insert(resource(ResourceKind::Workload, format!("workload/{}", w.id), order as u64, w)?);
    }
    for (order, r) in snapshot.http_routes.iter().enumerate() {
        insert(resource(ResourceKind::HttpRoute, format!("httproute/{}", r.id), order as u64, r)?);
    }
    for (order, r) in snapshot.grpc_routes.iter().enumerate() {
        insert(resource(ResourceKind::GrpcRoute, format!("grpcroute/{}", r.id), order as u64, r)?);
    }
    for (order, n) in snapshot.nodes.iter().enumerate() {
        insert(resource(ResourceKind::Node, format!("node/{}", n.name), order as u64, n)?);
    }
    Ok(map)
}

fn decode<T: DeserializeOwned>(r: &Resource) -> Result<(u64, T), WireError> {
    serde_json::from_slice(&r.body)
        .map(|item| (r.order, item))
        .map_err(|source| WireError::Decode { key: r.key.clone(), source })
}

fn in_order<T>(mut items: Vec<(u64, T)>) -> Vec<T> {
    items.sort_by_key(|(order, _)| *order);
    items.into_iter().map(|(_, item)| item).collect()
}

/// Puts resources back together into a snapshot of `version` (not yet validated).
pub fn assemble<'r>(
    version: u64,
    resources: impl IntoIterator<Item = &'r Resource>,
) -> Result<ConfigSnapshot, WireError> {
    let (mut services, mut workloads, mut http, mut grpc, mut nodes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in resources {
        match ResourceKind::try_from(r.kind) {
            Ok(ResourceKind::Service) => services.push(decode::<Service>(r)?),
            Ok(ResourceKind::Workload) => workloads.push(decode::<Workload>(r)?),
            Ok(ResourceKind::HttpRoute) => http.push(decode::<HttpRoute>(r)?),
            Ok(ResourceKind::GrpcRoute) => grpc.push(decode::<GrpcRoute>(r)?),
            Ok(ResourceKind::Node) => nodes.push(decode::<NodeInfo>(r)?),
            Ok(ResourceKind::Unspecified) | Err(_) => {
                return Err(WireError::UnknownKind { key: r.key.clone(), kind: r.kind })
            }
        }
    }
    Ok(ConfigSnapshot {
        version,
        services: in_order(services),
        workloads: in_order(workloads),
        http_routes: in_order(http),
        grpc_routes: in_order(grpc),
        nodes: in_order(nodes),
    })
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

/// The proxy's side: the resources it holds, updated push by push, all or nothing.
#[derive(Debug, Default)]
pub struct ResourceSet {
    held: ResourceMap,
}

impl ResourceSet {
    /// Key -> version of what is held, for a resuming Hello.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.held.versions()
    }

    /// Applies a push tentatively: returns the snapshot it would produce and the resource set
    /// to keep if the caller accepts that snapshot. `self` is untouched, so a rejected push
    /// leaves the proxy exactly where it was.
    pub fn stage(&self, push: &ConfigPush) -> Result<(ConfigSnapshot, ResourceSet), WireError> {
        let mut next = if push.full { ResourceMap::new() } else { self.held.clone() };
        for key in &push.removed {
            next.remove(key);
        }
        for r in &push.updated {
            next.insert(r.key.clone(), r.clone());
        }
        let snapshot = assemble(push.version, next.values())?;
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
