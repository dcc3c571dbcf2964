//! What the config decides about a request, as pure functions of it: which route rule matches
//! ([`routes`], Gateway API HTTPRoute and GRPCRoute), and whether a caller may reach a pod
//! ([`authz`]). Nothing here does I/O; the fuzz targets call it directly.

pub mod authz;
pub mod routes;
