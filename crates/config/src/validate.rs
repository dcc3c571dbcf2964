//! Whole-snapshot validation: a snapshot either passes every check or is rejected with the first
//! problem found, so a proxy never installs half of a bad config.

use crate::{
    BackendRef, ConfigSnapshot, GrpcRoute, HeaderMatch, HttpFilter, HttpRoute, MatchKind, ObjectRef, PathMatch,
    PathModifier, QueryParamMatch, RouteParent, Service, StringMatch,
};
use std::collections::{HashMap, HashSet};
use thiserror::Error;

/// Why a snapshot was rejected. The text names the object and field so it can be sent back to the
/// controller in a NACK and shown to a user as is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// The trust roots are malformed: not PEM certificates, repeated, or more than one signing.
    #[error("trust roots: {0}")]
    TrustRoots(String),
    /// Two objects of the same kind share a namespace/name.
    #[error("duplicate {kind} {id}")]
    Duplicate {
        /// Object kind.
        kind: &'static str,
        /// The repeated name.
        id: ObjectRef,
    },
    /// A route names a parent or backend Service the snapshot does not hold.
    #[error("{route}: {what} refers to service {service}, which is not in the config")]
    UnknownService {
        /// The referring route.
        route: ObjectRef,
        /// Which reference.
        what: &'static str,
        /// The missing Service.
        service: ObjectRef,
    },
    /// A route names a port the Service does not expose.
    #[error("{route}: {what} refers to port {port} of service {service}, which does not expose it")]
    UnknownPort {
        /// The referring route.
        route: ObjectRef,
        /// Which reference.
        what: &'static str,
        /// The Service.
        service: ObjectRef,
        /// The missing port.
        port: u16,
    },
    /// A field holds a value the spec does not allow.
    #[error("{route}: rule {rule}: {message}")]
    InvalidRule {
        /// The route.
        route: ObjectRef,
        /// Zero-based rule index.
        rule: usize,
        /// What is wrong and where.
        message: String,
    },
    /// An authorization policy holds a value that cannot match anything sensible.
    #[error("AuthorizationPolicy {policy}: rule {rule}: {message}")]
    InvalidPolicy {
        /// The policy.
        policy: ObjectRef,
        /// Zero-based rule index.
        rule: usize,
        /// What is wrong.
        message: String,
    },
    /// A route has no parent Service.
    #[error("{route}: a route must attach to at least one service")]
    NoParents {
        /// The route.
        route: ObjectRef,
    },
}

/// Retries beyond this are a misconfiguration that multiplies load, not resilience.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

impl ConfigSnapshot {
    /// Checks every cross-reference and value in the snapshot.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let routes = self.route_validator();
        let mut seen = HashSet::new();
        for service in &self.services {
            if !seen.insert(&service.id) {
                return Err(ValidationError::Duplicate { kind: "service", id: service.id.clone() });
            }
        }
        let mut seen = HashSet::new();
        for node in &self.nodes {
            if !seen.insert(&node.name) {
                return Err(ValidationError::Duplicate { kind: "node", id: ObjectRef::new("", node.name.clone()) });
            }
        }
        let mut seen = HashSet::new();
        for workload in &self.workloads {
            if !seen.insert(&workload.id) {
                return Err(ValidationError::Duplicate { kind: "workload", id: workload.id.clone() });
            }
        }
        let mut seen = HashSet::new();
        for policy in &self.authorization_policies {
            if !seen.insert(&policy.id) {
                return Err(ValidationError::Duplicate { kind: "AuthorizationPolicy", id: policy.id.clone() });
            }
            check_authorization_policy(policy)?;
        }
        check_trust_roots(&self.trust_roots)?;
        let mut seen = HashSet::new();
        for route in &self.http_routes {
            if !seen.insert(&route.id) {
                return Err(ValidationError::Duplicate { kind: "HTTPRoute", id: route.id.clone() });
            }
            routes.validate_http_route(route)?;
        }
        let mut seen = HashSet::new();
        for route in &self.grpc_routes {
            if !seen.insert(&route.id) {
                return Err(ValidationError::Duplicate { kind: "GRPCRoute", id: route.id.clone() });
            }
            routes.validate_grpc_route(route)?;
        }
        Ok(())
    }

    /// A validator of routes against this snapshot's Services, indexed once (validating 1,000
    /// routes must not search 1,000 Services for each reference).
    pub fn route_validator(&self) -> RouteValidator<'_> {
        RouteValidator { services: self.services.iter().map(|s| (&s.id, s)).collect() }
    }
}

/// Checks routes against a snapshot's Services; see [`ConfigSnapshot::route_validator`].
#[derive(Debug)]
pub struct RouteValidator<'s> {
    services: HashMap<&'s ObjectRef, &'s Service>,
}

impl<'s> RouteValidator<'s> {
    /// The Service with this namespace/name.
    pub fn service(&self, id: &ObjectRef) -> Option<&'s Service> {
        self.services.get(id).copied()
    }

    fn validate_parents(&self, route: &ObjectRef, parents: &[RouteParent]) -> Result<(), ValidationError> {
        if parents.is_empty() {
            return Err(ValidationError::NoParents { route: route.clone() });
        }
        for parent in parents {
            self.check_service_port(route, "parentRef", &parent.service, parent.port)?;
        }
        Ok(())
    }

    fn check_service_port(
        &self,
        route: &ObjectRef,
        what: &'static str,
        service_id: &ObjectRef,
        port: Option<u16>,
    ) -> Result<(), ValidationError> {
        let service = self.services.get(service_id).copied().ok_or_else(|| ValidationError::UnknownService {
            route: route.clone(),
            what,
            service: service_id.clone(),
        })?;
        match port {
            Some(port) if service.port(port).is_none() => {
                Err(ValidationError::UnknownPort { route: route.clone(), what, service: service_id.clone(), port })
            }
            _ => Ok(()),
        }
    }

    fn validate_backends(
        &self,
        route: &ObjectRef,
        rule: usize,
        backends: &[BackendRef],
    ) -> Result<(), ValidationError> {
        for backend in backends {
            // An unresolved reference is legitimate config: the proxy answers its share with 500.
            if backend.unresolved.is_none() {
                self.check_service_port(route, "backendRef", &backend.service, Some(backend.port))?;
            }
            for filter in &backend.filters {
                self.validate_filter(route, rule, filter, false)?;
            }
        }
        Ok(())
    }

    fn validate_filter(
        &self,
        route: &ObjectRef,
        rule: usize,
        filter: &HttpFilter,
        prefix_matched: bool,
    ) -> Result<(), ValidationError> {
        let invalid = |message: String| ValidationError::InvalidRule { route: route.clone(), rule, message };
        match filter {
            HttpFilter::RequestHeaderModifier(m) | HttpFilter::ResponseHeaderModifier(m) => {
                let names =
                    m.set.iter().chain(&m.add).map(|nv| nv.name.as_str()).chain(m.remove.iter().map(String::as_str));
                for name in names {
                    check_header_name(name).map_err(&invalid)?;
                }
                for nv in m.set.iter().chain(&m.add) {
                    if nv.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        return Err(invalid(format!("header {} has a value with CR, LF or NUL", nv.name)));
                    }
                }
            }
            HttpFilter::RequestRedirect(redirect) => {
                if !matches!(redirect.status_code, 301 | 302 | 303 | 307 | 308) {
                    return Err(invalid(format!(
                        "redirect statusCode {} is not one of 301, 302, 303, 307, 308",
                        redirect.status_code
                    )));
                }
                if let Some(scheme) = &redirect.scheme {
                    if scheme != "http" && scheme != "https" {
                        return Err(invalid(format!("redirect scheme {scheme:?} is not http or https")));
                    }
                }
                check_path_modifier(redirect.path.as_ref(), prefix_matched).map_err(&invalid)?;
            }
            HttpFilter::UrlRewrite(rewrite) => {
                check_path_modifier(rewrite.path.as_ref(), prefix_matched).map_err(&invalid)?;
            }
            HttpFilter::RequestMirror { backend } => {
                self.check_service_port(route, "RequestMirror backendRef", &backend.service, Some(backend.port))?;
            }
        }
        Ok(())
    }

    /// Checks one HTTPRoute against the snapshot's Services (what a controller checks route by route).
    pub fn validate_http_route(&self, route: &HttpRoute) -> Result<(), ValidationError> {
        self.validate_parents(&route.id, &route.parents)?;
        for (index, rule) in route.rules.iter().enumerate() {
            let invalid =
                |message: String| ValidationError::InvalidRule { route: route.id.clone(), rule: index, message };
            for m in &rule.matches {
                if let Some(path) = &m.path {
                    check_path_match(path).map_err(&invalid)?;
                }
                check_header_matches(&m.headers).map_err(&invalid)?;
                check_query_matches(&m.query_params).map_err(&invalid)?;
                if let Some(method) = &m.method {
                    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(invalid(format!("method {method:?} is not an upper-case HTTP method")));
                    }
                }
            }
            // ReplacePrefixMatch needs every match of the rule to be a PathPrefix match (the spec).
            let prefix_matched = !rule.matches.is_empty()
                && rule.matches.iter().all(|m| matches!(m.path, Some(PathMatch::PathPrefix(_))));
            let redirects = rule.filters.iter().filter(|f| matches!(f, HttpFilter::RequestRedirect(_))).count();
            let rewrites = rule.filters.iter().filter(|f| matches!(f, HttpFilter::UrlRewrite(_))).count();
            if redirects > 0 && rewrites > 0 {
                return Err(invalid("RequestRedirect and URLRewrite cannot be used together".into()));
            }
            if redirects > 1 || rewrites > 1 {
                return Err(invalid("RequestRedirect and URLRewrite may each appear once".into()));
            }
            if redirects > 0 && !rule.backends.is_empty() {
                return Err(invalid("a rule with RequestRedirect cannot have backendRefs".into()));
            }
            for filter in &rule.filters {
                self.validate_filter(&route.id, index, filter, prefix_matched)?;
            }
            self.validate_backends(&route.id, index, &rule.backends)?;
            if let Some(timeouts) = &rule.timeouts {
                if let (Some(request), Some(backend)) = (timeouts.request, timeouts.backend_request) {
                    if backend > request && !request.as_duration().is_zero() {
                        return Err(invalid(format!(
                            "backendRequest timeout {backend} exceeds the request timeout {request}"
                        )));
                    }
                }
            }
            if let Some(retry) = &rule.retry {
                if retry.attempts > MAX_RETRY_ATTEMPTS {
                    return Err(invalid(format!(
                        "retry attempts {} exceed the maximum of {MAX_RETRY_ATTEMPTS}",
                        retry.attempts
                    )));
                }
                // GEP-1731's range: 4xx as well as 5xx may be retried.
                if let Some(code) = retry.codes.iter().find(|c| !(400..=599).contains(*c)) {
                    return Err(invalid(format!("retry code {code} is not a status from 400 to 599")));
                }
            }
        }
        Ok(())
    }

    /// Checks one GRPCRoute against the snapshot's Services.
    pub fn validate_grpc_route(&self, route: &GrpcRoute) -> Result<(), ValidationError> {
        self.validate_parents(&route.id, &route.parents)?;
        for (index, rule) in route.rules.iter().enumerate() {
            let invalid =
                |message: String| ValidationError::InvalidRule { route: route.id.clone(), rule: index, message };
            for m in &rule.matches {
                if let Some(method) = &m.method {
                    if method.service.is_none() && method.method.is_none() {
                        return Err(invalid("a gRPC method match needs a service, a method or both".into()));
                    }
                    if method.kind == MatchKind::RegularExpression {
                        for pattern in method.service.iter().chain(&method.method) {
                            check_regex(pattern).map_err(&invalid)?;
                        }
                    }
                }
                check_header_matches(&m.headers).map_err(&invalid)?;
            }
            for filter in &rule.filters {
                if matches!(filter, HttpFilter::RequestRedirect(_) | HttpFilter::UrlRewrite(_)) {
                    return Err(invalid("GRPCRoute supports header modifier and mirror filters only".into()));
                }
                self.validate_filter(&route.id, index, filter, false)?;
            }
            self.validate_backends(&route.id, index, &rule.backends)?;
        }
        Ok(())
    }
}

fn check_regex(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern).map(drop).map_err(|e| format!("regular expression {pattern:?} does not compile: {e}"))
}

fn check_path_match(path: &PathMatch) -> Result<(), String> {
    match path {
        PathMatch::Exact(value) | PathMatch::PathPrefix(value) => {
            if !value.starts_with('/') {
                return Err(format!("path {value:?} must start with '/'"));
            }
            if value.contains("//") || value.contains("/./") || value.contains("/../") || value.contains(['?', '#']) {
                return Err(format!("path {value:?} must not contain '//', '/./', '/../', '?' or '#'"));
            }
            Ok(())
        }
        PathMatch::RegularExpression(pattern) => check_regex(pattern),
    }
}

fn check_path_modifier(path: Option<&PathModifier>, prefix_matched: bool) -> Result<(), String> {
    match path {
        Some(PathModifier::ReplacePrefixMatch(value)) if !prefix_matched => {
            Err(format!("ReplacePrefixMatch {value:?} requires every match of the rule to be a PathPrefix match"))
        }
        Some(PathModifier::ReplacePrefixMatch(value) | PathModifier::ReplaceFullPath(value))
            if !value.starts_with('/') =>
        {
            Err(format!("replacement path {value:?} must start with '/'"))
        }
        _ => Ok(()),
    }
}

fn check_string_match(value: &StringMatch) -> Result<(), String> {
    match value {
        StringMatch::Exact(_) => Ok(()),
        StringMatch::RegularExpression(pattern) => check_regex(pattern),
    }
}

fn check_header_matches(headers: &[HeaderMatch]) -> Result<(), String> {
    let mut names = HashSet::new();
    for header in headers {
        check_header_name(&header.name)?;
        // The spec keeps only the first of several matches on one name; the controller drops the
        // rest when it translates, so a repeat here means a broken producer.
        if !names.insert(header.name.to_ascii_lowercase()) {
            return Err(format!("header {} is matched more than once", header.name));
        }
        check_string_match(&header.value)?;
    }
    Ok(())
}

fn check_query_matches(params: &[QueryParamMatch]) -> Result<(), String> {
    let mut names = HashSet::new();
    for param in params {
        if param.name.is_empty() {
            return Err("query parameter name is empty".into());
        }
        if !names.insert(param.name.as_str()) {
            return Err(format!("query parameter {} is matched more than once", param.name));
        }
        check_string_match(&param.value)?;
    }
    Ok(())
}

/// RFC 9110 token characters.
fn check_header_name(name: &str) -> Result<(), String> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

fn check_authorization_policy(policy: &crate::AuthorizationPolicy) -> Result<(), ValidationError> {
    for (index, rule) in policy.rules.iter().enumerate() {
        rule.check().map_err(|message| ValidationError::InvalidPolicy {
            policy: policy.id.clone(),
            rule: index,
            message,
        })?;
    }
    Ok(())
}

impl crate::AuthorizationRule {
    /// Whether the rule is one proxies accept; the reason if not. The controller checks each
    /// rule with this before sending it (see its policy translation), proxies on every apply.
    pub fn check(&self) -> Result<(), String> {
        if let Some(identity) = self.identities.iter().find(|i| !i.starts_with("spiffe://")) {
            return Err(format!("identity {identity:?} is not a SPIFFE ID (spiffe://...)"));
        }
        if let Some(path) = self.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("path {path:?} must start with '/'"));
        }
        if let Some(method) = self.methods.iter().find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(format!("method {method:?} is not an upper-case HTTP method"));
        }
        if self.ports.contains(&0) {
            return Err("port 0".to_string());
        }
        Ok(())
    }
}

/// The shape of the trust roots; the proxy parses the certificates themselves when it compiles.
fn check_trust_roots(roots: &[crate::TrustRoot]) -> Result<(), ValidationError> {
    let mut seen = HashSet::new();
    for root in roots {
        let pem = root.certificate_pem.trim();
        if !pem.starts_with("-----BEGIN CERTIFICATE-----") || !pem.ends_with("-----END CERTIFICATE-----") {
            return Err(ValidationError::TrustRoots("a root is not one PEM certificate".to_string()));
        }
        if pem.matches("-----BEGIN CERTIFICATE-----").count() != 1 {
            return Err(ValidationError::TrustRoots("a root holds more than one certificate".to_string()));
        }
        if !seen.insert(pem) {
            return Err(ValidationError::TrustRoots("a root is listed twice".to_string()));
        }
    }
    if roots.iter().filter(|r| r.signing).count() > 1 {
        return Err(ValidationError::TrustRoots("more than one root is marked signing".to_string()));
    }
    Ok(())
}
