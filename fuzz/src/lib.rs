//! Helpers shared by the fuzz targets: a request read from fuzz bytes.
//!
//! Input layout (lines): method, path with optional `?query`, host, then `name: value` header
//! lines. Anything that does not parse as HTTP is skipped by the caller, as the proxy's HTTP
//! server would refuse it before routing.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// A request as routing and filters see it.
#[derive(Debug)]
pub struct FuzzRequest {
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: String,
    /// Query, without `?`.
    pub query: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Headers.
    pub headers: HeaderMap,
}

impl FuzzRequest {
    /// Reads a request from `data`; `None` when it is not a request an HTTP server would accept.
    pub fn parse(data: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(data).ok()?;
        let mut lines = text.split('\n');
        let method = Method::from_bytes(lines.next()?.as_bytes()).ok()?;
        let target = lines.next()?;
        // What hyper hands over: a path that is a valid URI path and query.
        let uri: http::Uri = target.parse().ok()?;
        let path = uri.path().to_owned();
        let query = uri.query().map(str::to_owned);
        let host = lines.next().filter(|h| !h.is_empty()).map(str::to_owned);
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value.trim()))
            {
                headers.append(name, value);
            }
        }
        Some(Self { method, path, query, host, headers })
    }

    /// The view the route table matches on.
    pub fn view(&self) -> nodus_policy::routes::RequestView<'_> {
        nodus_policy::routes::RequestView {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            host: self.host.as_deref(),
            headers: &self.headers,
        }
    }

    /// The same as an `http::Request` (without a body, which no filter reads).
    pub fn to_request(&self) -> Option<http::Request<()>> {
        let target = match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        };
        let mut request = http::Request::builder().method(self.method.clone()).uri(target);
        if let Some(host) = &self.host {
            request = request.header(http::header::HOST, host.as_str());
        }
        let mut request = request.body(()).ok()?;
        request.headers_mut().extend(self.headers.clone());
        Some(request)
    }
}

/// Validates `snapshot` and applies it to a proxy config store holding a known-good config:
/// never panics; a rejected snapshot leaves the good config in force, an accepted one is in
/// force afterwards and answers lookups.
pub fn apply_checked(snapshot: nodus_config::ConfigSnapshot) {
    use nodus_proxy::balance::OutlierPolicy;
    use nodus_proxy::state::ConfigStore;
    let store = ConfigStore::for_node(OutlierPolicy::default(), "node-1");
    let good = nodus_config::ConfigSnapshot { version: 1, ..Default::default() };
    store.apply(good).expect("an empty config applies");
    let valid = snapshot.validate().is_ok();
    let version = snapshot.version;
    let services: Vec<_> = snapshot.services.iter().flat_map(|s| s.cluster_ips.clone()).collect();
    match store.apply(snapshot) {
        Ok(applied) => {
            assert!(valid, "the store applied a snapshot that does not validate");
            assert_eq!(applied, version);
            let state = store.load().expect("a config is in force");
            for ip in services {
                std::hint::black_box(state.workload(ip));
            }
        }
        Err(_) => {
            let state = store.load().expect("the good config stays in force");
            assert_eq!(state.version, 1, "a rejected snapshot replaced the config in force");
        }
    }
}
