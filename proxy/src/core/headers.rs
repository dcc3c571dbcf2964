//! Headers the mesh owns or must not pass on, for both directions: the caller-identity header
//! (only the mesh sets it), hop-by-hop headers (RFC 9110 §7.6.1), and a response's framing once
//! hyper has decoded it (RFC 9112 §6). Low in the crate: the listeners and the request stack use
//! it, it uses neither.

use http::{HeaderMap, HeaderName};

/// The header the destination proxy sets on every HTTP request it hands a pod: the caller's
/// authenticated SPIFFE ID (absent for plaintext callers; never taken from upstream).
pub const CLIENT_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-nodus-client-identity");

/// Marks a CONNECT refusal made by authorization policy, so the source proxy answers the
/// client 403 / PERMISSION_DENIED (other refusals are infrastructure errors).
pub const DENIED_HEADER: &str = "x-nodus-denied";

/// Removes the caller-identity header an application may have set (only the mesh sets it).
/// A scan of the message's few names finds it absent, the usual case, without the hashed
/// lookup a removal costs.
pub fn remove_client_identity(headers: &mut HeaderMap) {
    if headers.keys().any(|name| name == CLIENT_IDENTITY_HEADER) {
        headers.remove(CLIENT_IDENTITY_HEADER);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) besides those `Connection` names; static names, so
/// that checking them parses nothing.
const HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    http::header::TRANSFER_ENCODING,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
];

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1), and
/// those `Connection` names. `keep_upgrade` keeps `Connection` and `Upgrade` for an upgrade
/// relayed as such. `TE: trailers` is kept: gRPC needs it end to end over HTTP/2.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the message's few names finds what there is to do (usually nothing, or a
    // `Connection: keep-alive`), cheaper than a hashed lookup per hop-by-hop name.
    let (mut hop_by_hop, mut connection) = (false, false);
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) {
            hop_by_hop = true;
        } else if name == http::header::CONNECTION || name == http::header::UPGRADE {
            connection = true;
        }
    }
    if hop_by_hop {
        let trailers_only =
            headers.get_all(http::header::TE).iter().all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        for name in &HOP_BY_HOP {
            if name != http::header::TE || !trailers_only {
                headers.remove(name);
            }
        }
    }
    if !connection || keep_upgrade {
        return;
    }
    // The usual tokens name headers removed anyway (keep-alive, upgrade) or none (close): only
    // other names are parsed, and only they allocate.
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !["keep-alive", "close", "upgrade"].iter().any(|usual| token.eq_ignore_ascii_case(usual)))
        .filter_map(|token| HeaderName::try_from(token).ok())
        .collect();
    for name in named {
        // `TE: trailers` stays even when Connection names it (gRPC clients send both).
        if name != http::header::TE {
            headers.remove(name);
        }
    }
    headers.remove(http::header::CONNECTION);
    headers.remove(http::header::UPGRADE);
}

/// Transfer codings other than `chunked` in a message's `Transfer-Encoding`: hyper decodes
/// chunked framing only, so a message coded otherwise cannot be passed on intact.
pub fn has_unsupported_transfer_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"chunked"))
}

/// A response hyper has decoded is framed anew on its way to the client: with
/// `Transfer-Encoding` present its `Content-Length` is stale (RFC 9112 §6.3: the coding
/// overrides it, and a proxy must remove the length) and would truncate or hang the answer.
pub fn drop_stale_content_length(headers: &mut HeaderMap) {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, http::HeaderValue::from_static(value));
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        headers.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn a_forged_caller_identity_is_removed_with_every_value_and_other_headers_kept() {
        let mut headers = map(&[("host", "echo")]);
        headers.append("X-Nodus-Client-Identity", http::HeaderValue::from_static("spiffe://forged/a"));
        headers.append("x-nodus-client-identity", http::HeaderValue::from_static("spiffe://forged/b"));
        remove_client_identity(&mut headers);
        assert!(!headers.contains_key(CLIENT_IDENTITY_HEADER), "{headers:?}");
        assert_eq!(headers.len(), 1, "{headers:?}");

        let untouched = headers.clone();
        remove_client_identity(&mut headers);
        assert_eq!(headers, untouched, "without the header nothing changes");
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_upgrades_kept_when_asked() {
        // The usual tokens, mixed case, with a Keep-Alive header they name.
        let mut headers =
            map(&[("connection", "Keep-Alive, Close"), ("keep-alive", "timeout=5"), ("x-end-to-end", "1")]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(names(&headers), ["x-end-to-end"]);
        // An upgrade relayed as such keeps its Connection and Upgrade headers.
        let mut upgrade = map(&[("connection", "upgrade"), ("upgrade", "websocket"), ("transfer-encoding", "chunked")]);
        strip_hop_by_hop(&mut upgrade, true);
        assert_eq!(upgrade.len(), 2);
        assert!(upgrade.contains_key("upgrade") && upgrade.contains_key("connection"));
        // Nothing to do: nothing changes.
        let mut plain = map(&[("content-type", "text/plain")]);
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn headers_connection_names_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("x-end-to-end", "1"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(names(&headers), ["x-end-to-end"]);
    }

    #[test]
    fn te_trailers_is_kept_for_grpc_and_other_te_values_removed() {
        let mut grpc = map(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut grpc, false);
        assert_eq!(names(&grpc), ["te"]);
        let mut other = map(&[("te", "gzip, trailers")]);
        strip_hop_by_hop(&mut other, false);
        assert!(other.is_empty(), "{other:?}");
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_found() {
        assert!(!has_unsupported_transfer_coding(&map(&[("transfer-encoding", "chunked")])));
        assert!(!has_unsupported_transfer_coding(&map(&[("transfer-encoding", "Chunked")])));
        assert!(!has_unsupported_transfer_coding(&HeaderMap::new()));
        assert!(has_unsupported_transfer_coding(&map(&[("transfer-encoding", "gzip, chunked")])));
        assert!(has_unsupported_transfer_coding(&map(&[
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked")
        ])));
    }

    #[test]
    fn a_decoded_responses_length_goes_when_it_was_chunked() {
        let mut both = map(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        drop_stale_content_length(&mut both);
        assert_eq!(names(&both), ["transfer-encoding"]);
        let mut length = map(&[("content-length", "5")]);
        drop_stale_content_length(&mut length);
        assert_eq!(names(&length), ["content-length"]);
    }
}
