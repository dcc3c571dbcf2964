//! RequestMirror: a copy of each request goes to another backend in the background; its answer
//! is ignored and can never delay or fail the real request.

use super::{route_decision, ProxyRequest, ProxyResponse, RequestContext, ResponseFuture, StackService};
use crate::core::body::buffer_up_to;
use crate::svc::errors::ProxyError;
use http::Request;
use nodus_config::HttpFilter;
use std::task::{Context, Poll};
use tower::Service;

/// Largest request body that is copied to mirrors (larger requests are not mirrored).
pub const MAX_MIRRORED_BODY: usize = 64 * 1024;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Mirror<S> {
    inner: S,
}

impl<S> Mirror<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<ProxyRequest> for Mirror<S>
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
        let mirrors: Vec<_> = route_decision(&request)
            .map(|d| {
                d.rule
                    .filters
                    .iter()
                    .filter_map(|f| match f {
                        HttpFilter::RequestMirror { backend } => Some(backend.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Most rules mirror nothing (an empty Vec allocates nothing): hand the request on without a
        // future of our own.
        if mirrors.is_empty() {
            return self.inner.call(request);
        }
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let context = parts.extensions.get::<RequestContext>().cloned();
            let snapshot = buffer_up_to(body, MAX_MIRRORED_BODY).await.map_err(ProxyError::RequestBody)?;
            let body = match snapshot {
                Ok(snapshot) => {
                    if let Some(context) = context {
                        for backend in mirrors {
                            let Some(balancer) = context.state.balancer(&backend.service, backend.port).cloned() else {
                                continue;
                            };
                            let Some(endpoint) = balancer.pick() else { continue };
                            let mut copy = Request::new(snapshot.body());
                            *copy.method_mut() = parts.method.clone();
                            *copy.uri_mut() = parts.uri.clone();
                            *copy.version_mut() = parts.version;
                            *copy.headers_mut() = parts.headers.clone();
                            let protocol = context.protocol;
                            let source = context.source.as_deref().map(|s| (&s.namespace, &s.service_account));
                            let pool = endpoint.pool_for(source);
                            tokio::spawn(async move {
                                if let Ok(response) = pool.send(copy, protocol).await {
                                    // Read the answer to the end so the connection is reused.
                                    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                                }
                            });
                        }
                    }
                    snapshot.body()
                }
                // Too large to copy: forwarded unmirrored.
                Err(body) => body,
            };
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}
