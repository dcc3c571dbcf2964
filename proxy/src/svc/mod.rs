//! The request stack: each behaviour is one small tower service, read and tested alone.
//!
//! ```text
//!  observe (metrics, errors → answers)
//!   └ validate (malformed → 400, Host and path in one normal form)
//!      └ context (config snapshot, destination, source workload)
//!         └ route (match → rule)
//!            └ filters (header edits, redirect, rewrite)
//!               └ mirror
//!                  └ request timeout
//!                     └ retry (policy + budget)
//!                        └ backend (weighted pick, balancer, per-attempt timeout, pool)
//! ```
//!
//! Layers pass what they decide to inner layers in the request's [`RequestContext`] extension
//! (with the [`RouteDecision`] in it) and report to outer layers in response extensions ([`RouteLabelsExt`]).

pub mod backend;
pub mod context;
pub mod errors;
pub mod filters;
pub mod mirror;
pub mod observe;
pub mod response;
pub mod retry;
pub mod route;
pub mod timeout;
pub mod validate;

use crate::core::body::ProxyBody;
use crate::state::CompiledRule;
use crate::state::{Destination, ProxyState, WorkloadInfo};
use crate::svc::errors::ProxyError;
use crate::svc::response::ResponseBody;
use crate::transport::UpstreamProtocol;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A request inside the proxy.
pub type ProxyRequest = Request<ProxyBody>;
/// An answer inside the proxy.
pub type ProxyResponse = Response<ResponseBody>;
/// The future of every stack service.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<ProxyResponse, ProxyError>> + Send>>;

/// What every layer of the stack wraps: a cloneable service from proxy requests to answers, with
/// the stack's one future type. Sharing it lets a layer with nothing to do for a request return
/// the inner layer's future as its own, without a future (and an allocation) of its own.
pub trait StackService:
    tower::Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError, Future = ResponseFuture>
    + Clone
    + Send
    + 'static
{
}

impl<S> StackService for S where
    S: tower::Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError, Future = ResponseFuture>
        + Clone
        + Send
        + 'static
{
}

/// What the context layer learned; every inner layer reads it.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The snapshot this request runs under, start to end.
    pub state: Arc<ProxyState>,
    /// The Service port dialled.
    pub destination: Arc<Destination>,
    /// The client workload, if it is in the mesh.
    pub source: Option<Arc<WorkloadInfo>>,
    /// Protocol to the endpoint (the client's).
    pub protocol: UpstreamProtocol,
    /// Whether this is a gRPC call.
    pub grpc: bool,
    /// The route layer's decision (inside the route layer). Kept here rather than as an
    /// extension of its own: one extension per request is one allocation fewer.
    pub route: Option<RouteDecision>,
}

/// The route decision of a request, once the route layer has made it.
pub fn route_decision<B>(request: &Request<B>) -> Option<&RouteDecision> {
    request.extensions().get::<RequestContext>()?.route.as_ref()
}

/// What the router decided.
#[derive(Clone, Debug)]
pub struct RouteDecision {
    /// The rule.
    pub rule: Arc<CompiledRule>,
    /// The matched `PathPrefix`, for `ReplacePrefixMatch`.
    pub matched_prefix: Option<Arc<str>>,
}

/// Endpoints earlier attempts of this request used; the retry layer shares it with the backend
/// layer so that retries go to other endpoints.
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(pub Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>);

/// The backend the backend layer chose and the workload of the endpoint that answered, passed
/// back in response extensions.
#[derive(Clone, Debug)]
pub struct BackendLabel {
    /// Backend `namespace/name:port`.
    pub backend: Arc<str>,
    /// The endpoint's workload, if known.
    pub workload: Option<Arc<str>>,
    /// How it was reached (the `tls` metric label).
    pub tls: &'static str,
}

/// Route labels reported back to the metrics layer in response extensions.
#[derive(Clone, Debug)]
pub struct RouteLabelsExt(pub crate::core::metrics::RouteLabels);

/// Whether a request is a gRPC call.
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    request.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
