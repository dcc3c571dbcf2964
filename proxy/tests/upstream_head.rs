//! An answer to HEAD has no content (RFC 9110 §9.3.2), whatever the endpoint sends after the
//! head. hyper's own HTTP/2 server sends a HEAD answer's body as DATA frames, which the h2 client
//! treats as a protocol error and resets: the client used to get a reset stream (h2spec
//! `generic/4/2` through the proxy). The endpoint here is that real hyper server over TCP.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodus_proxy::core::body::ProxyBody;
use nodus_proxy::transport::pool::ConnectionPool;
use nodus_proxy::transport::UpstreamProtocol;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// An HTTP/2 endpoint answering every request, HEAD included, with a 5-byte body.
async fn endpoint_with_a_body_for_head() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_request: http::Request<hyper::body::Incoming>| async {
                Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service),
            );
        }
    });
    addr
}

fn request(method: &str, addr: SocketAddr) -> http::Request<ProxyBody> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}/"))
        .version(http::Version::HTTP_2)
        .body(ProxyBody::from_bytes(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_head_answer_ends_after_its_head_even_when_the_endpoint_sends_a_body() {
    let addr = endpoint_with_a_body_for_head().await;
    let pool = Arc::new(ConnectionPool::new(addr, None));
    let response = pool.send(request("HEAD", addr), UpstreamProtocol::Http2).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "5", "the head a GET would get");
    let body = response.into_body().collect().await.expect("no reset: the answer ends after its head");
    assert!(body.to_bytes().is_empty());
    // The connection stays usable, and GET gets its content.
    let response = pool.send(request("GET", addr), UpstreamProtocol::Http2).await.unwrap();
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "hello");
}
