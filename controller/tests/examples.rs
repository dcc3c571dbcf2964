//! The example manifests translate into the config the local mesh expects (with the pod and
//! cluster IPs the local cluster's controllers would fill in taken from the standalone fixture),
//! and examples/ holds plain manifests only: nothing a cluster fills in is written by hand.
#![allow(clippy::unwrap_used)]

use nodus_controller::manifests::load_dir;
use nodus_controller::translate::{translate, LastAccepted, TranslateOptions};
use std::path::Path;

#[test]
fn local_mesh_example_translates_to_a_valid_config_with_every_route_accepted() {
    // The plain example's routes and policy, over the fixture's filled-in cluster.
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local-mesh");
    let fixture = nodus_harness::standalone_mesh_fixture();
    for (from, name) in [
        (fixture.join("cluster.yaml"), "cluster.yaml"),
        (fixture.join("catalog-cluster.yaml"), "catalog-cluster.yaml"),
        (examples.join("routes.yaml"), "routes.yaml"),
        (examples.join("catalog.yaml"), "catalog.yaml"),
    ] {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    let loaded = load_dir(dir.path()).expect("the example loads");
    let t = translate(&loaded.state, &TranslateOptions::default(), &LastAccepted::new());
    t.snapshot.validate().expect("valid");
    assert_eq!(t.snapshot.http_routes.len(), 2, "echo-split and catalog");
    assert_eq!(t.snapshot.grpc_routes.len(), 1);
    assert_eq!(t.snapshot.services.len(), 4);
    assert_eq!(t.snapshot.authorization_policies.len(), 1);
    assert!(t.snapshot.http_routes.iter().any(|r| r.rules.iter().all(|rule| rule.retry.is_some())));
    assert!(t.snapshot.workloads.iter().all(|w| w.mesh_enabled));
    assert_eq!(t.snapshot.nodes.len(), 2);
    for (key, status) in &t.statuses {
        for parent in &status.parents {
            assert!(parent.accepted.status && parent.resolved_refs.status, "{key:?}: {parent:?}");
        }
    }
}

/// The local mesh's cluster plus one example file, translated.
fn translate_example(path: &Path) -> nodus_controller::translate::Translation {
    use nodus_controller::cluster::ClusterState;
    use nodus_controller::manifests::parse_objects;
    let mut objects = Vec::new();
    for file in ["cluster.yaml", "catalog-cluster.yaml"] {
        let cluster = nodus_harness::standalone_mesh_fixture().join(file);
        objects.extend(parse_objects(&cluster, &std::fs::read_to_string(&cluster).unwrap()).unwrap());
    }
    let text = std::fs::read_to_string(path).unwrap();
    objects.extend(parse_objects(path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let state = ClusterState::from_objects(objects);
    translate(&state, &TranslateOptions::default(), &LastAccepted::new())
}

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
}

#[test]
fn every_traffic_example_is_accepted_with_its_references_resolved() {
    for path in yaml_files("traffic") {
        let t = translate_example(&path);
        t.snapshot.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.display();
        assert_eq!(t.snapshot.http_routes.len() + t.snapshot.grpc_routes.len(), 1, "{name}: one route per example");
        assert_eq!(t.statuses.len(), 1, "{name}");
        for status in t.statuses.values() {
            for parent in &status.parents {
                assert!(parent.accepted.status, "{name}: not accepted: {parent:?}");
                assert!(parent.resolved_refs.status, "{name}: references not resolved: {parent:?}");
            }
        }
        // Nothing of the route was dropped on the way: its rules all arrive.
        let text = std::fs::read_to_string(&path).unwrap();
        let route: serde_json::Value = serde_norway::from_str(&text).unwrap();
        let rules = route["spec"]["rules"].as_array().unwrap().len();
        let translated = t.snapshot.http_routes.first().map(|r| r.rules.len());
        let translated = translated.or(t.snapshot.grpc_routes.first().map(|r| r.rules.len()));
        assert_eq!(translated, Some(rules), "{name}");
    }
}

#[test]
fn every_security_example_becomes_proxy_policy() {
    for path in yaml_files("security") {
        let t = translate_example(&path);
        t.snapshot.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let policies = t.snapshot.mtls.len() + t.snapshot.authorization_policies.len();
        assert_eq!(policies, 1, "{}: one policy per example", path.display());
        for policy in &t.snapshot.authorization_policies {
            assert!(!policy.rules.is_empty(), "{}", path.display());
            assert!(
                t.snapshot.workloads.iter().any(|w| policy.selects(&w.id.namespace, &w.labels)),
                "{}: selects a pod of the local mesh",
                path.display()
            );
        }
    }
}

/// Every example is what a user writes: no status, no cluster IPs, no EndpointSlices, no pod
/// pinned by `nodeName` (the local cluster's controllers do all of that).
#[test]
fn examples_are_plain_manifests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for folder in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(folder.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|x| x != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for document in serde_norway::Deserializer::from_str(&text) {
                let value = <serde_json::Value as serde::Deserialize>::deserialize(document).unwrap();
                let name = format!("{}: {} {}", path.display(), value["kind"], value["metadata"]["name"]);
                assert!(value.get("status").is_none(), "{name} writes a status");
                assert_ne!(value["kind"], "EndpointSlice", "{name}: EndpointSlices come from the cluster");
                assert!(value["spec"].get("clusterIP").is_none(), "{name} picks its cluster IP");
                assert!(value["spec"].get("nodeName").is_none(), "{name} is pinned to a node");
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} documents under examples/");
}
