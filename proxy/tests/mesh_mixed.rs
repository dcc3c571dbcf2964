//! Incremental adoption: a mesh pod calls workloads in the mesh and outside it, on its own node
//! and on the other node, by Service address and by pod address, over HTTP/1.1, HTTP/2, gRPC
//! and opaque TCP. Mesh destinations on the other node go through that node's proxy over mutual
//! TLS; destinations outside the mesh are dialled directly in plaintext (their node's proxy holds
//! no certificate for them), with the source side's L7 handling and metrics that say so; a
//! mesh pod whose node is unknown is refused, never reached in plaintext. docs/security.md
//! holds the same table. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{metric_value, skip_unless_lab_supported, start_echo};
use std::time::Duration;
use support::controlled::{sibling, start_mesh, start_mesh_on_nodes, successes, write, MtlsMesh};

/// A namespace outside the mesh, with a pod on each node, Services for each (HTTP, gRPC and an
/// opaque TCP port), and an opaque Service for the mesh pod on node-1 (the mesh's own
/// `echo-tcp` is on node-2).
const OUTSIDE_THE_MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: legacy }
---
apiVersion: v1
kind: Pod
metadata: { name: local-0, namespace: legacy }
spec: { nodeName: node-1, containers: [{ name: echo, image: nodus-echo }] }
status: { phase: Running, hostIP: 10.100.0.11, podIP: 10.244.1.4 }
---
apiVersion: v1
kind: Pod
metadata: { name: remote-0, namespace: legacy }
spec: { nodeName: node-2, containers: [{ name: echo, image: nodus-echo }] }
status: { phase: Running, hostIP: 10.100.0.12, podIP: 10.244.2.3 }
---
apiVersion: v1
kind: Service
metadata: { name: local, namespace: legacy }
spec:
  clusterIP: 10.96.1.1
  ports:
    - { name: http, port: 80, targetPort: 8080 }
    - { name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc }
    - { name: tcp, port: 7000, targetPort: 8080, appProtocol: tcp }
---
apiVersion: v1
kind: Service
metadata: { name: remote, namespace: legacy }
spec:
  clusterIP: 10.96.1.2
  ports:
    - { name: http, port: 80, targetPort: 8080 }
    - { name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc }
    - { name: tcp, port: 7000, targetPort: 8080, appProtocol: tcp }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: local-1, namespace: legacy, labels: { kubernetes.io/service-name: local } }
addressType: IPv4
ports: [{ name: http, port: 8080 }, { name: grpc, port: 9090 }, { name: tcp, port: 8080 }]
endpoints:
  - { addresses: [10.244.1.4], nodeName: node-1, targetRef: { kind: Pod, namespace: legacy, name: local-0 } }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: remote-1, namespace: legacy, labels: { kubernetes.io/service-name: remote } }
addressType: IPv4
ports: [{ name: http, port: 8080 }, { name: grpc, port: 9090 }, { name: tcp, port: 8080 }]
endpoints:
  - { addresses: [10.244.2.3], nodeName: node-2, targetRef: { kind: Pod, namespace: legacy, name: remote-0 } }
---
apiVersion: v1
kind: Service
metadata: { name: echo-v2-tcp, namespace: demo }
spec: { clusterIP: 10.96.0.14, ports: [{ name: tcp, port: 7000, targetPort: 8080, appProtocol: tcp }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: echo-v2-tcp-1, namespace: demo, labels: { kubernetes.io/service-name: echo-v2-tcp } }
addressType: IPv4
ports: [{ name: tcp, port: 8080 }]
endpoints:
  - { addresses: [10.244.1.3], nodeName: node-1, targetRef: { kind: Pod, namespace: demo, name: echo-v2-0 } }
"#;

/// Two mesh pods that report no `status.hostIP`, both really on node-2 (the lab's next
/// addresses there): `nohost-0` names node-2, which the other pods there place, so it is reached
/// through node-2's proxy; `lost-0` names a node no pod reports an address for, so nobody knows
/// where its proxy is. Neither EndpointSlice names a node: the Pod's `spec.nodeName` must.
const WITHOUT_HOST_IP: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: lost-0, namespace: demo }
spec: { nodeName: node-9, containers: [{ name: echo, image: nodus-echo }] }
status: { phase: Running, podIP: 10.244.2.3 }
---
apiVersion: v1
kind: Pod
metadata: { name: nohost-0, namespace: demo }
spec: { nodeName: node-2, containers: [{ name: echo, image: nodus-echo }] }
status: { phase: Running, podIP: 10.244.2.4 }
---
apiVersion: v1
kind: Service
metadata: { name: lost, namespace: demo }
spec: { clusterIP: 10.96.0.19, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: nohost, namespace: demo }
spec: { clusterIP: 10.96.0.18, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: lost-1, namespace: demo, labels: { kubernetes.io/service-name: lost } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints:
  - { addresses: [10.244.2.3], targetRef: { kind: Pod, namespace: demo, name: lost-0 } }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: nohost-1, namespace: demo, labels: { kubernetes.io/service-name: nohost } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints:
  - { addresses: [10.244.2.4], targetRef: { kind: Pod, namespace: demo, name: nohost-0 } }
"#;

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Http1,
    Http2,
    Grpc,
    Tcp,
}

/// One cell of the matrix and what it must show.
struct Cell {
    /// Where the destination runs and whether it is in the mesh, for the report.
    name: &'static str,
    protocol: Protocol,
    target: &'static str,
    /// The pod that must answer.
    pod: &'static str,
    /// The identity the destination must be told over HTTP (`None`: none at all, not even the
    /// forged one the client sends).
    identity: Option<&'static str>,
}

const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";

fn matrix() -> Vec<Cell> {
    use Protocol::*;
    let mut cells = Vec::new();
    // (where, service address, pod address, pod, identity told to the pod; opaque TCP port)
    let destinations = [
        ("other node, in the mesh", "10.96.0.11", "10.244.2.2", "echo-v1-0", Some(CLIENT_ID), "10.96.0.13:7000"),
        ("same node, in the mesh", "10.96.0.12", "10.244.1.3", "echo-v2-0", Some(CLIENT_ID), "10.96.0.14:7000"),
        ("other node, outside the mesh", "10.96.1.2", "10.244.2.3", "remote-0", None, "10.96.1.2:7000"),
        ("same node, outside the mesh", "10.96.1.1", "10.244.1.4", "local-0", None, "10.96.1.1:7000"),
    ];
    for (name, service, pod_ip, pod, identity, tcp) in destinations {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        for (protocol, port) in [(Http1, 80), (Http2, 80), (Grpc, 9090)] {
            cells.push(Cell { name, protocol, target: leak(format!("{service}:{port}")), pod, identity });
        }
        let pod_port = |port: u16| leak(format!("{pod_ip}:{port}"));
        // By pod address the proxy knows no Service (no route, no L7): relayed as opaque TCP,
        // through the tunnel for a mesh pod on the other node, so HTTP still reaches it whole.
        cells.push(Cell { name, protocol: Http1, target: pod_port(8080), pod, identity: None });
        cells.push(Cell { name, protocol: Grpc, target: pod_port(9090), pod, identity: None });
        cells.push(Cell { name, protocol: Tcp, target: tcp, pod, identity: None });
    }
    cells
}

/// Runs one cell from the client pod; `Err` says what was wrong.
fn check(mesh: &MtlsMesh, cell: &Cell) -> Result<(), String> {
    let protocol = match cell.protocol {
        Protocol::Http1 | Protocol::Tcp => "h1",
        Protocol::Http2 => "h2",
        Protocol::Grpc => "grpc",
    };
    let out = mesh
        .client
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args([
            "--target",
            cell.target,
            "--protocol",
            protocol,
            "--count",
            "2",
            "-H",
            "x-nodus-client-identity: forged",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let answers: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if answers.len() != 2 {
        return Err(format!("expected 2 answers: {text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    for answer in &answers {
        let ok = match cell.protocol {
            Protocol::Grpc => answer["grpc_status"] == 0,
            _ => answer["status"] == 200,
        };
        if !ok || answer["pod"] != cell.pod {
            return Err(format!("expected an answer from {}: {answer}", cell.pod));
        }
        if matches!(cell.protocol, Protocol::Grpc) {
            continue; // The gRPC echo reports no headers.
        }
        // Relayed as bytes (by pod address, opaque ports) the proxy reads no header: what the
        // application may trust then is docs/security.md's concern, not this matrix's.
        if cell.target.starts_with("10.244.") || matches!(cell.protocol, Protocol::Tcp) {
            continue;
        }
        let told = &answer["report"]["headers"]["x-nodus-client-identity"];
        let expected = cell.identity.map_or(serde_json::Value::Null, |identity| serde_json::json!([identity]));
        if *told != expected {
            return Err(format!("identity header: expected {expected}, got {told}"));
        }
    }
    Ok(())
}

#[test]
fn mesh_pods_reach_workloads_in_and_outside_the_mesh_on_every_node() {
    skip_unless_lab_supported!();
    let mut mesh = start_mesh(&[]);
    let local = mesh.lab.add_pod("node-1", "legacy", "local-0").unwrap();
    let remote = mesh.lab.add_pod("node-2", "legacy", "remote-0").unwrap();
    assert_eq!((local.ip.to_string(), remote.ip.to_string()), ("10.244.1.4".into(), "10.244.2.3".into()));
    let _echoes = [
        start_echo(&local, &sibling("nodus-echo"), &[8080, 9090]).unwrap(),
        start_echo(&remote, &sibling("nodus-echo"), &[8080, 9090]).unwrap(),
    ];
    let version = metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    write(&mesh.manifests.join("legacy.yaml"), OUTSIDE_THE_MESH);
    mesh.proxy1.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();

    let failures: Vec<String> = matrix()
        .iter()
        .filter_map(|cell| {
            check(&mesh, cell).err().map(|why| format!("{} / {:?} / {}: {why}", cell.name, cell.protocol, cell.target))
        })
        .collect();
    assert!(failures.is_empty(), "{} cells failed:\n{}", failures.len(), failures.join("\n"));

    // The source's metrics say how each call travelled.
    let (_, metrics) = mesh.proxy1.admin_get("/metrics").unwrap();
    let requests = |service: &str, tls: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("nodus_requests_total{") && l.contains(&format!("dst_service=\"{service}\"")))
            .filter(|l| l.contains(&format!("tls=\"{tls}\"")))
            .count()
    };
    assert!(requests("remote", "plaintext") > 0, "{metrics}");
    assert!(requests("local", "plaintext") > 0, "{metrics}");
    assert!(requests("echo-v1", "mtls") > 0, "{metrics}");
    assert!(requests("echo-v2", "local") > 0, "{metrics}");
    assert_eq!(requests("remote", "mtls"), 0, "{metrics}");
    // Node-2's proxy was never asked to tunnel to the pod outside the mesh.
    let (_, metrics2) = mesh.proxy2.admin_get("/metrics").unwrap();
    assert!(!metrics2.contains("destination=\"legacy/remote-0\""), "{metrics2}");
}

#[test]
fn mesh_pods_without_a_host_ip_are_placed_by_their_node_name_or_refused() {
    skip_unless_lab_supported!();
    let mut mesh = start_mesh(&[]);
    let lost = mesh.lab.add_pod("node-2", "demo", "lost-0").unwrap();
    let nohost = mesh.lab.add_pod("node-2", "demo", "nohost-0").unwrap();
    assert_eq!((lost.ip.to_string(), nohost.ip.to_string()), ("10.244.2.3".into(), "10.244.2.4".into()));
    let _echoes = [
        start_echo(&lost, &sibling("nodus-echo"), &[8080]).unwrap(),
        start_echo(&nohost, &sibling("nodus-echo"), &[8080]).unwrap(),
    ];
    let version = metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    write(&mesh.manifests.join("without-host-ip.yaml"), WITHOUT_HOST_IP);
    mesh.proxy1.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    mesh.proxy1
        .wait_for_metric(r#"nodus_unplaced_mesh_endpoints{reason="node_unknown"}"#, 1.0, Duration::from_secs(5))
        .unwrap();
    // Placed by spec.nodeName: through node-2's proxy, over mutual TLS (demo is strict, so a
    // plaintext connection would be refused there).
    mesh.proxy2.wait_for_metric("nodus_workload_certificates_issued_total", 2.0, Duration::from_secs(15)).unwrap();
    let (ok, text) = successes(&mesh.client, "10.96.0.18:80", 3);
    assert_eq!(ok, 3, "{text}");
    let (_, metrics) = mesh.proxy2.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/client",destination="demo/nohost-0",result="allowed""#),
        "{metrics}"
    );
    // Its node unknown: no endpoint is dialled, in plaintext or otherwise.
    let (ok, text) = successes(&mesh.client, "10.96.0.19:80", 1);
    assert_eq!(ok, 0, "{text}");
    assert!(text.contains("\"status\":503"), "{text}");
    // So does `nodusctl check`, on the node.
    let out = mesh
        .node1
        .command(sibling("nodusctl"))
        .unwrap()
        .args(["check", "--no-load", "--proxy-debug", "127.0.0.1:15021"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("FAIL  mesh endpoints"), "{report}");
    assert!(
        report.contains(
            "mesh endpoint demo/lost-0 of demo/lost is not reachable: the address of node node-9's proxy is not known"
        ),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(1), "{report}");
    // The controller says why, where it can be fixed.
    let log = std::fs::read_to_string(mesh.lab.work_dir().unwrap().join("controller.log")).unwrap();
    assert!(
        log.contains(
            "mesh endpoint demo/lost-0 of demo/lost is not reachable: the address of node node-9's proxy is not known"
        ),
        "{log}"
    );
}

#[test]
fn a_namespace_that_allows_only_mtls_calls_is_refused_destinations_outside_the_mesh() {
    skip_unless_lab_supported!();
    let mut mesh = start_mesh(&[]);
    let remote = mesh.lab.add_pod("node-2", "legacy", "remote-0").unwrap();
    let local = mesh.lab.add_pod("node-2", "legacy", "local-0").unwrap();
    let _echoes = [
        start_echo(&remote, &sibling("nodus-echo"), &[8080, 9090]).unwrap(),
        start_echo(&local, &sibling("nodus-echo"), &[8080, 9090]).unwrap(),
    ];
    let version = metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    write(&mesh.manifests.join("legacy.yaml"), OUTSIDE_THE_MESH);
    write(
        &mesh.manifests.join("mesh-policy.yaml"),
        "apiVersion: policy.nodus.dev/v1alpha1\nkind: MeshPolicy\nmetadata: { name: default, namespace: demo }\nspec: { mtls: { mode: Strict, outbound: Strict } }\n",
    );
    mesh.proxy1.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    // Wait for the policy and the Service both (the two files may land in two configs: with
    // the policy first, the Service's address is not known yet and the call fails otherwise).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (ok, text) = loop {
        let (ok, text) = successes(&mesh.client, "10.96.1.2:80", 1);
        if (ok == 0 && text.contains("\"status\":403")) || std::time::Instant::now() > deadline {
            break (ok, text);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // HTTP: 403 naming the destination and the policy, never sent.
    assert_eq!(ok, 0, "{text}");
    assert!(text.contains("\"status\":403"), "{text}");
    // gRPC: PERMISSION_DENIED; opaque TCP: the connection is refused.
    for (protocol, target) in [("grpc", "10.96.1.2:9090"), ("h1", "10.96.1.2:7000"), ("h1", "10.244.2.3:8080")] {
        let out = mesh
            .client
            .command(sibling("nodus-echo-client"))
            .unwrap()
            .args(["--target", target, "--protocol", protocol, "--count", "1"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("\"pod\":\"remote-0\""), "{target} reached the pod outside the mesh: {text}");
        if protocol == "grpc" {
            assert!(text.contains("\"grpc_status\":7"), "{target}: {text}");
        }
    }
    assert!(
        text.contains("nodus: destination legacy/remote:80, endpoint 10.244.2.3:8080 is not in the mesh")
            && text.contains("is not in the mesh (no mTLS to it), and the MeshPolicy of namespace demo allows its workloads only mTLS calls"),
        "the error names the cause: {text}"
    );
    // Mesh destinations still work, across nodes and on the node.
    for target in ["10.96.0.11:80", "10.96.0.12:80"] {
        let (ok, text) = successes(&mesh.client, target, 2);
        assert_eq!(ok, 2, "{target}: {text}");
    }
    let (_, metrics) = mesh.proxy1.admin_get("/metrics").unwrap();
    let refused = |protocol: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("nodus_outbound_mtls_required_refusals_total{"))
            .filter(|l| l.contains(&format!("protocol=\"{protocol}\"")) && l.contains("source=\"demo/client\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(refused("http") >= 2.0, "{metrics}");
    assert!(refused("opaque") >= 2.0, "{metrics}");
}

/// A third node without a Nodus proxy, with a pod of the mesh namespace on it. The node proxies
/// show themselves as pods labelled `nodus.dev/node-proxy=true` (the chart's DaemonSet does), on
/// node-1 and node-2 only: node-3's pods are reached directly, never through a tunnel no proxy
/// would answer.
const NODE_WITHOUT_A_PROXY: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: nodus-node-1, namespace: nodus-system, labels: { nodus.dev/node-proxy: "true" } }
spec: { nodeName: node-1, hostNetwork: true, containers: [{ name: proxy, image: nodus-proxy }] }
status: { phase: Running, hostIP: 10.100.0.11, podIP: 10.100.0.11 }
---
apiVersion: v1
kind: Pod
metadata: { name: nodus-node-2, namespace: nodus-system, labels: { nodus.dev/node-proxy: "true" } }
spec: { nodeName: node-2, hostNetwork: true, containers: [{ name: proxy, image: nodus-proxy }] }
status: { phase: Running, hostIP: 10.100.0.12, podIP: 10.100.0.12 }
---
apiVersion: v1
kind: Pod
metadata: { name: far-0, namespace: demo }
spec: { nodeName: node-3, containers: [{ name: echo, image: nodus-echo }] }
status: { phase: Running, hostIP: 10.100.0.13, podIP: 10.244.3.2 }
---
apiVersion: v1
kind: Service
metadata: { name: far, namespace: demo }
spec:
  clusterIP: 10.96.1.3
  ports:
    - { name: http, port: 80, targetPort: 8080 }
    - { name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc }
    - { name: tcp, port: 7000, targetPort: 8080, appProtocol: tcp }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: far-1, namespace: demo, labels: { kubernetes.io/service-name: far } }
addressType: IPv4
ports: [{ name: http, port: 8080 }, { name: grpc, port: 9090 }, { name: tcp, port: 8080 }]
endpoints:
  - { addresses: [10.244.3.2], nodeName: node-3, targetRef: { kind: Pod, namespace: demo, name: far-0 } }
"#;

#[test]
fn pods_on_a_node_without_a_proxy_are_dialled_directly() {
    skip_unless_lab_supported!();
    // demo's MeshPolicy is strict, which concerns traffic *to* mesh pods behind a proxy; far-0
    // has none, so its calls come in plaintext as from outside the mesh.
    let mut mesh = start_mesh_on_nodes(3, &[], &[], &[]);
    let far = mesh.lab.add_pod("node-3", "demo", "far-0").unwrap();
    assert_eq!(far.ip.to_string(), "10.244.3.2");
    let _echo = start_echo(&far, &sibling("nodus-echo"), &[8080, 9090]).unwrap();
    let version = metric_value(&mesh.proxy1.admin_get("/metrics").unwrap().1, "nodus_config_version").unwrap();
    write(&mesh.manifests.join("node-3.yaml"), NODE_WITHOUT_A_PROXY);
    mesh.proxy1.wait_for_metric("nodus_config_version", version + 1.0, Duration::from_secs(10)).unwrap();
    let name = "node without a proxy, mesh namespace";
    let cells = [
        Cell { name, protocol: Protocol::Http1, target: "10.96.1.3:80", pod: "far-0", identity: None },
        Cell { name, protocol: Protocol::Http2, target: "10.96.1.3:80", pod: "far-0", identity: None },
        Cell { name, protocol: Protocol::Grpc, target: "10.96.1.3:9090", pod: "far-0", identity: None },
        Cell { name, protocol: Protocol::Http1, target: "10.244.3.2:8080", pod: "far-0", identity: None },
        Cell { name, protocol: Protocol::Grpc, target: "10.244.3.2:9090", pod: "far-0", identity: None },
        Cell { name, protocol: Protocol::Tcp, target: "10.96.1.3:7000", pod: "far-0", identity: None },
    ];
    let failures: Vec<String> = cells
        .iter()
        .filter_map(|cell| check(&mesh, cell).err().map(|why| format!("{:?} / {}: {why}", cell.protocol, cell.target)))
        .collect();
    assert!(failures.is_empty(), "{} cells failed:\n{}", failures.len(), failures.join("\n"));
    let (_, metrics) = mesh.proxy1.admin_get("/metrics").unwrap();
    let far_requests = |tls: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("nodus_requests_total{") && l.contains("dst_service=\"far\""))
            .filter(|l| l.contains(&format!("tls=\"{tls}\"")))
            .count()
    };
    assert!(far_requests("plaintext") > 0, "{metrics}");
    assert_eq!(far_requests("mtls"), 0, "{metrics}");
    // The mesh pods behind proxies are still reached over mTLS.
    let (ok, text) = successes(&mesh.client, "10.96.0.11:80", 2);
    assert_eq!(ok, 2, "{text}");
}
