//! The Kubernetes edge: watches in, route status out. Everything else is pure.

use crate::cluster::{ClusterObject, ClusterState};
use crate::reconcile::Reconciler;
use crate::status::desired_parents;
use crate::translate::{RouteKey, RouteKind, RouteStatus};
use futures::stream::{select_all, BoxStream};
use futures::StreamExt;
use gateway_api::apis::experimental::{grpcroutes::GrpcRoute, httproutes::HttpRoute};
use gateway_api::apis::standard::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use nodus_api::{AuthorizationPolicy, MeshPolicy};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// What the controller does with the Kubernetes API across the cluster, as RBAC sees it: (API
/// group, resource, verbs). The Helm chart's ClusterRole grants exactly this and no more
/// (`tests/chart.rs` checks it): watchers list and watch, status is written by server-side
/// apply (`patch`).
pub const CLUSTER_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "namespaces", &["list", "watch"]),
    ("", "services", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("gateway.networking.k8s.io", "httproutes", &["list", "watch"]),
    ("gateway.networking.k8s.io", "grpcroutes", &["list", "watch"]),
    ("gateway.networking.k8s.io", "referencegrants", &["list", "watch"]),
    ("gateway.networking.k8s.io", "httproutes/status", &["patch"]),
    ("gateway.networking.k8s.io", "grpcroutes/status", &["patch"]),
    ("policy.nodus.dev", "meshpolicies", &["list", "watch"]),
    ("policy.nodus.dev", "authorizationpolicies", &["list", "watch"]),
    // Node proxies' service-account tokens are checked by the API server (token_review.rs).
    ("authentication.k8s.io", "tokenreviews", &["create"]),
];

/// In the controller's own namespace: the CA Secret is created once, then read and, during a
/// trust-anchor rotation, updated.
pub const CA_SECRET_ACCESS: &[&str] = &["create", "get", "update"];

/// The field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "nodus-controller";

/// Changes arriving this close together are translated once.
const DEBOUNCE: Duration = Duration::from_millis(50);

type Change = Result<(&'static str, Event<ClusterObject>), watcher::Error>;

fn watch<K>(client: &Client, kind: &'static str, wrap: fn(K) -> ClusterObject) -> BoxStream<'static, Change>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            event.map(|event| {
                let event = match event {
                    Event::Apply(o) => Event::Apply(wrap(o)),
                    Event::Delete(o) => Event::Delete(wrap(o)),
                    Event::Init => Event::Init,
                    Event::InitApply(o) => Event::InitApply(wrap(o)),
                    Event::InitDone => Event::InitDone,
                };
                (kind, event)
            })
        })
        .boxed()
}

const KINDS: [&str; 9] = [
    "Namespace",
    "Service",
    "EndpointSlice",
    "Pod",
    "HTTPRoute",
    "GRPCRoute",
    "ReferenceGrant",
    "MeshPolicy",
    "AuthorizationPolicy",
];

/// Watches the cluster, reconciles on every change, writes route status. Runs until the
/// watches end (they retry with backoff on errors, so in practice forever).
pub async fn run(client: Client, mut reconciler: Reconciler) {
    let mut changes = select_all(vec![
        watch::<Namespace>(&client, "Namespace", |o| ClusterObject::Namespace(Box::new(o))),
        watch::<Service>(&client, "Service", |o| ClusterObject::Service(Box::new(o))),
        watch::<EndpointSlice>(&client, "EndpointSlice", |o| ClusterObject::EndpointSlice(Box::new(o))),
        watch::<Pod>(&client, "Pod", |o| ClusterObject::Pod(Box::new(o))),
        watch::<HttpRoute>(&client, "HTTPRoute", |o| ClusterObject::HttpRoute(Box::new(o))),
        watch::<GrpcRoute>(&client, "GRPCRoute", |o| ClusterObject::GrpcRoute(Box::new(o))),
        watch::<ReferenceGrant>(&client, "ReferenceGrant", |o| ClusterObject::ReferenceGrant(Box::new(o))),
        watch::<MeshPolicy>(&client, "MeshPolicy", |o| ClusterObject::MeshPolicy(Box::new(o))),
        watch::<AuthorizationPolicy>(&client, "AuthorizationPolicy", |o| {
            ClusterObject::AuthorizationPolicy(Box::new(o))
        }),
    ]);
    let mut state = ClusterState::default();
    let mut relisting: HashMap<&'static str, Vec<ClusterObject>> = HashMap::new();
    let mut synced: BTreeSet<&'static str> = BTreeSet::new();
    while let Some(change) = changes.next().await {
        let mut dirty = absorb(change, &mut state, &mut relisting, &mut synced);
        // Coalesce a burst (a relist, a kubectl apply of many objects) into one translation.
        let deadline = tokio::time::sleep(DEBOUNCE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                next = changes.next() => match next {
                    Some(change) => dirty |= absorb(change, &mut state, &mut relisting, &mut synced),
                    None => break,
                },
            }
        }
        // Never translate a partial view: a kind being relisted or not yet listed once would
        // look like deleted objects and withdraw live config.
        if dirty && relisting.is_empty() && synced.len() == KINDS.len() {
            let (_, translation) = reconciler.reconcile(&state);
            write_statuses(&client, &state, &translation.statuses).await;
        }
    }
}

fn absorb(
    change: Change,
    state: &mut ClusterState,
    relisting: &mut HashMap<&'static str, Vec<ClusterObject>>,
    synced: &mut BTreeSet<&'static str>,
) -> bool {
    match change {
        Err(error) => {
            tracing::warn!(%error, "watch error; retrying with backoff, the config in force stays");
            false
        }
        Ok((kind, Event::Init)) => {
            relisting.insert(kind, Vec::new());
            false
        }
        Ok((kind, Event::InitApply(object))) => {
            relisting.entry(kind).or_default().push(object);
            false
        }
        Ok((kind, Event::InitDone)) => {
            state.clear_kind(kind);
            for object in relisting.remove(kind).unwrap_or_default() {
                state.apply(object);
            }
            synced.insert(kind);
            true
        }
        Ok((_, Event::Apply(object))) => {
            state.apply(object);
            true
        }
        Ok((_, Event::Delete(object))) => {
            state.delete(&object);
            true
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Writes the status of every route whose status would change, by server-side apply of
/// `status.parents` (only; spec and metadata are not ours).
async fn write_statuses(client: &Client, state: &ClusterState, statuses: &BTreeMap<RouteKey, RouteStatus>) {
    let now = now();
    for (id, route) in &state.http_routes {
        let existing: Vec<Value> =
            route.status.iter().flat_map(|s| &s.parents).filter_map(|p| serde_json::to_value(p).ok()).collect();
        let key = RouteKey { kind: RouteKind::Http, id: id.clone() };
        if let Some(parents) = desired_parents(&existing, statuses.get(&key), &now) {
            let api: Api<HttpRoute> = Api::namespaced(client.clone(), &id.namespace);
            patch_status(&api, "HTTPRoute", &id.name, parents).await;
        }
    }
    for (id, route) in &state.grpc_routes {
        let existing: Vec<Value> =
            route.status.iter().flat_map(|s| &s.parents).filter_map(|p| serde_json::to_value(p).ok()).collect();
        let key = RouteKey { kind: RouteKind::Grpc, id: id.clone() };
        if let Some(parents) = desired_parents(&existing, statuses.get(&key), &now) {
            let api: Api<GrpcRoute> = Api::namespaced(client.clone(), &id.namespace);
            patch_status(&api, "GRPCRoute", &id.name, parents).await;
        }
    }
}

async fn patch_status<K>(api: &Api<K>, kind: &str, name: &str, parents: Vec<Value>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "status": { "parents": parents },
    });
    // `status.parents` is an atomic list, so applying it whole (other controllers' entries
    // included, unchanged) is the only way not to drop theirs; force takes the list over.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => tracing::info!(%kind, route = %name, "route status written"),
        Err(error) => {
            tracing::warn!(%kind, route = %name, %error, "writing route status failed; retried on the next change")
        }
    }
}
