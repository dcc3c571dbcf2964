//! HTTPRoute matching and filters end to end: a captured client, the node proxy, echo pods on two
//! nodes. One lab serves every case; each rule sends its matches to a backend the echo answer
//! names. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::skip_unless_lab_supported;
use support::*;

const ROUTES: &str = r#"
httpRoutes:
  - id: { namespace: demo, name: routes }
    parents: [{ service: { namespace: demo, name: echo }, port: 80 }]
    rules:
      - name: exact
        matches: [{ path: { type: Exact, value: /exact } }]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: prefix-v2
        matches: [{ path: { type: PathPrefix, value: /v2 } }]
        backends: [{ service: { namespace: demo, name: echo-v2 }, port: 80 }]
      - name: regex
        matches: [{ path: { type: RegularExpression, value: "/items/[0-9]+" } }]
        filters: [{ type: ResponseHeaderModifier, set: [{ name: x-matched, value: regex }] }]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: canary-header
        matches: [{ path: { type: PathPrefix, value: /app }, headers: [{ name: x-canary, match: { type: Exact, value: "true" } }] }]
        backends: [{ service: { namespace: demo, name: echo-v2 }, port: 80 }]
      - name: beta-user
        matches: [{ path: { type: PathPrefix, value: /app }, headers: [{ name: x-user, match: { type: RegularExpression, value: "beta-.*" } }] }]
        backends: [{ service: { namespace: demo, name: echo-v2 }, port: 80 }]
      - name: query
        matches: [{ path: { type: PathPrefix, value: /app }, queryParams: [{ name: version, match: { type: Exact, value: "2" } }] }]
        backends: [{ service: { namespace: demo, name: echo-v2 }, port: 80 }]
      - name: app-default
        matches: [{ path: { type: PathPrefix, value: /app } }]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: post
        matches: [{ path: { type: Exact, value: /submit }, method: POST }]
        backends: [{ service: { namespace: demo, name: echo-v2 }, port: 80 }]
      - name: request-headers
        matches: [{ path: { type: Exact, value: /headers } }]
        filters:
          - type: RequestHeaderModifier
            set: [{ name: x-set, value: set-by-route }]
            add: [{ name: x-add, value: added }]
            remove: [x-remove]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: redirect
        matches: [{ path: { type: PathPrefix, value: /old } }]
        filters: [{ type: RequestRedirect, hostname: example.org, path: { type: ReplacePrefixMatch, value: /new }, statusCode: 301 }]
      - name: rewrite-full
        matches: [{ path: { type: Exact, value: /rewrite-full } }]
        filters: [{ type: URLRewrite, hostname: rewritten.demo, path: { type: ReplaceFullPath, value: /replaced } }]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: rewrite-prefix
        matches: [{ path: { type: PathPrefix, value: /api } }]
        filters: [{ type: URLRewrite, path: { type: ReplacePrefixMatch, value: /backend } }]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: mirror
        matches: [{ path: { type: PathPrefix, value: /mirror } }]
        filters: [{ type: RequestMirror, backend: { service: { namespace: demo, name: echo-v2 }, port: 80 } }]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: weighted
        matches: [{ path: { type: PathPrefix, value: /weighted } }]
        backends:
          - { service: { namespace: demo, name: echo-v1 }, port: 80, weight: 80 }
          - { service: { namespace: demo, name: echo-v2 }, port: 80, weight: 20 }
      - name: slow
        matches: [{ path: { type: PathPrefix, value: /slow } }]
        timeouts: { request: 300ms }
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: attempt-timeout
        matches: [{ path: { type: PathPrefix, value: /attempt } }]
        timeouts: { request: 5s, backendRequest: 200ms }
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80 }]
      - name: missing-backend-weight
        matches: [{ path: { type: PathPrefix, value: /zero } }]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 80, weight: 0 }]
  - id: { namespace: demo, name: empty-service }
    parents: [{ service: { namespace: demo, name: echo-v2 }, port: 80 }]
    rules:
      - name: to-nowhere
        matches: [{ path: { type: PathPrefix, value: /nowhere } }]
        backends: [{ service: { namespace: demo, name: empty }, port: 80 }]
      - name: rest
        backends: [{ service: { namespace: demo, name: echo-v2 }, port: 80 }]
"#;

const EMPTY_SERVICE: &str = r#"
  - id: { namespace: demo, name: empty }
    clusterIps: [10.96.0.20]
    ports: [{ port: 80, targetPort: 8080 }, { port: 9090, targetPort: 9090, appProtocol: grpc }]
"#;

fn mesh() -> Mesh {
    start_with(&format!("{}{ROUTES}", config_with_services(1, EMPTY_SERVICE)), &[])
}

fn get(mesh: &Mesh, path: &str, extra: &[&str]) -> serde_json::Value {
    let target = format!("{ECHO}:80");
    let mut args = vec!["--target", &target, "--host", "echo.demo.svc", "--path", path];
    args.extend_from_slice(extra);
    client(mesh, &args).remove(0)
}

#[test]
fn matches_and_filters_route_as_the_spec_says() {
    skip_unless_lab_supported!();
    let mesh = mesh();
    let pod = |o: &serde_json::Value| o["pod"].as_str().unwrap_or("none").to_owned();

    // Path matches.
    assert_eq!(pod(&get(&mesh, "/exact", &[])), "echo-v1");
    assert_eq!(pod(&get(&mesh, "/v2/anything", &[])), "echo-v2");
    let regex = get(&mesh, "/items/42", &[]);
    assert_eq!((pod(&regex), regex["response_headers"]["x-matched"].as_str()), ("echo-v1".into(), Some("regex")));
    // Header, header regex, query and method matches beat the plain prefix on the same path.
    assert_eq!(pod(&get(&mesh, "/app", &[])), "echo-v1");
    assert_eq!(pod(&get(&mesh, "/app", &["-H", "x-canary:true"])), "echo-v2");
    assert_eq!(pod(&get(&mesh, "/app", &["-H", "x-user:beta-42"])), "echo-v2");
    assert_eq!(pod(&get(&mesh, "/app", &["-H", "x-user:alpha"])), "echo-v1");
    assert_eq!(pod(&get(&mesh, "/app/x?version=2", &[])), "echo-v2");
    assert_eq!(pod(&get(&mesh, "/submit", &["--method", "POST"])), "echo-v2");
    // No rule matches GET /submit: routes are attached, so 404, never a silent default.
    assert_eq!(get(&mesh, "/submit", &[])["status"], 404);

    // Request header edits reach the backend.
    let edited = get(&mesh, "/headers", &["-H", "x-set:from-client", "-H", "x-remove:gone", "-H", "x-add:original"]);
    let seen = &edited["report"]["headers"];
    assert_eq!(seen["x-set"], serde_json::json!(["set-by-route"]));
    assert_eq!(seen["x-add"], serde_json::json!(["original", "added"]));
    assert!(seen.get("x-remove").is_none(), "{seen}");

    // Redirect, answered by the proxy itself.
    let redirect = get(&mesh, "/old/page?q=1", &[]);
    assert_eq!(redirect["status"], 301);
    assert_eq!(redirect["response_headers"]["location"], "http://example.org/new/page?q=1");

    // Rewrites change what the backend sees.
    let full = get(&mesh, "/rewrite-full?keep=1", &[]);
    assert_eq!(full["report"]["path"], "/replaced?keep=1");
    assert_eq!(full["report"]["host"], "rewritten.demo");
    assert_eq!(get(&mesh, "/api/v1/users", &[])["report"]["path"], "/backend/v1/users");

    // Timeouts: the answer takes 1 s, the rule allows 300 ms.
    let slow = get(&mesh, "/slow", &["-H", "x-echo-delay-ms:1000"]);
    assert_eq!(slow["status"], 504, "{slow}");
    assert!(slow["latency_ms"].as_f64().unwrap() < 900.0, "{slow}");
    assert_eq!(get(&mesh, "/slow", &["-H", "x-echo-delay-ms:50"])["status"], 200);
    // Per-attempt timeout: each attempt may take 200 ms, the whole request 5 s.
    let attempt = get(&mesh, "/attempt", &["-H", "x-echo-delay-ms:1000"]);
    assert_eq!(attempt["status"], 504, "{attempt}");
    assert!(attempt["latency_ms"].as_f64().unwrap() < 800.0, "{attempt}");

    // A rule whose backends all weigh 0 answers 500; a backend Service with no endpoint, 503.
    assert_eq!(get(&mesh, "/zero", &[])["status"], 500);
    let nowhere = client(&mesh, &["--target", &format!("{ECHO_V2}:80"), "--path", "/nowhere"]).remove(0);
    assert_eq!(nowhere["status"], 503, "{nowhere}");
    let direct_empty = client(&mesh, &["--target", "10.96.0.20:80"]).remove(0);
    assert_eq!(direct_empty["status"], 503);
    let grpc_empty = client(&mesh, &["--target", "10.96.0.20:9090", "--protocol", "grpc"]).remove(0);
    assert_eq!(grpc_empty["grpc_status"], 14, "gRPC clients get UNAVAILABLE: {grpc_empty}");
}

#[test]
fn mirrors_copy_requests_and_weights_split_traffic() {
    skip_unless_lab_supported!();
    let mesh = mesh();
    // Mirror: echo-v1 answers, echo-v2 receives a copy.
    let answer = get(&mesh, "/mirror/copy-me", &[]);
    assert_eq!(answer["pod"], "echo-v1");
    let echo_v2 = mesh.pods.iter().find(|p| p.name == "echo-v2").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, body) = echo_v2
            .netns()
            .run(|| nodus_harness::http_get("127.0.0.1:8080".parse().unwrap(), "/.nodus-echo/seen"))
            .unwrap()
            .unwrap();
        if body.contains("GET /mirror/copy-me") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "mirror copy never arrived: {body}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Weights 80/20 over 1000 requests: a binomial's 3-sigma band is ±3.8 points; accept ±6.
    let target = format!("{ECHO}:80");
    let outcomes = client(&mesh, &["--target", &target, "--path", "/weighted", "--count", "1000"]);
    let pods = by_pod(&outcomes);
    let v1 = *pods.get("echo-v1").unwrap_or(&0) as f64 / 1000.0;
    assert!((0.74..=0.86).contains(&v1), "echo-v1 share {v1}: {pods:?}");
    assert_eq!(pods.values().sum::<usize>(), 1000);
}
