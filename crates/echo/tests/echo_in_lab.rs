//! The echo program in a pod of the mesh harness, called from a pod on another node by our
//! HTTP clients and by Python grpcio (an independent gRPC implementation). Needs root.
#![allow(clippy::unwrap_used)]

use nodus_harness::{skip_unless_lab_supported, Lab, LabSpec, Pod, Process};
use std::net::SocketAddr;
use std::time::Duration;

/// Starts `nodus-echo` in `pod` and waits until it listens.
fn start_echo(pod: &Pod, port: u16) -> Process {
    let mut command = pod.command(env!("CARGO_BIN_EXE_nodus-echo")).unwrap();
    command.args(["--listen", &format!("0.0.0.0:{port}"), "--pod", &pod.name, "--namespace", &pod.namespace]);
    let mut echo = Process::spawn("nodus-echo", command).unwrap();
    echo.wait_for_line("nodus-echo listening on", Duration::from_secs(10)).unwrap();
    echo
}

/// Runs an async block on a fresh runtime inside `pod`'s network namespace.
fn in_pod<T: Send>(pod: &Pod, f: impl std::future::Future<Output = T> + Send) -> T {
    pod.netns().run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)).unwrap()
}

#[test]
fn http1_and_h2c_across_nodes_name_the_answering_pod() {
    skip_unless_lab_supported!();
    let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
    let client = lab.add_pod("node-1", "demo", "client").unwrap();
    let server = lab.add_pod("node-2", "demo", "echo-v1").unwrap();
    let _echo = start_echo(&server, 8080);
    let target = SocketAddr::from((server.ip, 8080));

    let (h1, h2) = in_pod(&client, async move {
        let h1 = nodus_echo::http1_get(target, "echo", "/one", &[]).await.unwrap().report().unwrap();
        let h2 = nodus_echo::h2c_get(target, "echo", "/two", &[]).await.unwrap().report().unwrap();
        (h1, h2)
    });
    assert_eq!((h1.pod.as_str(), h1.namespace.as_str(), h1.protocol.as_str()), ("echo-v1", "demo", "HTTP/1.1"));
    assert_eq!(h2.protocol, "HTTP/2.0");
    assert_eq!(h1.remote_addr.split(':').next().unwrap(), client.ip.to_string(), "no NAT between pods");
}

#[test]
fn python_grpcio_calls_the_echo_service_across_nodes() {
    skip_unless_lab_supported!();
    let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
    let client = lab.add_pod("node-1", "demo", "client").unwrap();
    let server = lab.add_pod("node-2", "demo", "echo-v1").unwrap();
    let _echo = start_echo(&server, 9090);
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_client.py");
    let output = client
        .command("python3")
        .unwrap()
        .args([script, proto_dir, &format!("{}:9090", server.ip), "EchoThree", "from python"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python grpcio client failed (setup installs grpcio and grpcio-tools): {stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["message"], "from python");
    assert_eq!(answer["pod"], "echo-v1");
    assert_eq!(answer["full_method"], "/nodus.echo.v1.Echo/EchoThree");
    assert_eq!(answer["headers"]["x-client"], "grpcio");
    assert!(answer["headers"]["user-agent"].as_str().unwrap().contains("grpc-python"));
    assert_eq!(answer["remote_addr"].as_str().unwrap().split(':').next().unwrap(), client.ip.to_string());
}
