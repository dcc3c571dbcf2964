//! Picks the rule that handles a request, and reports route labels for metrics.

use super::{ProxyRequest, ProxyResponse, RequestContext, ResponseFuture, RouteDecision, RouteLabelsExt, StackService};
use crate::core::metrics::{unknown_label, RouteLabels};
use crate::svc::errors::ProxyError;
use nodus_policy::routes::{RequestView, RouteKind};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Route<S> {
    inner: S,
}

impl<S> Route<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

fn labels(context: &RequestContext, decision: Option<&RouteDecision>) -> RouteLabels {
    let (src_namespace, src_workload) = match &context.source {
        Some(source) => (source.namespace.clone(), source.workload.clone()),
        None => (unknown_label(), unknown_label()),
    };
    let (route_kind, route_name, route_rule) = match decision {
        Some(d) if d.rule.kind == RouteKind::Default => ("default", Arc::default(), Arc::default()),
        Some(d) => (d.rule.kind.as_str(), d.rule.route_label.clone(), d.rule.rule_label.clone()),
        None => ("none", Arc::default(), Arc::default()),
    };
    RouteLabels {
        direction: "outbound",
        src_namespace,
        src_workload,
        dst_namespace: context.destination.namespace_label.clone(),
        dst_service: context.destination.name_label.clone(),
        dst_workload: Arc::default(),
        tls: "",
        route_kind,
        route_name,
        route_rule,
        backend: Arc::default(),
    }
}

impl<S> Service<ProxyRequest> for Route<S>
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
        // Borrowed, not cloned: the context stays in the request for the inner layers.
        let Some(context) = request.extensions().get::<RequestContext>() else {
            return Box::pin(async { Err(ProxyError::NoConfig) });
        };
        let destination = &context.destination;
        let decision = match &destination.routes {
            Some(port_routes) if !port_routes.is_empty() => {
                let routes = port_routes.for_client(context.source.as_ref().map(|s| &*s.namespace));
                let view = RequestView::of(&request);
                match routes.find(&view, context.grpc) {
                    Some(found) => {
                        RouteDecision { rule: found.rule.clone(), matched_prefix: found.matched_prefix.cloned() }
                    }
                    None => {
                        let error = ProxyError::NoRoute {
                            destination: destination.label.to_string(),
                            method: request.method().to_string(),
                            path: request.uri().path().to_owned(),
                        };
                        let mut response = error.into_response(context.grpc);
                        response.extensions_mut().insert(RouteLabelsExt(labels(context, None)));
                        return Box::pin(async move { Ok(response) });
                    }
                }
            }
            // No route attached: the Service's own endpoints, as the cluster would do.
            _ => RouteDecision { rule: destination.default_rule.clone(), matched_prefix: None },
        };
        let route_labels = labels(context, Some(&decision));
        let grpc = context.grpc;
        tracing::trace!(route = %decision.rule.route, rule = %decision.rule.rule_label, "route chosen");
        if let Some(context) = request.extensions_mut().get_mut::<RequestContext>() {
            context.route = Some(decision);
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = match future.await {
                Ok(response) => response,
                Err(error) => error.into_response(grpc),
            };
            response.extensions_mut().insert(RouteLabelsExt(route_labels));
            Ok(response)
        })
    }
}
