//! docs/observability.md is the metric reference: every metric the proxy registers is listed
//! there, and the doc lists no metric the proxy does not have.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

#[test]
fn the_metric_reference_lists_exactly_the_proxys_metrics() {
    let metrics = nodus_proxy::core::metrics::Metrics::new();
    let registered: BTreeSet<String> = metrics.names().iter().map(|n| format!("nodus_{n}")).collect();
    assert!(registered.len() > 10, "{registered:?}");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md")).unwrap();
    // Rows of the reference table start with `| \`nodus_...\``.
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        // The controller's metrics have their own table (controller/tests/metric_reference.rs).
        .filter(|name| name.starts_with("nodus_") && !name.starts_with("nodus_controller_"))
        .map(|name| name.trim_end_matches("_total").to_string())
        .collect();
    let registered_base = registered;
    let missing: Vec<_> = registered_base.difference(&documented).collect();
    assert!(missing.is_empty(), "not in docs/observability.md: {missing:?}");
    // The redirect's counters come from BPF maps through a collector registered at start-up.
    let redirect: BTreeSet<String> =
        nodus_proxy::control::enrollment::REDIRECT_METRICS.iter().map(|(name, _, _)| format!("nodus_{name}")).collect();
    let undocumented: Vec<_> = redirect.difference(&documented).collect();
    assert!(undocumented.is_empty(), "not in docs/observability.md: {undocumented:?}");
    let stale: Vec<_> = documented.iter().filter(|d| !registered_base.contains(*d) && !redirect.contains(*d)).collect();
    assert!(stale.is_empty(), "documented but not exported: {stale:?}");
}
