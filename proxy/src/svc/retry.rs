//! Retries (GEP-1731): a failed attempt is sent again when its status is one of the rule's
//! retry codes, or when the endpoint could not be reached at all. Each retry must be paid for
//! from the rule's [`RetryBudget`](nodus_policy::retry_budget::RetryBudget), so retries cannot multiply
//! load in an outage. Bodies up to [`MAX_KEPT_BODY`] are buffered to be sent again; larger
//! requests get one attempt.

use super::{
    route_decision, ProxyRequest, ProxyResponse, RequestContext, ResponseFuture, StackService, TriedEndpoints,
};
use crate::core::body::{buffer_up_to, ProxyBody, MAX_KEPT_BODY};
use crate::core::clock::now_ms;
use crate::core::metrics::{Metrics, RetryLabels};
use crate::svc::errors::ProxyError;
use crate::transport::UpstreamError;
use http::Request;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

/// Backoff when the policy names none.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Upper bound of one backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Retry<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

/// Whether an attempt's result may be retried under `codes`.
pub fn is_retryable(result: &Result<ProxyResponse, ProxyError>, codes: &[u16]) -> bool {
    match result {
        Ok(response) => codes.contains(&response.status().as_u16()),
        // Nothing reached the endpoint: always safe to try another.
        Err(ProxyError::Upstream(UpstreamError::Connect { .. } | UpstreamError::Tunnel { .. }))
        | Err(ProxyError::NoEndpoints { .. }) => true,
        Err(ProxyError::Timeout { which: "backendRequest", .. }) => codes.contains(&504),
        Err(ProxyError::Upstream(UpstreamError::Http { .. })) => codes.contains(&502),
        Err(_) => false,
    }
}

fn backoff(base: Duration, retry: u32) -> Duration {
    let exp = base.saturating_mul(1 << retry.min(10)).min(MAX_BACKOFF.max(base));
    // Never sooner than the configured backoff (GEP-1731 makes it a minimum); jitter of up to
    // half again above it avoids synchronised retry waves.
    exp + exp.mul_f64(fastrand::f64() / 2.0)
}

impl<S> Service<ProxyRequest> for Retry<S>
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
        // Without a retry policy (the common case) the request goes straight on.
        let retried = route_decision(&request).and_then(|d| d.rule.retry.clone().map(|p| (d.rule.clone(), p)));
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        let Some((rule, policy)) = retried else {
            return self.inner.call(request);
        };
        if policy.attempts == 0 || upgrade {
            return self.inner.call(request);
        }
        let mut inner = self.inner.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            rule.retry_budget.deposit(now_ms());
            let (parts, body) = request.into_parts();
            let snapshot = match buffer_up_to(body, MAX_KEPT_BODY).await {
                Ok(Ok(snapshot)) => snapshot,
                Ok(Err(body)) => return inner.call(Request::from_parts(parts, body)).await,
                Err(error) => return Err(ProxyError::RequestBody(error)),
            };
            let context = parts.extensions.get::<RequestContext>().cloned();
            let tried = TriedEndpoints::default();
            let attempt_request = |body: ProxyBody| {
                let mut attempt = Request::new(body);
                *attempt.method_mut() = parts.method.clone();
                *attempt.uri_mut() = parts.uri.clone();
                *attempt.version_mut() = parts.version;
                *attempt.headers_mut() = parts.headers.clone();
                if let Some(context) = &context {
                    attempt.extensions_mut().insert(context.clone());
                }
                attempt.extensions_mut().insert(tried.clone());
                attempt
            };
            let labels = |outcome| RetryLabels {
                route_name: rule.route.to_string(),
                route_rule: rule.rule_label.to_string(),
                outcome,
            };
            let base = policy.backoff.map_or(DEFAULT_BACKOFF, |b| b.as_duration());
            let mut retries = 0;
            loop {
                let result = inner.call(attempt_request(snapshot.body())).await;
                if retries >= policy.attempts || !is_retryable(&result, &policy.codes) {
                    return result;
                }
                if !rule.retry_budget.try_withdraw(now_ms()) {
                    metrics.retries.get_or_create(&labels("budget_exhausted")).inc();
                    return result;
                }
                metrics.retries.get_or_create(&labels("sent")).inc();
                tracing::debug!(route = %rule.route, retry = retries + 1, "retrying");
                drop(result);
                tokio::time::sleep(backoff(base, retries)).await;
                retries += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_never_waits_less_than_the_configured_backoff() {
        // GEP-1731: the backoff is a minimum; growth and jitter only add to it.
        for retry in 0..12 {
            for _ in 0..200 {
                let base = Duration::from_millis(100);
                let wait = backoff(base, retry);
                let floor = base.saturating_mul(1 << retry.min(10)).min(MAX_BACKOFF);
                assert!(wait >= floor && wait <= floor.mul_f64(1.5), "retry {retry}: {wait:?}");
            }
        }
        // A configured backoff above the cap is still honoured.
        assert!(backoff(Duration::from_secs(3), 0) >= Duration::from_secs(3));
    }
}
