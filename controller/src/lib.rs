//! The Nodus controller: Kubernetes objects in, one validated config per node out.
//!
//! - [`cluster`]: the objects translation reads, filled from an API server or from manifests.
//! - [`translate`]: pure translation to the config model, with route status.
//! - [`manifests`]: standalone mode, a directory of YAML manifests.
//! - [`node_view`]: what each node receives.
//! - [`distribute`]: the gRPC service node proxies subscribe to.
//! - [`kube_io`]: watches and status writes against a real API server.
//! - [`certificates`]: the CA service; [`trust`]: trust-anchor rotation.
//! - [`metrics`]: the controller's own `/metrics`.

pub mod certificates;
pub mod cluster;
pub mod distribute;
pub mod kube_io;
pub mod manifests;
pub mod metrics;
pub mod node_auth;
pub mod node_view;
pub mod reconcile;
pub mod standalone;
pub mod status;
pub mod token_review;
pub mod translate;
pub mod trust;
