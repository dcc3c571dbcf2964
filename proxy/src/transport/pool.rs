//! Connections to endpoints: a pool per endpoint. HTTP/1.1 connections are reused from a
//! lock-free queue of idle connections; HTTP/2 uses one multiplexed connection, re-established
//! when it closes.

use crate::core::body::{BoxError, ProxyBody, ReplayBody, MAX_KEPT_BODY};
use crate::transport::{connect_tcp, with_causes, SharedHttp2, UpstreamError, UpstreamProtocol};
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_HTTP1: usize = 64;

/// What it takes to send an HTTP/2 request again: its head, and its body through a
/// [`ReplayBody`] (an empty body needs nothing kept).
struct Resend {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    body: Option<ReplayBody>,
}

impl Resend {
    /// Keeps what `request` needs to be sent again; returns the request to send first.
    fn keep(request: Request<ProxyBody>) -> (Self, Request<ProxyBody>) {
        let (parts, body) = request.into_parts();
        let (body, first) = if body.is_end_stream() {
            (None, ProxyBody::Empty)
        } else {
            let replay = ReplayBody::new(body, MAX_KEPT_BODY);
            (replay.again(), ProxyBody::Replay(replay))
        };
        let resend = Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        };
        (resend, Request::from_parts(parts, first))
    }

    /// The endpoint answered: the body need not be kept any more.
    fn give_up(&self) {
        if let Some(replay) = &self.body {
            replay.give_up();
        }
    }

    /// The request again, reading its body from the start; `None` if too much of it was sent.
    fn again(&self) -> Option<Request<ProxyBody>> {
        let body = match &self.body {
            None => ProxyBody::Empty,
            Some(replay) => ProxyBody::Replay(replay.again()?),
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        Some(request)
    }
}

/// Whether the endpoint certainly did not process the request: its stream was above the last
/// one a graceful GOAWAY let through, or was reset with REFUSED_STREAM (RFC 9113 §8.7).
fn refused_unprocessed(error: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(error).and_then(|cause| cause.downcast_ref::<h2::Error>()) else {
        return false;
    };
    let reason = h2.reason();
    h2.is_remote()
        && ((h2.is_go_away() && reason == Some(h2::Reason::NO_ERROR))
            || (h2.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM)))
}

/// How an endpoint on another node is reached: through its node's proxy, with this proxy's
/// tunnels.
#[derive(Clone, Debug)]
pub struct Via {
    /// The peer node proxy's tunnel address.
    pub peer: SocketAddr,
    /// This proxy's tunnel client.
    pub tunnels: Arc<crate::transport::tunnel::Tunnels>,
}

/// The connections to one endpoint.
#[derive(Debug)]
pub struct ConnectionPool {
    addr: SocketAddr,
    via: Option<Via>,
    idle_http1: ArrayQueue<http1::SendRequest<ProxyBody>>,
    http2: SharedHttp2<ProxyBody>,
    /// With `via`: the identities its tunnel connections prove and require (mutual TLS).
    identities: Option<crate::transport::tunnel::TunnelIdentities>,
}

impl ConnectionPool {
    /// An empty pool for `addr`, reached directly or, with `via`, through a peer node proxy.
    pub fn new(addr: SocketAddr, via: Option<Via>) -> Self {
        Self { addr, via, idle_http1: ArrayQueue::new(MAX_IDLE_HTTP1), http2: SharedHttp2::new(), identities: None }
    }

    /// A pool for `addr` through the peer node proxy `via`, over mutual TLS as `identities`.
    pub fn with_identities(addr: SocketAddr, via: Via, identities: crate::transport::tunnel::TunnelIdentities) -> Self {
        Self { identities: Some(identities), ..Self::new(addr, Some(via)) }
    }

    /// Whether its connections are mutual TLS tunnels.
    pub fn is_mutual_tls(&self) -> bool {
        self.via.is_some() && self.identities.is_some()
    }

    async fn connect(&self, protocol: UpstreamProtocol) -> Result<UpstreamIo, UpstreamError> {
        if let Some(via) = &self.via {
            return via
                .tunnels
                .open(via.peer, self.addr, self.identities.as_ref(), Some(protocol))
                .await
                .map(UpstreamIo::Tunnel);
        }
        connect_tcp(self.addr)
            .await
            .map(|stream| UpstreamIo::Tcp(TokioIo::new(stream)))
            .map_err(|source| UpstreamError::Connect { addr: self.addr, source })
    }

    /// Sends `request` over a pooled or new connection.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<ProxyBody>,
        protocol: UpstreamProtocol,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let head = request.method() == http::Method::HEAD;
        let mut response = match protocol {
            UpstreamProtocol::Http1 => self.send_http1(request).await?,
            UpstreamProtocol::Http2 => self.send_http2(request).await?,
        };
        // The answer is framed anew towards the client: only what hyper decoded may go on.
        if crate::core::headers::has_unsupported_transfer_coding(response.headers()) {
            return Err(UpstreamError::TransferCoding { addr: self.addr });
        }
        crate::core::headers::drop_stale_content_length(response.headers_mut());
        // An answer to HEAD has no content (RFC 9110 §9.3.2) whatever the endpoint sends: an
        // HTTP/2 server that sends DATA anyway (hyper's does) would otherwise have the stream
        // reset by the h2 client, and the client's answer with it.
        if head {
            response.body_mut().no_content = true;
        }
        Ok(response)
    }

    async fn send_http1(
        self: &Arc<Self>,
        request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut sender = loop {
            match self.idle_http1.pop() {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        break sender;
                    }
                }
                // Boxed: connecting (a TLS tunnel, a handshake) is rare and its future large; kept
                // inline it would make every request's future as large, and moving it costly.
                None => break Box::pin(self.open_http1()).await?,
            }
        };
        let response =
            sender.send_request(request).await.map_err(|source| UpstreamError::Http { addr: self.addr, source })?;
        let (parts, body) = response.into_parts();
        // The connection goes back to the pool when the answer's body has been read to the end;
        // an empty body may never be polled, so it goes back now.
        // An upgraded (101) connection now belongs to the relay, never to the pool.
        let checkin = if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
            None
        } else if body.is_end_stream() {
            self.checkin(sender);
            None
        } else {
            Some((self.clone(), sender))
        };
        Ok(Response::from_parts(parts, UpstreamBody { inner: body, checkin, no_content: false }))
    }

    /// A new HTTP/1.1 connection to the endpoint, its connection task spawned.
    async fn open_http1(self: &Arc<Self>) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
        let io = self.connect(UpstreamProtocol::Http1).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Http { addr: self.addr, source })?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }

    async fn send_http2(
        self: &Arc<Self>,
        request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let failed = |source| UpstreamError::Http { addr: self.addr, source };
        let (resend, mut request) = Resend::keep(request);
        let mut retried = false;
        loop {
            let mut sender = self.http2.get(|| Box::pin(self.connect(UpstreamProtocol::Http2)), failed).await?;
            let outcome = match sender.ready().await {
                Ok(()) => sender.try_send_request(request).await,
                Err(error) if !retried => {
                    // The shared connection is going away (GOAWAY from a draining peer): a new one.
                    tracing::debug!(%error, addr = %self.addr, "HTTP/2 connection unusable; opening a new one");
                    self.http2.retire();
                    retried = true;
                    continue;
                }
                Err(error) => return Err(failed(error)),
            };
            match outcome {
                Ok(response) => {
                    resend.give_up();
                    let (parts, body) = response.into_parts();
                    return Ok(Response::from_parts(
                        parts,
                        UpstreamBody { inner: body, checkin: None, no_content: false },
                    ));
                }
                // hyper hands a request back only when none of it was sent (the connection closed
                // or refused the stream first), so sending it again cannot duplicate it.
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !retried => {
                        self.http2.retire();
                        retried = true;
                        request = unsent;
                    }
                    // Sent, but the endpoint says it did not process it: a drain's GOAWAY raced
                    // the stream's opening. Safe to send again whatever the method (RFC 9113
                    // §8.7); kept bodies up to MAX_KEPT_BODY make that possible.
                    None if !retried && refused_unprocessed(error.error()) => match resend.again() {
                        Some(again) => {
                            tracing::debug!(addr = %self.addr, error = %with_causes(error.error()), "stream refused unprocessed; sending it again on a new connection");
                            self.http2.retire();
                            retried = true;
                            request = again;
                        }
                        None => return Err(failed(error.into_error())),
                    },
                    _ => return Err(failed(error.into_error())),
                },
            }
        }
    }

    fn checkin(&self, sender: http1::SendRequest<ProxyBody>) {
        if !sender.is_closed() {
            // A full queue drops the connection, which closes it.
            let _ = self.idle_http1.push(sender);
        }
    }
}

/// An endpoint's answer body; returns its HTTP/1.1 connection to the pool once fully read.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<(Arc<ConnectionPool>, http1::SendRequest<ProxyBody>)>,
    /// The answer to a HEAD request: ends at once, whatever the endpoint sent after the head.
    no_content: bool,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.no_content {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // Readers stop polling once the body says it has ended (content-length reached), so the
        // connection goes back as soon as that is true, not only on a final `None`.
        let ended = matches!(polled, Poll::Ready(None)) || (polled.is_ready() && this.inner.is_end_stream());
        if ended {
            if let Some((pool, sender)) = this.checkin.take() {
                pool.checkin(sender);
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.no_content || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.no_content {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

/// A connection to an endpoint: a TCP stream, or a stream of a tunnel through a peer node proxy.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Direct TCP.
    Tcp(TokioIo<TcpStream>),
    /// An HTTP/2 CONNECT stream through the endpoint's node proxy.
    Tunnel(hyper::upgrade::Upgraded),
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Tunnel(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Tunnel(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_flush(cx),
            UpstreamIo::Tunnel(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Tunnel(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
