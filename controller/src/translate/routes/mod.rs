//! HTTPRoute and GRPCRoute (GAMMA: attached to Services) to the config model, with status.
//!
//! A GRPCRoute's parent refs, filters and backend refs have the JSON shape of a subset of the
//! HTTPRoute's, so they are re-read as HTTPRoute types and go through the same resolution code.

mod matches;
mod retry;
mod status;

pub use status::{Condition, ParentRef, ParentStatus, RouteStatus};

use super::{AcceptedRoute, LastAccepted, RouteKey, RouteKind};
use crate::cluster::ClusterState;
use gateway_api::apis::experimental::httproutes::{
    HttpRouteParentRefs, HttpRouteRulesBackendRefs, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestHeaderModifier,
    HttpRouteRulesMatches, HttpRouteRulesTimeouts,
};
use matches::{header_modifier, http_match, path_modifier, string_match};
use nodus_config::{
    parse_gateway_duration, BackendRef, ConfigSnapshot, GatewayDuration, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch,
    GrpcRouteRule, HeaderMatch, HttpFilter, HttpRoute, HttpRouteRule, MatchKind, ObjectRef, RedirectFilter,
    RouteParent, RouteTimeouts, RouteValidator, UrlRewriteFilter,
};
use retry::{retry_from_annotations, retry_from_field};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;

/// The `controllerName` Nodus writes in route status.
pub const CONTROLLER_NAME: &str = "nodus.dev/mesh-controller";

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

pub(super) struct TranslatedRoutes {
    pub http: Vec<HttpRoute>,
    pub grpc: Vec<GrpcRoute>,
    pub statuses: BTreeMap<RouteKey, RouteStatus>,
    pub last_accepted: LastAccepted,
}

/// Re-reads a value as another type with the same JSON shape.
fn reshape<T: Serialize, U: DeserializeOwned>(value: &T) -> Option<U> {
    serde_json::to_value(value).ok().and_then(|v| serde_json::from_value(v).ok())
}

/// The string a generated enum serializes to (e.g. `"GET"`, `"PathPrefix"`).
fn enum_text<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Problems found while resolving one route, by status condition.
#[derive(Default)]
struct Problems {
    /// `ResolvedRefs=False`: (reason, message).
    unresolved: Vec<(&'static str, String)>,
    /// `Accepted=False, UnsupportedValue`.
    unsupported: Vec<String>,
}

struct Resolver<'a> {
    state: &'a ClusterState,
    services: &'a RouteValidator<'a>,
    route_namespace: &'a str,
    route_kind: &'static str,
    problems: Problems,
}

impl Resolver<'_> {
    /// Whether a ReferenceGrant in `to_namespace` lets this route refer to Service `name`.
    fn grant_allows(&self, to_namespace: &str, name: &str) -> bool {
        self.state.reference_grants.iter().filter(|(id, _)| id.namespace == to_namespace).any(|(_, grant)| {
            let from =
                grant.spec.from.iter().any(|f| {
                    f.group == GATEWAY_GROUP && f.kind == self.route_kind && f.namespace == self.route_namespace
                });
            let to = grant
                .spec
                .to
                .iter()
                .any(|t| t.group.is_empty() && t.kind == "Service" && t.name.as_deref().is_none_or(|n| n == name));
            from && to
        })
    }

    /// Resolves a Service reference; on failure records why and returns the reason text.
    fn service_ref(
        &mut self,
        group: Option<&str>,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: &str,
        port: Option<i32>,
    ) -> (ObjectRef, u16, Option<String>) {
        let namespace = namespace.unwrap_or(self.route_namespace).to_string();
        let id = ObjectRef::new(namespace.clone(), name);
        let port_number = port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
        let group = group.unwrap_or("");
        let kind = kind.unwrap_or("Service");
        let problem: Option<(&'static str, String)> = if !(group.is_empty() || group == "core") || kind != "Service" {
            Some(("InvalidKind", format!("backendRef {id}: kind {group}/{kind} is not supported (only core Service)")))
        } else if namespace != self.route_namespace && !self.grant_allows(&namespace, name) {
            Some((
                "RefNotPermitted",
                format!(
                    "backendRef {id}: no ReferenceGrant in {namespace} allows {}s from {}",
                    self.route_kind, self.route_namespace
                ),
            ))
        } else if port.is_none() {
            Some(("BackendNotFound", format!("backendRef {id}: a Service backend needs a port")))
        } else {
            match self.services.service(&id) {
                None => Some(("BackendNotFound", format!("backendRef {id}: Service not found"))),
                Some(service) if service.port(port_number).is_none() => {
                    Some(("BackendNotFound", format!("backendRef {id}: Service has no port {port_number}")))
                }
                Some(_) => None,
            }
        };
        let unresolved = problem.map(|(reason, message)| {
            let text = format!("{reason}: {message}");
            self.problems.unresolved.push((reason, message));
            text
        });
        (id, port_number, unresolved)
    }

    fn backend(&mut self, backend: &HttpRouteRulesBackendRefs) -> BackendRef {
        let (service, port, unresolved) = self.service_ref(
            backend.group.as_deref(),
            backend.kind.as_deref(),
            backend.namespace.as_deref(),
            &backend.name,
            backend.port,
        );
        let filters = backend
            .filters
            .iter()
            .flatten()
            .filter_map(reshape::<_, HttpRouteRulesFilters>)
            .filter_map(|f| self.filter(&f))
            .collect();
        BackendRef {
            service,
            port,
            weight: backend.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
            filters,
            unresolved,
        }
    }

    /// Converts a filter. `None` drops it (after recording why).
    fn filter(&mut self, filter: &HttpRouteRulesFilters) -> Option<HttpFilter> {
        if let Some(m) = &filter.request_header_modifier {
            return Some(HttpFilter::RequestHeaderModifier(header_modifier(m)));
        }
        if let Some(m) = &filter.response_header_modifier {
            let m: HttpRouteRulesFiltersRequestHeaderModifier = reshape(m)?;
            return Some(HttpFilter::ResponseHeaderModifier(header_modifier(&m)));
        }
        if let Some(r) = &filter.request_redirect {
            let path = r
                .path
                .as_ref()
                .and_then(|p| path_modifier(&enum_text(&p.r#type), &p.replace_full_path, &p.replace_prefix_match));
            return Some(HttpFilter::RequestRedirect(RedirectFilter {
                scheme: r.scheme.as_ref().map(enum_text),
                hostname: r.hostname.clone(),
                path,
                port: r.port.and_then(|p| u16::try_from(p).ok()),
                status_code: r.status_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(302),
            }));
        }
        if let Some(r) = &filter.url_rewrite {
            let path = r
                .path
                .as_ref()
                .and_then(|p| path_modifier(&enum_text(&p.r#type), &p.replace_full_path, &p.replace_prefix_match));
            return Some(HttpFilter::UrlRewrite(UrlRewriteFilter { hostname: r.hostname.clone(), path }));
        }
        if let Some(mirror) = &filter.request_mirror {
            if mirror.percent.is_some() || mirror.fraction.is_some() {
                self.problems.unsupported.push("RequestMirror percent/fraction is not supported".to_string());
                return None;
            }
            let b = &mirror.backend_ref;
            let (service, port, unresolved) =
                self.service_ref(b.group.as_deref(), b.kind.as_deref(), b.namespace.as_deref(), &b.name, b.port);
            // An unresolvable mirror is dropped: copies are best effort, the request is not.
            return unresolved.is_none().then(|| HttpFilter::RequestMirror {
                backend: BackendRef { service, port, weight: 1, filters: Vec::new(), unresolved: None },
            });
        }
        if let Some(extension) = &filter.extension_ref {
            self.problems.unresolved.push((
                "InvalidKind",
                format!("ExtensionRef {}/{} {} is not known to Nodus", extension.group, extension.kind, extension.name),
            ));
            return None;
        }
        self.problems.unsupported.push(format!("filter type {} is not supported", enum_text(&filter.r#type)));
        None
    }

    fn timeouts(&mut self, timeouts: Option<&HttpRouteRulesTimeouts>) -> Option<RouteTimeouts> {
        let timeouts = timeouts?;
        let mut parse = |field: &str, value: &Option<String>| {
            value.as_deref().and_then(|text| match parse_gateway_duration(text) {
                Ok(duration) => Some(GatewayDuration(duration)),
                Err(error) => {
                    self.problems.unsupported.push(format!("timeouts.{field} {text:?}: {error}"));
                    None
                }
            })
        };
        let request = parse("request", &timeouts.request);
        let backend_request = parse("backendRequest", &timeouts.backend_request);
        Some(RouteTimeouts { request, backend_request })
    }

    /// A rule's backends; an unresolved ExtensionRef filter makes the whole rule answer 500.
    fn rule_backends(
        &mut self,
        backends: Option<&Vec<HttpRouteRulesBackendRefs>>,
        unresolved_before: usize,
        filters_failed: bool,
    ) -> Vec<BackendRef> {
        let mut converted: Vec<BackendRef> = backends.into_iter().flatten().map(|b| self.backend(b)).collect();
        if filters_failed {
            let why = self.problems.unresolved[unresolved_before..].first().map(|(r, m)| format!("{r}: {m}"));
            for backend in &mut converted {
                backend.unresolved = backend.unresolved.take().or_else(|| why.clone());
            }
        }
        converted
    }
}

/// Parents of a route: the Services it attaches to, and a status entry for each.
fn resolve_parents(
    services: &RouteValidator<'_>,
    route_namespace: &str,
    parent_refs: &[HttpRouteParentRefs],
) -> Vec<(ParentRef, Result<RouteParent, Condition>)> {
    parent_refs
        .iter()
        .filter(|p| {
            // Only Service parents are the mesh's; Gateways belong to their own controllers.
            p.group.as_deref().is_some_and(|g| g.is_empty() || g == "core") && p.kind.as_deref() == Some("Service")
        })
        .map(|p| {
            let parent_ref = ParentRef {
                group: p.group.clone(),
                kind: p.kind.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                port: p.port,
                section_name: p.section_name.clone(),
            };
            let namespace = p.namespace.as_deref().unwrap_or(route_namespace);
            let id = ObjectRef::new(namespace, p.name.clone());
            let resolved = match services.service(&id) {
                None => Err(Condition::failed("NoMatchingParent", format!("Service {id} not found"))),
                Some(service) => {
                    let by_name = p.section_name.as_ref().map(|section| {
                        service.ports.iter().find(|sp| sp.name.as_ref() == Some(section)).map(|sp| sp.port)
                    });
                    let by_number = p.port.map(|n| u16::try_from(n).ok().filter(|n| service.port(*n).is_some()));
                    match (by_name, by_number) {
                        (Some(None), _) => Err(Condition::failed(
                            "NoMatchingParent",
                            format!("Service {id} has no port named {:?}", p.section_name.as_deref().unwrap_or("")),
                        )),
                        (_, Some(None)) => Err(Condition::failed(
                            "NoMatchingParent",
                            format!("Service {id} has no port {}", p.port.unwrap_or_default()),
                        )),
                        (Some(Some(port)), _) | (None, Some(Some(port))) => {
                            Ok(RouteParent { service: id, port: Some(port) })
                        }
                        (None, None) => Ok(RouteParent { service: id, port: None }),
                    }
                }
            };
            (parent_ref, resolved)
        })
        .collect()
}

/// Decides between the new translation of a route, its last accepted version, or nothing;
/// records the route's status. Returns the route to put in the config, with the generation
/// it was accepted at.
#[allow(clippy::too_many_arguments)]
fn settle<R: Clone>(
    key: &RouteKey,
    generation: Option<i64>,
    parents: &[(ParentRef, Result<RouteParent, Condition>)],
    translated: R,
    mut problems: Problems,
    validate: impl Fn(&R) -> Result<(), String>,
    last: Option<(i64, R)>,
    statuses: &mut BTreeMap<RouteKey, RouteStatus>,
) -> Option<(i64, R)> {
    if let Err(error) = validate(&translated) {
        problems.unsupported.push(error);
    }
    let resolved_refs = match problems.unresolved.first() {
        None => Condition::ok("ResolvedRefs"),
        Some((reason, _)) => Condition::failed(
            reason,
            problems.unresolved.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
        ),
    };
    let (accepted, route) = if problems.unsupported.is_empty() {
        (Condition::ok("Accepted"), Some((generation.unwrap_or_default(), translated)))
    } else {
        let mut message = problems.unsupported.join("; ");
        let fallback = last.filter(|(_, route)| validate(route).is_ok());
        if let Some((generation, _)) = &fallback {
            message.push_str(&format!("; generation {generation} stays in force"));
        }
        (Condition::failed("UnsupportedValue", message), fallback)
    };
    statuses.insert(key.clone(), statuses_for(generation, parents, &accepted, &resolved_refs));
    let has_parents = parents.iter().any(|(_, resolved)| resolved.is_ok());
    route.filter(|_| has_parents)
}

/// What HTTPRoutes and GRPCRoutes share when they are settled.
trait RouteModel: Clone {
    /// The same route attached to `parents` (the parents in force now, for a kept version).
    fn with_parents(&self, parents: Vec<RouteParent>) -> Self;
    /// This kind's last accepted version, if `accepted` is of this kind.
    fn last(accepted: &AcceptedRoute) -> Option<(i64, &Self)>;
    /// Wraps an accepted version.
    fn accepted(generation: i64, route: Self) -> AcceptedRoute;
    /// Checks the route against the snapshot's Services.
    fn validate(&self, validator: &RouteValidator<'_>) -> Result<(), String>;
}

impl RouteModel for HttpRoute {
    fn with_parents(&self, parents: Vec<RouteParent>) -> Self {
        Self { parents, ..self.clone() }
    }
    fn last(accepted: &AcceptedRoute) -> Option<(i64, &Self)> {
        match accepted {
            AcceptedRoute::Http { generation, route } => Some((*generation, route)),
            AcceptedRoute::Grpc { .. } => None,
        }
    }
    fn accepted(generation: i64, route: Self) -> AcceptedRoute {
        AcceptedRoute::Http { generation, route }
    }
    fn validate(&self, validator: &RouteValidator<'_>) -> Result<(), String> {
        validator.validate_http_route(self).map_err(|e| e.to_string())
    }
}

impl RouteModel for GrpcRoute {
    fn with_parents(&self, parents: Vec<RouteParent>) -> Self {
        Self { parents, ..self.clone() }
    }
    fn last(accepted: &AcceptedRoute) -> Option<(i64, &Self)> {
        match accepted {
            AcceptedRoute::Grpc { generation, route } => Some((*generation, route)),
            AcceptedRoute::Http { .. } => None,
        }
    }
    fn accepted(generation: i64, route: Self) -> AcceptedRoute {
        AcceptedRoute::Grpc { generation, route }
    }
    fn validate(&self, validator: &RouteValidator<'_>) -> Result<(), String> {
        validator.validate_grpc_route(self).map_err(|e| e.to_string())
    }
}

/// The parents a route attaches to (those that resolved).
fn accepted_parents(parents: &[(ParentRef, Result<RouteParent, Condition>)]) -> Vec<RouteParent> {
    parents.iter().filter_map(|(_, resolved)| resolved.as_ref().ok().cloned()).collect()
}

/// Settles one translated route: status recorded, last accepted version remembered, and the
/// version to put in the config returned.
#[allow(clippy::too_many_arguments)]
fn conclude<R: RouteModel>(
    key: RouteKey,
    generation: Option<i64>,
    parents: &[(ParentRef, Result<RouteParent, Condition>)],
    translated: R,
    problems: Problems,
    validator: &RouteValidator<'_>,
    last_accepted: &LastAccepted,
    out: &mut TranslatedRoutes,
) -> Option<R> {
    let last = last_accepted.get(&key).and_then(R::last).map(|(g, r)| (g, r.with_parents(accepted_parents(parents))));
    let validate = |route: &R| route.validate(validator);
    let (generation, route) =
        settle(&key, generation, parents, translated, problems, validate, last, &mut out.statuses)?;
    out.last_accepted.insert(key, R::accepted(generation, route.clone()));
    Some(route)
}

/// Routes of a kind, oldest first, then by namespace/name: the spec's tie-breaker between
/// equally specific matches (the proxy breaks ties by order in the snapshot).
fn oldest_first<K: kube::Resource>(routes: &BTreeMap<ObjectRef, K>) -> Vec<(&ObjectRef, &K)> {
    let mut routes: Vec<_> = routes.iter().collect();
    routes.sort_by(|(a_id, a), (b_id, b)| {
        (&a.meta().creation_timestamp, *a_id).cmp(&(&b.meta().creation_timestamp, *b_id))
    });
    routes
}

fn statuses_for(
    generation: Option<i64>,
    parents: &[(ParentRef, Result<RouteParent, Condition>)],
    accepted: &Condition,
    resolved_refs: &Condition,
) -> RouteStatus {
    RouteStatus {
        generation,
        parents: parents
            .iter()
            .map(|(parent_ref, resolved)| ParentStatus {
                parent_ref: parent_ref.clone(),
                accepted: match resolved {
                    Ok(_) => accepted.clone(),
                    Err(condition) => condition.clone(),
                },
                resolved_refs: resolved_refs.clone(),
            })
            .collect(),
    }
}

pub(super) fn translate_routes(
    state: &ClusterState,
    snapshot: &ConfigSnapshot,
    last_accepted: &LastAccepted,
) -> TranslatedRoutes {
    let mut out = TranslatedRoutes {
        http: Vec::new(),
        grpc: Vec::new(),
        statuses: BTreeMap::new(),
        last_accepted: LastAccepted::new(),
    };
    let validator = snapshot.route_validator();
    for (id, route) in oldest_first(&state.http_routes) {
        let key = RouteKey { kind: RouteKind::Http, id: id.clone() };
        let generation = route.metadata.generation;
        let parents = resolve_parents(&validator, &id.namespace, route.spec.parent_refs.as_deref().unwrap_or_default());
        if parents.is_empty() {
            continue;
        }
        let mut resolver = Resolver {
            state,
            services: &validator,
            route_namespace: &id.namespace,
            route_kind: "HTTPRoute",
            problems: Problems::default(),
        };
        let retry = retry_from_annotations(route.metadata.annotations.as_ref()).unwrap_or_else(|problem| {
            resolver.problems.unsupported.push(problem);
            None
        });
        if route.spec.use_default_gateways.is_some() {
            resolver
                .problems
                .unsupported
                .push("spec.useDefaultGateways is not supported (mesh routes attach to Services)".into());
        }
        let rules = route
            .spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, rule)| {
                if rule.session_persistence.is_some() {
                    resolver.problems.unsupported.push(format!("rules[{index}].sessionPersistence is not supported"));
                }
                // The field, where the CRDs keep it (experimental channel), else the annotations.
                let retry = match &rule.retry {
                    None => retry.clone(),
                    Some(field) => {
                        if retry.is_some() {
                            tracing::info!(route = %id, rule = index, "rules[].retry is set: the retry annotations do not apply to this rule");
                        }
                        retry_from_field(field).map(Some).unwrap_or_else(|problem| {
                            resolver.problems.unsupported.push(format!("rules[{index}].{problem}"));
                            None
                        })
                    }
                };
                let before = resolver.problems.unresolved.len();
                let filters: Vec<HttpFilter> =
                    rule.filters.iter().flatten().filter_map(|f| resolver.filter(f)).collect();
                let filters_failed = resolver.problems.unresolved.len() > before;
                let backends = resolver.rule_backends(rule.backend_refs.as_ref(), before, filters_failed);
                let matches = match rule.matches.as_deref() {
                    None | Some([]) => vec![http_match(&HttpRouteRulesMatches::default())],
                    Some(matches) => matches.iter().map(http_match).collect(),
                };
                HttpRouteRule {
                    name: rule.name.clone(),
                    matches,
                    filters,
                    backends,
                    timeouts: resolver.timeouts(rule.timeouts.as_ref()),
                    retry,
                }
            })
            .collect();
        let translated = HttpRoute {
            id: id.clone(),
            parents: accepted_parents(&parents),
            hostnames: route.spec.hostnames.clone().unwrap_or_default(),
            rules,
        };
        let problems = std::mem::take(&mut resolver.problems);
        if let Some(route) =
            conclude(key, generation, &parents, translated, problems, &validator, last_accepted, &mut out)
        {
            out.http.push(route);
        }
    }

    for (id, route) in oldest_first(&state.grpc_routes) {
        let key = RouteKey { kind: RouteKind::Grpc, id: id.clone() };
        let generation = route.metadata.generation;
        let parent_refs: Vec<HttpRouteParentRefs> =
            route.spec.parent_refs.iter().flatten().filter_map(reshape).collect();
        let parents = resolve_parents(&validator, &id.namespace, &parent_refs);
        if parents.is_empty() {
            continue;
        }
        let mut resolver = Resolver {
            state,
            services: &validator,
            route_namespace: &id.namespace,
            route_kind: "GRPCRoute",
            problems: Problems::default(),
        };
        if route.spec.use_default_gateways.is_some() {
            resolver
                .problems
                .unsupported
                .push("spec.useDefaultGateways is not supported (mesh routes attach to Services)".into());
        }
        for (index, rule) in route.spec.rules.iter().flatten().enumerate() {
            if rule.session_persistence.is_some() {
                resolver.problems.unsupported.push(format!("rules[{index}].sessionPersistence is not supported"));
            }
        }
        let rules = route
            .spec
            .rules
            .iter()
            .flatten()
            .map(|rule| {
                let before = resolver.problems.unresolved.len();
                let filters: Vec<HttpFilter> = rule
                    .filters
                    .iter()
                    .flatten()
                    .filter_map(reshape::<_, HttpRouteRulesFilters>)
                    .filter_map(|f| resolver.filter(&f))
                    .collect();
                let filters_failed = resolver.problems.unresolved.len() > before;
                let backend_refs: Option<Vec<HttpRouteRulesBackendRefs>> =
                    rule.backend_refs.as_ref().map(|refs| refs.iter().filter_map(reshape).collect());
                let backends = resolver.rule_backends(backend_refs.as_ref(), before, filters_failed);
                let matches = rule
                    .matches
                    .iter()
                    .flatten()
                    .map(|m| GrpcRouteMatch {
                        method: m.method.as_ref().map(|method| GrpcMethodMatch {
                            kind: match method.r#type.as_ref().map(enum_text).as_deref() {
                                Some("RegularExpression") => MatchKind::RegularExpression,
                                _ => MatchKind::Exact,
                            },
                            service: method.service.clone(),
                            method: method.method.clone(),
                        }),
                        headers: m
                            .headers
                            .iter()
                            .flatten()
                            .map(|h| HeaderMatch {
                                name: h.name.clone(),
                                value: string_match(&h.r#type.as_ref().map(enum_text).unwrap_or_default(), &h.value),
                            })
                            .collect(),
                    })
                    .collect();
                GrpcRouteRule { name: rule.name.clone(), matches, filters, backends }
            })
            .collect();
        let translated = GrpcRoute {
            id: id.clone(),
            parents: accepted_parents(&parents),
            hostnames: route.spec.hostnames.clone().unwrap_or_default(),
            rules,
        };
        let problems = std::mem::take(&mut resolver.problems);
        if let Some(route) =
            conclude(key, generation, &parents, translated, problems, &validator, last_accepted, &mut out)
        {
            out.grpc.push(route);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_reads_grpc_shapes_as_http_shapes() {
        let grpc: gateway_api::apis::experimental::grpcroutes::GrpcRouteRulesFilters = serde_json::from_value(
            serde_json::json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}),
        )
        .unwrap();
        let http: HttpRouteRulesFilters = reshape(&grpc).unwrap();
        assert_eq!(http.request_header_modifier.unwrap().set.unwrap()[0].name, "a");
    }
}
