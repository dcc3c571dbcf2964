//! One endpoint: its address, what metrics say about it, and its health as seen by traffic.

use super::{ms_at, now_ms, OutlierPolicy};
use crate::transport::pool::{ConnectionPool, Via};
use crate::transport::tunnel::Tunnels;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Weight of each new answer in the latency average. Per answer rather than per unit of time,
/// so estimates converge within a few requests even when answers take microseconds.
const EWMA_ALPHA: f64 = 0.3;
/// Decay time of an idle endpoint's estimate: one that is not chosen sees its estimate shrink,
/// so a slow endpoint that recovered is probed again (as Finagle's peak EWMA does).
const IDLE_DECAY_TAU: Duration = Duration::from_secs(10);
/// Latencies below this count as equal: on a local network such differences are noise, and
/// spreading load across endpoints matters more than shaving them.
const COST_FLOOR: Duration = Duration::from_millis(1);
/// Estimate of an endpoint that has not answered yet and has no peers to borrow from.
const DEFAULT_RTT: Duration = COST_FLOOR;

/// What the config says about an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Where to connect (pod IP and target port).
    pub addr: SocketAddr,
    /// Namespace of the pod behind it, for metrics.
    pub namespace: Option<Arc<str>>,
    /// Workload (owner) name of the pod behind it, for metrics; never the pod name.
    pub workload: Option<Arc<str>>,
    /// The node the pod runs on.
    pub node: Option<Arc<str>>,
    /// The peer node proxy's tunnel address, when the endpoint is a mesh pod on another node:
    /// requests then travel through that proxy.
    pub via: Option<SocketAddr>,
    /// Whether the pod is in the mesh. One outside it is dialled directly, in plaintext, and is
    /// never told the caller's identity (it has no proxy to vouch for it).
    pub mesh: bool,
    /// The pod's service account (its identity in mutual TLS, with `namespace`).
    pub service_account: Option<Arc<str>>,
}

/// How the endpoint of `meta` is reached when it is on another node.
fn via(meta: &EndpointMeta, tunnels: &Arc<Tunnels>) -> Option<Via> {
    meta.via.map(|peer| Via { peer, tunnels: tunnels.clone() })
}

/// The result of one request, as the balancer learns from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer below 500.
    Success,
    /// A 5xx answer, a connect error or a reset.
    Failure,
}

/// Connection pools by source (namespace, service account).
type PoolsBySource = HashMap<(Arc<str>, Arc<str>), Arc<ConnectionPool>>;

/// An endpoint with its live statistics and connection pool.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    meta: EndpointMeta,
    /// Pooled upstream connections to this endpoint (direct, or plaintext tunnels).
    pub pool: Arc<ConnectionPool>,
    /// Over mutual TLS tunnels, connections per source identity (namespace, service account):
    /// a tunnel proves one identity, so requests of different sources never share one.
    remote_pools: ArcSwap<PoolsBySource>,
    /// This proxy's tunnel client, which the pools of an endpoint on another node use.
    tunnels: Arc<Tunnels>,
    /// Peak-EWMA latency in nanoseconds, as f64 bits.
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated (ms, process clock).
    ewma_at_ms: AtomicU64,
    outstanding: AtomicU32,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
}

impl Endpoint {
    /// A fresh endpoint, assumed as fast as the default estimate; `tunnels` reach it when it
    /// is on another node.
    pub fn new(meta: EndpointMeta, tunnels: Arc<Tunnels>) -> Self {
        Self::with_estimate(meta, DEFAULT_RTT, tunnels)
    }

    /// A fresh endpoint with a starting latency estimate (its peers' mean, so that it is neither
    /// starved nor flooded before its first answer).
    pub fn with_estimate(meta: EndpointMeta, estimate: Duration, tunnels: Arc<Tunnels>) -> Self {
        Self {
            addr: meta.addr,
            pool: Arc::new(ConnectionPool::new(meta.addr, via(&meta, &tunnels))),
            remote_pools: ArcSwap::default(),
            tunnels,
            meta,
            ewma_ns: AtomicU64::new((estimate.as_nanos() as f64).to_bits()),
            ewma_at_ms: AtomicU64::new(now_ms()),
            outstanding: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// The same endpoint (statistics and pool kept) with new metadata.
    pub(crate) fn with_meta(&self, meta: EndpointMeta) -> Self {
        let copy = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        let copy32 = |a: &AtomicU32| AtomicU32::new(a.load(Ordering::Relaxed));
        // A changed route to the endpoint (direct or through a peer) needs fresh connections.
        let same_route = meta.via == self.meta.via && meta.service_account == self.meta.service_account;
        let (pool, remote_pools) = if same_route {
            (self.pool.clone(), ArcSwap::new(self.remote_pools.load_full()))
        } else {
            (Arc::new(ConnectionPool::new(meta.addr, via(&meta, &self.tunnels))), ArcSwap::default())
        };
        Self {
            addr: meta.addr,
            pool,
            remote_pools,
            tunnels: self.tunnels.clone(),
            meta,
            ewma_ns: copy(&self.ewma_ns),
            ewma_at_ms: copy(&self.ewma_at_ms),
            outstanding: AtomicU32::new(0),
            consecutive_failures: copy32(&self.consecutive_failures),
            ejections: copy32(&self.ejections),
            ejected_until_ms: copy(&self.ejected_until_ms),
        }
    }

    /// The pool for a request from `source` (namespace, service account): per source identity
    /// over mutual TLS tunnels, the shared pool otherwise. Lock-free once the pool exists.
    pub fn pool_for(&self, source: Option<(&Arc<str>, &Arc<str>)>) -> Arc<ConnectionPool> {
        let (Some(via), Some((namespace, account)), Some(destination_namespace), Some(destination_account)) =
            (via(&self.meta, &self.tunnels), source, &self.meta.namespace, &self.meta.service_account)
        else {
            return self.pool.clone();
        };
        let key = (namespace.clone(), account.clone());
        if let Some(pool) = self.remote_pools.load().get(&key) {
            return pool.clone();
        }
        let Some(identities) =
            self.tunnels.identities((namespace, account), (destination_namespace, destination_account))
        else {
            return self.pool.clone();
        };
        let created = Arc::new(ConnectionPool::with_identities(self.addr, via, identities));
        self.remote_pools.rcu(|pools| {
            let mut pools = HashMap::clone(pools);
            pools.entry(key.clone()).or_insert_with(|| created.clone());
            pools
        });
        self.remote_pools.load().get(&key).cloned().unwrap_or(created)
    }

    /// What the config says about it.
    pub fn meta(&self) -> &EndpointMeta {
        &self.meta
    }

    /// Whether it is in rotation at `now` (not ejected).
    pub fn available(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) <= now
    }

    /// The latency estimate.
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.ewma_ns.load(Ordering::Relaxed)) as u64)
    }

    /// Expected cost of sending it one more request: latency estimate (decayed by idle time, at
    /// least the floor) × (outstanding + 1), at `now` ([`super::now_ms`], read once by the caller).
    pub fn cost(&self, now: u64) -> f64 {
        let idle_ms = now.saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed)) as f64;
        let decay = (-idle_ms / IDLE_DECAY_TAU.as_millis() as f64).exp();
        let ewma = (f64::from_bits(self.ewma_ns.load(Ordering::Relaxed)) * decay).max(COST_FLOOR.as_nanos() as f64);
        ewma * f64::from(self.outstanding.load(Ordering::Relaxed) + 1)
    }

    /// How many times it has been ejected in a row.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is finished or dropped.
    pub fn start(self: &Arc<Self>) -> RequestGuard {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        RequestGuard { endpoint: self.clone(), started: Instant::now(), done: false }
    }

    fn observe_latency(&self, rtt: Duration, now: u64) {
        let last = self.ewma_at_ms.swap(now, Ordering::Relaxed);
        let idle = (-(now.saturating_sub(last) as f64) / IDLE_DECAY_TAU.as_millis() as f64).exp();
        let previous = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed)) * idle;
        let rtt = rtt.as_nanos() as f64;
        // Peak-sensitive: a slower answer takes effect at once, faster ones blend in.
        let next = if rtt > previous { rtt } else { previous * (1.0 - EWMA_ALPHA) + rtt * EWMA_ALPHA };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Records an outcome; returns true when this failure ejected the endpoint.
    fn record(&self, outcome: Outcome, policy: &OutlierPolicy, now: u64) -> bool {
        match outcome {
            Outcome::Success => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                // Healthy again after a re-admission: the next ejection starts from the base.
                if self.available(now) {
                    self.ejections.store(0, Ordering::Relaxed);
                }
                false
            }
            Outcome::Failure => {
                let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures < policy.consecutive_failures || !self.available(now) {
                    return false;
                }
                self.consecutive_failures.store(0, Ordering::Relaxed);
                let times = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
                let ejection = policy.base_ejection.saturating_mul(1 << times).min(policy.max_ejection);
                self.ejected_until_ms.store(now + ejection.as_millis() as u64, Ordering::Relaxed);
                tracing::info!(endpoint = %self.addr, ?ejection, "endpoint ejected after consecutive failures");
                true
            }
        }
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct RequestGuard {
    endpoint: Arc<Endpoint>,
    started: Instant,
    done: bool,
}

impl RequestGuard {
    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Feeds the outcome and latency back; returns true if the endpoint was ejected now.
    pub fn finish(mut self, outcome: Outcome, policy: &OutlierPolicy) -> bool {
        self.done = true;
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        // One clock read serves the latency and the ejection bookkeeping.
        let ended = Instant::now();
        let now = ms_at(ended);
        if outcome == Outcome::Success {
            self.endpoint.observe_latency(ended.saturating_duration_since(self.started), now);
        }
        self.endpoint.record(outcome, policy, now)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.done {
            self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
