//! The Nodus node proxy.
//!
//! One process per node serves every mesh pod on it. Connections captured by the eBPF redirect
//! arrive on the outbound listener; the proxy recovers the original destination, detects the
//! protocol, and for HTTP/1.1, HTTP/2 and gRPC runs each request through a stack of small tower
//! services (metrics, routing, filters, timeouts, retries, load balancing) configured by an
//! immutable, atomically swapped config snapshot.

pub mod admin;
pub mod app;
pub mod authz;
pub mod balance;
pub mod body;
pub mod clock;
pub mod closing;
pub mod control;
pub mod detect;
pub mod drain;
pub mod enrollment;
pub mod errors;
pub mod fairness;
pub mod handoff;
pub mod headers;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod metrics;
pub mod original_dst;
pub mod outbound;
pub mod request_check;
pub mod response;
pub mod retry_budget;
pub mod rewind;
pub mod routes;
pub mod state;
pub mod svc;
pub mod transport;
pub mod tunnel;
pub mod upstream;
