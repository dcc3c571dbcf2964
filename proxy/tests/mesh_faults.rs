//! Faults under steady load, in the lab mesh with the controller: config churn, losing the
//! controller, losing a backend pod. Every failed request counts. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{metric_value, skip_unless_lab_supported, NodeProxy, Pod};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::controlled::{load_totals, sibling, start_mesh, start_mesh_with, write};

/// Steady HTTP load from `pod` to `target` in the background; its summary lines on stdout.
fn spawn_load(pod: &Pod, target: &str, rate: u32, seconds: u32) -> Child {
    pod.command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", target, "--rate", &rate.to_string(), "--duration-secs", &seconds.to_string()])
        .args(["--report-every", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn metric(proxy: &NodeProxy, name: &str) -> f64 {
    metric_value(&proxy.admin_get("/metrics").unwrap().1, name).unwrap_or(f64::NAN)
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: echo-split, namespace: demo }}
spec:
  parentRefs: [{{ group: "", kind: Service, name: echo, port: 80 }}]
  rules:
    - name: canary
      backendRefs:
        - {{ name: echo-v1, port: 80, weight: {v1} }}
        - {{ name: echo-v2, port: 80, weight: {v2} }}
"#
    )
}

/// A second slice for echo-v2 that adds echo-v1-0 (on node-2) to its endpoints.
const EXTRA_ENDPOINT: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: echo-v2-2, namespace: demo, labels: { kubernetes.io/service-name: echo-v2 } }
addressType: IPv4
ports: [{ name: http, port: 8080 }, { name: grpc, port: 9090 }]
endpoints:
  - { addresses: [10.244.2.2], nodeName: node-2, targetRef: { kind: Pod, namespace: demo, name: echo-v1-0 } }
"#;

#[test]
fn routes_and_endpoints_changing_every_second_under_load_fail_no_request() {
    skip_unless_lab_supported!();
    let mesh = start_mesh(&[]);
    let version_before = metric(&mesh.proxy1, "nodus_config_version");
    let load = spawn_load(&mesh.client, "10.96.0.10:80", 100, 10);
    let extra = mesh.manifests.join("extra-endpoint.yaml");
    for second in 0..8 {
        std::thread::sleep(Duration::from_secs(1));
        // The split flips, and echo-v2 gains or loses a remote endpoint, every second.
        let (v1, v2) = if second % 2 == 0 { (20, 80) } else { (80, 20) };
        write(&mesh.manifests.join("routes.yaml"), &split(v1, v2));
        if second % 2 == 0 {
            write(&extra, EXTRA_ENDPOINT);
        } else {
            std::fs::remove_file(&extra).unwrap();
        }
    }
    let out = load.wait_with_output().unwrap();
    let (requests, ok) = load_totals(&out.stdout);
    assert!(requests >= 900, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ok, requests, "no failed request while config churns: {}", String::from_utf8_lossy(&out.stdout));
    let applied = metric(&mesh.proxy1, "nodus_config_version") - version_before;
    assert!(applied >= 8.0, "node-1 applied a new config each second ({applied} versions)");
}

#[test]
fn losing_the_controller_under_load_fails_no_request_and_proxies_resync_when_it_returns() {
    skip_unless_lab_supported!();
    // The CA survives the controller's restart (a Secret in a cluster, a directory here).
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_arg = ca_dir.path().to_str().unwrap().to_string();
    let controller_args = ["--ca-dir", ca_arg.as_str()];
    let mut mesh = start_mesh(&controller_args);
    let load = spawn_load(&mesh.client, "10.96.0.10:80", 100, 12);
    std::thread::sleep(Duration::from_secs(2));
    mesh.controller.kill();
    for proxy in [&mesh.proxy1, &mesh.proxy2] {
        proxy
            .wait_for_metric_where("nodus_control_plane_connected", "drop to 0", |v| v == 0.0, Duration::from_secs(5))
            .unwrap();
    }
    // A change made while the controller is away reaches the proxies once it is back.
    write(&mesh.manifests.join("routes.yaml"), &split(0, 100));
    std::thread::sleep(Duration::from_secs(3));
    let node1 = mesh.node1.clone();
    let (controller, _url) = mesh
        .lab
        .start_controller(&node1, &sibling("nodus-controller"), &mesh.manifests, &mesh.status_file, &controller_args)
        .unwrap();
    mesh.controller = controller;
    let started = Instant::now();
    for proxy in [&mesh.proxy1, &mesh.proxy2] {
        proxy.wait_for_metric("nodus_control_plane_connected", 1.0, Duration::from_secs(15)).unwrap();
    }
    let reconnect = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    let only_v2 = || {
        let (_, dump) = mesh.proxy1.debug_get("/config_dump").unwrap();
        dump.contains("\"weight\": 0")
    };
    while !only_v2() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(only_v2(), "the change made during the outage arrived after the controller returned");
    let out = load.wait_with_output().unwrap();
    let (requests, ok) = load_totals(&out.stdout);
    assert!(requests >= 1000, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ok, requests, "no failed request without the controller: {}", String::from_utf8_lossy(&out.stdout));
    eprintln!("proxies reconnected {reconnect:?} after the controller restarted");
}

/// A Service over both echo pods, routed with retries on connection failures and 502/503.
const BOTH_PODS: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: echo-both, namespace: demo }
spec: { clusterIP: 10.96.0.14, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: echo-both-1, namespace: demo, labels: { kubernetes.io/service-name: echo-both } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints:
  - { addresses: [10.244.2.2], nodeName: node-2, targetRef: { kind: Pod, namespace: demo, name: echo-v1-0 } }
  - { addresses: [10.244.1.3], nodeName: node-1, targetRef: { kind: Pod, namespace: demo, name: echo-v2-0 } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-both
  namespace: demo
  annotations: { retry.nodus.dev/attempts: "2", retry.nodus.dev/codes: "502,503" }
spec:
  parentRefs: [{ group: "", kind: Service, name: echo-both, port: 80 }]
  rules:
    - backendRefs: [{ name: echo-both, port: 80 }]
"#;

#[test]
fn losing_a_backend_pod_under_load_keeps_success_above_99_9_percent() {
    skip_unless_lab_supported!();
    let mut mesh = start_mesh(&[]);
    write(&mesh.manifests.join("echo-both.yaml"), BOTH_PODS);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mesh.proxy1.debug_get("/config_dump").unwrap().1.contains("echo-both") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let load = spawn_load(&mesh.client, "10.96.0.14:80", 200, 8);
    std::thread::sleep(Duration::from_secs(2));
    // echo-v2-0 (node-1) dies; its endpoint stays in the Service (no controller notices here),
    // so only retries and outlier ejection stand between it and the clients.
    mesh.echoes[1].kill();
    let out = load.wait_with_output().unwrap();
    let (requests, ok) = load_totals(&out.stdout);
    assert!(requests >= 1400, "{}", String::from_utf8_lossy(&out.stdout));
    let success = ok as f64 / requests as f64;
    eprintln!("backend loss: {ok}/{requests} succeeded ({:.4}%)", success * 100.0);
    assert!(success >= 0.999, "success {success:.5} < 99.9%: {}", String::from_utf8_lossy(&out.stdout));
    let ejections = metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_endpoint_ejections_total");
    assert!(ejections.unwrap_or(0.0) >= 1.0, "the dead endpoint was ejected");
}

/// (requests, ok, worst p99 in ms) of `nodus-echo-client --report-every` summaries.
fn load_summary(stdout: &[u8]) -> (u64, u64, f64) {
    let (requests, ok) = load_totals(stdout);
    let p99 = String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["p99_ms"].as_f64())
        .fold(0.0, f64::max);
    (requests, ok, p99)
}

#[test]
fn a_pod_flooding_the_shared_proxy_does_not_starve_its_neighbour() {
    skip_unless_lab_supported!();
    // Bound stated in docs/operations.md: under a flood from another pod on the node, a
    // neighbour at 100 req/s keeps every request and a p99 under 100 ms on this 2-core machine.
    // Under nextest the test runs alone (.config/nextest.toml): other tests' load is not the
    // flood the bound is about.
    let mesh = start_mesh_with(&[], &["--max-requests-per-source", "16", "--max-connections-per-source", "64"]);
    let quiet = spawn_load(&mesh.client, "10.96.0.12:80", 100, 3);
    let (requests, ok, quiet_p99) = load_summary(&quiet.wait_with_output().unwrap().stdout);
    assert_eq!(ok, requests);
    // echo-v2-0 (also on node-1) floods: 20,000 req/s asked of one proxy worker.
    let flood = mesh
        .echo_v2
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.12:80", "--rate", "20000", "--duration-secs", "8", "--report-every", "60"])
        .args(["--timeout-ms", "2000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let victim = spawn_load(&mesh.client, "10.96.0.12:80", 100, 6);
    let (requests, ok, flooded_p99) = load_summary(&victim.wait_with_output().unwrap().stdout);
    let (flood_requests, flood_ok, _) = load_summary(&flood.wait_with_output().unwrap().stdout);
    let limited = metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_source_limited_total");
    eprintln!(
        "noisy neighbour: victim p99 {quiet_p99:.1} ms quiet, {flooded_p99:.1} ms under the flood; \
         victim {ok}/{requests} ok; flooder {flood_ok}/{flood_requests} ok; source_limited {limited:?}"
    );
    assert!(requests >= 550, "the victim's load ran");
    assert_eq!(ok, requests, "the neighbour lost no request");
    assert!(flooded_p99 < 100.0, "the neighbour's p99 stayed under 100 ms: {flooded_p99:.1} ms");
    assert!(limited.unwrap_or(0.0) > 0.0, "the flooder was held to its share");
}
