//! Route tables: HTTPRoutes and GRPCRoutes compiled, per Service port, into indexes that answer
//! "which rule handles this request?" with the Gateway API's precedence rules.
//!
//! Compilation happens once per config snapshot, off the request path. Matching allocates nothing
//! and costs O(path segments) for path matches whatever the number of routes: exact paths and
//! prefix elements are hash-indexed; only regular-expression paths are scanned.
//!
//! The tables are generic over `B`, the handle a rule keeps for each backend it sends to: the
//! proxy resolves a backendRef to its Service port's load balancer, the fuzz targets and
//! benchmarks to nothing (`()`).
//!
//! GAMMA: a route in the Service's own namespace is a *producer* route and applies to every
//! client; a route in another namespace is a *consumer* route and applies only to clients in its
//! namespace, which then ignore the producer routes.

mod grpc_route;
mod http_route;
#[cfg(test)]
mod tests;

pub use grpc_route::GrpcRouteSet;
pub use http_route::{HttpRouteSet, RequestView};

use crate::retry_budget::RetryBudget;
use nodus_config::{
    BackendRef, ConfigSnapshot, GrpcRoute, HttpFilter, HttpRoute, ObjectRef, RetryPolicy, RouteParent, RouteTimeouts,
    RouteValidator,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Which kind of route a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute.
    Grpc,
    /// No route attached: traffic goes to the Service's own endpoints, as in the cluster.
    Default,
}

impl RouteKind {
    /// The Gateway API kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Default => "default",
        }
    }
}

/// One rule of one route, with everything the request path needs to act on it.
#[derive(Debug)]
pub struct CompiledRule<B> {
    /// Route kind.
    pub kind: RouteKind,
    /// Route namespace/name.
    pub route: ObjectRef,
    /// Index of the rule in the route.
    pub rule_index: usize,
    /// The rule's name, or its index, as metrics label it.
    pub rule_label: Arc<str>,
    /// `namespace/name` of the route, as metrics label it.
    pub route_label: Arc<str>,
    /// Filters, in order.
    pub filters: Vec<HttpFilter>,
    /// Weighted backends.
    pub backends: Vec<RuleBackend<B>>,
    /// Sum of the backends' weights.
    pub total_weight: u64,
    /// Whole-request timeout.
    pub request_timeout: Option<Duration>,
    /// Per-attempt timeout.
    pub backend_timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Limits retries of this rule to a fraction of its traffic.
    pub retry_budget: RetryBudget,
}

impl<B> CompiledRule<B> {
    /// The rule used when no route is attached: everything to the Service port itself, whose
    /// handle is `target` and whose metrics label is `label`.
    pub fn default_for(service: &ObjectRef, port: u16, target: B, label: Arc<str>) -> Self {
        let reference = BackendRef { service: service.clone(), port, weight: 1, filters: Vec::new(), unresolved: None };
        Self {
            kind: RouteKind::Default,
            route: service.clone(),
            rule_index: 0,
            rule_label: Arc::from(""),
            route_label: Arc::from(""),
            filters: Vec::new(),
            backends: vec![RuleBackend { label, reference, target: Some(target) }],
            total_weight: 1,
            request_timeout: None,
            backend_timeout: None,
            retry: None,
            retry_budget: RetryBudget::default(),
        }
    }
}

/// A backendRef of a rule, resolved to the handle of its Service port.
#[derive(Debug)]
pub struct RuleBackend<B> {
    /// The reference as configured.
    pub reference: BackendRef,
    /// The Service port's handle; `None` if the Service is unknown or the reference unresolved
    /// (requests get 500).
    pub target: Option<B>,
    /// `namespace/name:port`, for metrics.
    pub label: Arc<str>,
}

/// Finds the handle of a Service port.
pub type BackendResolver<'a, B> = &'a dyn Fn(&ObjectRef, u16) -> Option<B>;

impl<B> CompiledRule<B> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        resolve: BackendResolver<'_, B>,
        kind: RouteKind,
        route: &ObjectRef,
        rule_index: usize,
        name: Option<&String>,
        filters: &[HttpFilter],
        backends: &[BackendRef],
        timeouts: Option<&RouteTimeouts>,
        retry: Option<&RetryPolicy>,
    ) -> Self {
        let zero_is_none =
            |d: Option<nodus_config::GatewayDuration>| d.map(|d| d.as_duration()).filter(|d| !d.is_zero());
        Self {
            kind,
            route: route.clone(),
            rule_index,
            rule_label: name.map(|n| Arc::from(n.as_str())).unwrap_or_else(|| Arc::from(rule_index.to_string())),
            route_label: Arc::from(route.to_string()),
            filters: filters.to_vec(),
            backends: backends
                .iter()
                .map(|b| RuleBackend {
                    reference: b.clone(),
                    target: if b.unresolved.is_some() { None } else { resolve(&b.service, b.port) },
                    label: Arc::from(format!("{}:{}", b.service, b.port)),
                })
                .collect(),
            total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
            request_timeout: zero_is_none(timeouts.and_then(|t| t.request)),
            backend_timeout: zero_is_none(timeouts.and_then(|t| t.backend_request)),
            retry: retry.cloned(),
            retry_budget: RetryBudget::default(),
        }
    }
}

/// The result of matching: the rule and, for prefix matches, the prefix that matched (for
/// `ReplacePrefixMatch`).
#[derive(Debug)]
pub struct RouteMatch<'t, B> {
    /// The rule that handles the request.
    pub rule: &'t Arc<CompiledRule<B>>,
    /// The `PathPrefix` value that matched, if the match was a prefix match.
    pub matched_prefix: Option<&'t Arc<str>>,
}

// Derived Clone/Copy would require `B: Copy`; the match holds only references.
impl<B> Clone for RouteMatch<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for RouteMatch<'_, B> {}

/// Routes of one audience (producer, or consumers of one namespace) on one Service port.
#[derive(Debug)]
pub struct RouteSet<B> {
    /// HTTPRoute rules.
    pub http: HttpRouteSet<B>,
    /// GRPCRoute rules.
    pub grpc: GrpcRouteSet<B>,
}

impl<B> Default for RouteSet<B> {
    fn default() -> Self {
        Self { http: HttpRouteSet::default(), grpc: GrpcRouteSet::default() }
    }
}

impl<B> RouteSet<B> {
    /// Whether no route at all applies.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.grpc.is_empty()
    }

    /// Matches a request: gRPC calls try GRPCRoutes first, then HTTPRoutes.
    pub fn find<'t>(&'t self, request: &RequestView<'_>, is_grpc: bool) -> Option<RouteMatch<'t, B>> {
        if is_grpc {
            if let Some(found) = self.grpc.find(request) {
                return Some(found);
            }
        }
        self.http.find(request)
    }
}

/// The routes attached to one Service port.
#[derive(Debug)]
pub struct PortRoutes<B> {
    producer: RouteSet<B>,
    consumers: HashMap<Box<str>, RouteSet<B>>,
}

impl<B> Default for PortRoutes<B> {
    fn default() -> Self {
        Self { producer: RouteSet::default(), consumers: HashMap::new() }
    }
}

impl<B> PortRoutes<B> {
    /// The routes that apply to a client in `client_namespace` (consumer routes of that
    /// namespace if any, else the producer routes).
    pub fn for_client(&self, client_namespace: Option<&str>) -> &RouteSet<B> {
        client_namespace.and_then(|ns| self.consumers.get(ns)).unwrap_or(&self.producer)
    }

    /// Whether any route (for any client) is attached.
    pub fn is_empty(&self) -> bool {
        self.producer.is_empty() && self.consumers.values().all(RouteSet::is_empty)
    }
}

/// A Service port: `(namespace, name, port)`.
pub type ServicePortKey = (Arc<str>, Arc<str>, u16);

/// Every route of a snapshot, by Service port.
#[derive(Debug)]
pub struct RouteTable<B> {
    by_port: HashMap<ServicePortKey, Arc<PortRoutes<B>>>,
}

impl<B> Default for RouteTable<B> {
    fn default() -> Self {
        Self { by_port: HashMap::new() }
    }
}

impl<B> RouteTable<B> {
    /// Compiles the routes of a (validated) snapshot. Route order in the snapshot is the
    /// tie-breaker between equally specific matches.
    pub fn compile(snapshot: &ConfigSnapshot, resolve: BackendResolver<'_, B>) -> Result<Self, regex::Error> {
        let mut builder = TableBuilder { resolve, sets: HashMap::new(), consumer_sets: HashMap::new() };
        // Services indexed once: parents are looked up per route.
        let services = snapshot.route_validator();
        for (order, route) in snapshot.http_routes.iter().enumerate() {
            builder.add_http(&services, order, route)?;
        }
        for (order, route) in snapshot.grpc_routes.iter().enumerate() {
            builder.add_grpc(&services, order, route)?;
        }
        Ok(builder.finish())
    }

    /// The routes attached to `namespace/name:port`, if any.
    pub fn port(&self, namespace: &str, name: &str, port: u16) -> Option<&Arc<PortRoutes<B>>> {
        self.by_port.get(&(Arc::from(namespace), Arc::from(name), port))
    }

    /// Number of Service ports with routes.
    pub fn len(&self) -> usize {
        self.by_port.len()
    }

    /// Whether no Service port has routes.
    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }
}

/// The HTTP and gRPC builders of one audience on one Service port.
type SetBuilders<B> = (http_route::HttpSetBuilder<B>, grpc_route::GrpcSetBuilder<B>);

struct TableBuilder<'r, B> {
    resolve: BackendResolver<'r, B>,
    sets: HashMap<ServicePortKey, SetBuilders<B>>,
    consumer_sets: HashMap<(ServicePortKey, Box<str>), SetBuilders<B>>,
}

impl<B> TableBuilder<'_, B> {
    /// The Service ports a parent reference covers.
    fn parent_ports(services: &RouteValidator<'_>, parent: &RouteParent) -> Vec<ServicePortKey> {
        let Some(service) = services.service(&parent.service) else {
            return Vec::new();
        };
        let ns: Arc<str> = Arc::from(parent.service.namespace.as_str());
        let name: Arc<str> = Arc::from(parent.service.name.as_str());
        service
            .ports
            .iter()
            .filter(|p| parent.port.is_none_or(|wanted| wanted == p.port))
            .map(|p| (ns.clone(), name.clone(), p.port))
            .collect()
    }

    /// Calls `add` with the builders of every Service port the route attaches to: the producer
    /// set when the route is in the Service's namespace, else its namespace's consumer set.
    fn for_each_attachment(
        &mut self,
        services: &RouteValidator<'_>,
        route: &ObjectRef,
        parents: &[RouteParent],
        mut add: impl FnMut(&mut SetBuilders<B>) -> Result<(), regex::Error>,
    ) -> Result<(), regex::Error> {
        for parent in parents {
            for key in Self::parent_ports(services, parent) {
                let builders = if *key.0 == *route.namespace {
                    self.sets.entry(key).or_default()
                } else {
                    self.consumer_sets.entry((key, Box::from(route.namespace.as_str()))).or_default()
                };
                add(builders)?;
            }
        }
        Ok(())
    }

    fn add_http(&mut self, services: &RouteValidator<'_>, order: usize, route: &HttpRoute) -> Result<(), regex::Error> {
        let rules: Vec<Arc<CompiledRule<B>>> = route
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                Arc::new(CompiledRule::new(
                    self.resolve,
                    RouteKind::Http,
                    &route.id,
                    index,
                    rule.name.as_ref(),
                    &rule.filters,
                    &rule.backends,
                    rule.timeouts.as_ref(),
                    rule.retry.as_ref(),
                ))
            })
            .collect();
        self.for_each_attachment(services, &route.id, &route.parents, |(http, _)| {
            route
                .rules
                .iter()
                .zip(&rules)
                .try_for_each(|(rule, compiled)| http.add_rule(order, &route.hostnames, rule, compiled))
        })
    }

    fn add_grpc(&mut self, services: &RouteValidator<'_>, order: usize, route: &GrpcRoute) -> Result<(), regex::Error> {
        let rules: Vec<Arc<CompiledRule<B>>> = route
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                Arc::new(CompiledRule::new(
                    self.resolve,
                    RouteKind::Grpc,
                    &route.id,
                    index,
                    rule.name.as_ref(),
                    &rule.filters,
                    &rule.backends,
                    None,
                    None,
                ))
            })
            .collect();
        self.for_each_attachment(services, &route.id, &route.parents, |(_, grpc)| {
            route
                .rules
                .iter()
                .zip(&rules)
                .try_for_each(|(rule, compiled)| grpc.add_rule(order, &route.hostnames, rule, compiled))
        })
    }

    fn finish(self) -> RouteTable<B> {
        let mut by_port: HashMap<ServicePortKey, PortRoutes<B>> = HashMap::new();
        for (key, (http, grpc)) in self.sets {
            by_port.entry(key).or_default().producer = RouteSet { http: http.build(), grpc: grpc.build() };
        }
        for ((key, namespace), (http, grpc)) in self.consumer_sets {
            by_port
                .entry(key)
                .or_default()
                .consumers
                .insert(namespace, RouteSet { http: http.build(), grpc: grpc.build() });
        }
        RouteTable { by_port: by_port.into_iter().map(|(k, v)| (k, Arc::new(v))).collect() }
    }
}

/// Whether `host` (without port) matches a route hostname (`*.example.com` wildcards allowed).
pub(crate) fn hostname_matches(patterns: &[Box<str>], host: Option<&str>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(host) = host else { return false };
    let host =
        host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    patterns.iter().any(|pattern| match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    })
}
