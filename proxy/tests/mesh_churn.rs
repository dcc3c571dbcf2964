//! Connection churn: a new connection per request, as scripts, health checks, HTTP/1.0 clients
//! and connection-per-call drivers make. A pod's ephemeral ports (about 28,000) are each held
//! 60 s in TIME-WAIT by the side that closes first: the proxy must close first where HTTP says
//! the connection ends, and where the client closes first, its connections to different
//! Services must not share one destination address (docs/redirect.md). Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{skip_unless_lab_supported, PROXY_OUTBOUND_PORT};
use support::*;

/// The pod's TCP sockets in TIME-WAIT towards the node proxy's outbound listeners.
fn time_wait_towards_proxy(pod: &nodus_harness::Pod) -> Vec<u16> {
    let out = pod.command("ss").unwrap().args(["-Htan", "state", "time-wait"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3)?.rsplit_once(':')?.1.parse::<u16>().ok())
        .filter(|port| (PROXY_OUTBOUND_PORT..PROXY_OUTBOUND_PORT + 16).contains(port))
        .collect()
}

#[test]
fn the_proxy_closes_first_when_http_ends_the_connection() {
    skip_unless_lab_supported!();
    let mesh = start("", &[]);
    let outcomes =
        client(&mesh, &["--target", "10.96.0.12:80", "--count", "300", "--new-connection", "-H", "connection: close"]);
    assert_eq!(outcomes.iter().filter(|o| o["status"] == 200).count(), 300);
    // Without the cork, 11 of 300 clients closed first here and kept the TIME-WAIT.
    let waiting = time_wait_towards_proxy(&mesh.client);
    assert!(waiting.is_empty(), "{} of the pod's sockets in TIME-WAIT", waiting.len());
}

#[test]
fn a_pod_keeps_its_rate_of_short_connections_to_several_services_when_it_closes_first() {
    skip_unless_lab_supported!();
    let mesh = start_with(
        &config_with_services(
            1,
            r#"  - id: { namespace: demo, name: echo-v2b }
    clusterIps: [10.96.0.13]
    ports: [{ port: 80, targetPort: 8080 }]
    endpoints: [{ address: 10.244.1.3, node: node-1, workload: { namespace: demo, name: echo-v2 } }]"#,
        ),
        &[],
    );
    // The pod's ephemeral ports, made few (1,024) so that the test needs seconds, not minutes:
    // the mechanism is the same with the default 28,232 and 60k connections a minute.
    let out = mesh
        .client
        .command("sysctl")
        .unwrap()
        .args(["-w", "net.ipv4.ip_local_port_range=40000 41023"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Four Services, each dialled 900 times in 6 s with a new connection closed by the client
    // (no `Connection: close`): 3,600 in all, more than the pod's ephemeral ports. On one
    // destination address they would run out after 1,024 (connect() fails: EADDRNOTAVAIL);
    // spread by destination, each Service has its own range, as without the mesh.
    let loads: Vec<_> = ["10.96.0.10:80", "10.96.0.11:80", "10.96.0.12:80", "10.96.0.13:80"]
        .into_iter()
        .map(|target| {
            let pod = mesh.client.clone();
            std::thread::spawn(move || {
                client_in(
                    &pod,
                    &[
                        "--target",
                        target,
                        "--new-connection",
                        "--duration-secs",
                        "6",
                        "--rate",
                        "150",
                        "--report-every",
                        "30",
                    ],
                )
            })
        })
        .collect();
    let mut total = (0, 0);
    for load in loads {
        let summaries = load.join().unwrap();
        let requests: u64 = summaries.iter().map(|s| s["requests"].as_u64().unwrap()).sum();
        let ok: u64 = summaries.iter().map(|s| s["ok"].as_u64().unwrap()).sum();
        assert_eq!(ok, requests, "{summaries:?}");
        total = (total.0 + requests, total.1 + ok);
    }
    assert!(total.0 >= 3_500, "{total:?}");
    // The pod's TIME-WAIT sockets are spread over the outbound ports, one per Service.
    let mut ports = time_wait_towards_proxy(&mesh.client);
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4, "{ports:?}");
}
