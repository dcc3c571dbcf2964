//! Inbound capture in the lab, end to end: a pod outside the mesh dialling a mesh pod's address
//! directly (no tunnel) is captured by the eBPF TC program on the destination node and served by
//! that node's proxy, so a strict namespace refuses it and a permissive one accepts it without
//! a forgeable identity; leaving the mesh releases the pod for new connections without breaking
//! open ones. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{metric_value, skip_unless_lab_supported, NodeProxy, Pod};
use std::time::Duration;
use support::controlled::{load_totals, mesh_policy, sibling, start_mesh, write};

/// echo-v1-0 on node-2, dialled by its pod address.
const ECHO_V1_POD: &str = "10.244.2.2:8080";
/// The address node-2's proxy reaches its pods from (the pods' gateway on node-2).
const NODE2_POD_GATEWAY: &str = "10.244.2.1";

fn captured(proxy: &NodeProxy, result: &str) -> f64 {
    let (_, metrics) = proxy.admin_get("/metrics").unwrap();
    metric_value(
        &metrics,
        &format!(r#"nodus_inbound_captured_total{{destination="demo/echo-v1-0",result="{result}"}}"#),
    )
    .unwrap_or(0.0)
}

/// One request from `pod` straight to echo-v1-0's address, with a forged identity header.
fn request_from(pod: &Pod) -> serde_json::Value {
    let out = pod
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", ECHO_V1_POD, "--timeout-ms", "3000"])
        .args(["-H", "x-nodus-client-identity:spiffe://cluster.local/ns/demo/sa/admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn plaintext_from_outside_the_mesh_is_captured_on_its_way_in() {
    skip_unless_lab_supported!();
    let mut mesh = start_mesh(&[]);
    // A pod of a namespace without the mesh label, on the other node.
    let outsider = mesh.lab.add_pod("node-1", "plain", "outsider").unwrap();
    let cluster = mesh.manifests.join("cluster.yaml");
    let manifest = std::fs::read_to_string(&cluster).unwrap();

    // Strict (the mesh's MeshPolicy): plaintext straight to the pod is reset, not served.
    let refused = request_from(&outsider);
    assert_eq!(refused["status"], 0, "strict namespace served plaintext: {refused}");
    assert_eq!(captured(&mesh.proxy2, "plaintext_to_strict"), 1.0);
    // Mesh traffic to the same pod still arrives through the tunnel, unaffected.
    let through_mesh = request_from(&mesh.client);
    assert_eq!(through_mesh["status"], 200, "{through_mesh}");
    let (_, metrics) = mesh.proxy2.admin_get("/metrics").unwrap();
    let tunnelled = r#"nodus_inbound_tunnels_total{tls="mtls",client_identity="spiffe://cluster.local/ns/demo/sa/client",destination="demo/echo-v1-0",result="allowed"}"#;
    assert!(
        metric_value(&metrics, tunnelled).unwrap_or(0.0) >= 1.0,
        "a pod address crosses nodes over mTLS: {metrics}"
    );
    assert_eq!(captured(&mesh.proxy2, "allowed"), 0.0, "tunnelled traffic is not captured");

    // Permissive: accepted through node-2's proxy, without the identity the client forged.
    write(&mesh.manifests.join("mesh-policy.yaml"), &mesh_policy("Permissive"));
    wait_until("the namespace is permissive", || request_from(&outsider)["status"] == 200);
    let served = request_from(&outsider);
    let report = &served["report"];
    assert_eq!(report["pod"], "echo-v1-0", "{served}");
    assert!(report["remote_addr"].as_str().unwrap().starts_with(&format!("{NODE2_POD_GATEWAY}:")), "{served}");
    assert!(report["headers"].get("x-nodus-client-identity").is_none(), "forged identity reached the pod: {served}");
    assert!(captured(&mesh.proxy2, "allowed") >= 2.0);
    let (_, metrics) = mesh.proxy2.admin_get("/metrics").unwrap();
    assert!(metric_value(&metrics, "nodus_redirect_inbound_captured_total").unwrap() >= 3.0, "{metrics}");

    // A keep-alive load from outside, open while the namespace leaves the mesh and returns.
    let load = outsider
        .command(sibling("nodus-echo-client"))
        .unwrap()
        .args(["--target", ECHO_V1_POD, "--duration-secs", "6", "--rate", "50", "--report-every", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    // Out of the mesh: new connections go straight to the pod (from the outsider's own address).
    let unlabelled = manifest.replace("nodus.dev/mesh: enabled", "nodus.dev/mesh: disabled");
    assert_ne!(unlabelled, manifest);
    write(&cluster, &unlabelled);
    wait_until("new connections go straight to the pod", || {
        request_from(&outsider)["report"]["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{}:", outsider.ip)))
    });
    let before_return = captured(&mesh.proxy2, "allowed");

    // Back in: captured again, without restarting anything.
    write(&cluster, &manifest);
    wait_until("new connections are captured again", || {
        request_from(&outsider)["report"]["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{NODE2_POD_GATEWAY}:")))
    });
    assert!(captured(&mesh.proxy2, "allowed") > before_return);

    let out = load.wait_with_output().unwrap();
    let (requests, ok) = load_totals(&out.stdout);
    assert!(requests >= 250, "the load ran: {requests}");
    assert_eq!(ok, requests, "a connection open across the changes failed");
}
