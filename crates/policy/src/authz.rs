//! Authorization at the destination node proxy, per tunnel stream (connection level).
//!
//! Default allow: a pod no policy selects accepts every caller. Once policies select it, a
//! stream is refused if a `Deny` policy's rule matches, and otherwise allowed only if some
//! `Allow` policy's rule matches (when any `Allow` policy selects the pod).
//!
//! Rules are evaluated on the caller's authenticated identity (and so its namespace), the
//! destination port, and for HTTP streams each request's method and path. A stream is checked
//! when it opens; an HTTP stream again for every request. On an opaque stream methods and paths
//! cannot be seen, so a rule naming them is evaluated **fail closed**: such an `Allow` rule
//! matches nothing, such a `Deny` rule matches the stream (as ztunnel does for L7 rules).

use nodus_config::{AuthorizationAction, AuthorizationPolicy, AuthorizationRule, Workload};

/// What a stream shows about its caller and destination.
#[derive(Clone, Copy, Debug)]
pub struct Stream<'a> {
    /// The authenticated SPIFFE ID of the caller (none for plaintext).
    pub identity: Option<&'a str>,
    /// The destination pod port.
    pub port: u16,
    /// What is known of the request.
    pub request: RequestView<'a>,
}

/// How much of the request authorization can see.
#[derive(Clone, Copy, Debug)]
pub enum RequestView<'a> {
    /// Opaque bytes: method and path rules fail closed.
    Opaque,
    /// An HTTP stream as it opens: method and path rules are left to each request.
    HttpStream,
    /// One HTTP request.
    Http {
        /// Its method.
        method: &'a str,
        /// Its path (without the query).
        path: &'a str,
    },
}

/// The decision and, for a refusal, the policy that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The stream may proceed.
    Allow,
    /// Refused, by `namespace/name` of the policy (or `no allow policy matched`).
    Deny(String),
}

fn caller_namespace(identity: &str) -> Option<&str> {
    let rest = identity.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    parts.next()?;
    (parts.next()? == "ns").then(|| parts.next()).flatten()
}

fn identity_matches(pattern: &str, identity: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => identity.starts_with(prefix),
        None => pattern == identity,
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// Whether `rule` matches; `deny` says which action's rule it is (unknowable HTTP fields match
/// for a deny rule on an opaque stream, and never for an allow rule).
fn rule_matches(rule: &AuthorizationRule, stream: Stream<'_>, deny: bool) -> bool {
    let l7_rule = !rule.methods.is_empty() || !rule.paths.is_empty();
    let l7_ok = !l7_rule
        || match stream.request {
            RequestView::Opaque => return deny,
            // Decided per request: may allow, does not deny yet.
            RequestView::HttpStream => !deny,
            RequestView::Http { method, path } => {
                (rule.methods.is_empty() || rule.methods.iter().any(|m| m == method))
                    && (rule.paths.is_empty() || rule.paths.iter().any(|p| path_matches(p, path)))
            }
        };
    let identity_ok = rule.identities.is_empty()
        || stream.identity.is_some_and(|id| rule.identities.iter().any(|p| identity_matches(p, id)));
    let namespace_ok = rule.namespaces.is_empty()
        || stream.identity.and_then(caller_namespace).is_some_and(|ns| rule.namespaces.iter().any(|n| n == ns));
    let port_ok = rule.ports.is_empty() || rule.ports.contains(&stream.port);
    l7_ok && identity_ok && namespace_ok && port_ok
}

/// The policies of `policies` that select `target`: computed once per config for each pod
/// (the state's `WorkloadInfo::policies`).
pub fn selecting(policies: &[AuthorizationPolicy], target: &Workload) -> Vec<AuthorizationPolicy> {
    policies.iter().filter(|p| p.selects(&target.id.namespace, &target.labels)).cloned().collect()
}

/// Decides a stream to a pod under the policies that select it ([`selecting`]).
pub fn authorize(selecting: &[AuthorizationPolicy], stream: Stream<'_>) -> Decision {
    for policy in selecting.iter().filter(|p| p.action == AuthorizationAction::Deny) {
        if policy.rules.iter().any(|r| rule_matches(r, stream, true)) {
            return Decision::Deny(policy.id.to_string());
        }
    }
    let mut allows = selecting.iter().filter(|p| p.action == AuthorizationAction::Allow).peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|p| p.rules.iter().any(|r| rule_matches(r, stream, false))) {
        Decision::Allow
    } else {
        Decision::Deny("no allow policy matched".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Workload {
        serde_norway::from_str(
            "{ id: { namespace: demo, name: web-0 }, node: node-1, ips: [10.244.1.2], labels: { app: web } }",
        )
        .unwrap()
    }

    fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
        serde_norway::from_str(yaml).unwrap()
    }

    const CLIENT: Option<&str> = Some("spiffe://cluster.local/ns/demo/sa/client");
    const OTHER: Option<&str> = Some("spiffe://cluster.local/ns/other/sa/job");

    #[test]
    fn each_rule_type_allows_and_denies_as_specified() {
        // (case, policies, identity, port, expected allow)
        let cases: &[(&str, &str, Option<&str>, u16, bool)] = &[
            ("no policy: default allow", "[]", None, 8080, true),
            ("policy for other pods", "[{ id: { namespace: demo, name: p }, selector: { app: db }, rules: [] }]", None, 8080, true),
            ("allow by identity: match", "[{ id: { namespace: demo, name: p }, rules: [{ identities: ['spiffe://cluster.local/ns/demo/sa/client'] }] }]", CLIENT, 8080, true),
            ("allow by identity: other", "[{ id: { namespace: demo, name: p }, rules: [{ identities: ['spiffe://cluster.local/ns/demo/sa/client'] }] }]", OTHER, 8080, false),
            ("allow by identity: plaintext", "[{ id: { namespace: demo, name: p }, rules: [{ identities: ['spiffe://cluster.local/ns/demo/sa/client'] }] }]", None, 8080, false),
            ("allow by identity prefix", "[{ id: { namespace: demo, name: p }, rules: [{ identities: ['spiffe://cluster.local/ns/demo/*'] }] }]", CLIENT, 8080, true),
            ("allow by namespace: match", "[{ id: { namespace: demo, name: p }, rules: [{ namespaces: [demo] }] }]", CLIENT, 8080, true),
            ("allow by namespace: other", "[{ id: { namespace: demo, name: p }, rules: [{ namespaces: [demo] }] }]", OTHER, 8080, false),
            ("allow by port: match", "[{ id: { namespace: demo, name: p }, rules: [{ ports: [8080] }] }]", OTHER, 8080, true),
            ("allow by port: other", "[{ id: { namespace: demo, name: p }, rules: [{ ports: [8080] }] }]", OTHER, 9090, false),
            ("deny by namespace", "[{ id: { namespace: demo, name: p }, action: Deny, rules: [{ namespaces: [other] }] }]", OTHER, 8080, false),
            ("deny does not match: allowed", "[{ id: { namespace: demo, name: p }, action: Deny, rules: [{ namespaces: [other] }] }]", CLIENT, 8080, true),
            ("deny wins over allow", "[{ id: { namespace: demo, name: a }, rules: [{}] }, { id: { namespace: demo, name: d }, action: Deny, rules: [{ ports: [8080] }] }]", CLIENT, 8080, false),
            ("allow with paths fails closed", "[{ id: { namespace: demo, name: p }, rules: [{ paths: ['/api/*'] }] }]", CLIENT, 8080, false),
            ("deny with methods fails closed", "[{ id: { namespace: demo, name: p }, action: Deny, rules: [{ methods: [DELETE] }] }]", CLIENT, 8080, false),
            ("selector selects by label", "[{ id: { namespace: demo, name: p }, selector: { app: web }, rules: [{ ports: [1] }] }]", CLIENT, 8080, false),
            ("policy of another namespace", "[{ id: { namespace: other, name: p }, rules: [{ ports: [1] }] }]", CLIENT, 8080, true),
        ];
        for (case, yaml, identity, port, allow) in cases {
            let stream = Stream { identity: *identity, port: *port, request: RequestView::Opaque };
            let decision = authorize(&selecting(&policies(yaml), &target()), stream);
            assert_eq!(decision == Decision::Allow, *allow, "{case}: {decision:?}");
        }
    }

    #[test]
    fn http_rules_are_decided_per_request_on_http_streams() {
        let allow_api =
            policies("[{ id: { namespace: demo, name: p }, rules: [{ methods: [GET], paths: ['/api/*'] }] }]");
        let deny_admin =
            policies("[{ id: { namespace: demo, name: p }, action: Deny, rules: [{ paths: ['/admin'] }] }]");
        let at = |request| Stream { identity: CLIENT, port: 8080, request };
        let http = |method, path| RequestView::Http { method, path };
        // (case, policies, request view, expected allow)
        let cases: Vec<(&str, &Vec<AuthorizationPolicy>, RequestView<'_>, bool)> = vec![
            ("allow rule: stream opens", &allow_api, RequestView::HttpStream, true),
            ("allow rule: matching request", &allow_api, http("GET", "/api/users"), true),
            ("allow rule: other path", &allow_api, http("GET", "/other"), false),
            ("allow rule: other method", &allow_api, http("POST", "/api/users"), false),
            ("deny rule: stream opens", &deny_admin, RequestView::HttpStream, true),
            ("deny rule: matching request", &deny_admin, http("GET", "/admin"), false),
            ("deny rule: exact path only", &deny_admin, http("GET", "/admin/x"), true),
            ("deny rule: opaque stream fails closed", &deny_admin, RequestView::Opaque, false),
        ];
        for (case, policies, request, allow) in cases {
            assert_eq!(authorize(&selecting(policies, &target()), at(request)) == Decision::Allow, allow, "{case}");
        }
    }
}
