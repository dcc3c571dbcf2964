//! The control-plane stream end to end over real gRPC (tonic on loopback): the controller's
//! distributor and standalone source on one side, node proxies' subscription on the other.
//! No root needed: nothing here touches the data path.
#![allow(clippy::unwrap_used)]

use nodus_config::ConfigSnapshot;
use nodus_controller::distribute::{Distributor, NodeStatus};
use nodus_controller::reconcile::Reconciler;
use nodus_controller::standalone::{self, StandaloneSettings};
use nodus_controller::translate::TranslateOptions;
use nodus_proxy::app::Proxy;
use nodus_proxy::balance::OutlierPolicy;
use nodus_proxy::core::metrics::Metrics;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Serves the distributor on `addr` (port 0: any) until the returned task is aborted.
async fn serve(distributor: &Distributor, addr: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let service = distributor.service();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (local, task)
}

fn node_proxy(node: &str, controller: SocketAddr) -> Arc<Proxy> {
    let proxy = Arc::new(Proxy::for_node(OutlierPolicy::default(), Metrics::new(), node));
    nodus_proxy::control::config_client::subscribe(
        proxy.clone(),
        format!("http://{controller}"),
        node.to_string(),
        nodus_proxy::control::config_client::NodeCredentials::none(),
    );
    proxy
}

/// Two nodes; only node-1 has mesh pods. `extra` is appended (routes).
fn snapshot(echo_port: u16, extra: &str) -> ConfigSnapshot {
    let text = format!(
        r#"
version: 0
nodes: [{{ name: node-1, tunnelAddress: "10.100.0.11:15008" }}, {{ name: node-2, tunnelAddress: "10.100.0.12:15008" }}]
services:
  - id: {{ namespace: demo, name: echo }}
    clusterIps: [10.96.0.10]
    ports: [{{ name: http, port: 80, targetPort: {echo_port} }}]
    endpoints: [{{ address: 10.244.2.2, node: node-2 }}]
  - id: {{ namespace: demo, name: other }}
    ports: [{{ port: 80, targetPort: 8080 }}]
workloads:
  - {{ id: {{ namespace: demo, name: client }}, node: node-1, ips: [10.244.1.2], meshEnabled: true }}
  - {{ id: {{ namespace: plain, name: db }}, node: node-2, ips: [10.244.2.2], meshEnabled: false }}
{extra}"#
    );
    serde_norway::from_str(&text).unwrap()
}

fn acked(version: u64, nodes: &'static [&'static str]) -> impl Fn(&BTreeMap<String, NodeStatus>) -> bool {
    move |statuses| nodes.iter().all(|n| statuses.get(*n).is_some_and(|s| s.connected && s.acked_version == version))
}

fn version_of(proxy: &Proxy) -> u64 {
    proxy.store.load().map_or(0, |s| s.version)
}

#[tokio::test]
async fn each_node_receives_its_subset_then_deltas() {
    let distributor = Distributor::new();
    let v1 = distributor.publish(snapshot(8080, ""));
    let (addr, _server) = serve(&distributor, "127.0.0.1:0".parse().unwrap()).await;
    let (node1, node2) = (node_proxy("node-1", addr), node_proxy("node-2", addr));
    assert!(distributor.wait_for(WAIT, acked(v1, &["node-1", "node-2"])).await, "{:?}", distributor.node_statuses());

    let state1 = node1.store.load().unwrap();
    let state2 = node2.store.load().unwrap();
    assert_eq!(state1.version, v1);
    assert_eq!(state1.snapshot.services.len(), 2, "node-1 has a mesh pod: it gets the Services");
    assert_eq!(state1.snapshot.workloads.iter().map(|w| w.id.name.as_str()).collect::<Vec<_>>(), ["client"]);
    assert!(state2.snapshot.services.is_empty(), "node-2 has no mesh pod: no Services");
    assert_eq!(state2.snapshot.workloads.iter().map(|w| w.id.name.as_str()).collect::<Vec<_>>(), ["db"]);
    let first = distributor.node_statuses()["node-1"].clone();
    assert!(first.last_push_full);

    // One Service changes: node-1 gets a delta with just that Service; node-2 gets nothing.
    let v2 = distributor.publish(snapshot(8081, ""));
    assert!(distributor.wait_for(WAIT, acked(v2, &["node-1", "node-2"])).await);
    let statuses = distributor.node_statuses();
    let delta = &statuses["node-1"];
    assert!(!delta.last_push_full);
    assert!(
        delta.last_push_bytes < first.last_push_bytes / 2,
        "delta {} vs full {}",
        delta.last_push_bytes,
        first.last_push_bytes
    );
    assert_eq!(statuses["node-2"].pushes, 1, "node-2's view did not change: nothing sent");
    assert_eq!(node1.store.load().unwrap().snapshot.services[0].ports[0].target_port, 8081);
    assert_eq!(node1.metrics.control_plane_connected.get(), 1);
}

#[tokio::test]
async fn a_rejected_push_is_nacked_with_the_reason_and_the_old_config_stays() {
    let distributor = Distributor::new();
    let v1 = distributor.publish(snapshot(8080, ""));
    let (addr, _server) = serve(&distributor, "127.0.0.1:0".parse().unwrap()).await;
    let node1 = node_proxy("node-1", addr);
    assert!(distributor.wait_for(WAIT, acked(v1, &["node-1"])).await);

    // The controller validates what it translates, so this cannot come from translation; the
    // proxy must still defend itself (a newer controller, a regex dialect difference...).
    let bad_route = r#"
httpRoutes:
  - id: { namespace: demo, name: bad }
    parents: [{ service: { namespace: demo, name: echo } }]
    rules: [{ matches: [{ path: { type: RegularExpression, value: "(" } }], backends: [{ service: { namespace: demo, name: echo }, port: 80 }] }]
"#;
    let v2 = distributor.publish(snapshot(8080, bad_route));
    assert!(
        distributor
            .wait_for(WAIT, |s| s.get("node-1").is_some_and(|n| n.last_nack.as_ref().is_some_and(|(v, _)| *v == v2)))
            .await
    );
    let (_, error) = distributor.node_statuses()["node-1"].last_nack.clone().unwrap();
    assert!(error.contains("demo/bad") && error.contains("does not compile"), "{error}");
    assert_eq!(version_of(&node1), v1, "the proxy keeps serving the config it had");
    assert!(node1.store.load().unwrap().snapshot.http_routes.is_empty());

    // A later good push applies on top of what the proxy really holds.
    let v3 = distributor.publish(snapshot(9000, ""));
    assert!(distributor.wait_for(WAIT, acked(v3, &["node-1"])).await, "{:?}", distributor.node_statuses());
    assert_eq!(node1.store.load().unwrap().snapshot.services[0].ports[0].target_port, 9000);
}

#[tokio::test]
async fn proxies_keep_serving_without_the_controller_and_resume_with_a_delta() {
    let first_controller = Distributor::new();
    let v1 = first_controller.publish(snapshot(8080, ""));
    let (addr, server) = serve(&first_controller, "127.0.0.1:0".parse().unwrap()).await;
    let node1 = node_proxy("node-1", addr);
    assert!(first_controller.wait_for(WAIT, acked(v1, &["node-1"])).await);

    first_controller.close_streams();
    server.abort();
    let _ = server.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(version_of(&node1), v1, "the last good config stays in force while the controller is gone");

    // A restarted controller (fresh state, same content plus one change) on the same address:
    // the proxy resumes with what it holds and receives only the change.
    let restarted = Distributor::new();
    let v = restarted.publish(snapshot(8082, ""));
    let (_, _server) = serve(&restarted, addr).await;
    assert!(restarted.wait_for(WAIT, acked(v, &["node-1"])).await, "{:?}", restarted.node_statuses());
    let status = &restarted.node_statuses()["node-1"];
    assert_eq!(status.pushes, 1);
    assert!(!status.last_push_full, "resume sends a delta, not the whole view");
    assert_eq!(node1.store.load().unwrap().snapshot.services[0].ports[0].target_port, 8082);
    assert_eq!(node1.store.load().unwrap().snapshot.services.len(), 2, "what did not change is kept");
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: demo, labels: { nodus.dev/mesh: enabled } }
---
apiVersion: v1
kind: Service
metadata: { name: echo, namespace: demo }
spec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: demo }
spec: { nodeName: node-1, containers: [{ name: c, image: c }] }
status: { phase: Running, hostIP: 10.100.0.11, podIP: 10.244.1.2 }
"#;

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: to-echo, namespace: demo }
spec:
  parentRefs: [{ group: "", kind: Service, name: echo, port: 80 }]
  rules: [{ backendRefs: [{ name: echo, port: 80 }] }]
"#;

#[tokio::test]
async fn standalone_mode_picks_up_changed_manifests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), MANIFESTS).unwrap();
    let status_file = dir.path().join("status.out");
    let distributor = Distributor::new();
    let reconciler = Reconciler::new(TranslateOptions::default(), distributor.clone());
    let settings = StandaloneSettings {
        dir: dir.path().to_path_buf(),
        status_file: Some(status_file.clone()),
        poll: Duration::from_millis(50),
    };
    tokio::spawn(standalone::run(settings, reconciler));
    let (addr, _server) = serve(&distributor, "127.0.0.1:0".parse().unwrap()).await;
    let node1 = node_proxy("node-1", addr);
    assert!(distributor.wait_for(WAIT, |s| s.get("node-1").is_some_and(|n| n.acked_version >= 1)).await);
    assert!(node1.store.load().unwrap().snapshot.http_routes.is_empty());

    std::fs::write(dir.path().join("route.yaml"), ROUTE).unwrap();
    assert!(distributor.wait_for(WAIT, |s| s.get("node-1").is_some_and(|n| n.acked_version >= 2)).await);
    let routes = node1.store.load().unwrap().snapshot.http_routes.clone();
    assert_eq!(routes.iter().map(|r| r.id.to_string()).collect::<Vec<_>>(), ["demo/to-echo"]);
    let status = std::fs::read_to_string(&status_file).unwrap();
    assert!(status.contains("to-echo") && status.contains("reason: Accepted"), "{status}");

    // A broken file is reported and changes nothing.
    let acked_before = distributor.node_statuses()["node-1"].acked_version;
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: { name: x }\nspec: { ports: 7 }\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(distributor.node_statuses()["node-1"].acked_version, acked_before);
    assert_eq!(node1.store.load().unwrap().snapshot.http_routes.len(), 1);
}

#[tokio::test]
async fn node_proxies_obtain_and_rotate_certificates_for_their_own_workloads() {
    use nodus_controller::certificates::CertificateService;
    use nodus_identity::{tls::identity_of, CertificateAuthority, SpiffeId};
    use nodus_proxy::control::identity::IdentityManager;

    let distributor = Distributor::new();
    let v1 = distributor.publish(snapshot(8080, ""));
    let ca = Arc::new(CertificateAuthority::generate("cluster.local", Duration::from_secs(86_400)).unwrap());
    // Seconds-long certificates, so that rotation happens during the test.
    let certificates =
        CertificateService::new(ca.clone(), "cluster.local", Duration::from_secs(2), distributor.clone());
    let v1 = distributor.set_trust_roots(nodus_controller::trust::roots(&[&ca], &ca)).max(v1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (service, ca_service) = (distributor.service(), certificates.service());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .add_service(ca_service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let node1 = node_proxy("node-1", addr);
    assert!(distributor.wait_for(WAIT, acked(v1, &["node-1"])).await);
    let manager = Arc::new(IdentityManager::new("cluster.local", "node-1", node1.store.clone()));
    let signer = nodus_proxy::control::identity::ControllerSigner::new(
        &format!("http://{addr}"),
        nodus_proxy::control::config_client::NodeCredentials::none(),
    )
    .unwrap();
    nodus_proxy::control::identity::run(node1.certificate_inputs(), manager.clone(), Arc::new(signer));

    let client = SpiffeId::new("cluster.local", "demo", "default");
    let deadline = std::time::Instant::now() + WAIT;
    while manager.certificate(&client).is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = manager.certificate(&client).expect("a certificate for node-1's mesh workload");
    assert_eq!(identity_of(&first.certificate.chain[0]), Some(client.clone()));
    assert_eq!(
        manager.identities(),
        std::slice::from_ref(&client),
        "plain/db runs on node-2 and is not in the mesh: never requested"
    );
    assert!(manager.trust_roots().is_some(), "the roots come with the config");

    // Renewed at half-life (1 s), before it expires (2 s), without a gap.
    let mut renewed = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let current = manager.certificate(&client).expect("never without a certificate during rotation");
        assert!(current.certificate.not_after > std::time::SystemTime::now(), "the certificate in use never expires");
        if !Arc::ptr_eq(&current, &first) {
            renewed = Some(current);
            break;
        }
    }
    let renewed = renewed.expect("renewed within 6 s");
    assert!(renewed.certificate.not_after > first.certificate.not_after);
    assert_eq!(node1.metrics.certificate_errors.get(), 0);
    assert!(node1.metrics.certificates_issued.get() >= 2);
}
