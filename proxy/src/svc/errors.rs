//! The one place where proxy errors become answers: an HTTP status for HTTP clients, a
//! `grpc-status` for gRPC clients (a trailers-only answer with HTTP 200, as gRPC expects).

use crate::core::body::ProxyBody;
use crate::svc::response::ResponseBody;
use crate::transport::UpstreamError;
use http::{HeaderValue, Response, StatusCode};
use thiserror::Error;

/// Why the proxy answered a request itself.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// No config has been received yet, so routes and policy cannot be enforced (fail closed).
    #[error("no mesh config received yet; refusing rather than bypassing routes and policy")]
    NoConfig,
    /// Routes are attached to the destination and none matched.
    #[error("no route matches {method} {path} for {destination}")]
    NoRoute {
        /// Destination Service port.
        destination: String,
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The matched rule has no usable backend (none configured, unknown Service, zero weights).
    #[error("route {route} has no valid backend")]
    InvalidBackend {
        /// The route and rule.
        route: String,
    },
    /// The backend has no ready endpoint.
    #[error("no healthy endpoint for {backend}")]
    NoEndpoints {
        /// Backend Service port.
        backend: String,
    },
    /// A timeout expired.
    #[error("{which} timeout ({after:?}) expired")]
    Timeout {
        /// `request` or `backendRequest`.
        which: &'static str,
        /// The configured timeout.
        after: std::time::Duration,
    },
    /// The endpoint could not be reached or failed mid-request.
    #[error(transparent)]
    Upstream(UpstreamError),
    /// The request body could not be read.
    #[error("reading the request body: {0}")]
    RequestBody(#[source] crate::core::body::BoxError),
    /// The destination cannot be reached over mutual TLS and the caller's namespace allows only
    /// that (its MeshPolicy's `mtls.outbound: Strict`).
    #[error("destination {destination} is not in the mesh (no mTLS to it), and the MeshPolicy of namespace {namespace} allows its workloads only mTLS calls")]
    MtlsRequired {
        /// The caller's namespace.
        namespace: String,
        /// The endpoint: its workload, else its address.
        destination: String,
    },
    /// The request is malformed or ambiguous (see [`crate::core::request_check`]): refused before
    /// routing, and the connection closed after the answer.
    #[error("malformed request: {0}")]
    Malformed(#[from] crate::core::request_check::Malformed),
}

impl From<UpstreamError> for ProxyError {
    /// An exchange that failed because the client's request body did (bad framing, cut short)
    /// is the client's fault: `RequestBody` (400, not counted against the endpoint).
    fn from(error: UpstreamError) -> Self {
        if error.is_client_body() {
            ProxyError::RequestBody(Box::new(error))
        } else {
            ProxyError::Upstream(error)
        }
    }
}

impl ProxyError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoConfig | ProxyError::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::InvalidBackend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamError::Connect { .. } | UpstreamError::Tunnel { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Upstream(UpstreamError::Http { .. } | UpstreamError::TransferCoding { .. }) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Upstream(UpstreamError::Denied { .. }) | ProxyError::MtlsRequired { .. } => {
                StatusCode::FORBIDDEN
            }
            ProxyError::RequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Malformed(malformed) => malformed.status(),
        }
    }

    /// The gRPC status code this error answers with (as Envoy and Linkerd map proxy errors:
    /// gRPC's HTTP-to-gRPC table for what has an HTTP status, UNAVAILABLE for the rest).
    pub fn grpc_status(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ProxyError::Timeout { .. } => Code::DeadlineExceeded,
            ProxyError::NoRoute { .. } => Code::Unimplemented,
            ProxyError::InvalidBackend { .. } | ProxyError::RequestBody(_) => Code::Internal,
            ProxyError::Malformed(m) if m.status() == StatusCode::BAD_REQUEST => Code::Internal,
            ProxyError::Malformed(_) => Code::Unimplemented,
            ProxyError::Upstream(UpstreamError::Denied { .. }) | ProxyError::MtlsRequired { .. } => {
                Code::PermissionDenied
            }
            _ => Code::Unavailable,
        }
    }

    /// The answer to send the client.
    pub fn into_response(self, grpc: bool) -> Response<ResponseBody> {
        let message = format!("nodus: {self}");
        // What follows a malformed request on its connection cannot be framed with confidence.
        let close = matches!(self, ProxyError::Malformed(_));
        let mut response = if grpc {
            let mut response = Response::new(ResponseBody::local(ProxyBody::Empty));
            let headers = response.headers_mut();
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(self.grpc_status() as i32));
            if let Ok(value) = HeaderValue::from_str(&percent_encode_grpc(&message)) {
                headers.insert("grpc-message", value);
            }
            response
        } else {
            let mut response = Response::new(ResponseBody::local(ProxyBody::from_bytes(message + "\n")));
            *response.status_mut() = self.status();
            response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        };
        response.headers_mut().insert("x-nodus-error", HeaderValue::from_static("proxy"));
        if close {
            response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::Malformed(crate::core::request_check::Malformed::Connect) = self {
            // 405 names what is allowed (RFC 9110 §15.5.6): every method but CONNECT.
            response.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        response
    }
}

/// The methods the mesh proxies (the `Allow` of its 405 to CONNECT).
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// grpc-message is percent-encoded: bytes outside printable ASCII, and `%` itself (gRPC over
/// HTTP/2 spec).
fn percent_encode_grpc(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_http_and_grpc_statuses() {
        // The numbers are gRPC's (doc/statuscodes.md), spelled out so that the test does not
        // repeat the code under test.
        let cases: Vec<(ProxyError, u16, i32)> = vec![
            (ProxyError::NoConfig, 503, 14),
            (ProxyError::NoRoute { destination: "d".into(), method: "GET".into(), path: "/".into() }, 404, 12),
            (ProxyError::NoEndpoints { backend: "b".into() }, 503, 14),
            (ProxyError::Timeout { which: "request", after: std::time::Duration::from_secs(1) }, 504, 4),
            (ProxyError::InvalidBackend { route: "r".into() }, 500, 13),
        ];
        for (error, http, grpc) in cases {
            assert_eq!(error.status().as_u16(), http, "{error}");
            assert_eq!(error.grpc_status() as i32, grpc, "{error}");
            let response = error.into_response(true);
            assert_eq!(response.status(), 200, "gRPC errors are trailers-only answers");
            assert_eq!(response.headers()["grpc-status"], grpc.to_string().as_str());
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_grpc("50% done\n é"), "50%25 done%0A %C3%A9");
    }
}
