//! Load balancing over a Service port's endpoints: power of two choices over peak-EWMA latency
//! weighted by outstanding requests (as Linkerd does), with passive outlier ejection.
//!
//! A [`Balancer`] outlives config snapshots: when endpoints change, the endpoints that stay keep
//! their latency estimate, ejection state and connection pool. Picking an endpoint reads an
//! atomically swapped endpoint list and a few atomics; it takes no lock.

mod endpoint;
mod registry;

pub use endpoint::{Endpoint, EndpointMeta, Outcome, RequestGuard};
pub use registry::BalancerRegistry;

use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// When an endpoint is taken out of rotation, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive failures (5xx answers or connect errors) that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection time; each further ejection of the same endpoint doubles it, up to
    /// `max_ejection`. A success resets the count.
    pub base_ejection: Duration,
    /// Upper bound of an ejection.
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self { consecutive_failures: 5, base_ejection: Duration::from_secs(5), max_ejection: Duration::from_secs(300) }
    }
}

pub(crate) use crate::core::clock::{ms_at, now_ms};

/// The endpoints of one Service port and the policy that picks among them.
#[derive(Debug)]
pub struct Balancer {
    /// Label for logs and metrics: `namespace/name:port`.
    pub label: Arc<str>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    policy: OutlierPolicy,
    tunnels: Arc<crate::transport::tunnel::Tunnels>,
}

impl Balancer {
    /// An empty balancer; its endpoints on other nodes are reached with `tunnels`.
    pub fn new(
        label: impl Into<Arc<str>>,
        policy: OutlierPolicy,
        tunnels: Arc<crate::transport::tunnel::Tunnels>,
    ) -> Self {
        Self { label: label.into(), endpoints: ArcSwap::from_pointee(Vec::new()), policy, tunnels }
    }

    /// The outlier policy.
    pub fn policy(&self) -> &OutlierPolicy {
        &self.policy
    }

    /// Replaces the endpoint set. Endpoints whose address stays keep their state.
    pub fn update(&self, endpoints: Vec<EndpointMeta>) {
        let current = self.endpoints.load();
        let mean = if current.is_empty() {
            None
        } else {
            Some(current.iter().map(|e| e.estimate()).sum::<Duration>() / current.len() as u32)
        };
        let next: Vec<Arc<Endpoint>> = endpoints
            .into_iter()
            .map(|meta| match current.iter().find(|e| e.addr == meta.addr) {
                Some(existing) if existing.meta() == &meta => existing.clone(),
                Some(existing) => Arc::new(existing.with_meta(meta)),
                None => Arc::new(match mean {
                    Some(estimate) => Endpoint::with_estimate(meta, estimate, self.tunnels.clone()),
                    None => Endpoint::new(meta, self.tunnels.clone()),
                }),
            })
            .collect();
        self.endpoints.store(Arc::new(next));
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Like [`Balancer::pick`], but avoiding endpoints this request already tried (retries go
    /// elsewhere when anywhere else is available).
    pub fn pick_avoiding(&self, tried: &[std::net::SocketAddr]) -> Option<Arc<Endpoint>> {
        let first = self.pick()?;
        if tried.is_empty() || !tried.contains(&first.addr) {
            return Some(first);
        }
        let now = now_ms();
        let endpoints = self.endpoints.load();
        let other = endpoints
            .iter()
            .filter(|e| !tried.contains(&e.addr) && e.available(now))
            .min_by(|x, y| x.cost(now).total_cmp(&y.cost(now)))
            .cloned();
        Some(other.unwrap_or(first))
    }

    /// Picks an endpoint: two at random, the one with the lower expected cost; ejected
    /// endpoints are skipped unless every endpoint is ejected (then trying one beats failing
    /// every request).
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        let now = now_ms();
        match endpoints.len() {
            0 => None,
            1 => Some(endpoints[0].clone()),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (first, second) = (&endpoints[a], &endpoints[b]);
                let cheaper = |x: &Arc<Endpoint>, y: &Arc<Endpoint>| {
                    if x.cost(now) <= y.cost(now) {
                        x.clone()
                    } else {
                        y.clone()
                    }
                };
                Some(match (first.available(now), second.available(now)) {
                    (true, true) => cheaper(first, second),
                    (true, false) => first.clone(),
                    (false, true) => second.clone(),
                    (false, false) => endpoints
                        .iter()
                        .filter(|e| e.available(now))
                        .min_by(|x, y| x.cost(now).total_cmp(&y.cost(now)))
                        .unwrap_or_else(|| if first.cost(now) <= second.cost(now) { first } else { second })
                        .clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
