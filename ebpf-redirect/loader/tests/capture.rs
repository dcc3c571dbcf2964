//! The redirect against the real kernel, in the mesh harness: real cgroup connect4, sock_ops and
//! getpeername4 programs capturing a real client process in a pod. Needs root and bpffs.
#![allow(clippy::unwrap_used)]

use nodus_harness::{skip_unless_lab_supported, Lab, LabSpec, Node, Pod};
use nodus_redirect::{netns_cookie_of, AttachOutcome, Redirect, RedirectSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::thread::JoinHandle;

const PROXY_PORT: u16 = 15001;

/// A Python client run as a process inside the pod (so inside its cgroup): connects, says hello,
/// and prints the peer address its socket reports and the reply.
const CLIENT: &str = r#"
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"hello")
reply = s.recv(100).decode()
print(json.dumps({"peer": "%s:%d" % s.getpeername(), "reply": reply}))
"#;

/// The same from a dual-stack IPv6 socket dialling the IPv4-mapped address, as gRPC's C core does.
const CLIENT_V4_MAPPED: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(("::ffff:" + sys.argv[1], int(sys.argv[2])))
s.sendall(b"hello")
reply = s.recv(100).decode()
peer = s.getpeername()
print(json.dumps({"peer": "%s:%d" % (peer[0].replace("::ffff:", ""), peer[1]), "reply": reply}))
"#;

fn run_client(pod: &Pod, target: SocketAddrV4) -> serde_json::Value {
    run_script(pod, CLIENT, target)
}

fn run_script(pod: &Pod, script: &str, target: SocketAddrV4) -> serde_json::Value {
    let out = pod
        .command("python3")
        .unwrap()
        .args(["-c", script, &target.ip().to_string(), &target.port().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Accepts `count` connections on `listener`, answering each with `name` and the original
/// destination found through `lookup`.
fn serve<F>(listener: TcpListener, name: &'static str, count: usize, lookup: F) -> JoinHandle<Vec<SocketAddr>>
where
    F: Fn(SocketAddrV4) -> Option<SocketAddrV4> + Send + 'static,
{
    std::thread::spawn(move || {
        let mut peers = Vec::new();
        for _ in 0..count {
            let (mut stream, peer) = listener.accept().unwrap();
            let mut hello = [0u8; 5];
            stream.read_exact(&mut hello).unwrap();
            let SocketAddr::V4(peer_v4) = peer else { panic!("IPv4 only") };
            let original = lookup(peer_v4).map(|a| a.to_string()).unwrap_or_else(|| "none".into());
            stream.write_all(format!("{name} original={original}").as_bytes()).unwrap();
            peers.push(peer);
        }
        peers
    })
}

fn listen(netns_owner: &nodus_harness::NetNs, addr: SocketAddr) -> TcpListener {
    netns_owner.run(|| TcpListener::bind(addr)).unwrap().unwrap()
}

/// A stand-in node proxy: accepts `count` connections on the node's proxy port and answers each
/// with the original destination the redirect recorded for it.
fn serve_as_proxy(node: &Node, redirect: &std::sync::Arc<Redirect>, count: usize) -> JoinHandle<Vec<SocketAddr>> {
    let proxy = listen(node.netns(), SocketAddr::from(([0, 0, 0, 0], PROXY_PORT)));
    let redirect = redirect.clone();
    serve(proxy, "proxy", count, move |peer| redirect.original_dst(peer).unwrap())
}

fn spec(node: &Node) -> RedirectSpec {
    RedirectSpec {
        cgroup: node.pods_cgroup().path().to_path_buf(),
        pin_dir: node.bpf_pin_dir().to_path_buf(),
        proxy_addr: SocketAddrV4::new(node.ip, PROXY_PORT),
    }
}

#[test]
fn enrolled_pod_is_captured_with_its_original_destination_and_others_are_not() {
    skip_unless_lab_supported!();
    let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
    let client = lab.add_pod("node-1", "mesh", "client").unwrap();
    let bystander = lab.add_pod("node-1", "plain", "bystander").unwrap();
    let server = lab.add_pod("node-2", "mesh", "server").unwrap();
    let node1 = lab.node("node-1").unwrap().clone();

    let mut redirect = Redirect::attach(&spec(&node1)).unwrap();
    assert_eq!(redirect.outcome(), AttachOutcome::Created);
    let client_cookie = netns_cookie_of(&client.netns().path()).unwrap();
    redirect.enroll(client_cookie).unwrap();
    assert_eq!(redirect.enrolled().unwrap(), vec![client_cookie]);
    let redirect = std::sync::Arc::new(redirect);

    let proxy_thread = serve_as_proxy(&node1, &redirect, 1);
    let server_listener = listen(server.netns(), SocketAddr::from((server.ip, 8080)));
    let server_thread = serve(server_listener, "server", 1, |_| None);
    let target = SocketAddrV4::new(server.ip, 8080);

    // The enrolled pod dials the server and lands in the node proxy, which learns the original
    // destination; the application still sees the server as its peer (getpeername4).
    let captured = run_client(&client, target);
    assert_eq!(captured["reply"], format!("proxy original={target}"));
    assert_eq!(captured["peer"], target.to_string());
    let proxy_peers = proxy_thread.join().unwrap();
    assert_eq!(proxy_peers[0].ip(), std::net::IpAddr::V4(client.ip), "the proxy sees the pod's own IP");

    // A pod of a non-enrolled namespace on the same node goes straight to the server.
    let direct = run_client(&bystander, target);
    assert_eq!(direct["reply"], "server original=none");
    server_thread.join().unwrap();

    let counters = redirect.counters().unwrap();
    assert_eq!((counters.captured, counters.errors), (1, 0), "{counters:?}");
}

#[test]
fn dual_stack_sockets_dialling_ipv4_mapped_addresses_are_captured_too() {
    skip_unless_lab_supported!();
    let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
    let client = lab.add_pod("node-1", "mesh", "client").unwrap();
    let server = lab.add_pod("node-2", "mesh", "server").unwrap();
    let node1 = lab.node("node-1").unwrap().clone();
    let mut redirect = Redirect::attach(&spec(&node1)).unwrap();
    redirect.enroll(netns_cookie_of(&client.netns().path()).unwrap()).unwrap();
    let redirect = std::sync::Arc::new(redirect);
    let proxy_thread = serve_as_proxy(&node1, &redirect, 1);
    let target = SocketAddrV4::new(server.ip, 8080);
    let captured = run_script(&client, CLIENT_V4_MAPPED, target);
    assert_eq!(captured["reply"], format!("proxy original={target}"));
    assert_eq!(captured["peer"], target.to_string(), "getpeername6 restores the mapped original");
    proxy_thread.join().unwrap();
}

#[test]
fn release_stops_capture_and_reattach_adopts_pinned_state() {
    skip_unless_lab_supported!();
    let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
    let client = lab.add_pod("node-1", "mesh", "client").unwrap();
    let server = lab.add_pod("node-2", "mesh", "server").unwrap();
    let node1 = lab.node("node-1").unwrap().clone();
    let target = SocketAddrV4::new(server.ip, 8080);
    let cookie = netns_cookie_of(&client.netns().path()).unwrap();

    let mut first = Redirect::attach(&spec(&node1)).unwrap();
    first.enroll(cookie).unwrap();
    // A "proxy restart": the first process's handle goes away, a new one attaches. Enrolment and
    // capture survive because links and maps are pinned.
    drop(first);
    let mut second = Redirect::attach(&spec(&node1)).unwrap();
    assert_eq!(second.outcome(), AttachOutcome::Replaced);
    assert_eq!(second.enrolled().unwrap(), vec![cookie], "enrolment survives the restart");

    let proxy = listen(node1.netns(), SocketAddr::from(([0, 0, 0, 0], PROXY_PORT)));
    let proxy_thread = serve(proxy, "proxy", 1, |_| None);
    assert!(run_client(&client, target)["reply"].as_str().unwrap().starts_with("proxy"));
    proxy_thread.join().unwrap();

    // Released: the next connection goes direct, without restarting anything in the pod.
    second.release(cookie).unwrap();
    let server_listener = listen(server.netns(), SocketAddr::from((server.ip, 8080)));
    let server_thread = serve(server_listener, "server", 1, |_| None);
    assert_eq!(run_client(&client, target)["reply"], "server original=none");
    server_thread.join().unwrap();

    second.uninstall().unwrap();
    assert!(!node1.bpf_pin_dir().exists());
}

#[test]
fn missing_bpffs_and_non_cgroup_paths_are_reported_clearly() {
    skip_unless_lab_supported!();
    let lab = Lab::new(LabSpec { nodes: 1 }).unwrap();
    let node = lab.node("node-1").unwrap();
    let mut bad = spec(node);
    bad.pin_dir = std::env::temp_dir().join("not-bpffs");
    let error = Redirect::attach(&bad).unwrap_err().to_string();
    assert!(error.contains("mount -t bpf bpf /sys/fs/bpf"), "{error}");

    let mut bad = spec(node);
    bad.cgroup = std::env::temp_dir();
    let error = Redirect::attach(&bad).unwrap_err().to_string();
    assert!(error.contains("is not a cgroup v2 directory"), "{error}");
}
