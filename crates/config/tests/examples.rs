//! The example snapshots in examples/ parse and validate (they are what the demo serves).
#![allow(clippy::unwrap_used)]

#[test]
fn local_mesh_example_is_a_valid_snapshot() {
    let text = include_str!("../../../examples/local-mesh/snapshot.yaml");
    let snapshot: nodus_config::ConfigSnapshot = serde_norway::from_str(text).unwrap();
    snapshot.validate().unwrap();
    assert_eq!(snapshot.http_routes.len(), 1);
    assert_eq!(snapshot.grpc_routes.len(), 1);
}
