//! The HTTPRoute filters on arbitrary requests and filter settings: header modifiers, URL
//! rewrites and redirects never panic, and what they produce is still a valid request.
//!
//! Input: a request (see `nodus_fuzz`), a line `---`, then filter settings as lines:
//! `set name value`, `add name value`, `remove name`, `full /path`, `prefix /p`,
//! `matched /prefix`, `host name`, `scheme s`, `port n`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodus_config::{HeaderModifier, NameValue, PathModifier, RedirectFilter, UrlRewriteFilter};
use nodus_fuzz::FuzzRequest;
use nodus_policy::filters;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (request_text, settings) = text.split_once("\n---\n").unwrap_or((text, ""));
    let Some(parsed) = FuzzRequest::parse(request_text.as_bytes()) else { return };
    let Some(mut request) = parsed.to_request() else { return };

    let mut modifier = HeaderModifier::default();
    let mut path = None;
    let mut matched = None;
    let mut hostname = None;
    let mut scheme = None;
    let mut port = None;
    for line in settings.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("set"), Some(name), Some(value)) => {
                modifier.set.push(NameValue { name: name.into(), value: value.into() })
            }
            (Some("add"), Some(name), Some(value)) => {
                modifier.add.push(NameValue { name: name.into(), value: value.into() })
            }
            (Some("remove"), Some(name), None) => modifier.remove.push(name.into()),
            (Some("full"), Some(p), None) => path = Some(PathModifier::ReplaceFullPath(p.into())),
            (Some("prefix"), Some(p), None) => path = Some(PathModifier::ReplacePrefixMatch(p.into())),
            (Some("matched"), Some(p), None) if parsed.path.starts_with(p) => matched = Some(p.to_owned()),
            (Some("host"), Some(h), None) => hostname = Some(h.to_owned()),
            (Some("scheme"), Some(s), None) => scheme = Some(s.to_owned()),
            (Some("port"), Some(p), None) => port = p.parse().ok(),
            _ => {}
        }
    }

    filters::modify_headers(request.headers_mut(), &modifier);
    if let Some(modifier) = &path {
        let rewritten = filters::rewrite_path(&parsed.path, modifier, matched.as_deref());
        std::hint::black_box(rewritten);
    }
    let redirect = RedirectFilter { scheme, hostname: hostname.clone(), path: path.clone(), port, status_code: 302 };
    let location = filters::redirect_location(&request, &redirect, matched.as_deref(), 80);
    std::hint::black_box(location);
    let rewrite = UrlRewriteFilter { hostname, path };
    filters::rewrite_request(&mut request, &rewrite, matched.as_deref());
    // Whatever the filters did, the request must still be one hyper can send.
    assert!(request.uri().path().starts_with('/') || request.uri().path().is_empty() || request.uri().path() == "*");
});
