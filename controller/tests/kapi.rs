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

use gateway_api::apis::standard::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nodus_controller::distribute::Distributor;
use nodus_controller::reconcile::Reconciler;
use nodus_controller::translate::TranslateOptions;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A running kapi; stopped (etcd and API server) on drop.
struct Kapi {
    dir: tempfile::TempDir,
}

impl Drop for Kapi {
    fn drop(&mut self) {
        for pid_file in ["kapilite.pid", "etcd.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(pid_file)) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

fn start_kapi() -> Option<Kapi> {
    let bin =
        std::env::var_os("NODUS_KAPI_BIN").map(PathBuf::from).unwrap_or_else(|| workspace().join(".cache/kapi/bin"));
    let kit =
        std::env::var_os("NODUS_KAPI_KIT").map(PathBuf::from).unwrap_or_else(|| workspace().join("../shared/kapi"));
    if !bin.join("kapilite").exists() || !kit.join("start-kapi.sh").exists() {
        let why = format!("no kapi binaries in {} (run scripts/setup-kapi.sh)", bin.display());
        if std::env::var("NODUS_REQUIRE_KAPI").as_deref() == Ok("1") {
            panic!("NODUS_REQUIRE_KAPI=1 but {why}");
        }
        eprintln!("SKIPPED controller kapi tests: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_triple();
    let status = Command::new("bash")
        .arg(kit.join("start-kapi.sh"))
        .arg(dir.path())
        .arg(port.to_string())
        .env("KAPI_BIN", &bin)
        .status()
        .unwrap();
    assert!(status.success(), "start-kapi.sh failed");
    Some(Kapi { dir })
}

/// A port P with P, P+1 and P+2 free on loopback (kapi's API server, etcd client and peer).
fn free_port_triple() -> u16 {
    for _ in 0..100 {
        let base = 20000 + (fastrand::u16(0..10000) * 3);
        let free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

async fn client(kapi: &Kapi) -> Client {
    let kubeconfig = Kubeconfig::read_from(kapi.dir.path().join("kubeconfig")).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

fn from_yaml<T: DeserializeOwned>(text: &str) -> T {
    serde_norway::from_str(text).unwrap()
}

/// The Gateway API CRDs from the kit and Nodus's own, as the chart ships them.
async fn install_crds(client: &Client, kit: &Path) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let chart = workspace().join("charts/nodus/crds");
    let files = [
        kit.join("crds/httproutes.yaml"),
        kit.join("crds/grpcroutes.yaml"),
        kit.join("crds/referencegrants.yaml"),
        chart.join("meshpolicies.yaml"),
        chart.join("authorizationpolicies.yaml"),
    ];
    for file in files {
        let crd: CustomResourceDefinition = from_yaml(&std::fs::read_to_string(file).unwrap());
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("nodus-test").force(), &Patch::Apply(&crd)).await.unwrap();
        wait_until(Duration::from_secs(20), || async {
            let crd = crds.get(&name).await.ok()?;
            crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("CRD {name} not established"));
    }
}

async fn wait_until<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(type, status, reason, message)` of our conditions on the route's first parent.
async fn conditions(routes: &Api<HttpRoute>, name: &str) -> Vec<(String, String, String, String)> {
    let Ok(route) = routes.get(name).await else { return Vec::new() };
    let value = serde_json::to_value(route.status).unwrap();
    let parents = value.get("parents").and_then(Value::as_array).cloned().unwrap_or_default();
    parents
        .iter()
        .filter(|p| p["controllerName"] == "nodus.dev/mesh-controller")
        .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (text("type"), text("status"), text("reason"), text("message"))
        })
        .collect()
}

fn has(conditions: &[(String, String, String, String)], kind: &str, status: &str, reason: &str) -> bool {
    conditions.iter().any(|(t, s, r, _)| t == kind && s == status && r == reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_translate_and_write_route_status_on_a_real_api_server() {
    let Some(kapi) = start_kapi() else { return };
    let kit =
        std::env::var_os("NODUS_KAPI_KIT").map(PathBuf::from).unwrap_or_else(|| workspace().join("../shared/kapi"));
    let client = client(&kapi).await;
    install_crds(&client, &kit).await;

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
    assert_eq!(snapshot.nodes[0].tunnel_address.to_string(), "10.100.0.11:15008");
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
