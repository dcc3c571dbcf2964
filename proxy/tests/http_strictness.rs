//! HTTP/1.1 parsing as strict as the RFCs ask, as raw bytes on the wire (a client library would
//! not send these): each case is a request a proxy and an application could read differently,
//! with the answer RFC 9110/9112 give for it, and what the application saw when it was passed
//! on. Backend answers that cannot be passed on intact are refused too, and a client's broken
//! body is the client's 400, never an endpoint failure. In-process on loopback with a fixed
//! original destination (see support/loopback.rs for why that is not a mock).
#![allow(clippy::unwrap_used)]

#[path = "support/loopback.rs"]
mod loopback;

use nodus_proxy::app::Listening;
use nodus_proxy::core::limits::ConnectionLimits;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy in front of a backend on `backend_port`, its Service port declared HTTP.
async fn start_with(backend_port: u16) -> Listening {
    loopback::start_proxy_in_front_of(backend_port, "http", ConnectionLimits::default()).await
}

async fn start() -> SocketAddr {
    start_with(loopback::start_echo().await).await.outbound
}

/// Sends `bytes` on a new connection and reads until the proxy closes it (or 5 s pass).
async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    // The proxy may answer and close before reading everything; a failed write then is fine.
    let _ = stream.write_all(bytes).await;
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

/// The echo's JSON report in an answer.
fn report(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// The request lines the echo has seen.
async fn seen(proxy: SocketAddr) -> Vec<String> {
    let answer = exchange(proxy, b"GET /.nodus-echo/seen HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").await;
    serde_json::from_value(report(&answer)).unwrap()
}

#[tokio::test]
async fn malformed_and_ambiguous_requests_get_the_rfcs_answer_and_never_reach_the_application() {
    let proxy = start().await;
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    // (what, bytes, expected status)
    let cases: Vec<(&str, String, &str)> = vec![
        ("no Host (RFC 9112 §3.2)", "GET /no-host HTTP/1.1\r\n\r\n".into(), "400"),
        ("two Host fields", "GET /two-hosts HTTP/1.1\r\nHost: echo\r\nHost: evil\r\n\r\n".into(), "400"),
        ("Host with userinfo", "GET /userinfo HTTP/1.1\r\nHost: user@echo\r\n\r\n".into(), "400"),
        ("Host with a path", "GET /host-path HTTP/1.1\r\nHost: echo/x\r\n\r\n".into(), "400"),
        ("Host with a bad port", "GET /host-port HTTP/1.1\r\nHost: echo:http\r\n\r\n".into(), "400"),
        ("asterisk-form for GET", "GET * HTTP/1.1\r\nHost: echo\r\n\r\n".into(), "400"),
        ("a bare word as target", "GET abc HTTP/1.1\r\nHost: echo\r\n\r\n".into(), "400"),
        ("authority-form for GET", "GET echo:80 HTTP/1.1\r\nHost: echo\r\n\r\n".into(), "400"),
        ("CONNECT", "CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n".into(), "405"),
        (
            "a transfer coding hyper would drop",
            "POST /gzip HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(),
            "501",
        ),
        ("an encoded slash in the path", "GET /a%2Fsecret HTTP/1.1\r\nHost: echo\r\n\r\n".into(), "400"),
        ("a bad percent-escape", "GET /a%zz HTTP/1.1\r\nHost: echo\r\n\r\n".into(), "400"),
        ("a space in the target", "GET /a b HTTP/1.1\r\nHost: echo\r\n\r\n".into(), "400"),
        ("a bare CR in a header (RFC 9112 §2.2)", "GET /cr HTTP/1.1\r\nHost: echo\rx-a: b\r\n\r\n".into(), "400"),
        ("whitespace before the colon", "GET /ws HTTP/1.1\r\nHost: echo\r\nx-a : b\r\n\r\n".into(), "400"),
        ("an obsolete folded header", "GET /fold HTTP/1.1\r\nHost: echo\r\nx-a: b\r\n c\r\n\r\n".into(), "400"),
        ("a non-numeric Content-Length", "POST /cl HTTP/1.1\r\nHost: echo\r\nContent-Length: 1x\r\n\r\n".into(), "400"),
        (
            "two different Content-Length values",
            "POST /cl2 HTTP/1.1\r\nHost: echo\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(),
            "400",
        ),
        (
            "150 headers within the size limit",
            format!("GET /many HTTP/1.1\r\nHost: echo\r\n{many_headers}Connection: close\r\n\r\n"),
            "200",
        ),
        (
            "a leading empty line (RFC 9112 §2.2)",
            "\r\nGET /lead HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n".into(),
            "200",
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes, expected) in &cases {
        let answer = exchange(proxy, bytes.as_bytes()).await;
        if status(&answer) != *expected {
            failures.push(format!("{what}: expected {expected}, got {:?}", answer.lines().next()));
        }
        if *expected != "200" && !answer.to_ascii_lowercase().contains("connection: close") && !answer.is_empty() {
            failures.push(format!("{what}: the connection is not closed after a refusal: {answer:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // CONNECT's 405 says what is allowed (RFC 9110 §15.5.6).
    let connect = exchange(proxy, b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n").await;
    assert!(connect.to_ascii_lowercase().contains("\r\nallow: get, head, post"), "{connect}");
    // Only the good ones reached the application.
    let seen = seen(proxy).await;
    assert_eq!(seen, ["GET /many", "GET /lead"], "what the application saw");
}

#[tokio::test]
async fn an_absolute_form_target_sets_the_host_and_goes_on_in_origin_form() {
    let proxy = start().await;
    let answer =
        exchange(proxy, b"GET http://echo.demo:80/x?q=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), "200", "{answer}");
    let report = report(&answer);
    assert_eq!(report["headers"]["host"], serde_json::json!(["echo.demo:80"]), "one Host, the target's");
    assert_eq!(report["path"], "/x?q=1");
}

#[tokio::test]
async fn paths_reach_the_application_in_the_form_routes_and_policies_saw() {
    let proxy = start().await;
    for (path, expected) in [
        ("/echo/../secret", "/secret"),
        ("//a//b", "/a/b"),
        ("/%61/%2e%2e/b%7E", "/b~"),
        ("/a/./b/?x=/../", "/a/b/?x=/../"),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n");
        let answer = exchange(proxy, request.as_bytes()).await;
        assert_eq!(status(&answer), "200", "{path}: {answer}");
        assert_eq!(report(&answer)["path"], expected, "{path}");
    }
}

#[tokio::test]
async fn request_smuggling_with_both_length_and_chunked_never_reaches_the_application() {
    let proxy = start().await;
    // CL.TE: a front end reading Content-Length would see one request; one reading chunked, two.
    let smuggle = b"POST /front HTTP/1.1\r\nHost: echo\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n";
    let answer = exchange(proxy, smuggle).await;
    // RFC 9112 §6.1: refuse, or read by the chunked framing alone and close the connection.
    let closed = answer.to_ascii_lowercase().contains("connection: close") || !answer.contains("/smuggled");
    assert!(status(&answer) == "400" || closed, "{answer}");
    assert!(!seen(proxy).await.iter().any(|line| line.contains("/smuggled")), "the smuggled request reached the app");
}

#[tokio::test]
async fn an_http2_host_that_differs_from_authority_is_refused() {
    let proxy = start().await;
    let answer = nodus_echo::h2c_get(proxy, "echo", "/", &[("host", "evil")]).await.unwrap();
    assert_eq!(answer.status, 400);
    let answer = nodus_echo::h2c_get(proxy, "echo", "/", &[]).await.unwrap();
    assert_eq!(answer.status, 200);
}

/// A backend that answers every request on a connection with `answer`.
async fn raw_backend(answer: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 * 1024];
                let mut head = Vec::new();
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buffer[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_backend_answer_with_length_and_chunked_reaches_the_client_whole() {
    let backend = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
    let proxy = start_with(backend).await.outbound;
    let answer = exchange(proxy, b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("content-length: 3"), "the stale length is gone: {answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let decoded: String = if answer.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body.split("\r\n").skip(1).step_by(2).collect()
    } else {
        body.to_owned()
    };
    assert_eq!(decoded, "hello world", "the whole body: {answer:?}");
}

#[tokio::test]
async fn a_backend_answer_with_a_coding_the_proxy_would_lose_is_a_502() {
    let backend =
        raw_backend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n").await;
    let proxy = start_with(backend).await.outbound;
    let answer = exchange(proxy, b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), "502", "{answer}");
}

#[tokio::test]
async fn a_clients_broken_body_is_its_400_and_never_ejects_the_endpoint() {
    let listening = start_with(loopback::start_echo().await).await;
    let proxy = listening.outbound;
    for round in 0..8 {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        // The head and a first chunk go upstream; then the framing breaks, or the body stops short.
        let head: &[u8] = if round % 2 == 0 {
            b"POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
        } else {
            b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 100\r\n\r\nabcd"
        };
        stream.write_all(head).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if round % 2 == 0 {
            stream.write_all(b"zz-not-a-size\r\n").await.unwrap();
        } else {
            stream.shutdown().await.unwrap();
        }
        let answer = read_answer(&mut stream).await;
        assert!(answer.is_empty() || status(&answer) == "400", "round {round}: {answer}");
    }
    // Eight client failures in a row: the endpoint is still served and never ejected.
    let answer = exchange(proxy, b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), "200", "{answer}");
    let admin = listening.admin;
    let metrics =
        tokio::task::spawn_blocking(move || nodus_harness::http_get(admin, "/metrics").unwrap().1).await.unwrap();
    assert!(!metrics.lines().any(|l| l.starts_with("nodus_endpoint_ejections_total{")), "{metrics}");
    assert!(metrics.contains(r#"status_code="400""#), "the 400s are counted as such: {metrics}");
}

#[tokio::test]
async fn a_later_http_1_minor_version_is_served_as_http_1_1() {
    // RFC 9110 §2.5: process it as the highest 1.x minor version implemented, and answer 1.1.
    let proxy = start().await;
    let answer = exchange(proxy, b"GET /minor HTTP/1.2\r\nHost: echo\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(report(&answer)["protocol"], "HTTP/1.1", "{answer}");
    // HTTP/2.0 and HTTP/1.10 are not HTTP/1 minor versions: refused, never forwarded.
    for line in ["GET /major HTTP/2.0", "GET /ten HTTP/1.10"] {
        let answer = exchange(proxy, format!("{line}\r\nHost: echo\r\n\r\n").as_bytes()).await;
        assert!(matches!(status(&answer), "400" | "505"), "{line}: {answer}");
    }
    let seen = seen(proxy).await;
    assert!(seen.iter().any(|line| line == "GET /minor"), "{seen:?}");
    assert!(!seen.iter().any(|line| line == "GET /major" || line == "GET /ten"), "{seen:?}");
}

#[tokio::test]
async fn an_invalid_preface_on_a_port_declared_http2_gets_a_goaway() {
    // RFC 9113 §3.4: an invalid connection preface is a connection error of type PROTOCOL_ERROR.
    let backend_port = loopback::start_echo().await;
    let listening = loopback::start_proxy_in_front_of(backend_port, "http2", ConnectionLimits::default()).await;
    let mut stream = TcpStream::connect(listening.outbound).await.unwrap();
    stream.write_all(b"INVALID CONNECTION PREFACE\r\n\r\n").await.unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    assert!(nodus_harness::h2_frames::has_goaway(&received), "{:?}", String::from_utf8_lossy(&received));
    // An HTTP/1.1 client of the same port is still served.
    let mut stream = TcpStream::connect(listening.outbound).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(status(&answer), "200", "{answer}");
}
