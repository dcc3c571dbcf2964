//! The whole outbound path for real: a client process in an enrolled pod dials a Service IP, the
//! eBPF redirect captures it, the node proxy routes it, echo pods on both nodes answer. Root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::skip_unless_lab_supported;
use support::*;

#[test]
fn service_traffic_without_routes_reaches_every_endpoint_over_h1_h2_and_grpc() {
    skip_unless_lab_supported!();
    let mesh = start("", &[]);
    let target = format!("{ECHO}:80");
    let h1 = client(&mesh, &["--target", &target, "--host", "echo.demo.svc", "--count", "40"]);
    assert!(h1.iter().all(|o| o["status"] == 200), "{h1:?}");
    let pods = by_pod(&h1);
    assert!(pods.contains_key("echo-v1") && pods.contains_key("echo-v2"), "both endpoints answer: {pods:?}");
    assert_eq!(h1[0]["report"]["host"], "echo.demo.svc");

    let h2 = client(&mesh, &["--target", &target, "--host", "echo.demo.svc", "--protocol", "h2", "--count", "10"]);
    assert!(h2.iter().all(|o| o["status"] == 200 && o["report"]["protocol"] == "HTTP/2.0"), "{h2:?}");

    let grpc_target = format!("{ECHO}:9090");
    let grpc = client(&mesh, &["--target", &grpc_target, "--protocol", "grpc", "--count", "10"]);
    assert!(grpc.iter().all(|o| o["grpc_status"] == 0), "{grpc:?}");

    let (status, metrics) = mesh.proxy.admin_get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("nodus_requests_total{"), "{metrics}");
    // Source and destination are named by workload (owner), never by pod.
    for expected in
        [r#"src_namespace="demo",src_workload="client""#, r#"dst_workload="echo-v1""#, r#"dst_workload="echo-v2""#]
    {
        assert!(metrics.contains(expected), "{expected} in {metrics}");
    }
    // One connection per client run (keep-alive, multiplexing): three captured connections.
    assert!(nodus_harness::metric_value(&metrics, "nodus_redirect_captured_total").unwrap() >= 3.0, "{metrics}");
}
