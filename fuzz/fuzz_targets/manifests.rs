//! Kubernetes manifests as the standalone controller reads them (Services, EndpointSlices,
//! Pods, Namespaces, HTTPRoutes, GRPCRoutes, Nodus policies): parsing never panics, and the
//! controller's translation of whatever parses is a snapshot that validates — the controller
//! must never send proxies a config they would reject.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodus_controller::cluster::ClusterState;
use nodus_controller::manifests::parse_objects;
use nodus_controller::translate::{translate, LastAccepted, TranslateOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(objects) = parse_objects(std::path::Path::new("fuzz.yaml"), text) else { return };
    let state = ClusterState::from_objects(objects);
    let translation = translate(&state, &TranslateOptions::default(), &LastAccepted::new());
    if let Err(error) = translation.snapshot.validate() {
        panic!("the controller produced an invalid snapshot: {error}\n{text}");
    }
});
