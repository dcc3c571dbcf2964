//! Authenticating node proxies on the control-plane stream.
//!
//! With a node token key (`--node-token-key`), every call must carry a node token
//! ([`nodus_identity::node_token`]); the interceptor checks it and records the node it names
//! ([`AuthenticatedNode`]), and the services hold the caller to that node: a config stream's
//! Hello and a certificate request must name the same node (else `PERMISSION_DENIED`). Without
//! a key, calls are not authenticated (the controller says so at start-up); the node a proxy
//! names is then taken on trust.

use nodus_identity::node_token::{bearer, NodeTokenKey, TOKEN_METADATA};
use std::sync::Arc;
use tonic::{Request, Status};

/// The node a call's token names, set by [`NodeAuth`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedNode(pub String);

/// The interceptor in front of both services.
#[derive(Clone, Debug, Default)]
pub struct NodeAuth {
    key: Option<Arc<NodeTokenKey>>,
}

impl NodeAuth {
    /// Requires tokens made with `key`.
    pub fn required(key: NodeTokenKey) -> Self {
        Self { key: Some(Arc::new(key)) }
    }

    /// Authenticates nobody (a controller without a token key).
    pub fn off() -> Self {
        Self::default()
    }

    /// Checks one call: `UNAUTHENTICATED` without a valid token when tokens are required.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(key) = &self.key else { return Ok(request) };
        let token = request
            .metadata()
            .get(TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated("a node token is required (authorization: Bearer <token>)"))?;
        let node = key.verify(token).ok_or_else(|| {
            tracing::warn!("control-plane call with an invalid node token refused");
            Status::unauthenticated("invalid node token")
        })?;
        request.extensions_mut().insert(AuthenticatedNode(node));
        Ok(request)
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

    fn call(token: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(token) = token {
            request.metadata_mut().insert(TOKEN_METADATA, format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    #[test]
    fn tokens_are_required_checked_and_bound_to_their_node() {
        let key = NodeTokenKey::from_bytes(&[1; 32]);
        let token = key.token("node-1");
        let forged = NodeTokenKey::from_bytes(&[2; 32]).token("node-1");
        let auth = NodeAuth::required(key);
        assert_eq!(auth.check(call(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.check(call(Some(&forged))).unwrap_err().code(), tonic::Code::Unauthenticated);
        let checked = auth.check(call(Some(&token))).unwrap();
        let node = checked.extensions().get::<AuthenticatedNode>();
        assert_eq!(node, Some(&AuthenticatedNode("node-1".into())));
        assert!(authorize_node(node, "node-1").is_ok());
        assert_eq!(authorize_node(node, "node-2").unwrap_err().code(), tonic::Code::PermissionDenied);
        // Off: anyone, for any node.
        let open = NodeAuth::off().check(call(None)).unwrap();
        assert!(authorize_node(open.extensions().get::<AuthenticatedNode>(), "node-2").is_ok());
    }
}
