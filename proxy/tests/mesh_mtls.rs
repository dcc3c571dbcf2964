//! Mutual TLS between node proxies in the lab, with the controller in standalone mode on the
//! example manifests: requests across nodes carry the source workload's identity; a strict
//! namespace refuses a plaintext tunnel, a permissive one accepts and counts it. Needs root.
#![allow(clippy::unwrap_used)]

use nodus_harness::{metric_value, skip_unless_lab_supported, start_echo, ConfigSource, Lab, LabSpec, NetNs};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn sibling(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nodus-proxy")).with_file_name(name)
}

fn mesh_policy(mode: &str) -> String {
    format!("apiVersion: policy.nodus.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{ name: default, namespace: demo }}\nspec: {{ mtls: {{ mode: {mode} }} }}\n")
}

fn write(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A plaintext HTTP/2 CONNECT to node-2's inbound listener, from node-1's namespace: what a
/// proxy without identities (or anything else on the network) would send. Returns the status.
fn plaintext_connect(node1: &NetNs) -> u16 {
    node1
        .run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let tcp = tokio::net::TcpStream::connect("10.100.0.12:15008").await.unwrap();
                let (mut sender, connection) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tcp),
                )
                .await
                .unwrap();
                tokio::spawn(connection);
                let request = http::Request::builder()
                    .method(http::Method::CONNECT)
                    .uri("10.244.2.2:8080")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                sender.send_request(request).await.unwrap().status().as_u16()
            })
        })
        .unwrap()
}

/// The lab mesh of these tests: controller (standalone, on the example manifests plus a
/// strict MeshPolicy and an opaque-TCP Service), proxies with mTLS on both nodes, echo pods.
struct MtlsMesh {
    proxy1: nodus_harness::NodeProxy,
    proxy2: nodus_harness::NodeProxy,
    client: nodus_harness::Pod,
    echo_v2: nodus_harness::Pod,
    node1: nodus_harness::Node,
    manifests: PathBuf,
    _controller: nodus_harness::Process,
    _echoes: [nodus_harness::Process; 2],
    // Dropped last: the lab is torn down after the processes in it.
    _lab: Lab,
}

fn start_mesh(controller_args: &[&str]) -> MtlsMesh {
    let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
    let client = lab.add_pod("node-1", "demo", "client").unwrap();
    let echo_v2 = lab.add_pod("node-1", "demo", "echo-v2-0").unwrap();
    let echo_v1 = lab.add_pod("node-2", "demo", "echo-v1-0").unwrap();
    let echoes = [
        start_echo(&echo_v1, &sibling("nodus-echo"), &[8080, 9090]).unwrap(),
        start_echo(&echo_v2, &sibling("nodus-echo"), &[8080, 9090]).unwrap(),
    ];
    let manifests = lab.work_dir().unwrap().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local-mesh");
    for file in ["cluster.yaml", "routes.yaml"] {
        std::fs::copy(examples.join(file), manifests.join(file)).unwrap();
    }
    write(&manifests.join("mesh-policy.yaml"), &mesh_policy("Strict"));
    write(&manifests.join("tcp-service.yaml"), OPAQUE_SERVICE);
    let node1 = lab.node("node-1").unwrap().clone();
    let node2 = lab.node("node-2").unwrap().clone();
    let status_file = lab.work_dir().unwrap().join("status.yaml");
    let (controller, url) =
        lab.start_controller(&node1, &sibling("nodus-controller"), &manifests, &status_file, controller_args).unwrap();
    let proxy_binary = PathBuf::from(env!("CARGO_BIN_EXE_nodus-proxy"));
    let proxy1 = lab.start_node_proxy(&node1, &proxy_binary, ConfigSource::Controller(url.clone()), &[]).unwrap();
    let proxy2 = lab.start_node_proxy(&node2, &proxy_binary, ConfigSource::Controller(url), &[]).unwrap();
    proxy1.wait_for_metric("nodus_redirect_enrolled_pods", 2.0, Duration::from_secs(15)).unwrap();
    proxy1.wait_for_metric("nodus_workload_certificates_issued_total", 2.0, Duration::from_secs(15)).unwrap();
    proxy2.wait_for_metric("nodus_workload_certificates_issued_total", 1.0, Duration::from_secs(15)).unwrap();
    MtlsMesh { proxy1, proxy2, client, echo_v2, node1, manifests, _controller: controller, _echoes: echoes, _lab: lab }
}

#[test]
fn tunnels_are_mutual_tls_and_strict_namespaces_refuse_plaintext() {
    skip_unless_lab_supported!();
    let mesh = start_mesh(&[]);
    let MtlsMesh { proxy2, client, node1, manifests, .. } = &mesh;

    // Across nodes through the mesh: mutual TLS, node-2 knows the caller.
    let out = client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.11:80", "--count", "5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| l.contains("\"status\":200")).count(), 5, "{text}");
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    let mtls = metric_value(
        &metrics,
        r#"nodus_inbound_tunnels_total{tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/client",destination="demo/echo-v1-0",result="allowed"}"#,
    );
    assert!(mtls.unwrap_or(0.0) >= 1.0, "{metrics}");
    // The destination proxy tells the application who called, and a caller cannot forge it.
    let out = client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args([
            "--target",
            "10.96.0.11:80",
            "--count",
            "1",
            "-H",
            "x-nodus-client-identity: spiffe://cluster.local/ns/kube-system/sa/admin",
        ])
        .output()
        .unwrap();
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        answer["report"]["headers"]["x-nodus-client-identity"],
        serde_json::json!(["spiffe://cluster.local/ns/demo/sa/client"]),
        "{answer}"
    );
    // Same node (echo-v2-0 is on node-1): set by node-1's proxy, equally unforgeable.
    let out = client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.12:80", "--count", "1", "-H", "x-nodus-client-identity: forged"])
        .output()
        .unwrap();
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        answer["report"]["headers"]["x-nodus-client-identity"],
        serde_json::json!(["spiffe://cluster.local/ns/demo/sa/client"]),
        "{answer}"
    );

    // Opaque TCP (appProtocol: tcp, never parsed) crosses over mutual TLS too: in a strict
    // namespace a plaintext tunnel would be refused and this request would fail.
    let out = client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.13:7000", "--count", "1"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"status\":200"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    let after = metric_value(
        &metrics,
        r#"nodus_inbound_tunnels_total{tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/client",destination="demo/echo-v1-0",result="allowed"}"#,
    );
    assert!(after > mtls, "the opaque connection's tunnel stream is mTLS: {mtls:?} -> {after:?}");

    // Plaintext to a pod of a strict namespace: refused, and counted.
    assert_eq!(plaintext_connect(node1.netns()), 403);
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(
            r#"tls="plaintext",client_identity="",destination="demo/echo-v1-0",result="plaintext_to_strict""#
        ),
        "{metrics}"
    );

    // Permissive: plaintext accepted, and marked as such.
    let version = metric_value(&proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    write(&manifests.join("mesh-policy.yaml"), &mesh_policy("Permissive"));
    proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    assert_eq!(plaintext_connect(node1.netns()), 200);
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"tls="plaintext",client_identity="",destination="demo/echo-v1-0",result="allowed""#),
        "{metrics}"
    );

    // Authorization: only another identity may call echo v1: HTTP gets 403, gRPC
    // PERMISSION_DENIED, and the denial is counted; removing the policy lets calls through.
    let policy = manifests.join("authz.yaml");
    write(&policy, AUTHZ_ONLY_NOBODY);
    let version = metric_value(&proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    let call = |args: &[&str]| {
        let out = client.command(sibling("nodus-echo-client")).unwrap().args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let http = call(&["--target", "10.96.0.11:80", "--count", "1"]);
    assert!(http.contains("\"status\":403"), "{http}");
    let grpc = call(&["--target", "10.96.0.11:9090", "--protocol", "grpc", "--count", "1"]);
    assert!(grpc.contains("\"grpc_status\":7"), "{grpc}");
    let opaque = call(&["--target", "10.96.0.13:7000", "--count", "1"]);
    assert!(opaque.contains("ConnectionReset"), "denied opaque TCP is reset: {opaque}");
    let (_, metrics) = proxy2.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"nodus_authorization_denials_total{client_identity="spiffe://cluster.local/ns/demo/sa/client",destination="demo/echo-v1-0",policy="no allow policy matched"}"#),
        "{metrics}"
    );
    std::fs::remove_file(&policy).unwrap();
    let version = metric_value(&proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    let http = call(&["--target", "10.96.0.11:80", "--count", "1"]);
    assert!(http.contains("\"status\":200"), "{http}");

    // HTTP rules are decided per request: /admin is denied, the rest of the stream is not.
    write(&policy, DENY_ADMIN);
    let version = metric_value(&proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    let admin = call(&["--target", "10.96.0.11:80", "--path", "/admin/users", "--count", "1"]);
    assert!(admin.contains("\"status\":403"), "{admin}");
    let other = call(&["--target", "10.96.0.11:80", "--path", "/public", "--count", "2"]);
    assert_eq!(other.matches("\"status\":200").count(), 2, "{other}");
    let grpc = call(&["--target", "10.96.0.11:9090", "--protocol", "grpc", "--count", "1"]);
    assert!(grpc.contains("\"grpc_status\":0"), "gRPC paths are not /admin: {grpc}");
}

/// Nobody may call /admin paths of echo v1.
const DENY_ADMIN: &str = r#"
apiVersion: policy.nodus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: demo }
spec:
  selector: { matchLabels: { app: echo, version: v1 } }
  action: Deny
  rules: [{ paths: ["/admin/*"] }]
"#;

/// Only spiffe://cluster.local/ns/demo/sa/nobody may call echo v1.
const AUTHZ_ONLY_NOBODY: &str = r#"
apiVersion: policy.nodus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: echo-v1-callers, namespace: demo }
spec:
  selector: { matchLabels: { app: echo, version: v1 } }
  action: Allow
  rules: [{ identities: ["spiffe://cluster.local/ns/demo/sa/nobody"] }]
"#;

/// A Service whose port is declared opaque TCP, backed by echo-v1-0 on node-2.
const OPAQUE_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: echo-tcp, namespace: demo }
spec: { clusterIP: 10.96.0.13, ports: [{ name: tcp, port: 7000, targetPort: 8080, appProtocol: tcp }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: echo-tcp-1, namespace: demo, labels: { kubernetes.io/service-name: echo-tcp } }
addressType: IPv4
ports: [{ name: tcp, port: 8080 }]
endpoints:
  - { addresses: [10.244.2.2], nodeName: node-2, targetRef: { kind: Pod, namespace: demo, name: echo-v1-0 } }
"#;

#[test]
fn certificates_rotate_under_load_with_zero_failed_requests() {
    skip_unless_lab_supported!();
    // Two-second certificates: renewed every second on both nodes while traffic crosses them.
    let mesh = start_mesh(&["--certificate-lifetime", "2s"]);
    let issued_before =
        metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_workload_certificates_issued_total")
            .unwrap();
    let out = mesh
        .client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.11:80", "--rate", "100", "--duration-secs", "6", "--report-every", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut requests, mut ok) = (0, 0);
    for line in text.lines() {
        let summary: serde_json::Value = serde_json::from_str(line).unwrap();
        requests += summary["requests"].as_u64().unwrap();
        ok += summary["ok"].as_u64().unwrap();
    }
    assert!(requests >= 500, "{text}");
    assert_eq!(ok, requests, "no failed request while certificates rotate: {text}");
    let issued_after =
        metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_workload_certificates_issued_total")
            .unwrap();
    assert!(
        issued_after - issued_before >= 6.0,
        "both identities renewed several times: {issued_before} -> {issued_after}"
    );
    // A new identity pair now needs a fresh handshake with rotated certificates on both sides.
    let out = mesh
        .echo_v2
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", "10.96.0.11:80", "--count", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| l.contains("\"status\":200")).count(), 3, "{text}");
    let (_, metrics) = mesh.proxy2.admin_get("/metrics").unwrap();
    assert!(metrics.contains(r#"tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/echo""#), "{metrics}");
}
