//! Node proxies in a cluster: projected service-account tokens, checked with TokenReview.
//!
//! The node DaemonSet mounts a projected token of its service account whose audience is the
//! controller's (`nodus-controller`): the API server refuses such a token for its own API, so
//! the node proxy still has no API access. The proxy sends it as its node token; the kubelet
//! rotates it on disk and the proxy reads it again at each call.
//!
//! The controller asks the API server to review the token for its audience (TokenReview),
//! requires the node proxies' service account and a token bound to a pod, and takes the node
//! from that pod as the API server has it now (name and UID must still match). The proxy is then
//! held to that node exactly as with HMAC node tokens (`node_auth`): its own node's
//! config and certificates only. A token outlives neither its pod (the API server stops
//! accepting it) nor a replaced pod of the same name (the UID differs).
//!
//! The decisions are pure functions ([`pod_binding`], [`node_of_pod`]); [`KubernetesTokens`] does
//! the two API calls and keeps answers for a minute, so a proxy's calls (one stream, a few
//! certificate requests) cost the API server one review.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::Status;

/// The audience node proxies' tokens are made for (the chart's projected volume says the same).
pub const DEFAULT_AUDIENCE: &str = "nodus-controller";
/// Where the API server names the pod a token is bound to (in the reviewed user's `extra`).
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The UID of that pod.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// The pod's node, which API servers since Kubernetes 1.30 add too; checked when present.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// How long a reviewed token's node is remembered.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many remembered tokens (one per node proxy in practice).
const CACHE_CAPACITY: usize = 4096;

/// A service account, written `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountRef {
    /// Its namespace (the release namespace of the chart).
    pub namespace: String,
    /// Its name (`nodus-node` in the chart).
    pub name: String,
}

impl ServiceAccountRef {
    /// The user name the API server gives its tokens.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ServiceAccountRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: namespace.to_owned(), name: name.to_owned() })
            }
            _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
        }
    }
}

/// The pod a reviewed token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodBinding {
    /// The pod's namespace (the service account's).
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID when the token was made.
    pub uid: String,
    /// The pod's node as the API server stated it in the review, if it did.
    pub node: Option<String>,
}

/// Why a token does not authenticate a node proxy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The API server did not accept the token.
    #[error("the token was not accepted: {0}")]
    NotAuthenticated(String),
    /// Accepted, but not for our audience (an API token sent to us, for instance).
    #[error("the token is not meant for audience {0:?}")]
    WrongAudience(String),
    /// Another identity than the node proxies' service account.
    #[error("{0} is not the node proxies' service account")]
    WrongAccount(String),
    /// A token not bound to a pod (a long-lived Secret token, a TokenRequest without a pod).
    #[error("the token is not bound to a pod")]
    NotPodBound,
    /// The pod it is bound to is gone.
    #[error("pod {0} no longer exists")]
    PodGone(String),
    /// A pod of that name exists, but not the one the token was made for.
    #[error("pod {0} has been replaced since the token was made")]
    PodReplaced(String),
    /// The pod runs as another service account (cannot happen with an honest API server).
    #[error("pod {0} does not run as the node proxies' service account")]
    PodAccount(String),
    /// The pod has no node yet.
    #[error("pod {0} is not scheduled on a node")]
    Unscheduled(String),
    /// The review and the pod disagree on the node.
    #[error("pod {pod} runs on {pod_node:?}, the review says {review_node:?}")]
    NodeDisagrees {
        /// The pod.
        pod: String,
        /// Its `spec.nodeName`.
        pod_node: String,
        /// The review's node.
        review_node: String,
    },
}

impl Refusal {
    /// The gRPC status a caller gets: not who they say → `UNAUTHENTICATED`; someone, but not a
    /// node proxy of a live pod → `PERMISSION_DENIED`.
    pub fn status(&self) -> Status {
        match self {
            Refusal::NotAuthenticated(_) | Refusal::WrongAudience(_) => Status::unauthenticated(self.to_string()),
            _ => Status::permission_denied(self.to_string()),
        }
    }
}

fn single<'a>(extra: Option<&'a std::collections::BTreeMap<String, Vec<String>>>, key: &str) -> Option<&'a str> {
    match extra?.get(key)?.as_slice() {
        [value] if !value.is_empty() => Some(value.as_str()),
        _ => None,
    }
}

/// The pod binding of a reviewed token, if the review authenticated the node proxies' service
/// account for `audience`.
pub fn pod_binding(
    status: Option<&TokenReviewStatus>,
    audience: &str,
    account: &ServiceAccountRef,
) -> Result<PodBinding, Refusal> {
    let Some(status) = status.filter(|s| s.authenticated == Some(true)) else {
        let why = status.and_then(|s| s.error.clone()).unwrap_or_else(|| "no reason given".to_owned());
        return Err(Refusal::NotAuthenticated(why));
    };
    // An authenticator that ignored the audience returns none: not good enough (the token
    // could be an API token replayed at us).
    if !status.audiences.as_ref().is_some_and(|audiences| audiences.iter().any(|a| a == audience)) {
        return Err(Refusal::WrongAudience(audience.to_owned()));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    if username != account.username() {
        return Err(Refusal::WrongAccount(username.to_owned()));
    }
    let extra = user.and_then(|u| u.extra.as_ref());
    let (Some(pod), Some(uid)) = (single(extra, POD_NAME_EXTRA), single(extra, POD_UID_EXTRA)) else {
        return Err(Refusal::NotPodBound);
    };
    Ok(PodBinding {
        namespace: account.namespace.clone(),
        pod: pod.to_owned(),
        uid: uid.to_owned(),
        node: single(extra, NODE_NAME_EXTRA).map(str::to_owned),
    })
}

/// The node of the pod a token is bound to, given that pod as the API server has it now.
pub fn node_of_pod(binding: &PodBinding, account: &ServiceAccountRef, pod: Option<&Pod>) -> Result<String, Refusal> {
    let name = format!("{}/{}", binding.namespace, binding.pod);
    let Some(pod) = pod else { return Err(Refusal::PodGone(name)) };
    if pod.metadata.uid.as_deref() != Some(binding.uid.as_str()) {
        return Err(Refusal::PodReplaced(name));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.service_account_name.as_deref()) != Some(account.name.as_str()) {
        return Err(Refusal::PodAccount(name));
    }
    let Some(node) = spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) else {
        return Err(Refusal::Unscheduled(name));
    };
    match &binding.node {
        Some(review_node) if *review_node != node => {
            Err(Refusal::NodeDisagrees { pod: name, pod_node: node, review_node: review_node.clone() })
        }
        _ => Ok(node),
    }
}

/// Authenticates node proxies by their projected service-account tokens.
pub struct KubernetesTokens {
    client: kube::Client,
    account: ServiceAccountRef,
    audience: String,
    /// Token → (node, when reviewed). Only accepted tokens are kept.
    reviewed: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for KubernetesTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesTokens").field("account", &self.account).field("audience", &self.audience).finish()
    }
}

impl KubernetesTokens {
    /// Accepts tokens of `account` made for `audience`, reviewed by the API server of `client`.
    pub fn new(client: kube::Client, account: ServiceAccountRef, audience: String) -> Self {
        Self { client, account, audience, reviewed: Mutex::new(HashMap::new()) }
    }

    fn remembered(&self, token: &str) -> Option<String> {
        let reviewed = self.reviewed.lock().ok()?;
        let (node, at) = reviewed.get(token)?;
        (at.elapsed() < CACHE_TTL).then(|| node.clone())
    }

    fn remember(&self, token: &str, node: &str) {
        let Ok(mut reviewed) = self.reviewed.lock() else { return };
        if reviewed.len() >= CACHE_CAPACITY {
            reviewed.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if reviewed.len() >= CACHE_CAPACITY {
                reviewed.clear();
            }
        }
        reviewed.insert(token.to_owned(), (node.to_owned(), Instant::now()));
    }

    /// The name of the node `token` authenticates, or why not. `UNAVAILABLE` when the API
    /// server cannot be asked (the proxy retries).
    pub async fn node_of(&self, token: &str) -> Result<String, Status> {
        if let Some(node) = self.remembered(token) {
            return Ok(node);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("reviewing the node token: {e}")))?;
        let refused = |refusal: Refusal| {
            tracing::warn!(%refusal, "node proxy token refused");
            refusal.status()
        };
        let binding = pod_binding(reviewed.status.as_ref(), &self.audience, &self.account).map_err(refused)?;
        // `list` by name rather than `get`: the controller already lists pods, so this needs
        // no further permission.
        let pods = Api::<Pod>::namespaced(self.client.clone(), &binding.namespace)
            .list(&ListParams::default().fields(&format!("metadata.name={}", binding.pod)))
            .await
            .map_err(|e| Status::unavailable(format!("reading the node proxy's pod: {e}")))?;
        let pod = pods.items.iter().find(|p| p.metadata.name.as_deref() == Some(binding.pod.as_str()));
        let node = node_of_pod(&binding, &self.account, pod).map_err(refused)?;
        tracing::debug!(%node, pod = %binding.pod, "node proxy authenticated by its service-account token");
        self.remember(token, &node);
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    fn account() -> ServiceAccountRef {
        "nodus-system/nodus-node".parse().unwrap()
    }

    fn review(authenticated: bool, audiences: &[&str], user: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: (!audiences.is_empty()).then(|| audiences.iter().map(|a| a.to_string()).collect()),
            error: (!authenticated).then(|| "token has expired".to_owned()),
            user: Some(UserInfo {
                username: Some(user.to_owned()),
                extra: Some(extra.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect()),
                ..UserInfo::default()
            }),
        }
    }

    const SA: &str = "system:serviceaccount:nodus-system:nodus-node";
    const BOUND: &[(&str, &str)] = &[(POD_NAME_EXTRA, "nodus-node-abc"), (POD_UID_EXTRA, "uid-1")];

    #[test]
    fn reviews_are_accepted_only_for_our_audience_account_and_a_pod() {
        let aud = DEFAULT_AUDIENCE;
        let bound = PodBinding {
            namespace: "nodus-system".into(),
            pod: "nodus-node-abc".into(),
            uid: "uid-1".into(),
            node: None,
        };
        let with_node: Vec<(&str, &str)> = BOUND.iter().copied().chain([(NODE_NAME_EXTRA, "node-1")]).collect();
        let cases: Vec<(&str, Option<TokenReviewStatus>, Result<PodBinding, Refusal>)> = vec![
            ("bound token of the node account", Some(review(true, &[aud], SA, BOUND)), Ok(bound.clone())),
            (
                "the review names the node",
                Some(review(true, &[aud], SA, &with_node)),
                Ok(PodBinding { node: Some("node-1".into()), ..bound.clone() }),
            ),
            (
                "not authenticated",
                Some(review(false, &[], "", &[])),
                Err(Refusal::NotAuthenticated("token has expired".into())),
            ),
            ("no status", None, Err(Refusal::NotAuthenticated("no reason given".into()))),
            ("audience ignored", Some(review(true, &[], SA, BOUND)), Err(Refusal::WrongAudience(aud.into()))),
            (
                "an API server token",
                Some(review(true, &["https://kubernetes.default.svc"], SA, BOUND)),
                Err(Refusal::WrongAudience(aud.into())),
            ),
            (
                "another service account",
                Some(review(true, &[aud], "system:serviceaccount:shop:default", BOUND)),
                Err(Refusal::WrongAccount("system:serviceaccount:shop:default".into())),
            ),
            (
                "same name, another namespace",
                Some(review(true, &[aud], "system:serviceaccount:other:nodus-node", BOUND)),
                Err(Refusal::WrongAccount("system:serviceaccount:other:nodus-node".into())),
            ),
            ("a user", Some(review(true, &[aud], "alice", BOUND)), Err(Refusal::WrongAccount("alice".into()))),
            ("not bound to a pod", Some(review(true, &[aud], SA, &[])), Err(Refusal::NotPodBound)),
            (
                "pod name without UID",
                Some(review(true, &[aud], SA, &[(POD_NAME_EXTRA, "nodus-node-abc")])),
                Err(Refusal::NotPodBound),
            ),
        ];
        for (name, status, expected) in cases {
            assert_eq!(pod_binding(status.as_ref(), aud, &account()), expected, "{name}");
        }
    }

    fn pod(uid: &str, account: &str, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("nodus-node-abc".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some(account.into()),
                node_name: node.map(String::from),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn the_node_is_the_live_pods_node() {
        let binding = PodBinding {
            namespace: "nodus-system".into(),
            pod: "nodus-node-abc".into(),
            uid: "uid-1".into(),
            node: None,
        };
        let named = PodBinding { node: Some("node-1".into()), ..binding.clone() };
        let pod_name = "nodus-system/nodus-node-abc".to_string();
        type Case<'a> = (&'a str, &'a PodBinding, Option<Pod>, Result<String, Refusal>);
        let cases: Vec<Case> = vec![
            ("live pod", &binding, Some(pod("uid-1", "nodus-node", Some("node-1"))), Ok("node-1".into())),
            ("review agrees", &named, Some(pod("uid-1", "nodus-node", Some("node-1"))), Ok("node-1".into())),
            ("pod gone", &binding, None, Err(Refusal::PodGone(pod_name.clone()))),
            (
                "pod replaced",
                &binding,
                Some(pod("uid-2", "nodus-node", Some("node-1"))),
                Err(Refusal::PodReplaced(pod_name.clone())),
            ),
            (
                "pod of another account",
                &binding,
                Some(pod("uid-1", "default", Some("node-1"))),
                Err(Refusal::PodAccount(pod_name.clone())),
            ),
            (
                "unscheduled",
                &binding,
                Some(pod("uid-1", "nodus-node", None)),
                Err(Refusal::Unscheduled(pod_name.clone())),
            ),
            (
                "review disagrees",
                &named,
                Some(pod("uid-1", "nodus-node", Some("node-2"))),
                Err(Refusal::NodeDisagrees {
                    pod: pod_name.clone(),
                    pod_node: "node-2".into(),
                    review_node: "node-1".into(),
                }),
            ),
        ];
        for (name, binding, pod, expected) in cases {
            assert_eq!(node_of_pod(binding, &account(), pod.as_ref()), expected, "{name}");
        }
    }

    #[test]
    fn refusals_map_to_grpc_codes_and_accounts_parse() {
        assert_eq!(Refusal::NotAuthenticated(String::new()).status().code(), tonic::Code::Unauthenticated);
        assert_eq!(Refusal::WrongAudience(String::new()).status().code(), tonic::Code::Unauthenticated);
        assert_eq!(Refusal::WrongAccount(String::new()).status().code(), tonic::Code::PermissionDenied);
        assert_eq!(Refusal::PodGone(String::new()).status().code(), tonic::Code::PermissionDenied);
        assert_eq!(account().username(), SA);
        for bad in ["nodus-node", "/x", "x/", "a/b/c", ""] {
            assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad}");
        }
    }
}
