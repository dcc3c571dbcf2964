//! Authenticating node proxies on the control-plane stream.
//!
//! Every call carries a node token (`authorization: Bearer <token>`). Two kinds are accepted,
//! each when configured: HMAC node tokens made from the controller's key (`--node-token-key`;
//! [`nodus_identity::node_token`], for the local mesh and hosts outside Kubernetes), and, in a
//! cluster, the node proxies' projected service-account tokens, reviewed by the API server
//! (`--node-service-account`; [`crate::token_review`]). [`Authenticated`] wraps both gRPC
//! services: it checks the token before the call reaches the service (a refused call gets
//! `UNAUTHENTICATED` or `PERMISSION_DENIED` and nothing else) and records the node the token
//! stands for ([`AuthenticatedNode`]). The services then hold the caller to that node: a config
//! stream's Hello and a certificate request must name the same node (else `PERMISSION_DENIED`).
//! With neither configured, calls are not authenticated (the controller says so at start-up)
//! and the node a proxy names is taken on trust.

use crate::token_review::KubernetesTokens;
use nodus_identity::node_token::{bearer, NodeTokenKey, TOKEN_METADATA};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;

/// The node a call's token stands for, set by [`Authenticated`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedNode(pub String);

/// The tokens the controller accepts from node proxies.
#[derive(Clone, Debug, Default)]
pub struct NodeAuth {
    node_tokens: Option<Arc<NodeTokenKey>>,
    kubernetes: Option<Arc<KubernetesTokens>>,
}

/// The HMAC node tokens' prefix; anything else is taken for a Kubernetes token.
const NODE_TOKEN_PREFIX: &str = "v1.";

impl NodeAuth {
    /// Authenticates nobody (a controller given no way to check tokens).
    pub fn off() -> Self {
        Self::default()
    }

    /// Also accepts HMAC node tokens made with `key`.
    pub fn with_node_tokens(mut self, key: NodeTokenKey) -> Self {
        self.node_tokens = Some(Arc::new(key));
        self
    }

    /// Also accepts service-account tokens reviewed by the API server.
    pub fn with_kubernetes(mut self, tokens: KubernetesTokens) -> Self {
        self.kubernetes = Some(Arc::new(tokens));
        self
    }

    /// Whether calls must carry a valid token.
    pub fn is_required(&self) -> bool {
        self.node_tokens.is_some() || self.kubernetes.is_some()
    }

    /// Authenticates one call by its headers: `None` when authentication is off, else the node
    /// its token stands for, or the status to refuse it with.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Option<AuthenticatedNode>, Status> {
        if !self.is_required() {
            return Ok(None);
        }
        let token = headers
            .get(TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated("a node token is required (authorization: Bearer <token>)"))?;
        match (&self.node_tokens, &self.kubernetes) {
            (Some(key), _) if token.starts_with(NODE_TOKEN_PREFIX) => match key.verify(token) {
                Some(node) => Ok(Some(AuthenticatedNode(node))),
                None => {
                    tracing::warn!("control-plane call with an invalid node token refused");
                    Err(Status::unauthenticated("invalid node token"))
                }
            },
            (_, Some(kubernetes)) => kubernetes.node_of(token).await.map(|node| Some(AuthenticatedNode(node))),
            _ => Err(Status::unauthenticated("invalid node token")),
        }
    }
}

/// A gRPC service whose calls are authenticated first (see the module's documentation).
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    auth: NodeAuth,
}

impl<S> Authenticated<S> {
    /// `inner`, behind `auth`.
    pub fn new(inner: S, auth: NodeAuth) -> Self {
        Self { inner, auth }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service polled ready serves this call; a fresh clone takes its place.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        let auth = self.auth.clone();
        Box::pin(async move {
            let mut ready = ready;
            match auth.authenticate(request.headers()).await {
                Ok(node) => {
                    if let Some(node) = node {
                        request.extensions_mut().insert(node);
                    }
                    ready.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Whether a caller may act for `claimed`: always when authentication is off (no
/// [`AuthenticatedNode`]), else only for the node its token names.
#[allow(clippy::result_large_err)]
pub fn authorize_node(authenticated: Option<&AuthenticatedNode>, claimed: &str) -> Result<(), Status> {
    match authenticated {
        Some(AuthenticatedNode(node)) if node != claimed => {
            tracing::warn!(token_node = %node, %claimed, "a node proxy claimed another node: refused");
            Err(Status::permission_denied(format!("this token is for node {node:?}, not {claimed:?}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(TOKEN_METADATA, format!("Bearer {token}").parse().unwrap());
        }
        headers
    }

    #[tokio::test]
    async fn tokens_are_required_checked_and_bound_to_their_node() {
        let key = NodeTokenKey::from_bytes(&[1; 32]);
        let token = key.token("node-1");
        let forged = NodeTokenKey::from_bytes(&[2; 32]).token("node-1");
        let auth = NodeAuth::off().with_node_tokens(key);
        let code = |r: Result<_, Status>| r.unwrap_err().code();
        assert_eq!(code(auth.authenticate(&headers(None)).await), tonic::Code::Unauthenticated);
        assert_eq!(code(auth.authenticate(&headers(Some(&forged))).await), tonic::Code::Unauthenticated);
        // Without a Kubernetes reviewer, other tokens are simply invalid.
        assert_eq!(code(auth.authenticate(&headers(Some("eyJhbGciOi.x.y"))).await), tonic::Code::Unauthenticated);
        let node = auth.authenticate(&headers(Some(&token))).await.unwrap();
        assert_eq!(node, Some(AuthenticatedNode("node-1".into())));
        assert!(authorize_node(node.as_ref(), "node-1").is_ok());
        assert_eq!(authorize_node(node.as_ref(), "node-2").unwrap_err().code(), tonic::Code::PermissionDenied);
        // Off: anyone, for any node.
        let open = NodeAuth::off().authenticate(&headers(None)).await.unwrap();
        assert!(authorize_node(open.as_ref(), "node-2").is_ok());
    }
}
