//! Nodus's own policy resources to the config model.

use crate::cluster::ClusterState;
use nodus_config::{AuthorizationAction, AuthorizationPolicy, AuthorizationRule, MtlsMode, NamespaceMtls};

/// The name of the MeshPolicy that sets a namespace's mode (others are ignored).
pub const MESH_POLICY_NAME: &str = "default";

/// The mTLS mode of every namespace with a `default` MeshPolicy.
pub(super) fn namespace_mtls(state: &ClusterState) -> Vec<NamespaceMtls> {
    state
        .mesh_policies
        .iter()
        .filter(|(id, _)| id.name == MESH_POLICY_NAME)
        .map(|(id, policy)| NamespaceMtls {
            namespace: id.namespace.clone(),
            mode: match policy.spec.mtls.mode {
                nodus_api::MtlsMode::Strict => MtlsMode::Strict,
                nodus_api::MtlsMode::Permissive => MtlsMode::Permissive,
            },
        })
        .collect()
}

/// Every AuthorizationPolicy, as the proxy enforces it.
pub(super) fn authorization_policies(state: &ClusterState) -> Vec<AuthorizationPolicy> {
    state
        .authorization_policies
        .iter()
        .map(|(id, policy)| AuthorizationPolicy {
            id: id.clone(),
            selector: policy.spec.selector.match_labels.clone(),
            action: match policy.spec.action {
                nodus_api::AuthorizationAction::Allow => AuthorizationAction::Allow,
                nodus_api::AuthorizationAction::Deny => AuthorizationAction::Deny,
            },
            rules: policy
                .spec
                .rules
                .iter()
                .map(|r| AuthorizationRule {
                    identities: r.identities.clone(),
                    namespaces: r.namespaces.clone(),
                    ports: r.ports.clone(),
                    methods: r.methods.clone(),
                    paths: r.paths.clone(),
                })
                .collect(),
        })
        .collect()
}
