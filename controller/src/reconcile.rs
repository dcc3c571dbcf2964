//! One step of the control loop, shared by both sources: translate the cluster, publish the
//! config, hand back the statuses for the source to write.

use crate::cluster::ClusterState;
use crate::distribute::Distributor;
use crate::metrics::ControllerMetrics;
use crate::translate::{translate, LastAccepted, TranslateOptions, Translation};
use std::sync::Arc;

/// Translates and publishes; remembers the routes last accepted.
pub struct Reconciler {
    options: TranslateOptions,
    last_accepted: LastAccepted,
    distributor: Distributor,
    metrics: Option<Arc<ControllerMetrics>>,
}

impl Reconciler {
    /// A reconciler publishing to `distributor`.
    pub fn new(options: TranslateOptions, distributor: Distributor) -> Self {
        Self { options, last_accepted: LastAccepted::new(), distributor, metrics: None }
    }

    /// Records every translation in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ControllerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Translates `state`, publishes the result and returns it (with the published version).
    pub fn reconcile(&mut self, state: &ClusterState) -> (u64, Translation) {
        let started = std::time::Instant::now();
        let translation = translate(state, &self.options, &self.last_accepted);
        if let Some(metrics) = &self.metrics {
            metrics.record_translation(state, &translation, started.elapsed());
        }
        self.last_accepted = translation.last_accepted.clone();
        let version = self.distributor.publish(translation.snapshot.clone());
        // Mesh endpoints whose node is unknown are left out by every proxy (never dialled in
        // plaintext): say so here, where the cause (a node without status.hostIP) can be fixed.
        let unplaced = translation.snapshot.unplaced_mesh_endpoints();
        for endpoint in &unplaced {
            tracing::warn!(service = %endpoint.service, address = %endpoint.address, "{endpoint}");
        }
        let rejected = translation.statuses.values().filter(|s| s.parents.iter().any(|p| !p.accepted.status)).count();
        tracing::info!(
            version,
            services = translation.snapshot.services.len(),
            workloads = translation.snapshot.workloads.len(),
            http_routes = translation.snapshot.http_routes.len(),
            grpc_routes = translation.snapshot.grpc_routes.len(),
            routes_not_accepted = rejected,
            unplaced_mesh_endpoints = unplaced.len(),
            "reconciled"
        );
        (version, translation)
    }
}
