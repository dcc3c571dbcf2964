//! GRPCRoute matching. Precedence (Gateway API): the most characters in a matching exact service,
//! then in a matching exact method, then the most header matches; then route order; then rule
//! order. Regular-expression service/method matches count as zero characters.

use super::http_route::{compile_headers, headers_match, whole, ValueMatcher};
use super::{hostname_matches, CompiledRule, RequestView, RouteMatch};
use http::HeaderName;
use nodus_config::{GrpcRouteMatch, GrpcRouteRule, MatchKind};
use std::sync::Arc;

#[derive(Debug)]
struct GrpcEntry<B> {
    hostnames: Arc<[Box<str>]>,
    service: Option<ValueMatcher>,
    method: Option<ValueMatcher>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    rule: Arc<CompiledRule<B>>,
    rank: (usize, usize, usize, usize, usize, usize),
}

impl<B> GrpcEntry<B> {
    fn matches(&self, service: &str, method: &str, request: &RequestView<'_>) -> bool {
        self.service.as_ref().is_none_or(|m| m.matches(service))
            && self.method.as_ref().is_none_or(|m| m.matches(method))
            && hostname_matches(&self.hostnames, request.host)
            && headers_match(&self.headers, request.headers)
    }
}

/// The GRPCRoute rules of one audience on one Service port.
#[derive(Debug)]
pub struct GrpcRouteSet<B> {
    entries: Vec<GrpcEntry<B>>,
}

impl<B> Default for GrpcRouteSet<B> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<B> GrpcRouteSet<B> {
    /// Whether no GRPCRoute applies.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The rule for a gRPC call (`/package.Service/Method` path), if any.
    pub fn find<'t>(&'t self, request: &RequestView<'_>) -> Option<RouteMatch<'t, B>> {
        let (service, method) = request.path.strip_prefix('/')?.split_once('/')?;
        self.entries
            .iter()
            .find(|e| e.matches(service, method, request))
            .map(|e| RouteMatch { rule: &e.rule, matched_prefix: None })
    }
}

/// Collects the entries of a [`GrpcRouteSet`] before they are sorted by precedence.
#[derive(Debug)]
pub(crate) struct GrpcSetBuilder<B> {
    entries: Vec<GrpcEntry<B>>,
}

impl<B> Default for GrpcSetBuilder<B> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<B> GrpcSetBuilder<B> {
    pub(crate) fn add_rule(
        &mut self,
        route_order: usize,
        hostnames: &[String],
        rule: &GrpcRouteRule,
        compiled: &Arc<CompiledRule<B>>,
    ) -> Result<(), regex::Error> {
        let hostnames: Arc<[Box<str>]> = hostnames.iter().map(|h| Box::from(h.as_str())).collect();
        let default_match = [GrpcRouteMatch::default()];
        let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches[..] };
        for (match_index, m) in matches.iter().enumerate() {
            let (service, method, service_chars, method_chars) = match &m.method {
                None => (None, None, 0, 0),
                Some(mm) => {
                    let compile = |value: &Option<String>| -> Result<Option<ValueMatcher>, regex::Error> {
                        value
                            .as_deref()
                            .map(|v| match mm.kind {
                                MatchKind::Exact => Ok(ValueMatcher::Exact(v.into())),
                                MatchKind::RegularExpression => Ok(ValueMatcher::Regex(whole(v)?)),
                            })
                            .transpose()
                    };
                    let exact_len = |value: &Option<String>| match mm.kind {
                        MatchKind::Exact => value.as_ref().map_or(0, String::len),
                        MatchKind::RegularExpression => 0,
                    };
                    (compile(&mm.service)?, compile(&mm.method)?, exact_len(&mm.service), exact_len(&mm.method))
                }
            };
            self.entries.push(GrpcEntry {
                hostnames: hostnames.clone(),
                service,
                method,
                headers: compile_headers(&m.headers)?,
                rule: compiled.clone(),
                rank: (service_chars, method_chars, m.headers.len(), route_order, compiled.rule_index, match_index),
            });
        }
        Ok(())
    }

    pub(crate) fn build(mut self) -> GrpcRouteSet<B> {
        self.entries.sort_by_key(|e| {
            let (service, method, headers, route, rule, index) = e.rank;
            (std::cmp::Reverse((service, method, headers)), route, rule, index)
        });
        GrpcRouteSet { entries: self.entries }
    }
}
