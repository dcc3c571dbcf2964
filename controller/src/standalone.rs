//! Standalone mode: the cluster is a directory of manifests, re-read when it changes; route
//! status goes to a YAML file since there is no API server to write it to.

use crate::manifests::load_dir;
use crate::reconcile::Reconciler;
use crate::status::desired_parents;
use crate::translate::{RouteKind, Translation};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where and how often to look.
#[derive(Clone, Debug)]
pub struct StandaloneSettings {
    /// The manifests directory.
    pub dir: PathBuf,
    /// Where to write route status (YAML), if anywhere.
    pub status_file: Option<PathBuf>,
    /// How often to check the directory for changes.
    pub poll: Duration,
}

/// Route status as a YAML document: one entry per route, `status.parents` as the API would hold it.
pub fn status_document(translation: &Translation) -> Value {
    let routes: Vec<Value> = translation
        .statuses
        .iter()
        .map(|(key, status)| {
            let kind = match key.kind {
                RouteKind::Http => "HTTPRoute",
                RouteKind::Grpc => "GRPCRoute",
            };
            let parents = desired_parents(&[], Some(status), &now()).unwrap_or_default();
            json!({ "kind": kind, "namespace": key.id.namespace, "name": key.id.name, "status": { "parents": parents } })
        })
        .collect();
    json!({ "routes": routes })
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn write_status(path: &Path, translation: &Translation) {
    let text = match serde_norway::to_string(&status_document(translation)) {
        Ok(text) => text,
        Err(error) => return tracing::warn!(%error, "cannot encode route status"),
    };
    // Write then rename, so readers never see half a file.
    let temporary = path.with_extension("tmp");
    if let Err(error) = std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, path)) {
        tracing::warn!(path = %path.display(), %error, "cannot write route status");
    }
}

/// Loads the directory whenever its content changes and reconciles; a directory that fails to
/// load is reported and the config in force stays. Runs forever.
pub async fn run(settings: StandaloneSettings, mut reconciler: Reconciler) {
    let mut last_fingerprint = None;
    let mut last_error = None;
    loop {
        match load_dir(&settings.dir) {
            Ok(loaded) if Some(loaded.fingerprint) != last_fingerprint => {
                last_fingerprint = Some(loaded.fingerprint);
                last_error = None;
                let (_, translation) = reconciler.reconcile(&loaded.state);
                if let Some(path) = &settings.status_file {
                    write_status(path, &translation);
                }
            }
            Ok(_) => {}
            Err(error) => {
                let text = error.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::error!(error = %text, "manifests rejected; the config in force stays");
                    last_error = Some(text);
                }
            }
        }
        tokio::time::sleep(settings.poll).await;
    }
}
