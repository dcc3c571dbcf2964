//! The Kubernetes edge: watches in, route status out. Everything else is pure.

use crate::cluster::{ClusterObject, ClusterState, ResourceKind};
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

type Change = Result<(ResourceKind, Event<ClusterObject>), watcher::Error>;

fn watch<K>(client: &Client, kind: ResourceKind, wrap: fn(K) -> ClusterObject) -> BoxStream<'static, Change>
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

/// Watches the cluster, reconciles on every change, writes route status. Runs until the
/// watches end (they retry with backoff on errors, so in practice forever).
pub async fn run(client: Client, mut reconciler: Reconciler) {
    let mut changes = select_all(vec![
        watch::<Namespace>(&client, ResourceKind::Namespace, |o| ClusterObject::Namespace(Box::new(o))),
        watch::<Service>(&client, ResourceKind::Service, |o| ClusterObject::Service(Box::new(o))),
        watch::<EndpointSlice>(&client, ResourceKind::EndpointSlice, |o| ClusterObject::EndpointSlice(Box::new(o))),
        watch::<Pod>(&client, ResourceKind::Pod, |o| ClusterObject::Pod(Box::new(o))),
        watch::<HttpRoute>(&client, ResourceKind::HttpRoute, |o| ClusterObject::HttpRoute(Box::new(o))),
        watch::<GrpcRoute>(&client, ResourceKind::GrpcRoute, |o| ClusterObject::GrpcRoute(Box::new(o))),
        watch::<ReferenceGrant>(&client, ResourceKind::ReferenceGrant, |o| ClusterObject::ReferenceGrant(Box::new(o))),
        watch::<MeshPolicy>(&client, ResourceKind::MeshPolicy, |o| ClusterObject::MeshPolicy(Box::new(o))),
        watch::<AuthorizationPolicy>(&client, ResourceKind::AuthorizationPolicy, |o| {
            ClusterObject::AuthorizationPolicy(Box::new(o))
        }),
    ]);
    let mut state = ClusterState::default();
    let mut relisting: HashMap<ResourceKind, Vec<ClusterObject>> = HashMap::new();
    let mut synced: BTreeSet<ResourceKind> = BTreeSet::new();
    // Status writes that failed are tried again after a backoff (as kube-runtime's error
    // policy requeues), not only on the next change: a quiet cluster would leave them stale.
    let mut status_backoff = StatusBackoff::default();
    loop {
        let mut dirty = tokio::select! {
            next = changes.next() => match next {
                Some(change) => absorb(change, &mut state, &mut relisting, &mut synced),
                None => break,
            },
            () = status_backoff.due() => true,
        };
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
        if dirty && relisting.is_empty() && synced.len() == ResourceKind::ALL.len() {
            let (_, translation) = reconciler.reconcile(&state);
            let failed = write_statuses(&client, &state, &translation.statuses).await;
            status_backoff.after(failed);
        }
    }
}

/// When to write route statuses again after some failed: 1 s, doubling up to 5 min, reset by
/// a round without failures.
#[derive(Debug, Default)]
struct StatusBackoff {
    delay: Option<Duration>,
}

impl StatusBackoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    /// Records a round of status writes, `failed` of which failed.
    fn after(&mut self, failed: usize) {
        self.delay = match (failed, self.delay) {
            (0, _) => None,
            (_, None) => Some(Self::FIRST),
            (_, Some(delay)) => Some((delay * 2).min(Self::MAX)),
        };
        if let Some(delay) = self.delay {
            tracing::warn!(failed, retry_in_s = delay.as_secs(), "route statuses not written; retrying");
        }
    }

    /// Resolves when a retry is due; never while none is pending.
    async fn due(&self) {
        match self.delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending().await,
        }
    }
}

fn absorb(
    change: Change,
    state: &mut ClusterState,
    relisting: &mut HashMap<ResourceKind, Vec<ClusterObject>>,
    synced: &mut BTreeSet<ResourceKind>,
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
            for object in relisting.remove(&kind).unwrap_or_default() {
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
/// `status.parents` (only; spec and metadata are not ours); returns how many writes failed.
async fn write_statuses(client: &Client, state: &ClusterState, statuses: &BTreeMap<RouteKey, RouteStatus>) -> usize {
    let now = now();
    let mut failed = 0;
    for (id, route) in &state.http_routes {
        let existing: Vec<Value> =
            route.status.iter().flat_map(|s| &s.parents).filter_map(|p| serde_json::to_value(p).ok()).collect();
        let key = RouteKey { kind: RouteKind::Http, id: id.clone() };
        if let Some(parents) = desired_parents(&existing, statuses.get(&key), &now) {
            let api: Api<HttpRoute> = Api::namespaced(client.clone(), &id.namespace);
            failed += usize::from(!patch_status(&api, ResourceKind::HttpRoute, &id.name, parents).await);
        }
    }
    for (id, route) in &state.grpc_routes {
        let existing: Vec<Value> =
            route.status.iter().flat_map(|s| &s.parents).filter_map(|p| serde_json::to_value(p).ok()).collect();
        let key = RouteKey { kind: RouteKind::Grpc, id: id.clone() };
        if let Some(parents) = desired_parents(&existing, statuses.get(&key), &now) {
            let api: Api<GrpcRoute> = Api::namespaced(client.clone(), &id.namespace);
            failed += usize::from(!patch_status(&api, ResourceKind::GrpcRoute, &id.name, parents).await);
        }
    }
    failed
}

/// Applies `status.parents` of one route; whether it was written.
async fn patch_status<K>(api: &Api<K>, kind: ResourceKind, name: &str, parents: Vec<Value>) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind.as_str(),
        "status": { "parents": parents },
    });
    // `status.parents` is an atomic list, so applying it whole (other controllers' entries
    // included, unchanged) is the only way not to drop theirs; force takes the list over.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => {
            tracing::info!(%kind, route = %name, "route status written");
            true
        }
        Err(error) => {
            tracing::warn!(%kind, route = %name, %error, "writing route status failed; retried with backoff");
            false
        }
    }
}

#[cfg(test)]
mod status_backoff_tests {
    use super::*;

    #[test]
    fn failed_status_writes_are_retried_sooner_than_never_and_backed_off() {
        let mut backoff = StatusBackoff::default();
        assert_eq!(backoff.delay, None, "nothing pending at first");
        let mut delays = Vec::new();
        for _ in 0..11 {
            backoff.after(2);
            delays.push(backoff.delay.unwrap().as_secs());
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        backoff.after(0);
        assert_eq!(backoff.delay, None, "a round without failures ends the retries");
        backoff.after(1);
        assert_eq!(backoff.delay, Some(StatusBackoff::FIRST), "and the next failure starts over");
    }
}
