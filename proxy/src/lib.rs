//! The Nodus node proxy.
//!
//! One process per node serves every mesh pod on it. Connections captured by the eBPF redirect
//! arrive on the outbound listener; the proxy recovers the original destination, detects the
//! protocol, and for HTTP/1.1, HTTP/2 and gRPC runs each request through a stack of small tower
//! services (metrics, routing, filters, timeouts, retries, load balancing) configured by an
//! immutable, atomically swapped config snapshot.

//!
//! The modules are layers, each importing only those below it (the composition root, `app`,
//! at the top):
//!
//! ```text
//!  app          the composition root: assembles store, metrics, tunnels, servers, control
//!  control      config client, certificate manager, enrolment (take the store, not the proxy)
//!  servers      outbound, inbound, capture, admin, hand-over, fairness
//!  svc          the request stack's tower layers, the errors they answer with
//!  state        the compiled config snapshot and the store that swaps it
//!  balance      per-Service-port balancers and their endpoints
//!  transport    TCP connect and relay, shared HTTP/2, the endpoint pool, the tunnel client
//!  core         bodies, detection, drain, limits, clock, header rules, metrics
//! ```
//!
//! What the config decides about a request (route matching, filters, retry budgets,
//! authorization) is the `nodus-policy` crate: pure functions that `state` compiles with this
//! proxy's balancers, and that the fuzz targets call without a proxy.
//!
//! `proxy/tests/layering.rs` fails when a `use` points upwards.

pub mod app;
pub mod balance;
pub mod control;
pub mod core;
pub mod servers;
pub mod state;
pub mod svc;
pub mod transport;
