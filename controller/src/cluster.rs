//! The Kubernetes objects the controller translates, held by namespace/name.
//!
//! Both inputs fill the same [`ClusterState`]: watches on an API server (`kube_io`) and a
//! directory of manifests (`manifests`). Translation only ever reads a `ClusterState`, so there
//! is one translation code path whatever the source.

use gateway_api::apis::experimental::{grpcroutes::GrpcRoute, httproutes::HttpRoute};
use gateway_api::apis::standard::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use nodus_api::{AuthorizationPolicy, MeshPolicy};
use nodus_config::ObjectRef;
use std::collections::BTreeMap;

/// One object of a kind the controller watches.
#[derive(Clone, Debug)]
pub enum ClusterObject {
    /// A Namespace (carries the mesh label).
    Namespace(Box<Namespace>),
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice (endpoints of a Service).
    EndpointSlice(Box<EndpointSlice>),
    /// A Pod (a workload).
    Pod(Box<Pod>),
    /// A Gateway API HTTPRoute.
    HttpRoute(Box<HttpRoute>),
    /// A Gateway API GRPCRoute.
    GrpcRoute(Box<GrpcRoute>),
    /// A Gateway API ReferenceGrant.
    ReferenceGrant(Box<ReferenceGrant>),
    /// A Nodus MeshPolicy (mTLS mode of a namespace).
    MeshPolicy(Box<MeshPolicy>),
    /// A Nodus AuthorizationPolicy.
    AuthorizationPolicy(Box<AuthorizationPolicy>),
}

impl ClusterObject {
    fn meta(&self) -> &ObjectMeta {
        match self {
            ClusterObject::Namespace(o) => o.meta(),
            ClusterObject::Service(o) => o.meta(),
            ClusterObject::EndpointSlice(o) => o.meta(),
            ClusterObject::Pod(o) => o.meta(),
            ClusterObject::HttpRoute(o) => o.meta(),
            ClusterObject::GrpcRoute(o) => o.meta(),
            ClusterObject::ReferenceGrant(o) => o.meta(),
            ClusterObject::MeshPolicy(o) => o.meta(),
            ClusterObject::AuthorizationPolicy(o) => o.meta(),
        }
    }

    /// `namespace/name` (namespace empty for cluster-scoped kinds).
    pub fn key(&self) -> ObjectRef {
        let meta = self.meta();
        ObjectRef::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
    }

    /// Its kind.
    pub fn kind(&self) -> ResourceKind {
        match self {
            ClusterObject::Namespace(_) => ResourceKind::Namespace,
            ClusterObject::Service(_) => ResourceKind::Service,
            ClusterObject::EndpointSlice(_) => ResourceKind::EndpointSlice,
            ClusterObject::Pod(_) => ResourceKind::Pod,
            ClusterObject::HttpRoute(_) => ResourceKind::HttpRoute,
            ClusterObject::GrpcRoute(_) => ResourceKind::GrpcRoute,
            ClusterObject::ReferenceGrant(_) => ResourceKind::ReferenceGrant,
            ClusterObject::MeshPolicy(_) => ResourceKind::MeshPolicy,
            ClusterObject::AuthorizationPolicy(_) => ResourceKind::AuthorizationPolicy,
        }
    }
}

/// The kinds the controller watches: one value each, so that a kind added to the watch and
/// forgotten elsewhere fails to compile rather than being skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 Pod.
    Pod,
    /// gateway.networking.k8s.io HTTPRoute.
    HttpRoute,
    /// gateway.networking.k8s.io GRPCRoute.
    GrpcRoute,
    /// gateway.networking.k8s.io ReferenceGrant.
    ReferenceGrant,
    /// policy.nodus.dev MeshPolicy.
    MeshPolicy,
    /// policy.nodus.dev AuthorizationPolicy.
    AuthorizationPolicy,
}

impl ResourceKind {
    /// Every kind watched.
    pub const ALL: [ResourceKind; 9] = [
        ResourceKind::Namespace,
        ResourceKind::Service,
        ResourceKind::EndpointSlice,
        ResourceKind::Pod,
        ResourceKind::HttpRoute,
        ResourceKind::GrpcRoute,
        ResourceKind::ReferenceGrant,
        ResourceKind::MeshPolicy,
        ResourceKind::AuthorizationPolicy,
    ];

    /// The kind as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Namespace => "Namespace",
            ResourceKind::Service => "Service",
            ResourceKind::EndpointSlice => "EndpointSlice",
            ResourceKind::Pod => "Pod",
            ResourceKind::HttpRoute => "HTTPRoute",
            ResourceKind::GrpcRoute => "GRPCRoute",
            ResourceKind::ReferenceGrant => "ReferenceGrant",
            ResourceKind::MeshPolicy => "MeshPolicy",
            ResourceKind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every watched object, by kind and namespace/name.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Namespaces by name (the key's namespace is empty).
    pub namespaces: BTreeMap<ObjectRef, Namespace>,
    /// Services.
    pub services: BTreeMap<ObjectRef, Service>,
    /// EndpointSlices.
    pub endpoint_slices: BTreeMap<ObjectRef, EndpointSlice>,
    /// Pods.
    pub pods: BTreeMap<ObjectRef, Pod>,
    /// HTTPRoutes.
    pub http_routes: BTreeMap<ObjectRef, HttpRoute>,
    /// GRPCRoutes.
    pub grpc_routes: BTreeMap<ObjectRef, GrpcRoute>,
    /// ReferenceGrants.
    pub reference_grants: BTreeMap<ObjectRef, ReferenceGrant>,
    /// MeshPolicies.
    pub mesh_policies: BTreeMap<ObjectRef, MeshPolicy>,
    /// AuthorizationPolicies.
    pub authorization_policies: BTreeMap<ObjectRef, AuthorizationPolicy>,
}

impl ClusterState {
    /// Builds a state from a list of objects (later ones replace earlier ones of the same key).
    pub fn from_objects(objects: impl IntoIterator<Item = ClusterObject>) -> Self {
        let mut state = Self::default();
        for object in objects {
            state.apply(object);
        }
        state
    }

    /// Adds or replaces an object.
    pub fn apply(&mut self, object: ClusterObject) {
        let key = object.key();
        match object {
            ClusterObject::Namespace(o) => {
                self.namespaces.insert(key, *o);
            }
            ClusterObject::Service(o) => {
                self.services.insert(key, *o);
            }
            ClusterObject::EndpointSlice(o) => {
                self.endpoint_slices.insert(key, *o);
            }
            ClusterObject::Pod(o) => {
                self.pods.insert(key, *o);
            }
            ClusterObject::HttpRoute(o) => {
                self.http_routes.insert(key, *o);
            }
            ClusterObject::GrpcRoute(o) => {
                self.grpc_routes.insert(key, *o);
            }
            ClusterObject::ReferenceGrant(o) => {
                self.reference_grants.insert(key, *o);
            }
            ClusterObject::MeshPolicy(o) => {
                self.mesh_policies.insert(key, *o);
            }
            ClusterObject::AuthorizationPolicy(o) => {
                self.authorization_policies.insert(key, *o);
            }
        }
    }

    /// Removes an object (by its kind and key).
    pub fn delete(&mut self, object: &ClusterObject) {
        let key = object.key();
        match object {
            ClusterObject::Namespace(_) => drop(self.namespaces.remove(&key)),
            ClusterObject::Service(_) => drop(self.services.remove(&key)),
            ClusterObject::EndpointSlice(_) => drop(self.endpoint_slices.remove(&key)),
            ClusterObject::Pod(_) => drop(self.pods.remove(&key)),
            ClusterObject::HttpRoute(_) => drop(self.http_routes.remove(&key)),
            ClusterObject::GrpcRoute(_) => drop(self.grpc_routes.remove(&key)),
            ClusterObject::ReferenceGrant(_) => drop(self.reference_grants.remove(&key)),
            ClusterObject::MeshPolicy(_) => drop(self.mesh_policies.remove(&key)),
            ClusterObject::AuthorizationPolicy(_) => drop(self.authorization_policies.remove(&key)),
        }
    }

    /// Removes every object of a kind: a watch relisting.
    pub fn clear_kind(&mut self, kind: ResourceKind) {
        match kind {
            ResourceKind::Namespace => self.namespaces.clear(),
            ResourceKind::Service => self.services.clear(),
            ResourceKind::EndpointSlice => self.endpoint_slices.clear(),
            ResourceKind::Pod => self.pods.clear(),
            ResourceKind::HttpRoute => self.http_routes.clear(),
            ResourceKind::GrpcRoute => self.grpc_routes.clear(),
            ResourceKind::ReferenceGrant => self.reference_grants.clear(),
            ResourceKind::MeshPolicy => self.mesh_policies.clear(),
            ResourceKind::AuthorizationPolicy => self.authorization_policies.clear(),
        }
    }

    /// The labels of a namespace, if it is known.
    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(&ObjectRef::new("", namespace)).map(|ns| ns.labels())
    }
}
