//! `nodusctl`: the Nodus command line.

mod admin;
mod check;
mod cluster;
mod demo;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Nodus: a sidecarless service mesh. This tool runs the local mesh and checks a node.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the local mesh demo: a local cluster, the plain manifests of examples/local-mesh
    /// applied with kubectl, and traffic between its pods. Needs root. The traffic stops on
    /// Ctrl-C (the cluster stays) or after --duration (the cluster is deleted).
    Demo(demo::DemoArgs),
    /// Check that this machine can run Nodus's node agent: privileges, kernel features, bpffs,
    /// cgroup v2. Exits 0 when everything passes, 1 otherwise.
    Check(check::CheckArgs),
    /// The local cluster: a real API server, the Nodus controller in Kubernetes mode and N
    /// nodes with a node agent and a node proxy each, in the background (docs/local-cluster.md).
    Cluster(cluster::ClusterArgs),
    /// Run a command inside a pod of a local cluster (its network namespace and cgroup), so its
    /// traffic goes through the mesh as the pod's own does: `nodusctl exec shop/client -- curl http://web/`.
    Exec(cluster::ExecArgs),
    /// Golden metrics of a node proxy per route and backend: success rate, requests per second,
    /// p50 and p99 latency over a short window.
    Stat(admin::StatArgs),
    /// The effective config of a node proxy (the snapshot in force), as JSON.
    ProxyConfig(admin::ProxyConfigArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Check(args) => check::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Exec(args) => cluster::exec(args),
        Command::Stat(args) => admin::stat(args),
        Command::ProxyConfig(args) => admin::proxy_config(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("nodusctl: error: {error:#}");
            ExitCode::from(2)
        }
    }
}
