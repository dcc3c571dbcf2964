//! The controller-driven lab mesh: the controller in standalone mode on the example manifests
//! (plus a strict MeshPolicy and an opaque-TCP Service), node proxies with mTLS on both nodes,
//! echo pods. Needs root.
#![allow(dead_code, clippy::unwrap_used)]

use nodus_harness::{start_echo, ConfigSource, Lab, LabSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn sibling(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nodus-proxy")).with_file_name(name)
}

/// Runs `nodus-echo-client --target TARGET --count COUNT` in `pod`: how many answers were 200,
/// and what it printed (for assertion messages).
pub fn successes(pod: &nodus_harness::Pod, target: &str, count: usize) -> (usize, String) {
    let out = pod
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", target, "--count", &count.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (text.lines().filter(|l| l.contains("\"status\":200")).count(), text)
}

pub fn mesh_policy(mode: &str) -> String {
    format!("apiVersion: policy.nodus.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{ name: default, namespace: demo }}\nspec: {{ mtls: {{ mode: {mode} }} }}\n")
}

pub fn write(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// The lab mesh of these tests: controller (standalone, on the example manifests plus a
/// strict MeshPolicy and an opaque-TCP Service), proxies with mTLS on both nodes, echo pods.
pub struct MtlsMesh {
    pub proxy1: nodus_harness::NodeProxy,
    pub proxy2: nodus_harness::NodeProxy,
    pub client: nodus_harness::Pod,
    pub echo_v2: nodus_harness::Pod,
    pub node1: nodus_harness::Node,
    pub manifests: PathBuf,
    /// Kill or restart it to test controller loss.
    pub controller: nodus_harness::Process,
    /// Echo processes: [echo-v1-0 on node-2, echo-v2-0 on node-1].
    pub echoes: [nodus_harness::Process; 2],
    /// Where the controller writes route status.
    pub status_file: PathBuf,
    /// The controller's config service, for proxies started later.
    pub url: String,
    // Dropped last: the lab is torn down after the processes in it.
    pub lab: Lab,
}

pub fn start_mesh(controller_args: &[&str]) -> MtlsMesh {
    start_mesh_with(controller_args, &[])
}

/// The mesh, with extra arguments for node-1's proxy.
pub fn start_mesh_with(controller_args: &[&str], proxy1_args: &[&str]) -> MtlsMesh {
    start_mesh_with_proxies(controller_args, proxy1_args, &[])
}

/// The mesh, with extra arguments for each node's proxy.
pub fn start_mesh_with_proxies(controller_args: &[&str], proxy1_args: &[&str], proxy2_args: &[&str]) -> MtlsMesh {
    start_mesh_on_nodes(2, controller_args, proxy1_args, proxy2_args)
}

/// The mesh on `nodes` lab nodes, proxies on node-1 and node-2 only (a node-3 has none).
pub fn start_mesh_on_nodes(
    nodes: usize,
    controller_args: &[&str],
    proxy1_args: &[&str],
    proxy2_args: &[&str],
) -> MtlsMesh {
    let mut lab = Lab::new(LabSpec { nodes }).unwrap();
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
    let fixture = nodus_harness::standalone_mesh_fixture();
    std::fs::copy(fixture.join("cluster.yaml"), manifests.join("cluster.yaml")).unwrap();
    std::fs::copy(examples.join("routes.yaml"), manifests.join("routes.yaml")).unwrap();
    write(&manifests.join("mesh-policy.yaml"), &mesh_policy("Strict"));
    write(&manifests.join("tcp-service.yaml"), OPAQUE_SERVICE);
    let node1 = lab.node("node-1").unwrap().clone();
    let node2 = lab.node("node-2").unwrap().clone();
    let status_file = lab.work_dir().unwrap().join("status.yaml");
    let (controller, url) =
        lab.start_controller(&node1, &sibling("nodus-controller"), &manifests, &status_file, controller_args).unwrap();
    let proxy_binary = PathBuf::from(env!("CARGO_BIN_EXE_nodus-proxy"));
    let proxy1 =
        lab.start_node_proxy(&node1, &proxy_binary, ConfigSource::Controller(url.clone()), proxy1_args).unwrap();
    let proxy2 =
        lab.start_node_proxy(&node2, &proxy_binary, ConfigSource::Controller(url.clone()), proxy2_args).unwrap();
    proxy1.wait_for_metric("nodus_redirect_enrolled_pods", 2.0, Duration::from_secs(15)).unwrap();
    // Node-2's pod too: its enrolment pass also turns on inbound capture for it, and runs every
    // 2 s, not when certificates arrive (a test started before it saw plaintext reach the pod).
    proxy2.wait_for_metric("nodus_redirect_enrolled_pods", 1.0, Duration::from_secs(15)).unwrap();
    proxy1.wait_for_metric("nodus_workload_certificates_issued_total", 2.0, Duration::from_secs(15)).unwrap();
    proxy2.wait_for_metric("nodus_workload_certificates_issued_total", 1.0, Duration::from_secs(15)).unwrap();
    MtlsMesh { proxy1, proxy2, client, echo_v2, node1, manifests, controller, echoes, status_file, url, lab }
}

/// A Service whose port is declared opaque TCP, backed by echo-v1-0 on node-2.
pub const OPAQUE_SERVICE: &str = r#"
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

/// The summary lines of `nodus-echo-client --report-every`: (requests, ok).
pub fn load_totals(stdout: &[u8]) -> (u64, u64) {
    (load_sum(stdout, "requests"), load_sum(stdout, "ok"))
}

/// One count of `nodus-echo-client --report-every`'s summary lines, summed over them.
pub fn load_sum(stdout: &[u8], field: &str) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    text.lines().map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()[field].as_u64().unwrap()).sum()
}
