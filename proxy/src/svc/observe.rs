//! The outermost layer: turns errors into answers and records every request in metrics when its
//! answer ends.

use super::{is_grpc, BackendLabel, ProxyRequest, ProxyResponse, RouteLabelsExt, StackService};
use crate::core::metrics::{method_label, Metrics, ResponseObserver};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::Service;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    direction: &'static str,
}

impl<S> Observe<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, metrics: Arc<Metrics>, direction: &'static str) -> Self {
        Self { inner, metrics, direction }
    }
}

impl<S> Service<ProxyRequest> for Observe<S>
where
    S: StackService,
{
    type Response = ProxyResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<ProxyResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ProxyRequest) -> Self::Future {
        let started = Instant::now();
        let method = method_label(request.method());
        let grpc = is_grpc(&request);
        let future = self.inner.call(request);
        let metrics = self.metrics.clone();
        let direction = self.direction;
        Box::pin(async move {
            let mut response = match future.await {
                Ok(response) => response,
                Err(error) => {
                    tracing::debug!(%error, "answering with an error");
                    error.into_response(grpc)
                }
            };
            let mut labels = response.extensions_mut().remove::<RouteLabelsExt>().map(|l| l.0).unwrap_or_default();
            labels.direction = direction;
            if let Some(chosen) = response.extensions_mut().remove::<BackendLabel>() {
                labels.backend = chosen.backend;
                labels.dst_workload = chosen.workload.unwrap_or_else(crate::core::metrics::unknown_label);
                labels.tls = chosen.tls;
            }
            let status = response.status().as_u16();
            let observer = ResponseObserver::new(metrics, labels, method, status, response.headers(), started);
            response.body_mut().observe(observer);
            Ok(response)
        })
    }
}
