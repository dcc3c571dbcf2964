//! The lab: a bridge standing for the cluster network, nodes attached to it, pods attached to
//! their node.
//!
//! ```text
//!   lab netns:   br0 ──┬── n1 ═══ eth0 (10.100.0.11)  node-1 netns ── vp0 ═══ eth0 (10.244.1.2) pod
//!                      │                                             └ vp1 ═══ eth0 (10.244.1.3) pod
//!                      └── n2 ═══ eth0 (10.100.0.12)  node-2 netns ── vp0 ═══ eth0 (10.244.2.2) pod
//! ```
//!
//! Each node routes its own pod /24 to the pods' host-side veths (`vpN`, as a CNI's `ptp` plugin
//! does) and the other nodes' pod /24s to those nodes, so pod-to-pod traffic crosses the nodes'
//! namespaces exactly where a node proxy and its eBPF programs will sit. Every interface is
//! created inside the lab's own namespaces: the host's interfaces and addresses are never touched.

use crate::cgroup::{cgroup2_mount, Cgroup};
use crate::error::{HarnessError, Result};
use crate::netns::NetNs;
use crate::runs::{self, NETNS_PREFIX};
use crate::sys;
use std::net::Ipv4Addr;
use std::process::Command;

/// The first node's address on the cluster network; node `k` (1-based) gets `.10 + k`.
const NODE_NETWORK: [u8; 3] = [10, 100, 0];
/// Node `k`'s pods get addresses from `10.244.k.0/24`; `.1` is the node-side gateway.
const POD_NETWORK: [u8; 2] = [10, 244];

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// How many nodes, named `node-1`, `node-2`, ...
    pub nodes: usize,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self { nodes: 2 }
    }
}

/// A node: a network namespace on the cluster network that routes for its pods.
#[derive(Clone, Debug)]
pub struct Node {
    /// `node-<index>`.
    pub name: String,
    /// 1-based position; also the third octet of its pod CIDR.
    pub index: u8,
    /// Address on the cluster network.
    pub ip: Ipv4Addr,
    netns: NetNs,
    /// Leaf cgroup for node-level processes (the node proxy).
    system_cgroup: Cgroup,
    /// Parent of the node's pod cgroups (the kubelet's `kubepods`).
    pods_cgroup: Cgroup,
    bpf_pin_dir: std::path::PathBuf,
    next_pod: u8,
}

impl Node {
    /// The node's network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The pod CIDR of this node, as `(network, prefix length)`.
    pub fn pod_cidr(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(POD_NETWORK[0], POD_NETWORK[1], self.index, 0), 24)
    }

    /// The gateway address pods of this node route through.
    pub fn pod_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(POD_NETWORK[0], POD_NETWORK[1], self.index, 1)
    }

    /// The cgroup node-level processes (the node proxy) run in.
    pub fn system_cgroup(&self) -> &Cgroup {
        &self.system_cgroup
    }

    /// The cgroup every pod of this node sits below: where the node's redirect programs attach.
    pub fn pods_cgroup(&self) -> &Cgroup {
        &self.pods_cgroup
    }

    /// A bpffs directory (not yet created) for this node's pinned eBPF links and maps; the lab
    /// removes it on teardown.
    pub fn bpf_pin_dir(&self) -> &std::path::Path {
        &self.bpf_pin_dir
    }

    /// A command that runs in the node's namespace and system cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        self.netns.command(program, Some(&self.system_cgroup))
    }
}

/// A pod: its own network namespace and cgroup, wired to its node by a veth pair.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace the pod stands for.
    pub namespace: String,
    /// The node it runs on.
    pub node: String,
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// The host-side veth in the node's namespace (where TC programs attach).
    pub host_veth: String,
    netns: NetNs,
    cgroup: Cgroup,
}

impl Pod {
    /// The pod's network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The pod's cgroup; processes started with [`Pod::command`] run in it.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// A command that runs in the pod's namespace and cgroup, as a container process would.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        self.netns.command(program, Some(&self.cgroup))
    }
}

/// A running lab. Dropping it (also while unwinding from a panic) removes everything it made.
#[derive(Debug)]
pub struct Lab {
    run_id: String,
    lab_netns: NetNs,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    cgroup_dir: std::path::PathBuf,
    torn_down: bool,
}

impl Lab {
    /// Removes stale labs of dead runs, then builds a new one.
    pub fn new(spec: LabSpec) -> Result<Self> {
        check_support().map_err(HarnessError::Unsupported)?;
        if spec.nodes == 0 || spec.nodes > 200 {
            return Err(HarnessError::Usage(format!("a lab has 1 to 200 nodes, not {}", spec.nodes)));
        }
        for run_id in runs::remove_stale_runs() {
            tracing::info!(run_id, "removed a stale lab");
        }
        let cgroup_root = cgroup2_mount()?;
        let run_id = runs::claim_run_id()?;
        // From here on, Drop tears down whatever exists, also if building fails half way.
        let mut lab = Lab {
            cgroup_dir: runs::cgroup_of_run(&cgroup_root, &run_id),
            lab_netns: NetNs::existing(format!("{NETNS_PREFIX}{run_id}-lab")),
            run_id,
            nodes: Vec::new(),
            pods: Vec::new(),
            torn_down: false,
        };
        lab.build(&spec)?;
        Ok(lab)
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        self.lab_netns = NetNs::create(self.lab_netns.name().to_owned())?;
        let lab = self.lab_netns.name().to_owned();
        sys::ip_in(&lab, &["link", "add", "br0", "type", "bridge"])?;
        sys::ip_in(&lab, &["link", "set", "br0", "up"])?;
        for position in 1..=spec.nodes {
            let index = u8::try_from(position).map_err(|_| HarnessError::Usage("too many nodes".into()))?;
            let node = self.create_node(index)?;
            self.nodes.push(node);
        }
        // Each node routes every other node's pod CIDR to that node.
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let (network, len) = other.pod_cidr();
                sys::ip_in(
                    node.netns.name(),
                    &["route", "add", &format!("{network}/{len}"), "via", &other.ip.to_string()],
                )?;
            }
        }
        Ok(())
    }

    fn create_node(&self, index: u8) -> Result<Node> {
        let name = format!("node-{index}");
        let netns = NetNs::create(format!("{NETNS_PREFIX}{}-{name}", self.run_id))?;
        // A node forwards for its pods; strict reverse-path filtering would drop asymmetric
        // replies that a node proxy produces.
        netns.sysctl("ipv4/ip_forward", "1")?;
        netns.sysctl("ipv4/conf/all/rp_filter", "0")?;
        netns.sysctl("ipv4/conf/default/rp_filter", "0")?;
        let ip = Ipv4Addr::new(NODE_NETWORK[0], NODE_NETWORK[1], NODE_NETWORK[2], 10 + index);
        let lab_side = format!("n{index}");
        let lab = self.lab_netns.name();
        sys::ip_in(lab, &["link", "add", &lab_side, "type", "veth", "peer", "name", "eth0", "netns", netns.name()])?;
        sys::ip_in(lab, &["link", "set", &lab_side, "master", "br0", "up"])?;
        sys::ip_in(netns.name(), &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        sys::ip_in(netns.name(), &["link", "set", "eth0", "up"])?;
        let system_cgroup = Cgroup::create(self.cgroup_dir.join(&name).join("system"))?;
        let pods_cgroup = Cgroup::create(self.cgroup_dir.join(&name).join("pods"))?;
        let bpf_pin_dir = runs::bpffs_of_run(&self.run_id).join(&name);
        Ok(Node { name, index, ip, netns, system_cgroup, pods_cgroup, bpf_pin_dir, next_pod: 0 })
    }

    /// Adds a pod to `node`, standing for Kubernetes pod `namespace/name`.
    pub fn add_pod(&mut self, node: &str, namespace: &str, name: &str) -> Result<Pod> {
        let is_label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !is_label(namespace) || !is_label(name) {
            return Err(HarnessError::Usage(format!("{namespace}/{name}: names must be DNS labels")));
        }
        if self.pods.iter().any(|p| p.namespace == namespace && p.name == name) {
            return Err(HarnessError::Usage(format!("pod {namespace}/{name} exists already")));
        }
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| HarnessError::Usage(format!("no node named {node}")))?;
        // The lowest slot no pod of this node holds: addresses of removed pods are reused.
        let taken: std::collections::BTreeSet<u8> = self
            .pods
            .iter()
            .filter(|p| p.node == node.name)
            .filter_map(|p| p.host_veth.strip_prefix("vp").and_then(|n| n.parse().ok()))
            .collect();
        let Some(slot) = (0..250u8).find(|slot| !taken.contains(slot)) else {
            return Err(HarnessError::Usage(format!("{} has no pod addresses left", node.name)));
        };
        let ip = Ipv4Addr::new(POD_NETWORK[0], POD_NETWORK[1], node.index, slot + 2);
        let host_veth = format!("vp{slot}");
        let netns_name = format!("{NETNS_PREFIX}{}-{}-{namespace}-{name}", self.run_id, node.name);
        // A namespace of an earlier pod of this name that could not be removed: not ours to keep.
        NetNs::existing(netns_name.clone()).delete()?;
        let netns = NetNs::create(netns_name)?;
        let node_ns = node.netns.name().to_owned();
        let gateway = node.pod_gateway().to_string();
        sys::ip_in(
            &node_ns,
            &["link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns.name()],
        )?;
        sys::ip_in(&node_ns, &["addr", "add", &format!("{gateway}/32"), "dev", &host_veth])?;
        sys::ip_in(&node_ns, &["link", "set", &host_veth, "up"])?;
        sys::ip_in(&node_ns, &["route", "add", &format!("{ip}/32"), "dev", &host_veth])?;
        let pod_ns = netns.name();
        sys::ip_in(pod_ns, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        sys::ip_in(pod_ns, &["link", "set", "eth0", "up"])?;
        sys::ip_in(pod_ns, &["route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
        sys::ip_in(pod_ns, &["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
        let cgroup = Cgroup::create(node.pods_cgroup.path().join(format!("{namespace}_{name}")))?;
        node.next_pod = node.next_pod.max(slot + 1);
        let pod = Pod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            node: node.name.clone(),
            ip,
            host_veth,
            netns,
            cgroup,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Removes pod `namespace/name`: kills its processes, deletes its cgroup and its network
    /// namespace (and with it the veth pair and the node's route to it), and frees its address
    /// for the next pod of its node. Removing a pod the lab does not hold is not an error.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        let Some(position) = self.pods.iter().position(|p| p.namespace == namespace && p.name == name) else {
            return Ok(());
        };
        let pod = self.pods.remove(position);
        // Both, whatever the first says: a namespace left behind would block the name's reuse.
        let cgroup = crate::cgroup::destroy_tree(pod.cgroup.path());
        let netns = pod.netns.delete();
        cgroup.and(netns)
    }

    /// The run-unique id every name of this lab carries.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pods, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The namespace holding the cluster network's bridge.
    pub fn lab_netns(&self) -> &NetNs {
        &self.lab_netns
    }

    /// Removes everything the lab made and kills every process started in its pods and nodes.
    pub fn teardown(mut self) -> Result<()> {
        self.torn_down = true;
        runs::destroy_run(&self.run_id)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(error) = runs::destroy_run(&self.run_id) {
                // Drop cannot fail; the next run's stale-lab sweep finishes the job.
                eprintln!("nodus-harness: tearing down lab {}: {error}", self.run_id);
            }
        }
    }
}

/// Why this process cannot build a lab, if it cannot.
pub fn check_support() -> std::result::Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, veths and cgroups need CAP_NET_ADMIN and CAP_SYS_ADMIN)".into());
    }
    if sys::run("ip", &["-V"]).is_err() {
        return Err("the `ip` command (Debian package iproute2) is not installed".into());
    }
    let root = cgroup2_mount().map_err(|e| e.to_string())?;
    if std::fs::metadata(root.join("cgroup.procs")).is_err() {
        return Err(format!("{} does not look like a cgroup v2 mount", root.display()));
    }
    Ok(())
}
