//! Protocol detection from a connection's first bytes: HTTP/2 with prior knowledge (the client
//! preface), HTTP/1.x (a method token and a space), or anything else (opaque TCP).

use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token we accept for HTTP/1.x detection.
const MAX_METHOD_LEN: usize = 16;
/// Empty lines a client may send before its request line (RFC 9112 §2.2 says to ignore at least
/// one); more than this many bytes of them is not HTTP.
const MAX_LEADING_EMPTY_LINES: usize = 16;

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 prior knowledge (h2c, gRPC).
    Http2,
    /// Something else (TLS from the app, a database protocol...).
    Opaque,
}

/// A `tchar` of RFC 9110 §5.6.2: methods are tokens, case-sensitive (`get` is a method, just
/// not GET), so any token followed by a space starts a request line.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies a prefix; `None` means more bytes are needed to tell.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.is_empty() {
        return None;
    }
    let compared = bytes.len().min(H2_PREFACE.len());
    if bytes[..compared] == H2_PREFACE[..compared] {
        return (bytes.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // Empty lines before the request line (CRLF or a bare LF, as HTTP/1.1 parsers accept).
    let Some(start) = bytes.iter().position(|b| *b != b'\r' && *b != b'\n') else {
        return (bytes.len() > MAX_LEADING_EMPTY_LINES).then_some(Protocol::Opaque);
    };
    if start > MAX_LEADING_EMPTY_LINES {
        return Some(Protocol::Opaque);
    }
    let line = &bytes[start..];
    match line.iter().position(|b| *b == b' ') {
        Some(0) => Some(Protocol::Opaque),
        Some(space) if space <= MAX_METHOD_LEN && line[..space].iter().copied().all(is_token_char) => {
            Some(Protocol::Http1)
        }
        Some(_) => Some(Protocol::Opaque),
        None if line.len() <= MAX_METHOD_LEN && line.iter().copied().all(is_token_char) => None,
        None => Some(Protocol::Opaque),
    }
}

/// Reads until the protocol is known, or `timeout` passes (then the client is waiting for the
/// server to speak first: opaque). Returns the protocol and the bytes read, to be replayed.
pub async fn detect<R: AsyncRead + Unpin>(io: &mut R, timeout: Duration) -> std::io::Result<(Protocol, BytesMut)> {
    let mut buffer = BytesMut::with_capacity(512);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buffer)).await {
            Err(_) => return Ok((Protocol::Opaque, buffer)),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buffer)),
            Ok(Ok(_)) => {
                if let Some(protocol) = classify(&buffer) {
                    return Ok((protocol, buffer));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        let cases: &[(&[u8], Option<Protocol>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"POST /x HTTP/1.1", Some(Protocol::Http1)),
            (b"M-SEARCH * HTTP/1.1", Some(Protocol::Http1)),
            (b"GE", None),
            (b"GET", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::Http2)),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"PRI", None),
            (b"\x16\x03\x01\x02\x00", Some(Protocol::Opaque)), // TLS ClientHello
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Some(Protocol::Opaque)), // PostgreSQL SSLRequest
            // Methods are case-sensitive tokens: a lowercase one is still a request line.
            (b"get / HTTP/1.1", Some(Protocol::Http1)),
            (b"X.Custom_Method~1 /", Some(Protocol::Opaque)), // 17 characters: past the limit
            (b"M.C~1 / HTTP/1.1", Some(Protocol::Http1)),
            // Empty lines before the request line are ignored (RFC 9112 §2.2).
            (b"\r\nGET / HTTP/1.1", Some(Protocol::Http1)),
            (b"\r\n\r\n\nPOST / HTTP/1.1", Some(Protocol::Http1)),
            (b"\r\n", None),
            (b"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n", Some(Protocol::Opaque)),
            (b" GET", Some(Protocol::Opaque)),
            (b"G\x00T / HTTP/1.1", Some(Protocol::Opaque)),
            (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", Some(Protocol::Opaque)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(classify(bytes), *expected, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[tokio::test]
    async fn detection_reads_across_segments_and_times_out_to_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"\r\nSM\r\n\r\nrest").await.unwrap();
            client
        });
        let (protocol, bytes) = detect(&mut server, Duration::from_secs(2)).await.unwrap();
        assert_eq!(protocol, Protocol::Http2);
        assert!(bytes.starts_with(H2_PREFACE));
        let _client = writer.await.unwrap();

        // A client that waits for the server to speak first.
        let (_silent, mut server) = tokio::io::duplex(64);
        let (protocol, bytes) = detect(&mut server, Duration::from_millis(50)).await.unwrap();
        assert_eq!((protocol, bytes.len()), (Protocol::Opaque, 0));
    }
}
