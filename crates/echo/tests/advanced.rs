//! `nodus-echo-advanced` as the Gateway API conformance suite uses it: a server started with the
//! upstream image's args, and its `client` command, whose output is read with the suite's rules
//! (first `Field=` of each field; batches split at blank lines).
#![allow(clippy::unwrap_used)]

use nodus_echo::text::first_field;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[String]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodus-echo-advanced"))
        .args(args)
        .env("POD_NAME", "echo-v1-7d9f-abcde")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // One line per port, once it listens (the server binds them in port order, not argument order).
    let ports = ["--port=", "--grpc=", "--tcp=", "--tls="];
    for _ in 0..args.iter().filter(|a| ports.iter().any(|p| a.starts_with(p))).count() {
        assert!(lines.next().unwrap().unwrap().starts_with("nodus-echo-advanced listening on"));
    }
    Server(child)
}

fn client(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nodus-echo-advanced")).arg("client").args(args).output().unwrap();
    assert!(out.status.success(), "client {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn http_answers_carry_what_the_suite_reads_and_batches_split_at_blank_lines() {
    let (http, grpc) = (free_port(), free_port());
    let _server =
        start(&[format!("--port={http}"), format!("--grpc={grpc}"), "--tls=8443".into(), "--crt=/none".into()]);
    let url = format!("http://127.0.0.1:{http}/path?x=1");
    let text = client(&[&url, "--method=POST", "-H", "X-Foo:bar", "-H", "x-echo-set-header:x-answer:42"]);
    for (field, value) in [
        ("StatusCode", "200".to_owned()),
        ("Hostname", "echo-v1-7d9f-abcde".to_owned()),
        ("URL", "/path?x=1".to_owned()),
        ("Method", "POST".to_owned()),
        ("Proto", "HTTP/1.1".to_owned()),
        ("Host", format!("127.0.0.1:{http}")),
        ("ServicePort", http.to_string()),
        ("ResponseHeader", "Content-Length:".to_owned()),
    ] {
        let found = first_field(&text, field).unwrap_or_else(|| panic!("no {field} in\n{text}"));
        assert!(found.starts_with(&value), "{field}={found}, wanted {value}, in\n{text}");
    }
    assert!(text.contains("] RequestHeader=X-Foo:bar\n"), "{text}");
    assert!(text.contains("] ResponseHeader=X-Answer:42\n"), "{text}");

    // The client's own status comes first: a 503 from the server is what the suite reads.
    let failed = client(&[&url, "-H", "x-echo-status:503"]);
    assert_eq!(first_field(&failed, "StatusCode"), Some("503"), "{failed}");

    // --count: one section per answer, separated by blank lines.
    let batch = client(&[&url, "--count=3"]);
    let sections: Vec<&str> = batch.split("\n\n").filter(|s| !s.trim().is_empty()).collect();
    assert_eq!(sections.len(), 3, "{batch}");
    for section in sections {
        assert_eq!(first_field(section, "Hostname"), Some("echo-v1-7d9f-abcde"), "{section}");
    }

    // gRPC: a successful call reads as 200, with the answering pod.
    let text = client(&[&format!("grpc://127.0.0.1:{grpc}"), "--count=2"]);
    assert_eq!(first_field(&text, "StatusCode"), Some("200"), "{text}");
    assert_eq!(first_field(&text, "Hostname"), Some("echo-v1-7d9f-abcde"), "{text}");
    assert_eq!(text.split("\n\n").filter(|s| !s.trim().is_empty()).count(), 2, "{text}");
}

#[test]
fn a_client_that_cannot_connect_fails_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodus-echo-advanced"))
        .args(["client", &format!("http://127.0.0.1:{}/", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requesting"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_nodus-echo-advanced")).args(["client", "ftp://x/"]).output().unwrap();
    assert!(!out.status.success(), "an unsupported scheme is an error");
}
