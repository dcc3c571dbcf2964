//! The JSON answer to plain HTTP requests.

use crate::state::{EchoState, SEEN_CAPACITY};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Request header: answer with this status code.
pub const STATUS_HEADER: &str = "x-echo-status";
/// Request header: wait this many milliseconds before answering.
pub const DELAY_HEADER: &str = "x-echo-delay-ms";
/// Request header: `name:value` pairs, comma separated, to add to the response.
pub const SET_HEADER_HEADER: &str = "x-echo-set-header";
/// Request header: answer 503 if this names the answering pod (a failing replica on demand).
pub const FAIL_POD_HEADER: &str = "x-echo-fail-pod";
/// Path listing recent requests (`METHOD path` per line, JSON array), newest last.
pub const SEEN_PATH: &str = "/.nodus-echo/seen";

/// The longest delay a request may ask for, so a typo cannot park a connection for hours.
const MAX_DELAY: Duration = Duration::from_secs(300);

/// What the echo server saw, as it answers in JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReport {
    /// Pod that answered.
    pub pod: String,
    /// Its namespace.
    pub namespace: String,
    /// The Service it stands behind, if configured.
    pub service: String,
    /// Request method.
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Request headers, lower-case names, in arrival order per name.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The peer address the server saw.
    pub remote_addr: String,
    /// How many body bytes arrived.
    pub body_bytes: u64,
}

impl EchoReport {
    /// The first value of a request header, if it was present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).and_then(|v| v.first()).map(String::as_str)
    }
}

pub(crate) async fn respond(
    request: Request<Incoming>,
    state: &EchoState,
    remote: SocketAddr,
) -> Response<tonic::body::Body> {
    let identity = &state.identity;
    let (parts, body) = request.into_parts();
    if parts.uri.path() == SEEN_PATH {
        let seen: Vec<String> = state.seen.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from(
            serde_json::to_vec(&seen).unwrap_or_default(),
        ))));
        response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return response;
    }
    {
        let mut seen = state.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() == SEEN_CAPACITY {
            seen.pop_front();
        }
        seen.push_back(format!("{} {}", parts.method, parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")));
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| parts.headers.get(http::header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()))
        .unwrap_or_default();
    // Reading the whole body keeps the connection reusable and lets mirror tests count bytes.
    let body_bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes().len() as u64,
        Err(error) => return plain(StatusCode::BAD_REQUEST, format!("reading the request body: {error}")),
    };
    let report = EchoReport {
        pod: identity.pod.clone(),
        namespace: identity.namespace.clone(),
        service: identity.service.clone(),
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into()),
        host,
        protocol: format!("{:?}", parts.version),
        headers,
        remote_addr: remote.to_string(),
        body_bytes,
    };

    let fail_here = report.header(FAIL_POD_HEADER).is_some_and(|pod| pod == identity.pod);
    let status = match report.header(STATUS_HEADER).map(str::parse::<u16>) {
        _ if fail_here => StatusCode::SERVICE_UNAVAILABLE,
        None => StatusCode::OK,
        Some(Ok(code)) => match StatusCode::from_u16(code) {
            Ok(status) => status,
            Err(_) => return plain(StatusCode::BAD_REQUEST, format!("{STATUS_HEADER}: {code} is not a status code")),
        },
        Some(Err(_)) => return plain(StatusCode::BAD_REQUEST, format!("{STATUS_HEADER} must be a number")),
    };
    if let Some(delay) = report.header(DELAY_HEADER) {
        match delay.parse::<u64>().map(Duration::from_millis) {
            Ok(delay) if delay <= MAX_DELAY => tokio::time::sleep(delay).await,
            _ => return plain(StatusCode::BAD_REQUEST, format!("{DELAY_HEADER} must be milliseconds up to 300000")),
        }
    }
    let mut extra_headers = Vec::new();
    if let Some(spec) = report.header(SET_HEADER_HEADER) {
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = pair.split_once(':').and_then(|(name, value)| {
                Some((HeaderName::try_from(name.trim()).ok()?, HeaderValue::try_from(value.trim()).ok()?))
            });
            match parsed {
                Some(header) => extra_headers.push(header),
                None => return plain(StatusCode::BAD_REQUEST, format!("{SET_HEADER_HEADER}: bad pair {pair:?}")),
            }
        }
    }

    let (json, content_type) = match state.format {
        crate::state::AnswerFormat::Json => (serde_json::to_vec(&report).unwrap_or_default(), "application/json"),
        crate::state::AnswerFormat::Text => (
            crate::text::render_request(&report, status.as_u16(), state.port, &identity.version).into_bytes(),
            "text/plain",
        ),
    };
    // HEAD gets the head a GET would, without the content (RFC 9110 §9.3.2): hyper's HTTP/2
    // server would send the body's DATA frames for HEAD too, which clients reset.
    let length = HeaderValue::from(json.len());
    let content = if parts.method == http::Method::HEAD { Bytes::new() } else { Bytes::from(json) };
    let mut response = Response::new(tonic::body::Body::new(Full::new(content)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_LENGTH, length);
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in extra_headers {
        headers.append(name, value);
    }
    response
}

fn plain(status: StatusCode, message: String) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from(message + "\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
