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
            mode: mtls_mode(policy.spec.mtls.mode),
            outbound: mtls_mode(policy.spec.mtls.outbound),
        })
        .collect()
}

fn mtls_mode(mode: nodus_api::MtlsMode) -> MtlsMode {
    match mode {
        nodus_api::MtlsMode::Strict => MtlsMode::Strict,
        nodus_api::MtlsMode::Permissive => MtlsMode::Permissive,
    }
}

/// Every AuthorizationPolicy, as the proxy enforces it.
///
/// A rule proxies would reject (an identity that is not a SPIFFE ID, a relative path...) must
/// not reach them: one bad rule would make them refuse the whole config. It is replaced, failing
/// closed: dropped from an `Allow` policy (it allows nothing), turned into a rule matching
/// everything in a `Deny` policy (the selected workloads refuse all callers until it is fixed).
/// Either way the controller logs why.
pub(super) fn authorization_policies(state: &ClusterState) -> Vec<AuthorizationPolicy> {
    state
        .authorization_policies
        .iter()
        .map(|(id, policy)| {
            let action = match policy.spec.action {
                nodus_api::AuthorizationAction::Allow => AuthorizationAction::Allow,
                nodus_api::AuthorizationAction::Deny => AuthorizationAction::Deny,
            };
            let rules = policy
                .spec
                .rules
                .iter()
                .enumerate()
                .filter_map(|(index, r)| {
                    let rule = AuthorizationRule {
                        identities: r.identities.clone(),
                        namespaces: r.namespaces.clone(),
                        ports: r.ports.clone(),
                        methods: r.methods.clone(),
                        paths: r.paths.clone(),
                    };
                    match (rule.check(), action) {
                        (Ok(()), _) => Some(rule),
                        (Err(reason), AuthorizationAction::Allow) => {
                            tracing::warn!(policy = %id, rule = index, %reason, "invalid Allow rule ignored: it allows nothing");
                            None
                        }
                        (Err(reason), AuthorizationAction::Deny) => {
                            tracing::warn!(policy = %id, rule = index, %reason, "invalid Deny rule: denying every caller of the selected workloads until it is fixed");
                            Some(AuthorizationRule::default())
                        }
                    }
                })
                .collect();
            AuthorizationPolicy { id: id.clone(), selector: policy.spec.selector.match_labels.clone(), action, rules }
        })
        .collect()
}
