//! Workload certificates over real gRPC: node authorization, and only the CSR travels.
#![allow(clippy::unwrap_used)]

use nodus_config::ConfigSnapshot;
use nodus_controller::certificates::{load_or_create_ca, CertificateService};
use nodus_controller::distribute::Distributor;
use nodus_identity::tls::identity_of;
use nodus_identity::{SpiffeId, WorkloadKey};
use nodus_wire::proto::certificates_client::CertificatesClient;
use nodus_wire::proto::CertificateRequest;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn a_node_gets_certificates_only_for_its_own_workloads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_or_create_ca(dir.path(), "cluster.local").unwrap();
    let distributor = Distributor::new();
    let snapshot: ConfigSnapshot = serde_norway::from_str(
        "workloads:\n  - { id: { namespace: demo, name: web-0 }, node: node-1, ips: [10.244.1.2], serviceAccount: web, meshEnabled: true }\n",
    )
    .unwrap();
    distributor.publish(snapshot);
    let service = CertificateService::new(Arc::new(ca), "cluster.local", Duration::from_secs(3600), distributor);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = CertificatesClient::connect(format!("http://{addr}")).await.unwrap();

    let identity = SpiffeId::new("cluster.local", "demo", "web");
    let key = WorkloadKey::generate(identity.clone()).unwrap();
    let request = |node: &str| CertificateRequest {
        node: node.to_string(),
        namespace: "demo".into(),
        service_account: "web".into(),
        csr_pem: key.csr_pem().unwrap(),
    };
    assert!(!request("node-1").csr_pem.contains("PRIVATE KEY"), "only the CSR leaves the node");

    let response = client.sign(request("node-1")).await.unwrap().into_inner();
    let certificate = key
        .with_certificate(&nodus_identity::SignedCertificate {
            certificate_pem: response.certificate_pem.clone(),
            not_after: std::time::UNIX_EPOCH + Duration::from_secs(response.not_after_unix),
        })
        .unwrap();
    assert_eq!(identity_of(&certificate.chain[0]), Some(identity));
    assert!(response.trust_bundle_pem.contains("BEGIN CERTIFICATE"));

    let refused = client.sign(request("node-2")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "node-2 runs no demo/web workload");
    assert!(refused.message().contains("node-2"), "{}", refused.message());

    let mut other = request("node-1");
    other.service_account = "admin".into();
    assert_eq!(client.sign(other).await.unwrap_err().code(), tonic::Code::PermissionDenied);

    // The CA survives a restart: the same root is loaded from its directory.
    let reloaded = load_or_create_ca(dir.path(), "cluster.local").unwrap();
    assert_eq!(reloaded.certificate_pem(), response.trust_bundle_pem);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca-key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the CA key is readable by its owner only");
}
