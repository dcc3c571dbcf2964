//! The gRPC echo service.

use crate::proto::echo_server::Echo;
use crate::proto::{Context, EchoRequest, EchoResponse, Header};
use crate::state::EchoIdentity;
use http::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::{Response, Status};

/// Facts about the HTTP/2 request carrying a call that tonic does not keep; the dispatcher puts
/// them in the request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct CallInfo {
    full_method: String,
    authority: String,
    protocol: String,
    remote: SocketAddr,
}

impl CallInfo {
    pub(crate) fn from_request<B>(request: &Request<B>, remote: SocketAddr) -> Self {
        Self {
            full_method: request.uri().path().to_owned(),
            authority: request.uri().authority().map(|a| a.to_string()).unwrap_or_default(),
            protocol: format!("{:?}", request.version()),
            remote,
        }
    }
}

pub(crate) struct EchoService {
    identity: Arc<EchoIdentity>,
}

impl EchoService {
    pub(crate) fn new(identity: Arc<EchoIdentity>) -> Self {
        Self { identity }
    }

    fn answer(&self, request: tonic::Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let info = request.extensions().get::<CallInfo>().cloned();
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_owned(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect();
        let context = Context {
            pod: self.identity.pod.clone(),
            namespace: self.identity.namespace.clone(),
            service: self.identity.service.clone(),
            full_method: info.as_ref().map(|i| i.full_method.clone()).unwrap_or_default(),
            authority: info.as_ref().map(|i| i.authority.clone()).unwrap_or_default(),
            protocol: info.as_ref().map(|i| i.protocol.clone()).unwrap_or_default(),
            remote_addr: info.as_ref().map(|i| i.remote.to_string()).unwrap_or_default(),
            headers,
        };
        Ok(Response::new(EchoResponse { message: request.into_inner().message, context: Some(context) }))
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: tonic::Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.answer(request)
    }

    async fn echo_two(&self, request: tonic::Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.answer(request)
    }

    async fn echo_three(&self, request: tonic::Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.answer(request)
    }
}
