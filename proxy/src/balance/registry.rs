//! Balancers by Service port, kept across config snapshots so endpoint state survives changes.

use super::{Balancer, OutlierPolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Owns the long-lived balancers. Touched only when a snapshot is compiled, never per request.
#[derive(Debug, Default)]
pub struct BalancerRegistry {
    policy: OutlierPolicy,
    tunnels: Arc<crate::transport::tunnel::Tunnels>,
    balancers: Mutex<HashMap<String, Arc<Balancer>>>,
}

impl BalancerRegistry {
    /// A registry whose balancers eject by `policy` and reach endpoints on other nodes with
    /// `tunnels`.
    pub fn new(policy: OutlierPolicy, tunnels: Arc<crate::transport::tunnel::Tunnels>) -> Self {
        Self { policy, tunnels, balancers: Mutex::default() }
    }

    /// The tunnel client its endpoints use.
    pub fn tunnels(&self) -> &Arc<crate::transport::tunnel::Tunnels> {
        &self.tunnels
    }

    /// The balancer for `label` (`namespace/name:port`), made on first use.
    pub fn get(&self, label: &str) -> Arc<Balancer> {
        let mut balancers = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
        balancers
            .entry(label.to_owned())
            .or_insert_with(|| Arc::new(Balancer::new(label, self.policy, self.tunnels.clone())))
            .clone()
    }

    /// Forgets balancers whose labels are not in `keep` (their endpoints' pools close when the
    /// last in-flight request ends).
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        self.balancers.lock().unwrap_or_else(|p| p.into_inner()).retain(|label, _| keep.contains(label));
    }
}
