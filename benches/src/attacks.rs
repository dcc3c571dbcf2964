//! Memory and service under hostile clients: the release node proxy (default limits, one
//! worker) in front of the echo backend on loopback, attacked for a few seconds at a time by
//! many concurrent connections while a well-behaved client keeps sending requests. Reports the
//! proxy's RSS idle and at its peak during each attack (sampled every 20 ms), and the
//! well-behaved client's success rate and worst latency during it.

use anyhow::{Context, Result};
use nodus_harness::h2_frames::{continuation_flood_start, continuation_frame, rapid_reset};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROXY: &str = "127.0.0.1:25001";
const ADMIN: &str = "127.0.0.1:25020";
const BACKEND_PORT: u16 = 25080;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    crate::procfs::status_kib(pid, "VmRSS:") / 1024.0
}

/// One attack: a name, the number of attacking connections, and what each does in a loop.
struct Attack {
    name: &'static str,
    connections: usize,
    kind: AttackKind,
}

#[derive(Clone, Copy)]
enum AttackKind {
    /// HTTP/2 streams opened and cancelled at once, 5,000 per connection, reconnecting.
    RapidReset,
    /// CONTINUATION frames without END_HEADERS until the proxy cuts the connection.
    ContinuationFlood,
    /// An HTTP/1.1 request head trickled one header line every 500 ms, never finished.
    Slowloris,
    /// 1 MiB of request headers, reconnecting.
    OversizedHead,
}

/// A connection to the proxy from `source` (a loopback address): attackers and the
/// well-behaved client come from different addresses, as different pods would; the proxy's
/// per-source limits are part of what is measured.
async fn connect_from(source: [u8; 4]) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    socket.connect(PROXY.parse().map_err(std::io::Error::other)?).await
}

const ATTACKER: [u8; 4] = [127, 0, 0, 3];
const WELL_BEHAVED: [u8; 4] = [127, 0, 0, 2];

async fn attack_once(kind: AttackKind, stop: &AtomicBool) {
    let Ok(mut stream) = connect_from(ATTACKER).await else {
        tokio::time::sleep(Duration::from_millis(10)).await;
        return;
    };
    let mut sink = vec![0u8; 64 * 1024];
    match kind {
        AttackKind::RapidReset => {
            let _ = stream.write_all(&rapid_reset(5000)).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        AttackKind::ContinuationFlood => {
            let frame = continuation_frame();
            if stream.write_all(&continuation_flood_start()).await.is_ok() {
                while !stop.load(Ordering::Relaxed) {
                    if tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame))
                        .await
                        .map_or(true, |r| r.is_err())
                    {
                        break;
                    }
                }
            }
        }
        AttackKind::Slowloris => {
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n").await;
            let mut line = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                line += 1;
                if stream.write_all(format!("x-slow-{line}: 1\r\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        AttackKind::OversizedHead => {
            let mut head = b"GET / HTTP/1.1\r\nHost: echo\r\n".to_vec();
            for i in 0..256 {
                head.extend_from_slice(format!("x-big-{i}: {}\r\n", "a".repeat(4096)).as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            let _ = stream.write_all(&head).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut sink)).await;
        }
    }
}

/// A well-behaved HTTP/1.1 client, one request per connection, 50 per second: (ok, sent, worst ms).
async fn victim(stop: Arc<AtomicBool>) -> (u64, u64, f64) {
    let (mut ok, mut sent, mut worst) = (0, 0, 0.0f64);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        sent += 1;
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            let mut stream = connect_from(WELL_BEHAVED).await.ok()?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").await.ok()?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.ok()?;
            Some(response.starts_with(b"HTTP/1.1 200"))
        })
        .await;
        if matches!(answered, Ok(Some(true))) {
            ok += 1;
        }
        worst = worst.max(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, sent, worst)
}

struct Outcome {
    name: &'static str,
    connections: usize,
    before_rss: f64,
    peak_rss: f64,
    ok: u64,
    sent: u64,
    worst_ms: f64,
}

/// Runs the attacks; returns the markdown section.
pub fn run(args: &crate::Args, proxy_binary: &Path) -> Result<String> {
    let echo_binary = proxy_binary.with_file_name("nodus-echo");
    anyhow::ensure!(echo_binary.exists(), "{} not found: build nodus-echo", echo_binary.display());
    let work = std::env::temp_dir().join(format!("nodus-attacks-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _backend = Killed(
        Command::new(&echo_binary)
            .args(["--listen", &format!("127.0.0.1:{BACKEND_PORT}"), "--pod", "echo-0", "--namespace", "demo"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting nodus-echo")?,
    );
    let config = work.join("snapshot.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nservices:\n  - id: {{ namespace: demo, name: echo }}\n    clusterIps: [10.96.0.10]\n    ports: [{{ port: 80, targetPort: {BACKEND_PORT} }}]\n    endpoints: [{{ address: 127.0.0.1 }}]\n"
        ),
    )?;
    let proxy = Killed(
        Command::new(proxy_binary)
            .args(["--node", "bench", "--outbound-addr", PROXY, "--admin-addr", ADMIN])
            .args(["--inbound-addr", "127.0.0.1:25008", "--fixed-original-dst", "10.96.0.10:80", "--workers", "1"])
            .arg("--config-file")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nodus-proxy")?,
    );
    let pid = proxy.0.id();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let seconds = args.seconds.min(5);
    let attacks = [
        Attack {
            name: "HTTP/2 rapid reset (5,000 cancelled streams per connection)",
            connections: 64,
            kind: AttackKind::RapidReset,
        },
        Attack {
            name: "HTTP/2 CONTINUATION flood (4 KiB frames, no END_HEADERS)",
            connections: 64,
            kind: AttackKind::ContinuationFlood,
        },
        Attack {
            name: "slowloris (a header line every 500 ms, never finished)",
            connections: 2000,
            kind: AttackKind::Slowloris,
        },
        Attack { name: "oversized request heads (1 MiB)", connections: 64, kind: AttackKind::OversizedHead },
    ];
    let (idle, outcomes) = runtime.block_on(async {
        // Ready when the backend answers through it.
        for _ in 0..100 {
            if TcpStream::connect(PROXY).await.is_ok() && victim_once().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = rss_mib(pid);
        let mut outcomes = Vec::new();
        for attack in attacks {
            eprintln!("attacks: {}", attack.name);
            let stop = Arc::new(AtomicBool::new(false));
            let before_rss = rss_mib(pid);
            let peak = Arc::new(AtomicU64::new(0));
            let sampler = {
                let (stop, peak) = (stop.clone(), peak.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        peak.fetch_max((rss_mib(pid) * 1024.0) as u64, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            };
            let attackers: Vec<_> = (0..attack.connections)
                .map(|_| {
                    let stop = stop.clone();
                    let kind = attack.kind;
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            attack_once(kind, &stop).await;
                        }
                    })
                })
                .collect();
            let victim = tokio::spawn(victim(stop.clone()));
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
            let (ok, sent, worst_ms) = victim.await.unwrap_or((0, 0, f64::NAN));
            for attacker in attackers {
                attacker.abort();
            }
            let _ = sampler.await;
            outcomes.push(Outcome {
                name: attack.name,
                connections: attack.connections,
                before_rss,
                peak_rss: peak.load(Ordering::Relaxed) as f64 / 1024.0,
                ok,
                sent,
                worst_ms,
            });
            // Let the proxy close what the attack left before the next one.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        (idle, outcomes)
    });
    let alive = victim_alive(&runtime);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&work);

    let mut out = String::new();
    let _ = writeln!(out, "\n## Hostile clients: memory and service\n");
    let _ = writeln!(
        out,
        "The release node proxy with its default limits (64 KiB request heads, 10 s to send a head, 256 streams and 20 \
         early resets per HTTP/2 connection; one worker) on loopback, each attack for {seconds} s while a well-behaved \
         client sends 50 requests/s on new connections from another address (as another pod would; the attackers \
         share one, so the per-source limits apply to them). RSS sampled every 20 ms; idle RSS {idle:.1} MiB (memory a \
         finished attack used stays with the allocator, so each row starts where the previous one left).\n"
    );
    let _ = writeln!(
        out,
        "| attack | attacking connections | proxy RSS before -> peak during (MiB) | well-behaved requests OK | worst latency (ms) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for o in &outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} -> {:.1} ({:+.1}) | {}/{} | {:.0} |",
            o.name,
            o.connections,
            o.before_rss,
            o.peak_rss,
            o.peak_rss - o.before_rss,
            o.ok,
            o.sent,
            o.worst_ms
        );
    }
    let _ =
        writeln!(out, "\nThe proxy {} after the attacks.", if alive { "still answered" } else { "**did not answer**" });
    Ok(out)
}

async fn victim_once() -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(1), connect_from(WELL_BEHAVED)).await else {
        return false;
    };
    if stream.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    matches!(tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await, Ok(Ok(_)))
        && response.starts_with(b"HTTP/1.1 200")
}

fn victim_alive(runtime: &tokio::runtime::Runtime) -> bool {
    runtime.block_on(victim_once())
}
