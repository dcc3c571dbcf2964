//! What a request must be before the mesh routes, authorizes or forwards it, so that the proxy,
//! the policy and the application all read it the same way (a request two parties read
//! differently is how smuggling and policy bypasses work):
//!
//! - one valid `Host` (RFC 9112 §3.2), agreeing with HTTP/2's `:authority` (RFC 9113 §8.3.1);
//!   an absolute-form target's authority replaces `Host` (RFC 9112 §3.2.2), and the target is
//!   passed on in origin form;
//! - an origin-form target (`/...`), or `*` for `OPTIONS` only; authority-form is CONNECT's,
//!   and the mesh does not proxy CONNECT (405);
//! - no transfer coding hyper would silently drop (`gzip, chunked`: 501, RFC 9112 §6.1);
//! - the path normalised ([`normalize_path`]) before routes and policies see it, and forwarded
//!   as normalised: what a policy allowed is what the application gets.

use http::{HeaderValue, Method, Request, StatusCode, Uri, Version};
use std::borrow::Cow;
use thiserror::Error;

/// Why a request was refused before routing.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Malformed {
    /// HTTP/1.1 without `Host`, or HTTP/2 without `:authority` or `Host`.
    #[error("the request has no Host (RFC 9112 §3.2)")]
    MissingHost,
    /// More than one `Host` field.
    #[error("the request has more than one Host header (RFC 9112 §3.2)")]
    DuplicateHost,
    /// A `Host` value that is not `host[:port]`.
    #[error("the Host header is not a valid host[:port]")]
    InvalidHost,
    /// HTTP/2 `Host` naming another authority than `:authority`.
    #[error("the Host header differs from :authority (RFC 9113 §8.3.1)")]
    HostDiffersFromAuthority,
    /// A request target in a form its method may not use.
    #[error("request target form not allowed for {method}: {form} (RFC 9112 §3.2)")]
    TargetForm {
        /// The method.
        method: String,
        /// `asterisk-form` or `authority-form`.
        form: &'static str,
    },
    /// CONNECT: pods' TCP is captured as it is dialled; the mesh opens no tunnels for them.
    #[error("CONNECT is not proxied by the mesh")]
    Connect,
    /// A transfer coding other than chunked.
    #[error("transfer codings other than chunked are not supported (RFC 9112 §6.1)")]
    TransferCoding,
    /// The path cannot be normalised unambiguously.
    #[error("path refused: {0}")]
    Path(#[from] PathError),
}

impl Malformed {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Malformed::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Malformed::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why a path was refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PathError {
    /// Not `/` followed by the rest (origin form).
    #[error("the path does not start with /")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    BadPercentEncoding,
    /// `%2F` or `%5C`: applications differ on whether it separates segments.
    #[error("an encoded / or \\ is ambiguous")]
    EncodedSeparator,
    /// A raw `\`, which some servers take for `/`.
    #[error("a \\ is ambiguous")]
    Backslash,
}

/// Checks `request` and puts it in the one form the rest of the mesh reads: `Host` from an
/// absolute-form target, origin-form target, normalised path. See the module docs.
pub fn check<B>(request: &mut Request<B>) -> Result<(), Malformed> {
    if request.method() == Method::CONNECT {
        return Err(Malformed::Connect);
    }
    if crate::core::headers::has_unsupported_transfer_coding(request.headers()) {
        return Err(Malformed::TransferCoding);
    }
    let http2 = request.version() == Version::HTTP_2;
    check_host(request, http2)?;
    let uri = request.uri();
    if uri.path() == "*" && uri.authority().is_none() {
        return match request.method() {
            &Method::OPTIONS => Ok(()),
            method => Err(Malformed::TargetForm { method: method.to_string(), form: "asterisk-form" }),
        };
    }
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(Malformed::TargetForm { method: request.method().to_string(), form: "authority-form" });
    }
    let path = uri.path();
    let normalized = normalize_path(path)?;
    // HTTP/1.1 goes on in origin form (its authority is now the Host); HTTP/2 keeps its
    // :scheme and :authority.
    let origin_form = !http2 && uri.authority().is_some();
    if let (Cow::Borrowed(_), false) = (&normalized, origin_form) {
        return Ok(());
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized.into_owned(),
    };
    let mut parts = uri.clone().into_parts();
    if origin_form {
        parts.scheme = None;
        parts.authority = None;
    }
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| PathError::BadPercentEncoding)?);
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| PathError::NotAbsolute)?;
    Ok(())
}

/// One valid `Host`; for an absolute-form HTTP/1.1 target, replaced by the target's authority.
fn check_host<B>(request: &mut Request<B>, http2: bool) -> Result<(), Malformed> {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Malformed::DuplicateHost);
    }
    if let Some(host) = host {
        valid_host(host)?;
    }
    let authority = request.uri().authority().cloned();
    match (authority, host) {
        (Some(authority), Some(host)) if http2 => {
            if !authority.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()) {
                return Err(Malformed::HostDiffersFromAuthority);
            }
        }
        (Some(authority), _) if !http2 => {
            if authority.as_str().contains('@') {
                return Err(Malformed::InvalidHost);
            }
            let value = HeaderValue::from_str(authority.as_str()).map_err(|_| Malformed::InvalidHost)?;
            request.headers_mut().insert(http::header::HOST, value);
        }
        (Some(_), _) => {}
        // HTTP/1.0 predates Host; anything newer must send it.
        (None, None) if request.version() != Version::HTTP_10 => return Err(Malformed::MissingHost),
        (None, _) => {}
    }
    Ok(())
}

/// `host[:port]` (RFC 9110 §7.2): a reg-name or IP literal, no userinfo, a numeric port. An
/// empty value is what HTTP/1.1 sends for a target without authority, and is allowed.
fn valid_host(value: &HeaderValue) -> Result<(), Malformed> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Ok(());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Malformed::InvalidHost)?;
    if text.contains(['@', '/', '?', '#', ' ', '\t', '\\']) {
        return Err(Malformed::InvalidHost);
    }
    let authority: http::uri::Authority = text.parse().map_err(|_| Malformed::InvalidHost)?;
    // `http` accepts `host:`, a non-numeric port and ports past 65535; none names an endpoint.
    let port = match text.strip_prefix('[') {
        Some(literal) => literal.split_once(']').map(|(_, rest)| rest).ok_or(Malformed::InvalidHost)?.strip_prefix(':'),
        None => text.rsplit_once(':').map(|(_, port)| port),
    };
    if port.is_some_and(|port| port.parse::<u16>().is_err() || !port.bytes().all(|b| b.is_ascii_digit())) {
        return Err(Malformed::InvalidHost);
    }
    if authority.host().is_empty() {
        return Err(Malformed::InvalidHost);
    }
    Ok(())
}

/// The path as routes and policies see it, and as it is forwarded: percent-encoded unreserved
/// characters decoded and other escapes upper-cased (RFC 3986 §6.2.2.1-2), `.` and `..`
/// segments removed (§5.2.4, after decoding, so `%2e%2e` counts), and runs of `/` merged into
/// one, as Envoy's `merge_slashes` and Istio's recommended `MERGE_SLASHES` do: `//admin` and
/// `/admin` are one resource to a policy. Encoded separators (`%2F`, `%5C`) and raw `\` are
/// refused rather than guessed. The common path, already normal, is returned borrowed.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let parts: Vec<&str> = decoded[1..].split('/').collect();
    let last = parts.len() - 1;
    for (index, segment) in parts.into_iter().enumerate() {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            name => segments.push(name),
        }
        trailing_slash = index == last && matches!(segment, "" | "." | "..");
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Whether a path starting with `/` has nothing to normalise: no `%`, `\`, empty segment or
/// dot segment.
fn is_normal(bytes: &[u8]) -> bool {
    if bytes.iter().any(|b| matches!(b, b'%' | b'\\')) {
        return false;
    }
    let mut segments = bytes[1..].split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        // An empty segment is a doubled slash, except the last (a trailing slash).
        let last = segments.peek().is_none();
        if matches!(segment, b"." | b"..") || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// Decodes `%XX` of unreserved characters, upper-cases the other escapes; refuses `\`, bad
/// escapes and encoded separators.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let hex = bytes.get(index + 1..index + 3).ok_or(PathError::BadPercentEncoding)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadPercentEncoding)?;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(char::from(value)),
                    _ => {
                        out.push('%');
                        out.push_str(&format!("{value:02X}"));
                    }
                }
                index += 3;
            }
            // The path came from a parsed URI: ASCII, so each byte is one char.
            _ => {
                out.push(char::from(byte));
                index += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_are_normalised_as_documented() {
        let cases = [
            ("/", "/"),
            ("/echo", "/echo"),
            ("/echo/", "/echo/"),
            ("/echo/../secret", "/secret"),
            ("/a/b/../../admin", "/admin"),
            ("/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/x//admin//", "/x/admin/"),
            ("/./admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/admin/..", "/"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/%2E%2E/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%7eb", "/a~b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a..b/..c", "/a..b/..c"),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize_path(path).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        for path in ["/", "/echo", "/echo/", "/a/b.c/d", "/.well-known/x"] {
            assert!(matches!(normalize_path(path).unwrap(), Cow::Borrowed(_)), "{path}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("admin", PathError::NotAbsolute),
            ("/admin%2fx", PathError::EncodedSeparator),
            ("/admin%2Fx", PathError::EncodedSeparator),
            ("/admin%5cx", PathError::EncodedSeparator),
            ("/a\\admin", PathError::Backslash),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%2", PathError::BadPercentEncoding),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize_path(path), Err(expected), "{path}");
        }
    }

    fn request(method: &str, target: &str, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target).version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn requests_are_checked_as_the_rfcs_say() {
        use Version as V;
        let bad = [
            (request("GET", "/", V::HTTP_11, &[]), Malformed::MissingHost),
            (request("GET", "/", V::HTTP_11, &[("host", "a"), ("host", "b")]), Malformed::DuplicateHost),
            (request("GET", "/", V::HTTP_11, &[("host", "a b")]), Malformed::InvalidHost),
            (request("GET", "/", V::HTTP_11, &[("host", "user@a")]), Malformed::InvalidHost),
            (request("GET", "/", V::HTTP_11, &[("host", "a:port")]), Malformed::InvalidHost),
            (request("GET", "/", V::HTTP_11, &[("host", "a:99999")]), Malformed::InvalidHost),
            (request("GET", "/", V::HTTP_11, &[("host", "a/b")]), Malformed::InvalidHost),
            (request("GET", "http://a/", V::HTTP_2, &[("host", "b")]), Malformed::HostDiffersFromAuthority),
            (request("GET", "/", V::HTTP_2, &[]), Malformed::MissingHost),
            (
                request("GET", "*", V::HTTP_11, &[("host", "a")]),
                Malformed::TargetForm { method: "GET".into(), form: "asterisk-form" },
            ),
            (
                request("GET", "a:80", V::HTTP_11, &[("host", "a")]),
                Malformed::TargetForm { method: "GET".into(), form: "authority-form" },
            ),
            (request("CONNECT", "a:80", V::HTTP_11, &[("host", "a:80")]), Malformed::Connect),
            (
                request("POST", "/", V::HTTP_11, &[("host", "a"), ("transfer-encoding", "gzip, chunked")]),
                Malformed::TransferCoding,
            ),
            (request("GET", "/a%2fb", V::HTTP_11, &[("host", "a")]), Malformed::Path(PathError::EncodedSeparator)),
        ];
        for (mut request, expected) in bad {
            let line =
                format!("{} {} {:?} {:?}", request.method(), request.uri(), request.version(), request.headers());
            assert_eq!(check(&mut request), Err(expected), "{line}");
        }
        assert_eq!(Malformed::Connect.status(), 405);
        assert_eq!(Malformed::TransferCoding.status(), 501);
        assert_eq!(Malformed::MissingHost.status(), 400);
    }

    #[test]
    fn good_requests_pass_in_the_one_form() {
        // Absolute form: the target's authority is the Host, and the target goes on in origin form.
        let mut absolute = request("GET", "http://web.demo:8080/a/../b?q=1", Version::HTTP_11, &[("host", "other")]);
        check(&mut absolute).unwrap();
        assert_eq!(absolute.uri(), "/b?q=1");
        assert_eq!(absolute.headers()["host"], "web.demo:8080");
        // HTTP/2 keeps its authority; an agreeing Host is fine.
        let mut h2 = request("GET", "http://web/x//y", Version::HTTP_2, &[("host", "WEB")]);
        check(&mut h2).unwrap();
        assert_eq!(h2.uri(), "http://web/x/y");
        // Already normal: untouched.
        let mut plain = request("GET", "/echo?a=%2F", Version::HTTP_11, &[("host", "echo:80")]);
        check(&mut plain).unwrap();
        assert_eq!(plain.uri(), "/echo?a=%2F", "the query is not the path");
        for ok in [
            request("OPTIONS", "*", Version::HTTP_11, &[("host", "a")]),
            request("GET", "/", Version::HTTP_10, &[]),
            request("GET", "/", Version::HTTP_11, &[("host", "")]),
            request("GET", "/", Version::HTTP_11, &[("host", "[::1]:80")]),
            request("GET", "/", Version::HTTP_11, &[("host", "10.0.0.1")]),
            request("POST", "/", Version::HTTP_11, &[("host", "a"), ("transfer-encoding", "chunked")]),
        ] {
            let mut ok = ok;
            let line = format!("{} {} {:?}", ok.method(), ok.uri(), ok.headers());
            assert_eq!(check(&mut ok), Ok(()), "{line}");
        }
    }
}
