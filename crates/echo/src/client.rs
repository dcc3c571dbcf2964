//! Minimal HTTP/1.1 and h2c clients, one connection per call, for tests and the demo's traffic.
//! They speak exactly the protocol asked for (no upgrade, no ALPN), so a test knows what went on
//! the wire.

use crate::EchoReport;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use thiserror::Error;
use tokio::net::TcpStream;

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {addr}: {source}")]
    Http {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (bad header or path).
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    /// The body is not an echo report.
    #[error("the answer is not an echo report ({status}): {source}; body: {body}")]
    NotAReport {
        /// Status of the answer.
        status: StatusCode,
        /// Parse error.
        #[source]
        source: serde_json::Error,
        /// The body, lossily decoded.
        body: String,
    },
}

/// A complete HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

impl HttpAnswer {
    /// Parses the body as the echo server's JSON report.
    pub fn report(&self) -> Result<EchoReport, ClientError> {
        serde_json::from_slice(&self.body).map_err(|source| ClientError::NotAReport {
            status: self.status,
            source,
            body: String::from_utf8_lossy(&self.body).into_owned(),
        })
    }
}

fn build(
    version: Version,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Request<Empty<Bytes>>, ClientError> {
    let mut builder = Request::builder().method("GET").version(version);
    builder = if version == Version::HTTP_2 {
        builder.uri(format!("http://{authority}{path}"))
    } else {
        builder.uri(path).header(http::header::HOST, authority)
    };
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder.body(Empty::new())?)
}

/// One GET over a new HTTP/1.1 connection to `addr`, with `Host: authority`.
pub async fn http1_get(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer, ClientError> {
    let request = build(Version::HTTP_11, authority, path, headers)?;
    let stream = TcpStream::connect(addr).await.map_err(|source| ClientError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ClientError::Http { addr, source })?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|source| ClientError::Http { addr, source })?;
    collect(addr, response).await
}

/// One GET over a new HTTP/2 prior-knowledge (h2c) connection to `addr`, with `:authority`.
pub async fn h2c_get(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer, ClientError> {
    let request = build(Version::HTTP_2, authority, path, headers)?;
    let stream = TcpStream::connect(addr).await.map_err(|source| ClientError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|source| ClientError::Http { addr, source })?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|source| ClientError::Http { addr, source })?;
    collect(addr, response).await
}

async fn collect(addr: SocketAddr, response: http::Response<hyper::body::Incoming>) -> Result<HttpAnswer, ClientError> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|source| ClientError::Http { addr, source })?.to_bytes();
    Ok(HttpAnswer { status: parts.status, headers: parts.headers, body })
}
