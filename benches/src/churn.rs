//! Connection churn between nodes (part of scenario B).
//!
//! Two measures, each interleaved with its baseline:
//! - **mTLS handshakes per second** accepted by node-2's proxy on its tunnel port, against a
//!   bare tokio-rustls server with the same configuration (same crypto provider, key exchange,
//!   client-certificate verification and certificate) in node-2's namespace, on one thread like
//!   the proxy's one worker. Clients in node-1's namespace present a workload certificate from
//!   the mesh CA, complete TLS 1.3 and close: what a source proxy does for each new peer,
//!   identity pair or replaced connection. The clients share the 2 cores with the server, so
//!   the rate is bounded by them as much as by the server: the comparable figure is the
//!   server's CPU per handshake (the proxy process's, the server thread's), whose ratio is the
//!   proxy's accept-path cost over rustls itself.
//! - **a new application connection per request** (`oha --disable-keepalive`) through the whole
//!   path against direct: pods' connection churn costs the proxies accepts, not handshakes, as
//!   tunnel connections are pooled per peer and identity pair.

use anyhow::{Context, Result};
use nodus_harness::{NetNs, Pod};
use nodus_identity::tls::{client_config, server_config, server_name_for, IdentityResolver};
use nodus_identity::{CertificateAuthority, SpiffeId, WorkloadCertificate, WorkloadKey};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent handshaking clients.
const CLIENTS: usize = 16;

fn issue(ca: &CertificateAuthority, identity: &SpiffeId) -> Result<WorkloadCertificate> {
    let key = WorkloadKey::generate(identity.clone())?;
    let signed = ca.sign(&key.csr_pem()?, identity, Duration::from_secs(3600))?;
    Ok(key.with_certificate(&signed)?)
}

/// The credentials both sides use: the client's and the backend's identities, from the CA the
/// controller runs with.
pub struct ChurnCredentials {
    ca: CertificateAuthority,
    client: SpiffeId,
    server: SpiffeId,
}

impl ChurnCredentials {
    /// Loads the controller's CA from `ca_dir`.
    pub fn load(ca_dir: &Path, client: SpiffeId, server: SpiffeId) -> Result<Self> {
        let ca = CertificateAuthority::from_pem(
            &std::fs::read_to_string(ca_dir.join("ca.pem"))?,
            &std::fs::read_to_string(ca_dir.join("ca-key.pem"))?,
        )?;
        Ok(Self { ca, client, server })
    }
}

/// A bare rustls server running on one thread of this process.
pub struct BaselineServer {
    /// The server's thread.
    pub handle: std::thread::JoinHandle<()>,
    /// Its kernel thread id, for its CPU time.
    pub tid: u32,
}

/// CPU seconds (user + system) a thread of this process has used.
pub fn thread_cpu_seconds(tid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// A bare rustls server on `addr` in `netns` (one thread), completing handshakes and closing.
/// Runs until `stop` is set.
pub fn start_baseline_server(
    netns: &NetNs,
    addr: SocketAddr,
    credentials: &ChurnCredentials,
    stop: Arc<AtomicBool>,
) -> Result<BaselineServer> {
    let certificate = issue(&credentials.ca, &credentials.server)?;
    let resolver = Arc::new(IdentityResolver::default());
    resolver.insert(&certificate)?;
    let bundle = nodus_identity::tls::TrustBundle::from_pem(credentials.ca.certificate_pem())?;
    let config = Arc::new(server_config(resolver, &bundle)?);
    let netns = netns.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = netns.run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
                // "<pid>/task/<tid>": this thread runs the whole server.
                let tid = std::fs::read_link("/proc/thread-self").ok()?.file_name()?.to_str()?.parse::<u32>().ok()?;
                let _ = ready_tx.send(tid);
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                while !stop.load(Ordering::Relaxed) {
                    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
                    let Ok(Ok((stream, _))) = accepted else { continue };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        if let Ok(mut tls) = acceptor.accept(stream).await {
                            use tokio::io::AsyncWriteExt;
                            let _ = tls.shutdown().await;
                        }
                    });
                }
                Some(())
            })
        });
    });
    let tid = ready_rx.recv_timeout(Duration::from_secs(5)).context("the baseline TLS server did not start")?;
    Ok(BaselineServer { handle, tid })
}

/// Handshakes per second against `target` from `netns` for `seconds`: [`CLIENTS`] clients,
/// each connecting, completing mutual TLS 1.3 and closing, in a loop. Fails if any handshake
/// fails.
pub fn handshake_rate(netns: &NetNs, target: SocketAddr, credentials: &ChurnCredentials, seconds: u64) -> Result<f64> {
    let certificate = issue(&credentials.ca, &credentials.client)?;
    let bundle = nodus_identity::tls::TrustBundle::from_pem(credentials.ca.certificate_pem())?;
    let mut config = client_config(&certificate, &bundle, credentials.server.clone())?;
    // Every connection a full handshake, as between proxies that have not met (no resumption).
    config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let name = server_name_for(&credentials.server)?;
    netns.run(move || -> Result<f64> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let done = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..CLIENTS {
                let (config, name, done, failed) = (config.clone(), name.clone(), done.clone(), failed.clone());
                tasks.push(tokio::spawn(async move {
                    let connector = tokio_rustls::TlsConnector::from(config);
                    while Instant::now() < deadline {
                        let outcome = async {
                            let tcp = tokio::net::TcpStream::connect(target).await?;
                            tcp.set_nodelay(true)?;
                            let mut tls = connector.connect(name.clone(), tcp).await?;
                            use tokio::io::AsyncWriteExt;
                            tls.shutdown().await
                        }
                        .await;
                        match outcome {
                            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
            for task in tasks {
                task.await?;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let failed = failed.load(Ordering::Relaxed);
            anyhow::ensure!(failed == 0, "{failed} handshakes against {target} failed");
            Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
        })
    })?
}

/// Closed-loop requests per second with a new connection for each (`oha --disable-keepalive`).
pub fn new_connection_rps(pod: &Pod, target: &str, seconds: u64) -> Result<f64> {
    let out = pod
        .command("oha")?
        .args(["--no-tui", "--output-format", "json", "--disable-keepalive", "-c", "16", "-z"])
        .arg(format!("{seconds}s"))
        .arg(format!("http://{target}/"))
        .output()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!("oha output: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })?;
    let ok = json["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0);
    let total: f64 =
        json["statusCodeDistribution"].as_object().map(|m| m.values().filter_map(|v| v.as_f64()).sum()).unwrap_or(0.0);
    anyhow::ensure!(ok == total && ok > 0.0, "non-200 answers against {target}: {}", json["statusCodeDistribution"]);
    json["summary"]["requestsPerSec"].as_f64().context("oha summary.requestsPerSec")
}
