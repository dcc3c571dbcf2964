//! The Nodus mesh harness: a small cluster made of network namespaces on one machine.
//!
//! A [`Lab`] holds a bridge standing for the cluster network, N node namespaces on it, and pod
//! namespaces attached to their node by veth pairs, each pod with its own cgroup v2 directory so
//! that per-pod processes can be captured by cgroup eBPF programs. Tests, benchmarks and the local
//! mesh demo all build on it.
//!
//! Everything a lab makes is named with a run-unique id (`nodus-<id>-...`), removed when the
//! [`Lab`] is dropped (also on panic), and removed by the next run if the process that made it
//! was killed. Two processes can each run labs at the same time.
//!
//! Building a lab needs root. Tests call [`skip_unless_lab_supported!`] first: it prints why a
//! test is skipped, or fails it when `NODUS_REQUIRE_PRIVILEGED_TESTS=1` (as in CI), so a
//! privileged test never passes silently without running.

mod cgroup;
mod error;
pub mod h2_frames;
mod lab;
mod mesh;
mod netns;
mod process;
mod runs;
mod sys;

pub use cgroup::{cgroup2_mount, Cgroup, HARNESS_CGROUP_DIR};
pub use error::{HarnessError, Result};
pub use lab::{check_support, Lab, LabSpec, Node, Pod};
pub use mesh::{
    http_get, metric_value, start_echo, ConfigSource, NodeProxy, CONTROLLER_METRICS_PORT, CONTROLLER_PORT,
    PROXY_ADMIN_PORT, PROXY_DEBUG_PORT, PROXY_INBOUND_PORT, PROXY_OUTBOUND_PORT,
};
pub use netns::{with_resolv_conf, NetNs};
pub use process::Process;
pub use runs::{leftovers_of_run, netns_of_run, remove_stale_runs};

/// The environment variable that turns "skip" into "fail" for tests that need root.
pub const REQUIRE_PRIVILEGED_ENV: &str = "NODUS_REQUIRE_PRIVILEGED_TESTS";

/// Decides what a test that needs a lab does on a machine that cannot build one: returns
/// `Some(reason)` when the test should skip, and panics when skipping is forbidden.
pub fn lab_skip_reason(test: &str) -> Option<String> {
    let reason = check_support().err()?;
    if std::env::var(REQUIRE_PRIVILEGED_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: cannot run: {reason} ({REQUIRE_PRIVILEGED_ENV}=1 forbids skipping)");
    }
    eprintln!("SKIPPED {test}: {reason}");
    Some(reason)
}

/// Returns early from a test, saying why, when this machine cannot build a lab.
#[macro_export]
macro_rules! skip_unless_lab_supported {
    () => {
        if $crate::lab_skip_reason(module_path!()).is_some() {
            return;
        }
    };
}

/// Standalone mode's fixture (`fixtures/standalone-mesh`): the local mesh's example
/// (examples/local-mesh) with what the API server's controllers would fill in written out (pod
/// and cluster IPs, EndpointSlices), for tests of the controller's `--manifests` mode.
pub fn standalone_mesh_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/standalone-mesh")
}
