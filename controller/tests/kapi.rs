//! The controller against a real Kubernetes API server (`kapi`: upstream k8s.io/apiserver and
//! apiextensions-apiserver with etcd, built by `scripts/setup-kapi.sh`), holding the real
//! Gateway API v1.6.1 CRDs: watches, translation, and route status by server-side apply.
//!
//! What this server cannot do and the test therefore does itself: there is no EndpointSlice
//! controller (the test writes slices), no clusterIP allocation (the test sets clusterIP).
//! Nothing is mocked.
//!
//! Needs the kapi binaries (`make test` builds them). Without them the test prints SKIPPED,
//! or fails when `NODUS_REQUIRE_KAPI=1` (set by `make test` once it has built them).
#![allow(clippy::unwrap_used)]

mod support;

use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nodus_controller::distribute::Distributor;
use nodus_controller::reconcile::Reconciler;
use nodus_controller::translate::TranslateOptions;
use serde_json::Value;
use std::time::Duration;
use support::{from_yaml, install_crds, our_conditions, start_kapi, wait_until};

/// `(type, status, reason, message)` of our conditions on the route's parents.
async fn conditions(routes: &Api<HttpRoute>, name: &str) -> Vec<(String, String, String, String)> {
    let Ok(route) = routes.get(name).await else { return Vec::new() };
    our_conditions(serde_json::to_value(route.status).unwrap())
}

fn has(conditions: &[(String, String, String, String)], kind: &str, status: &str, reason: &str) -> bool {
    conditions.iter().any(|(t, s, r, _)| t == kind && s == status && r == reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_translate_and_write_route_status_on_a_real_api_server() {
    let Some(kapi) = start_kapi() else { return };
    let client = kapi.client().await;
    install_crds(&client).await;

    let pp = PostParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&pp, &from_yaml("metadata: { name: demo, labels: { nodus.dev/mesh: enabled } }")).await.unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "demo");
    services
        .create(&pp, &from_yaml("metadata: { name: web, namespace: demo }\nspec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80, targetPort: 8080 }] }"))
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "demo");
    slices
        .create(&pp, &from_yaml("metadata: { name: web-1, namespace: demo, labels: { kubernetes.io/service-name: web } }\naddressType: IPv4\nports: [{ name: http, port: 8080 }]\nendpoints: [{ addresses: [10.244.1.3], nodeName: node-1, targetRef: { kind: Pod, name: web-0, namespace: demo } }]"))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    pods.create(&pp, &from_yaml("metadata: { name: web-0, namespace: demo }\nspec: { nodeName: node-1, containers: [{ name: web, image: echo }] }"))
        .await
        .unwrap();
    let pod_status: Value =
        serde_json::json!({ "status": { "phase": "Running", "hostIP": "10.100.0.11", "podIP": "10.244.1.3" } });
    pods.patch_status("web-0", &PatchParams::default(), &Patch::Merge(&pod_status)).await.unwrap();

    let routes: Api<HttpRoute> = Api::namespaced(client.clone(), "demo");
    let route = |name: &str, path: &str, backend: &str| -> HttpRoute {
        from_yaml(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: {name}, namespace: demo }}\nspec:\n  parentRefs: [{{ group: \"\", kind: Service, name: web, port: 80 }}]\n  rules:\n    - matches: [{{ path: {{ type: RegularExpression, value: \"{path}\" }} }}]\n      backendRefs: [{{ name: {backend}, port: 80 }}]\n"
        ))
    };
    routes.create(&pp, &route("good", "/api/.*", "web")).await.unwrap();
    routes.create(&pp, &route("dangling", "/x", "missing")).await.unwrap();

    // Nodus's own resources, validated by the generated CRD schemas of a real API server.
    let mesh_policies: Api<nodus_api::MeshPolicy> = Api::namespaced(client.clone(), "demo");
    mesh_policies.create(&pp, &from_yaml("apiVersion: policy.nodus.dev/v1alpha1\nkind: MeshPolicy\nmetadata: { name: default, namespace: demo }\nspec: { mtls: { mode: Strict } }")).await.unwrap();
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "demo", &kube::api::ApiResource::erase::<nodus_api::MeshPolicy>(&()));
    let bad: kube::api::DynamicObject = from_yaml(
        "apiVersion: policy.nodus.dev/v1alpha1\nkind: MeshPolicy\nmetadata: { name: typo, namespace: demo }\nspec: { mtls: { mode: Sometimes } }",
    );
    let refused = raw.create(&pp, &bad).await.expect_err("the generated schema refuses an unknown mode");
    assert!(refused.to_string().contains("Sometimes"), "{refused}");
    let authz: Api<nodus_api::AuthorizationPolicy> = Api::namespaced(client.clone(), "demo");
    authz.create(&pp, &from_yaml("apiVersion: policy.nodus.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: deny-admin, namespace: demo }\nspec: { action: Deny, rules: [{ paths: [\"/admin/*\"] }] }")).await.unwrap();

    let distributor = Distributor::new();
    let reconciler = Reconciler::new(TranslateOptions::default(), distributor.clone());
    let controller = tokio::spawn(nodus_controller::kube_io::run(client.clone(), reconciler));

    // Translation sees every kind.
    let published = wait_until(Duration::from_secs(20), || async {
        let current = distributor.current();
        (current.snapshot.http_routes.len() == 2).then_some(current)
    })
    .await
    .expect("both routes published");
    let snapshot = &published.snapshot;
    assert_eq!(snapshot.services[0].endpoints[0].address.to_string(), "10.244.1.3");
    assert!(snapshot.workloads[0].mesh_enabled);
    assert_eq!(snapshot.nodes[0].tunnel_address.map(|a| a.to_string()).as_deref(), Some("10.100.0.11:15008"));
    assert_eq!(snapshot.mtls[0].mode, nodus_config::MtlsMode::Strict);
    assert_eq!(snapshot.authorization_policies[0].rules[0].paths, ["/admin/*"]);

    // Status, written by server-side apply.
    let good = wait_until(Duration::from_secs(20), || async {
        let c = conditions(&routes, "good").await;
        (has(&c, "Accepted", "True", "Accepted") && has(&c, "ResolvedRefs", "True", "ResolvedRefs")).then_some(c)
    })
    .await;
    assert!(good.is_some(), "good: {:?}", conditions(&routes, "good").await);
    let dangling = wait_until(Duration::from_secs(20), || async {
        let c = conditions(&routes, "dangling").await;
        has(&c, "ResolvedRefs", "False", "BackendNotFound").then_some(c)
    })
    .await;
    assert!(dangling.is_some(), "dangling: {:?}", conditions(&routes, "dangling").await);
    let managers: Vec<String> = routes
        .get_status("good")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .iter()
        .filter(|f| f.subresource.as_deref() == Some("status"))
        .filter_map(|f| f.manager.clone())
        .collect();
    assert_eq!(managers, ["nodus-controller"], "status is ours, by server-side apply");

    // No write storm: once settled, our status writes do not trigger more writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let version_before = routes.get("good").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        routes.get("good").await.unwrap().metadata.resource_version,
        version_before,
        "the route was rewritten with nothing to change"
    );

    // An invalid edit: Accepted=False, and the previous version stays in force.
    let mut edited = routes.get("good").await.unwrap();
    edited.spec = route("good", "(", "web").spec;
    routes.replace("good", &pp, &edited).await.unwrap();
    let rejected = wait_until(Duration::from_secs(20), || async {
        let c = conditions(&routes, "good").await;
        c.iter().find(|(t, s, r, _)| t == "Accepted" && s == "False" && r == "UnsupportedValue").cloned()
    })
    .await
    .expect("the invalid edit is reported");
    assert!(rejected.3.contains("generation 1 stays in force"), "{}", rejected.3);
    let current = distributor.current();
    let good_route = current.snapshot.http_routes.iter().find(|r| r.id.name == "good").expect("still in the config");
    assert_eq!(
        good_route.rules[0].matches[0].path,
        Some(nodus_config::PathMatch::RegularExpression("/api/.*".into())),
        "the last accepted version is what proxies get"
    );

    // Deleting the missing backend's absence: create the Service, the route resolves.
    services
        .create(&pp, &from_yaml("metadata: { name: missing, namespace: demo }\nspec: { clusterIP: 10.96.0.11, ports: [{ name: http, port: 80 }] }"))
        .await
        .unwrap();
    let resolved = wait_until(Duration::from_secs(20), || async {
        let c = conditions(&routes, "dangling").await;
        has(&c, "ResolvedRefs", "True", "ResolvedRefs").then_some(())
    })
    .await;
    assert!(resolved.is_some(), "dangling after the Service appeared: {:?}", conditions(&routes, "dangling").await);
    controller.abort();

    // The CA lives in a Secret and survives controller restarts.
    namespaces.create(&pp, &from_yaml("metadata: { name: nodus-system }")).await.unwrap();
    let first = nodus_controller::certificates::load_or_create_ca_secret(&client, "nodus-system", "cluster.local")
        .await
        .unwrap();
    let again = nodus_controller::certificates::load_or_create_ca_secret(&client, "nodus-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(first.certificate_pem(), again.certificate_pem(), "a restarted controller signs with the same root");
    let secret: k8s_openapi::api::core::v1::Secret =
        Api::namespaced(client.clone(), "nodus-system").get("nodus-ca").await.unwrap();
    assert!(secret.data.unwrap().contains_key("ca.key"));

    // A trust-anchor rotation reads the staged root from the Secret and promotes it there.
    use nodus_controller::trust::CaStore;
    let store = CaStore::Secret { client: client.clone(), namespace: "nodus-system".into() };
    assert!(store.load_next().await.unwrap().is_none());
    let staged = tempfile::tempdir().unwrap();
    let next = nodus_controller::trust::stage_root(staged.path(), "cluster.local").unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "nodus-system");
    let base64 = |text: &str| serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap();
    let patch = serde_json::json!({ "data": {
        "next.crt": base64(next.certificate_pem()), "next.key": base64(next.key_pem()) } });
    secrets.patch("nodus-ca", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let loaded = store.load_next().await.unwrap().expect("the staged root");
    assert_eq!(loaded.certificate_pem(), next.certificate_pem());
    store.promote(&loaded).await.unwrap();
    let promoted = nodus_controller::certificates::load_or_create_ca_secret(&client, "nodus-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(promoted.certificate_pem(), next.certificate_pem(), "the new root is the active one");
    assert!(store.load_next().await.unwrap().is_none(), "and no longer staged");
}
