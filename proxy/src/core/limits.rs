//! Limits every HTTP connection the proxy serves is held to, against hostile or broken clients:
//! oversized request heads (including HTTP/2 CONTINUATION floods), slow request heads
//! (slowloris), too many concurrent HTTP/2 streams, and HTTP/2 rapid reset (CVE-2023-44487).
//! One set of builders for the outbound listener and the inbound tunnel streams, so a limit can
//! not be forgotten on one of them.

use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// The limits, with safe defaults (`--max-header-bytes` and friends override them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest request head (request line and headers) in bytes: HTTP/1.1's read buffer, and
    /// HTTP/2's header list (a CONTINUATION flood ends here). Larger heads get 431 (HTTP/1.1)
    /// or a stream/connection error (HTTP/2).
    pub max_header_bytes: usize,
    /// Time an HTTP/1.1 client has to send a whole request head (slowloris): the connection is
    /// closed after it.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the proxy has answered them, before the
    /// connection is closed with GOAWAY (rapid reset, CVE-2023-44487).
    pub max_pending_reset_streams: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_pending_reset_streams: 20,
        }
    }
}

impl ConnectionLimits {
    /// An HTTP/1.1 server connection builder with these limits.
    pub fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            // hyper's minimum buffer is 8 KiB.
            .max_buf_size(self.max_header_bytes.max(8192))
            // Many more fields than hyper's fixed 100 (Envoy's default too): one per 64 bytes
            // of the head-size limit, 1,024 at the default. Not one per 4 bytes (the shortest
            // field): hyper reserves room for the whole count on every request it parses.
            .max_headers(self.max_header_bytes.max(8192) / 64);
        builder
    }

    /// An HTTP/2 server connection builder with these limits.
    pub fn http2(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(self.max_pending_reset_streams);
        builder
    }
}
