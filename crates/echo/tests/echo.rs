//! The echo workload answering real HTTP/1.1, h2c and gRPC clients.
#![allow(clippy::unwrap_used)]

use nodus_echo::proto::{echo_client::EchoClient, EchoRequest};
use nodus_echo::{h2c_get, http1_get, serve, EchoIdentity};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn identity() -> EchoIdentity {
    EchoIdentity { pod: "echo-v1-0".into(), namespace: "demo".into(), service: "echo".into(), ..Default::default() }
}

async fn start_on_loopback() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, identity()));
    addr
}

#[tokio::test]
async fn http1_request_is_described_in_json() {
    let addr = start_on_loopback().await;
    let answer = http1_get(addr, "echo.demo.svc", "/v1/items?x=1", &[("x-test", "a"), ("x-test", "b")]).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/json");
    let report = answer.report().unwrap();
    assert_eq!(report.pod, "echo-v1-0");
    assert_eq!(report.namespace, "demo");
    assert_eq!(report.service, "echo");
    assert_eq!(report.method, "GET");
    assert_eq!(report.path, "/v1/items?x=1");
    assert_eq!(report.host, "echo.demo.svc");
    assert_eq!(report.protocol, "HTTP/1.1");
    assert_eq!(report.headers["x-test"], vec!["a", "b"]);
    assert_eq!(report.remote_addr.split(':').next(), Some("127.0.0.1"));
}

#[tokio::test]
async fn h2c_request_is_described_in_json() {
    let addr = start_on_loopback().await;
    let report = h2c_get(addr, "echo.demo.svc:8080", "/h2", &[("x-test", "h2")]).await.unwrap().report().unwrap();
    assert_eq!(report.protocol, "HTTP/2.0");
    assert_eq!(report.host, "echo.demo.svc:8080");
    assert_eq!(report.path, "/h2");
    assert_eq!(report.header("x-test"), Some("h2"));
}

#[tokio::test]
async fn request_headers_steer_status_delay_and_response_headers() {
    let addr = start_on_loopback().await;
    let answer =
        http1_get(addr, "h", "/", &[("x-echo-status", "503"), ("x-echo-set-header", "x-a: 1, x-b:two")]).await.unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["x-a"], "1");
    assert_eq!(answer.headers["x-b"], "two");
    assert_eq!(answer.report().unwrap().pod, "echo-v1-0", "failures still say who answered");

    let started = Instant::now();
    let answer = http1_get(addr, "h", "/", &[("x-echo-delay-ms", "300")]).await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "the answer must wait for the delay");

    for bad in [
        ("x-echo-status", "abc"),
        ("x-echo-status", "1000"),
        ("x-echo-delay-ms", "9999999"),
        ("x-echo-set-header", "novalue"),
    ] {
        let answer = http1_get(addr, "h", "/", &[bad]).await.unwrap();
        assert_eq!(answer.status, 400, "{bad:?}");
    }
}

#[tokio::test]
async fn grpc_calls_report_the_method_and_metadata() {
    let addr = start_on_loopback().await;
    let mut client = EchoClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(EchoRequest { message: "hi".into() });
    request.metadata_mut().insert("x-client", "tonic".parse().unwrap());
    let response = client.echo_two(request).await.unwrap().into_inner();
    assert_eq!(response.message, "hi");
    let context = response.context.unwrap();
    assert_eq!(context.full_method, "/nodus.echo.v1.Echo/EchoTwo");
    assert_eq!(context.pod, "echo-v1-0");
    assert_eq!(context.protocol, "HTTP/2.0");
    assert!(context.headers.iter().any(|h| h.name == "x-client" && h.value == "tonic"));
}

#[tokio::test]
async fn fail_pod_header_fails_only_the_named_pod_and_seen_lists_requests() {
    let addr = start_on_loopback().await;
    assert_eq!(http1_get(addr, "h", "/a", &[("x-echo-fail-pod", "echo-v1-0")]).await.unwrap().status, 503);
    assert_eq!(http1_get(addr, "h", "/b", &[("x-echo-fail-pod", "other-pod")]).await.unwrap().status, 200);
    let seen: Vec<String> =
        serde_json::from_slice(&http1_get(addr, "h", "/.nodus-echo/seen", &[]).await.unwrap().body).unwrap();
    assert_eq!(seen, vec!["GET /a", "GET /b"]);
}
