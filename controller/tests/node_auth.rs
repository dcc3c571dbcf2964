//! Node proxies authenticate on the control plane: the real controller binary (standalone, on
//! the standalone fixture's manifests) with a node token key refuses calls without a valid token, and
//! holds a caller to the node its token names, for config streams and certificates alike.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_identity::{SpiffeId, WorkloadKey};
use nodus_wire::proto::certificates_client::CertificatesClient;
use nodus_wire::proto::config_discovery_client::ConfigDiscoveryClient;
use nodus_wire::proto::CertificateRequest;
use std::path::Path;
use std::process::Command;
use support::controller::{hello, with_token, Controller};

fn token(key: &Path, node: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nodus-controller"))
        .arg("--node-token-key")
        .arg(key)
        .args(["--print-node-token", node])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn node_proxies_authenticate_and_act_only_for_their_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node-token.key");
    let manifests = nodus_harness::standalone_mesh_fixture();
    let node1 = token(&key, "node-1");
    let node2 = token(&key, "node-2");
    let mut command = Command::new(env!("CARGO_BIN_EXE_nodus-controller"));
    command
        .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--manifests"])
        .arg(&manifests)
        .arg("--status-file")
        .arg(dir.path().join("status.yaml"))
        .arg("--ca-dir")
        .arg(dir.path())
        .arg("--node-token-key")
        .arg(&key);
    let controller = Controller::start(command);
    let endpoint = controller.endpoint.clone();

    // Certificates: demo/client runs on node-1.
    let mut certificates = CertificatesClient::connect(endpoint.clone()).await.unwrap();
    let key_pair = WorkloadKey::generate(SpiffeId::new("cluster.local", "demo", "client")).unwrap();
    let request = CertificateRequest {
        node: "node-1".into(),
        namespace: "demo".into(),
        service_account: "client".into(),
        csr_pem: key_pair.csr_pem().unwrap(),
    };
    let without = certificates.sign(with_token(request.clone(), None)).await.unwrap_err();
    assert_eq!(without.code(), tonic::Code::Unauthenticated, "{without:?}");
    let forged = certificates.sign(with_token(request.clone(), Some("v1.node-1.00"))).await.unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");
    // node-2's proxy claiming to be node-1 to get node-1's identities: refused.
    let claimed = certificates.sign(with_token(request.clone(), Some(&node2))).await.unwrap_err();
    assert_eq!(claimed.code(), tonic::Code::PermissionDenied, "{claimed:?}");
    certificates.sign(with_token(request, Some(&node1))).await.expect("node-1's own workload");

    // Config streams: a Hello for another node than the token's is refused.
    let mut discovery = ConfigDiscoveryClient::connect(endpoint).await.unwrap();
    let mut refused = discovery.subscribe(with_token(hello("node-1"), Some(&node2))).await.unwrap().into_inner();
    let status = refused.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let mut pushes = discovery.subscribe(with_token(hello("node-1"), Some(&node1))).await.unwrap().into_inner();
    let push = pushes.message().await.unwrap().expect("node-1 gets its config");
    assert!(push.full && !push.updated.is_empty());
    let unauthenticated = discovery.subscribe(with_token(hello("node-1"), None)).await.unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
}
