//! Table tests of translation: manifests in (as `kubectl apply -f` would take them), config and
//! route status out.

use nodus_config::{AppProtocol, HttpFilter, MatchKind, PathMatch, PathModifier, StringMatch};
use nodus_controller::cluster::ClusterState;
use nodus_controller::manifests::parse_objects;
use nodus_controller::node_view::node_view;
use nodus_controller::translate::{translate, LastAccepted, RouteKey, RouteKind, TranslateOptions, Translation};
use std::path::Path;

/// Two namespaces (demo in the mesh, other not), Services with slices, pods on two nodes.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: demo, labels: { nodus.dev/mesh: enabled } }
---
apiVersion: v1
kind: Namespace
metadata: { name: other }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: demo }
spec:
  clusterIP: 10.96.0.10
  ports:
    - { name: http, port: 80, targetPort: web }
    - { name: grpc, port: 9090, targetPort: 9090, appProtocol: kubernetes.io/h2c }
---
apiVersion: v1
kind: Service
metadata: { name: web-v2, namespace: demo }
spec: { clusterIP: 10.96.0.11, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: api, namespace: other }
spec: { clusterIP: 10.96.1.10, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-abc, namespace: demo, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: http, port: 8080 }, { name: grpc, port: 9090 }]
endpoints:
  - addresses: [10.244.1.2]
    conditions: { ready: true }
    nodeName: node-1
    targetRef: { kind: Pod, name: web-7d9f-x1, namespace: demo }
  - addresses: [10.244.2.2]
    conditions: { ready: false }
    nodeName: node-2
    targetRef: { kind: Pod, name: web-7d9f-x2, namespace: demo }
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f-x1
  namespace: demo
  labels: { app: web, pod-template-hash: 7d9f }
  ownerReferences: [{ apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f, uid: u1, controller: true }]
spec: { nodeName: node-1, serviceAccountName: web, containers: [{ name: web, image: echo }] }
status: { phase: Running, hostIP: 10.100.0.11, podIP: 10.244.1.2, podIPs: [{ ip: 10.244.1.2 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: web-7d9f-x2, namespace: demo }
spec: { nodeName: node-2, containers: [{ name: web, image: echo }] }
status: { phase: Running, hostIP: 10.100.0.12, podIP: 10.244.2.2 }
---
apiVersion: v1
kind: Pod
metadata: { name: api-0, namespace: other }
spec: { nodeName: node-3, containers: [{ name: api, image: echo }] }
status: { phase: Running, hostIP: 10.100.0.13, podIP: 10.244.3.2 }
---
apiVersion: v1
kind: Pod
metadata: { name: done, namespace: demo }
spec: { nodeName: node-1, containers: [{ name: job, image: echo }] }
status: { phase: Succeeded, hostIP: 10.100.0.11, podIP: 10.244.1.9 }
"#;

fn state(extra: &str) -> ClusterState {
    let text = format!("{CLUSTER}\n---\n{extra}");
    ClusterState::from_objects(parse_objects(Path::new("test.yaml"), &text).expect("manifests parse"))
}

fn run(extra: &str) -> Translation {
    translate(&state(extra), &TranslateOptions::default(), &LastAccepted::new())
}

fn http_key(namespace: &str, name: &str) -> RouteKey {
    RouteKey { kind: RouteKind::Http, id: nodus_config::ObjectRef::new(namespace, name) }
}

/// (accepted reason, resolved-refs reason) of a route's first parent.
fn reasons(t: &Translation, key: &RouteKey) -> (String, String) {
    let parent = &t.statuses[key].parents[0];
    (parent.accepted.reason.clone(), parent.resolved_refs.reason.clone())
}

fn route(name: &str, namespace: &str, rules: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: {name}, namespace: {namespace}, generation: 1 }}
spec:
  parentRefs: [{{ group: "", kind: Service, name: web, namespace: demo, port: 80 }}]
  rules:
{rules}"#
    )
}

#[test]
fn services_endpoints_workloads_and_nodes() {
    let t = run("");
    let snapshot = &t.snapshot;
    snapshot.validate().expect("translation output validates");
    let web = snapshot.service("demo", "web").expect("web");
    assert_eq!(web.cluster_ips, ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(web.ports[0].target_port, 8080, "named targetPort resolved through the EndpointSlice");
    assert_eq!(web.ports[1].app_protocol, AppProtocol::Http2);
    assert_eq!(web.endpoints.len(), 2);
    assert!(web.endpoints[0].ready && !web.endpoints[1].ready);
    assert_eq!(web.endpoints[0].node.as_deref(), Some("node-1"));
    assert_eq!(web.endpoints[0].workload.as_ref().unwrap().name, "web-7d9f-x1");

    let names: Vec<_> = snapshot.workloads.iter().map(|w| w.id.to_string()).collect();
    assert_eq!(names, ["demo/web-7d9f-x1", "demo/web-7d9f-x2", "other/api-0"], "finished pods are not workloads");
    let web0 = &snapshot.workloads[0];
    assert!(web0.mesh_enabled, "demo carries nodus.dev/mesh=enabled");
    assert_eq!(web0.owner.as_deref(), Some("web"), "the Deployment, not the ReplicaSet");
    assert_eq!(web0.service_account, "web");
    assert!(!snapshot.workloads[2].mesh_enabled, "other is not labelled");

    let nodes: Vec<_> =
        snapshot.nodes.iter().map(|n| (n.name.as_str(), n.tunnel_address.map(|a| a.to_string()))).collect();
    assert_eq!(
        nodes,
        [
            ("node-1", Some("10.100.0.11:15008".into())),
            ("node-2", Some("10.100.0.12:15008".into())),
            ("node-3", Some("10.100.0.13:15008".into()))
        ]
    );
}

/// Endpoints carry whether their pod is in the mesh, and their node (from the slice, else the
/// pod); a mesh pod on a node nobody reports an address for is listed as unplaced.
#[test]
fn endpoints_say_whether_they_are_in_the_mesh_and_where_they_run() {
    let t = run(r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: api-1, namespace: other, labels: { kubernetes.io/service-name: api } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints:
  - { addresses: [10.244.3.2], nodeName: node-3, targetRef: { kind: Pod, name: api-0, namespace: other } }
  - { addresses: [192.0.2.7] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-v2-1, namespace: demo, labels: { kubernetes.io/service-name: web-v2 } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints:
  - { addresses: [10.244.4.2], targetRef: { kind: Pod, name: web-v2-0, namespace: demo } }
---
apiVersion: v1
kind: Pod
metadata: { name: web-v2-0, namespace: demo }
spec: { nodeName: node-4, containers: [{ name: web, image: echo }] }
status: { phase: Running, podIP: 10.244.4.2 }
"#);
    let snapshot = &t.snapshot;
    let web = snapshot.service("demo", "web").unwrap();
    assert!(web.endpoints.iter().all(|e| e.in_mesh()), "demo is in the mesh");
    let api = snapshot.service("other", "api").unwrap();
    let api: Vec<_> = api.endpoints.iter().map(|e| (e.address.to_string(), e.in_mesh(), e.node.clone())).collect();
    assert_eq!(
        api,
        [("10.244.3.2".into(), false, Some("node-3".into())), ("192.0.2.7".into(), false, None)],
        "a pod outside the mesh, and an address that is no pod, are dialled directly"
    );
    let web_v2 = &snapshot.service("demo", "web-v2").unwrap().endpoints[0];
    assert_eq!(web_v2.node.as_deref(), Some("node-4"), "the pod's spec.nodeName when the slice names no node");
    assert!(web_v2.in_mesh());
    let unplaced: Vec<_> = snapshot.unplaced_mesh_endpoints().iter().map(ToString::to_string).collect();
    assert_eq!(
        unplaced,
        ["mesh endpoint demo/web-v2-0 of demo/web-v2 is not reachable: the address of node node-4's proxy is not known (no pod on it reports status.hostIP)"],
    );
    assert_eq!(snapshot.nodes.iter().find(|n| n.name == "node-4").unwrap().tunnel_address, None);
}

/// Once node proxies show as pods (the chart's DaemonSet), only their nodes have a proxy: a mesh
/// pod elsewhere is reached directly, and a proxy's own (host network) address places its node.
#[test]
fn nodes_with_a_proxy_are_where_node_proxy_pods_run() {
    let proxy = |node: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: nodus-node-{node}, namespace: nodus-system, labels: {{ nodus.dev/node-proxy: \"true\" }} }}\nspec: {{ nodeName: {node}, hostNetwork: true, containers: [{{ name: proxy, image: nodus }}] }}\nstatus: {{ phase: Running, podIP: {ip} }}\n"
        )
    };
    let t = run(&format!(
        "{}---\n{}---\n{}",
        proxy("node-1", "10.100.0.11"),
        proxy("node-5", "10.100.0.15"),
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-v2-1, namespace: demo, labels: { kubernetes.io/service-name: web-v2 } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints:
  - { addresses: [10.244.2.2], nodeName: node-2, targetRef: { kind: Pod, name: web-7d9f-x2, namespace: demo } }
  - { addresses: [10.244.1.2], nodeName: node-1, targetRef: { kind: Pod, name: web-7d9f-x1, namespace: demo } }
"#
    ));
    let nodes: Vec<_> =
        t.snapshot.nodes.iter().map(|n| (n.name.as_str(), n.tunnel_address.map(|a| a.to_string()))).collect();
    assert_eq!(
        nodes,
        [("node-1", Some("10.100.0.11:15008".into())), ("node-5", Some("10.100.0.15:15008".into()))],
        "node-2 and node-3 run no proxy; node-5's address is its proxy's own"
    );
    let endpoints: Vec<_> =
        t.snapshot.service("demo", "web-v2").unwrap().endpoints.iter().map(|e| e.in_mesh()).collect();
    assert_eq!(endpoints, [false, true], "the mesh pod on node-2 has no proxy to vouch for it");
    assert!(t.snapshot.unplaced_mesh_endpoints().is_empty());
}

#[test]
fn http_route_features_translate() {
    let t = run(&route(
        "full",
        "demo",
        r#"    - name: canary
      matches:
        - path: { type: PathPrefix, value: /v2 }
          headers: [{ name: x-user, type: RegularExpression, value: "^beta-.*" }]
          queryParams: [{ name: debug, value: "1" }]
          method: POST
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: { set: [{ name: x-a, value: "1" }], add: [{ name: x-b, value: "2" }], remove: [x-c] }
        - type: ResponseHeaderModifier
          responseHeaderModifier: { set: [{ name: x-r, value: "1" }] }
        - type: URLRewrite
          urlRewrite: { hostname: new.example, path: { type: ReplacePrefixMatch, replacePrefixMatch: /v3 } }
        - type: RequestMirror
          requestMirror: { backendRef: { name: web-v2, port: 80 } }
      backendRefs:
        - { name: web, port: 80, weight: 80 }
        - name: web-v2
          port: 80
          weight: 20
          filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: x-v, value: "2" }] } }]
      timeouts: { request: 2s, backendRequest: 500ms }
    - matches: [{ path: { type: Exact, value: /old } }]
      filters:
        - type: RequestRedirect
          requestRedirect: { scheme: https, hostname: example.com, port: 8443, statusCode: 301, path: { type: ReplaceFullPath, replaceFullPath: /new } }
    - backendRefs: [{ name: web, port: 80 }]
"#,
    ));
    assert_eq!(reasons(&t, &http_key("demo", "full")), ("Accepted".into(), "ResolvedRefs".into()));
    let r = &t.snapshot.http_routes[0];
    assert_eq!(r.parents[0].port, Some(80));
    let canary = &r.rules[0];
    let m = &canary.matches[0];
    assert_eq!(m.path, Some(PathMatch::PathPrefix("/v2".into())));
    assert_eq!(m.headers[0].value, StringMatch::RegularExpression("^beta-.*".into()));
    assert_eq!(m.query_params[0].value, StringMatch::Exact("1".into()));
    assert_eq!(m.method.as_deref(), Some("POST"));
    assert!(
        matches!(&canary.filters[0], HttpFilter::RequestHeaderModifier(h) if h.set[0].name == "x-a" && h.add[0].name == "x-b" && h.remove == ["x-c"])
    );
    assert!(matches!(&canary.filters[1], HttpFilter::ResponseHeaderModifier(_)));
    assert!(
        matches!(&canary.filters[2], HttpFilter::UrlRewrite(u) if u.path == Some(PathModifier::ReplacePrefixMatch("/v3".into())) && u.hostname.as_deref() == Some("new.example"))
    );
    assert!(matches!(&canary.filters[3], HttpFilter::RequestMirror { backend } if backend.service.name == "web-v2"));
    assert_eq!(canary.backends.iter().map(|b| b.weight).collect::<Vec<_>>(), [80, 20]);
    assert_eq!(canary.backends[1].filters.len(), 1);
    let timeouts = canary.timeouts.as_ref().unwrap();
    assert_eq!(timeouts.request.unwrap().as_duration().as_millis(), 2000);
    assert_eq!(timeouts.backend_request.unwrap().as_duration().as_millis(), 500);
    assert!(
        matches!(&r.rules[1].filters[0], HttpFilter::RequestRedirect(f) if f.status_code == 301 && f.port == Some(8443) && f.scheme.as_deref() == Some("https"))
    );
    assert_eq!(r.rules[2].matches[0].path, Some(PathMatch::PathPrefix("/".into())), "no matches means prefix /");
    t.snapshot.validate().expect("valid");
}

#[test]
fn references_resolve_or_say_why() {
    let grant = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: { name: allow-demo, namespace: other }
spec:
  from: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: demo }]
  to: [{ group: "", kind: Service }]
"#;
    // (case, rules, extra objects, accepted reason, resolved reason, backend unresolved?)
    let cases: &[(&str, &str, &str, &str, &str, bool)] = &[
        ("missing Service", "    - backendRefs: [{ name: nope, port: 80 }]", "", "Accepted", "BackendNotFound", true),
        ("missing port", "    - backendRefs: [{ name: web-v2, port: 81 }]", "", "Accepted", "BackendNotFound", true),
        ("cross-namespace without grant", "    - backendRefs: [{ name: api, namespace: other, port: 80 }]", "", "Accepted", "RefNotPermitted", true),
        ("cross-namespace with grant", "    - backendRefs: [{ name: api, namespace: other, port: 80 }]", grant, "Accepted", "ResolvedRefs", false),
        ("unsupported kind", "    - backendRefs: [{ group: example.com, kind: Bucket, name: b, port: 80 }]", "", "Accepted", "InvalidKind", true),
        (
            "unknown ExtensionRef makes the rule answer 500",
            "    - filters: [{ type: ExtensionRef, extensionRef: { group: example.com, kind: Magic, name: m } }]\n      backendRefs: [{ name: web, port: 80 }]",
            "",
            "Accepted",
            "InvalidKind",
            true,
        ),
    ];
    for (case, rules, extra, accepted, resolved, unresolved) in cases {
        let t = run(&format!("{}{extra}", route("r", "demo", rules)));
        assert_eq!(reasons(&t, &http_key("demo", "r")), (accepted.to_string(), resolved.to_string()), "{case}");
        let backend = &t.snapshot.http_routes[0].rules[0].backends[0];
        assert_eq!(backend.unresolved.is_some(), *unresolved, "{case}: {:?}", backend.unresolved);
        t.snapshot.validate().unwrap_or_else(|e| panic!("{case}: {e}"));
    }
}

#[test]
fn parents_select_service_ports_and_ignore_gateways() {
    let route_with_parents = |parents: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: p, namespace: demo }}\nspec:\n  parentRefs: {parents}\n  rules: [{{ backendRefs: [{{ name: web, port: 80 }}] }}]\n"
        )
    };
    let t = run(&route_with_parents("[{ group: \"\", kind: Service, name: web, sectionName: grpc }]"));
    assert_eq!(t.snapshot.http_routes[0].parents[0].port, Some(9090), "sectionName names a Service port");
    let t = run(&route_with_parents("[{ group: \"\", kind: Service, name: web }]"));
    assert_eq!(t.snapshot.http_routes[0].parents[0].port, None, "no port: every port of the Service");
    let t = run(&route_with_parents("[{ group: \"\", kind: Service, name: ghost }]"));
    assert_eq!(reasons(&t, &http_key("demo", "p")).0, "NoMatchingParent");
    assert!(t.snapshot.http_routes.is_empty());
    let t = run(&route_with_parents("[{ group: \"\", kind: Service, name: web, port: 81 }]"));
    assert_eq!(reasons(&t, &http_key("demo", "p")).0, "NoMatchingParent");
    let t = run(&route_with_parents("[{ name: my-gateway }]"));
    assert!(t.statuses.is_empty() && t.snapshot.http_routes.is_empty(), "Gateway parents are not the mesh's");
}

#[test]
fn invalid_edit_keeps_the_last_accepted_version_in_force() {
    let good = route(
        "r",
        "demo",
        "    - matches: [{ path: { type: PathPrefix, value: /good } }]\n      backendRefs: [{ name: web, port: 80 }]",
    );
    let options = TranslateOptions::default();
    let first = translate(&state(&good), &options, &LastAccepted::new());
    assert_eq!(reasons(&first, &http_key("demo", "r")).0, "Accepted");

    let bad = route("r", "demo", "    - matches: [{ path: { type: RegularExpression, value: \"(\" } }]\n      backendRefs: [{ name: web, port: 80 }]")
        .replace("generation: 1", "generation: 2");
    let second = translate(&state(&bad), &options, &first.last_accepted);
    let parent = &second.statuses[&http_key("demo", "r")].parents[0];
    assert!(!parent.accepted.status);
    assert_eq!(parent.accepted.reason, "UnsupportedValue");
    assert!(parent.accepted.message.contains("does not compile"), "{}", parent.accepted.message);
    assert!(parent.accepted.message.contains("generation 1 stays in force"), "{}", parent.accepted.message);
    assert_eq!(second.statuses[&http_key("demo", "r")].generation, Some(2), "status describes the new generation");
    assert_eq!(second.snapshot.http_routes[0].rules[0].matches[0].path, Some(PathMatch::PathPrefix("/good".into())));

    // Without a previous version there is nothing to keep: the route is not in the config.
    let fresh = translate(&state(&bad), &options, &LastAccepted::new());
    assert!(fresh.snapshot.http_routes.is_empty());
    assert!(!fresh.statuses[&http_key("demo", "r")].parents[0].accepted.message.contains("stays in force"));
}

#[test]
fn unsupported_values_are_not_accepted() {
    let cases = [
        ("bad timeout", "    - timeouts: { request: 2 hours }\n      backendRefs: [{ name: web, port: 80 }]", "timeouts.request"),
        ("mirror percent", "    - filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: web, port: 80 }, percent: 10 } }]\n      backendRefs: [{ name: web, port: 80 }]", "percent"),
        ("prefix rewrite on exact match", "    - matches: [{ path: { type: Exact, value: /a } }]\n      filters: [{ type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /b } } }]\n      backendRefs: [{ name: web, port: 80 }]", "ReplacePrefixMatch"),
    ];
    for (case, rules, fragment) in cases {
        let t = run(&route("r", "demo", rules));
        let parent = &t.statuses[&http_key("demo", "r")].parents[0];
        assert_eq!(parent.accepted.reason, "UnsupportedValue", "{case}");
        assert!(parent.accepted.message.contains(fragment), "{case}: {}", parent.accepted.message);
    }
}

#[test]
fn routes_are_ordered_oldest_first_then_by_name() {
    let make = |name: &str, created: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: {name}, namespace: demo, creationTimestamp: \"{created}\" }}\nspec:\n  parentRefs: [{{ group: \"\", kind: Service, name: web, port: 80 }}]\n  rules: [{{ backendRefs: [{{ name: web, port: 80 }}] }}]\n"
        )
    };
    let t = run(&[
        make("a-new", "2026-02-01T00:00:00Z"),
        make("z-old", "2026-01-01T00:00:00Z"),
        make("b-new", "2026-02-01T00:00:00Z"),
    ]
    .join("---\n"));
    let order: Vec<_> = t.snapshot.http_routes.iter().map(|r| r.id.name.as_str()).collect();
    assert_eq!(order, ["z-old", "a-new", "b-new"]);
}

#[test]
fn grpc_routes_translate_with_the_same_resolution() {
    let t = run(r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: g, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: web, port: 9090 }]
  rules:
    - matches:
        - method: { service: nodus.echo.v1.Echo, method: EchoTwo }
          headers: [{ name: x-tenant, value: a }]
        - method: { type: RegularExpression, service: "nodus\\..*" }
      filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { add: [{ name: x-g, value: "1" }] } }]
      backendRefs: [{ name: web, port: 9090 }, { name: missing, port: 9090 }]
"#);
    let key = RouteKey { kind: RouteKind::Grpc, id: nodus_config::ObjectRef::new("demo", "g") };
    assert_eq!(reasons(&t, &key), ("Accepted".into(), "BackendNotFound".into()));
    let rule = &t.snapshot.grpc_routes[0].rules[0];
    let method = rule.matches[0].method.as_ref().unwrap();
    assert_eq!(
        (method.kind, method.service.as_deref(), method.method.as_deref()),
        (MatchKind::Exact, Some("nodus.echo.v1.Echo"), Some("EchoTwo"))
    );
    assert_eq!(rule.matches[1].method.as_ref().unwrap().kind, MatchKind::RegularExpression);
    assert_eq!(rule.matches[0].headers[0].name, "x-tenant");
    assert_eq!(rule.filters.len(), 1);
    assert!(rule.backends[1].unresolved.is_some());
    t.snapshot.validate().expect("valid");
}

#[test]
fn each_node_gets_its_share() {
    let consumer = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: consumer, namespace: other }
spec:
  parentRefs: [{ group: "", kind: Service, name: web, namespace: demo, port: 80 }]
  rules: [{ backendRefs: [{ name: api, port: 80 }] }]
---
"#;
    let t = run(&format!("{consumer}{}", route("producer", "demo", "    - backendRefs: [{ name: web, port: 80 }]")));
    assert_eq!(t.snapshot.http_routes.len(), 2);
    let node1 = node_view(&t.snapshot, "node-1");
    assert_eq!(node1.workloads.iter().map(|w| w.id.name.as_str()).collect::<Vec<_>>(), ["web-7d9f-x1"]);
    assert_eq!(node1.services.len(), 3);
    assert_eq!(
        node1.http_routes.iter().map(|r| r.id.name.as_str()).collect::<Vec<_>>(),
        ["producer"],
        "the consumer route of namespace other is not for demo's clients"
    );
    node1.validate().expect("a node view is a valid snapshot");
    let node3 = node_view(&t.snapshot, "node-3");
    assert!(node3.services.is_empty() && node3.http_routes.is_empty(), "node-3 has no mesh pods: nothing to route");
    assert_eq!(node3.workloads.len(), 1);
    assert_eq!(node3.nodes.len(), 3);
}

#[test]
fn a_mesh_policy_that_allows_only_mtls_calls_out_reaches_the_proxies() {
    let t = run(r#"apiVersion: policy.nodus.dev/v1alpha1
kind: MeshPolicy
metadata: { name: default, namespace: demo }
spec: { mtls: { outbound: Strict } }
"#);
    assert_eq!(
        t.snapshot.mtls,
        [nodus_config::NamespaceMtls {
            namespace: "demo".into(),
            mode: nodus_config::MtlsMode::Permissive,
            outbound: nodus_config::MtlsMode::Strict
        }]
    );
    // Said on the wire only when set, so that proxies older than the field accept the rest.
    let yaml = serde_norway::to_string(&t.snapshot.mtls).unwrap();
    assert!(yaml.contains("outbound: Strict"), "{yaml}");
    let permissive = nodus_config::NamespaceMtls {
        namespace: "demo".into(),
        mode: nodus_config::MtlsMode::Strict,
        outbound: nodus_config::MtlsMode::Permissive,
    };
    assert!(!serde_norway::to_string(&permissive).unwrap().contains("outbound"));
}

#[test]
fn mesh_and_authorization_policies_translate_and_reach_the_selected_pods_nodes() {
    let t = run(r#"apiVersion: policy.nodus.dev/v1alpha1
kind: MeshPolicy
metadata: { name: default, namespace: demo }
spec: { mtls: { mode: Strict } }
---
apiVersion: policy.nodus.dev/v1alpha1
kind: MeshPolicy
metadata: { name: not-the-default, namespace: other }
spec: { mtls: { mode: Strict } }
---
apiVersion: policy.nodus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-callers, namespace: demo }
spec:
  selector: { matchLabels: { app: web } }
  action: Allow
  rules:
    - identities: ["spiffe://cluster.local/ns/demo/sa/client"]
      ports: [8080]
      methods: [GET]
      paths: ["/api/*"]
"#);
    assert_eq!(
        t.snapshot.mtls,
        [nodus_config::NamespaceMtls {
            namespace: "demo".into(),
            mode: nodus_config::MtlsMode::Strict,
            outbound: nodus_config::MtlsMode::Permissive
        }],
        "only the MeshPolicy named default counts"
    );
    let policy = &t.snapshot.authorization_policies[0];
    assert_eq!(policy.action, nodus_config::AuthorizationAction::Allow);
    assert_eq!(policy.rules[0].paths, ["/api/*"]);
    t.snapshot.validate().expect("valid");
    // web-7d9f-x1 (app=web) runs on node-1; web-7d9f-x2 has no labels.
    assert_eq!(node_view(&t.snapshot, "node-1").authorization_policies.len(), 1);
    assert!(node_view(&t.snapshot, "node-2").authorization_policies.is_empty(), "selects no pod there");
    assert_eq!(node_view(&t.snapshot, "node-2").mtls.len(), 1, "node-2 runs a demo pod");
    assert!(node_view(&t.snapshot, "node-3").mtls.is_empty());
}

/// Found by the `manifests` fuzz target: a rule proxies reject used to reach them and made them
/// NACK every config. Each kind of bad rule now fails closed before it leaves the controller.
#[test]
fn invalid_authorization_rules_fail_closed_and_never_reach_the_proxies() {
    let policy = |action: &str, rule: &str| {
        format!(
            "apiVersion: policy.nodus.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{ name: p, namespace: demo }}\n\
             spec: {{ selector: {{ matchLabels: {{ app: web }} }}, action: {action}, rules: [{{ ports: [80] }}, {rule}] }}\n"
        )
    };
    let cases = [
        r#"{ identities: ["spiffa://cluster.local/ns/demo/sa/client"] }"#,
        r#"{ paths: ["api/*"] }"#,
        r#"{ methods: ["get"] }"#,
        r#"{ ports: [0] }"#,
    ];
    for rule in cases {
        let allow = run(&policy("Allow", rule));
        allow.snapshot.validate().unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert_eq!(allow.snapshot.authorization_policies[0].rules.len(), 1, "{rule}: the bad Allow rule is dropped");
        let deny = run(&policy("Deny", rule));
        deny.snapshot.validate().unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert_eq!(
            deny.snapshot.authorization_policies[0].rules[1],
            nodus_config::AuthorizationRule::default(),
            "{rule}: the bad Deny rule denies every caller"
        );
    }
}

#[test]
fn retry_annotations_set_every_rules_policy_or_say_why_not() {
    let annotated = |annotations: &str| {
        route(
            "r",
            "demo",
            "    - backendRefs: [{ name: web, port: 80 }]\n    - backendRefs: [{ name: web-v2, port: 80 }]",
        )
        .replace("generation: 1 }", &format!("generation: 1, annotations: {{ {annotations} }} }}"))
    };
    let ok = [
        ("attempts only", r#"retry.nodus.dev/attempts: "2""#, Some((2, vec![], None))),
        (
            "all three",
            r#"retry.nodus.dev/attempts: "3", retry.nodus.dev/codes: "502, 503", retry.nodus.dev/backoff: 25ms"#,
            Some((3, vec![502, 503], Some(std::time::Duration::from_millis(25)))),
        ),
        ("none", r#"other: x"#, None),
    ];
    for (case, annotations, expected) in ok {
        let t = run(&annotated(annotations));
        assert_eq!(reasons(&t, &http_key("demo", "r")).0, "Accepted", "{case}");
        let route = &t.snapshot.http_routes[0];
        for rule in &route.rules {
            let got = rule.retry.as_ref().map(|r| (r.attempts, r.codes.clone(), r.backoff.map(|b| b.as_duration())));
            assert_eq!(got, expected, "{case}");
        }
    }
    let bad = [
        ("too many", r#"retry.nodus.dev/attempts: "50""#, "from 1 to 10"),
        ("not 5xx", r#"retry.nodus.dev/attempts: "1", retry.nodus.dev/codes: "404""#, "not a 5xx"),
        ("bad backoff", r#"retry.nodus.dev/attempts: "1", retry.nodus.dev/backoff: soon"#, "backoff"),
        ("codes without attempts", r#"retry.nodus.dev/codes: "503""#, "attempts is required"),
    ];
    for (case, annotations, fragment) in bad {
        let t = run(&annotated(annotations));
        let parent = &t.statuses[&http_key("demo", "r")].parents[0];
        assert_eq!(parent.accepted.reason, "UnsupportedValue", "{case}");
        assert!(parent.accepted.message.contains(fragment), "{case}: {}", parent.accepted.message);
    }
}

#[test]
fn the_retry_field_sets_its_rules_policy_over_the_annotations_or_says_why_not() {
    // Rule 0 has the field (experimental channel, GEP-1731); rule 1 falls back to the annotations.
    let with_field = |retry: &str| {
        route(
            "r",
            "demo",
            &format!("    - backendRefs: [{{ name: web, port: 80 }}]\n      retry: {retry}\n    - backendRefs: [{{ name: web-v2, port: 80 }}]"),
        )
        .replace("generation: 1 }", "generation: 1, annotations: { retry.nodus.dev/attempts: \"2\" } }")
    };
    let ok = [
        ("everything", "{ attempts: 3, codes: [503, 429], backoff: 100ms }", (3, vec![503, 429], Some(100))),
        ("attempts left out", "{ codes: [502] }", (1, vec![502], None)),
        ("no retries", "{ attempts: 0 }", (0, vec![], None)),
    ];
    for (case, retry, expected) in ok {
        let t = run(&with_field(retry));
        assert_eq!(reasons(&t, &http_key("demo", "r")).0, "Accepted", "{case}");
        let rules = &t.snapshot.http_routes[0].rules;
        let got = rules[0]
            .retry
            .as_ref()
            .map(|r| (r.attempts, r.codes.clone(), r.backoff.map(|b| b.as_duration().as_millis() as u64)));
        assert_eq!(got, Some(expected), "{case}");
        assert_eq!(rules[1].retry.as_ref().map(|r| r.attempts), Some(2), "{case}: the annotations still set rule 1");
        t.snapshot.validate().unwrap_or_else(|e| panic!("{case}: {e}"));
    }
    let bad = [
        ("too many", "{ attempts: 11 }", "rules[0].retry.attempts 11 is outside 0-10"),
        ("not an error status", "{ codes: [302] }", "rules[0].retry.codes: 302 is not a status code from 400 to 599"),
        ("bad backoff", "{ backoff: soon }", "rules[0].retry.backoff"),
    ];
    for (case, retry, fragment) in bad {
        let t = run(&with_field(retry));
        let parent = &t.statuses[&http_key("demo", "r")].parents[0];
        assert_eq!(parent.accepted.reason, "UnsupportedValue", "{case}");
        assert!(parent.accepted.message.contains(fragment), "{case}: {}", parent.accepted.message);
    }
    // A field Nodus does not implement is named, never dropped.
    let t = run(&route(
        "r",
        "demo",
        "    - backendRefs: [{ name: web, port: 80 }]\n      sessionPersistence: { sessionName: s }",
    ));
    let parent = &t.statuses[&http_key("demo", "r")].parents[0];
    assert_eq!(parent.accepted.reason, "UnsupportedValue");
    assert!(
        parent.accepted.message.contains("rules[0].sessionPersistence is not supported"),
        "{}",
        parent.accepted.message
    );
}
