//! The controllers a real cluster's kube-controller-manager and scheduler run, applied to the API
//! server: ClusterIP allocation, EndpointSlices, ReplicaSets, Deployments, DaemonSets,
//! scheduling, and garbage collection of objects whose owner or namespace is gone.
//!
//! Level-triggered and simple on purpose: reflectors keep every watched kind in memory, and any
//! change (debounced) runs one pass that compares the whole desired state with what the API
//! server holds and writes only the differences. At a local cluster's size (hundreds of
//! objects) a pass costs milliseconds. A failed write is logged and retried by the next pass,
//! which a timer also triggers every [`RESYNC`].

use crate::cluster_ip;
use crate::endpoint_slices::{self, MANAGED_BY, MANAGED_BY_LABEL};
use crate::scheduling::{pick_node, NodeLoad};
use crate::workloads::{self, OwnedPod, RolloutSet, POD_TEMPLATE_HASH_LABEL};
use futures::{stream, FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The field manager of our writes.
pub const FIELD_MANAGER: &str = "nodus-cluster";
/// A pass also runs this often without any change, to retry failed writes.
pub const RESYNC: Duration = Duration::from_secs(5);
const DEBOUNCE: Duration = Duration::from_millis(30);

/// The in-memory view of every kind the controllers read.
#[derive(Clone)]
struct Stores {
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    replica_sets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    daemon_sets: Store<DaemonSet>,
}

fn reflect<K>(client: &Client) -> (Store<K>, stream::BoxStream<'static, ()>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let changes = reflector(writer, watcher(Api::<K>::all(client.clone()), watcher::Config::default()))
        .default_backoff()
        .filter_map(|event| async move {
            if let Err(error) = &event {
                tracing::warn!(%error, kind = %K::kind(&Default::default()), "watch failed; retrying");
            }
            Some(())
        })
        .boxed();
    (reader, changes)
}

/// Runs the controllers until the process ends.
pub async fn run(client: Client) {
    let (namespaces, a) = reflect::<Namespace>(&client);
    let (nodes, b) = reflect::<Node>(&client);
    let (pods, c) = reflect::<Pod>(&client);
    let (services, d) = reflect::<Service>(&client);
    let (slices, e) = reflect::<EndpointSlice>(&client);
    let (replica_sets, f) = reflect::<ReplicaSet>(&client);
    let (deployments, g) = reflect::<Deployment>(&client);
    let (daemon_sets, h) = reflect::<DaemonSet>(&client);
    let stores = Stores { namespaces, nodes, pods, services, slices, replica_sets, deployments, daemon_sets };
    let mut changes = stream::select_all([a, b, c, d, e, f, g, h]);
    let ready = futures::future::join_all([
        stores.namespaces.wait_until_ready().boxed(),
        stores.nodes.wait_until_ready().boxed(),
        stores.pods.wait_until_ready().boxed(),
        stores.services.wait_until_ready().boxed(),
        stores.slices.wait_until_ready().boxed(),
        stores.replica_sets.wait_until_ready().boxed(),
        stores.deployments.wait_until_ready().boxed(),
        stores.daemon_sets.wait_until_ready().boxed(),
    ]);
    // The watches must be polled for the stores to fill.
    tokio::select! {
        _ = ready => {}
        () = async { while changes.next().await.is_some() {} } => return,
    }
    let expectations = std::sync::Mutex::new(Expectations::default());
    loop {
        Pass { client: &client, stores: &stores, expectations: &expectations }.run().await;
        tokio::select! {
            change = changes.next() => if change.is_none() { return },
            () = tokio::time::sleep(RESYNC) => {}
        }
        // Let a burst of changes land before the next pass.
        tokio::time::sleep(DEBOUNCE).await;
        while let Some(Some(())) = changes.next().now_or_never() {}
    }
}

struct Pass<'a> {
    client: &'a Client,
    stores: &'a Stores,
    expectations: &'a std::sync::Mutex<Expectations>,
}

/// How long a create or delete is waited for in the watch before it is taken to have failed.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Pods this process created or deleted that the watch has not shown yet, per owner uid: what
/// kube-controller-manager calls expectations. Without them a pass that runs before the watch
/// delivers its own writes would create (or delete) the same pods again.
#[derive(Default)]
struct Expectations {
    created: HashMap<String, HashMap<String, std::time::Instant>>,
    deleted: HashMap<String, HashMap<String, std::time::Instant>>,
    /// Pods (by uid) bound to a node and not yet seen bound: never bound twice.
    bound: HashMap<String, std::time::Instant>,
    /// ClusterIPs (by Service uid) written and not yet seen: never handed out twice, as the
    /// API server's own allocator guarantees.
    allocated: HashMap<String, (std::net::Ipv4Addr, std::time::Instant)>,
}

impl Expectations {
    /// Forgets what the watch now shows (`seen`: names of the owner's pods in the store) or
    /// what timed out; returns (creations still pending, deletions still pending).
    fn settle(&mut self, owner: &str, seen: &HashSet<String>) -> (usize, HashSet<String>) {
        let created = self.created.entry(owner.to_owned()).or_default();
        created.retain(|name, at| !seen.contains(name) && at.elapsed() < EXPECTATION_TIMEOUT);
        let deleted = self.deleted.entry(owner.to_owned()).or_default();
        deleted.retain(|name, at| seen.contains(name) && at.elapsed() < EXPECTATION_TIMEOUT);
        (created.len(), deleted.keys().cloned().collect())
    }

    fn expect_created(&mut self, owner: &str, name: String) {
        self.created.entry(owner.to_owned()).or_default().insert(name, std::time::Instant::now());
    }

    fn expect_deleted(&mut self, owner: &str, name: String) {
        self.deleted.entry(owner.to_owned()).or_default().insert(name, std::time::Instant::now());
    }
}

/// Whether an object's owner, if it has a controller owner, still exists.
fn owner_gone(object: &impl Resource, live_uids: &HashSet<String>) -> bool {
    object.meta().owner_references.iter().flatten().any(|o| o.controller == Some(true) && !live_uids.contains(&o.uid))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == "Ready" && c.status == "True")
}

fn has_ended(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn controlled_by(object: &impl Resource, uid: &str) -> bool {
    object.meta().owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())])).collect()
}

impl Pass<'_> {
    fn lock_expectations(&self) -> std::sync::MutexGuard<'_, Expectations> {
        self.expectations.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(&self) {
        self.allocate_cluster_ips().await;
        self.collect_garbage().await;
        self.deployments().await;
        self.replica_sets().await;
        self.daemon_sets().await;
        self.schedule().await;
        self.endpoint_slices().await;
    }

    fn warn<T, E: std::fmt::Display>(result: Result<T, E>, what: &str, object: &str) {
        if let Err(error) = result {
            tracing::warn!(%error, object, "{what} failed; the next pass retries");
        }
    }

    async fn allocate_cluster_ips(&self) {
        let services = self.stores.services.state();
        let mut used = cluster_ip::used_addresses(services.iter().map(|s| s.as_ref()));
        // Addresses written in an earlier pass that the watch does not show yet stay taken.
        let waiting: HashSet<String> =
            services.iter().filter(|s| cluster_ip::needs_address(s)).filter_map(|s| s.uid()).collect();
        let pending = {
            let mut expectations = self.lock_expectations();
            expectations.allocated.retain(|uid, (_, at)| waiting.contains(uid) && at.elapsed() < EXPECTATION_TIMEOUT);
            expectations.allocated.clone()
        };
        used.extend(pending.values().map(|(address, _)| *address));
        for service in services.iter().filter(|s| cluster_ip::needs_address(s)) {
            let uid = service.uid().unwrap_or_default();
            if pending.contains_key(&uid) {
                continue;
            }
            let Some(address) = cluster_ip::allocate(&used) else {
                tracing::error!(service = %service.name_any(), "the Service range is full");
                return;
            };
            used.insert(address);
            let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace().unwrap_or_default());
            let patch = json!({ "spec": { "clusterIP": address.to_string(), "clusterIPs": [address.to_string()] } });
            let result = api.patch(&service.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
            if result.is_ok() {
                self.lock_expectations().allocated.insert(uid, (address, std::time::Instant::now()));
            }
            Self::warn(result, "allocating a ClusterIP", &service.name_any());
        }
    }

    /// Deletes what a deleted owner or namespace left behind (Kubernetes' garbage collector and
    /// namespace controller).
    async fn collect_garbage(&self) {
        let namespaces: HashSet<String> = self
            .stores
            .namespaces
            .state()
            .iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .map(|n| n.name_any())
            .collect();
        let mut uids: HashSet<String> = HashSet::new();
        uids.extend(self.stores.services.state().iter().filter_map(|o| o.uid()));
        uids.extend(self.stores.replica_sets.state().iter().filter_map(|o| o.uid()));
        uids.extend(self.stores.deployments.state().iter().filter_map(|o| o.uid()));
        uids.extend(self.stores.daemon_sets.state().iter().filter_map(|o| o.uid()));
        let orphan = |meta_ns: Option<String>, gone: bool| gone || meta_ns.is_some_and(|ns| !namespaces.contains(&ns));
        for pod in self.stores.pods.state() {
            if pod.metadata.deletion_timestamp.is_none() && orphan(pod.namespace(), owner_gone(pod.as_ref(), &uids)) {
                self.delete::<Pod>(&pod).await;
            }
        }
        for rs in self.stores.replica_sets.state() {
            if orphan(rs.namespace(), owner_gone(rs.as_ref(), &uids)) {
                self.delete::<ReplicaSet>(&rs).await;
            }
        }
        for slice in self.stores.slices.state() {
            if orphan(slice.namespace(), owner_gone(slice.as_ref(), &uids)) {
                self.delete::<EndpointSlice>(&slice).await;
            }
        }
        for service in self.stores.services.state() {
            if orphan(service.namespace(), false) {
                self.delete::<Service>(&service).await;
            }
        }
        for deployment in self.stores.deployments.state() {
            if orphan(deployment.namespace(), false) {
                self.delete::<Deployment>(&deployment).await;
            }
        }
        for ds in self.stores.daemon_sets.state() {
            if orphan(ds.namespace(), false) {
                self.delete::<DaemonSet>(&ds).await;
            }
        }
    }

    async fn delete<K>(&self, object: &K)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
        let params = DeleteParams::background();
        match api.delete(&object.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(error) => tracing::warn!(%error, object = %object.name_any(), "delete failed; the next pass retries"),
        }
    }

    async fn deployments(&self) {
        let replica_sets = self.stores.replica_sets.state();
        for deployment in self.stores.deployments.state() {
            let Some(uid) = deployment.uid() else { continue };
            let Some(spec) = deployment.spec.as_ref() else { continue };
            let namespace = deployment.namespace().unwrap_or_default();
            let name = deployment.name_any();
            let hash = workloads::template_hash(&spec.template);
            let new_name = format!("{name}-{hash}");
            let owned: Vec<&Arc<ReplicaSet>> =
                replica_sets.iter().filter(|rs| controlled_by(rs.as_ref(), &uid)).collect();
            let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
            let set_of = |rs: &ReplicaSet| RolloutSet {
                name: rs.name_any(),
                replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                ready: rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
            };
            let Some(new_set) = owned.iter().find(|rs| rs.name_any() == new_name) else {
                let mut template = spec.template.clone();
                let labels =
                    template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
                labels.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
                let mut selector = spec.selector.clone();
                selector
                    .match_labels
                    .get_or_insert_with(Default::default)
                    .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
                let rs = ReplicaSet {
                    metadata: kube::api::ObjectMeta {
                        name: Some(new_name.clone()),
                        namespace: Some(namespace.clone()),
                        labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                        owner_references: Some(vec![workloads::owner(&deployment.metadata, "apps/v1", "Deployment")]),
                        ..Default::default()
                    },
                    spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                        replicas: Some(0),
                        selector,
                        template: Some(template),
                        min_ready_seconds: spec.min_ready_seconds,
                    }),
                    status: None,
                };
                Self::warn(api.create(&PostParams::default(), &rs).await, "creating a ReplicaSet", &new_name);
                continue;
            };
            let old: Vec<RolloutSet> =
                owned.iter().filter(|rs| rs.name_any() != new_name).map(|rs| set_of(rs)).collect();
            let (new_replicas, old_replicas) = workloads::rollout_step(&deployment, &set_of(new_set), &old);
            let mut scale = vec![(new_name.clone(), new_replicas)];
            scale.extend(old_replicas);
            for (rs_name, replicas) in &scale {
                let current =
                    owned.iter().find(|rs| &rs.name_any() == rs_name).and_then(|rs| rs.spec.as_ref()?.replicas);
                if current != Some(*replicas) {
                    let patch = json!({ "spec": { "replicas": replicas } });
                    let result = api.patch(rs_name, &PatchParams::default(), &Patch::Merge(&patch)).await;
                    Self::warn(result, "scaling a ReplicaSet", rs_name);
                }
            }
            let sum = |f: fn(&ReplicaSet) -> i32| owned.iter().map(|rs| f(rs)).sum::<i32>();
            let replicas = sum(|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
            let ready = sum(|rs| rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0));
            let updated = new_set.status.as_ref().map_or(0, |s| s.replicas);
            let desired = spec.replicas.unwrap_or(1);
            let unavailable = (desired - ready).max(0);
            let available = if ready >= desired - workloads::max_unavailable(&deployment) { "True" } else { "False" };
            let complete = updated == desired && replicas == desired && ready == desired;
            let status = json!({ "status": {
                "observedGeneration": deployment.metadata.generation,
                "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready,
                "availableReplicas": ready, "unavailableReplicas": unavailable,
                "conditions": [
                    { "type": "Available", "status": available, "reason": if available == "True" { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" } },
                    { "type": "Progressing", "status": "True", "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                      "message": format!("ReplicaSet \"{new_name}\" {}", if complete { "has successfully progressed." } else { "is progressing." }) },
                ],
            }});
            if deployment
                .status
                .as_ref()
                .map(|s| (s.replicas, s.updated_replicas, s.ready_replicas, s.observed_generation))
                != Some((Some(replicas), Some(updated), Some(ready), deployment.metadata.generation))
            {
                let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
                let result = deployments.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
                Self::warn(result, "writing Deployment status", &name);
            }
        }
    }

    async fn replica_sets(&self) {
        let pods = self.stores.pods.state();
        for rs in self.stores.replica_sets.state() {
            let Some(uid) = rs.uid() else { continue };
            let namespace = rs.namespace().unwrap_or_default();
            let seen: HashSet<String> =
                pods.iter().filter(|p| controlled_by(p.as_ref(), &uid)).map(|p| p.name_any()).collect();
            let (creating, deleting) = self.lock_expectations().settle(&uid, &seen);
            let owned: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| controlled_by(p.as_ref(), &uid) && p.metadata.deletion_timestamp.is_none() && !has_ended(p))
                .filter(|p| !deleting.contains(&p.name_any()))
                .collect();
            let live: Vec<OwnedPod> = owned
                .iter()
                .map(|p| OwnedPod {
                    name: p.name_any(),
                    ready: is_ready(p),
                    scheduled: p.spec.as_ref().is_some_and(|s| s.node_name.is_some()),
                })
                .collect();
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
            // Pods created but not seen yet count as there; deletions are chosen among the seen.
            let change = workloads::replica_change(replicas.saturating_sub(creating), &live);
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            for _ in 0..change.create {
                let pod = workloads::pod_for(&rs, &random_suffix());
                let name = pod.metadata.name.clone().unwrap_or_default();
                match api.create(&PostParams::default(), &pod).await {
                    Ok(_) => self.lock_expectations().expect_created(&uid, name),
                    Err(error) => Self::warn(Err::<(), _>(error), "creating a pod", &rs.name_any()),
                }
            }
            for name in &change.delete {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => self.lock_expectations().expect_deleted(&uid, name.clone()),
                    Err(error) => Self::warn(Err::<(), _>(error), "deleting a pod", name),
                }
            }
            let ready = live.iter().filter(|p| p.ready).count() as i32;
            let count = live.len() as i32;
            let observed = rs.metadata.generation;
            if rs.status.as_ref().map(|s| (s.replicas, s.ready_replicas, s.observed_generation))
                != Some((count, Some(ready), observed))
            {
                let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
                let status = json!({ "status": { "replicas": count, "readyReplicas": ready, "availableReplicas": ready,
                    "fullyLabeledReplicas": count, "observedGeneration": observed } });
                let result = rs_api.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await;
                Self::warn(result, "writing ReplicaSet status", &rs.name_any());
            }
        }
    }

    async fn daemon_sets(&self) {
        let pods = self.stores.pods.state();
        let nodes = self.stores.nodes.state();
        for ds in self.stores.daemon_sets.state() {
            let Some(uid) = ds.uid() else { continue };
            let namespace = ds.namespace().unwrap_or_default();
            let owned: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| controlled_by(p.as_ref(), &uid) && p.metadata.deletion_timestamp.is_none())
                .collect();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let template = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
            // Expectations per (DaemonSet, node): a pod created for a node and not seen yet.
            let seen: HashSet<String> = owned.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
            self.lock_expectations().settle(&uid, &seen);
            let pending: HashSet<String> =
                self.lock_expectations().created.get(&uid).map(|c| c.keys().cloned().collect()).unwrap_or_default();
            for node in nodes.iter() {
                let node_name = node.name_any();
                if seen.contains(&node_name) || pending.contains(&node_name) {
                    continue;
                }
                let meta = template.metadata.clone().unwrap_or_default();
                let mut spec = template.spec.clone().unwrap_or_default();
                spec.node_name = Some(node_name.clone());
                let pod = Pod {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("{}-{}", ds.name_any(), random_suffix())),
                        namespace: Some(namespace.clone()),
                        labels: meta.labels,
                        annotations: meta.annotations,
                        owner_references: Some(vec![workloads::owner(&ds.metadata, "apps/v1", "DaemonSet")]),
                        ..Default::default()
                    },
                    spec: Some(spec),
                    status: None,
                };
                match api.create(&PostParams::default(), &pod).await {
                    Ok(_) => self.lock_expectations().expect_created(&uid, node_name),
                    Err(error) => Self::warn(Err::<(), _>(error), "creating a DaemonSet pod", &ds.name_any()),
                }
            }
            let ready = owned.iter().filter(|p| is_ready(p)).count() as i32;
            let desired = nodes.len() as i32;
            let status = json!({ "status": { "desiredNumberScheduled": desired, "currentNumberScheduled": owned.len(),
                "numberReady": ready, "numberMisscheduled": 0, "updatedNumberScheduled": owned.len(),
                "numberAvailable": ready, "observedGeneration": ds.metadata.generation } });
            if ds.status.as_ref().map(|s| (s.desired_number_scheduled, s.number_ready)) != Some((desired, ready)) {
                let ds_api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &namespace);
                let result = ds_api.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await;
                Self::warn(result, "writing DaemonSet status", &ds.name_any());
            }
        }
    }

    async fn schedule(&self) {
        let nodes = self.stores.nodes.state();
        let pods = self.stores.pods.state();
        let ready_node = |n: &Node| {
            n.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True")
        };
        let empty = BTreeMap::new();
        let mut load: HashMap<String, usize> = HashMap::new();
        for pod in pods.iter().filter(|p| !has_ended(p)) {
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                *load.entry(node).or_default() += 1;
            }
        }
        self.lock_expectations().bound.retain(|_, at| at.elapsed() < EXPECTATION_TIMEOUT);
        for pod in pods.iter().filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none())) {
            let uid = pod.uid().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() || self.lock_expectations().bound.contains_key(&uid) {
                continue;
            }
            let candidates: Vec<NodeLoad<'_>> = nodes
                .iter()
                .filter(|n| ready_node(n))
                .map(|n| NodeLoad {
                    name: n.metadata.name.as_deref().unwrap_or_default(),
                    labels: n.metadata.labels.as_ref().unwrap_or(&empty),
                    pods: load.get(n.metadata.name.as_deref().unwrap_or_default()).copied().unwrap_or(0),
                })
                .collect();
            let selector = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref());
            let Some(node) = pick_node(&candidates, selector).map(str::to_owned) else {
                tracing::warn!(pod = %pod.name_any(), "no Ready node fits the pod's nodeSelector; it stays Pending");
                continue;
            };
            *load.entry(node.clone()).or_default() += 1;
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = json!({ "spec": { "nodeName": node } });
            match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.lock_expectations().bound.insert(uid, std::time::Instant::now());
                }
                Err(error) => Self::warn(Err::<(), _>(error), "binding a pod", &pod.name_any()),
            }
        }
    }

    async fn endpoint_slices(&self) {
        let pods = self.stores.pods.state();
        let existing = self.stores.slices.state();
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for service in self.stores.services.state() {
            let namespace = service.namespace().unwrap_or_default();
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
            for slice in endpoint_slices::endpoint_slices(&service, pods.iter().map(|p| p.as_ref())) {
                let name = slice.metadata.name.clone().unwrap_or_default();
                wanted.insert((namespace.clone(), name.clone()));
                let current =
                    existing.iter().find(|s| s.namespace().as_deref() == Some(&namespace) && s.name_any() == name);
                let same = current.is_some_and(|c| {
                    c.endpoints == slice.endpoints
                        && c.ports == slice.ports
                        && c.metadata.labels == slice.metadata.labels
                });
                if !same {
                    let mut slice = slice;
                    slice.metadata.managed_fields = None;
                    let value = json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": slice.metadata, "addressType": slice.address_type,
                        "endpoints": slice.endpoints, "ports": slice.ports,
                    });
                    Self::warn(
                        api.patch(&name, &params, &Patch::Apply(&value)).await,
                        "writing an EndpointSlice",
                        &name,
                    );
                }
            }
        }
        for slice in existing.iter() {
            let ours = slice.labels().get(MANAGED_BY_LABEL).is_some_and(|v| v == MANAGED_BY);
            let key = (slice.namespace().unwrap_or_default(), slice.name_any());
            if ours && !wanted.contains(&key) {
                self.delete::<EndpointSlice>(slice).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> HashSet<String> {
        list.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn writes_not_yet_seen_in_the_watch_are_not_made_twice() {
        let mut expectations = Expectations::default();
        expectations.expect_created("rs", "a".into());
        expectations.expect_created("rs", "b".into());
        expectations.expect_deleted("rs", "old".into());
        // The watch shows nothing new yet: two creations and the deletion are still pending.
        let (creating, deleting) = expectations.settle("rs", &names(&["old"]));
        assert_eq!((creating, deleting), (2, names(&["old"])));
        // It shows "a", and "old" is gone.
        let (creating, deleting) = expectations.settle("rs", &names(&["a"]));
        assert_eq!((creating, deleting), (1, names(&[])));
        // Another owner's expectations are its own.
        assert_eq!(expectations.settle("other", &names(&[])).0, 0);
    }
}
