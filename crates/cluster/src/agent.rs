//! The node agent: a kubelet stand-in for one node of the lab.
//!
//! What it emulates: it registers its Node (addresses, labels, a Ready condition, kept fresh by
//! a heartbeat); it runs the Pods bound to it, each in a network namespace and cgroup of its own
//! (the lab's pod sandbox, the moment a CNI plugin's ADD would run), with every container as a
//! process in both; it maps images to programs ([`program_for`]); it writes pod status (podIP,
//! hostIP, phase, conditions, containerStatuses, Ready from readiness probes: httpGet, tcpSocket,
//! exec); it applies `restartPolicy`; it deletes gracefully (SIGTERM, the grace period, SIGKILL).
//! Env comes from the manifest, with the downward API fields a mesh needs and Secret/ConfigMap
//! values.
//!
//! What it does not: images are never pulled (a container runs a host program or gets
//! `ErrImagePull`); no volumes, resource limits, liveness or startup probes, init containers,
//! or user/filesystem isolation (processes share the host's filesystem and user). The full list
//! is in docs/local-cluster.md.

use crate::controllers::FIELD_MANAGER;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Probe, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use nodus_harness::{Lab, NetNs};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The image name (last path element, any registry and tag) that runs the echo workload.
pub const ECHO_IMAGE: &str = "nodus-echo";

/// The Gateway API conformance suite's mesh echo image (`registry.k8s.io/gateway-api/echo-advanced`):
/// runs `nodus-echo-advanced` (beside `nodus-echo`) with the container's args, and gives the pod
/// that image's `client` command.
pub const ECHO_ADVANCED_IMAGE: &str = "echo-advanced";

/// The suite's plain echo image (`registry.k8s.io/gateway-api/echo-basic`): the echo workload on
/// that image's port, 3000.
pub const ECHO_BASIC_IMAGE: &str = "echo-basic";

/// Commands an image brings into its pods' `PATH` (run by `kubectl exec`/`nodusctl exec`):
/// image, command name, the program beside `nodus-echo` it runs.
pub const IMAGE_COMMANDS: &[(&str, &str, &str)] = &[(ECHO_ADVANCED_IMAGE, "client", "nodus-echo-advanced")];

/// Where `namespace/pod`'s image commands are (the `PATH` entry exec adds).
pub fn pod_bin_dir(pods_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    pods_dir.join(format!("{namespace}_{pod}")).join("bin")
}

/// The repository name of an image (`registry.k8s.io/gateway-api/echo-basic:v1.5.1` → `echo-basic`).
fn repository_of(image: &str) -> &str {
    let repository = image.rsplit('/').next().unwrap_or(image);
    repository.split(['@', ':']).next().unwrap_or(repository)
}

/// Images that run a host program, by the image's last path element (tags ignored).
pub const IMAGE_PROGRAMS: &[(&str, &str)] = &[("curl", "curl"), ("python", "python3"), ("busybox", "sh")];

/// What one node agent needs.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The node's name.
    pub node: String,
    /// The node's address on the cluster network.
    pub node_ip: Ipv4Addr,
    /// The node's pod CIDR.
    pub pod_cidr: String,
    /// The echo workload's binary.
    pub echo_binary: PathBuf,
    /// Where container logs go: `<namespace>_<pod>_<container>.log`.
    pub log_dir: PathBuf,
    /// Per-pod files: `<namespace>_<pod>/resolv.conf`.
    pub pods_dir: PathBuf,
    /// The node proxy's CNI socket: pods are enrolled there before their processes start.
    pub cni_socket: Option<PathBuf>,
}

/// Asks the node proxy, as a chained CNI plugin's ADD does, to enrol the pod whose sandbox is
/// `sandbox`; `Ok` once the proxy enrolled it or said its namespace is not in the mesh.
fn cni_add(socket: &Path, sandbox: &nodus_harness::Pod) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let request = serde_json::json!({
        "command": "ADD", "netns": sandbox.netns().path(), "podIp": sandbox.ip.to_string(),
        "namespace": sandbox.namespace, "pod": sandbox.name,
    });
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("the node proxy's CNI socket {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(|e| format!("CNI ADD: {e}"))?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer).map_err(|e| format!("CNI ADD: {e}"))?;
    let answer: Value = serde_json::from_str(&answer).map_err(|e| format!("CNI ADD answer {answer:?}: {e}"))?;
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(format!("CNI ADD refused: {error}"));
    }
    match answer.get("enrolled").and_then(Value::as_bool) {
        Some(true) => Ok("enrolled".into()),
        Some(false) => Ok(answer.get("reason").and_then(Value::as_str).unwrap_or("not in the mesh").to_owned()),
        None => Err(format!("CNI ADD answer without a verdict: {answer}")),
    }
}

/// The resolv.conf a pod's processes see, by its `dnsPolicy` (`ClusterFirst`, the default:
/// cluster DNS on the node; `Default`: the host's; `None`: its `dnsConfig`). `None` for the host's.
fn pod_resolv_conf(pod: &Pod, settings: &AgentSettings) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
        "Default" => None,
        "None" => {
            let config = spec.dns_config.clone().unwrap_or_default();
            let mut text = String::new();
            for server in config.nameservers.iter().flatten() {
                text.push_str(&format!("nameserver {server}\n"));
            }
            if let Some(search) = config.searches.filter(|s| !s.is_empty()) {
                text.push_str(&format!("search {}\n", search.join(" ")));
            }
            Some(text)
        }
        _ => Some(crate::dns::resolv_conf(&pod.namespace().unwrap_or_default(), settings.node_ip)),
    }
}

/// Puts the commands the pod's images bring (`IMAGE_COMMANDS`) in its bin folder.
fn write_image_commands(pod: &Pod, settings: &AgentSettings, namespace: &str, name: &str) -> Result<(), String> {
    let dir = pod_bin_dir(&settings.pods_dir, namespace, name);
    let _ = std::fs::remove_dir_all(&dir);
    let images: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.image.as_deref())
        .map(repository_of)
        .collect();
    for (image, command, program) in IMAGE_COMMANDS {
        if images.contains(image) {
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let target = settings.echo_binary.with_file_name(program);
            std::os::unix::fs::symlink(&target, dir.join(command))
                .map_err(|e| format!("linking {} to {}: {e}", dir.join(command).display(), target.display()))?;
        }
    }
    Ok(())
}

/// Where `namespace/pod`'s resolv.conf is kept.
pub fn resolv_conf_path(pods_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    pods_dir.join(format!("{namespace}_{pod}")).join("resolv.conf")
}

/// The program a container runs: `Ok((program, args))`, or `Err(reason, message)` for its
/// Waiting state.
pub fn program_for(
    container: &Container,
    pod_name: &str,
    namespace: &str,
    echo_binary: &Path,
) -> Result<(PathBuf, Vec<String>), (&'static str, String)> {
    let args = container.args.clone().unwrap_or_default();
    if let Some(command) = container.command.as_ref().filter(|c| !c.is_empty()) {
        let mut rest = command[1..].to_vec();
        rest.extend(args);
        return Ok((PathBuf::from(&command[0]), rest));
    }
    let image = container.image.as_deref().unwrap_or_default();
    let repository = repository_of(image);
    if repository == ECHO_ADVANCED_IMAGE {
        return Ok((echo_binary.with_file_name("nodus-echo-advanced"), args));
    }
    if repository == ECHO_BASIC_IMAGE {
        let listen = ["--listen".to_owned(), "0.0.0.0:3000".to_owned()];
        let identity = ["--pod".to_owned(), pod_name.to_owned(), "--namespace".to_owned(), namespace.to_owned()];
        return Ok((echo_binary.to_path_buf(), identity.into_iter().chain(listen).chain(args).collect()));
    }
    if repository == ECHO_IMAGE {
        let mut echo_args =
            vec!["--pod".to_owned(), pod_name.to_owned(), "--namespace".to_owned(), namespace.to_owned()];
        if args.is_empty() {
            let ports: Vec<i32> = container.ports.iter().flatten().map(|p| p.container_port).collect();
            for port in if ports.is_empty() { vec![8080] } else { ports } {
                echo_args.extend(["--listen".to_owned(), format!("0.0.0.0:{port}")]);
            }
        }
        echo_args.extend(args);
        return Ok((echo_binary.to_path_buf(), echo_args));
    }
    if let Some((_, program)) = IMAGE_PROGRAMS.iter().find(|(name, _)| *name == repository) {
        return Ok((PathBuf::from(program), args));
    }
    Err((
        "ErrImagePull",
        format!(
            "image {image:?} has no program on this machine: the local cluster runs {ECHO_IMAGE}, the images listed in \
             docs/local-cluster.md, or a container's `command`"
        ),
    ))
}

/// One container's process and what status reports of it.
struct ContainerRun {
    name: String,
    child: Option<Child>,
    restarts: i32,
    started_at: Option<String>,
    waiting: Option<(&'static str, String)>,
    terminated: Option<i32>,
    ready: bool,
    next_probe: Instant,
    last_start: Instant,
    /// Resolved once, at the first start; restarts reuse it.
    env: Vec<(String, String)>,
}

/// A container whose agent goes (the cluster stops) takes its process with it: the node's
/// processes end with the node, as a kubelet's containers end with their node's runtime.
impl Drop for ContainerRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pod this agent runs.
struct PodRun {
    uid: String,
    pod: nodus_harness::Pod,
    containers: Vec<ContainerRun>,
    start_time: String,
    last_status: Option<Value>,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Runs the agent for one node until the process ends.
pub async fn run(client: Client, lab: Arc<Mutex<Lab>>, node_netns: NetNs, settings: AgentSettings) {
    let settings = Arc::new(settings);
    let (pods, writer) = reflector::store::<Pod>();
    let mut changes = reflector(writer, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()))
        .default_backoff()
        .boxed();
    let mut runs: HashMap<(String, String), PodRun> = HashMap::new();
    let mut heartbeat = Instant::now() - Duration::from_secs(3600);
    loop {
        if heartbeat.elapsed() >= Duration::from_secs(10) {
            if let Err(error) = register_node(&client, &settings).await {
                tracing::warn!(%error, node = %settings.node, "registering the node failed; retrying");
            } else {
                heartbeat = Instant::now();
            }
        }
        tokio::select! {
            _ = changes.next() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        sync(&client, &lab, &node_netns, &settings, &pods, &mut runs).await;
    }
}

async fn register_node(client: &Client, settings: &AgentSettings) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": settings.node, "labels": {
            "kubernetes.io/hostname": settings.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": std::env::consts::ARCH,
        }},
        "spec": { "podCIDR": settings.pod_cidr, "podCIDRs": [settings.pod_cidr] },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes.patch(&settings.node, &params, &Patch::Apply(&node)).await?;
    let now = now_rfc3339();
    let status = json!({ "status": {
        "addresses": [{ "type": "InternalIP", "address": settings.node_ip.to_string() }, { "type": "Hostname", "address": settings.node }],
        "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "nodus node agent is posting ready status",
                         "lastHeartbeatTime": now, "lastTransitionTime": now }],
        "nodeInfo": { "kubeletVersion": "nodus-agent", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
                      "containerRuntimeVersion": "nodus://netns", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                      "machineID": "", "systemUUID": "", "bootID": "" },
    }});
    nodes.patch_status(&settings.node, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

async fn sync(
    client: &Client,
    lab: &Arc<Mutex<Lab>>,
    node_netns: &NetNs,
    settings: &Arc<AgentSettings>,
    store: &Store<Pod>,
    runs: &mut HashMap<(String, String), PodRun>,
) {
    let pods = store.state();
    let mine: HashMap<(String, String), Arc<Pod>> = pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(settings.node.as_str()))
        .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p.clone()))
        .collect();

    // Pods deleted, being deleted, or replaced by a pod of the same name: stop them.
    let stopping: Vec<(String, String)> = runs
        .iter()
        .filter(|(key, run)| {
            mine.get(*key)
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some() || p.uid().as_deref() != Some(&run.uid))
        })
        .map(|(key, _)| key.clone())
        .collect();
    for key in stopping {
        let Some(run) = runs.remove(&key) else { continue };
        let pod = mine.get(&key).cloned();
        let grace = pod
            .as_ref()
            .and_then(|p| {
                p.metadata.deletion_grace_period_seconds.or(p.spec.as_ref()?.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        let (client, lab) = (client.clone(), lab.clone());
        tokio::spawn(async move {
            stop(run, Duration::from_secs(grace.max(0) as u64), &lab).await;
            // With the processes gone, the API object can go (the kubelet's final delete).
            if let Some(pod) = pod.filter(|p| p.metadata.deletion_timestamp.is_some()) {
                let api: Api<Pod> = Api::namespaced(client, &key.0);
                let _ = api
                    .delete(&pod.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                    .await;
            }
        });
    }

    for (key, pod) in &mine {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if !runs.contains_key(key) {
            let ended = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
            if ended {
                continue;
            }
            match start(client, lab, settings, pod).await {
                Ok(run) => {
                    runs.insert(key.clone(), run);
                }
                Err(error) => {
                    tracing::warn!(%error, pod = %key.1, namespace = %key.0, "creating the pod sandbox failed; retrying");
                    continue;
                }
            }
        }
        let Some(run) = runs.get_mut(key) else { continue };
        supervise(run, pod, settings, node_netns).await;
        let status = status_of(run, pod, settings);
        if run.last_status.as_ref() != Some(&status) {
            let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
            match api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&json!({ "status": status }))).await {
                Ok(_) => run.last_status = Some(status),
                Err(error) => tracing::warn!(%error, pod = %key.1, "writing pod status failed; retrying"),
            }
        }
    }
}

async fn start(client: &Client, lab: &Arc<Mutex<Lab>>, settings: &AgentSettings, pod: &Pod) -> Result<PodRun, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let sandbox = {
        let lab = lab.clone();
        let (node, namespace, name) = (settings.node.clone(), namespace.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            let mut lab = lab.lock().map_err(|_| "the lab's lock is poisoned".to_owned())?;
            lab.add_pod(&node, &namespace, &name).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??
    };
    if let Some(text) = pod_resolv_conf(pod, settings) {
        let path = resolv_conf_path(&settings.pods_dir, &namespace, &name);
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&path, text));
        written.map_err(|e| format!("writing {}: {e}", path.display()))?;
    } else {
        let _ = std::fs::remove_file(resolv_conf_path(&settings.pods_dir, &namespace, &name));
    }
    write_image_commands(pod, settings, &namespace, &name)?;
    if let Some(socket) = &settings.cni_socket {
        // The sandbox has its address: say so (the controller lists a pod once it has one), then
        // enrol it before any of its processes exists, as a chained CNI plugin's ADD does.
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let ip = sandbox.ip.to_string();
        let status = json!({ "status": { "phase": "Pending", "podIP": ip, "podIPs": [{ "ip": ip }],
            "hostIP": settings.node_ip.to_string(), "hostIPs": [{ "ip": settings.node_ip.to_string() }] } });
        let written = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
        let (socket, for_cni) = (socket.clone(), sandbox.clone());
        let enrolled = match written {
            Ok(_) => tokio::task::spawn_blocking(move || cni_add(&socket, &for_cni))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            Err(error) => Err(format!("writing the pod's address: {error}")),
        };
        match enrolled {
            Ok(verdict) => tracing::info!(pod = %name, namespace = %namespace, verdict, "CNI ADD"),
            Err(error) => {
                // Fail closed: no process starts; the sandbox goes and the next pass tries again.
                let (lab, namespace, name) = (lab.clone(), namespace.clone(), name.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(mut lab) = lab.lock() {
                        let _ = lab.remove_pod(&namespace, &name);
                    }
                })
                .await;
                return Err(error);
            }
        }
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let mut containers = Vec::new();
    for container in &spec.containers {
        containers.push(ContainerRun {
            name: container.name.clone(),
            child: None,
            restarts: 0,
            started_at: None,
            waiting: Some(("ContainerCreating", String::new())),
            terminated: None,
            ready: false,
            next_probe: Instant::now(),
            last_start: Instant::now(),
            env: Vec::new(),
        });
    }
    let mut run = PodRun {
        uid: pod.uid().unwrap_or_default(),
        pod: sandbox,
        containers,
        start_time: now_rfc3339(),
        last_status: None,
    };
    for (index, container) in spec.containers.iter().enumerate() {
        run.containers[index].env = environment(client, pod, container, &run.pod, settings).await;
        launch(&mut run, index, container, settings);
    }
    Ok(run)
}

/// The container's environment: its `env` entries, with `valueFrom` resolved (downward API
/// fields, Secret and ConfigMap keys). An entry that cannot be resolved is left out and logged.
async fn environment(
    client: &Client,
    pod: &Pod,
    container: &Container,
    sandbox: &nodus_harness::Pod,
    settings: &AgentSettings,
) -> Vec<(String, String)> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            env.push((var.name.clone(), value.clone()));
            continue;
        }
        let Some(source) = &var.value_from else {
            env.push((var.name.clone(), String::new()));
            continue;
        };
        let value = if let Some(field) = &source.field_ref {
            match field.field_path.as_str() {
                "metadata.name" => Some(pod.name_any()),
                "metadata.namespace" => Some(namespace.clone()),
                "metadata.uid" => pod.uid(),
                "spec.nodeName" => Some(settings.node.clone()),
                "spec.serviceAccountName" => Some(
                    pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into()),
                ),
                "status.podIP" => Some(sandbox.ip.to_string()),
                "status.hostIP" => Some(settings.node_ip.to_string()),
                other => {
                    tracing::warn!(field = other, pod = %pod.name_any(), "unsupported downward API field; variable left out");
                    None
                }
            }
        } else if let Some(key) = &source.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            api.get_opt(&key.name).await.ok().flatten().and_then(|s| {
                let data = s.data?.get(&key.key)?.0.clone();
                String::from_utf8(data).ok()
            })
        } else if let Some(key) = &source.config_map_key_ref {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            api.get_opt(&key.name).await.ok().flatten().and_then(|c| c.data?.get(&key.key).cloned())
        } else {
            None
        };
        match value {
            Some(value) => env.push((var.name.clone(), value)),
            None => tracing::warn!(variable = %var.name, pod = %pod.name_any(), "could not resolve; variable left out"),
        }
    }
    env
}

fn launch(run: &mut PodRun, index: usize, container: &Container, settings: &AgentSettings) {
    let namespace = run.pod.namespace.clone();
    let pod_name = run.pod.name.clone();
    let state = &mut run.containers[index];
    state.last_start = Instant::now();
    let (program, args) = match program_for(container, &pod_name, &namespace, &settings.echo_binary) {
        Ok(found) => found,
        Err((reason, message)) => {
            state.waiting = Some((reason, message));
            return;
        }
    };
    let log_path = settings.log_dir.join(format!("{namespace}_{pod_name}_{}.log", container.name));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path);
    let mut command = match run.pod.command(&program) {
        Ok(command) => command,
        Err(error) => {
            state.waiting = Some(("CreateContainerError", error.to_string()));
            return;
        }
    };
    let resolv_conf = resolv_conf_path(&settings.pods_dir, &namespace, &pod_name);
    if resolv_conf.exists() {
        if let Err(error) = nodus_harness::with_resolv_conf(&mut command, &resolv_conf) {
            state.waiting = Some(("CreateContainerError", error.to_string()));
            return;
        }
    }
    command.args(&args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(state.env.clone());
    command.env("HOSTNAME", &pod_name).stdin(Stdio::null());
    if let Ok(log) = log {
        if let Ok(copy) = log.try_clone() {
            command.stdout(copy);
        }
        command.stderr(log);
    }
    if let Some(dir) = &container.working_dir {
        command.current_dir(dir);
    }
    match command.spawn() {
        Ok(child) => {
            state.child = Some(child);
            state.started_at = Some(now_rfc3339());
            state.waiting = None;
            state.terminated = None;
            state.ready = container.readiness_probe.is_none();
            let delay = container.readiness_probe.as_ref().and_then(|p| p.initial_delay_seconds).unwrap_or(0);
            state.next_probe = Instant::now() + Duration::from_secs(delay.max(0) as u64);
        }
        Err(error) => {
            state.waiting = Some(("RunContainerError", format!("starting {}: {error}", program.display())));
        }
    }
}

/// Reaps exited containers (restarting them as `restartPolicy` says, with a back-off) and runs
/// due readiness probes.
async fn supervise(run: &mut PodRun, pod: &Pod, settings: &AgentSettings, node_netns: &NetNs) {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always").to_owned();
    for (index, container) in spec.containers.iter().enumerate() {
        let Some(state) = run.containers.get_mut(index) else { continue };
        if let Some(child) = state.child.as_mut() {
            if let Ok(Some(exit)) = child.try_wait() {
                let code = exit.code().unwrap_or(137);
                state.child = None;
                state.terminated = Some(code);
                state.ready = false;
            }
        }
        if state.child.is_none() {
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => state.terminated.is_some_and(|c| c != 0),
                _ => true,
            };
            // CrashLoopBackOff: 1 s doubling to 5 min (the kubelet starts at 10 s; shorter here,
            // where a restart costs nothing).
            let backoff = Duration::from_secs((1u64 << state.restarts.min(8)).min(300));
            let was_started = state.started_at.is_some();
            if restart && was_started && state.last_start.elapsed() >= backoff {
                state.restarts += 1;
                launch(run, index, container, settings);
                continue;
            }
        }
        let Some(state) = run.containers.get_mut(index) else { continue };
        if let (Some(probe), true) = (&container.readiness_probe, state.child.is_some()) {
            if Instant::now() >= state.next_probe {
                let period = probe.period_seconds.unwrap_or(10).max(1) as u64;
                state.next_probe = Instant::now() + Duration::from_secs(period);
                state.ready = probe_once(probe, &run.pod, node_netns).await;
            }
        }
    }
}

/// One readiness check: an HTTP GET answered 200–399, a TCP connect, or a command exiting 0.
async fn probe_once(probe: &Probe, pod: &nodus_harness::Pod, node_netns: &NetNs) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let port_of = |port: &IntOrString| match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(_) => None,
    };
    if let Some(command) = probe.exec.as_ref().and_then(|e| e.command.clone()).filter(|c| !c.is_empty()) {
        let Ok(mut cmd) = pod.command(&command[0]) else { return false };
        cmd.args(&command[1..]).stdout(Stdio::null()).stderr(Stdio::null());
        return tokio::task::spawn_blocking(move || cmd.status().is_ok_and(|s| s.success())).await.unwrap_or(false);
    }
    let (port, path) = if let Some(http) = &probe.http_get {
        (port_of(&http.port), Some(http.path.clone().unwrap_or_else(|| "/".into())))
    } else if let Some(tcp) = &probe.tcp_socket {
        (port_of(&tcp.port), None)
    } else {
        return true;
    };
    let Some(port) = port else { return false };
    let addr = SocketAddr::from((pod.ip, port));
    let netns = node_netns.clone();
    tokio::task::spawn_blocking(move || {
        // The kubelet probes from the node: connect from the node's namespace.
        netns
            .run(|| {
                use std::io::{Read, Write};
                let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, timeout) else { return false };
                let Some(path) = path else { return true };
                let _ = stream.set_read_timeout(Some(timeout));
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/nodus\r\nConnection: close\r\n\r\n"
                );
                if stream.write_all(request.as_bytes()).is_err() {
                    return false;
                }
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).is_ok()
                    && std::str::from_utf8(&head[9..12])
                        .ok()
                        .and_then(|c| c.parse::<u16>().ok())
                        .is_some_and(|c| (200..400).contains(&c))
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

fn status_of(run: &PodRun, pod: &Pod, settings: &AgentSettings) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let all_ready = run.containers.iter().all(|c| c.ready && c.child.is_some());
    let any_running = run.containers.iter().any(|c| c.child.is_some());
    let all_done = run.containers.iter().all(|c| c.child.is_none() && c.terminated.is_some());
    let phase = if all_done && policy != "Always" {
        if run.containers.iter().all(|c| c.terminated == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if any_running || run.containers.iter().any(|c| c.restarts > 0) {
        "Running"
    } else {
        "Pending"
    };
    let condition = |kind: &str, ok: bool| json!({ "type": kind, "status": if ok { "True" } else { "False" } });
    let container_statuses: Vec<Value> = spec
        .containers
        .iter()
        .zip(&run.containers)
        .map(|(container, state)| {
            let status = if state.child.is_some() {
                json!({ "running": { "startedAt": state.started_at } })
            } else if let Some(code) = state.terminated {
                json!({ "terminated": { "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" } } })
            } else {
                let (reason, message) = state.waiting.clone().unwrap_or(("ContainerCreating", String::new()));
                json!({ "waiting": { "reason": reason, "message": message } })
            };
            json!({ "name": state.name, "image": container.image, "imageID": "", "ready": state.ready && state.child.is_some(),
                    "restartCount": state.restarts, "started": state.child.is_some(), "state": status })
        })
        .collect();
    let ip = run.pod.ip.to_string();
    json!({
        "phase": phase,
        "podIP": ip, "podIPs": [{ "ip": ip }],
        "hostIP": settings.node_ip.to_string(), "hostIPs": [{ "ip": settings.node_ip.to_string() }],
        "startTime": run.start_time,
        "conditions": [
            condition("PodScheduled", true), condition("Initialized", true),
            condition("ContainersReady", all_ready), condition("Ready", all_ready),
        ],
        "containerStatuses": container_statuses,
    })
}

/// SIGTERM to every container, up to `grace` for them to exit, SIGKILL for the rest; then the
/// sandbox goes.
async fn stop(mut run: PodRun, grace: Duration, lab: &Arc<Mutex<Lab>>) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for state in &mut run.containers {
        if let Some(child) = &state.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && run.containers.iter_mut().any(|c| c.child.as_mut().is_some_and(|ch| matches!(ch.try_wait(), Ok(None))))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for state in &mut run.containers {
        if let Some(mut child) = state.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let (namespace, name) = (run.pod.namespace.clone(), run.pod.name.clone());
    let lab = lab.clone();
    let removed = tokio::task::spawn_blocking(move || match lab.lock() {
        Ok(mut lab) => lab.remove_pod(&namespace, &name).map_err(|e| e.to_string()),
        Err(_) => Err("the lab's lock is poisoned".to_owned()),
    })
    .await;
    if let Ok(Err(error)) = removed {
        tracing::warn!(%error, pod = %run.pod.name, "removing the pod sandbox failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn images_map_to_programs_and_unknown_images_wait_with_a_reason() {
        let echo = Path::new("/bin/nodus-echo");
        let (program, args) = program_for(
            &container("{ name: web, image: 'ghcr.io/x/nodus-echo:1.2', ports: [{ containerPort: 9000 }] }"),
            "p",
            "ns",
            echo,
        )
        .unwrap();
        assert_eq!(program, echo);
        assert_eq!(args, ["--pod", "p", "--namespace", "ns", "--listen", "0.0.0.0:9000"]);
        // The conformance suite's images.
        let (program, args) = program_for(
            &container("{ name: echo, image: 'registry.k8s.io/gateway-api/echo-advanced:v1.5.1', args: [--tcp=9090, --port=8080] }"),
            "p",
            "ns",
            echo,
        )
        .unwrap();
        assert_eq!(program, Path::new("/bin/nodus-echo-advanced"));
        assert_eq!(args, ["--tcp=9090", "--port=8080"]);
        let (program, args) = program_for(
            &container("{ name: b, image: 'registry.k8s.io/gateway-api/echo-basic:v1.5.1' }"),
            "p",
            "ns",
            echo,
        )
        .unwrap();
        assert_eq!(program, echo);
        assert_eq!(args, ["--pod", "p", "--namespace", "ns", "--listen", "0.0.0.0:3000"]);
        let (program, args) =
            program_for(&container("{ name: c, image: curlimages/curl, args: [-s, http://web/] }"), "p", "ns", echo)
                .unwrap();
        assert_eq!(
            (program.to_str().unwrap(), args.as_slice()),
            ("curl", ["-s".to_owned(), "http://web/".to_owned()].as_slice())
        );
        let (program, args) =
            program_for(&container("{ name: c, image: anything, command: [sleep], args: ['60'] }"), "p", "ns", echo)
                .unwrap();
        assert_eq!((program.to_str().unwrap(), args), ("sleep", vec!["60".to_owned()]));
        let (reason, message) = program_for(&container("{ name: c, image: nginx:1.27 }"), "p", "ns", echo).unwrap_err();
        assert_eq!(reason, "ErrImagePull");
        assert!(message.contains("nginx:1.27"), "{message}");
    }
}
