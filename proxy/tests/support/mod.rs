//! A small mesh in the lab for the proxy's end-to-end tests: node-1 runs the real node proxy
//! with the real eBPF redirect; echo pods on both nodes; a client pod on node-1 whose processes
//! are captured. Needs root.
#![allow(dead_code, clippy::unwrap_used)]

use nodus_harness::{start_echo, Lab, LabSpec, NodeProxy, Pod, Process};
use std::path::PathBuf;
use std::time::Duration;

pub const ECHO: &str = "10.96.0.10";
pub const ECHO_V1: &str = "10.96.0.11";
pub const ECHO_V2: &str = "10.96.0.12";

pub struct Mesh {
    pub proxy: NodeProxy,
    /// node-2's proxy, when the test starts one.
    pub peer: Option<NodeProxy>,
    pub client: Pod,
    pub pods: Vec<Pod>,
    pub config_path: PathBuf,
    _echoes: Vec<Process>,
    // Dropped last: tears the lab down after the processes are gone.
    pub lab: Lab,
}

/// Services and workloads of the test mesh; routes are appended by each test.
pub fn base_config(version: u64) -> String {
    config_with_services(version, "")
}

/// The base config with more Services (YAML list items, indented by two spaces).
pub fn config_with_services(version: u64, extra_services: &str) -> String {
    format!(
        r#"
version: {version}
services:
  - id: {{ namespace: demo, name: echo }}
    clusterIps: [{ECHO}]
    ports: [{{ name: http, port: 80, targetPort: 8080 }}, {{ name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc }}]
    endpoints:
      - {{ address: 10.244.2.2, node: node-2, workload: {{ namespace: demo, name: echo-v1 }} }}
      - {{ address: 10.244.1.3, node: node-1, workload: {{ namespace: demo, name: echo-v2 }} }}
  - id: {{ namespace: demo, name: echo-v1 }}
    clusterIps: [{ECHO_V1}]
    ports: [{{ port: 80, targetPort: 8080 }}, {{ port: 9090, targetPort: 9090, appProtocol: grpc }}]
    endpoints: [{{ address: 10.244.2.2, node: node-2, workload: {{ namespace: demo, name: echo-v1 }} }}]
  - id: {{ namespace: demo, name: echo-v2 }}
    clusterIps: [{ECHO_V2}]
    ports: [{{ port: 80, targetPort: 8080 }}, {{ port: 9090, targetPort: 9090, appProtocol: grpc }}]
    endpoints: [{{ address: 10.244.1.3, node: node-1, workload: {{ namespace: demo, name: echo-v2 }} }}]
{extra_services}
workloads:
  - {{ id: {{ namespace: demo, name: client }}, node: node-1, ips: [10.244.1.2], owner: client, meshEnabled: true }}
  - {{ id: {{ namespace: demo, name: echo-v2 }}, node: node-1, ips: [10.244.1.3], owner: echo-v2, meshEnabled: true }}
  - {{ id: {{ namespace: demo, name: echo-v1 }}, node: node-2, ips: [10.244.2.2], owner: echo-v1, meshEnabled: true }}
"#
    )
}

/// Writes a config atomically (the proxy never reads half a file).
pub fn write_config(path: &std::path::Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

pub fn start(routes_yaml: &str, extra_proxy_args: &[&str]) -> Mesh {
    start_with(&format!("{}{routes_yaml}", base_config(1)), extra_proxy_args)
}

/// Starts the mesh with a whole config text.
pub fn start_with(config: &str, extra_proxy_args: &[&str]) -> Mesh {
    let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
    let client = lab.add_pod("node-1", "demo", "client").unwrap(); // 10.244.1.2
    let echo_v2 = lab.add_pod("node-1", "demo", "echo-v2").unwrap(); // 10.244.1.3
    let echo_v1 = lab.add_pod("node-2", "demo", "echo-v1").unwrap(); // 10.244.2.2
    let echo = PathBuf::from(env!("CARGO_BIN_EXE_nodus-proxy")).with_file_name("nodus-echo");
    assert!(echo.exists(), "{} is built by `cargo nextest run --workspace` (make test)", echo.display());
    let echoes =
        vec![start_echo(&echo_v1, &echo, &[8080, 9090]).unwrap(), start_echo(&echo_v2, &echo, &[8080, 9090]).unwrap()];
    let config_path = lab.work_dir().unwrap().join("node-1.yaml");
    write_config(&config_path, config);
    let node = lab.node("node-1").unwrap().clone();
    let proxy = lab
        .start_node_proxy(&node, env!("CARGO_BIN_EXE_nodus-proxy").as_ref(), &config_path, extra_proxy_args)
        .unwrap();
    // The client and echo-v2 on node-1 are mesh pods: wait until the redirect captures them.
    proxy.wait_for_metric("nodus_redirect_enrolled_pods", 2.0, Duration::from_secs(10)).unwrap();
    Mesh { proxy, peer: None, client, pods: vec![echo_v1, echo_v2], config_path, _echoes: echoes, lab }
}

/// Runs `nodus-echo-client` in the client pod (so it is captured) and parses its JSON lines.
pub fn client(mesh: &Mesh, args: &[&str]) -> Vec<serde_json::Value> {
    client_in(&mesh.client, args)
}

pub fn client_in(pod: &Pod, args: &[&str]) -> Vec<serde_json::Value> {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_nodus-proxy")).with_file_name("nodus-echo-client");
    let out = pod.command(&binary).unwrap().args(args).output().unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Counts answers by the pod that gave them.
pub fn by_pod(outcomes: &[serde_json::Value]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for outcome in outcomes {
        let pod = outcome["pod"].as_str().unwrap_or("none").to_owned();
        *counts.entry(pod).or_default() += 1;
    }
    counts
}

/// The node list that makes proxies tunnel to each other.
pub const NODES: &str = r#"
nodes:
  - { name: node-1, tunnelAddress: 10.100.0.11:15008 }
  - { name: node-2, tunnelAddress: 10.100.0.12:15008 }
"#;

/// Starts the mesh with proxies on both nodes, tunnelling between them.
pub fn start_two_nodes(routes_yaml: &str) -> Mesh {
    let mut mesh = start_with(&format!("{}{NODES}{routes_yaml}", base_config(1)), &[]);
    let node = mesh.lab.node("node-2").unwrap().clone();
    let peer =
        mesh.lab.start_node_proxy(&node, env!("CARGO_BIN_EXE_nodus-proxy").as_ref(), &mesh.config_path, &[]).unwrap();
    peer.wait_for_metric("nodus_config_version", 1.0, Duration::from_secs(10)).unwrap();
    mesh.peer = Some(peer);
    mesh
}
pub mod controlled;
