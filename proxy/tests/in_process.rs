//! The proxy in this test process on loopback, without eBPF (see support/loopback.rs for why that
//! is not a mock).
#![allow(clippy::unwrap_used)]

#[path = "support/loopback.rs"]
mod loopback;

use loopback::{start_echo, VIP};
use nodus_config::ConfigSnapshot;
use nodus_proxy::app::{self, Proxy};
use nodus_proxy::balance::OutlierPolicy;
use nodus_proxy::core::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start_proxy(service_port: u16) -> (Arc<Proxy>, app::Listening) {
    start_proxy_with(service_port, nodus_proxy::core::limits::ConnectionLimits::default()).await
}

async fn start_proxy_with(
    service_port: u16,
    limits: nodus_proxy::core::limits::ConnectionLimits,
) -> (Arc<Proxy>, app::Listening) {
    let proxy = Arc::new(Proxy::new(OutlierPolicy::default(), Metrics::new()));
    let listening = loopback::start_on_loopback(&proxy, service_port, limits).await;
    (proxy, listening)
}

fn config(service_port: u16, target_port: u16, app_protocol: &str, routes: &str) -> ConfigSnapshot {
    let yaml = format!(
        r#"
version: 1
services:
  - id: {{ namespace: demo, name: echo }}
    clusterIps: [{VIP}]
    ports: [{{ port: {service_port}, targetPort: {target_port}, appProtocol: {app_protocol} }}]
    endpoints: [{{ address: 127.0.0.1 }}]
{routes}"#
    );
    serde_norway::from_str(&yaml).unwrap()
}

#[tokio::test]
async fn without_config_requests_are_refused_not_passed_through() {
    let (_proxy, listening) = start_proxy(80).await;
    let http = nodus_echo::http1_get(listening.outbound, "echo", "/", &[]).await.unwrap();
    assert_eq!(http.status, 503);
    assert!(String::from_utf8_lossy(&http.body).contains("no mesh config received yet"));
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", listening.outbound)).unwrap().connect_lazy();
    let status = nodus_echo::proto::echo_client::EchoClient::new(channel)
        .echo(nodus_echo::proto::EchoRequest { message: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn metrics_pass_promtool_with_real_traffic() {
    let echo_port = start_echo().await;
    let (proxy, listening) = start_proxy(80).await;
    let routes = r#"
httpRoutes:
  - id: { namespace: demo, name: web }
    parents: [{ service: { namespace: demo, name: echo } }]
    rules:
      - name: api
        matches: [{ path: { type: PathPrefix, value: /api } }]
        backends: [{ service: { namespace: demo, name: echo }, port: 80 }]
"#;
    proxy.apply(config(80, echo_port, "detect", routes)).unwrap();
    assert_eq!(nodus_echo::http1_get(listening.outbound, "echo", "/api/x", &[]).await.unwrap().status, 200);
    assert_eq!(nodus_echo::h2c_get(listening.outbound, "echo", "/api/y", &[]).await.unwrap().status, 200);
    assert_eq!(nodus_echo::http1_get(listening.outbound, "echo", "/other", &[]).await.unwrap().status, 404);
    let (status, metrics) =
        tokio::task::spawn_blocking(move || nodus_harness::http_get(listening.admin, "/metrics").unwrap())
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"route_kind="HTTPRoute",route_name="demo/web",route_rule="api""#), "{metrics}");
    assert!(metrics.contains(r#"route_kind="none""#) && metrics.contains(r#"status_code="404""#), "{metrics}");
    assert!(metrics.contains("nodus_request_duration_seconds_bucket{"), "{metrics}");

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/setup.sh");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    if std::env::var("DUMP_METRICS").is_ok() {
        eprintln!("{metrics}");
    }
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn opaque_tcp_is_forwarded_to_an_endpoint_both_ways() {
    // A TCP echo that is not HTTP.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        stream.write_all(&buf[..n]).await.unwrap();
    });
    let (proxy, listening) = start_proxy(5432).await;
    proxy.apply(config(5432, port, "detect", "")).unwrap();
    let mut client = TcpStream::connect(listening.outbound).await.unwrap();
    client.write_all(b"\x00\x00\x00\x08binary!").await.unwrap();
    let mut echoed = vec![0u8; 11];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"\x00\x00\x00\x08binary!");
}

#[tokio::test]
async fn server_first_protocols_work_after_the_detection_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"220 smtp.example ESMTP\r\n").await.unwrap();
    });
    let (proxy, listening) = start_proxy(25).await;
    proxy.apply(config(25, port, "detect", "")).unwrap();
    let mut client = TcpStream::connect(listening.outbound).await.unwrap();
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(3), client.read_to_string(&mut banner)).await.unwrap().unwrap();
    assert_eq!(banner, "220 smtp.example ESMTP\r\n");
}

#[tokio::test]
async fn a_client_silent_past_the_detection_timeout_is_still_served_as_http() {
    // Pre-connected pools do this: connect, then send the first request later. Relayed as
    // bytes, the request would skip the stack, and a forged identity header would reach the pod.
    let echo_port = start_echo().await;
    let (proxy, listening) = start_proxy(80).await;
    proxy.apply(config(80, echo_port, "detect", "")).unwrap();
    let mut client = TcpStream::connect(listening.outbound).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the timeout here is 200 ms
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nx-nodus-client-identity: forged\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(3), client.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("forged"), "the forged header was removed: {answer}");
    let metrics = proxy.metrics.encode();
    assert!(metrics.contains(r#"nodus_requests_total{direction="outbound""#), "served by the stack: {metrics}");
}

#[tokio::test]
async fn non_http_bytes_to_a_destination_with_routes_are_refused() {
    let echo_port = start_echo().await;
    let (proxy, listening) = start_proxy(80).await;
    let routes = r#"
httpRoutes:
  - id: { namespace: demo, name: web }
    parents: [{ service: { namespace: demo, name: echo } }]
    rules: [{ backends: [{ service: { namespace: demo, name: echo }, port: 80 }] }]
"#;
    proxy.apply(config(80, echo_port, "detect", routes)).unwrap();
    let mut client = TcpStream::connect(listening.outbound).await.unwrap();
    client.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut rest)).await.unwrap();
    assert!(read.is_err() || rest.is_empty(), "closed without forwarding: {rest:?}");
}

#[tokio::test]
async fn upgraded_connections_are_relayed_both_ways() {
    let echo_port = start_echo().await;
    let (proxy, listening) = start_proxy(80).await;
    proxy.apply(config(80, echo_port, "detect", "")).unwrap();
    let mut client = TcpStream::connect(listening.outbound).await.unwrap();
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: nodus-echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.write_all(b"ping over the upgraded connection").await.unwrap();
    let mut echoed = vec![0u8; 33];
    tokio::time::timeout(Duration::from_secs(3), client.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping over the upgraded connection");
}

#[tokio::test]
async fn upstream_connections_are_reused_across_requests() {
    let echo_port = start_echo().await;
    let (proxy, listening) = start_proxy(80).await;
    proxy.apply(config(80, echo_port, "detect", "")).unwrap();
    // One client connection, many requests: the proxy should keep one upstream connection too.
    let stream = TcpStream::connect(listening.outbound).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut upstream_ports = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let request = http::Request::builder()
            .uri("/")
            .header("host", "echo")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        let report: nodus_echo::EchoReport = serde_json::from_slice(&body).unwrap();
        upstream_ports.insert(report.remote_addr);
    }
    assert_eq!(upstream_ports.len(), 1, "50 requests should share one pooled connection: {upstream_ports:?}");
}
