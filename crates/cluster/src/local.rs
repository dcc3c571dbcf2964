//! One local cluster, assembled: the API server (kapi) on the host's loopback, the lab's nodes,
//! the Nodus controller in Kubernetes mode on the first node, a node proxy on every node, a node
//! agent per node and the cluster controllers in this process.
//!
//! ```text
//!  host:    kubectl ──▶ 127.0.0.1:<port> kapi ◀── node agents, controllers (this process)
//!  node-1:  nodus-controller ──▶ 127.0.0.1:6443 ─(forwarded by this process)─▶ kapi
//!           nodus-proxy ──▶ 10.100.0.11:15012 (controller)       node-2: nodus-proxy, pods
//! ```
//!
//! The controller reaches the API server the way an in-cluster pod does, at a fixed address of
//! its own network (here the node's loopback, port 6443), which this process forwards to kapi's
//! host port byte for byte: TLS runs end to end, and no host interface or route is touched.

use crate::{agent, controllers};
use kube::config::{KubeConfigOptions, Kubeconfig};
use nodus_harness::{ConfigSource, Lab, LabSpec, NodeProxy, Process};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Where the controller on node-1 reaches the API server.
pub const IN_CLUSTER_API_PORT: u16 = 6443;

/// Why a cluster could not be made or run.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// Something this machine lacks.
    #[error("{what} is missing: {how}")]
    Missing {
        /// What.
        what: String,
        /// How to get it.
        how: String,
    },
    /// A lab operation failed.
    #[error("the lab: {0}")]
    Lab(#[from] nodus_harness::HarnessError),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The API server refused or failed.
    #[error("the API server: {0}")]
    Kube(#[from] kube::Error),
    /// Reading the kubeconfig failed.
    #[error("the kubeconfig: {0}")]
    Kubeconfig(String),
    /// Prometheus did not start.
    #[error(transparent)]
    Prometheus(#[from] crate::prometheus::PrometheusError),
    /// A CRD did not become established.
    #[error("CRD {0} was not established within 30 s")]
    CrdNotEstablished(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Everything a cluster is made from.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// How many nodes.
    pub nodes: usize,
    /// The cluster's folder: kubeconfig, logs, state.
    pub dir: PathBuf,
    /// The kapi kit (`start-kapi.sh`, Gateway API CRDs).
    pub kapi_kit: PathBuf,
    /// The built kapi binaries (`kapilite`, `etcd`).
    pub kapi_bin: PathBuf,
    /// Nodus's own CRDs (`charts/nodus/crds`).
    pub nodus_crds: PathBuf,
    /// The `nodus-controller`, `nodus-proxy` and `nodus-echo` binaries' folder.
    pub binaries: PathBuf,
    /// The program kapi runs for `pods/exec` (`PROG exec NS/POD -- CMD...`).
    pub exec_helper: Option<PathBuf>,
    /// Run this Prometheus server (scraping every node proxy and the controller), its UI and
    /// API on [`ClusterSpec::prometheus_port`] of the host's loopback.
    pub prometheus: Option<PathBuf>,
    /// The host port for Prometheus (0: 9090 if free, else any).
    pub prometheus_port: u16,
}

impl ClusterSpec {
    /// Says what is missing, and how to get it, before anything starts.
    pub fn check(&self) -> Result<(), ClusterError> {
        let missing =
            |what: &Path, how: &str| ClusterError::Missing { what: what.display().to_string(), how: how.into() };
        if let Some(prometheus) = &self.prometheus {
            if !prometheus.exists() {
                return Err(missing(
                    prometheus,
                    "Debian's prometheus package: apt-get install prometheus (scripts/setup.sh installs it)",
                ));
            }
        }
        if !self.kapi_bin.join("kapilite").exists() {
            return Err(missing(
                &self.kapi_bin.join("kapilite"),
                "run scripts/setup-kapi.sh (builds the API server, about 4 min)",
            ));
        }
        if !self.kapi_kit.join("start-kapi.sh").exists() {
            return Err(missing(&self.kapi_kit, "the kapi kit (../shared/kapi beside the repository, or --kapi-kit)"));
        }
        for binary in ["nodus-controller", "nodus-proxy", "nodus-echo"] {
            if !self.binaries.join(binary).exists() {
                return Err(missing(&self.binaries.join(binary), "run cargo build --workspace"));
            }
        }
        nodus_harness::check_support()
            .map_err(|why| ClusterError::Missing { what: "root and network namespaces".into(), how: why })
    }

    /// The kubeconfig users and kubectl use.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The folder of per-pod files (each pod's resolv.conf).
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    /// The folder of every component's log.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// A running cluster. Dropping it stops everything it started.
pub struct LocalCluster {
    /// The lab under the cluster.
    pub lab: Arc<Mutex<Lab>>,
    /// A client of the API server.
    pub client: kube::Client,
    kapi_dir: PathBuf,
    _controller: Process,
    _proxies: Vec<NodeProxy>,
    _prometheus: Option<Process>,
    prometheus_url: Option<String>,
    controller_metrics: std::net::SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for pid_file in ["kapilite.pid", "etcd.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.kapi_dir.join(pid_file)) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
                }
            }
        }
    }
}

/// A port P with P, P+1 and P+2 free on loopback (kapi's API server, etcd client and peer).
fn free_port_triple() -> Option<u16> {
    (0..200).find_map(|_| {
        let base = 20000 + fastrand::u16(0..10000) * 3;
        (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()).then_some(base)
    })
}

/// A client of the API server `kubeconfig` names.
pub async fn client_of(kubeconfig: &Path) -> Result<kube::Client, ClusterError> {
    let config = Kubeconfig::read_from(kubeconfig).map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
    Ok(kube::Client::try_from(config)?)
}

impl LocalCluster {
    /// Starts every component and returns once nodes are registered and the controller serves.
    pub async fn start(spec: &ClusterSpec) -> Result<Self, ClusterError> {
        spec.check()?;
        let logs = spec.logs();
        std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
        let kapi_dir = spec.dir.join("kapi");
        std::fs::create_dir_all(&kapi_dir).map_err(io("creating the kapi folder"))?;
        let port = free_port_triple().ok_or_else(|| ClusterError::Missing {
            what: "three consecutive free loopback ports".into(),
            how: "free some ports between 20000 and 50000".into(),
        })?;
        let kapi_log = std::fs::File::create(logs.join("kapi.log")).map_err(io("creating kapi.log"))?;
        let mut start = std::process::Command::new("bash");
        start
            .arg(spec.kapi_kit.join("start-kapi.sh"))
            .arg(&kapi_dir)
            .arg(port.to_string())
            .env("KAPI_BIN", &spec.kapi_bin)
            .stdout(kapi_log.try_clone().map_err(io("kapi.log"))?)
            .stderr(kapi_log);
        if let Some(helper) = &spec.exec_helper {
            start.env("KAPI_ARGS", format!("--exec-helper={}", helper.display()));
        }
        let status = start.status().map_err(io("running start-kapi.sh"))?;
        if !status.success() {
            return Err(ClusterError::Missing {
                what: "a running API server".into(),
                how: format!("start-kapi.sh failed ({status}); see {}", logs.join("kapi.log").display()),
            });
        }
        let kubeconfig_text =
            std::fs::read_to_string(kapi_dir.join("kubeconfig")).map_err(io("reading kapi's kubeconfig"))?;
        std::fs::write(spec.kubeconfig(), &kubeconfig_text).map_err(io("writing the kubeconfig"))?;
        // The controller's view: the same credentials, at the in-cluster address.
        let in_cluster =
            kubeconfig_text.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{IN_CLUSTER_API_PORT}"));
        let controller_kubeconfig = spec.dir.join("controller.kubeconfig");
        std::fs::write(&controller_kubeconfig, in_cluster).map_err(io("writing the controller's kubeconfig"))?;
        let client = client_of(&spec.kubeconfig()).await?;
        crate::crds::install(&client, &spec.kapi_kit.join("crds-experimental"), &spec.nodus_crds).await?;
        // The controller's own namespace, where it keeps the mesh CA's Secret.
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        let system =
            serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "nodus-system" } });
        let params = kube::api::PatchParams::apply(controllers::FIELD_MANAGER).force();
        namespaces.patch("nodus-system", &params, &kube::api::Patch::Apply(&system)).await?;

        let lab = Lab::new(LabSpec { nodes: spec.nodes })?;
        let nodes = lab.nodes().to_vec();
        let mut tasks = Vec::new();
        tasks.push(forward_api(&nodes[0], port)?);

        // Node agents first: the controller finds node addresses from the pods they run.
        let lab = Arc::new(Mutex::new(lab));
        for node in &nodes {
            let (network, len) = node.pod_cidr();
            let settings = agent::AgentSettings {
                node: node.name.clone(),
                node_ip: node.ip,
                pod_cidr: format!("{network}/{len}"),
                echo_binary: spec.binaries.join("nodus-echo"),
                log_dir: logs.clone(),
                pods_dir: spec.pods_dir(),
                cni_socket: Some(cni_socket(&spec.dir, &node.name)),
            };
            tasks.push(tokio::spawn(agent::run(client.clone(), lab.clone(), node.netns().clone(), settings)));
        }
        tasks.push(tokio::spawn(controllers::run(client.clone())));
        // Cluster DNS on every node's address (what pods' resolv.conf names).
        let mut sockets = Vec::new();
        for node in &nodes {
            let ip = node.ip;
            let socket = node.netns().run(move || std::net::UdpSocket::bind((ip, 53)))?;
            sockets.push(socket.map_err(io(format!("serving DNS on {ip}:53")))?);
        }
        tasks.push(tokio::spawn(crate::dns::serve(client.clone(), sockets)));
        // ClusterIPs for pods outside the mesh (kube-proxy's job).
        let node_namespaces = nodes.iter().map(|n| n.netns().clone()).collect();
        tasks.push(tokio::spawn(crate::service_proxy::run(client.clone(), node_namespaces)));

        let (controller, proxies) = {
            let lab = lab.lock().map_err(|_| ClusterError::Kubeconfig("the lab's lock is poisoned".into()))?;
            let kubeconfig = controller_kubeconfig.clone().into_os_string();
            let (controller, url) = lab.start_controller_with(
                &nodes[0],
                &spec.binaries.join("nodus-controller"),
                &[],
                &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", std::ffi::OsStr::new("info"))],
            )?;
            let mut proxies = Vec::new();
            for node in &nodes {
                let socket = cni_socket(&spec.dir, &node.name);
                let socket = socket.to_string_lossy();
                proxies.push(lab.start_node_proxy(
                    node,
                    &spec.binaries.join("nodus-proxy"),
                    ConfigSource::Controller(url.clone()),
                    &["--cni-socket", &socket],
                )?);
            }
            (controller, proxies)
        };
        let controller_metrics = std::net::SocketAddr::from((nodes[0].ip, nodus_harness::CONTROLLER_METRICS_PORT));
        let (prometheus, prometheus_url) = match &spec.prometheus {
            None => (None, None),
            Some(binary) => {
                let targets = crate::prometheus::ScrapeTargets {
                    controller: controller_metrics,
                    proxies: proxies.iter().map(|p| (p.node.clone(), p.admin)).collect(),
                };
                let process = crate::prometheus::start(
                    &nodes[0],
                    binary,
                    &spec.dir.join("prometheus"),
                    &logs.join("prometheus.log"),
                    &targets,
                )?;
                let host = prometheus_listener(spec.prometheus_port)?;
                let url = format!("http://{}", host.local_addr().map_err(io("the Prometheus port"))?);
                tasks.push(crate::prometheus::forward(&nodes[0], host).map_err(io("forwarding Prometheus"))?);
                (Some(process), Some(url))
            }
        };
        Ok(Self {
            lab,
            client,
            kapi_dir,
            _controller: controller,
            _proxies: proxies,
            _prometheus: prometheus,
            prometheus_url,
            controller_metrics,
            tasks,
        })
    }

    /// Prometheus's URL on the host (`http://127.0.0.1:9090`), when it runs.
    pub fn prometheus_url(&self) -> Option<&str> {
        self.prometheus_url.as_deref()
    }

    /// The controller's `/metrics` address (inside node-1's network).
    pub fn controller_metrics(&self) -> std::net::SocketAddr {
        self.controller_metrics
    }

    /// The node proxies, one per node in node order.
    pub fn proxies(&self) -> &[NodeProxy] {
        &self._proxies
    }

    /// The lab's run id (names of its namespaces and cgroups).
    pub fn run_id(&self) -> String {
        self.lab.lock().map(|l| l.run_id().to_owned()).unwrap_or_default()
    }
}

/// The host's loopback listener for Prometheus: `port`, or (0) 9090 if free, else any port.
fn prometheus_listener(port: u16) -> Result<std::net::TcpListener, ClusterError> {
    let bind = |port| std::net::TcpListener::bind(("127.0.0.1", port));
    let listener = if port == 0 { bind(9090).or_else(|_| bind(0)) } else { bind(port) };
    listener.map_err(io(format!("listening on 127.0.0.1:{port} for Prometheus")))
}

/// Where `node`'s proxy serves its CNI socket.
fn cni_socket(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("cni-{node}.sock"))
}

/// Forwards connections to `127.0.0.1:6443` inside `node`'s namespace to kapi on the host.
fn forward_api(node: &nodus_harness::Node, kapi_port: u16) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    let listener = node
        .netns()
        .run(|| {
            let listener = std::net::TcpListener::bind(("127.0.0.1", IN_CLUSTER_API_PORT))?;
            listener.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(listener)
        })?
        .map_err(io("listening for the API server inside node-1"))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io("registering the API forwarder"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut inside, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut kapi) = tokio::net::TcpStream::connect(("127.0.0.1", kapi_port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut kapi).await;
                }
            });
        }
    }))
}
