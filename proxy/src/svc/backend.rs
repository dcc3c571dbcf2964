//! The leaf of the stack: chooses a weighted backend of the rule, an endpoint of that backend
//! (P2C), sends the attempt through the endpoint's connection pool under the per-attempt timeout,
//! and feeds the outcome back to the balancer. Upgrades (WebSocket) are relayed byte for byte once
//! the endpoint answers 101.

use super::{BackendLabel, ProxyRequest, ProxyResponse, RequestContext, ResponseFuture, TriedEndpoints};
use crate::balance::Outcome;
use crate::core::headers::strip_hop_by_hop;
use crate::core::metrics::{BackendLabels, Metrics, MtlsRequiredLabels};
use crate::state::RuleBackend;
use crate::svc::errors::ProxyError;
use crate::svc::response::ResponseBody;
use crate::transport::UpstreamError;
use crate::transport::{PeerTransport, UpstreamProtocol};
use http::StatusCode;
use nodus_config::HttpFilter;
use nodus_policy::filters::modify_headers;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Backend {
    /// One shared allocation, so that a request clones one `Arc`, not one per input.
    inputs: Arc<BackendInputs>,
}

#[derive(Debug)]
struct BackendInputs {
    metrics: Arc<Metrics>,
    tunnels: Arc<crate::transport::tunnel::Tunnels>,
}

impl Backend {
    /// The leaf service; `tunnels` say whether callers have mesh identities (mutual TLS).
    pub fn new(metrics: Arc<Metrics>, tunnels: Arc<crate::transport::tunnel::Tunnels>) -> Self {
        Self { inputs: Arc::new(BackendInputs { metrics, tunnels }) }
    }
}

/// Picks a backend by weight; `None` when no backend can take traffic.
pub fn pick_backend(backends: &[RuleBackend], total_weight: u64) -> Option<&RuleBackend> {
    if total_weight == 0 {
        return None;
    }
    let mut ticket = fastrand::u64(..total_weight);
    backends.iter().find(|b| {
        let weight = u64::from(b.reference.weight);
        if ticket < weight {
            true
        } else {
            ticket -= weight;
            false
        }
    })
}

impl Service<ProxyRequest> for Backend {
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: ProxyRequest) -> ResponseFuture {
        let inputs = self.inputs.clone();
        Box::pin(async move {
            let (metrics, tunnels) = (&inputs.metrics, &inputs.tunnels);
            let mut context = request.extensions_mut().remove::<RequestContext>().ok_or(ProxyError::NoConfig)?;
            let decision = context.route.take().ok_or(ProxyError::NoConfig)?;
            let rule = &decision.rule;
            let route = || format!("{} rule {}", rule.route, rule.rule_label);
            let backend = pick_backend(&rule.backends, rule.total_weight)
                .ok_or_else(|| ProxyError::InvalidBackend { route: route() })?;
            let balancer = backend.target.clone().ok_or_else(|| ProxyError::InvalidBackend { route: route() })?;
            for filter in &backend.reference.filters {
                if let HttpFilter::RequestHeaderModifier(modifier) = filter {
                    modify_headers(request.headers_mut(), modifier);
                }
            }
            let upgrade =
                context.protocol == UpstreamProtocol::Http1 && request.headers().contains_key(http::header::UPGRADE);
            strip_hop_by_hop(request.headers_mut(), upgrade);
            let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

            let tried = request.extensions_mut().remove::<TriedEndpoints>();
            let endpoint = match &tried {
                None => balancer.pick(),
                Some(tried) => {
                    let mut tried = tried.0.lock().unwrap_or_else(|p| p.into_inner());
                    let endpoint = balancer.pick_avoiding(&tried);
                    tried.extend(endpoint.as_ref().map(|e| e.addr));
                    endpoint
                }
            }
            .ok_or_else(|| ProxyError::NoEndpoints { backend: backend.label.to_string() })?;
            let guard = endpoint.start();
            // The caller's identity header is the mesh's word, never the application's: removed
            // here; set by the destination proxy after mTLS, or here for a mesh pod on this node,
            // whose caller this proxy captured itself. A pod outside the mesh is never told: no
            // proxy of its own vouches for what reaches it.
            let headers = request.headers_mut();
            crate::core::headers::remove_client_identity(headers);
            let meta = endpoint.meta();
            let caller = context.source.as_deref().filter(|_| meta.mesh && meta.via.is_none());
            if let Some(id) = caller.and_then(|source| tunnels.spiffe_id(&source.namespace, &source.service_account)) {
                if let Ok(value) = http::HeaderValue::from_str(&id.to_string()) {
                    headers.insert(crate::core::headers::CLIENT_IDENTITY_HEADER, value);
                }
            }
            let source = context.source.as_deref().map(|s| (&s.namespace, &s.service_account));
            let pool = endpoint.pool_for(source);
            let transport = PeerTransport::of(meta.via.is_some(), meta.mesh, pool.is_mutual_tls());
            let tls = transport.label();
            let plaintext = transport == PeerTransport::Plaintext;
            if let Some(caller) = context.source.as_deref().filter(|s| plaintext && s.mtls_only_outbound) {
                // Refused before anything is sent; says nothing about the endpoint's health.
                drop(guard);
                let destination = match (&meta.namespace, &meta.workload) {
                    (Some(namespace), Some(workload)) => format!("{namespace}/{workload}"),
                    _ => format!("{}, endpoint {}", backend.label, endpoint.addr),
                };
                let labels = MtlsRequiredLabels {
                    source: format!("{}/{}", caller.namespace, caller.workload),
                    destination: backend.label.to_string(),
                    protocol: "http",
                };
                metrics.mtls_required_refusals.get_or_create(&labels).inc();
                tracing::info!(%destination, source = %labels.source, "call refused: the caller's MeshPolicy requires mTLS");
                return Err(ProxyError::MtlsRequired { namespace: caller.namespace.to_string(), destination });
            }
            let send = pool.send(request, context.protocol);
            // A failure of the client's own body comes back as `RequestBody` (see `From`).
            let result = match rule.backend_timeout {
                Some(after) => match tokio::time::timeout(after, send).await {
                    Ok(sent) => sent.map_err(ProxyError::from),
                    Err(_) => Err(ProxyError::Timeout { which: "backendRequest", after }),
                },
                None => send.await.map_err(ProxyError::from),
            };
            let outcome = match &result {
                Ok(response) if response.status().is_server_error() => Some(Outcome::Failure),
                Ok(_) => Some(Outcome::Success),
                // A policy refusal says nothing about the endpoint's health: never eject for it.
                Err(ProxyError::Upstream(UpstreamError::Denied { .. })) => Some(Outcome::Success),
                // Nor does the client's own failure: not counted either way.
                Err(ProxyError::RequestBody(_)) => None,
                Err(_) => Some(Outcome::Failure),
            };
            match outcome {
                Some(outcome) => {
                    if guard.finish(outcome, balancer.policy()) {
                        metrics.ejections.get_or_create(&BackendLabels { backend: backend.label.to_string() }).inc();
                    }
                }
                None => drop(guard),
            }
            let mut response = result?;
            if let Some(downstream) = downstream_upgrade {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    crate::transport::relay_upgrade(downstream, hyper::upgrade::on(&mut response));
                }
            } else {
                strip_hop_by_hop(response.headers_mut(), false);
            }
            let (parts, body) = response.into_parts();
            let mut response = http::Response::from_parts(parts, ResponseBody::upstream(body));
            response.extensions_mut().insert(BackendLabel {
                backend: backend.label.clone(),
                workload: endpoint.meta().workload.clone(),
                tls,
            });
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodus_config::{BackendRef, ObjectRef};

    fn backend(name: &str, weight: u32) -> RuleBackend {
        RuleBackend {
            reference: BackendRef {
                service: ObjectRef::new("demo", name),
                port: 80,
                weight,
                filters: vec![],
                unresolved: None,
            },
            target: None,
            label: Arc::from(name),
        }
    }

    #[test]
    fn weighted_pick_follows_weights_and_skips_zero() {
        let backends = vec![backend("a", 90), backend("zero", 0), backend("b", 10)];
        let mut counts = std::collections::HashMap::new();
        for _ in 0..10_000 {
            *counts.entry(pick_backend(&backends, 100).unwrap().label.to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("zero"), None);
        let a = counts["a"] as f64 / 10_000.0;
        assert!((0.87..=0.93).contains(&a), "a got {a}");
        assert!(pick_backend(&[backend("z", 0)], 0).is_none());
    }
}
