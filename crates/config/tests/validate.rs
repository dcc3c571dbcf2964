//! Table tests: snapshots written as YAML, each either valid or rejected with a named reason.

use nodus_config::{ConfigSnapshot, HttpFilter, PathMatch, ValidationError};

/// Two services, `demo/web` (port 80 -> 8080) and `demo/api` (port 9090, gRPC).
const SERVICES: &str = r#"
version: 7
services:
  - id: { namespace: demo, name: web }
    clusterIps: [10.96.0.10]
    ports: [{ name: http, port: 80, targetPort: 8080 }]
    endpoints:
      - { address: 10.244.1.2, node: node-1, workload: { namespace: demo, name: web-0 } }
      - { address: 10.244.2.2, ready: false }
  - id: { namespace: demo, name: api }
    ports: [{ port: 9090, targetPort: 9090, appProtocol: grpc }]
workloads:
  - id: { namespace: demo, name: web-0 }
    node: node-1
    ips: [10.244.1.2]
    serviceAccount: web
    meshEnabled: true
"#;

fn snapshot_with(routes: &str) -> Result<ConfigSnapshot, String> {
    let text = format!("{SERVICES}{routes}");
    serde_norway::from_str::<ConfigSnapshot>(&text).map_err(|e| e.to_string())
}

fn http_rule(rule: &str) -> String {
    format!(
        r#"
httpRoutes:
  - id: {{ namespace: demo, name: r1 }}
    parents: [{{ service: {{ namespace: demo, name: web }}, port: 80 }}]
    rules:
{rule}
"#
    )
}

#[test]
fn full_featured_snapshot_parses_and_validates() {
    let snapshot = snapshot_with(&http_rule(
        r#"
      - name: canary
        matches:
          - path: { type: PathPrefix, value: /v2 }
            headers: [{ name: x-user, match: { type: RegularExpression, value: "^beta-.*" } }]
            queryParams: [{ name: debug, match: { type: Exact, value: "1" } }]
            method: GET
        filters:
          - type: RequestHeaderModifier
            set: [{ name: x-route, value: canary }]
            remove: [x-internal]
          - type: URLRewrite
            path: { type: ReplacePrefixMatch, value: /api }
          - type: RequestMirror
            backend: { service: { namespace: demo, name: web }, port: 80 }
        backends:
          - { service: { namespace: demo, name: web }, port: 80, weight: 90 }
          - { service: { namespace: demo, name: web }, port: 80, weight: 10 }
        timeouts: { request: 10s, backendRequest: 2s }
        retry: { codes: [503], attempts: 2, backoff: 100ms }
"#,
    ))
    .expect("parses");
    snapshot.validate().expect("valid");
    assert_eq!(snapshot.version, 7);
    let rule = &snapshot.http_routes[0].rules[0];
    assert_eq!(rule.matches[0].path, Some(PathMatch::PathPrefix("/v2".into())));
    assert!(matches!(rule.filters[1], HttpFilter::UrlRewrite(_)));
    assert_eq!(rule.timeouts.as_ref().unwrap().request.unwrap().as_duration().as_secs(), 10);
    assert!(!snapshot.services[0].endpoints[1].ready);
}

#[test]
fn invalid_snapshots_are_rejected_with_the_reason() {
    // (case, routes YAML, expected fragment of the error text)
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown backend service",
            http_rule("      - backends: [{ service: { namespace: demo, name: nope }, port: 80 }]"),
            "backendRef refers to service demo/nope",
        ),
        (
            "unknown backend port",
            http_rule("      - backends: [{ service: { namespace: demo, name: web }, port: 81 }]"),
            "port 81 of service demo/web",
        ),
        (
            "bad path regex",
            http_rule("      - matches: [{ path: { type: RegularExpression, value: \"(\" } }]"),
            "does not compile",
        ),
        ("relative path", http_rule("      - matches: [{ path: { type: Exact, value: foo } }]"), "must start with '/'"),
        (
            "prefix rewrite without prefix match",
            http_rule(
                "      - matches: [{ path: { type: Exact, value: /a } }]\n        filters: [{ type: URLRewrite, path: { type: ReplacePrefixMatch, value: /b } }]",
            ),
            "requires every match of the rule to be a PathPrefix",
        ),
        (
            "redirect with a bad code",
            http_rule("      - filters: [{ type: RequestRedirect, statusCode: 200 }]"),
            "statusCode 200",
        ),
        (
            "redirect with backends",
            http_rule(
                "      - filters: [{ type: RequestRedirect, hostname: x }]\n        backends: [{ service: { namespace: demo, name: web }, port: 80 }]",
            ),
            "cannot have backendRefs",
        ),
        (
            "header value with a newline",
            http_rule(
                "      - filters: [{ type: RequestHeaderModifier, set: [{ name: x, value: \"a\\r\\nb\" }] }]",
            ),
            "CR, LF or NUL",
        ),
        ("bad header name", http_rule("      - matches: [{ headers: [{ name: \"a b\", match: { type: Exact, value: v } }] }]"), "not a valid header name"),
        ("lower-case method", http_rule("      - matches: [{ method: get }]"), "not an upper-case HTTP method"),
        ("retry on a 3xx", http_rule("      - retry: { codes: [302] }"), "retry code 302 is not a status from 400 to 599"),
        ("too many retries", http_rule("      - retry: { attempts: 50 }"), "exceed the maximum"),
        (
            "backend timeout above request timeout",
            http_rule("      - timeouts: { request: 1s, backendRequest: 2s }"),
            "exceeds the request timeout",
        ),
        (
            "duplicate route",
            format!("{}  - id: {{ namespace: demo, name: r1 }}\n    parents: [{{ service: {{ namespace: demo, name: web }} }}]\n    rules: []\n", http_rule("      - {}")),
            "duplicate HTTPRoute demo/r1",
        ),
        (
            "unknown parent",
            "\nhttpRoutes:\n  - id: { namespace: demo, name: r }\n    parents: [{ service: { namespace: x, name: y } }]\n    rules: []\n".into(),
            "parentRef refers to service x/y",
        ),
        (
            "no parent",
            "\nhttpRoutes:\n  - id: { namespace: demo, name: r }\n    parents: []\n    rules: []\n".into(),
            "at least one service",
        ),
        (
            "grpc method match with neither field",
            "\ngrpcRoutes:\n  - id: { namespace: demo, name: g }\n    parents: [{ service: { namespace: demo, name: api } }]\n    rules: [{ matches: [{ method: { type: Exact } }] }]\n".into(),
            "needs a service, a method or both",
        ),
        (
            "grpc regex that does not compile",
            "\ngrpcRoutes:\n  - id: { namespace: demo, name: g }\n    parents: [{ service: { namespace: demo, name: api } }]\n    rules: [{ matches: [{ method: { type: RegularExpression, service: \"[\" } }] }]\n".into(),
            "does not compile",
        ),
        (
            "grpc route with a rewrite",
            "\ngrpcRoutes:\n  - id: { namespace: demo, name: g }\n    parents: [{ service: { namespace: demo, name: api } }]\n    rules: [{ filters: [{ type: URLRewrite, hostname: h }] }]\n".into(),
            "header modifier and mirror filters only",
        ),
    ];
    for (case, routes, expected) in cases {
        let snapshot = snapshot_with(routes).unwrap_or_else(|e| panic!("{case}: YAML should parse: {e}"));
        let error: ValidationError = snapshot.validate().expect_err(case);
        assert!(error.to_string().contains(expected), "{case}: got {error:?}, want text containing {expected:?}");
    }
}

#[test]
fn unknown_fields_and_bad_durations_fail_to_parse() {
    for (case, routes, expected) in [
        ("typo in a field", http_rule("      - backendz: []"), "unknown field `backendz`"),
        ("bad duration", http_rule("      - timeouts: { request: 10 }"), "invalid duration"),
    ] {
        let error = snapshot_with(&routes).expect_err(case);
        assert!(error.contains(expected), "{case}: {error}");
    }
}

#[test]
fn snapshot_round_trips_through_json() {
    let snapshot = snapshot_with(&http_rule(
        "      - matches: [{ path: { type: Exact, value: /x } }]\n        backends: [{ service: { namespace: demo, name: web }, port: 80 }]",
    ))
    .unwrap();
    let json = serde_json::to_string(&snapshot).unwrap();
    let back: ConfigSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(snapshot, back);
}

#[test]
fn unresolved_backends_are_valid_config_and_keep_their_reason() {
    // The controller marks references it could not resolve instead of dropping them: the
    // proxy must still answer that backend's share of requests (with 500).
    let snapshot = snapshot_with(&http_rule(
        r#"      - backends:
          - { service: { namespace: demo, name: web }, port: 80, weight: 50 }
          - { service: { namespace: other, name: gone }, port: 80, weight: 50, unresolved: "BackendNotFound: service other/gone does not exist" }"#,
    ))
    .expect("parses");
    snapshot.validate().expect("an unresolved backend is not a validation error");
    let backends = &snapshot.http_routes[0].rules[0].backends;
    assert_eq!(backends[1].unresolved.as_deref(), Some("BackendNotFound: service other/gone does not exist"));
}

#[test]
fn trust_roots_are_single_pem_certificates_with_at_most_one_signing() {
    use nodus_config::TrustRoot;
    let pem = |body: &str| format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");
    let root = |body: &str, signing: bool| TrustRoot { certificate_pem: pem(body), signing };
    let cases: Vec<(&str, Vec<TrustRoot>, Option<&str>)> = vec![
        ("none", vec![], None),
        ("rotation: old and new, new signing", vec![root("AAA", false), root("BBB", true)], None),
        ("two signing", vec![root("AAA", true), root("BBB", true)], Some("more than one root is marked signing")),
        ("repeated", vec![root("AAA", true), root("AAA", false)], Some("listed twice")),
        ("not PEM", vec![TrustRoot { certificate_pem: "hello".into(), signing: true }], Some("not one PEM")),
        (
            "two in one",
            vec![TrustRoot { certificate_pem: format!("{}{}", pem("AAA"), pem("BBB")), signing: true }],
            Some("more than one certificate"),
        ),
    ];
    for (name, trust_roots, expected) in cases {
        let snapshot = ConfigSnapshot { trust_roots, ..Default::default() };
        match (snapshot.validate(), expected) {
            (Ok(()), None) => {}
            (Err(error), Some(text)) => assert!(error.to_string().contains(text), "{name}: {error}"),
            (outcome, expected) => panic!("{name}: got {outcome:?}, expected {expected:?}"),
        }
    }
}
