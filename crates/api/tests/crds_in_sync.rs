//! The CRDs shipped in charts/nodus/crds are exactly what the Rust types generate.
#![allow(clippy::unwrap_used)]

#[test]
fn chart_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/nodus/crds");
    for (name, generated) in nodus_api::crds_yaml().unwrap() {
        let path = dir.join(name);
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == generated,
            "{} is out of date: run `cargo run -p nodus-controller -- --write-crds charts/nodus/crds`",
            path.display()
        );
    }
    let shipped: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(shipped.len(), nodus_api::crds_yaml().unwrap().len(), "no stale CRD files: {shipped:?}");
}
