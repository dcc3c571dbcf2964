//! The proxy's side of the control plane: the config stream from the controller, the workload
//! certificates signed by its CA, and the enrolment of this node's pods into the eBPF capture.
//! Each takes the store, the metrics and a notify hook, not the assembled proxy.

pub mod cni;
pub mod config_client;
pub mod enrollment;
pub mod identity;
