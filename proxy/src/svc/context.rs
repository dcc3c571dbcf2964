//! Loads the config snapshot in force for this request and resolves who is calling what.

use super::{is_grpc, ProxyRequest, ProxyResponse, RequestContext, ResponseFuture, StackService};
use crate::state::ConfigStore;
use crate::svc::errors::ProxyError;
use crate::transport::UpstreamProtocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// What the listener knows about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client dialled (before capture).
    pub original_dst: SocketAddr,
    /// The client's protocol, reused towards the endpoint.
    pub protocol: UpstreamProtocol,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct ResolveContext<S> {
    inner: S,
    store: Arc<ConfigStore>,
    connection: ConnectionInfo,
}

impl<S> ResolveContext<S> {
    /// Wraps `inner` for requests of one connection.
    pub fn new(inner: S, store: Arc<ConfigStore>, connection: ConnectionInfo) -> Self {
        Self { inner, store, connection }
    }
}

impl<S> Service<ProxyRequest> for ResolveContext<S>
where
    S: StackService,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: ProxyRequest) -> ResponseFuture {
        // Fail closed: without config the proxy cannot know which routes and policies apply.
        let Some(state) = self.store.load() else {
            return Box::pin(async { Err(ProxyError::NoConfig) });
        };
        let Some(destination) = state.destination(self.connection.original_dst).cloned() else {
            let backend = self.connection.original_dst.to_string();
            return Box::pin(async move { Err(ProxyError::NoEndpoints { backend }) });
        };
        let source = state.workload(self.connection.peer.ip()).cloned();
        let grpc = is_grpc(&request);
        request.extensions_mut().insert(RequestContext {
            state,
            destination,
            source,
            protocol: self.connection.protocol,
            grpc,
            route: None,
        });
        self.inner.call(request)
    }
}
