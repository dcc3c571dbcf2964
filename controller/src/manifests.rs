//! Standalone mode: the cluster is a directory of YAML manifests (the local mesh, tests).
//!
//! Files are read as Kubernetes would take them (`kubectl apply -f DIR`): multi-document YAML,
//! objects identified by `apiVersion` and `kind`. The result is the same [`ClusterState`] the
//! API-server watches fill, so translation has one code path.

use crate::cluster::{ClusterObject, ClusterState};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a manifest directory could not be loaded. Nothing of a failed load is used.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{path}: document {index}: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Zero-based document index in the file.
        index: usize,
        /// The parser's message.
        message: String,
    },
    /// A document of a watched kind does not match the kind's schema.
    #[error("{path}: document {index} ({kind} {name}): {message}")]
    Object {
        /// The file.
        path: PathBuf,
        /// Zero-based document index in the file.
        index: usize,
        /// `apiVersion/kind`.
        kind: String,
        /// `metadata.name`.
        name: String,
        /// The decoder's message.
        message: String,
    },
}

/// The objects of one YAML text, in document order. Kinds the controller does not watch
/// (Deployments, ConfigMaps...) are skipped, as a `kubectl apply -f` of an app's manifests has them.
pub fn parse_objects(path: &Path, text: &str) -> Result<Vec<ClusterObject>, ManifestError> {
    let mut objects = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(document).map_err(|e| ManifestError::Yaml {
            path: path.to_path_buf(),
            index,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let name = value.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let object_error = |message: String| ManifestError::Object {
            path: path.to_path_buf(),
            index,
            kind: format!("{api_version}/{kind}"),
            name: name.clone(),
            message,
        };
        fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<Box<T>, String> {
            serde_json::from_value(value).map(Box::new).map_err(|e| e.to_string())
        }
        let object = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => ClusterObject::Namespace(decode(value).map_err(object_error)?),
            ("v1", "Service") => ClusterObject::Service(decode(value).map_err(object_error)?),
            ("v1", "Pod") => ClusterObject::Pod(decode(value).map_err(object_error)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                ClusterObject::EndpointSlice(decode(value).map_err(object_error)?)
            }
            ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
                ClusterObject::HttpRoute(decode(value).map_err(object_error)?)
            }
            ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
                ClusterObject::GrpcRoute(decode(value).map_err(object_error)?)
            }
            ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "ReferenceGrant") => {
                ClusterObject::ReferenceGrant(decode(value).map_err(object_error)?)
            }
            ("policy.nodus.dev/v1alpha1", "MeshPolicy") => {
                ClusterObject::MeshPolicy(decode(value).map_err(object_error)?)
            }
            ("policy.nodus.dev/v1alpha1", "AuthorizationPolicy") => {
                ClusterObject::AuthorizationPolicy(decode(value).map_err(object_error)?)
            }
            _ => {
                tracing::debug!(path = %path.display(), index, %api_version, %kind, "skipping a kind the controller does not watch");
                continue;
            }
        };
        objects.push(object);
    }
    Ok(objects)
}

/// The `.yaml`/`.yml` files of a directory (recursively), sorted by path so loads are repeatable.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read { path: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() {
            files.extend(manifest_files(&path)?);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A loaded directory: the state, and a fingerprint of the bytes it came from.
#[derive(Debug)]
pub struct LoadedManifests {
    /// The objects.
    pub state: ClusterState,
    /// Changes whenever any file's content, name or presence changes.
    pub fingerprint: u64,
}

/// Loads every manifest of a directory, all or nothing.
pub fn load_dir(dir: &Path) -> Result<LoadedManifests, ManifestError> {
    let mut objects = Vec::new();
    let mut fingerprint: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |bytes: &[u8]| {
        for byte in bytes {
            fingerprint ^= u64::from(*byte);
            fingerprint = fingerprint.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for path in manifest_files(dir)? {
        let text =
            std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path: path.clone(), source })?;
        mix(path.to_string_lossy().as_bytes());
        mix(text.as_bytes());
        objects.extend(parse_objects(&path, &text)?);
    }
    Ok(LoadedManifests { state: ClusterState::from_objects(objects), fingerprint })
}
