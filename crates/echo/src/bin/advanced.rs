//! `nodus-echo-advanced`: the echo server and client the Gateway API conformance suite's mesh
//! tests expect of the image `registry.k8s.io/gateway-api/echo-advanced` (docs/local-cluster.md
//! maps that image here), with our own code.
//!
//! - Server (no subcommand): `--port=P` (repeatable) serves HTTP/1.1, h2c and gRPC on P,
//!   answering HTTP in the suite's `Field=value` text format (`nodus_echo::text`); `--grpc=P` and
//!   `--tcp=P` are served the same way; `--tls=P` with `--crt`/`--key` is accepted and, without
//!   those files, served in plaintext (said on stderr): the mesh profiles send no TLS.
//! - Client: `nodus-echo-advanced client URL [--method=M] [-H name:value]... [--count=N]`, also run
//!   as `client` (what the suite executes in a pod through `pods/exec`): `http://` requests over
//!   HTTP/1.1 (redirects not followed), `grpc://` calls `nodus.echo.v1.Echo/Echo`; prints each
//!   answer as the suite parses it, answers of a batch separated by a blank line.

use anyhow::{bail, Context};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use nodus_echo::text::{render_answer, render_request, ClientAnswer};
use nodus_echo::{serve_as, AnswerFormat, EchoIdentity, EchoReport};
use std::net::SocketAddr;

/// The server's flags, as the upstream image's args spell them (its `--version` is the service
/// version it reports, not this program's).
#[derive(Parser, Debug)]
#[command(disable_version_flag = true)]
struct ServerArgs {
    /// HTTP port (repeatable).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// gRPC port (repeatable).
    #[arg(long = "grpc")]
    grpc: Vec<u16>,
    /// TCP port (repeatable).
    #[arg(long = "tcp")]
    tcp: Vec<u16>,
    /// TLS port (repeatable).
    #[arg(long = "tls")]
    tls: Vec<u16>,
    /// TLS certificate.
    #[arg(long = "crt")]
    crt: Option<std::path::PathBuf>,
    /// TLS key.
    #[arg(long = "key")]
    key: Option<std::path::PathBuf>,
    /// The version to report (`ServiceVersion`).
    #[arg(long, env = "SERVICE_VERSION", default_value = "")]
    version: String,
}

/// The client's flags.
#[derive(Parser, Debug)]
#[command(name = "client")]
struct ClientArgs {
    /// `http://host[:port]/path` or `grpc://host:port`.
    url: String,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request header `name:value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// How many requests (their answers are separated by a blank line).
    #[arg(long, default_value_t = 1)]
    count: usize,
}

/// The name this pod answers with: the pod's name, as a container's hostname is in Kubernetes.
fn pod_name() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let invoked_as_client = std::path::Path::new(&args[0]).file_name().is_some_and(|n| n == "client");
    if invoked_as_client {
        return client(ClientArgs::parse_from(&args)).await;
    }
    if args.get(1).is_some_and(|a| a == "client") {
        args.remove(0);
        return client(ClientArgs::parse_from(&args)).await;
    }
    server(ServerArgs::parse_from(&args)).await
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let identity = EchoIdentity {
        pod: pod_name(),
        namespace: std::env::var("POD_NAMESPACE").unwrap_or_default(),
        service: String::new(),
        version: args.version.clone(),
    };
    let tls_files = args.crt.as_ref().zip(args.key.as_ref()).is_some_and(|(c, k)| c.exists() && k.exists());
    if !args.tls.is_empty() && !tls_files {
        eprintln!("nodus-echo-advanced: no --crt/--key files; TLS ports {:?} answer in plaintext", args.tls);
    }
    let mut ports: Vec<u16> = args.ports.iter().chain(&args.grpc).chain(&args.tcp).chain(&args.tls).copied().collect();
    if ports.is_empty() {
        ports.push(8080);
    }
    ports.sort_unstable();
    ports.dedup();
    let mut servers = tokio::task::JoinSet::new();
    for port in ports {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        println!("nodus-echo-advanced listening on {}", listener.local_addr()?);
        servers.spawn(serve_as(listener, identity.clone(), AnswerFormat::Text));
    }
    if let Some(result) = servers.join_next().await {
        result.context("echo server task")?.context("echo server")?;
    }
    Ok(())
}

async fn client(args: ClientArgs) -> anyhow::Result<()> {
    let mut out = String::new();
    for index in 0..args.count.max(1) {
        let answer = if let Some(rest) = args.url.strip_prefix("grpc://") {
            grpc_call(&args, rest).await?
        } else if args.url.starts_with("http://") {
            http_request(&args).await?
        } else {
            bail!("unsupported URL {:?}: http:// or grpc://", args.url);
        };
        if index > 0 {
            out.push('\n');
        }
        out.push_str(&render_answer(index, &answer));
    }
    print!("{out}");
    Ok(())
}

fn parse_header(spec: &str) -> anyhow::Result<(http::HeaderName, http::HeaderValue)> {
    let (name, value) = spec.split_once(':').with_context(|| format!("header {spec:?} is not name:value"))?;
    Ok((name.trim().parse()?, value.trim().parse()?))
}

async fn http_request(args: &ClientArgs) -> anyhow::Result<ClientAnswer> {
    let uri: http::Uri = args.url.parse().with_context(|| format!("URL {:?}", args.url))?;
    let mut request = http::Request::builder().method(args.method.as_str()).uri(uri);
    for spec in &args.headers {
        let (name, value) = parse_header(spec)?;
        request = request.header(name, value);
    }
    let request = request.body(Empty::<bytes::Bytes>::new())?;
    // The pod's resolver (cluster DNS) finds the host; redirects are answers, never followed.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(request).await.with_context(|| format!("requesting {}", args.url))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.context("reading the answer")?.to_bytes();
    Ok(ClientAnswer {
        url: args.url.clone(),
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn grpc_call(args: &ClientArgs, authority: &str) -> anyhow::Result<ClientAnswer> {
    use nodus_echo::proto::{echo_client::EchoClient, EchoRequest};
    let authority = authority.trim_end_matches('/');
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let mut request = tonic::Request::new(EchoRequest { message: String::new() });
    for spec in &args.headers {
        let (name, value) = parse_header(spec)?;
        let name = tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes())?;
        request.metadata_mut().insert(name, value.to_str()?.parse()?);
    }
    let answer = EchoClient::new(channel).echo(request).await;
    Ok(match answer {
        Ok(response) => {
            let context = response.into_inner().context.unwrap_or_default();
            let mut report = EchoReport {
                pod: context.pod,
                namespace: context.namespace,
                method: "POST".into(),
                path: context.full_method,
                host: context.authority,
                protocol: context.protocol,
                remote_addr: context.remote_addr,
                ..Default::default()
            };
            for header in context.headers {
                report.headers.entry(header.name).or_default().push(header.value);
            }
            let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
            ClientAnswer {
                url: args.url.clone(),
                status: 200,
                headers: Vec::new(),
                body: render_request(&report, 200, port, ""),
            }
        }
        // A failed call is an answer too: its gRPC code in place of an HTTP status.
        Err(status) => ClientAnswer {
            url: args.url.clone(),
            status: status.code() as u16,
            headers: Vec::new(),
            body: String::new(),
        },
    })
}
