//! The controller against a real API server holding the Gateway API v1.6.1 **experimental**
//! channel CRDs, which keep fields the standard channel prunes: HTTPRoute `retry` (GEP-1731) is
//! honoured, and a field Nodus does not support (`sessionPersistence`) or a value it cannot
//! honour is named in the route's Accepted condition rather than dropped.
//!
//! Needs the kapi binaries (`make test` builds them); SKIPPED without them, a failure when
//! `NODUS_REQUIRE_KAPI=1`.
#![allow(clippy::unwrap_used)]

mod support;

use gateway_api::apis::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use nodus_controller::distribute::Distributor;
use nodus_controller::reconcile::Reconciler;
use nodus_controller::translate::TranslateOptions;
use std::time::Duration;
use support::{from_yaml, install_experimental_crds, our_conditions, start_kapi, wait_until};

/// `(type, status, reason, message)` of our conditions on the route's parents.
async fn conditions(routes: &Api<HttpRoute>, name: &str) -> Vec<(String, String, String, String)> {
    let Ok(route) = routes.get(name).await else { return Vec::new() };
    our_conditions(serde_json::to_value(route.status).unwrap())
}

fn route(name: &str, rule_extra: &str) -> HttpRoute {
    from_yaml(&format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: {name}, namespace: demo }}\nspec:\n  parentRefs: [{{ group: \"\", kind: Service, name: web, port: 80 }}]\n  rules:\n    - backendRefs: [{{ name: web, port: 80 }}]\n{rule_extra}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experimental_retry_is_honoured_and_unsupported_fields_are_named_in_status() {
    let Some(kapi) = start_kapi() else { return };
    let client = kapi.client().await;
    install_experimental_crds(&client).await;
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
        .create(&pp, &from_yaml("metadata: { name: web-1, namespace: demo, labels: { kubernetes.io/service-name: web } }\naddressType: IPv4\nports: [{ name: http, port: 8080 }]\nendpoints: [{ addresses: [10.244.1.3] }]"))
        .await
        .unwrap();
    let routes: Api<HttpRoute> = Api::namespaced(client.clone(), "demo");
    routes
        .create(&pp, &route("retrying", "      retry: { attempts: 3, backoff: 50ms, codes: [503, 429] }\n"))
        .await
        .unwrap();
    routes.create(&pp, &route("sticky", "      sessionPersistence: { sessionName: s, type: Cookie }\n")).await.unwrap();
    routes.create(&pp, &route("too-many", "      retry: { attempts: 50 }\n")).await.unwrap();

    let distributor = Distributor::new();
    let reconciler = Reconciler::new(TranslateOptions::default(), distributor.clone());
    let controller = tokio::spawn(nodus_controller::kube_io::run(client.clone(), reconciler));

    let snapshot = wait_until(Duration::from_secs(20), || async {
        let current = distributor.current();
        current.snapshot.http_routes.iter().any(|r| r.id.name == "retrying").then_some(current)
    })
    .await
    .expect("the retrying route is published");
    let retrying = snapshot.snapshot.http_routes.iter().find(|r| r.id.name == "retrying").unwrap();
    let retry = retrying.rules[0].retry.as_ref().expect("the field reached the config");
    assert_eq!((retry.attempts, retry.codes.as_slice()), (3, &[503, 429][..]));
    assert_eq!(retry.backoff.map(|b| b.as_duration()), Some(Duration::from_millis(50)));
    let names: Vec<&str> = snapshot.snapshot.http_routes.iter().map(|r| r.id.name.as_str()).collect();
    assert_eq!(names, ["retrying"], "routes Nodus cannot honour whole are not published");

    for (name, expected) in [
        ("retrying", None),
        ("sticky", Some("rules[0].sessionPersistence is not supported")),
        ("too-many", Some("rules[0].retry.attempts 50 is outside 0-10")),
    ] {
        let found = wait_until(Duration::from_secs(20), || async {
            let c = conditions(&routes, name).await;
            let accepted = c.iter().find(|(t, ..)| t == "Accepted")?.clone();
            match expected {
                None => (accepted.1 == "True").then_some(accepted),
                Some(text) => (accepted.1 == "False" && accepted.2 == "UnsupportedValue" && accepted.3.contains(text))
                    .then_some(accepted),
            }
        })
        .await;
        assert!(found.is_some(), "{name}: {:?}", conditions(&routes, name).await);
    }
    controller.abort();
}
