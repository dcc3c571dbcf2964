//! Hostile clients against the outbound listener, written as raw bytes on the wire (a client
//! library would refuse to misbehave): oversized request heads, a slowloris head, HTTP/2 rapid
//! reset (CVE-2023-44487) and a CONTINUATION flood. Each time the proxy stays up, the attacking
//! connection is ended, and a well-behaved client is served. In-process on loopback with a fixed
//! original destination (see support/loopback.rs for why that is not a mock).
#![allow(clippy::unwrap_used)]

#[path = "support/loopback.rs"]
mod loopback;

use nodus_harness::h2_frames::{continuation_flood_start, continuation_frame, has_goaway, rapid_reset};
use nodus_proxy::core::limits::ConnectionLimits;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An echo backend and a proxy in front of it whose Service port speaks `app_protocol`.
async fn start(app_protocol: &str, limits: ConnectionLimits) -> SocketAddr {
    let echo_port = loopback::start_echo().await;
    loopback::start_proxy_in_front_of(echo_port, app_protocol, limits).await.outbound
}

/// Reads until the peer closes or `timeout` passes; returns what arrived and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (received, false),
        }
    }
}

async fn well_behaved_http1(proxy: SocketAddr) {
    let answer = nodus_echo::http1_get(proxy, "echo", "/", &[]).await.unwrap();
    assert_eq!(answer.status, 200, "a well-behaved client is served");
}

async fn well_behaved_h2(proxy: SocketAddr) {
    let answer = nodus_echo::h2c_get(proxy, "echo", "/", &[]).await.unwrap();
    assert_eq!(answer.status, 200, "a well-behaved HTTP/2 client is served");
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_and_others_are_served() {
    let limits = ConnectionLimits { max_header_bytes: 16 * 1024, ..Default::default() };
    let proxy = start("http", limits).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let head = format!("GET / HTTP/1.1\r\nHost: echo\r\nx-big: {}\r\n\r\n", "a".repeat(64 * 1024));
    // The proxy may answer before reading everything; a failed write then is fine.
    let _ = stream.write_all(head.as_bytes()).await;
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    well_behaved_http1(proxy).await;
}

#[tokio::test]
async fn a_slowloris_request_head_is_cut_off_and_others_are_served() {
    let limits = ConnectionLimits { header_read_timeout: Duration::from_secs(1), ..Default::default() };
    let proxy = start("http", limits).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nx-slow: 1\r\n").await.unwrap();
    // One more header line every 300 ms, never the end of the head.
    let mut closed = false;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if stream.write_all(format!("x-slow-{i}: 1\r\n").as_bytes()).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1024];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await {
            closed = true;
            break;
        }
        if i == 2 {
            well_behaved_http1(proxy).await;
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "the slow head was cut off");
    assert!(elapsed < Duration::from_secs(4), "within the header read timeout ({elapsed:?})");
    well_behaved_http1(proxy).await;
}

#[tokio::test]
async fn http2_rapid_reset_gets_goaway_and_others_are_served() {
    let proxy = start("http2", ConnectionLimits::default()).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    // Open a stream and cancel it at once, 5,000 times.
    let _ = stream.write_all(&rapid_reset(5000)).await;
    let (received, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(has_goaway(&received), "the proxy sent GOAWAY ({} bytes received)", received.len());
    assert!(closed, "and closed the connection");
    well_behaved_h2(proxy).await;
}

#[tokio::test]
async fn an_http2_continuation_flood_is_cut_off_and_others_are_served() {
    let limits = ConnectionLimits { max_header_bytes: 16 * 1024, ..Default::default() };
    let proxy = start("http2", limits).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(&continuation_flood_start()).await.unwrap();
    // CONTINUATION frames, each a 4 KiB literal header, never END_HEADERS: 64 MiB if unbounded.
    let continuation = continuation_frame();
    let mut sent = 0usize;
    let mut write_failed = false;
    for _ in 0..16 * 1024 {
        if stream.write_all(&continuation).await.is_err() {
            write_failed = true;
            break;
        }
        sent += continuation.len();
    }
    let (received, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        write_failed || closed || has_goaway(&received),
        "the flood was refused (sent {sent} bytes, GOAWAY {}, closed {closed})",
        has_goaway(&received)
    );
    assert!(sent < 64 * 1024 * 1024 || has_goaway(&received), "not all 64 MiB were taken in silently");
    well_behaved_h2(proxy).await;
}
