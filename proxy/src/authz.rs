//! Authorization at the destination node proxy, per tunnel stream (connection level).
//!
//! Default allow: a pod no policy selects accepts every caller. Once policies select it, a
//! stream is refused if a `Deny` policy's rule matches, and otherwise allowed only if some
//! `Allow` policy's rule matches (when any `Allow` policy selects the pod).
//!
//! Rules are evaluated on what a stream shows: the caller's authenticated identity (and so its
//! namespace) and the destination port. HTTP methods and paths are not visible at this level
//! yet, so a rule naming them is evaluated **fail closed**: an `Allow` rule with methods or
//! paths matches nothing, a `Deny` rule with them matches every stream (as ztunnel does for
//! L7 rules it cannot see).

use nodus_config::{AuthorizationAction, AuthorizationPolicy, AuthorizationRule, Workload};

/// What a stream shows about its caller and destination.
#[derive(Clone, Copy, Debug)]
pub struct Stream<'a> {
    /// The authenticated SPIFFE ID of the caller (none for plaintext).
    pub identity: Option<&'a str>,
    /// The destination pod port.
    pub port: u16,
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

/// Whether `rule` matches the stream; `fail_closed_l7` is what a rule with HTTP fields yields.
fn rule_matches(rule: &AuthorizationRule, stream: Stream<'_>, fail_closed_l7: bool) -> bool {
    if !rule.methods.is_empty() || !rule.paths.is_empty() {
        return fail_closed_l7;
    }
    let identity_ok = rule.identities.is_empty()
        || stream.identity.is_some_and(|id| rule.identities.iter().any(|p| identity_matches(p, id)));
    let namespace_ok = rule.namespaces.is_empty()
        || stream.identity.and_then(caller_namespace).is_some_and(|ns| rule.namespaces.iter().any(|n| n == ns));
    let port_ok = rule.ports.is_empty() || rule.ports.contains(&stream.port);
    identity_ok && namespace_ok && port_ok
}

/// Decides a stream to `target` under `policies`.
pub fn authorize(policies: &[AuthorizationPolicy], target: &Workload, stream: Stream<'_>) -> Decision {
    let selecting: Vec<&AuthorizationPolicy> =
        policies.iter().filter(|p| p.selects(&target.id.namespace, &target.labels)).collect();
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
            let decision = authorize(&policies(yaml), &target(), Stream { identity: *identity, port: *port });
            assert_eq!(decision == Decision::Allow, *allow, "{case}: {decision:?}");
        }
    }
}
