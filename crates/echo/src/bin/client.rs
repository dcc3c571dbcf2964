//! `nodus-echo-client`: a client for the echo workload, run as a process inside a pod so that
//! the mesh's eBPF redirect captures it like any application.
//!
//! Two modes:
//! - `--count N`: N requests, one JSON line each (status, answering pod, what it saw), for tests.
//! - `--duration D --rate R`: a steady load, one JSON summary line per `--report-every`, for the
//!   demo and soak tests.
//!
//! `--target` is `host:port`: a Service name (resolved once, at start, through the pod's DNS,
//! as an application would) or an address. Every connection goes to that address whatever
//! `--host` says, so the `Host`/`:authority` can differ from it.

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodus_echo::proto::{echo_client::EchoClient, EchoRequest, EchoResponse};
use nodus_echo::EchoReport;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.1 with keep-alive.
    H1,
    /// HTTP/2 prior knowledge.
    H2,
    /// gRPC (`nodus.echo.v1.Echo`).
    Grpc,
}

/// A client for the Nodus echo workload.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where to connect, `host:port`: a Service name (`echo:80`, resolved through the pod's
    /// DNS), a cluster IP or a pod IP.
    #[arg(long)]
    target: String,
    /// Host / :authority to send (defaults to --target).
    #[arg(long)]
    host: Option<String>,
    /// Request path (HTTP).
    #[arg(long, default_value = "/")]
    path: String,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Protocol.
    #[arg(long, value_enum, default_value = "h1")]
    protocol: Protocol,
    /// gRPC method of nodus.echo.v1.Echo: Echo, EchoTwo or EchoThree.
    #[arg(long, default_value = "Echo")]
    grpc_method: String,
    /// Extra request header `name:value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Open a new connection for every request (HTTP/1.1): connection churn.
    #[arg(long)]
    new_connection: bool,
    /// Number of requests (count mode).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Run for this many seconds at --rate (load mode) instead of --count.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Requests per second in load mode.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds between summaries in load mode.
    #[arg(long, default_value_t = 2.0)]
    report_every: f64,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// One request's result (count mode).
#[derive(Serialize, Debug)]
struct Outcome {
    status: u16,
    grpc_status: Option<i32>,
    pod: Option<String>,
    latency_ms: f64,
    report: Option<EchoReport>,
    response_headers: BTreeMap<String, String>,
    error: Option<String>,
    /// The answer's body when it is not an echo report (a proxy's error, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    /// A gRPC call that never left the client and was sent again (see `never_sent`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unsent_retried: bool,
}

/// One summary (load mode).
#[derive(Serialize, Debug, Default)]
struct Summary {
    elapsed_secs: f64,
    requests: u64,
    ok: u64,
    by_pod: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    /// The first error message seen for each failing status, to say why requests failed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    errors: BTreeMap<String, String>,
    /// gRPC calls sent again because they never left the client.
    unsent_retries: u64,
    p50_ms: f64,
    p99_ms: f64,
}

enum Sender {
    Http(Client<FixedConnector, Empty<bytes::Bytes>>),
    Grpc(EchoClient<tonic::transport::Channel>),
}

/// Connects every request to one address, whatever the URI's host.
#[derive(Clone)]
struct FixedConnector(SocketAddr);

impl tower::Service<http::Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let target = self.0;
        Box::pin(async move {
            let stream = TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

fn parse_headers(specs: &[String]) -> anyhow::Result<Vec<(http::HeaderName, http::HeaderValue)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, value) = spec.split_once(':').with_context(|| format!("header {spec:?} is not name:value"))?;
            Ok((name.trim().parse()?, value.trim().parse()?))
        })
        .collect()
}

async fn one_request(args: &Args, sender: &mut Sender, headers: &[(http::HeaderName, http::HeaderValue)]) -> Outcome {
    let started = Instant::now();
    let host = args.host.clone().unwrap_or_else(|| args.target.clone());
    let mut outcome = Outcome {
        status: 0,
        grpc_status: None,
        pod: None,
        latency_ms: 0.0,
        report: None,
        response_headers: BTreeMap::new(),
        error: None,
        body: None,
        unsent_retried: false,
    };
    match sender {
        Sender::Http(client) => {
            let mut request = http::Request::builder()
                .method(args.method.as_str())
                .uri(format!("http://{host}{}", args.path))
                .version(if args.protocol == Protocol::H2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 });
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let request = match request.body(Empty::new()) {
                Ok(request) => request,
                Err(error) => {
                    outcome.error = Some(error.to_string());
                    return outcome;
                }
            };
            let sent = tokio::time::timeout(Duration::from_millis(args.timeout_ms), client.request(request)).await;
            match sent {
                Err(_) => outcome.error = Some("timed out".into()),
                Ok(Err(error)) => outcome.error = Some(format!("{error:?}")),
                Ok(Ok(response)) => {
                    outcome.status = response.status().as_u16();
                    for (name, value) in response.headers() {
                        outcome
                            .response_headers
                            .insert(name.to_string(), String::from_utf8_lossy(value.as_bytes()).into());
                    }
                    match response.into_body().collect().await {
                        Ok(body) => {
                            let body = body.to_bytes();
                            outcome.report = serde_json::from_slice::<EchoReport>(&body).ok();
                            outcome.pod = outcome.report.as_ref().map(|r| r.pod.clone());
                            // Not the echo's report (a proxy's error answer): its text says why.
                            if outcome.report.is_none() {
                                outcome.body = Some(String::from_utf8_lossy(&body).trim_end().to_owned());
                            }
                        }
                        Err(error) => outcome.error = Some(error.to_string()),
                    }
                }
            }
        }
        Sender::Grpc(client) => {
            let mut result = grpc_call(args, client, headers).await;
            // gRPC's transparent retry (gRFC A6), which tonic lacks: a call that never left this
            // client (its connection went away, GOAWAY, between being picked and taking the call)
            // is sent once more. A call that reached the proxy is never sent twice.
            if matches!(&result, Err(status) if never_sent(status)) {
                outcome.unsent_retried = true;
                result = grpc_call(args, client, headers).await;
            }
            outcome.status = 200;
            match result {
                Ok(response) => {
                    outcome.grpc_status = Some(0);
                    outcome.pod = response.into_inner().context.map(|c| c.pod);
                }
                Err(status) => {
                    outcome.grpc_status = Some(status.code() as i32);
                    // A transport failure's cause is the status's source, not its message.
                    outcome.error = Some(match std::error::Error::source(&status) {
                        Some(source) => format!("{}: {source:?}", status.message()),
                        None => status.message().to_owned(),
                    });
                }
            }
        }
    }
    outcome.latency_ms = started.elapsed().as_secs_f64() * 1e3;
    outcome
}

async fn grpc_call(
    args: &Args,
    client: &mut EchoClient<tonic::transport::Channel>,
    headers: &[(http::HeaderName, http::HeaderValue)],
) -> Result<tonic::Response<EchoResponse>, tonic::Status> {
    let mut request = tonic::Request::new(EchoRequest { message: "nodus".into() });
    request.set_timeout(Duration::from_millis(args.timeout_ms));
    for (name, value) in headers {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_bytes()),
        ) {
            request.metadata_mut().insert(key, value);
        }
    }
    match args.grpc_method.as_str() {
        "EchoTwo" => client.echo_two(request).await,
        "EchoThree" => client.echo_three(request).await,
        _ => client.echo(request).await,
    }
}

/// Whether a failed call never reached the connection: hyper cancels the requests still queued
/// for a connection that closes, and hands them back unsent.
fn never_sent(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        if error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        cause = error.source();
    }
    false
}

async fn make_sender(args: &Args, address: SocketAddr) -> anyhow::Result<Sender> {
    let connector = FixedConnector(address);
    Ok(match args.protocol {
        Protocol::H1 => {
            let mut builder = Client::builder(TokioExecutor::new());
            if args.new_connection {
                builder.pool_max_idle_per_host(0);
            }
            Sender::Http(builder.build(connector))
        }
        Protocol::H2 => Sender::Http(Client::builder(TokioExecutor::new()).http2_only(true).build(connector)),
        Protocol::Grpc => {
            let host = args.host.clone().unwrap_or_else(|| args.target.clone());
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}"))?
                .connect_with_connector_lazy(connector);
            Sender::Grpc(EchoClient::new(channel))
        }
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let headers = parse_headers(&args.headers)?;
    let address = tokio::net::lookup_host(&args.target)
        .await
        .with_context(|| format!("resolving {}", args.target))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{} has no IPv4 address", args.target))?;
    let mut sender = make_sender(&args, address).await?;
    let Some(duration) = args.duration_secs else {
        for _ in 0..args.count {
            let outcome = one_request(&args, &mut sender, &headers).await;
            println!("{}", serde_json::to_string(&outcome)?);
        }
        return Ok(());
    };
    if args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    // Load mode: requests at a steady rate, each on its own task.
    let args = Arc::new(args);
    let headers = Arc::new(headers);
    let window: Arc<Mutex<(Summary, Vec<f64>)>> = Arc::default();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs_f64(args.report_every),
        Duration::from_secs_f64(args.report_every),
    );
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(duration);
    let print = |window: &Mutex<(Summary, Vec<f64>)>| -> anyhow::Result<()> {
        let (mut summary, mut latencies) = std::mem::take(&mut *window.lock().unwrap_or_else(|p| p.into_inner()));
        latencies.sort_by(f64::total_cmp);
        summary.elapsed_secs = started.elapsed().as_secs_f64();
        summary.p50_ms = percentile(&latencies, 50.0);
        summary.p99_ms = percentile(&latencies, 99.0);
        println!("{}", serde_json::to_string(&summary)?);
        Ok(())
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let (args, headers, window) = (args.clone(), headers.clone(), window.clone());
                let mut sender = match &sender {
                    Sender::Http(client) => Sender::Http(client.clone()),
                    Sender::Grpc(client) => Sender::Grpc(client.clone()),
                };
                tokio::spawn(async move {
                    let outcome = one_request(&args, &mut sender, &headers).await;
                    let mut guard = window.lock().unwrap_or_else(|p| p.into_inner());
                    let (summary, latencies) = &mut *guard;
                    summary.requests += 1;
                    summary.unsent_retries += u64::from(outcome.unsent_retried);
                    let ok = outcome.error.is_none() && outcome.status < 500 && outcome.grpc_status.unwrap_or(0) == 0;
                    if ok {
                        summary.ok += 1;
                        latencies.push(outcome.latency_ms);
                    }
                    let status = match (outcome.grpc_status, &outcome.error) {
                        (Some(code), _) => format!("grpc-{code}"),
                        (None, Some(_)) if outcome.status == 0 => "error".to_owned(),
                        _ => outcome.status.to_string(),
                    };
                    if let (false, Some(error)) = (ok, &outcome.error) {
                        summary.errors.entry(status.clone()).or_insert_with(|| error.clone());
                    }
                    *summary.by_status.entry(status).or_default() += 1;
                    if let Some(pod) = outcome.pod {
                        *summary.by_pod.entry(pod).or_default() += 1;
                    }
                });
            }
            _ = report.tick() => print(&window)?,
            _ = tokio::time::sleep_until(end) => {
                // Let in-flight requests land in the last summary.
                tokio::time::sleep(Duration::from_millis(200)).await;
                print(&window)?;
                return Ok(());
            }
        }
    }
}
