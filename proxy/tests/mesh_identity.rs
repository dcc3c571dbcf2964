//! The caller's identity cannot be forged, however a client shapes its bytes: requests with
//! leading empty lines, lowercase methods, or sent only after the client stayed silent past the
//! detection timeout are still HTTP, so the proxy removes a forged `x-nodus-client-identity`
//! and the destination learns the real caller, on the same node and across nodes; a port
//! declared HTTP answers what is not HTTP with 400 instead of relaying it; and a path cannot be
//! shaped around a Deny rule (dot segments, doubled slashes, percent-encoding), from a mesh pod
//! across nodes or from a pod outside the mesh straight to the pod's address. Raw bytes from a
//! Python socket in the client pod. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{metric_value, skip_unless_lab_supported};
use std::time::Duration;
use support::controlled::{mesh_policy, start_mesh, write, MtlsMesh};

/// Services with undeclared ports (no name, no appProtocol: the proxy detects the protocol),
/// on node-2 (echo-v1-0) and node-1 (echo-v2-0).
const UNDECLARED: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: plain-v1, namespace: demo }
spec: { clusterIP: 10.96.0.15, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: plain-v2, namespace: demo }
spec: { clusterIP: 10.96.0.16, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: plain-v1-1, namespace: demo, labels: { kubernetes.io/service-name: plain-v1 } }
addressType: IPv4
ports: [{ port: 8080 }]
endpoints:
  - { addresses: [10.244.2.2], nodeName: node-2, targetRef: { kind: Pod, namespace: demo, name: echo-v1-0 } }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: plain-v2-1, namespace: demo, labels: { kubernetes.io/service-name: plain-v2 } }
addressType: IPv4
ports: [{ port: 8080 }]
endpoints:
  - { addresses: [10.244.1.3], nodeName: node-1, targetRef: { kind: Pod, namespace: demo, name: echo-v2-0 } }
"#;

/// Connects, waits `argv[3]` seconds, sends `argv[4]` (Python escapes), prints what comes back
/// until the server closes (`RESET` after it when the connection was reset).
const RAW_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=15)
time.sleep(float(sys.argv[3]))
data = b""
try:
    s.sendall(sys.argv[4].encode().decode("unicode_escape").encode("latin-1"))
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except ConnectionResetError:
    data += b"RESET"
sys.stdout.write(data.decode("latin-1"))
"#;

fn raw(mesh: &MtlsMesh, target: &str, wait_secs: f64, bytes: &str) -> String {
    raw_from(&mesh.client, target, wait_secs, bytes)
}

fn raw_from(pod: &nodus_harness::Pod, target: &str, wait_secs: f64, bytes: &str) -> String {
    let (ip, port) = target.split_once(':').unwrap();
    let out = pod
        .command("python3")
        .unwrap()
        .args(["-c", RAW_CLIENT, ip, port, &wait_secs.to_string(), bytes])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";

/// The identity the echo reports it was told, from an HTTP/1.1 answer.
fn identity_told(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    report["headers"]["x-nodus-client-identity"].clone()
}

#[test]
fn a_forged_identity_header_never_reaches_the_application() {
    skip_unless_lab_supported!();
    let mesh = start_mesh(&[]);
    let version = metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    write(&mesh.manifests.join("undeclared.yaml"), UNDECLARED);
    mesh.proxy1.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();

    let request = |method: &str| {
        format!("{method} / HTTP/1.1\\r\\nHost: echo\\r\\nx-nodus-client-identity: spiffe://cluster.local/ns/kube-system/sa/admin\\r\\nConnection: close\\r\\n\\r\\n")
    };
    let mut failures = Vec::new();
    // (what, wait before sending, bytes)
    let shapes = [
        ("plain", 0.0, request("GET")),
        ("a leading empty line", 0.0, format!("\\r\\n{}", request("GET"))),
        ("a lowercase method", 0.0, request("get")),
        ("silent past the detection timeout", 1.5, request("GET")),
    ];
    // Across nodes and on the same node; ports declared HTTP (by name) and undeclared.
    for target in ["10.96.0.11:80", "10.96.0.12:80", "10.96.0.15:80", "10.96.0.16:80"] {
        for (shape, wait, bytes) in &shapes {
            let answer = raw(&mesh, target, *wait, bytes);
            let told = if answer.starts_with("HTTP/1.1 200") { identity_told(&answer) } else { answer.clone().into() };
            if told != serde_json::json!([CLIENT_ID]) {
                failures.push(format!("{target}, {shape}: told {told}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_port_declared_http_answers_what_is_not_http_with_400() {
    skip_unless_lab_supported!();
    let mesh = start_mesh(&[]);
    // A TLS ClientHello's first bytes, and a request line HTTP/1.1 cannot parse.
    for bytes in
        ["\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03\\r\\n\\r\\n", "GET /a b c HTTP/1.1\\r\\n\\r\\n"]
    {
        for target in ["10.96.0.11:80", "10.96.0.12:80"] {
            let answer = raw(&mesh, target, 0.0, bytes);
            assert!(answer.starts_with("HTTP/1.1 400"), "{target} {bytes:?}: {answer:?}");
        }
    }
    // The proxy answered: nothing was relayed to the applications as bytes.
    let (_, metrics) = mesh.proxy1.admin_get("/metrics").unwrap();
    assert!(!metrics.contains(r#"protocol="opaque",destination="demo/echo-v"#), "{metrics}");
}

/// Nobody may call /admin paths of echo v1 (on node-2).
const DENY_ADMIN: &str = r#"
apiVersion: policy.nodus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: demo }
spec:
  selector: { matchLabels: { app: echo, version: v1 } }
  action: Deny
  rules: [{ paths: ["/admin", "/admin/*"] }]
"#;

#[test]
fn no_spelling_of_a_path_walks_around_a_deny_rule() {
    skip_unless_lab_supported!();
    let mut mesh = start_mesh(&[]);
    let outsider = mesh.lab.add_pod("node-1", "plain", "outsider").unwrap();
    // Permissive, so that plaintext from outside the mesh is served (and policy decides).
    for (file, text) in [("mesh-policy.yaml", mesh_policy("Permissive")), ("deny-admin.yaml", DENY_ADMIN.to_owned())] {
        let version = metric_value(&mesh.proxy2.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
        write(&mesh.manifests.join(file), &text);
        mesh.proxy2.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    }

    let request = |path: &str| format!("GET {path} HTTP/1.1\\r\\nHost: echo\\r\\nConnection: close\\r\\n\\r\\n");
    // Each spelling normalises to a denied path (403), or is refused as ambiguous (400); none
    // may reach the application (200).
    let spellings = [
        ("/admin/users", "403"),
        ("//admin/users", "403"),
        ("/admin//users", "403"),
        ("/x/../admin/users", "403"),
        ("/./admin/users", "403"),
        ("/%2e%2e/admin/users", "403"),
        ("/x/%2E%2E/admin", "403"),
        ("/%61dmin/users", "403"),
        ("/admin/users/.", "403"),
        ("/admin%2Fusers", "400"),
        ("/x%2F..%2Fadmin", "400"),
        ("/x\\\\..\\\\admin", "400"),
    ];
    let mut failures = Vec::new();
    // From the mesh client across nodes (the source proxy normalises), and from a pod outside
    // the mesh straight to the pod (only the destination's proxy sees it).
    let callers = [
        ("mesh client via the Service", &mesh.client, "10.96.0.11:80"),
        ("outsider to the pod", &outsider, "10.244.2.2:8080"),
    ];
    for (caller, pod, target) in callers {
        for (path, expected) in spellings {
            let answer = raw_from(pod, target, 0.0, &request(path));
            let status = answer.get(9..12).unwrap_or_default();
            // A 400 may reach the client as a reset when the proxy closes with bytes unread.
            let refused = status == expected || (expected == "400" && answer == "RESET");
            if !refused {
                failures.push(format!("{caller} {path}: expected {expected}, got {:?}", answer.lines().next()));
            }
        }
        // What is allowed still passes, in its normal form.
        let answer = raw_from(pod, target, 0.0, &request("/public//x/../y"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{caller}: {answer}");
        assert!(answer.contains(r#""path":"/public/y""#), "{caller}: the application sees the normal form: {answer}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The destination's side removes hop-by-hop headers too (RFC 9110 §7.6.1): only it sees a
    // request from outside the mesh.
    let hop_by_hop = "GET /public HTTP/1.1\\r\\nHost: echo\\r\\nConnection: close, x-private\\r\\nx-private: 1\\r\\nKeep-Alive: timeout=5\\r\\nProxy-Authorization: Basic eA==\\r\\nx-end-to-end: 1\\r\\n\\r\\n";
    let answer = raw_from(&outsider, "10.244.2.2:8080", 0.0, hop_by_hop);
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    let headers = report["headers"].as_object().unwrap();
    for name in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(!headers.contains_key(name), "{name} reached the pod: {answer}");
    }
    assert!(headers.contains_key("x-end-to-end"), "{answer}");
}
