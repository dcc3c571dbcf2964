//! Config snapshots as YAML (the proxy's `--config-file` and the local mesh): decoding never
//! panics, and a snapshot that validates is applied by the proxy's config store (compiling
//! routes, regexes, balancers, trust roots) without panicking; one that does not is rejected
//! with the previous config kept in force.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodus_config::ConfigSnapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(snapshot) = serde_norway::from_str::<ConfigSnapshot>(text) else { return };
    nodus_fuzz::apply_checked(snapshot);
});
