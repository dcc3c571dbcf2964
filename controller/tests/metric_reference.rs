//! docs/observability.md lists exactly the controller's metrics: every one it exports, and none
//! it does not.
#![allow(clippy::unwrap_used)]

use nodus_controller::distribute::Distributor;
use nodus_controller::metrics::ControllerMetrics;
use std::collections::BTreeSet;

#[test]
fn the_metric_reference_lists_exactly_the_controllers_metrics() {
    let metrics = ControllerMetrics::new(Distributor::new());
    // `# TYPE <name> <type>`: counters are named without `_total` there.
    let exported: BTreeSet<String> = metrics
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert!(exported.len() >= 10, "{exported:?}");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md")).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("nodus_controller_"))
        .map(|name| name.trim_end_matches("_total").to_string())
        .collect();
    let missing: Vec<_> = exported.difference(&documented).collect();
    assert!(missing.is_empty(), "not in docs/observability.md: {missing:?}");
    let stale: Vec<_> = documented.difference(&exported).collect();
    assert!(stale.is_empty(), "documented but not exported: {stale:?}");
}
