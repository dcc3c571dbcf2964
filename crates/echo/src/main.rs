//! `nodus-echo`: the echo workload as a program, for pods in the mesh harness and the demo.

use anyhow::Context;
use clap::Parser;
use nodus_echo::{serve, EchoIdentity};
use std::net::SocketAddr;

/// Answers HTTP/1.1, h2c and gRPC with what it received (JSON for HTTP, `nodus.echo.v1.Echo`
/// for gRPC). Request headers x-echo-status, x-echo-delay-ms and x-echo-set-header steer the
/// answer.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on; repeat for several ports.
    #[arg(long = "listen", default_value = "0.0.0.0:8080")]
    listen: Vec<SocketAddr>,
    /// Pod name to report.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// Namespace to report.
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    namespace: String,
    /// Service name to report.
    #[arg(long, env = "SERVICE_NAME", default_value = "")]
    service: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let identity =
        EchoIdentity { pod: args.pod, namespace: args.namespace, service: args.service, version: String::new() };
    let mut servers = tokio::task::JoinSet::new();
    for addr in &args.listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        // Tests wait for this line to know the server is ready.
        println!("nodus-echo listening on {}", listener.local_addr()?);
        servers.spawn(serve(listener, identity.clone()));
    }
    if let Some(result) = servers.join_next().await {
        result.context("echo server task")?.context("echo server")?;
    }
    Ok(())
}
