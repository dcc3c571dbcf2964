//! Fair shares of the node proxy between the pods of a node: one pod that floods the shared
//! proxy must not starve the others (the noisy-neighbour problem a per-node proxy has and a
//! sidecar does not).
//!
//! Each source pod (by IP) gets at most `max_connections` open connections to the outbound
//! listener (more are closed at once) and at most `max_requests` requests in progress; further
//! requests wait for a slot instead of being failed, so a flood costs the proxy a bounded
//! amount of work per source while other sources keep their latency. Both are counted in
//! `nodus_source_limited_total{reason}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-source limits (`--max-connections-per-source`, `--max-requests-per-source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    /// Open outbound connections per source pod.
    pub max_connections: usize,
    /// Requests in progress per source pod (HTTP/1.1 and HTTP/2 together).
    pub max_requests: usize,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self { max_connections: 1024, max_requests: 256 }
    }
}

/// One source's budget.
#[derive(Debug)]
pub struct SourceBudget {
    connections: AtomicUsize,
    requests: Arc<Semaphore>,
}

impl SourceBudget {
    /// Waits for a request slot; the slot is freed when the permit is dropped. Returns whether
    /// the request had to wait.
    pub async fn request_slot(&self) -> (Option<OwnedSemaphorePermit>, bool) {
        match self.requests.clone().try_acquire_owned() {
            Ok(permit) => (Some(permit), false),
            // A closed semaphore never happens (we never close it); proceed without a slot.
            Err(_) => (self.requests.clone().acquire_owned().await.ok(), true),
        }
    }
}

/// The budgets of every source with an open connection.
#[derive(Debug)]
pub struct SourceGate {
    limits: SourceLimits,
    sources: Mutex<HashMap<IpAddr, Arc<SourceBudget>>>,
}

/// An admitted connection; dropping it gives the connection slot back.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<SourceGate>,
    source: IpAddr,
    /// The source's budget, for its requests.
    pub budget: Arc<SourceBudget>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut sources = self.gate.sources.lock().unwrap_or_else(|p| p.into_inner());
        if self.budget.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            sources.remove(&self.source);
        }
    }
}

impl SourceGate {
    /// A gate enforcing `limits`.
    pub fn new(limits: SourceLimits) -> Arc<Self> {
        Arc::new(Self { limits, sources: Mutex::default() })
    }

    /// Admits a new connection from `source`, or None when it already has its maximum open.
    /// The lock is taken once per connection, never per request.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Admitted> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let budget = sources
            .entry(source)
            .or_insert_with(|| {
                Arc::new(SourceBudget {
                    connections: AtomicUsize::new(0),
                    requests: Arc::new(Semaphore::new(self.limits.max_requests.max(1))),
                })
            })
            .clone();
        if budget.connections.load(Ordering::Acquire) >= self.limits.max_connections {
            return None;
        }
        budget.connections.fetch_add(1, Ordering::AcqRel);
        Some(Admitted { gate: self.clone(), source, budget })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn connections_are_capped_per_source_and_freed_on_drop() {
        let gate = SourceGate::new(SourceLimits { max_connections: 2, max_requests: 1 });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "a third connection from the same pod is refused");
        let _other = gate.admit(b).expect("another pod is not affected");
        drop(first);
        assert!(gate.admit(a).is_some(), "a slot freed is usable again");
    }

    #[tokio::test]
    async fn requests_beyond_the_share_wait_instead_of_failing() {
        let gate = SourceGate::new(SourceLimits { max_connections: 10, max_requests: 1 });
        let connection = gate.admit("10.0.0.1".parse().unwrap()).unwrap();
        let (slot, waited) = connection.budget.request_slot().await;
        assert!(slot.is_some() && !waited);
        let budget = connection.budget.clone();
        let second = tokio::spawn(async move { budget.request_slot().await.1 });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second request waits for the first");
        drop(slot);
        assert!(second.await.unwrap(), "then proceeds, having waited");
    }

    #[test]
    fn the_table_forgets_sources_without_connections() {
        let gate = SourceGate::new(SourceLimits::default());
        let connection = gate.admit("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(gate.sources.lock().unwrap().len(), 1);
        drop(connection);
        assert!(gate.sources.lock().unwrap().is_empty());
    }
}
