//! Table tests of route matching: one case per rule of the Gateway API's precedence and matching
//! semantics. Routes are written in the snapshot's YAML form; the answer is "route/rule-name".

use super::*;
use http::{HeaderMap, HeaderValue, Method};

const SERVICES: &str = r#"
services:
  - id: { namespace: demo, name: web }
    clusterIps: [10.96.0.10]
    ports: [{ port: 80, targetPort: 8080 }, { port: 81, targetPort: 8081 }]
  - id: { namespace: demo, name: api }
    ports: [{ port: 9090, targetPort: 9090, appProtocol: grpc }]
"#;

fn table(routes_yaml: &str) -> RouteTable<()> {
    let snapshot: ConfigSnapshot =
        serde_norway::from_str(&format!("{SERVICES}{routes_yaml}")).unwrap_or_else(|e| panic!("bad YAML: {e}"));
    snapshot.validate().expect("valid snapshot");
    RouteTable::compile(&snapshot, &|_, _| None).expect("compiles")
}

struct Req<'a> {
    client_ns: Option<&'a str>,
    port: u16,
    method: &'a str,
    uri: &'a str,
    headers: &'a [(&'a str, &'a str)],
    grpc: bool,
}

const GET: Req<'static> = Req { client_ns: Some("demo"), port: 80, method: "GET", uri: "/", headers: &[], grpc: false };

fn answer(table: &RouteTable<()>, req: &Req<'_>) -> Option<String> {
    let service = if req.grpc { "api" } else { "web" };
    let routes = table.port("demo", service, req.port)?.for_client(req.client_ns);
    let (path, query) = match req.uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.uri, None),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers {
        headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    let method = Method::from_bytes(req.method.as_bytes()).unwrap();
    let view = RequestView { method: &method, path, query, host: Some("web.demo.svc"), headers: &headers };
    routes.find(&view, req.grpc).map(|m| format!("{}/{}", m.rule.route.name, m.rule.rule_label))
}

/// A one-rule HTTPRoute named `name` in `namespace` on demo/web, with `rule` as its rule body.
fn http_route(name: &str, rule_name: &str, matches: &str) -> String {
    http_route_in("demo", name, rule_name, matches)
}

fn http_route_in(namespace: &str, name: &str, rule_name: &str, matches: &str) -> String {
    format!(
        r#"
  - id: {{ namespace: {namespace}, name: {name} }}
    parents: [{{ service: {{ namespace: demo, name: web }} }}]
    rules:
      - name: {rule_name}
        matches: {matches}
        backends: [{{ service: {{ namespace: demo, name: web }}, port: 80 }}]
"#
    )
}

fn routes(parts: &[String]) -> String {
    format!("httpRoutes:{}", parts.concat())
}

#[test]
fn http_precedence_and_matching_follow_the_spec() {
    let exact_vs_prefix = routes(&[
        http_route("a", "prefix", "[{ path: { type: PathPrefix, value: /foo } }]"),
        http_route("b", "exact", "[{ path: { type: Exact, value: /foo } }]"),
    ]);
    let longest_prefix = routes(&[
        http_route("a", "short", "[{ path: { type: PathPrefix, value: /foo } }]"),
        http_route("b", "long", "[{ path: { type: PathPrefix, value: /foo/bar } }]"),
    ]);
    let method_wins = routes(&[
        http_route("a", "any", "[{ path: { type: PathPrefix, value: /x } }]"),
        http_route("b", "post", "[{ path: { type: PathPrefix, value: /x }, method: POST }]"),
    ]);
    let more_headers = routes(&[
        http_route("a", "one", "[{ headers: [{ name: x-a, match: { type: Exact, value: '1' } }] }]"),
        http_route(
            "b",
            "two",
            "[{ headers: [{ name: x-a, match: { type: Exact, value: '1' } }, { name: x-b, match: { type: Exact, value: '2' } }] }]",
        ),
    ]);
    let more_query = routes(&[
        http_route("a", "none", "[{ path: { type: PathPrefix, value: / } }]"),
        http_route("b", "q", "[{ queryParams: [{ name: v, match: { type: Exact, value: 'two words' } }] }]"),
    ]);
    let route_order = routes(&[
        http_route("older", "r", "[{ path: { type: PathPrefix, value: /same } }]"),
        http_route("newer", "r", "[{ path: { type: PathPrefix, value: /same } }]"),
    ]);
    let rule_order = format!(
        "httpRoutes:{}",
        r#"
  - id: { namespace: demo, name: multi }
    parents: [{ service: { namespace: demo, name: web } }]
    rules:
      - { name: first, matches: [{ path: { type: PathPrefix, value: /r } }] }
      - { name: second, matches: [{ path: { type: PathPrefix, value: /r } }] }
"#
    );
    let regex_path = routes(&[
        http_route("a", "prefix", "[{ path: { type: PathPrefix, value: / } }]"),
        http_route("b", "regex", "[{ path: { type: RegularExpression, value: '/items/[0-9]+' } }]"),
    ]);
    let header_regex = routes(&[http_route(
        "a",
        "beta",
        "[{ headers: [{ name: X-User, match: { type: RegularExpression, value: 'beta-.*' } }] }]",
    )]);
    let default_match = routes(&[http_route("a", "all", "[]")]);
    let consumer =
        routes(&[http_route_in("demo", "producer", "p", "[]"), http_route_in("shop", "consumer", "c", "[]")]);
    let port_scoped = format!(
        "httpRoutes:{}",
        r#"
  - id: { namespace: demo, name: only81 }
    parents: [{ service: { namespace: demo, name: web }, port: 81 }]
    rules: [{ name: r }]
"#
    );

    let cases: Vec<(&str, &String, Req<'_>, Option<&str>)> = vec![
        ("exact beats prefix", &exact_vs_prefix, Req { uri: "/foo", ..GET }, Some("b/exact")),
        ("prefix matches sub-paths", &exact_vs_prefix, Req { uri: "/foo/x", ..GET }, Some("a/prefix")),
        ("prefix matches with trailing slash", &exact_vs_prefix, Req { uri: "/foo/", ..GET }, Some("a/prefix")),
        ("prefix respects element boundaries", &exact_vs_prefix, Req { uri: "/foobar", ..GET }, None),
        ("longest prefix wins", &longest_prefix, Req { uri: "/foo/bar/baz", ..GET }, Some("b/long")),
        ("shorter prefix still matches", &longest_prefix, Req { uri: "/foo/baz", ..GET }, Some("a/short")),
        ("method match wins", &method_wins, Req { method: "POST", uri: "/x", ..GET }, Some("b/post")),
        ("method mismatch falls through", &method_wins, Req { uri: "/x", ..GET }, Some("a/any")),
        (
            "more header matches win",
            &more_headers,
            Req { headers: &[("x-a", "1"), ("x-b", "2")], ..GET },
            Some("b/two"),
        ),
        ("header mismatch falls through", &more_headers, Req { headers: &[("x-a", "1")], ..GET }, Some("a/one")),
        ("no header, no match", &more_headers, GET, None),
        ("query match wins, percent-decoded", &more_query, Req { uri: "/?v=two%20words", ..GET }, Some("b/q")),
        ("query mismatch falls through", &more_query, Req { uri: "/?v=other", ..GET }, Some("a/none")),
        ("oldest route wins a tie", &route_order, Req { uri: "/same", ..GET }, Some("older/r")),
        ("first rule wins a tie", &rule_order, Req { uri: "/r", ..GET }, Some("multi/first")),
        ("regex path beats prefix", &regex_path, Req { uri: "/items/42", ..GET }, Some("b/regex")),
        ("regex matches the whole path", &regex_path, Req { uri: "/items/42/x", ..GET }, Some("a/prefix")),
        (
            "header names are case-insensitive, regex values whole",
            &header_regex,
            Req { headers: &[("x-user", "beta-7")], ..GET },
            Some("a/beta"),
        ),
        ("regex header must match whole value", &header_regex, Req { headers: &[("x-user", "xbeta-7")], ..GET }, None),
        (
            "a rule without matches takes everything",
            &default_match,
            Req { uri: "/any/thing?x=1", ..GET },
            Some("a/all"),
        ),
        ("producer route for its own namespace", &consumer, GET, Some("producer/p")),
        ("consumer route for its namespace", &consumer, Req { client_ns: Some("shop"), ..GET }, Some("consumer/c")),
        ("producer route for other namespaces", &consumer, Req { client_ns: Some("other"), ..GET }, Some("producer/p")),
        ("producer route for unknown clients", &consumer, Req { client_ns: None, ..GET }, Some("producer/p")),
        ("port-scoped parent applies to its port", &port_scoped, Req { port: 81, ..GET }, Some("only81/r")),
        ("port-scoped parent ignores other ports", &port_scoped, GET, None),
    ];
    for (case, yaml, req, expected) in cases {
        let table = table(yaml);
        assert_eq!(answer(&table, &req).as_deref(), expected, "{case}");
    }
}

fn grpc_routes(rules: &str) -> String {
    format!(
        r#"
grpcRoutes:
  - id: {{ namespace: demo, name: g }}
    parents: [{{ service: {{ namespace: demo, name: api }} }}]
    rules:
{rules}
httpRoutes:
  - id: {{ namespace: demo, name: h }}
    parents: [{{ service: {{ namespace: demo, name: api }} }}]
    rules:
      - {{ name: http-fallback, matches: [{{ path: {{ type: PathPrefix, value: /nodus.echo.v1.Echo/EchoThree }} }}] }}
"#
    )
}

#[test]
fn grpc_precedence_and_matching_follow_the_spec() {
    let yaml = grpc_routes(
        r#"
      - { name: service-only, matches: [{ method: { service: nodus.echo.v1.Echo } }] }
      - { name: exact, matches: [{ method: { service: nodus.echo.v1.Echo, method: EchoTwo } }] }
      - { name: regex, matches: [{ method: { type: RegularExpression, service: "other\\..*" } }] }
      - name: header
        matches: [{ method: { service: nodus.echo.v1.Echo, method: Echo }, headers: [{ name: x-v, match: { type: Exact, value: "2" } }] }]
"#,
    );
    let table = table(&yaml);
    let call = |path: &'static str, headers: &'static [(&'static str, &'static str)]| Req {
        client_ns: Some("demo"),
        port: 9090,
        method: "POST",
        uri: path,
        headers,
        grpc: true,
    };
    let cases = [
        ("service and method beat service only", call("/nodus.echo.v1.Echo/EchoTwo", &[]), Some("g/exact")),
        ("service only catches other methods", call("/nodus.echo.v1.Echo/Echo", &[]), Some("g/service-only")),
        ("header match ranks above service-only", call("/nodus.echo.v1.Echo/Echo", &[("x-v", "2")]), Some("g/header")),
        ("regex service", call("/other.pkg.Svc/Do", &[]), Some("g/regex")),
        ("unmatched service", call("/unknown.Svc/Do", &[]), None),
        ("not a gRPC path", call("/", &[]), None),
    ];
    for (case, req, expected) in cases {
        assert_eq!(answer(&table, &req).as_deref(), expected, "{case}");
    }
}

#[test]
fn grpc_calls_fall_back_to_http_routes_on_the_same_port() {
    let table = table(&grpc_routes("      - { name: two, matches: [{ method: { service: x.Y, method: Two } }] }"));
    let req = Req { port: 9090, method: "POST", uri: "/nodus.echo.v1.Echo/EchoThree", grpc: true, ..GET };
    assert_eq!(answer(&table, &req).as_deref(), Some("h/http-fallback"));
}

#[test]
fn hostnames_restrict_a_route() {
    let yaml = r#"
httpRoutes:
  - id: { namespace: demo, name: hosted }
    parents: [{ service: { namespace: demo, name: web } }]
    hostnames: ["*.demo.svc", "web"]
    rules: [{ name: r }]
"#;
    let table = table(yaml);
    let routes = table.port("demo", "web", 80).unwrap().for_client(Some("demo"));
    let headers = HeaderMap::new();
    for (host, expected) in [
        (Some("web.demo.svc"), true),
        (Some("web.demo.svc:80"), true),
        (Some("web"), true),
        (Some("demo.svc"), false),
        (None, false),
    ] {
        let view = RequestView { method: &Method::GET, path: "/", query: None, host, headers: &headers };
        assert_eq!(routes.find(&view, false).is_some(), expected, "{host:?}");
    }
}

#[test]
fn prefix_match_reports_the_matched_prefix_for_rewrites() {
    let table = table(&routes(&[http_route("a", "r", "[{ path: { type: PathPrefix, value: /api/ } }]")]));
    let routes = table.port("demo", "web", 80).unwrap().for_client(None);
    let headers = HeaderMap::new();
    let view = RequestView { method: &Method::GET, path: "/api/v1", query: None, host: None, headers: &headers };
    assert_eq!(routes.find(&view, false).unwrap().matched_prefix.map(|p| &**p), Some("/api"));
}
