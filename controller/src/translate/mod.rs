//! Kubernetes objects in, one validated [`ConfigSnapshot`] and the routes' status out.
//!
//! Pure functions of a [`ClusterState`] (and of the routes last accepted, so that an invalid
//! edit of a route leaves its previous version in force): no I/O, so each behaviour is a table
//! test in `tests/translate.rs`.

mod policy;
mod routes;
mod workloads;

use crate::cluster::ClusterState;
use nodus_config::{ConfigSnapshot, GrpcRoute, HttpRoute, ObjectRef};
use std::collections::BTreeMap;

pub use routes::{Condition, ParentRef, ParentStatus, RouteStatus, CONTROLLER_NAME};
pub use workloads::NODE_PROXY_LABEL;

/// The namespace label that enrols a namespace's pods in the mesh.
pub const MESH_LABEL: &str = "nodus.dev/mesh";
/// The value of [`MESH_LABEL`] that enables the mesh.
pub const MESH_ENABLED: &str = "enabled";

/// Settings of translation that do not come from Kubernetes objects.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    /// The port node proxies accept tunnels on (the same on every node).
    pub tunnel_port: u16,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self { tunnel_port: nodus_config::TUNNEL_PORT }
    }
}

/// Which kind of route a status or last-good entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
}

/// A route by kind and namespace/name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// namespace/name.
    pub id: ObjectRef,
}

/// A route version that was valid, kept to stay in force while a later edit is invalid.
#[derive(Clone, Debug, PartialEq)]
pub enum AcceptedRoute {
    /// An HTTPRoute.
    Http {
        /// The `metadata.generation` it was translated from.
        generation: i64,
        /// Its translation.
        route: HttpRoute,
    },
    /// A GRPCRoute.
    Grpc {
        /// The `metadata.generation` it was translated from.
        generation: i64,
        /// Its translation.
        route: GrpcRoute,
    },
}

/// The last accepted version of each route.
pub type LastAccepted = BTreeMap<RouteKey, AcceptedRoute>;

/// The result of one translation.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    /// The whole mesh's config (version 0: the distributor numbers versions).
    pub snapshot: ConfigSnapshot,
    /// Status of every route that has at least one Service parent.
    pub statuses: BTreeMap<RouteKey, RouteStatus>,
    /// What to pass as `last_accepted` next time.
    pub last_accepted: LastAccepted,
}

/// Translates the cluster into one config snapshot and the routes' status.
pub fn translate(state: &ClusterState, options: &TranslateOptions, last_accepted: &LastAccepted) -> Translation {
    let nodes = workloads::nodes(state, options);
    let mut snapshot = ConfigSnapshot {
        version: 0,
        services: workloads::services(state, &nodes),
        workloads: workloads::workloads(state),
        nodes,
        http_routes: Vec::new(),
        grpc_routes: Vec::new(),
        mtls: policy::namespace_mtls(state),
        authorization_policies: policy::authorization_policies(state),
        // The CA's roots are not Kubernetes objects: the distributor adds them.
        trust_roots: Vec::new(),
    };
    let routes = routes::translate_routes(state, &snapshot, last_accepted);
    snapshot.http_routes = routes.http;
    snapshot.grpc_routes = routes.grpc;
    Translation { snapshot, statuses: routes.statuses, last_accepted: routes.last_accepted }
}
