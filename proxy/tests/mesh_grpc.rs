//! GRPCRoute end to end, called by an independent gRPC implementation (Python grpcio) running
//! as a captured process in the client pod. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::skip_unless_lab_supported;
use support::*;

const ROUTES: &str = r#"
grpcRoutes:
  - id: { namespace: demo, name: grpc-by-method }
    parents: [{ service: { namespace: demo, name: echo }, port: 9090 }]
    rules:
      - name: two-to-v2
        matches: [{ method: { service: nodus.echo.v1.Echo, method: EchoTwo } }]
        filters: [{ type: RequestHeaderModifier, set: [{ name: x-routed-by, value: grpcroute }] }]
        backends: [{ service: { namespace: demo, name: echo-v2 }, port: 9090 }]
      - name: header-to-v2
        matches: [{ method: { service: nodus.echo.v1.Echo }, headers: [{ name: x-client, match: { type: Exact, value: canary } }] }]
        backends: [{ service: { namespace: demo, name: echo-v2 }, port: 9090 }]
      - name: rest-to-v1
        matches: [{ method: { type: RegularExpression, service: "nodus\\.echo\\..*" } }]
        backends: [{ service: { namespace: demo, name: echo-v1 }, port: 9090 }]
"#;

fn python_call(mesh: &Mesh, method: &str, metadata_client: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/echo/tests/grpc_client.py");
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/echo/proto");
    let out = mesh
        .client
        .command("python3")
        .unwrap()
        .env("NODUS_GRPC_CLIENT_NAME", metadata_client)
        .args([script, proto, &format!("{ECHO}:9090"), method, "hello"])
        .output()
        .unwrap();
    assert!(out.status.success(), "grpcio client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn python_grpcio_calls_are_routed_by_method_and_metadata() {
    skip_unless_lab_supported!();
    let mesh = start(ROUTES, &[]);
    let two = python_call(&mesh, "EchoTwo", "grpcio");
    assert_eq!(two["pod"], "echo-v2");
    assert_eq!(two["headers"]["x-routed-by"], "grpcroute", "GRPCRoute header filter applied");
    assert_eq!(two["full_method"], "/nodus.echo.v1.Echo/EchoTwo");
    assert_eq!(python_call(&mesh, "Echo", "grpcio")["pod"], "echo-v1");
    assert_eq!(python_call(&mesh, "EchoThree", "grpcio")["pod"], "echo-v1");
    assert_eq!(python_call(&mesh, "Echo", "canary")["pod"], "echo-v2", "header match wins over the regex rule");

    let (_, metrics) = mesh.proxy.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"route_kind="GRPCRoute",route_name="demo/grpc-by-method",route_rule="two-to-v2",backend="demo/echo-v2:9090",method="POST",status_code="200",grpc_status="0""#),
        "{metrics}"
    );
}
