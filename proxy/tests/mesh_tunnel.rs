//! Traffic to an endpoint on another node travels through that node's proxy: an HTTP/2 CONNECT
//! stream from node-1's proxy to node-2's inbound listener, which only reaches its own pods.
//! Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{metric_value, skip_unless_lab_supported};
use support::*;

fn remote_ip(outcome: &serde_json::Value) -> String {
    outcome["report"]["remote_addr"].as_str().unwrap().split(':').next().unwrap().to_owned()
}

#[test]
fn cross_node_requests_go_through_the_peer_proxy_and_local_ones_do_not() {
    skip_unless_lab_supported!();
    let mesh = start_two_nodes("");
    // echo-v1 is on node-2: node-2's proxy connects to it from node-2's pod gateway.
    let v1 = client(&mesh, &["--target", &format!("{ECHO_V1}:80"), "--count", "5"]);
    assert!(v1.iter().all(|o| o["status"] == 200 && remote_ip(o) == "10.244.2.1"), "{v1:?}");
    let h2 = client(&mesh, &["--target", &format!("{ECHO_V1}:80"), "--protocol", "h2", "--count", "5"]);
    assert!(h2.iter().all(|o| o["status"] == 200 && o["report"]["protocol"] == "HTTP/2.0"), "{h2:?}");
    let grpc = client(&mesh, &["--target", &format!("{ECHO_V1}:9090"), "--protocol", "grpc", "--count", "5"]);
    assert!(grpc.iter().all(|o| o["grpc_status"] == 0 && o["pod"] == "echo-v1"), "{grpc:?}");
    // echo-v2 is on node-1: reached directly by node-1's proxy.
    let v2 = client(&mesh, &["--target", &format!("{ECHO_V2}:80"), "--count", "3"]);
    assert!(v2.iter().all(|o| o["status"] == 200 && remote_ip(o) == "10.244.1.1"), "{v2:?}");

    let (_, metrics) = mesh.peer.as_ref().unwrap().admin_get("/metrics").unwrap();
    let tunnels = metric_value(
        &metrics,
        r#"nodus_tcp_connections_total{direction="inbound",protocol="tunnel_http",destination="demo/echo-v1"}"#,
    );
    // Multiplexed: connections to the pod, not to node-2, are counted (pooled, so few).
    assert!(tunnels.unwrap_or(0.0) >= 2.0, "{metrics}");
}

#[test]
fn the_inbound_listener_only_reaches_pods_of_its_own_node() {
    skip_unless_lab_supported!();
    let mesh = start_two_nodes("");
    let node1 = mesh.lab.node("node-1").unwrap().clone();
    let statuses = node1
        .netns()
        .run(|| {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                let stream = tokio::net::TcpStream::connect("10.100.0.12:15008").await.unwrap();
                let (mut sender, connection) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(stream),
                )
                .await
                .unwrap();
                tokio::spawn(connection);
                let mut statuses = Vec::new();
                // A pod of node-2, a pod of node-1, and an address that is no pod at all.
                for target in ["10.244.2.2:8080", "10.244.1.3:8080", "10.100.0.11:15020"] {
                    let request = http::Request::builder()
                        .method("CONNECT")
                        .uri(target)
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    statuses.push(sender.send_request(request).await.unwrap().status().as_u16());
                }
                statuses
            })
        })
        .unwrap();
    assert_eq!(statuses, vec![200, 403, 403]);
}
