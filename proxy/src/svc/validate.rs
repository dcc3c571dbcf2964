//! Refuses malformed and ambiguous requests before anything reads them, and puts the rest in
//! the one form routes, policies and the application all see (see [`crate::core::request_check`]).

use super::{ProxyRequest, ProxyResponse, ResponseFuture, StackService};
use crate::svc::errors::ProxyError;
use std::task::{Context, Poll};
use tower::Service;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Validate<S> {
    inner: S,
}

impl<S> Validate<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<ProxyRequest> for Validate<S>
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
        match crate::core::request_check::check(&mut request) {
            Ok(()) => self.inner.call(request),
            Err(malformed) => {
                tracing::debug!(method = %request.method(), target = %request.uri(), %malformed, "malformed request refused");
                Box::pin(async move { Err(ProxyError::Malformed(malformed)) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::body::ProxyBody;
    use crate::svc::response::ResponseBody;

    /// Answers with the target and Host it was given.
    #[derive(Clone)]
    struct Reflect;

    impl Service<ProxyRequest> for Reflect {
        type Response = ProxyResponse;
        type Error = ProxyError;
        type Future = ResponseFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: ProxyRequest) -> ResponseFuture {
            let seen = format!("{} {:?}", request.uri(), request.headers().get("host"));
            Box::pin(async move { Ok(http::Response::new(ResponseBody::local(ProxyBody::from_bytes(seen)))) })
        }
    }

    #[tokio::test]
    async fn the_inner_layer_sees_the_normal_form_and_never_a_malformed_request() {
        use http_body_util::BodyExt;
        let mut layer = Validate::new(Reflect);
        let request = http::Request::get("http://echo/a//../b").body(ProxyBody::Empty).unwrap();
        let response = layer.call(request).await.unwrap();
        let seen = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(seen, "/b Some(\"echo\")");

        let request = http::Request::get("/x/%2F").header("host", "echo").body(ProxyBody::Empty).unwrap();
        let error = layer.call(request).await.unwrap_err();
        assert_eq!(error.status(), 400, "{error}");
    }
}
