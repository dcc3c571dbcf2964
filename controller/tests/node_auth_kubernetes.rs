//! Node proxies in a cluster authenticate with their projected service-account tokens: the real
//! controller binary, in Kubernetes mode against a real API server (kapi), asks for a
//! TokenReview of each token and holds the proxy to the node of the pod the token is bound to.
//!
//! One part is a stand-in, because no API server that can review tokens runs here: kapi has no
//! token authenticator (anonymous only; see ../shared/kapi/README.md), so a small HTTP front
//! answers `POST /apis/authentication.k8s.io/v1/tokenreviews` from a table of tokens, the way
//! kube-apiserver does (a token is valid only for the audiences it was made for; the review
//! returns the service account and the pod it is bound to), and passes every other request
//! (watches, the pod lookup) to kapi unchanged. The pods, their UIDs and nodes are real objects
//! in kapi. The front also checks that the controller asks for its own audience.
//!
//! Needs the kapi binaries, like tests/kapi.rs (SKIPPED without them unless
//! `NODUS_REQUIRE_KAPI=1`).
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nodus_identity::{SpiffeId, WorkloadKey};
use nodus_wire::proto::certificates_client::CertificatesClient;
use nodus_wire::proto::config_discovery_client::ConfigDiscoveryClient;
use nodus_wire::proto::CertificateRequest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use support::controller::{hello, with_token, Controller};
use support::{from_yaml, install_crds, start_kapi};

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

const AUDIENCE: &str = "nodus-controller";
const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// A token as kube-apiserver would know it: whose, for which audience, bound to which pod.
#[derive(Clone)]
struct IssuedToken {
    account: String,
    audience: String,
    pod: String,
    pod_uid: String,
}

#[derive(Default)]
struct Front {
    issued: Mutex<HashMap<String, IssuedToken>>,
    reviews: Mutex<Vec<Vec<String>>>,
}

impl Front {
    fn issue(&self, token: &str, account: &str, audience: &str, pod: &str, pod_uid: &str) {
        let issued = IssuedToken {
            account: account.into(),
            audience: audience.into(),
            pod: pod.into(),
            pod_uid: pod_uid.into(),
        };
        self.issued.lock().unwrap().insert(token.into(), issued);
    }

    /// What kube-apiserver's service-account authenticator answers.
    fn review(&self, request: TokenReview) -> TokenReview {
        let audiences = request.spec.audiences.clone().unwrap_or_default();
        self.reviews.lock().unwrap().push(audiences.clone());
        let issued = request.spec.token.as_ref().and_then(|t| self.issued.lock().unwrap().get(t).cloned());
        let status = match issued {
            Some(token) if audiences.contains(&token.audience) => TokenReviewStatus {
                authenticated: Some(true),
                audiences: Some(vec![token.audience.clone()]),
                user: Some(UserInfo {
                    username: Some(token.account.clone()),
                    extra: Some(
                        [
                            ("authentication.kubernetes.io/pod-name".to_string(), vec![token.pod.clone()]),
                            ("authentication.kubernetes.io/pod-uid".to_string(), vec![token.pod_uid.clone()]),
                        ]
                        .into(),
                    ),
                    ..UserInfo::default()
                }),
                error: None,
            },
            Some(_) => TokenReviewStatus {
                authenticated: Some(false),
                error: Some("token audiences are invalid for the target audiences".into()),
                ..TokenReviewStatus::default()
            },
            None => TokenReviewStatus {
                authenticated: Some(false),
                error: Some("invalid bearer token".into()),
                ..TokenReviewStatus::default()
            },
        };
        TokenReview { status: Some(status), ..request }
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

async fn handle(
    request: http::Request<hyper::body::Incoming>,
    kapi: kube::Client,
    front: Arc<Front>,
) -> Result<http::Response<Body>, std::convert::Infallible> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if parts.method == http::Method::POST && parts.uri.path() == REVIEWS {
        let reviewed = front.review(serde_json::from_slice(&bytes).unwrap());
        let response = http::Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .body(full(serde_json::to_vec(&reviewed).unwrap()))
            .unwrap();
        return Ok(response);
    }
    let mut forwarded =
        http::Request::builder().method(parts.method).uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for name in [http::header::CONTENT_TYPE, http::header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            forwarded = forwarded.header(name, value);
        }
    }
    let response = match kapi.send(forwarded.body(kube::client::Body::from(bytes.to_vec())).unwrap()).await {
        Ok(response) => response,
        Err(error) => return Ok(http::Response::builder().status(502).body(full(error.to_string())).unwrap()),
    };
    let (parts, body) = response.into_parts();
    let mut back = http::Response::builder().status(parts.status);
    if let Some(value) = parts.headers.get(http::header::CONTENT_TYPE) {
        back = back.header(http::header::CONTENT_TYPE, value);
    }
    Ok(back.body(body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed_unsync()).unwrap())
}

async fn start_front(kapi: kube::Client, front: Arc<Front>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (kapi, front) = (kapi.clone(), front.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| handle(r, kapi.clone(), front.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

async fn create_pod(pods: &Api<Pod>, name: &str, account: &str, node: &str) -> String {
    let pod: Pod = from_yaml(&format!(
        "metadata: {{ name: {name} }}\nspec: {{ nodeName: {node}, serviceAccountName: {account}, containers: [{{ name: c, image: nodus }}] }}"
    ));
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    created.metadata.uid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_proxies_authenticate_with_service_account_tokens_reviewed_by_the_api_server() {
    let Some(kapi) = start_kapi() else { return };
    let client = kapi.client().await;
    install_crds(&client).await;
    let pp = PostParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for namespace in
        ["metadata: { name: nodus-system }", "metadata: { name: demo, labels: { nodus.dev/mesh: enabled } }"]
    {
        namespaces.create(&pp, &from_yaml(namespace)).await.unwrap();
    }
    // The node proxies' pods (one per node, as the DaemonSet makes them), a pod of another
    // account in the same namespace, and a workload on node-1.
    let system: Api<Pod> = Api::namespaced(client.clone(), "nodus-system");
    let proxy_1 = create_pod(&system, "nodus-node-aaaaa", "nodus-node", "node-1").await;
    let proxy_2 = create_pod(&system, "nodus-node-bbbbb", "nodus-node", "node-2").await;
    let other = create_pod(&system, "debug", "default", "node-1").await;
    let demo: Api<Pod> = Api::namespaced(client.clone(), "demo");
    create_pod(&demo, "client-0", "client", "node-1").await;
    let running =
        serde_json::json!({ "status": { "phase": "Running", "hostIP": "10.100.0.11", "podIP": "10.244.1.3" } });
    demo.patch_status("client-0", &PatchParams::default(), &Patch::Merge(&running)).await.unwrap();

    let front = Arc::new(Front::default());
    let node_sa = "system:serviceaccount:nodus-system:nodus-node";
    front.issue("node-1-token", node_sa, AUDIENCE, "nodus-node-aaaaa", &proxy_1);
    front.issue("node-2-token", node_sa, AUDIENCE, "nodus-node-bbbbb", &proxy_2);
    // Another token of that pod, first used after the pod is replaced (answers are remembered
    // for a minute, so a fresh token shows what the controller checks).
    front.issue("node-2-second-token", node_sa, AUDIENCE, "nodus-node-bbbbb", &proxy_2);
    // The same pod's token for the API server (what an automounted token would be).
    front.issue("api-token", node_sa, "https://kubernetes.default.svc", "nodus-node-aaaaa", &proxy_1);
    front.issue("debug-token", "system:serviceaccount:nodus-system:default", AUDIENCE, "debug", &other);
    let address = start_front(client.clone(), front.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{ name: front, cluster: {{ server: \"http://{address}\" }} }}]\nusers: [{{ name: nobody, user: {{}} }}]\ncontexts: [{{ name: front, context: {{ cluster: front, user: nobody }} }}]\ncurrent-context: front\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_nodus-controller"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--node-service-account",
            "nodus-system/nodus-node",
            "--ca-dir",
        ])
        .arg(dir.path())
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "nodus-system");
    let controller = Controller::start(command);
    let endpoint = controller.endpoint.clone();

    // Config streams.
    let mut discovery = ConfigDiscoveryClient::connect(endpoint.clone()).await.unwrap();
    let code = |status: tonic::Status| status.code();
    let probe = discovery.clone();
    let refused = |token: Option<&'static str>, node: &'static str| {
        let mut discovery = probe.clone();
        async move {
            match discovery.subscribe(with_token(hello(node), token)).await {
                Err(status) => status.code(),
                Ok(stream) => stream.into_inner().message().await.map_err(code).err().unwrap_or(tonic::Code::Ok),
            }
        }
    };
    assert_eq!(refused(None, "node-1").await, tonic::Code::Unauthenticated, "no token");
    assert_eq!(refused(Some("made-up"), "node-1").await, tonic::Code::Unauthenticated, "unknown token");
    assert_eq!(refused(Some("api-token"), "node-1").await, tonic::Code::Unauthenticated, "the API's audience");
    assert_eq!(refused(Some("debug-token"), "node-1").await, tonic::Code::PermissionDenied, "another account");
    assert_eq!(refused(Some("node-2-token"), "node-1").await, tonic::Code::PermissionDenied, "another node");
    let mut pushes = discovery.subscribe(with_token(hello("node-1"), Some("node-1-token"))).await.unwrap().into_inner();
    let push = pushes.message().await.unwrap().expect("node-1's proxy gets node-1's config");
    assert!(push.full && !push.updated.is_empty());
    // Every review asked for the controller's audience, and only for it.
    assert!(front.reviews.lock().unwrap().iter().all(|audiences| audiences == &[AUDIENCE.to_string()]));

    // Certificates for node-1's workload: node-2's proxy may not have them; node-1's may.
    let mut certificates = CertificatesClient::connect(endpoint.clone()).await.unwrap();
    let key = WorkloadKey::generate(SpiffeId::new("cluster.local", "demo", "client")).unwrap();
    let request = CertificateRequest {
        node: "node-1".into(),
        namespace: "demo".into(),
        service_account: "client".into(),
        csr_pem: key.csr_pem().unwrap(),
    };
    let claimed = certificates.sign(with_token(request.clone(), Some("node-2-token"))).await.unwrap_err();
    assert_eq!(claimed.code(), tonic::Code::PermissionDenied, "{claimed:?}");
    certificates.sign(with_token(request.clone(), Some("node-1-token"))).await.expect("node-1's own workload");

    // A token outlives neither its pod nor a replacement of the same name: node-2's proxy pod
    // is deleted, then a new one takes its name (new UID); the old pod's token is refused both
    // times. (kube-apiserver itself refuses tokens of deleted pods; the controller does not
    // rely on it.)
    system.delete("nodus-node-bbbbb", &DeleteParams::default().grace_period(0)).await.unwrap();
    assert_eq!(refused(Some("node-2-second-token"), "node-2").await, tonic::Code::PermissionDenied, "pod gone");
    let replacement = create_pod(&system, "nodus-node-bbbbb", "nodus-node", "node-2").await;
    assert_ne!(replacement, proxy_2);
    assert_eq!(refused(Some("node-2-second-token"), "node-2").await, tonic::Code::PermissionDenied, "replaced");
    front.issue("node-2-new-token", node_sa, AUDIENCE, "nodus-node-bbbbb", &replacement);
    let mut node_2 =
        discovery.subscribe(with_token(hello("node-2"), Some("node-2-new-token"))).await.unwrap().into_inner();
    assert!(node_2.message().await.unwrap().is_some(), "the new pod's proxy is served");
}
