//! The text answer format of the echo server the Gateway API conformance suite's mesh tests run
//! (`registry.k8s.io/gateway-api/echo-advanced`): one `Field=value` per line, as the suite's
//! `conformance/utils/echo` parses it, taking the first line of each field.
//!
//! The server writes the facts of a request ([`render_request`]); the client command prints,
//! per answer, its own view first (`[N] StatusCode=...`, `[N] ResponseHeader=Name:value`), then
//! the server's lines prefixed `[N body] ` ([`render_answer`]). Answers of a batch are separated
//! by a blank line. These are facts of the format; the code is ours.

use crate::http_echo::EchoReport;

/// The server's lines for `report`, answered with `status` on `port`.
pub fn render_request(report: &EchoReport, status: u16, port: u16, version: &str) -> String {
    let mut lines = vec![
        format!("ServiceVersion={version}"),
        format!("ServicePort={port}"),
        format!("StatusCode={status}"),
        format!("URL={}", report.path),
        format!("Host={}", report.host),
        format!("Hostname={}", report.pod),
        format!("Method={}", report.method),
        format!("Proto={}", report.protocol),
        format!("IP={}", report.remote_addr.rsplit_once(':').map_or(report.remote_addr.as_str(), |(ip, _)| ip)),
    ];
    for (name, values) in &report.headers {
        for value in values {
            lines.push(format!("RequestHeader={}:{value}", canonical(name)));
        }
    }
    lines.join("\n") + "\n"
}

/// Header names as Go's net/http writes them (`x-foo-bar` → `X-Foo-Bar`), as the upstream
/// server reports them; the suite compares names without regard to case either way.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// What the client saw of one answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAnswer {
    /// The URL requested.
    pub url: String,
    /// The status: an HTTP status, or for gRPC 200 when the call succeeded and else its code.
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// The server's lines (its body), if it answered.
    pub body: String,
}

/// The client's lines for answer number `index`.
pub fn render_answer(index: usize, answer: &ClientAnswer) -> String {
    let mut text = format!("[{index}] Url={}\n[{index}] StatusCode={}\n", answer.url, answer.status);
    for (name, value) in &answer.headers {
        text.push_str(&format!("[{index}] ResponseHeader={}:{value}\n", canonical(name)));
    }
    for line in answer.body.lines().filter(|l| !l.is_empty()) {
        text.push_str(&format!("[{index} body] {line}\n"));
    }
    text
}

/// The first value of `field` in `text` (what the suite's parser takes): the rest of the line
/// after the first `field=`.
pub fn first_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("{field}=");
    text.lines().find_map(|line| line.find(&key).map(|at| &line[at + key.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> EchoReport {
        let mut report = EchoReport {
            pod: "echo-v1-abc".into(),
            method: "GET".into(),
            path: "/path?x=1".into(),
            host: "echo".into(),
            protocol: "HTTP/1.1".into(),
            remote_addr: "10.244.1.2:40000".into(),
            ..Default::default()
        };
        report.headers.insert("x-foo".into(), vec!["a".into(), "b".into()]);
        report
    }

    #[test]
    fn the_server_lines_carry_every_field_the_suite_reads() {
        let text = render_request(&report(), 200, 8080, "v1");
        for (field, value) in [
            ("StatusCode", "200"),
            ("Hostname", "echo-v1-abc"),
            ("URL", "/path?x=1"),
            ("Host", "echo"),
            ("Method", "GET"),
            ("Proto", "HTTP/1.1"),
            ("IP", "10.244.1.2"),
            ("ServicePort", "8080"),
            ("RequestHeader", "X-Foo:a"),
        ] {
            assert_eq!(first_field(&text, field), Some(value), "{field} in\n{text}");
        }
        assert!(text.contains("RequestHeader=X-Foo:b\n"), "every value of a header: {text}");
    }

    #[test]
    fn the_clients_own_status_comes_before_the_servers() {
        // A redirect answered by the proxy: no server lines; a server's 200 under a client's 503
        // must not be what the suite reads.
        let answer = ClientAnswer {
            url: "http://echo/".into(),
            status: 503,
            headers: vec![("location".into(), "http://x/".into())],
            body: render_request(&report(), 200, 8080, ""),
        };
        let text = render_answer(0, &answer);
        assert_eq!(first_field(&text, "StatusCode"), Some("503"), "{text}");
        assert_eq!(first_field(&text, "ResponseHeader"), Some("Location:http://x/"));
        assert!(text.contains("[0 body] Hostname=echo-v1-abc\n"), "{text}");
    }

    #[test]
    fn header_names_are_canonical() {
        assert_eq!(canonical("x-request-id"), "X-Request-Id");
        assert_eq!(canonical(":authority"), ":authority");
    }
}
