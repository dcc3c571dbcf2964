//! The local cluster: what Kubernetes' own controllers and kubelet do, so that plain manifests
//! (Namespaces, Deployments, Services, routes) run through Nodus on one machine, against a real
//! API server (kapi) and with the Nodus controller in Kubernetes mode.
//!
//! The decisions are pure functions with table tests ([`endpoint_slices`], [`cluster_ip`],
//! [`scheduling`], [`workloads`]); the Kubernetes I/O that applies them is at the edge.

pub mod agent;
pub mod cluster_ip;
pub mod controllers;
pub mod crds;
pub mod dns;
pub mod endpoint_slices;
pub mod local;
pub mod prometheus;
pub mod scheduling;
pub mod service_proxy;
pub mod workloads;
