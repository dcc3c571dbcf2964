//! The example manifests translate into the config the local mesh expects.

use nodus_controller::manifests::load_dir;
use nodus_controller::translate::{translate, LastAccepted, TranslateOptions};
use std::path::Path;

#[test]
fn local_mesh_example_translates_to_a_valid_config_with_every_route_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local-mesh");
    let loaded = load_dir(&dir).expect("the example loads");
    let t = translate(&loaded.state, &TranslateOptions::default(), &LastAccepted::new());
    t.snapshot.validate().expect("valid");
    assert_eq!(t.snapshot.http_routes.len(), 1);
    assert_eq!(t.snapshot.grpc_routes.len(), 1);
    assert_eq!(t.snapshot.services.len(), 3);
    assert!(t.snapshot.workloads.iter().all(|w| w.mesh_enabled));
    assert_eq!(t.snapshot.nodes.len(), 2);
    for (key, status) in &t.statuses {
        for parent in &status.parents {
            assert!(parent.accepted.status && parent.resolved_refs.status, "{key:?}: {parent:?}");
        }
    }
}
