//! The controller's own metrics, served on `/metrics` of its monitoring port (`:15014`, as
//! istiod's): what it watches, how long translation takes, and per node proxy what it pushed
//! and what the proxy answered (ACK or NACK).
//!
//! Per-node figures are read from the [`Distributor`]'s node statuses at scrape time, so they
//! are never a second bookkeeping that could drift from what `nodusctl`'s tests and status
//! checks read.

use crate::cluster::ClusterState;
use crate::distribute::Distributor;
use crate::translate::Translation;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The port the controller serves `/metrics` on by default.
pub const MONITORING_PORT: u16 = 15014;

/// The controller's metrics registry.
#[derive(Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    translations: Counter,
    translation_seconds: Histogram,
    watched_objects: Family<Vec<(&'static str, &'static str)>, Gauge>,
    routes: Family<Vec<(&'static str, &'static str)>, Gauge>,
}

impl ControllerMetrics {
    /// Metrics of a controller publishing through `distributor`.
    pub fn new(distributor: Distributor) -> Self {
        let mut registry = Registry::with_prefix("nodus_controller");
        let translations = Counter::default();
        registry.register("translations", "Translations of the cluster into mesh config", translations.clone());
        // From 100 µs to about 6.5 s: a small mesh translates in well under a millisecond.
        let translation_seconds =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17));
        registry.register(
            "translation_duration_seconds",
            "Time to translate the cluster into mesh config",
            translation_seconds.clone(),
        );
        let watched_objects = Family::default();
        registry.register(
            "watched_objects",
            "Objects the controller holds from its source, by kind",
            watched_objects.clone(),
        );
        let routes = Family::default();
        registry.register("routes", "Routes by kind and whether every parent accepted them", routes.clone());
        registry.register_collector(Box::new(NodeCollector { distributor }));
        let metrics = Self { registry, translations, translation_seconds, watched_objects, routes };
        // Every series from the start, at zero: a dashboard shows 0, not "no data", before the
        // first translation.
        metrics.record_counts(&ClusterState::default(), &std::collections::BTreeMap::new());
        metrics
    }

    /// Records one translation of `state`, which took `took`.
    pub fn record_translation(&self, state: &ClusterState, translation: &Translation, took: Duration) {
        self.translations.inc();
        self.translation_seconds.observe(took.as_secs_f64());
        self.record_counts(state, &translation.statuses);
    }

    fn record_counts(
        &self,
        state: &ClusterState,
        statuses: &std::collections::BTreeMap<crate::translate::RouteKey, crate::translate::RouteStatus>,
    ) {
        let counts = [
            ("Namespace", state.namespaces.len()),
            ("Service", state.services.len()),
            ("EndpointSlice", state.endpoint_slices.len()),
            ("Pod", state.pods.len()),
            ("HTTPRoute", state.http_routes.len()),
            ("GRPCRoute", state.grpc_routes.len()),
            ("ReferenceGrant", state.reference_grants.len()),
            ("MeshPolicy", state.mesh_policies.len()),
            ("AuthorizationPolicy", state.authorization_policies.len()),
        ];
        for (kind, count) in counts {
            self.watched_objects.get_or_create(&vec![("kind", kind)]).set(count as i64);
        }
        let mut tally = std::collections::BTreeMap::<(&'static str, &'static str), i64>::new();
        for kind in ["HTTPRoute", "GRPCRoute"] {
            for accepted in ["true", "false"] {
                tally.insert((kind, accepted), 0);
            }
        }
        for (key, status) in statuses {
            let kind = match key.kind {
                crate::translate::RouteKind::Http => "HTTPRoute",
                crate::translate::RouteKind::Grpc => "GRPCRoute",
            };
            let accepted = if status.parents.iter().all(|p| p.accepted.status) { "true" } else { "false" };
            *tally.entry((kind, accepted)).or_default() += 1;
        }
        for ((kind, accepted), count) in tally {
            self.routes.get_or_create(&vec![("kind", kind), ("accepted", accepted)]).set(count);
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding metrics");
        }
        text
    }

    /// Serves `/metrics` (and `/live`) on `listener` until it fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let metrics = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(metrics.answer(request.uri().path())) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }

    fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match path {
            "/metrics" => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", self.encode()),
            "/live" => (StatusCode::OK, "text/plain", "live\n".to_string()),
            _ => (StatusCode::NOT_FOUND, "text/plain", "try /metrics or /live\n".to_string()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        response
    }
}

/// Reads per-node figures from the distributor at scrape time (names get the registry's prefix).
#[derive(Debug)]
struct NodeCollector {
    distributor: Distributor,
}

/// Counter or gauge.
#[derive(Clone, Copy)]
enum Figure {
    Counter,
    Gauge,
}

/// Per node: name (a counter's without `_total`), help, type, value.
type NodeFigure = (&'static str, &'static str, Figure, fn(&crate::distribute::NodeStatus) -> u64);

const NODE_FIGURES: [NodeFigure; 7] = [
    ("config_pushes", "Config pushes sent to the node's proxy", Figure::Counter, |s| s.pushes),
    ("config_push_bytes", "Bytes of config pushed to the node's proxy", Figure::Counter, |s| s.bytes_sent),
    ("config_acks", "Config pushes the node's proxy acknowledged", Figure::Counter, |s| s.acks),
    ("config_nacks", "Config pushes the node's proxy refused (it keeps its previous config)", Figure::Counter, |s| {
        s.nacks
    }),
    ("config_full_pushes", "Full (not delta) config pushes to the node's proxy", Figure::Counter, |s| s.full_pushes),
    ("node_connected", "1 while the node's proxy holds a config stream open", Figure::Gauge, |s| {
        u64::from(s.connected)
    }),
    ("node_acked_version", "The last config version the node's proxy acknowledged", Figure::Gauge, |s| s.acked_version),
];

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let nodes = self.distributor.node_statuses();
        let version = ConstGauge::new(self.distributor.current().version as i64);
        version.encode(encoder.encode_descriptor(
            "config_version",
            "The version of the config last published",
            None,
            version.metric_type(),
        )?)?;
        for (name, help, figure, value) in NODE_FIGURES {
            let metric_type = match figure {
                Figure::Counter => ConstCounter::new(0u64).metric_type(),
                Figure::Gauge => version.metric_type(),
            };
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (node, status) in &nodes {
                let labels = vec![("node", node.as_str())];
                match figure {
                    Figure::Counter => ConstCounter::new(value(status)).encode(family.encode_family(&labels)?)?,
                    Figure::Gauge => ConstGauge::new(value(status) as i64).encode(family.encode_family(&labels)?)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{translate, LastAccepted, TranslateOptions};

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn translation_counts_watched_objects_and_routes() {
        let distributor = Distributor::new();
        let metrics = ControllerMetrics::new(distributor);
        let objects = crate::manifests::parse_objects(
            std::path::Path::new("test.yaml"),
            r#"
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { nodus.dev/mesh: enabled } }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.5, ports: [{ name: http, port: 80 }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: good, namespace: shop }
spec:
  parentRefs: [{ group: "", kind: Service, name: web, port: 80 }]
  rules: [{ backendRefs: [{ name: web, port: 80 }] }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: orphan, namespace: shop }
spec:
  parentRefs: [{ group: "", kind: Service, name: missing, port: 80 }]
  rules: [{ backendRefs: [{ name: web, port: 80 }] }]
"#,
        )
        .expect("manifests parse");
        let state = ClusterState::from_objects(objects);
        let translation = translate(&state, &TranslateOptions::default(), &LastAccepted::new());
        metrics.record_translation(&state, &translation, Duration::from_micros(300));
        let text = metrics.encode();
        assert_eq!(sample(&text, r#"nodus_controller_watched_objects{kind="Service"}"#), Some("1"), "{text}");
        assert_eq!(sample(&text, r#"nodus_controller_watched_objects{kind="HTTPRoute"}"#), Some("2"));
        assert_eq!(sample(&text, r#"nodus_controller_routes{kind="HTTPRoute",accepted="true"}"#), Some("1"));
        assert_eq!(sample(&text, r#"nodus_controller_routes{kind="HTTPRoute",accepted="false"}"#), Some("1"));
        assert_eq!(sample(&text, r#"nodus_controller_routes{kind="GRPCRoute",accepted="false"}"#), Some("0"));
        assert_eq!(sample(&text, "nodus_controller_translations_total"), Some("1"));
        assert_eq!(sample(&text, "nodus_controller_translation_duration_seconds_count"), Some("1"));
        // 300 µs falls in the 0.0004 bucket, not the 0.0002 one.
        assert_eq!(sample(&text, r#"nodus_controller_translation_duration_seconds_bucket{le="0.0002"}"#), Some("0"));
        assert_eq!(sample(&text, r#"nodus_controller_translation_duration_seconds_bucket{le="0.0004"}"#), Some("1"));
    }

    #[test]
    fn node_figures_come_from_the_distributor() {
        let distributor = Distributor::new();
        distributor.update_node("node-2", |s| {
            s.connected = true;
            s.pushes = 3;
            s.full_pushes = 1;
            s.acks = 2;
            s.nacks = 1;
            s.acked_version = 7;
            s.bytes_sent = 4096;
        });
        let metrics = ControllerMetrics::new(distributor.clone());
        let text = metrics.encode();
        for (series, value) in [
            (r#"nodus_controller_config_pushes_total{node="node-2"}"#, "3"),
            (r#"nodus_controller_config_full_pushes_total{node="node-2"}"#, "1"),
            (r#"nodus_controller_config_acks_total{node="node-2"}"#, "2"),
            (r#"nodus_controller_config_nacks_total{node="node-2"}"#, "1"),
            (r#"nodus_controller_config_push_bytes_total{node="node-2"}"#, "4096"),
            (r#"nodus_controller_node_connected{node="node-2"}"#, "1"),
            (r#"nodus_controller_node_acked_version{node="node-2"}"#, "7"),
            ("nodus_controller_config_version", "0"),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        distributor.publish(nodus_config::ConfigSnapshot::default());
        assert_eq!(sample(&metrics.encode(), "nodus_controller_config_version"), Some("1"));
    }

    #[test]
    fn unknown_paths_are_404_and_metrics_say_openmetrics() {
        let metrics = ControllerMetrics::new(Distributor::new());
        assert_eq!(metrics.answer("/nope").status(), StatusCode::NOT_FOUND);
        let response = metrics.answer("/metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()[http::header::CONTENT_TYPE].to_str().unwrap_or_default();
        assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    }
}
