//! L7 routes: HTTPRoute and GRPCRoute as attached to Services in the GAMMA mesh model.
//!
//! The shapes follow Gateway API v1 closely so that translation is mostly a copy, and so that a
//! reader who knows the spec can read a config dump. Routes in a snapshot are listed in the
//! spec's tie-break order (oldest creation timestamp first, then `namespace/name`): the proxy uses
//! the list position as the last tie-breaker between equally specific matches.

use crate::{GatewayDuration, ObjectRef};
use serde::{Deserialize, Serialize};

/// The Service (and optionally one of its ports) a route attaches to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteParent {
    /// The parent Service.
    pub service: ObjectRef,
    /// The Service port the route applies to; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// An HTTPRoute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// The route's namespace and name.
    pub id: ObjectRef,
    /// The Services it is attached to.
    pub parents: Vec<RouteParent>,
    /// Host names the route matches (the `Host` header); any host when empty.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules, in the order written.
    pub rules: Vec<HttpRouteRule>,
}

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// The rule's name (Gateway API `sectionName`), used as a metric label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one match selects the rule; an empty list matches every request (`PathPrefix /`).
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters applied to matching requests, in order.
    #[serde(default)]
    pub filters: Vec<HttpFilter>,
    /// Weighted backends; a rule with none (and no redirect) answers 500.
    #[serde(default)]
    pub backends: Vec<BackendRef>,
    /// Request and per-attempt timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    /// Retry policy (GEP-1731).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// The conditions of one HTTPRoute match; all must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Path condition; `PathPrefix /` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: Vec<QueryParamMatch>,
    /// HTTP method condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    /// The path equals the value.
    Exact(String),
    /// The path starts with the value, on `/`-separated element boundaries.
    PathPrefix(String),
    /// The path matches the regular expression as a whole.
    RegularExpression(String),
}

/// A string condition used by header and query parameter matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum StringMatch {
    /// The value is equal.
    Exact(String),
    /// The value matches the regular expression as a whole.
    RegularExpression(String),
}

/// A header condition (names compare case-insensitively).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// Condition on the header's value.
    #[serde(rename = "match")]
    pub value: StringMatch,
}

/// A query parameter condition (names compare exactly).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryParamMatch {
    /// Parameter name.
    pub name: String,
    /// Condition on the parameter's value.
    #[serde(rename = "match")]
    pub value: StringMatch,
}

/// A request or response filter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "PascalCase")]
pub enum HttpFilter {
    /// Set, add or remove request headers before forwarding.
    RequestHeaderModifier(HeaderModifier),
    /// Set, add or remove response headers before answering.
    ResponseHeaderModifier(HeaderModifier),
    /// Answer with a redirect instead of forwarding.
    RequestRedirect(RedirectFilter),
    /// Rewrite host and/or path before forwarding.
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewriteFilter),
    /// Send a copy of the request to another backend and ignore its answer.
    RequestMirror {
        /// Where the copies go.
        backend: BackendRef,
    },
}

/// Header edits, applied as remove, then set, then add (the order the spec implies).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Headers to overwrite.
    #[serde(default)]
    pub set: Vec<NameValue>,
    /// Headers to append.
    #[serde(default)]
    pub add: Vec<NameValue>,
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// A `RequestRedirect` filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectFilter {
    /// New scheme (`http` or `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Redirect status code (301, 302, 303, 307 or 308).
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// A `URLRewrite` filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewriteFilter {
    /// New `Host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the part the rule's `PathPrefix` matched (only valid with a prefix match).
    ReplacePrefixMatch(String),
}

/// A weighted reference to a Service port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// The backend Service.
    pub service: ObjectRef,
    /// The Service port.
    pub port: u16,
    /// Relative weight among the rule's backends; 0 takes no traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Filters applied only when this backend is chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpFilter>,
    /// Set by the controller when the reference cannot be used (the Service does not exist, or a
    /// cross-namespace reference no ReferenceGrant permits): the text says why. The backend keeps
    /// its weight and the requests it would get are answered 500, as Gateway API requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// Timeouts of a rule (Gateway API `HTTPRouteTimeouts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTimeouts {
    /// Whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<GatewayDuration>,
    /// Each attempt to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<GatewayDuration>,
}

/// A retry policy (GEP-1731).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Response codes that trigger a retry (400-599, as GEP-1731); connection errors always do.
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Maximum number of retries after the first attempt.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Base backoff between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<GatewayDuration>,
}

fn default_attempts() -> u32 {
    1
}

/// A GRPCRoute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRoute {
    /// The route's namespace and name.
    pub id: ObjectRef,
    /// The Services it is attached to.
    pub parents: Vec<RouteParent>,
    /// Host names the route matches; any host when empty.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules, in the order written.
    pub rules: Vec<GrpcRouteRule>,
}

/// One rule of a GRPCRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    /// The rule's name, used as a metric label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one match selects the rule; an empty list matches every call.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters (header modifiers and mirrors).
    #[serde(default)]
    pub filters: Vec<HttpFilter>,
    /// Weighted backends.
    #[serde(default)]
    pub backends: Vec<BackendRef>,
}

/// The conditions of one GRPCRoute match; all must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// Service/method condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    /// Header (metadata) conditions.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// Whether a gRPC method match compares exactly or by regular expression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchKind {
    /// Exact comparison.
    #[default]
    Exact,
    /// Whole-value regular expression.
    RegularExpression,
}

/// A gRPC service/method condition; at least one of the two is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` or `RegularExpression` semantics for both fields.
    #[serde(default, rename = "type")]
    pub kind: MatchKind,
    /// Fully qualified service, e.g. `nodus.echo.v1.Echo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Method name, e.g. `Echo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}
