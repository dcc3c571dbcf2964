//! Two node proxies in this test process, mutual TLS on, without root: node-1's client calls a
//! Service whose one endpoint runs on node-2, so the request crosses a real TLS 1.3 tunnel made
//! with certificates the controller's CA code ([`CertificateService`]) signed in process.
//!
//! Each proxy has its own tunnel client and certificate manager (explicit inputs, no
//! process-wide state): that is what lets them share one process, and what a third proxy
//! without mutual TLS, in the same process, shows. Nothing is mocked but the transport to the
//! CA (a direct call instead of gRPC, which `control_plane.rs` covers) and the eBPF capture
//! (see support/loopback.rs).
#![allow(clippy::unwrap_used)]

use nodus_config::ConfigSnapshot;
use nodus_controller::certificates::CertificateService;
use nodus_controller::distribute::Distributor;
use nodus_identity::CertificateAuthority;
use nodus_proxy::app::{self, Proxy, ProxySettings};
use nodus_proxy::balance::OutlierPolicy;
use nodus_proxy::control::identity::CertificateSigner;
use nodus_proxy::core::metrics::Metrics;
use nodus_proxy::servers::original_dst::FixedOriginalDst;
use nodus_proxy::servers::outbound::OutboundSettings;
use nodus_wire::proto::{CertificateRequest, CertificateResponse};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

const DOMAIN: &str = "cluster.local";
const VIP: &str = "10.96.0.10";
/// node-2's pod address: a loopback address of its own, so that node-2's proxy tells it from
/// node-1's client (127.0.0.1).
const ECHO_IP: &str = "127.0.0.2";

/// The controller's signing code, called in process.
struct InProcessCa(CertificateService);

impl CertificateSigner for InProcessCa {
    fn sign(
        &self,
        request: CertificateRequest,
    ) -> Pin<Box<dyn Future<Output = Result<CertificateResponse, tonic::Status>> + Send + '_>> {
        Box::pin(async move { self.0.sign(&request) })
    }
}

/// A CA that refuses every request, as one would that does not know the node.
struct RefusingCa;

impl CertificateSigner for RefusingCa {
    fn sign(
        &self,
        _: CertificateRequest,
    ) -> Pin<Box<dyn Future<Output = Result<CertificateResponse, tonic::Status>> + Send + '_>> {
        Box::pin(async { Err(tonic::Status::permission_denied("not this node's workload")) })
    }
}

/// The mesh: `demo/client` on node-1 (127.0.0.1), `demo/echo` on node-2 behind `VIP:80`, the
/// `demo` namespace strict, and the CA's root trusted.
fn snapshot(node2_tunnel: SocketAddr, echo_port: u16, ca: &CertificateAuthority) -> ConfigSnapshot {
    let mut snapshot: ConfigSnapshot = serde_norway::from_str(&format!(
        r#"
version: 1
nodes:
  - {{ name: node-1, tunnelAddress: "127.0.0.1:1" }}
  - {{ name: node-2, tunnelAddress: "{node2_tunnel}" }}
services:
  - id: {{ namespace: demo, name: echo }}
    clusterIps: [{VIP}]
    ports: [{{ name: http, port: 80, targetPort: {echo_port}, appProtocol: http }}]
    endpoints:
      - {{ address: {ECHO_IP}, node: node-2, serviceAccount: echo, workload: {{ namespace: demo, name: echo }} }}
workloads:
  - {{ id: {{ namespace: demo, name: client }}, node: node-1, ips: [127.0.0.1], serviceAccount: client, meshEnabled: true }}
  - {{ id: {{ namespace: demo, name: echo }}, node: node-2, ips: [{ECHO_IP}], serviceAccount: echo, meshEnabled: true }}
mtls:
  - {{ namespace: demo, mode: Strict }}
"#
    ))
    .unwrap();
    snapshot.trust_roots = nodus_controller::trust::roots(&[ca], ca);
    snapshot
}

fn settings(inbound: bool) -> ProxySettings {
    ProxySettings {
        outbound_addr: "127.0.0.1:0".parse().unwrap(),
        outbound_ports: 1,
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        debug_addr: None,
        inbound_addr: inbound.then(|| "127.0.0.1:0".parse().unwrap()),
        capture_addr: None,
        outbound: OutboundSettings { detect_timeout: Duration::from_millis(200), ..Default::default() },
    }
}

struct Mesh {
    node1: Arc<Proxy>,
    node1_outbound: SocketAddr,
    node2: Arc<Proxy>,
    node2_manager: Arc<nodus_proxy::control::identity::IdentityManager>,
    node1_manager: Arc<nodus_proxy::control::identity::IdentityManager>,
    config: ConfigSnapshot,
}

/// Starts the echo pod, node-2's proxy (inbound) and node-1's proxy (outbound), each with
/// mutual TLS; node-1's certificates come from `node1_signer`.
async fn start_mesh(node1_signer: Option<Arc<dyn CertificateSigner>>) -> Mesh {
    let echo = tokio::net::TcpListener::bind((ECHO_IP, 0)).await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    let identity = nodus_echo::EchoIdentity {
        pod: "echo-0".into(),
        namespace: "demo".into(),
        service: "echo".into(),
        ..Default::default()
    };
    tokio::spawn(nodus_echo::serve(echo, identity));

    let ca = Arc::new(CertificateAuthority::generate(DOMAIN, Duration::from_secs(86_400)).unwrap());
    let distributor = Distributor::new();
    let service = CertificateService::new(ca.clone(), DOMAIN, Duration::from_secs(3_600), distributor.clone());
    let signer: Arc<dyn CertificateSigner> = Arc::new(InProcessCa(service));

    let node2 = Arc::new(Proxy::for_node(OutlierPolicy::default(), Metrics::new(), "node-2"));
    let node2_manager = app::use_mutual_tls(&node2, DOMAIN, "node-2", signer.clone()).unwrap();
    let node2_listening =
        app::start(&node2, &settings(true), Arc::new(FixedOriginalDst("127.0.0.1:9".parse().unwrap()))).await.unwrap();

    let config = snapshot(node2_listening.inbound.unwrap(), echo_port, &ca);
    // The CA signs only for workloads the published config places on the asking node.
    distributor.publish(config.clone());
    let node1 = Arc::new(Proxy::for_node(OutlierPolicy::default(), Metrics::new(), "node-1"));
    let node1_manager = app::use_mutual_tls(&node1, DOMAIN, "node-1", node1_signer.unwrap_or(signer)).unwrap();
    let original = SocketAddr::new(VIP.parse().unwrap(), 80);
    let node1_listening = app::start(&node1, &settings(false), Arc::new(FixedOriginalDst(original))).await.unwrap();
    node2.apply(config.clone()).unwrap();
    node1.apply(config.clone()).unwrap();
    Mesh { node1, node1_outbound: node1_listening.outbound, node2, node2_manager, node1_manager, config }
}

async fn wait_for(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric_text(proxy: &Proxy) -> String {
    proxy.metrics.encode()
}

#[tokio::test]
async fn a_call_to_another_node_crosses_mutual_tls_and_the_callee_learns_who_called() {
    let mesh = start_mesh(None).await;
    let client = nodus_identity::SpiffeId::new(DOMAIN, "demo", "client");
    let echo = nodus_identity::SpiffeId::new(DOMAIN, "demo", "echo");
    wait_for("both workload certificates", || {
        mesh.node1_manager.certificate(&client).is_some() && mesh.node2_manager.certificate(&echo).is_some()
    })
    .await;
    assert_eq!(mesh.node1_manager.identities(), std::slice::from_ref(&client), "node-1 asks only for its own workload");
    assert_eq!(mesh.node2_manager.identities(), std::slice::from_ref(&echo), "node-2 asks only for its own workload");

    // A forged identity header from the client is not what the callee is told.
    let forged = [("x-nodus-client-identity", "spiffe://cluster.local/ns/kube-system/sa/admin")];
    for http2 in [false, true] {
        let answer = if http2 {
            nodus_echo::h2c_get(mesh.node1_outbound, "echo.demo", "/who", &forged).await
        } else {
            nodus_echo::http1_get(mesh.node1_outbound, "echo.demo", "/who", &forged).await
        }
        .unwrap();
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        let report = answer.report().unwrap();
        assert_eq!(report.pod, "echo-0");
        assert_eq!(
            report.headers.get("x-nodus-client-identity"),
            Some(&vec![client.to_string()]),
            "node-2's proxy sets the identity node-1 proved in the handshake, once"
        );
    }

    let node1 = metric_text(&mesh.node1);
    assert!(
        node1.lines().any(|l| l.starts_with("nodus_requests_total{") && l.contains("tls=\"mtls\"")),
        "node-1 counts its requests as sent over mTLS:\n{node1}"
    );
    let node2 = metric_text(&mesh.node2);
    assert!(
        node2.lines().any(|l| l.starts_with("nodus_inbound_tls_handshakes_total{result=\"ok\"}") && !l.ends_with(" 0")),
        "node-2 accepted the tunnel over mTLS:\n{node2}"
    );

    // A proxy in the same process without mutual TLS is a different proxy: its tunnels stay
    // plaintext, and node-2 refuses plaintext for the strict namespace.
    let plain = Arc::new(Proxy::for_node(OutlierPolicy::default(), Metrics::new(), "node-1"));
    assert!(plain.tunnels().mutual_tls().is_none());
    let original = SocketAddr::new(VIP.parse().unwrap(), 80);
    let listening = app::start(&plain, &settings(false), Arc::new(FixedOriginalDst(original))).await.unwrap();
    plain.apply(mesh.config.clone()).unwrap();
    let answer = nodus_echo::http1_get(listening.outbound, "echo.demo", "/who", &[]).await.unwrap();
    assert_ne!(
        answer.status,
        200,
        "plaintext to a strict namespace is refused: {}",
        String::from_utf8_lossy(&answer.body)
    );
}

#[tokio::test]
async fn without_its_certificate_the_caller_is_refused_never_sent_in_plaintext() {
    let mesh = start_mesh(Some(Arc::new(RefusingCa))).await;
    wait_for("a refused certificate request", || mesh.node1.metrics.certificate_errors.get() > 0).await;
    let answer = nodus_echo::http1_get(mesh.node1_outbound, "echo.demo", "/who", &[]).await.unwrap();
    let body = String::from_utf8_lossy(&answer.body).to_string();
    assert_eq!(answer.status, 503, "{body}");
    assert!(body.contains("no workload certificate for spiffe://cluster.local/ns/demo/sa/client"), "{body}");
    let node2 = metric_text(&mesh.node2);
    assert!(
        !node2
            .lines()
            .any(|l| l.starts_with("nodus_inbound_tunnels_total{")
                || l.starts_with("nodus_inbound_tls_handshakes_total{")),
        "nothing reached node-2, in plaintext or otherwise:\n{node2}"
    );
}
