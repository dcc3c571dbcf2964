//! The rule's request timeout (Gateway API `timeouts.request`): covers every attempt, until the
//! answer's headers arrive. Streaming bodies after that are not cut.

use super::{route_decision, ProxyRequest, ProxyResponse, ResponseFuture, StackService};
use crate::svc::errors::ProxyError;
use std::task::{Context, Poll};
use tower::Service;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct RequestTimeout<S> {
    inner: S,
}

impl<S> RequestTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<ProxyRequest> for RequestTimeout<S>
where
    S: StackService,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ProxyRequest) -> ResponseFuture {
        let timeout = route_decision(&request).and_then(|d| d.rule.request_timeout);
        let future = self.inner.call(request);
        match timeout {
            None => future,
            Some(after) => Box::pin(async move {
                tokio::time::timeout(after, future)
                    .await
                    .unwrap_or(Err(ProxyError::Timeout { which: "request", after }))
            }),
        }
    }
}
