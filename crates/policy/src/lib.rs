//! What the mesh config decides about a request, as pure functions of it: which route rule
//! handles it ([`routes`], Gateway API HTTPRoute and GRPCRoute, compiled once per snapshot), how
//! that rule's filters edit it ([`filters`]), how many retries its traffic has earned
//! ([`retry_budget`]), and whether a caller may reach a pod ([`authz`]).
//!
//! Nothing here does I/O, reads a clock or holds a connection: the proxy gives the route table a
//! handle per backend (its load balancers), and the fuzz targets and benchmarks call the same code
//! with none.

pub mod authz;
pub mod filters;
pub mod retry_budget;
pub mod routes;
