//! An HTTP/2 endpoint that refuses a stream unprocessed — above the last stream id of its
//! GOAWAY (a drain's GOAWAY racing the stream's opening) or reset with REFUSED_STREAM — gets the
//! request again on a new connection, body included; a stream that failed any other way is not
//! sent again (the endpoint may have acted on it).
//!
//! The refusing connection is HTTP/2 frames written by hand over real TCP: a real server's
//! drain cannot be timed to land between a client's opening of a stream and its reading of the
//! GOAWAY. Every later connection is hyper's HTTP/2 server, answering with the body it got.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodus_harness::h2_frames::{frame, PREFACE};
use nodus_proxy::core::body::ProxyBody;
use nodus_proxy::transport::pool::ConnectionPool;
use nodus_proxy::transport::UpstreamProtocol;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NO_ERROR: u32 = 0x0;
const INTERNAL_ERROR: u32 = 0x2;
const REFUSED_STREAM: u32 = 0x7;

/// How the first connection fails the first stream.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// GOAWAY with last stream id 0 and NO_ERROR: stream 1 was not processed.
    GoAwayAboveLastStream,
    /// RST_STREAM on stream 1.
    Reset(u32),
}

/// Reads the client's preface and frames until the HEADERS of stream 1, then refuses it.
async fn refuse_first_stream(mut socket: TcpStream, refusal: Refusal) {
    socket.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // our SETTINGS
    let mut preface = [0u8; PREFACE.len()];
    socket.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, PREFACE);
    loop {
        let mut head = [0u8; 9];
        socket.read_exact(&mut head).await.unwrap();
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        socket.read_exact(&mut payload).await.unwrap();
        let (kind, flags) = (head[3], head[4]);
        if kind == 0x4 && flags & 0x1 == 0 {
            socket.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(); // SETTINGS ACK
        }
        if kind == 0x1 {
            break;
        }
    }
    let refusal = match refusal {
        Refusal::GoAwayAboveLastStream => frame(0x7, 0, 0, &[0u32.to_be_bytes(), NO_ERROR.to_be_bytes()].concat()),
        Refusal::Reset(code) => frame(0x3, 0, 1, &code.to_be_bytes()),
    };
    socket.write_all(&refusal).await.unwrap();
    // Stay until the client lets go, as a draining server does.
    let mut rest = Vec::new();
    let _ = socket.read_to_end(&mut rest).await;
}

/// The endpoint: the first connection refuses, the others answer with the body they got.
/// Returns its address and the count of requests it processed.
async fn endpoint(refusal: Refusal) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let processed = Arc::new(AtomicUsize::new(0));
    let counter = processed.clone();
    tokio::spawn(async move {
        let (first, _) = listener.accept().await.unwrap();
        tokio::spawn(refuse_first_stream(first, refusal));
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = request.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(body)))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service),
            );
        }
    });
    (addr, processed)
}

fn post(addr: SocketAddr, body: &'static str) -> http::Request<ProxyBody> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/echo.Echo/Echo"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(ProxyBody::from_bytes(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn a_stream_refused_unprocessed_is_sent_again_on_a_new_connection() {
    for refusal in [Refusal::GoAwayAboveLastStream, Refusal::Reset(REFUSED_STREAM)] {
        let (addr, processed) = endpoint(refusal).await;
        let pool = Arc::new(ConnectionPool::new(addr, None));
        let response = pool.send(post(addr, "the request body"), UpstreamProtocol::Http2).await;
        let response = response.unwrap_or_else(|e| panic!("{refusal:?}: {e}"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "the request body", "{refusal:?}: the body went again, whole");
        assert_eq!(processed.load(Ordering::SeqCst), 1, "{refusal:?}: processed once");
    }
}

#[tokio::test]
async fn a_stream_that_failed_otherwise_is_not_sent_again() {
    let (addr, processed) = endpoint(Refusal::Reset(INTERNAL_ERROR)).await;
    let pool = Arc::new(ConnectionPool::new(addr, None));
    let error = pool.send(post(addr, "once only"), UpstreamProtocol::Http2).await.unwrap_err();
    assert!(
        error.to_string().contains("stream error received: unexpected internal error"),
        "the cause is named: {error}"
    );
    assert_eq!(processed.load(Ordering::SeqCst), 0, "not sent to a second connection");
}
