//! `nodusctl cluster create|delete|list` and `nodusctl exec`: the local cluster (see
//! docs/local-cluster.md) as a background process that outlives the terminal that made it.
//!
//! Each cluster has a folder, `$NODUS_CLUSTERS_DIR/<name>` (default
//! `$HOME/.local/state/nodus/clusters/<name>`), holding its kubeconfig, `logs/` (every
//! component's log), and `cluster.json` (the serving process's pid, the lab's run id, the node
//! count) once it is ready.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use nodus_cluster::local::{ClusterSpec, LocalCluster};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// `nodusctl cluster ...`.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Start a local cluster in the background: API server, CRDs, the Nodus controller in
    /// Kubernetes mode, and N nodes with a node agent and a node proxy each. Needs root.
    Create(CreateArgs),
    /// Stop a cluster and remove everything it made.
    Delete(NameArg),
    /// List clusters and whether they run.
    List,
    /// Run a cluster in the foreground (what `create` starts in the background).
    #[command(hide = true)]
    Serve(CreateArgs),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct NameArg {
    /// The cluster's name.
    #[arg(long, default_value = "nodus")]
    pub(crate) name: String,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    pub(crate) name: NameArg,
    /// How many nodes.
    #[arg(long, default_value_t = 2)]
    pub(crate) nodes: usize,
    /// The kapi kit (start-kapi.sh and the Gateway API CRDs).
    #[arg(long, env = "NODUS_KAPI_KIT")]
    pub(crate) kapi_kit: Option<PathBuf>,
    /// The built kapi binaries (scripts/setup-kapi.sh).
    #[arg(long, env = "NODUS_KAPI_BIN")]
    pub(crate) kapi_bin: Option<PathBuf>,
    /// Also run Prometheus (Debian's package), scraping every node proxy and the controller; its
    /// UI and API on the host's 127.0.0.1:9090 (or --prometheus-port).
    #[arg(long)]
    pub(crate) prometheus: bool,
    /// The host port for Prometheus (default: 9090 if free, else any free port).
    #[arg(long, default_value_t = 0, requires = "prometheus")]
    pub(crate) prometheus_port: u16,
    /// The Prometheus server binary.
    #[arg(long, default_value = "/usr/bin/prometheus", requires = "prometheus")]
    pub(crate) prometheus_binary: PathBuf,
}

/// `nodusctl exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The cluster.
    #[arg(long, default_value = "nodus", env = "NODUS_CLUSTER")]
    cluster: String,
    /// `NAMESPACE/POD`.
    pod: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// What a running cluster records of itself.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct ClusterInfo {
    /// The serving process.
    pub(crate) pid: u32,
    /// The lab's run id (in the names of its network namespaces and cgroups).
    pub(crate) run_id: String,
    /// How many nodes.
    pub(crate) nodes: usize,
    /// Prometheus's URL on the host, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) prometheus: Option<String>,
}

/// The folder of all clusters.
pub(crate) fn clusters_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NODUS_CLUSTERS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/state/nodus/clusters")
}

/// The repository nodusctl was built from (for the kapi cache, the kit and the CRDs).
pub(crate) fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the cluster in `dir` recorded of itself, once it was ready.
pub(crate) fn info(dir: &Path) -> Option<ClusterInfo> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).ok()?).ok()
}

/// Whether process `pid` runs. A zombie (an exited child of this very process, as the cluster
/// process is of `nodusctl demo`, not yet reaped) does not.
pub(crate) fn alive(pid: u32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // /proc/<pid>/stat: "pid (comm) state ...": the state follows the last ')'.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !matches!(stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()), Some(Some('Z' | 'X')))
}

/// Runs `nodusctl cluster ...`.
pub fn run(args: ClusterArgs) -> Result<ExitCode> {
    match args.command {
        ClusterCommand::Create(create) => self::create(create),
        ClusterCommand::Delete(name) => delete(&name.name),
        ClusterCommand::List => list(),
        ClusterCommand::Serve(create) => serve(create),
    }
}

fn spec_of(args: &CreateArgs, dir: &Path) -> Result<ClusterSpec> {
    let me = std::env::current_exe().context("locating nodusctl")?;
    let binaries = me.parent().context("nodusctl's folder")?.to_path_buf();
    // kapi runs `PROG exec NS/POD -- CMD...` for kubectl exec: a wrapper that names the cluster.
    let helper = dir.join("exec-helper");
    let script = format!("#!/bin/sh\n# kubectl exec, through kapi, into this cluster's pods.\nshift\nexec '{}' exec --cluster '{}' \"$@\"\n", me.display(), args.name.name);
    std::fs::write(&helper, script).context("writing the exec helper")?;
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(ClusterSpec {
        nodes: args.nodes,
        dir: dir.to_path_buf(),
        kapi_kit: args.kapi_kit.clone().unwrap_or_else(|| repository().join("../shared/kapi")),
        kapi_bin: args.kapi_bin.clone().unwrap_or_else(|| repository().join(".cache/kapi/bin")),
        nodus_crds: repository().join("charts/nodus/crds"),
        binaries,
        exec_helper: Some(helper),
        prometheus: args.prometheus.then(|| args.prometheus_binary.clone()),
        prometheus_port: args.prometheus_port,
    })
}

fn create(args: CreateArgs) -> Result<ExitCode> {
    println!("Creating cluster {:?} with {} nodes ...", args.name.name, args.nodes);
    let started = Instant::now();
    let (dir, info) = start_in_background(&args)?;
    println!("Cluster {:?} is ready in {:.1} s (pid {}).", args.name.name, started.elapsed().as_secs_f64(), info.pid);
    println!("  kubeconfig: {}", dir.join("kubeconfig").display());
    println!("  logs:       {}", dir.join("logs").display());
    if let Some(url) = &info.prometheus {
        println!("  prometheus: {url}   (scrapes every node proxy and the controller)");
    }
    println!();
    println!("Next:");
    println!("  export KUBECONFIG={}", dir.join("kubeconfig").display());
    println!("  kubectl get nodes");
    println!("  kubectl create namespace shop && kubectl label namespace shop nodus.dev/mesh=enabled");
    println!("  kubectl apply -f examples/   # see docs/getting-started.md");
    println!("  nodusctl cluster delete --name {}", args.name.name);
    Ok(ExitCode::SUCCESS)
}

/// Starts the cluster `args` describe as a background process and waits until it is ready;
/// returns its folder and what it recorded of itself.
pub(crate) fn start_in_background(args: &CreateArgs) -> Result<(PathBuf, ClusterInfo)> {
    if args.nodes == 0 || args.nodes > 20 {
        bail!("--nodes must be 1 to 20");
    }
    let dir = clusters_dir().join(&args.name.name);
    if let Some(existing) = info(&dir).filter(|i| alive(i.pid)) {
        bail!(
            "cluster {} runs already (pid {}); `nodusctl cluster delete --name {}` first",
            args.name.name,
            existing.pid,
            args.name.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    // Checked here too, so that what is missing is said in this terminal, not only in a log.
    spec_of(args, &dir)?.check()?;
    let log = std::fs::File::create(dir.join("logs/cluster.log"))?;
    let me = std::env::current_exe()?;
    let mut serve = Command::new(me);
    serve
        .args(["cluster", "serve", "--name", &args.name.name, "--nodes", &args.nodes.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(kit) = &args.kapi_kit {
        serve.arg("--kapi-kit").arg(kit);
    }
    if let Some(bin) = &args.kapi_bin {
        serve.arg("--kapi-bin").arg(bin);
    }
    if args.prometheus {
        serve.arg("--prometheus").arg("--prometheus-binary").arg(&args.prometheus_binary);
        serve.args(["--prometheus-port", &args.prometheus_port.to_string()]);
    }
    // Its own process group and session: closing this terminal does not stop the cluster.
    std::os::unix::process::CommandExt::process_group(&mut serve, 0);
    let started = Instant::now();
    let mut child = serve.spawn().context("starting the cluster process")?;
    loop {
        if let Some(info) = info(&dir) {
            return Ok((dir, info));
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("logs/cluster.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "the cluster process ended ({status}) before it was ready:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            bail!("the cluster was not ready within 180 s; see {}", dir.join("logs").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serve(args: CreateArgs) -> Result<ExitCode> {
    let dir = clusters_dir().join(&args.name.name);
    std::fs::create_dir_all(dir.join("logs"))?;
    let spec = spec_of(&args, &dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let cluster = LocalCluster::start(&spec).await?;
        let record = ClusterInfo {
            pid: std::process::id(),
            run_id: cluster.run_id(),
            nodes: args.nodes,
            prometheus: cluster.prometheus_url().map(str::to_owned),
        };
        std::fs::write(dir.join("cluster.json"), serde_json::to_string_pretty(&record)?)?;
        eprintln!("nodusctl: cluster {} ready (run {})", args.name.name, record.run_id);
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("nodusctl: stopping cluster {}", args.name.name);
        let _ = std::fs::remove_file(dir.join("cluster.json"));
        drop(cluster);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Stops cluster `name` and removes its folder.
pub(crate) fn delete(name: &str) -> Result<ExitCode> {
    let dir = clusters_dir().join(name);
    if !dir.exists() {
        bail!("no cluster named {name:?} (nodusctl cluster list)");
    }
    if let Some(info) = info(&dir) {
        let pid = nix::unistd::Pid::from_raw(info.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while alive(info.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(info.pid) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("Deleted cluster {name:?}.");
    Ok(ExitCode::SUCCESS)
}

fn list() -> Result<ExitCode> {
    let Ok(entries) = std::fs::read_dir(clusters_dir()) else {
        println!("No clusters.");
        return Ok(ExitCode::SUCCESS);
    };
    println!("{:<16} {:<8} {:<6} KUBECONFIG", "NAME", "STATE", "NODES");
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let (state, nodes) = match info(&dir) {
            Some(i) if alive(i.pid) => ("running", i.nodes.to_string()),
            Some(i) => ("stopped", i.nodes.to_string()),
            None => ("stopped", "-".into()),
        };
        println!("{name:<16} {state:<8} {nodes:<6} {}", dir.join("kubeconfig").display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `nodusctl exec`: the command inside the pod's network namespace and cgroup, as the
/// pod's own processes run, so its connections are captured by the mesh exactly as theirs are.
pub fn exec(args: ExecArgs) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let (namespace, pod) = args.pod.split_once('/').context("the pod is NAMESPACE/POD")?;
    let mut command = pod_command(&args.cluster, namespace, pod, &args.command[0])?;
    command.args(&args.command[1..]);
    let error = command.exec();
    bail!("running {}: {error}", args.command[0])
}

/// A command that runs `program` inside pod `namespace/pod` of cluster `cluster`: in its
/// network namespace and cgroup, with its resolv.conf.
pub(crate) fn pod_command(
    cluster: &str,
    namespace: &str,
    pod: &str,
    program: impl AsRef<std::ffi::OsStr>,
) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    let dir = clusters_dir().join(cluster);
    let info = info(&dir).filter(|i| alive(i.pid)).with_context(|| format!("cluster {cluster:?} is not running"))?;
    let found = (1..=info.nodes).find_map(|k| {
        let node = format!("node-{k}");
        let netns = format!("nodus-{}-{node}-{namespace}-{pod}", info.run_id);
        Path::new("/run/netns").join(&netns).exists().then_some((node, netns))
    });
    let Some((node, netns)) = found else {
        bail!("pod {namespace}/{pod} is not running on any node of cluster {cluster:?}");
    };
    let cgroup = nodus_harness::cgroup2_mount()?
        .join(nodus_harness::HARNESS_CGROUP_DIR)
        .join(&info.run_id)
        .join(&node)
        .join("pods")
        .join(format!("{namespace}_{pod}"));
    let ns_file = std::fs::File::open(Path::new("/run/netns").join(&netns))?;
    let procs = cgroup.join("cgroup.procs");
    let mut procs =
        std::fs::OpenOptions::new().write(true).open(&procs).with_context(|| format!("opening {}", procs.display()))?;
    // The commands the pod's images bring (the suite's echo image's `client`) come first.
    let bin = nodus_cluster::agent::pod_bin_dir(&dir.join("pods"), namespace, pod);
    let program = program.as_ref();
    let mut command = match bin.join(program).exists() {
        true => Command::new(bin.join(program)),
        false => Command::new(program),
    };
    if bin.exists() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin.clone()];
        paths.extend(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(paths)?);
    }
    // The pod's DNS (cluster DNS, search path), as its own processes see it.
    let resolv_conf = nodus_cluster::agent::resolv_conf_path(&dir.join("pods"), namespace, pod);
    if resolv_conf.exists() {
        nodus_harness::with_resolv_conf(&mut command, &resolv_conf)?;
    }
    // SAFETY: between fork and exec the closure makes two system calls on descriptors opened
    // before the fork, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            use std::io::Write;
            nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            procs.write_all(b"0")
        });
    }
    Ok(command)
}
