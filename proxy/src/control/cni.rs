//! The enrolment interface a CNI plugin calls: a Unix socket of the node proxy
//! (`--cni-socket`), so that a new pod is enrolled before its first process starts, with no
//! window in which its first connections escape the mesh.
//!
//! In a real cluster a chained CNI plugin (after the network plugin, as Istio's and Linkerd's
//! CNI plugins chain) runs this at ADD, when the pod's sandbox exists and has its address but
//! no container has started; the local cluster's node agent does the same (docs/local-cluster.md).
//!
//! One request per connection, one JSON line each way:
//!
//! ```text
//! → {"command":"ADD","netns":"/run/netns/<name>","podIp":"10.244.1.5","namespace":"shop","pod":"web-1"}
//! ← {"enrolled":true}                                   the pod's connections are captured now
//! ← {"enrolled":false,"reason":"..."}                   its namespace is not in the mesh
//! ← {"error":"..."}                                     fail the ADD: the pod must not start
//! ```
//!
//! The config decides, as for the periodic pass: the proxy waits (up to [`CONFIG_WAIT`]) until
//! its config lists the pod (the controller lists pods once they have an address) and, with
//! mutual TLS on, until it holds the certificate of the pod's identity; it answers an error if
//! either never happens, so the plugin fails closed rather than starting a pod the mesh may
//! be meant to capture. The socket's file permissions are its access control (root only).

use super::enrollment::{Enrollment, PodEnrollment};
use crate::state::ConfigStore;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How long an ADD waits for the config to list the pod.
pub const CONFIG_WAIT: Duration = Duration::from_secs(10);
/// Requests are small; a longer line is refused.
const MAX_REQUEST_BYTES: u64 = 4096;

/// A CNI plugin's request.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniRequest {
    /// `ADD` (only ADD enrols; the periodic pass releases pods that are gone).
    pub command: String,
    /// The pod's network namespace file.
    pub netns: PathBuf,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The pod's namespace (for the log).
    pub namespace: String,
    /// The pod's name (for the log).
    pub pod: String,
}

/// The answer.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CniResponse {
    /// Whether the pod is enrolled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolled: Option<bool>,
    /// Why not, when not enrolled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What failed: the plugin fails the ADD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answers one request.
pub async fn handle(request: &CniRequest, store: &Arc<ConfigStore>, enrollment: &Arc<Enrollment>) -> CniResponse {
    if request.command != "ADD" {
        return CniResponse {
            error: Some(format!("unsupported command {:?}: only ADD", request.command)),
            ..Default::default()
        };
    }
    let deadline = tokio::time::Instant::now() + CONFIG_WAIT;
    loop {
        let (enrollment_now, netns, ip) = (enrollment.clone(), request.netns.clone(), request.pod_ip);
        let store_now = store.clone();
        let outcome = tokio::task::spawn_blocking(move || enrollment_now.enroll_pod(&store_now, ip, &netns)).await;
        let response = match outcome {
            Ok(Ok(PodEnrollment::Enrolled)) => match certificate_held(store, request.pod_ip, deadline).await {
                Ok(()) => CniResponse { enrolled: Some(true), ..Default::default() },
                Err(error) => CniResponse { error: Some(error), ..Default::default() },
            },
            Ok(Ok(PodEnrollment::NotInMesh)) => CniResponse {
                enrolled: Some(false),
                reason: Some(format!("namespace {} is not in the mesh", request.namespace)),
                ..Default::default()
            },
            Ok(Ok(PodEnrollment::Unknown)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Ok(Ok(PodEnrollment::Unknown)) => CniResponse {
                error: Some(format!(
                    "the config does not list pod {}/{} at {} after {} s",
                    request.namespace,
                    request.pod,
                    request.pod_ip,
                    CONFIG_WAIT.as_secs()
                )),
                ..Default::default()
            },
            Ok(Err(error)) => CniResponse { error: Some(error.to_string()), ..Default::default() },
            Err(error) => CniResponse { error: Some(format!("enrolment task failed: {error}")), ..Default::default() },
        };
        tracing::info!(pod = %request.pod, namespace = %request.namespace, ip = %request.pod_ip, ?response, "CNI ADD");
        return response;
    }
}

/// Waits until this proxy holds the certificate of the pod's identity, when tunnels are mutual
/// TLS: a pod that starts before it would have its first calls to other nodes refused (503) for
/// want of it. `Err` once `deadline` passes.
async fn certificate_held(store: &ConfigStore, ip: Ipv4Addr, deadline: tokio::time::Instant) -> Result<(), String> {
    let Some(credentials) = store.tunnels().mutual_tls().cloned() else { return Ok(()) };
    loop {
        let identity = store.load().and_then(|state| {
            let pod = state.workload(std::net::IpAddr::V4(ip))?;
            Some(nodus_identity::SpiffeId::new(credentials.trust_domain(), &pod.namespace, &pod.service_account))
        });
        match identity {
            Some(identity) if credentials.certificate(&identity).is_some() => return Ok(()),
            identity if tokio::time::Instant::now() >= deadline => {
                let name = identity.map_or_else(|| ip.to_string(), |i| i.to_string());
                return Err(format!("no certificate for {name} after {} s", CONFIG_WAIT.as_secs()));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Serves the socket at `path` (replacing a stale one) until the process ends.
pub fn serve(path: &Path, store: Arc<ConfigStore>, enrollment: Arc<Enrollment>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (store, enrollment) = (store.clone(), enrollment.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
                let response = match reader.read_line(&mut line).await {
                    Ok(_) => match serde_json::from_str::<CniRequest>(&line) {
                        Ok(request) => handle(&request, &store, &enrollment).await,
                        Err(error) => {
                            CniResponse { error: Some(format!("bad request: {error}")), ..Default::default() }
                        }
                    },
                    Err(error) => {
                        CniResponse { error: Some(format!("reading the request: {error}")), ..Default::default() }
                    }
                };
                let mut answer = serde_json::to_vec(&response).unwrap_or_default();
                answer.push(b'\n');
                let _ = write.write_all(&answer).await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_are_one_json_line_each() {
        let request: CniRequest = serde_json::from_str(
            r#"{"command":"ADD","netns":"/run/netns/p","podIp":"10.244.1.5","namespace":"shop","pod":"web"}"#,
        )
        .unwrap();
        assert_eq!(request.pod_ip, Ipv4Addr::new(10, 244, 1, 5));
        assert!(
            serde_json::from_str::<CniRequest>(
                r#"{"command":"ADD","netns":"/x","podIp":"1.2.3.4","namespace":"a","pod":"b","extra":1}"#
            )
            .is_err(),
            "unknown fields are refused, not ignored"
        );
        let yes = CniResponse { enrolled: Some(true), ..Default::default() };
        assert_eq!(serde_json::to_string(&yes).unwrap(), r#"{"enrolled":true}"#);
    }
}
