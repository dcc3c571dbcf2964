//! Security policy in the proxy's terms: per-namespace mutual TLS mode and authorization
//! policies (from Nodus's `MeshPolicy` and `AuthorizationPolicy` resources).

use crate::ObjectRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether plaintext to a namespace's mesh workloads is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsMode {
    /// Plaintext accepted and counted as such.
    #[default]
    Permissive,
    /// Only mutual TLS from mesh identities.
    Strict,
}

/// The mTLS mode of one namespace (namespaces not listed are permissive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceMtls {
    /// The namespace.
    pub namespace: String,
    /// Its mode for traffic to its mesh workloads.
    pub mode: MtlsMode,
    /// Its mode for calls from its mesh workloads: `Strict` refuses a destination that cannot be
    /// reached over mutual TLS (outside the mesh, on a node without a proxy). Left out when
    /// permissive, so that a proxy older than the field accepts configs that do not use it.
    #[serde(default, skip_serializing_if = "MtlsMode::is_permissive")]
    pub outbound: MtlsMode,
}

impl MtlsMode {
    /// Whether this is the default, permissive mode.
    pub fn is_permissive(&self) -> bool {
        *self == MtlsMode::Permissive
    }
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthorizationAction {
    /// Matching requests are allowed.
    #[default]
    Allow,
    /// Matching requests are refused.
    Deny,
}

/// An authorization policy over the pods of its namespace that carry its labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// namespace/name of the policy; it selects pods of that namespace only.
    pub id: ObjectRef,
    /// Labels a pod must carry to be selected; empty selects every pod of the namespace.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// What a match means.
    #[serde(default)]
    pub action: AuthorizationAction,
    /// A request matches if it matches any rule.
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

/// One rule; each non-empty list must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Source SPIFFE IDs; a trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Source namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP paths: exact, or a prefix when ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

impl AuthorizationPolicy {
    /// Whether the policy applies to a pod of `namespace` with `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.id.namespace == namespace && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A root certificate of the mesh CA that proxies trust. Normally there is one; during a
/// trust-anchor rotation the old and the new root are both trusted, and `signing` says which
/// one issues certificates now, so proxies know to re-issue those from the other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustRoot {
    /// The root certificate, PEM.
    pub certificate_pem: String,
    /// Whether the CA signs with this root now (at most one root is signing).
    #[serde(default)]
    pub signing: bool,
}
