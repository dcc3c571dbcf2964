//! The redirect against the real kernel, in the mesh harness: real cgroup connect4, sock_ops and
//! getpeername4 programs capturing a real client process in a pod. Needs root and bpffs.
#![allow(clippy::unwrap_used)]

use nodus_harness::{skip_unless_lab_supported, Lab, LabSpec, Node, Pod};
use nodus_redirect::{netns_cookie_of, AttachOutcome, Redirect, RedirectSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::thread::JoinHandle;

const PROXY_PORT: u16 = 15100;

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
    serve(proxy, "proxy", count, move |peer| redirect.original_dst(peer, PROXY_PORT).unwrap())
}

fn spec(node: &Node) -> RedirectSpec {
    RedirectSpec {
        cgroup: node.pods_cgroup().path().to_path_buf(),
        pin_dir: node.bpf_pin_dir().to_path_buf(),
        proxy_addr: SocketAddrV4::new(node.ip, PROXY_PORT),
        proxy_ports: 1,
        inbound_port: None,
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

/// Serves every connection on `listener` until the test ends: each message is answered with
/// `name`, the connection's local address (for the proxy: the pod address the client dialled)
/// and the message.
fn serve_forever(listener: TcpListener, name: &'static str) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let local = stream.local_addr().unwrap();
                let mut message = [0u8; 64];
                while let Ok(read) = stream.read(&mut message) {
                    if read == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&message[..read]).into_owned();
                    if stream.write_all(format!("{name} {local} {text}").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A connection opened from inside `pod` (its socket lives in the pod's namespace).
fn connect_from(pod: &Pod, target: SocketAddrV4) -> std::net::TcpStream {
    let stream = pod.netns().run(move || std::net::TcpStream::connect_timeout(&target.into(), TIMEOUT)).unwrap();
    let stream = stream.unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

fn ask(stream: &mut std::net::TcpStream, message: &str) -> String {
    stream.write_all(message.as_bytes()).unwrap();
    let mut reply = [0u8; 128];
    let read = stream.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..read]).into_owned()
}

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const INBOUND_PORT: u16 = 15006;

/// The node proxy's capture listener as the real proxy makes it: transparent (it accepts
/// connections addressed to pods), on every address of the node.
fn transparent_listener(node: &Node) -> TcpListener {
    use nix::sys::socket::{bind, listen, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    node.netns()
        .run(|| {
            let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
            setsockopt(&fd, sockopt::IpTransparent, &true).unwrap();
            setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(0, 0, 0, 0, INBOUND_PORT)).unwrap();
            listen(&fd, nix::sys::socket::Backlog::new(128).unwrap()).unwrap();
            TcpListener::from(fd)
        })
        .unwrap()
}

/// Two nodes for the inbound tests: a client outside the mesh on node-1, a mesh pod and a pod
/// outside the mesh on node-2, and the redirect attached with inbound capture inside node-2's
/// namespace (interfaces, policy routing and `sk_lookup` are per namespace).
struct InboundLab {
    lab: Lab,
    client: Pod,
    server: Pod,
    /// Node-2's pod outside the mesh (its veth exists when the redirect attaches).
    neighbour: Pod,
    node2: Node,
    /// The server pod's address and port, what clients dial.
    target: SocketAddrV4,
    redirect: Redirect,
}

impl InboundLab {
    fn new() -> Self {
        let mut lab = Lab::new(LabSpec { nodes: 2 }).unwrap();
        let client = lab.add_pod("node-1", "plain", "client").unwrap();
        let server = lab.add_pod("node-2", "mesh", "server").unwrap();
        let neighbour = lab.add_pod("node-2", "plain", "neighbour").unwrap();
        let node2 = lab.node("node-2").unwrap().clone();
        let target = SocketAddrV4::new(server.ip, 8080);
        let mut inbound_spec = spec(&node2);
        inbound_spec.inbound_port = Some(INBOUND_PORT);
        let redirect = node2.netns().run(move || Redirect::attach(&inbound_spec)).unwrap().unwrap();
        Self { lab, client, server, neighbour, node2, target, redirect }
    }
}

#[test]
fn inbound_capture_takes_new_connections_to_enrolled_pods_and_spares_the_rest() {
    skip_unless_lab_supported!();
    let InboundLab { mut lab, client: remote_client, server, neighbour, node2, target, mut redirect } =
        InboundLab::new();
    serve_forever(listen(server.netns(), SocketAddr::from((server.ip, 8080))), "pod");
    let proxy = transparent_listener(&node2);
    redirect.set_capture_listener(&proxy).unwrap();
    serve_forever(proxy, "proxy");
    let redirect = std::sync::Mutex::new(redirect);

    // Opened before the pod is enrolled: must keep reaching the pod itself throughout.
    let mut before = connect_from(&remote_client, target);
    assert_eq!(ask(&mut before, "a"), format!("pod {target} a"));

    redirect.lock().unwrap().set_inbound(server.ip, true).unwrap();
    // New connections, from another node and from a pod on the same node, reach the proxy,
    // addressed to the pod they dialled.
    let mut captured = connect_from(&remote_client, target);
    assert_eq!(ask(&mut captured, "b"), format!("proxy {target} b"));
    let mut from_neighbour = connect_from(&neighbour, target);
    assert_eq!(ask(&mut from_neighbour, "c"), format!("proxy {target} c"));
    assert_eq!(ask(&mut before, "d"), format!("pod {target} d"), "an older connection is not taken over");

    // Released: new connections go straight to the pod, the proxy keeps the ones it holds.
    redirect.lock().unwrap().set_inbound(server.ip, false).unwrap();
    let mut after = connect_from(&remote_client, target);
    assert_eq!(ask(&mut after, "e"), format!("pod {target} e"));
    assert_eq!(ask(&mut captured, "f"), format!("proxy {target} f"), "a held connection survives the release");
    assert_eq!(redirect.lock().unwrap().inbound().unwrap(), vec![(server.ip, false)]);

    let counters = redirect.lock().unwrap().counters().unwrap();
    assert_eq!((counters.inbound_captured, counters.inbound_no_listener), (2, 0), "{counters:?}");

    // A pod added later gets the program on its veth at the next scan.
    let late = lab.add_pod("node-2", "plain", "late").unwrap();
    let attached = node2.netns().run(|| redirect.lock().unwrap().attach_interfaces()).unwrap().unwrap();
    assert_eq!(attached, vec![late.host_veth.clone()]);
    redirect.lock().unwrap().set_inbound(server.ip, true).unwrap();
    let mut from_late = connect_from(&late, target);
    assert_eq!(ask(&mut from_late, "g"), format!("proxy {target} g"));
}

#[test]
fn inbound_capture_fails_closed_without_a_listener() {
    skip_unless_lab_supported!();
    let InboundLab { lab: _lab, client, server, target, mut redirect, .. } = InboundLab::new();
    serve_forever(listen(server.netns(), SocketAddr::from((server.ip, 8080))), "pod");
    redirect.set_inbound(server.ip, true).unwrap();

    // No proxy listening: the connection is refused rather than let through to the pod.
    let attempt = client
        .netns()
        .run(move || std::net::TcpStream::connect_timeout(&target.into(), std::time::Duration::from_millis(1500)))
        .unwrap();
    assert!(attempt.is_err(), "a connection to an enrolled pod bypassed the missing proxy");
    assert!(redirect.counters().unwrap().inbound_no_listener >= 1);
}

#[test]
fn a_new_connection_reusing_the_tuple_of_one_the_proxy_closed_is_captured_again() {
    skip_unless_lab_supported!();
    let InboundLab { lab: _lab, client, server, node2, target, mut redirect, .. } = InboundLab::new();
    // The stand-in proxy answers once and closes first, as a server does after
    // `Connection: close`: its socket (node-2's namespace, local address = the pod's) is left
    // in TIME_WAIT.
    let proxy = transparent_listener(&node2);
    redirect.set_capture_listener(&proxy).unwrap();
    redirect.set_inbound(server.ip, true).unwrap();
    std::thread::spawn(move || {
        for stream in proxy.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut message = [0u8; 16];
            let read = stream.read(&mut message).unwrap_or(0);
            let _ = stream.write_all(&message[..read]);
        }
    });

    // The same client port twice in a row: the second SYN meets the proxy's TIME_WAIT socket.
    let exchange = || {
        client
            .netns()
            .run(move || {
                use nix::sys::socket::{
                    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
                };
                let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
                setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
                // Shorter than the first SYN retransmission (1 s): a dropped SYN fails the test
                // instead of being papered over by a retry.
                setsockopt(&fd, sockopt::SendTimeout, &nix::sys::time::TimeVal::new(0, 800_000)).unwrap();
                let [a, b, c, d] = client.ip.octets();
                bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(a, b, c, d, 40_000)).unwrap();
                let mut stream = std::net::TcpStream::from(fd);
                nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&stream), &SockaddrIn::from(target))
                    .map_err(std::io::Error::from)?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.write_all(b"ping")?;
                let mut reply = Vec::new();
                stream.read_to_end(&mut reply)?;
                Ok::<_, std::io::Error>(reply)
            })
            .unwrap()
    };
    assert_eq!(exchange().unwrap(), b"ping");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(exchange().expect("the second connection was reset"), b"ping");
    assert!(redirect.counters().unwrap().inbound_captured >= 2);
}
