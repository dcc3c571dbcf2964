//! Nodus's own Kubernetes API (group `policy.nodus.dev`, version `v1alpha1`).
//!
//! What Gateway API does not say: how strictly a namespace requires mutual TLS, and who may
//! call whom. The CRDs in `charts/nodus/crds/` are generated from these types
//! (`nodus-controller crds`) and a test keeps them in sync.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of Nodus's resources.
pub const GROUP: &str = "policy.nodus.dev";

/// How a namespace's workloads accept traffic. One per namespace, named `default`; without
/// one, the namespace is permissive.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.nodus.dev",
    version = "v1alpha1",
    kind = "MeshPolicy",
    plural = "meshpolicies",
    namespaced,
    printcolumn = r#"{"name":"mTLS","type":"string","jsonPath":".spec.mtls.mode"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// Mutual TLS requirements for traffic to this namespace's mesh workloads.
    #[serde(default)]
    pub mtls: MtlsSettings,
}

/// Mutual TLS settings of a namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSettings {
    /// `Strict`: plaintext to a mesh pod is refused. `Permissive`: accepted and counted in
    /// metrics as plaintext.
    #[serde(default)]
    pub mode: MtlsMode,
    /// Calls from this namespace's mesh workloads. `Strict`: only to mesh workloads (over mTLS
    /// across nodes, through the node proxy on the same node); a call to a destination outside
    /// the mesh or on a node without a Nodus proxy is refused with an error naming it, and
    /// counted. `Permissive` (the default): such calls go out in plaintext, marked in metrics.
    #[serde(default)]
    pub outbound: MtlsMode,
}

/// See [`MtlsSettings::mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MtlsMode {
    /// Plaintext accepted and marked.
    #[default]
    Permissive,
    /// Only mutual TLS from mesh identities.
    Strict,
}

/// Who may call the workloads a policy selects. Default allow: a workload no policy selects
/// accepts every caller. Once a policy selects it, a request is allowed only if it matches an
/// `Allow` policy's rule and no `Deny` policy's rule (deny wins).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.nodus.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    namespaced,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The pods of this namespace the policy applies to, by label; empty selects every pod.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Allow or deny what the rules match.
    #[serde(default)]
    pub action: AuthorizationAction,
    /// A request matches the policy if it matches any rule.
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

/// Pods selected by labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Every label must be present with this value.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// See [`AuthorizationPolicySpec::action`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuthorizationAction {
    /// Requests matching a rule are allowed.
    #[default]
    Allow,
    /// Requests matching a rule are refused (403, PERMISSION_DENIED, or a TCP reset).
    Deny,
}

/// One rule: every field given must match (empty lists match anything).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Source identities, as SPIFFE IDs (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`); a trailing
    /// `*` matches a prefix.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Source namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Destination ports (the pod's port).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// HTTP methods (HTTP and gRPC only).
    #[serde(default)]
    pub methods: Vec<String>,
    /// HTTP paths: exact, or a prefix when ending in `*` (HTTP and gRPC only).
    #[serde(default)]
    pub paths: Vec<String>,
}

/// The first line of every generated CRD file.
pub const GENERATED_HEADER: &str =
    "# Generated from crates/api by `nodus-controller --write-crds charts/nodus/crds`: do not edit.\n";

/// The generated CRDs: (file name, YAML) as `charts/nodus/crds/` holds them.
pub fn crds_yaml() -> Result<Vec<(&'static str, String)>, serde_norway::Error> {
    use kube::CustomResourceExt;
    Ok(vec![
        (
            "authorizationpolicies.yaml",
            format!("{GENERATED_HEADER}{}", serde_norway::to_string(&AuthorizationPolicy::crd())?),
        ),
        ("meshpolicies.yaml", format!("{GENERATED_HEADER}{}", serde_norway::to_string(&MeshPolicy::crd())?)),
    ])
}
