//! What the cluster tests of nodusctl share: finding kubectl and the kapi binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The real kubectl: `$NODUS_KUBECTL`, else the one scripts/setup-helm.sh puts in .cache/helm/bin,
/// else the PATH's.
pub fn kubectl_binary() -> PathBuf {
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/helm/bin/kubectl");
    std::env::var_os("NODUS_KUBECTL").map(PathBuf::from).unwrap_or(if cached.exists() {
        cached
    } else {
        "kubectl".into()
    })
}

/// Whether the kapi binaries are built; otherwise says `test` is skipped (fails under CI).
pub fn kapi_built(test: &str) -> bool {
    let bin = std::env::var_os("NODUS_KAPI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/kapi/bin"));
    if bin.join("kapilite").exists() {
        return true;
    }
    assert!(std::env::var("NODUS_REQUIRE_KAPI").as_deref() != Ok("1"), "NODUS_REQUIRE_KAPI=1 but kapi is not built");
    eprintln!("SKIPPED {test}: no kapi binaries (scripts/setup-kapi.sh)");
    false
}
