//! HTTPRoute matching with the spec's precedence:
//! exact path > (implementation-specific) regular-expression path > longest path prefix; then a
//! method match; then the most header matches; then the most query matches; then route order
//! (oldest, then namespace/name, as the snapshot lists routes); then rule order.

use super::{hostname_matches, CompiledRule, RouteMatch};
use http::{HeaderMap, HeaderName, Method};
use nodus_config::{HttpRouteMatch, HttpRouteRule, PathMatch, StringMatch};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;

/// The parts of a request that routing reads.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Host (HTTP/1.1 `Host` or HTTP/2 `:authority`).
    pub host: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// Reads the view from a request.
    pub fn of<B>(request: &'a http::Request<B>) -> Self {
        let uri = request.uri();
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()));
        Self { method: request.method(), path: uri.path(), query: uri.query(), host, headers: request.headers() }
    }
}

#[derive(Debug)]
pub(crate) enum ValueMatcher {
    Exact(Box<str>),
    Regex(Regex),
}

impl ValueMatcher {
    pub(crate) fn compile(value: &StringMatch) -> Result<Self, regex::Error> {
        Ok(match value {
            StringMatch::Exact(v) => Self::Exact(v.as_str().into()),
            StringMatch::RegularExpression(pattern) => Self::Regex(whole(pattern)?),
        })
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(expected) => &**expected == value,
            Self::Regex(regex) => regex.is_match(value),
        }
    }
}

/// Compiles a regular expression that must match the whole value.
pub(crate) fn whole(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

pub(crate) fn headers_match(conditions: &[(HeaderName, ValueMatcher)], headers: &HeaderMap) -> bool {
    conditions
        .iter()
        .all(|(name, matcher)| headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| matcher.matches(v)))
}

pub(crate) fn compile_headers(
    headers: &[nodus_config::HeaderMatch],
) -> Result<Vec<(HeaderName, ValueMatcher)>, regex::Error> {
    headers
        .iter()
        .filter_map(|h| HeaderName::try_from(h.name.as_str()).ok().map(|name| (name, &h.value)))
        .map(|(name, value)| Ok((name, ValueMatcher::compile(value)?)))
        .collect()
}

/// One (route, rule, match) triple, compiled.
#[derive(Debug)]
struct HttpEntry<B> {
    hostnames: Arc<[Box<str>]>,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(Box<str>, ValueMatcher)>,
    /// For prefix entries, the normalised prefix.
    prefix: Option<Arc<str>>,
    rule: Arc<CompiledRule<B>>,
    /// (has method, header count, query count) descending, then route order, rule, match ascending.
    rank: (bool, usize, usize, usize, usize, usize),
}

impl<B> HttpEntry<B> {
    fn sort_key(&self) -> impl Ord {
        let (method, headers, query, route, rule, index) = self.rank;
        (std::cmp::Reverse((method, headers, query)), route, rule, index)
    }

    fn conditions_match(&self, request: &RequestView<'_>) -> bool {
        if let Some(method) = &self.method {
            if method != request.method {
                return false;
            }
        }
        hostname_matches(&self.hostnames, request.host)
            && headers_match(&self.headers, request.headers)
            && self
                .query
                .iter()
                .all(|(name, matcher)| query_value(request.query, name).is_some_and(|value| matcher.matches(&value)))
    }
}

/// The first value of query parameter `name`, percent-decoded.
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_encoding::percent_decode_str(value).decode_utf8_lossy())
    })
}

/// `/foo/` and `/foo` are the same prefix: prefixes match whole path elements.
fn normalise_prefix(prefix: &str) -> &str {
    if prefix.len() > 1 {
        prefix.trim_end_matches('/')
    } else {
        prefix
    }
}

/// The HTTPRoute rules of one audience on one Service port.
#[derive(Debug)]
pub struct HttpRouteSet<B> {
    exact: HashMap<Box<str>, Vec<HttpEntry<B>>>,
    regex: Vec<(Regex, HttpEntry<B>)>,
    prefix: HashMap<Box<str>, Vec<HttpEntry<B>>>,
}

impl<B> Default for HttpRouteSet<B> {
    fn default() -> Self {
        Self { exact: HashMap::new(), regex: Vec::new(), prefix: HashMap::new() }
    }
}

impl<B> HttpRouteSet<B> {
    /// Whether no HTTPRoute applies.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.regex.is_empty() && self.prefix.is_empty()
    }

    /// The rule that handles `request`, if any.
    pub fn find<'t>(&'t self, request: &RequestView<'_>) -> Option<RouteMatch<'t, B>> {
        let found = |entry: &'t HttpEntry<B>| RouteMatch { rule: &entry.rule, matched_prefix: entry.prefix.as_ref() };
        if let Some(entries) = self.exact.get(request.path) {
            if let Some(entry) = entries.iter().find(|e| e.conditions_match(request)) {
                return Some(found(entry));
            }
        }
        if let Some((_, entry)) =
            self.regex.iter().find(|(regex, entry)| regex.is_match(request.path) && entry.conditions_match(request))
        {
            return Some(found(entry));
        }
        // Walk the request path's element boundaries from the longest candidate to "/".
        let mut candidate = normalise_prefix(request.path);
        loop {
            if let Some(entries) = self.prefix.get(candidate) {
                if let Some(entry) = entries.iter().find(|e| e.conditions_match(request)) {
                    return Some(found(entry));
                }
            }
            match candidate.rfind('/') {
                _ if candidate == "/" => return None,
                Some(0) => candidate = "/",
                Some(cut) => candidate = &candidate[..cut],
                None => return None,
            }
        }
    }
}

/// Collects the entries of an [`HttpRouteSet`] before they are sorted by precedence.
#[derive(Debug)]
pub(crate) struct HttpSetBuilder<B> {
    set: HttpRouteSet<B>,
}

impl<B> Default for HttpSetBuilder<B> {
    fn default() -> Self {
        Self { set: HttpRouteSet::default() }
    }
}

impl<B> HttpSetBuilder<B> {
    pub(crate) fn add_rule(
        &mut self,
        route_order: usize,
        hostnames: &[String],
        rule: &HttpRouteRule,
        compiled: &Arc<CompiledRule<B>>,
    ) -> Result<(), regex::Error> {
        let hostnames: Arc<[Box<str>]> = hostnames.iter().map(|h| Box::from(h.as_str())).collect();
        let default_match = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches[..] };
        for (match_index, m) in matches.iter().enumerate() {
            let mut entry = HttpEntry {
                hostnames: hostnames.clone(),
                method: m.method.as_deref().and_then(|x| Method::from_bytes(x.as_bytes()).ok()),
                headers: compile_headers(&m.headers)?,
                query: m
                    .query_params
                    .iter()
                    .map(|q| Ok((Box::from(q.name.as_str()), ValueMatcher::compile(&q.value)?)))
                    .collect::<Result<_, regex::Error>>()?,
                prefix: None,
                rule: compiled.clone(),
                rank: (
                    m.method.is_some(),
                    m.headers.len(),
                    m.query_params.len(),
                    route_order,
                    compiled.rule_index,
                    match_index,
                ),
            };
            match m.path.clone().unwrap_or(PathMatch::PathPrefix("/".into())) {
                PathMatch::Exact(path) => self.set.exact.entry(path.into()).or_default().push(entry),
                PathMatch::RegularExpression(pattern) => self.set.regex.push((whole(&pattern)?, entry)),
                PathMatch::PathPrefix(prefix) => {
                    let key: Box<str> = normalise_prefix(&prefix).into();
                    entry.prefix = Some(Arc::from(&*key));
                    self.set.prefix.entry(key).or_default().push(entry);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn build(self) -> HttpRouteSet<B> {
        let mut set = self.set;
        for entries in set.exact.values_mut().chain(set.prefix.values_mut()) {
            entries.sort_by_key(|e| e.sort_key());
        }
        set.regex.sort_by_key(|(_, e)| e.sort_key());
        set
    }
}
