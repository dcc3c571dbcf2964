//! Closing first. When HTTP says a connection ends with the answer being written (the request's
//! `Connection: close`, HTTP/1.0 without keep-alive, a draining proxy), the proxy is the side
//! that closes, so the TIME-WAIT state stays on the proxy's socket, where it costs nothing, and
//! not on the pod's. A pod's sockets in TIME-WAIT hold its ephemeral ports for 60 s: a client
//! that makes a new connection per request would run out of them.
//!
//! Writing the answer and then shutting the socket down is not enough on its own: the client
//! reads the answer as soon as its last bytes arrive and may close in the few microseconds before
//! the proxy's FIN leaves (measured in the lab: 11 of 300 connections). So when the last answer's
//! final bytes are produced (the stack's response body, `ResponseBody::ends_connection`, marks the
//! [`LastAnswer`]), the socket is corked (`TCP_CORK`) before they are written: they wait in the
//! send queue, and the shutdown that follows puts the FIN on their segment. The client then sees
//! the close with the end of the answer and closes after it, as the passive side. Only the final
//! bytes are held, and only until the shutdown a moment later, so a streamed answer is not
//! delayed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Set by the request path when the answer being made is the connection's last.
#[derive(Clone, Debug, Default)]
pub struct LastAnswer(Arc<AtomicBool>);

impl LastAnswer {
    /// The connection ends after this answer.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether an HTTP/1.x request ends its connection (RFC 9112 §9.3, §9.6): `Connection: close`,
/// or HTTP/1.0 without `Connection: keep-alive`.
pub fn request_ends_connection<B>(request: &http::Request<B>) -> bool {
    let tokens = || {
        request
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    match request.version() {
        http::Version::HTTP_10 => !tokens().any(|t| t.eq_ignore_ascii_case("keep-alive")),
        http::Version::HTTP_11 => tokens().any(|t| t.eq_ignore_ascii_case("close")),
        _ => false,
    }
}

/// A client TCP connection that corks itself once its answer is the last (see the module docs).
#[derive(Debug)]
pub struct CloseFirst {
    inner: TcpStream,
    last: LastAnswer,
    corked: bool,
}

impl CloseFirst {
    /// Wraps a client connection; `last` is marked by the request path.
    pub fn new(inner: TcpStream, last: LastAnswer) -> Self {
        Self { inner, last, corked: false }
    }

    fn cork_if_last(&mut self) {
        if !self.corked && self.last.is_marked() {
            self.corked = true;
            // Best effort: without the cork the proxy still closes first, only less reliably.
            let _ = socket2::SockRef::from(&self.inner).set_tcp_cork(true);
        }
    }
}

impl AsyncRead for CloseFirst {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CloseFirst {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.cork_if_last();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.cork_if_last();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The FIN goes out on the corked answer's last segment: Linux pushes pending data
        // on shutdown whatever the cork.
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_that_end_their_connection() {
        let request = |version, connection: Option<&str>| {
            let mut builder = http::Request::builder().version(version);
            if let Some(value) = connection {
                builder = builder.header(http::header::CONNECTION, value);
            }
            builder.body(()).unwrap()
        };
        use http::Version;
        let cases = [
            (Version::HTTP_11, None, false),
            (Version::HTTP_11, Some("close"), true),
            (Version::HTTP_11, Some("Keep-Alive, Close"), true),
            (Version::HTTP_11, Some("keep-alive"), false),
            (Version::HTTP_10, None, true),
            (Version::HTTP_10, Some("keep-alive"), false),
            (Version::HTTP_10, Some("close"), true),
            (Version::HTTP_2, Some("close"), false),
        ];
        for (version, connection, ends) in cases {
            assert_eq!(request_ends_connection(&request(version, connection)), ends, "{version:?} {connection:?}");
        }
    }

    #[tokio::test]
    async fn the_last_answer_and_the_close_reach_the_client_together() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let last = LastAnswer::default();
        let mut server = CloseFirst::new(server, last.clone());
        last.mark();
        server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        // Corked: nothing has left yet, so the client cannot have read it and closed first.
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), client.read(&mut byte)).await;
        assert!(early.is_err(), "the last answer waits for the close: {early:?}");
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.ends_with(b"ok"));
    }
}
