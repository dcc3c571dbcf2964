//! Shared by the controller's integration tests: a real Kubernetes API server (`kapi`: upstream
//! k8s.io/apiserver and apiextensions-apiserver with etcd, built by `scripts/setup-kapi.sh`), and
//! the controller binary ([`controller`]).
#![allow(dead_code, clippy::unwrap_used)]

pub mod controller;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The kapi kit (start script, Gateway API CRDs).
pub fn kit() -> PathBuf {
    std::env::var_os("NODUS_KAPI_KIT").map(PathBuf::from).unwrap_or_else(|| workspace().join("../shared/kapi"))
}

/// A running kapi; stopped (etcd and API server) on drop.
pub struct Kapi {
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

impl Kapi {
    /// A client of this API server.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.dir.path().join("kubeconfig")).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
        Client::try_from(config).unwrap()
    }
}

/// Starts kapi, or says SKIPPED and returns `None` when its binaries are not built (a failure
/// when `NODUS_REQUIRE_KAPI=1`, which `make test` sets once it has built them).
pub fn start_kapi() -> Option<Kapi> {
    let bin =
        std::env::var_os("NODUS_KAPI_BIN").map(PathBuf::from).unwrap_or_else(|| workspace().join(".cache/kapi/bin"));
    let kit = kit();
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

/// `text` as a `T`.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> T {
    serde_norway::from_str(text).unwrap()
}

/// The Gateway API CRDs from the kit (standard channel) and Nodus's own, as the chart ships them.
pub async fn install_crds(client: &Client) {
    install_crds_of_channel(client, "crds").await
}

/// The Gateway API CRDs of the kit's experimental channel (HTTPRoute `retry`, session
/// persistence) and Nodus's own.
pub async fn install_experimental_crds(client: &Client) {
    install_crds_of_channel(client, "crds-experimental").await
}

async fn install_crds_of_channel(client: &Client, channel: &str) {
    let kit = kit();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let chart = workspace().join("charts/nodus/crds");
    let files = [
        kit.join(channel).join("httproutes.yaml"),
        kit.join(channel).join("grpcroutes.yaml"),
        kit.join(channel).join("referencegrants.yaml"),
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

/// The first `Some` of `probe`, tried every 100 ms until `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
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

/// `(type, status, reason, message)` of Nodus's conditions on a route's parents, from the
/// route's `status` (either channel's type serializes the same).
pub fn our_conditions(status: serde_json::Value) -> Vec<(String, String, String, String)> {
    let parents = status.get("parents").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
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
