//! The filter layer: applies a rule's Gateway API filters (RequestHeaderModifier,
//! ResponseHeaderModifier, RequestRedirect, URLRewrite) in order. The edits themselves are the
//! pure functions of [`nodus_policy::filters`], tested there.

use super::{route_decision, ProxyRequest, ProxyResponse, RequestContext, ResponseFuture, StackService};
use crate::core::body::ProxyBody;
use crate::svc::errors::ProxyError;
use crate::svc::response::ResponseBody;
use http::{HeaderValue, Response, StatusCode};
use nodus_config::HttpFilter;
use nodus_policy::filters::{modify_headers, redirect_location, rewrite_request};
use std::task::{Context, Poll};
use tower::Service;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Filters<S> {
    inner: S,
}

impl<S> Filters<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<ProxyRequest> for Filters<S>
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
        // Most rules have no filters: hand the request on without a future of our own.
        let Some(decision) = route_decision(&request).filter(|d| !d.rule.filters.is_empty()).cloned() else {
            return self.inner.call(request);
        };
        let service_port = request.extensions().get::<RequestContext>().map_or(80, |c| c.destination.port);
        let prefix = decision.matched_prefix.as_deref();
        for filter in &decision.rule.filters {
            match filter {
                HttpFilter::RequestHeaderModifier(modifier) => modify_headers(request.headers_mut(), modifier),
                HttpFilter::UrlRewrite(rewrite) => rewrite_request(&mut request, rewrite, prefix),
                HttpFilter::RequestRedirect(redirect) => {
                    let location = redirect_location(&request, redirect, prefix, service_port);
                    let mut response = Response::new(ResponseBody::local(ProxyBody::Empty));
                    *response.status_mut() = StatusCode::from_u16(redirect.status_code).unwrap_or(StatusCode::FOUND);
                    if let Ok(value) = HeaderValue::from_str(&location) {
                        response.headers_mut().insert(http::header::LOCATION, value);
                    }
                    return Box::pin(async move { Ok(response) });
                }
                // Response edits happen below; mirrors have their own layer.
                HttpFilter::ResponseHeaderModifier(_) | HttpFilter::RequestMirror { .. } => {}
            }
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            for filter in &decision.rule.filters {
                if let HttpFilter::ResponseHeaderModifier(modifier) = filter {
                    modify_headers(response.headers_mut(), modifier);
                }
            }
            Ok(response)
        })
    }
}
