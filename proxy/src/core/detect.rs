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

/// The longest request line read ahead of the HTTP/1.1 server, which applies its own head
/// limits to what follows.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// What the first request line of a connection says its protocol is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestLine {
    /// It ends in `HTTP/1.x` (a minor version above 1 now reads `HTTP/1.1`).
    Http1,
    /// A whole line that does not end in an HTTP/1 version.
    NotHttp1,
    /// No line end within the limit or the time: the HTTP/1.1 server will judge it.
    Unfinished,
}

/// Reads the rest of the first request line into `buffer`, and reads a higher HTTP/1 minor
/// version as 1.1: RFC 9110 §2.5 asks a recipient to process such a message as the highest
/// minor version it implements, and hyper's parser knows only 1.0 and 1.1. The version is
/// rewritten in place (same length), before the HTTP/1.1 server sees the bytes. Only the first
/// request of a connection can be read ahead; the answer's `HTTP/1.1` tells the client which
/// version to speak next (RFC 9110 §2.5).
pub async fn read_request_line<R: AsyncRead + Unpin>(
    io: &mut R,
    buffer: &mut BytesMut,
    timeout: Duration,
) -> std::io::Result<RequestLine> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let start = buffer.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(buffer.len());
        if let Some(end) = buffer[start..].iter().position(|b| *b == b'\n') {
            return Ok(read_version(&mut buffer[start..start + end]));
        }
        if buffer.len() >= MAX_REQUEST_LINE {
            return Ok(RequestLine::Unfinished);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(buffer)).await {
            Err(_) | Ok(Ok(0)) => return Ok(RequestLine::Unfinished),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(_)) => {}
        }
    }
}

/// Judges one request line (without its LF), rewriting `HTTP/1.N` (N > 1) to `HTTP/1.1`.
fn read_version(line: &mut [u8]) -> RequestLine {
    let line = match line {
        [rest @ .., b'\r'] => rest,
        whole => whole,
    };
    let Some(space) = line.iter().rposition(|b| *b == b' ') else { return RequestLine::NotHttp1 };
    match &mut line[space + 1..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => {
            if *minor > b'1' {
                *minor = b'1';
            }
            RequestLine::Http1
        }
        _ => RequestLine::NotHttp1,
    }
}

/// What a server that must speak HTTP/2 answers an invalid connection preface with (RFC 9113
/// §3.4, §5.4.1): its own preface (an empty SETTINGS frame), then GOAWAY with PROTOCOL_ERROR,
/// no stream processed, and the reason as debug data. The connection is closed after it.
pub fn invalid_preface_answer() -> Vec<u8> {
    const REASON: &[u8] = b"invalid HTTP/2 connection preface";
    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let length = (8 + REASON.len()) as u32;
    frames.extend_from_slice(&length.to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]); // GOAWAY, no flags, stream 0
    frames.extend_from_slice(&0u32.to_be_bytes()); // last stream id: none processed
    frames.extend_from_slice(&0x1u32.to_be_bytes()); // PROTOCOL_ERROR
    frames.extend_from_slice(REASON);
    frames
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
    #[tokio::test]
    async fn the_request_line_is_read_whole_and_later_minor_versions_are_read_as_1_1() {
        let cases: &[(&[u8], RequestLine, &[u8])] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestLine::Http1, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            (b"GET / HTTP/1.0\r\n", RequestLine::Http1, b"GET / HTTP/1.0\r\n"),
            (b"GET / HTTP/1.2\r\nHost: a\r\n", RequestLine::Http1, b"GET / HTTP/1.1\r\nHost: a\r\n"),
            (b"\r\nGET /x HTTP/1.9\n", RequestLine::Http1, b"\r\nGET /x HTTP/1.1\n"),
            // Only the request line's version: the same bytes in a header are left alone.
            (b"GET / HTTP/1.1\r\nX: HTTP/1.2\r\n", RequestLine::Http1, b"GET / HTTP/1.1\r\nX: HTTP/1.2\r\n"),
            (b"INVALID CONNECTION PREFACE\r\n\r\n", RequestLine::NotHttp1, b"INVALID CONNECTION PREFACE\r\n\r\n"),
            (b"GET / HTTP/2.0\r\n", RequestLine::NotHttp1, b"GET / HTTP/2.0\r\n"),
            (b"GET / HTTP/1.12\r\n", RequestLine::NotHttp1, b"GET / HTTP/1.12\r\n"),
            (b"GET /\r\n", RequestLine::NotHttp1, b"GET /\r\n"),
            (b"GET / HTTP/1.1", RequestLine::Unfinished, b"GET / HTTP/1.1"),
        ];
        for (sent, expected, replayed) in cases {
            let (mut client, mut server) = tokio::io::duplex(1024);
            use tokio::io::AsyncWriteExt;
            client.write_all(sent).await.unwrap();
            // Detection has read the method already; the rest comes from the connection.
            let mut buffer = BytesMut::from(&sent[..4]);
            server.read_exact(&mut [0u8; 4]).await.unwrap();
            let line = read_request_line(&mut server, &mut buffer, Duration::from_millis(50)).await.unwrap();
            assert_eq!(line, *expected, "{:?}", String::from_utf8_lossy(sent));
            assert_eq!(&buffer[..], *replayed, "{:?}", String::from_utf8_lossy(sent));
        }
    }

    #[test]
    fn the_invalid_preface_answer_is_settings_then_goaway_protocol_error() {
        let frames = invalid_preface_answer();
        assert_eq!(&frames[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let length = u32::from_be_bytes([0, frames[9], frames[10], frames[11]]) as usize;
        assert_eq!((frames[12], frames.len()), (7, 18 + length));
        assert_eq!(&frames[18..26], &[0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
