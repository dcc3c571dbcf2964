//! Prometheus metrics of the proxy (prometheus-client, OpenMetrics text on the admin port).
//!
//! Labels name workloads, Services, routes, rules and backends — never pods, IPs or paths — so
//! their number is bounded by the config, not by traffic or pod churn.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// Labels of a request, known once its route and backend are chosen. Values are shared
/// (`Arc<str>` from the compiled config), so building them per request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct RouteLabels {
    /// `outbound` (client side) or `inbound` (server side).
    pub direction: &'static str,
    /// Client's namespace (`unknown` outside the mesh).
    pub src_namespace: Arc<str>,
    /// Client's workload (owner) name.
    pub src_workload: Arc<str>,
    /// Destination Service namespace.
    pub dst_namespace: Arc<str>,
    /// Destination Service name.
    pub dst_service: Arc<str>,
    /// Workload (owner) of the endpoint that answered, when it is in the mesh.
    pub dst_workload: Arc<str>,
    /// How the request reached the endpoint: `mtls` (through its node's proxy over mutual TLS),
    /// `local` (a mesh pod on this node: no network crossed), `plaintext` (outside the mesh, or
    /// a tunnel without identities); empty when no endpoint was reached.
    pub tls: &'static str,
    /// `HTTPRoute`, `GRPCRoute`, or `default` when no route is attached.
    pub route_kind: &'static str,
    /// Route `namespace/name`, empty for the default route.
    pub route_name: Arc<str>,
    /// Rule name (or index).
    pub route_rule: Arc<str>,
    /// Backend `namespace/name:port`.
    pub backend: Arc<str>,
}

/// The label value for clients and endpoints outside the mesh.
pub fn unknown_label() -> Arc<str> {
    static UNKNOWN: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::from("unknown")).clone()
}

/// Labels of a finished request: route labels plus method and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    method: &'static str,
    status_code: u16,
    grpc_status: Option<Arc<str>>,
}

/// A request's labels as the key of the request families: hashed once, by content, with a
/// fast fixed hasher (foldhash). The families hash their keys with std's SipHash, which over
/// thirteen label values cost about 3,000 instructions per request (two families); over this
/// key's one fingerprint it costs a few dozen. Equal labels give equal fingerprints, and keys
/// are compared by their labels, so series stay exactly one per label set.
#[derive(Clone, Debug)]
pub struct RequestKey {
    labels: RequestLabels,
    fingerprint: u64,
}

impl RequestKey {
    fn new(labels: RequestLabels) -> Self {
        use std::hash::BuildHasher;
        // Fixed seed: the fingerprint depends on the labels only.
        let fingerprint = foldhash::fast::FixedState::with_seed(0x006e_6f64_7573).hash_one(&labels);
        Self { labels, fingerprint }
    }
}

impl std::hash::Hash for RequestKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint);
    }
}

impl PartialEq for RequestKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.labels == other.labels
    }
}

impl Eq for RequestKey {}

impl prometheus_client::encoding::EncodeLabelSet for RequestKey {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.labels.encode(encoder)
    }
}

/// Labels of a TCP connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// `http` or `opaque`.
    pub protocol: &'static str,
    /// Destination Service (`namespace/name:port`) or `passthrough`.
    pub destination: String,
}

/// Labels of tunnel streams arriving at the inbound listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabels {
    /// `mtls` or `plaintext` (permissive namespaces accept plaintext, counted here).
    pub tls: &'static str,
    /// The authenticated source identity (SPIFFE ID), empty for plaintext.
    pub client_identity: String,
    /// Destination workload (`namespace/owner`).
    pub destination: String,
    /// `allowed`, or why it was refused (`plaintext_to_strict`).
    pub result: &'static str,
}

/// Labels of connections the eBPF redirect captured on their way in to a pod (plaintext from
/// outside the mesh: mesh pods' traffic arrives through tunnels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapturedLabels {
    /// Destination workload (`namespace/owner`).
    pub destination: String,
    /// `allowed`, `plaintext_to_strict` (reset), `denied` (by authorization policy, reset) or
    /// `unreachable` (the pod refused the proxy's connection).
    pub result: &'static str,
}

/// Labels of mutual TLS handshakes at the inbound listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `ok`, or `failed` (unknown CA, expired certificate, no certificate for the SNI...).
    pub result: &'static str,
}

/// Labels of per-source limiting.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `connections` (a connection closed at once) or `requests` (a request that waited).
    pub reason: &'static str,
}

/// Labels of authorization denials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// The caller's SPIFFE ID (empty for plaintext).
    pub client_identity: String,
    /// Destination workload (`namespace/owner`).
    pub destination: String,
    /// The denying policy (`namespace/name`), or `no allow policy matched`.
    pub policy: String,
}

/// Labels of retries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// Route `namespace/name`.
    pub route_name: String,
    /// Rule.
    pub route_rule: String,
    /// `sent` or `budget_exhausted`.
    pub outcome: &'static str,
}

/// Labels of endpoint ejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Backend Service port.
    pub backend: String,
}

/// Labels of config updates.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    /// `accepted` or `rejected`.
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

/// Every metric family of the proxy.
#[derive(Debug)]
pub struct Metrics {
    names: Vec<&'static str>,
    registry: Registry,
    requests: Family<RequestKey, Counter>,
    request_duration: Family<RequestKey, Histogram, fn() -> Histogram>,
    /// Retries sent or refused by the budget.
    pub retries: Family<RetryLabels, Counter>,
    /// Endpoint ejections.
    pub ejections: Family<BackendLabels, Counter>,
    /// TCP connections accepted.
    pub tcp_connections: Family<TcpLabels, Counter>,
    /// Tunnel streams at the inbound listener, by transport security and source identity.
    pub inbound_tunnels: Family<InboundLabels, Counter>,
    /// Plaintext connections to mesh pods captured on their way in, by outcome.
    pub inbound_captured: Family<CapturedLabels, Counter>,
    /// Connections refused and requests delayed by a source's share of the proxy.
    pub source_limited: Family<LimitLabels, Counter>,
    /// Mutual TLS handshakes at the inbound listener.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// Streams refused by authorization policy.
    pub authorization_denials: Family<DenialLabels, Counter>,
    /// TCP connections open now.
    pub tcp_open: Family<TcpLabels, Gauge>,
    /// Bytes from clients.
    pub tcp_received_bytes: Family<TcpLabels, Counter>,
    /// Bytes to clients.
    pub tcp_sent_bytes: Family<TcpLabels, Counter>,
    /// Version of the config in force.
    pub config_version: Gauge,
    /// 1 while the control-plane stream is up.
    pub control_plane_connected: Gauge,
    /// Workload certificates issued (first issue and renewals).
    pub certificates_issued: Counter,
    /// Certificate requests that failed.
    pub certificate_errors: Counter,
    /// Config snapshots accepted or rejected.
    pub config_updates: Family<ConfigLabels, Counter>,
    /// Pods of this node the redirect captures now.
    pub redirect_enrolled_pods: Gauge,
    /// Mesh pods of this node whose network namespace was not found yet.
    pub redirect_missing_pods: Gauge,
    /// Mesh endpoints left out of balancing because their node is not known, by reason.
    pub unplaced_endpoints: Family<UnplacedLabels, Gauge>,
    /// Calls refused because they could not go over mTLS and the caller's namespace requires it.
    pub mtls_required_refusals: Family<MtlsRequiredLabels, Counter>,
}

/// Labels of [`Metrics::mtls_required_refusals`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MtlsRequiredLabels {
    /// The caller, namespace/workload.
    pub source: String,
    /// The Service port (or `passthrough` for a pod address dialled directly).
    pub destination: String,
    /// `http` or `opaque`.
    pub protocol: &'static str,
}

/// Labels of [`Metrics::unplaced_endpoints`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnplacedLabels {
    /// `node_unknown` or `no_node`.
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nodus");
        // Every name registered, for the metric reference (docs/observability.md) to be checked.
        let mut names = Vec::new();
        let requests = Family::<RequestKey, Counter>::default();
        let request_duration = Family::<RequestKey, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let retries = Family::default();
        let ejections = Family::default();
        let tcp_connections = Family::default();
        let inbound_tunnels = Family::<InboundLabels, Counter>::default();
        let inbound_captured = Family::<CapturedLabels, Counter>::default();
        let authorization_denials = Family::<DenialLabels, Counter>::default();
        let tls_handshakes = Family::<HandshakeLabels, Counter>::default();
        let source_limited = Family::<LimitLabels, Counter>::default();
        let tcp_open = Family::default();
        let tcp_received_bytes = Family::default();
        let tcp_sent_bytes = Family::default();
        let config_version = Gauge::default();
        let control_plane_connected = Gauge::default();
        let certificates_issued = Counter::default();
        let certificate_errors = Counter::default();
        let config_updates = Family::default();
        let redirect_enrolled_pods = Gauge::default();
        let redirect_missing_pods = Gauge::default();
        let unplaced_endpoints = Family::<UnplacedLabels, Gauge>::default();
        let mtls_required_refusals = Family::<MtlsRequiredLabels, Counter>::default();
        register(
            &mut registry,
            &mut names,
            "outbound_mtls_required_refusals",
            "Calls refused because the destination is not reachable over mTLS and the caller's MeshPolicy requires it",
            mtls_required_refusals.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "unplaced_mesh_endpoints",
            "Mesh endpoints left out because their node is not known (never dialled in plaintext)",
            unplaced_endpoints.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "redirect_enrolled_pods",
            "Pods of this node captured by the redirect",
            redirect_enrolled_pods.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "redirect_missing_pods",
            "Mesh pods of this node whose network namespace was not found yet",
            redirect_missing_pods.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "requests",
            "HTTP and gRPC requests, by route, backend and outcome",
            requests.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "request_duration_seconds",
            "Time from request to the end of the answer",
            request_duration.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "retries",
            "Retries sent, or refused because the retry budget was spent",
            retries.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "endpoint_ejections",
            "Endpoints taken out of rotation by outlier detection",
            ejections.clone(),
        );
        register(&mut registry, &mut names, "tcp_connections", "TCP connections accepted", tcp_connections.clone());
        register(
            &mut registry,
            &mut names,
            "inbound_tunnels",
            "Tunnel streams from other node proxies, by mTLS and authenticated source identity",
            inbound_tunnels.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "inbound_captured",
            "Plaintext connections to mesh pods captured on their way in (from outside the mesh), by outcome",
            inbound_captured.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "source_limited",
            "Connections refused and requests delayed because their source pod used its share of the proxy",
            source_limited.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "inbound_tls_handshakes",
            "Mutual TLS handshakes from other node proxies, by result",
            tls_handshakes.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "authorization_denials",
            "Tunnel streams refused by authorization policy",
            authorization_denials.clone(),
        );
        register(&mut registry, &mut names, "tcp_open_connections", "TCP connections open now", tcp_open.clone());
        register(
            &mut registry,
            &mut names,
            "tcp_received_bytes",
            "Bytes received from clients",
            tcp_received_bytes.clone(),
        );
        register(&mut registry, &mut names, "tcp_sent_bytes", "Bytes sent to clients", tcp_sent_bytes.clone());
        register(
            &mut registry,
            &mut names,
            "config_version",
            "Version of the config snapshot in force",
            config_version.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "control_plane_connected",
            "1 while the stream to the controller is up (the last good config is served either way)",
            control_plane_connected.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "workload_certificates_issued",
            "Workload certificates issued by the controller's CA (first issue and renewals)",
            certificates_issued.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "workload_certificate_errors",
            "Workload certificate requests that failed (the certificate held, if any, stays)",
            certificate_errors.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "config_updates",
            "Config snapshots accepted or rejected",
            config_updates.clone(),
        );
        Self {
            registry,
            names,
            requests,
            request_duration,
            retries,
            ejections,
            tcp_connections,
            inbound_tunnels,
            inbound_captured,
            tls_handshakes,
            source_limited,
            authorization_denials,
            tcp_open,
            tcp_received_bytes,
            tcp_sent_bytes,
            config_version,
            control_plane_connected,
            certificates_issued,
            certificate_errors,
            config_updates,
            redirect_enrolled_pods,
            redirect_missing_pods,
            unplaced_endpoints,
            mtls_required_refusals,
        }
    }

    /// Registry for extra collectors (e.g. eBPF counters), before the metrics are shared.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The names of every metric registered here (without the `nodus_` prefix and a counter's
    /// `_total`), whether or not it has samples yet.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding metrics");
        }
        text
    }

    fn record(&self, labels: RequestLabels, seconds: f64) {
        let key = RequestKey::new(labels);
        self.requests.get_or_create(&key).inc();
        self.request_duration.get_or_create(&key).observe(seconds);
    }
}

/// Registers `metric` and remembers its name.
fn register(
    registry: &mut Registry,
    names: &mut Vec<&'static str>,
    name: &'static str,
    help: &'static str,
    metric: impl prometheus_client::registry::Metric,
) {
    names.push(name);
    registry.register(name, help, metric);
}

/// Rewrites an OpenMetrics exposition as Prometheus text format 0.0.4 (for clients that do not
/// ask for OpenMetrics: curl, promtool, older scrapers): counters' HELP and TYPE carry the
/// `_total` sample name, `# UNIT` and `# EOF` lines go.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Methods as bounded label values.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// gRPC status codes 0-16 as shared label values; anything else (a broken server) as `other`.
fn grpc_status_label(code: &str) -> Arc<str> {
    static CODES: std::sync::OnceLock<Vec<Arc<str>>> = std::sync::OnceLock::new();
    let codes =
        CODES.get_or_init(|| (0..=16).map(|c: u8| Arc::from(c.to_string())).chain([Arc::from("other")]).collect());
    match code.parse::<usize>() {
        Ok(c) if c <= 16 => codes[c].clone(),
        _ => codes[17].clone(),
    }
}

/// Records one request when its answer ends (for gRPC the status arrives in trailers).
#[derive(Debug)]
pub struct ResponseObserver {
    metrics: Arc<Metrics>,
    labels: RouteLabels,
    method: &'static str,
    status: u16,
    grpc_status: Option<Arc<str>>,
    started: Instant,
    recorded: bool,
}

impl ResponseObserver {
    /// Starts observing a request.
    pub fn new(
        metrics: Arc<Metrics>,
        labels: RouteLabels,
        method: &'static str,
        status: u16,
        headers: &http::HeaderMap,
        started: Instant,
    ) -> Self {
        let grpc_status = headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(grpc_status_label);
        Self { metrics, labels, method, status, grpc_status, started, recorded: false }
    }

    /// The answer ended, with these trailers if any.
    pub fn finish(&mut self, trailers: Option<&http::HeaderMap>) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let grpc_status = trailers
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(grpc_status_label)
            .or_else(|| self.grpc_status.take());
        let labels = RequestLabels {
            route: std::mem::take(&mut self.labels),
            method: self.method,
            status_code: self.status,
            grpc_status,
        };
        self.metrics.record(labels, self.started.elapsed().as_secs_f64());
    }
}

impl Drop for ResponseObserver {
    fn drop(&mut self) {
        // Answers cut short (client went away) are still counted.
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(workload: &str, status_code: u16) -> RequestLabels {
        RequestLabels {
            // Fresh allocations each time: series must be told apart by content, not pointers.
            route: RouteLabels { src_workload: Arc::from(workload), direction: "outbound", ..RouteLabels::default() },
            method: "GET",
            status_code,
            grpc_status: None,
        }
    }

    #[test]
    fn equal_labels_are_one_series_and_different_labels_are_not() {
        let metrics = Metrics::new();
        metrics.record(labels("web", 200), 0.001);
        metrics.record(labels("web", 200), 0.002);
        metrics.record(labels("web", 503), 0.001);
        metrics.record(labels("api", 200), 0.001);
        let text = metrics.encode();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("nodus_requests_total{")).collect();
        assert_eq!(series.len(), 3, "{text}");
        assert!(series
            .iter()
            .any(|l| l.contains("src_workload=\"web\"") && l.contains("status_code=\"200\"") && l.ends_with(" 2")));
        assert_eq!(RequestKey::new(labels("web", 200)), RequestKey::new(labels("web", 200)));
        assert_ne!(RequestKey::new(labels("web", 200)), RequestKey::new(labels("web", 201)));
    }

    #[test]
    fn openmetrics_counters_become_prometheus_text_counters() {
        let om = "# HELP nodus_requests Requests.\n# TYPE nodus_requests counter\nnodus_requests_total{a=\"b\"} 3\n# HELP nodus_config_version Version.\n# TYPE nodus_config_version gauge\nnodus_config_version 7\n# EOF\n";
        let text = openmetrics_to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP nodus_requests_total Requests.\n# TYPE nodus_requests_total counter\nnodus_requests_total{a=\"b\"} 3\n# HELP nodus_config_version Version.\n# TYPE nodus_config_version gauge\nnodus_config_version 7\n"
        );
    }
}
