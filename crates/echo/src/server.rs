//! Accept loop and per-request dispatch between the gRPC service and the JSON echo.

use crate::grpc::{CallInfo, EchoService};
use crate::http_echo;
use crate::proto::echo_server::EchoServer;
use crate::state::{AnswerFormat, EchoIdentity, EchoState};
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower::Service;

/// `Upgrade:` protocol name the echo server accepts; the upgraded connection echoes bytes.
pub const UPGRADE_PROTOCOL: &str = "nodus-echo";

/// Serves HTTP/1.1, h2c and gRPC on `listener` until the task is dropped or the listener fails.
pub async fn serve(listener: TcpListener, identity: EchoIdentity) -> std::io::Result<()> {
    serve_as(listener, identity, AnswerFormat::Json).await
}

/// As [`serve`], answering HTTP requests in `format`.
pub async fn serve_as(listener: TcpListener, identity: EchoIdentity, format: AnswerFormat) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let identity = Arc::new(EchoState { identity, format, port, seen: Default::default() });
    loop {
        let (stream, remote) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let identity = identity.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(request, identity.clone(), remote));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Requests with many fields are echoed too (the proxy passes what its size limit allows).
            builder.http1().max_headers(1024);
            let result = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
            if let Err(error) = result {
                tracing::debug!(%remote, %error, "echo connection ended with an error");
            }
        });
    }
}

async fn handle(
    mut request: Request<Incoming>,
    identity: Arc<EchoState>,
    remote: SocketAddr,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let wants_upgrade = request
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(UPGRADE_PROTOCOL.as_bytes()));
    if wants_upgrade {
        // An upgraded connection echoes raw bytes back: proxies must relay it both ways.
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        let mut response = http::Response::new(tonic::body::Body::empty());
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        response.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static(UPGRADE_PROTOCOL));
        return Ok(response);
    }
    if is_grpc {
        let info = CallInfo::from_request(&request, remote);
        request.extensions_mut().insert(info);
        let mut grpc = EchoServer::new(EchoService::new(Arc::new(identity.identity.clone())));
        grpc.call(request).await
    } else {
        Ok(http_echo::respond(request, &identity, remote).await)
    }
}
