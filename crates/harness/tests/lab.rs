//! The harness against the real kernel: namespaces, veths, routes and cgroups. Needs root.
#![allow(clippy::unwrap_used)]

use nodus_harness::{leftovers_of_run, remove_stale_runs, skip_unless_lab_supported, Lab, LabSpec, Pod};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Serves one connection in `server`: reads a line and answers with the peer address it saw.
/// Returns what `client` received.
fn tcp_round_trip(client: &Pod, server: &Pod, port: u16) -> String {
    let listener = server.netns().run(|| TcpListener::bind((server.ip, port))).unwrap().unwrap();
    let server_thread = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        stream.write_all(format!("seen {}", peer.ip()).as_bytes()).unwrap();
    });
    let target = SocketAddr::from((server.ip, port));
    let answer = client
        .netns()
        .run(|| {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
            stream.write_all(b"hello").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        })
        .unwrap();
    server_thread.join().unwrap();
    answer
}

fn host_links() -> String {
    let out = std::process::Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    // Counters and states change; names are what must not.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|name| name.trim().to_owned()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn pods_on_two_nodes_talk_over_tcp_without_nat() {
    skip_unless_lab_supported!();
    let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
    let client = lab.add_pod("node-1", "demo", "client").unwrap();
    let server = lab.add_pod("node-2", "demo", "server").unwrap();
    let neighbour = lab.add_pod("node-1", "demo", "neighbour").unwrap();
    assert_ne!(client.ip, server.ip);
    // Across nodes, and the server sees the client's own pod IP.
    assert_eq!(tcp_round_trip(&client, &server, 8080), format!("seen {}", client.ip));
    // Same node, through the node's namespace.
    assert_eq!(tcp_round_trip(&neighbour, &client, 8081), format!("seen {}", neighbour.ip));
    lab.teardown().unwrap();
}

#[test]
fn pod_processes_run_in_the_pod_netns_and_cgroup() {
    skip_unless_lab_supported!();
    let mut lab = Lab::new(LabSpec { nodes: 1 }).unwrap();
    let pod = lab.add_pod("node-1", "demo", "app").unwrap();
    let out = pod.command("ip").unwrap().args(["-o", "-4", "addr", "show", "dev", "eth0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/32", pod.ip)), "pod process should see the pod's eth0: {text}");

    let mut sleeper = pod.command("sleep").unwrap().arg("600").spawn().unwrap();
    assert!(pod.cgroup().pids().unwrap().contains(&sleeper.id()));
    let mut node_proc = lab.nodes()[0].command("sleep").unwrap().arg("600").spawn().unwrap();
    assert!(lab.nodes()[0].system_cgroup().pids().unwrap().contains(&node_proc.id()));

    // Teardown kills what runs in the lab.
    lab.teardown().unwrap();
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the pod's process should have been killed");
    assert!(!node_proc.wait().unwrap().success(), "the node's process should have been killed");
}

#[test]
fn teardown_leaves_no_namespace_link_or_cgroup() {
    skip_unless_lab_supported!();
    let links_before = host_links();
    let mut lab = Lab::new(LabSpec { nodes: 3 }).unwrap();
    for (node, name) in [("node-1", "a"), ("node-2", "b"), ("node-3", "c")] {
        lab.add_pod(node, "demo", name).unwrap();
    }
    let run_id = lab.run_id().to_owned();
    let before_teardown = leftovers_of_run(&run_id);
    // lab + 3 nodes + 3 pods, the cgroup tree and the owner record.
    assert_eq!(before_teardown.iter().filter(|l| l.starts_with("netns")).count(), 7, "{before_teardown:?}");
    assert!(before_teardown.iter().any(|l| l.starts_with("cgroup")));
    assert_eq!(host_links(), links_before, "the lab must not add interfaces to the host namespace");
    lab.teardown().unwrap();
    assert_eq!(leftovers_of_run(&run_id), Vec::<String>::new());
    assert_eq!(host_links(), links_before);
}

#[test]
fn a_panicking_test_still_tears_its_lab_down() {
    skip_unless_lab_supported!();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let mut lab = Lab::new(LabSpec { nodes: 1 }).unwrap();
        lab.add_pod("node-1", "demo", "doomed").unwrap();
        tx.send(lab.run_id().to_owned()).unwrap();
        panic!("test failure while the lab is up");
    });
    assert!(result.is_err());
    let run_id = rx.recv().unwrap();
    assert_eq!(leftovers_of_run(&run_id), Vec::<String>::new());
}

#[test]
fn two_labs_run_side_by_side_with_the_same_addresses() {
    skip_unless_lab_supported!();
    let runs: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
                let client = lab.add_pod("node-1", "demo", "client").unwrap();
                let server = lab.add_pod("node-2", "demo", "server").unwrap();
                for round in 0..3 {
                    assert_eq!(tcp_round_trip(&client, &server, 9000 + round), format!("seen {}", client.ip));
                }
                (i, lab.run_id().to_owned(), client.ip)
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    assert_ne!(results[0].1, results[1].1, "run ids must differ");
    assert_eq!(results[0].2, results[1].2, "both labs use the same pod addresses, isolated by namespaces");
    for (_, run_id, _) in results {
        assert_eq!(leftovers_of_run(&run_id), Vec::<String>::new());
    }
}

#[test]
fn a_lab_whose_owner_died_is_removed_by_the_next_run() {
    skip_unless_lab_supported!();
    let mut lab = Lab::new(LabSpec { nodes: 1 }).unwrap();
    let pod = lab.add_pod("node-1", "demo", "orphan").unwrap();
    let mut orphan_process = pod.command("sleep").unwrap().arg("600").spawn().unwrap();
    let run_id = lab.run_id().to_owned();
    // Simulate a run killed with SIGKILL: its lab stays, and its owner record names a process
    // that no longer exists.
    std::mem::forget(lab);
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(format!("/run/nodus-harness/{run_id}.owner"), format!("{dead_pid} 1\n")).unwrap();
    assert!(!leftovers_of_run(&run_id).is_empty());

    // Tests run in parallel and every Lab::new sweeps too, so another test may get there first:
    // what matters is that the stale lab is gone after a sweep.
    remove_stale_runs();
    assert_eq!(leftovers_of_run(&run_id), Vec::<String>::new());
    assert!(!orphan_process.wait().unwrap().success(), "the orphan's processes are killed too");
}

#[test]
fn live_labs_of_other_runs_are_left_alone() {
    skip_unless_lab_supported!();
    let lab = Lab::new(LabSpec { nodes: 1 }).unwrap();
    let removed = remove_stale_runs();
    assert!(!removed.contains(&lab.run_id().to_owned()));
    assert!(!leftovers_of_run(lab.run_id()).is_empty());
}
