//! The control-plane wire schema between the Nodus controller and node proxies.
//!
//! The protocol ([`proto`]) is protobuf over a gRPC bidirectional stream. What travels in it is
//! the config model of `nodus-config`, cut into [`Resource`]s (one per Service, workload, route,
//! node) so that a change sends only what changed. Both ends use this crate: the controller
//! cuts a node's view into resources and computes deltas ([`ResourceMapDelta::delta_to`]); the proxy
//! applies pushes to the resources it holds and assembles a snapshot ([`ResourceSet`]).

mod resources;

pub use resources::{assemble, select, split, Delta, ResourceMap, ResourceMapDelta, ResourceSet, WireError};

/// Generated protobuf messages and gRPC client and server for `nodus.mesh.v1`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("nodus.mesh.v1");
}

pub use proto::{ConfigPush, Resource, ResourceKind};
