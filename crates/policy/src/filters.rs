//! The edits of the Gateway API filters (RequestHeaderModifier, ResponseHeaderModifier,
//! RequestRedirect, URLRewrite) as pure functions over request and response parts. The proxy's
//! filter layer applies them in rule order; the fuzz targets call them directly.

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use nodus_config::{HeaderModifier, PathModifier, RedirectFilter, UrlRewriteFilter};

/// Applies a header modifier: remove, then set, then add.
pub fn modify_headers(headers: &mut HeaderMap, modifier: &HeaderModifier) {
    for name in &modifier.remove {
        if let Ok(name) = HeaderName::try_from(name.as_str()) {
            headers.remove(name);
        }
    }
    for nv in &modifier.set {
        if let (Ok(name), Ok(value)) =
            (HeaderName::try_from(nv.name.as_str()), HeaderValue::try_from(nv.value.as_str()))
        {
            headers.insert(name, value);
        }
    }
    for nv in &modifier.add {
        if let (Ok(name), Ok(value)) =
            (HeaderName::try_from(nv.name.as_str()), HeaderValue::try_from(nv.value.as_str()))
        {
            headers.append(name, value);
        }
    }
}

/// The new path for a path modifier. `matched_prefix` is the normalised `PathPrefix` that matched.
pub fn rewrite_path(path: &str, modifier: &PathModifier, matched_prefix: Option<&str>) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let rest = match matched_prefix {
                Some("/") | None => path,
                Some(prefix) => path.get(prefix.len()..).unwrap_or(""),
            };
            // Join without doubling or dropping the slash between replacement and rest.
            let head = replacement.trim_end_matches('/');
            let joined = if rest.is_empty() || rest.starts_with('/') {
                format!("{head}{rest}")
            } else {
                format!("{head}/{rest}")
            };
            if joined.is_empty() {
                "/".to_owned()
            } else {
                joined
            }
        }
    }
}

fn request_host<T>(request: &http::Request<T>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
}

/// The `Location` of a redirect, per the spec: scheme, host, port and path from the filter where
/// set, else from the request; the port is left out when it is the scheme's well-known one.
pub fn redirect_location<T>(
    request: &http::Request<T>,
    filter: &RedirectFilter,
    matched_prefix: Option<&str>,
    service_port: u16,
) -> String {
    let host_and_port = request_host(request).unwrap_or_default();
    let (request_host_only, request_port) = match host_and_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h.to_owned(), p.parse().ok()),
        _ => (host_and_port.clone(), None),
    };
    let scheme = filter.scheme.clone().unwrap_or_else(|| "http".to_owned());
    let host = filter.hostname.clone().unwrap_or(request_host_only);
    let well_known = if scheme == "https" { 443 } else { 80 };
    let port = match (filter.port, &filter.scheme) {
        (Some(port), _) => port,
        // A new scheme implies its well-known port.
        (None, Some(_)) => well_known,
        (None, None) => request_port.unwrap_or(service_port),
    };
    let path = match &filter.path {
        Some(modifier) => rewrite_path(request.uri().path(), modifier, matched_prefix),
        None => request.uri().path().to_owned(),
    };
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    if port == well_known {
        format!("{scheme}://{host}{path}{query}")
    } else {
        format!("{scheme}://{host}:{port}{path}{query}")
    }
}

/// Applies a URL rewrite to a request (host and/or path; the query is kept).
pub fn rewrite_request<T>(request: &mut http::Request<T>, filter: &UrlRewriteFilter, matched_prefix: Option<&str>) {
    let uri = request.uri().clone();
    let path = match &filter.path {
        Some(modifier) => rewrite_path(uri.path(), modifier, matched_prefix),
        None => uri.path().to_owned(),
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.into_parts();
    if let Some(hostname) = &filter.hostname {
        if parts.authority.is_some() {
            parts.authority = hostname.parse().ok().or(parts.authority);
        }
        if let Ok(value) = HeaderValue::from_str(hostname) {
            if request.headers().contains_key(http::header::HOST) {
                request.headers_mut().insert(http::header::HOST, value);
            }
        }
    }
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodus_config::NameValue;

    fn nv(name: &str, value: &str) -> NameValue {
        NameValue { name: name.into(), value: value.into() }
    }

    #[test]
    fn header_modifier_removes_sets_and_adds() {
        let mut headers = HeaderMap::new();
        headers.insert("x-keep", HeaderValue::from_static("1"));
        headers.insert("x-drop", HeaderValue::from_static("1"));
        headers.insert("x-set", HeaderValue::from_static("old"));
        headers.insert("x-add", HeaderValue::from_static("first"));
        let modifier = HeaderModifier {
            set: vec![nv("x-set", "new"), nv("x-new", "v")],
            add: vec![nv("x-add", "second")],
            remove: vec!["x-drop".into()],
        };
        modify_headers(&mut headers, &modifier);
        assert_eq!(headers["x-keep"], "1");
        assert!(!headers.contains_key("x-drop"));
        assert_eq!(headers["x-set"], "new");
        assert_eq!(headers["x-new"], "v");
        let added: Vec<_> = headers.get_all("x-add").iter().collect();
        assert_eq!(added, vec!["first", "second"]);
    }

    #[test]
    fn prefix_and_full_path_rewrites_follow_the_spec() {
        let prefix = |path: &str, matched: &str, replacement: &str| {
            rewrite_path(path, &PathModifier::ReplacePrefixMatch(replacement.into()), Some(matched))
        };
        let cases = [
            (prefix("/foo/bar", "/foo", "/xyz"), "/xyz/bar"),
            (prefix("/foo/bar", "/foo", "/xyz/"), "/xyz/bar"),
            (prefix("/foo/bar", "/foo", "/"), "/bar"),
            (prefix("/foo", "/foo", "/"), "/"),
            (prefix("/foo", "/foo", "/xyz"), "/xyz"),
            (prefix("/foo/", "/foo", "/xyz"), "/xyz/"),
            (prefix("/abc", "/", "/xyz"), "/xyz/abc"),
            (rewrite_path("/a/b", &PathModifier::ReplaceFullPath("/one".into()), None), "/one"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    fn request(uri: &str, host: &str) -> http::Request<()> {
        http::Request::builder().uri(uri).header("host", host).body(()).unwrap()
    }

    #[test]
    fn redirects_build_the_location_from_filter_and_request() {
        let base = RedirectFilter { scheme: None, hostname: None, path: None, port: None, status_code: 302 };
        let cases = [
            (RedirectFilter { hostname: Some("new.example".into()), ..base.clone() }, "http://new.example/p?q=1"),
            (RedirectFilter { scheme: Some("https".into()), ..base.clone() }, "https://web/p?q=1"),
            (RedirectFilter { port: Some(8080), ..base.clone() }, "http://web:8080/p?q=1"),
            (
                RedirectFilter { path: Some(PathModifier::ReplaceFullPath("/moved".into())), ..base.clone() },
                "http://web/moved?q=1",
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(redirect_location(&request("/p?q=1", "web"), &filter, None, 80), want);
        }
        // A non-default service port carries through when nothing changes the scheme.
        assert_eq!(redirect_location(&request("/p", "web:8080"), &base, None, 8080), "http://web:8080/p");
    }

    #[test]
    fn url_rewrite_changes_host_and_path_and_keeps_query() {
        let mut req = request("/api/v1?x=1", "web");
        let filter = UrlRewriteFilter {
            hostname: Some("backend.internal".into()),
            path: Some(PathModifier::ReplacePrefixMatch("/v2".into())),
        };
        rewrite_request(&mut req, &filter, Some("/api"));
        assert_eq!(req.uri(), "/v2/v1?x=1");
        assert_eq!(req.headers()["host"], "backend.internal");
    }
}
