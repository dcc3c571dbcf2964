//! h2spec, the independent HTTP/2 conformance suite (github.com/summerwind/h2spec, built from
//! the kit in ../shared/tools/h2spec by scripts/setup-h2spec.sh), against the proxy's outbound
//! listener for a Service port declared HTTP/2 (h2c prior knowledge), with the echo workload
//! behind it: every frame-level case is answered by the proxy, and every request case goes
//! through the proxy's request path to the application and back. In-process on loopback with a
//! fixed original destination (support/loopback.rs says why that is not a mock).
//!
//! Without the h2spec binary this prints SKIPPED; `make test` builds it and sets
//! `NODUS_REQUIRE_H2SPEC=1`, which turns the skip into a failure.
#![allow(clippy::unwrap_used)]

#[path = "support/loopback.rs"]
mod loopback;

use nodus_proxy::core::limits::ConnectionLimits;
use std::path::PathBuf;

fn h2spec_binary() -> Option<PathBuf> {
    let path = std::env::var_os("NODUS_H2SPEC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/h2spec/bin/h2spec"));
    if path.exists() {
        return Some(path);
    }
    let why = format!("no h2spec at {} (run scripts/setup-h2spec.sh)", path.display());
    if std::env::var("NODUS_REQUIRE_H2SPEC").as_deref() == Ok("1") {
        panic!("NODUS_REQUIRE_H2SPEC=1 but {why}");
    }
    eprintln!("SKIPPED h2spec: {why}");
    None
}

/// The counts in h2spec's summary line, "146 tests, 146 passed, 0 skipped, 0 failed".
fn summary(output: &str) -> Option<(u32, u32, u32, u32)> {
    let line = output.lines().rev().find(|line| line.contains(" tests, "))?;
    let numbers: Vec<u32> = line.split(',').filter_map(|part| part.split_whitespace().next()?.parse().ok()).collect();
    match numbers[..] {
        [tests, passed, skipped, failed] => Some((tests, passed, skipped, failed)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_listener_passes_every_h2spec_case() {
    let Some(h2spec) = h2spec_binary() else { return };
    let backend_port = loopback::start_echo().await;
    let listening = loopback::start_proxy_in_front_of(backend_port, "http2", ConnectionLimits::default()).await;
    let port = listening.outbound.port().to_string();
    let output =
        tokio::process::Command::new(&h2spec).args(["-h", "127.0.0.1", "-p", &port, "-o", "3"]).output().await.unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    let (tests, passed, skipped, failed) =
        summary(&report).unwrap_or_else(|| panic!("no h2spec summary in:\n{report}"));
    // The whole suite, so that a case h2spec adds or drops shows here rather than passing unseen.
    assert_eq!(tests, 146, "h2spec ran {tests} cases");
    assert_eq!((passed, skipped, failed), (146, 0, 0), "h2spec: {passed} passed, {skipped} skipped, {failed} failed");
    assert!(output.status.success(), "h2spec exited {}", output.status);
}

#[test]
fn the_summary_line_is_read() {
    assert_eq!(summary("x\n146 tests, 144 passed, 1 skipped, 1 failed\n"), Some((146, 144, 1, 1)));
    assert_eq!(summary("nothing"), None);
}
