//! Running the mesh's own processes in a lab: a node proxy per node (with the real eBPF
//! redirect), echo workloads in pods, and a work directory for config files. The binaries are
//! passed in by the caller (tests use `env!("CARGO_BIN_EXE_...")`), so the harness depends on
//! no product crate.

use crate::error::{io_error, HarnessError, Result};
use crate::lab::{Lab, Node, Pod};
use crate::netns::NetNs;
use crate::process::Process;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The first outbound listener port of node proxies in a lab (the proxy's default; it listens on
/// 16 consecutive ports from it).
pub const PROXY_OUTBOUND_PORT: u16 = 15100;
/// The inbound (tunnel) port of node proxies in a lab: the proxy's default
/// (`nodus_config::TUNNEL_PORT`, which this crate does not depend on).
pub const PROXY_INBOUND_PORT: u16 = 15008;
/// The admin port of node proxies in a lab.
pub const PROXY_ADMIN_PORT: u16 = 15020;
/// The node-local debug port of node proxies (on the node's loopback; the proxy's default).
pub const PROXY_DEBUG_PORT: u16 = 15021;

/// The port the controller serves node proxies' config streams on.
pub const CONTROLLER_PORT: u16 = 15012;
/// The port the controller serves its own `/metrics` on (its default, `--metrics-addr`).
pub const CONTROLLER_METRICS_PORT: u16 = 15014;

/// Where a node proxy gets its config.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A snapshot file, re-read when it changes.
    File(PathBuf),
    /// A controller's config stream, e.g. `http://10.100.0.11:15012`.
    Controller(String),
}

impl From<&Path> for ConfigSource {
    fn from(path: &Path) -> Self {
        ConfigSource::File(path.to_path_buf())
    }
}

impl From<&PathBuf> for ConfigSource {
    fn from(path: &PathBuf) -> Self {
        ConfigSource::File(path.clone())
    }
}

/// A node proxy process.
#[derive(Debug)]
pub struct NodeProxy {
    /// The process (killed on drop).
    pub process: Process,
    /// Its node.
    pub node: String,
    /// Admin address (in the node's namespace).
    pub admin: SocketAddr,
    netns: NetNs,
}

impl NodeProxy {
    /// GETs an admin path from inside the node's namespace; returns (status, body).
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let admin = self.admin;
        let path = path.to_owned();
        self.netns.run(move || http_get(admin, &path))?
    }

    /// GETs a path of the proxy's node-local debug listener (`127.0.0.1:15021` in the node's
    /// namespace: `/config_dump`); returns (status, body).
    pub fn debug_get(&self, path: &str) -> Result<(u16, String)> {
        let path = path.to_owned();
        self.netns.run(move || http_get(SocketAddr::from(([127, 0, 0, 1], PROXY_DEBUG_PORT)), &path))?
    }

    /// Kills the proxy process at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Polls `/metrics` until `metric` (a sample line prefix, e.g. `nodus_redirect_enrolled_pods`)
    /// has a value of at least `at_least`.
    pub fn wait_for_metric(&self, metric: &str, at_least: f64, timeout: Duration) -> Result<f64> {
        self.wait_for_metric_where(metric, &format!("reach {at_least}"), |v| v >= at_least, timeout)
    }

    /// Polls `/metrics` until `metric` has a value for which `wanted` holds; `goal` says what is
    /// awaited, for the error.
    pub fn wait_for_metric_where(
        &self,
        metric: &str,
        goal: &str,
        wanted: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.admin_get("/metrics").ok().and_then(|(_, body)| metric_value(&body, metric));
            if let Some(value) = value.filter(|v| wanted(*v)) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Usage(format!(
                    "{}: metric {metric} did not {goal} within {timeout:?} (last: {value:?})",
                    self.node
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The value of the first sample whose line starts with `prefix` (name plus optional labels).
pub fn metric_value(exposition: &str, prefix: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A minimal HTTP/1.0 GET (the admin port speaks HTTP/1.1 and closes after HTTP/1.0 requests).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io_error("connecting", addr.to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io_error("configuring", addr.to_string()))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").map_err(io_error("writing to", addr.to_string()))?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(io_error("reading from", addr.to_string()))?;
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

impl Lab {
    /// A directory for this lab's files (configs, logs), removed with the lab.
    pub fn work_dir(&self) -> Result<PathBuf> {
        let dir = crate::runs::work_dir_of_run(self.run_id());
        std::fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
        Ok(dir)
    }

    /// Starts `proxy_binary` on `node` with the eBPF redirect attached to the node's pods
    /// cgroup, reading `config_file`, and waits until it listens.
    pub fn start_node_proxy(
        &self,
        node: &Node,
        proxy_binary: &Path,
        config: impl Into<ConfigSource>,
        extra_args: &[&str],
    ) -> Result<NodeProxy> {
        let mut command = node.command(proxy_binary)?;
        let netns_prefix = format!("{}-", node.netns().name());
        command
            .args(["--node", &node.name])
            .args(["--outbound-addr", &format!("0.0.0.0:{PROXY_OUTBOUND_PORT}")])
            .args(["--admin-addr", &format!("0.0.0.0:{PROXY_ADMIN_PORT}")])
            .args(["--inbound-addr", &format!("0.0.0.0:{PROXY_INBOUND_PORT}")])
            .arg("--redirect-cgroup")
            .arg(node.pods_cgroup().path())
            .arg("--bpf-pin-dir")
            .arg(node.bpf_pin_dir())
            .args(["--redirect-to", &SocketAddrV4::new(node.ip, PROXY_OUTBOUND_PORT).to_string()])
            .args(["--netns-prefix", &netns_prefix])
            .args(extra_args);
        match config.into() {
            ConfigSource::File(path) => command.arg("--config-file").arg(path),
            ConfigSource::Controller(url) => {
                command.args(["--controller", &url]);
                // Written by start_controller; absent for a controller started some other way.
                let token = self.node_token_path(&node.name)?;
                if token.exists() {
                    command.arg("--node-token-file").arg(token);
                }
                &mut command
            }
        };
        // The proxy's log goes to the lab's work directory (kept until teardown).
        let log_path = self.work_dir()?.join(format!("proxy-{}.log", node.name));
        let log = std::fs::File::create(&log_path).map_err(io_error("creating", &log_path))?;
        command.stderr(log);
        let mut process = Process::spawn(format!("nodus-proxy on {}", node.name), command)?;
        process.wait_for_line("nodus-proxy ready", Duration::from_secs(20))?;
        Ok(NodeProxy {
            process,
            node: node.name.clone(),
            admin: SocketAddr::from((node.ip, PROXY_ADMIN_PORT)),
            netns: node.netns().clone(),
        })
    }

    /// Where the node token of `node` is written when a controller starts.
    pub fn node_token_path(&self, node: &str) -> Result<PathBuf> {
        Ok(self.work_dir()?.join(format!("node-{node}.token")))
    }

    /// Starts the controller in standalone mode on `node` (as a host-network controller pod
    /// would run), reading `manifests` and writing route status to `status_file`; it serves
    /// config streams on the node's address, port [`CONTROLLER_PORT`]. Returns the process and
    /// the URL node proxies subscribe to.
    pub fn start_controller(
        &self,
        node: &Node,
        controller_binary: &Path,
        manifests: &Path,
        status_file: &Path,
        extra_args: &[&str],
    ) -> Result<(Process, String)> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["--manifests".into(), manifests.into(), "--status-file".into(), status_file.into()];
        args.extend(extra_args.iter().map(std::ffi::OsString::from));
        self.start_controller_with(node, controller_binary, &args, &[])
    }

    /// Starts the controller on `node` with `args` and `env` (Kubernetes mode when `args` name no
    /// manifests and `KUBECONFIG` points at an API server), after writing every node's token;
    /// waits until it serves config streams on the node's address, port [`CONTROLLER_PORT`].
    pub fn start_controller_with(
        &self,
        node: &Node,
        controller_binary: &Path,
        args: &[std::ffi::OsString],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<(Process, String)> {
        let listen = SocketAddrV4::new(node.ip, CONTROLLER_PORT);
        // Node proxies authenticate: one token per node of the lab, made by the controller's
        // own CLI from its key; start_node_proxy hands each proxy its node's token.
        let key = self.work_dir()?.join("node-token.key");
        for lab_node in self.nodes() {
            let output = Command::new(controller_binary)
                .arg("--node-token-key")
                .arg(&key)
                .args(["--print-node-token", &lab_node.name])
                .output()
                .map_err(io_error("running", controller_binary))?;
            if !output.status.success() {
                return Err(HarnessError::Command {
                    command: "nodus-controller --print-node-token".into(),
                    status: output.status.to_string(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                });
            }
            let path = self.node_token_path(&lab_node.name)?;
            std::fs::write(&path, &output.stdout).map_err(io_error("writing", &path))?;
        }
        let mut command = node.command(controller_binary)?;
        command.args(["--listen", &listen.to_string()]).arg("--node-token-key").arg(&key).args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        let log_path = self.work_dir()?.join("controller.log");
        let log = std::fs::File::create(&log_path).map_err(io_error("creating", &log_path))?;
        command.stderr(log);
        let mut process = Process::spawn("nodus-controller".to_string(), command)?;
        process.wait_for_line("nodus-controller ready", Duration::from_secs(30))?;
        Ok((process, format!("http://{listen}")))
    }
}

/// Starts the echo server binary in `pod` on `ports`, reporting the pod's name, and waits until
/// it listens.
pub fn start_echo(pod: &Pod, echo_binary: &Path, ports: &[u16]) -> Result<Process> {
    let mut command = pod.command(echo_binary)?;
    for port in ports {
        command.args(["--listen", &format!("0.0.0.0:{port}")]);
    }
    command.args(["--pod", &pod.name, "--namespace", &pod.namespace]);
    let mut process = Process::spawn(format!("nodus-echo in {}", pod.name), command)?;
    process.wait_for_line("nodus-echo listening on", Duration::from_secs(10))?;
    Ok(process)
}
