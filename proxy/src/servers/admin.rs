//! The admin endpoints, on two listeners. The public one (`:15020`, what Prometheus and the
//! kubelet's probes reach) serves `/metrics` (OpenMetrics when asked for, else Prometheus text
//! 0.0.4), `/ready` and `/live`. The node-local one (the node's loopback, `127.0.0.1:15021`,
//! which pods cannot reach: they have network namespaces of their own) adds `/config_dump`, the
//! node's whole mesh config (every Service, endpoint, identity and policy), as ztunnel keeps its
//! admin on localhost. Neither serves keys or secrets.

use crate::core::metrics::Metrics;
use crate::state::ConfigStore;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/metrics`, `/ready`, `/live`: for anyone who can reach the node.
    Public,
    /// Those and the debug endpoints (`/config_dump`): for the node itself.
    NodeLocal,
}

/// What the admin endpoints read.
pub struct Admin {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
}

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

impl Admin {
    /// The endpoints of `store` and `metrics`.
    pub fn new(store: Arc<ConfigStore>, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }

    /// Serves `scope`'s endpoints on `listener` until it fails or `drain` is signalled.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        scope: Scope,
        drain: crate::core::drain::Drain,
    ) -> std::io::Result<()> {
        loop {
            // Once draining, the successor accepts on this (shared) socket.
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = drain.signaled() => return Ok(()),
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&request, scope)) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }

    fn handle(&self, request: &Request<Incoming>, scope: Scope) -> Response<Full<Bytes>> {
        let (store, metrics) = (&self.store, &self.metrics);
        match request.uri().path() {
            "/metrics" => {
                // Prometheus asks for OpenMetrics; curl and promtool get the classic text format.
                let wants_openmetrics = request
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                if wants_openmetrics {
                    answer(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        metrics.encode(),
                    )
                } else {
                    let text = crate::core::metrics::openmetrics_to_prometheus_text(&metrics.encode());
                    answer(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
                }
            }
            "/live" => answer(StatusCode::OK, "text/plain", "live\n"),
            "/ready" => match store.load() {
                Some(state) => {
                    answer(StatusCode::OK, "text/plain", format!("ready: config version {}\n", state.version))
                }
                None => answer(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: no config received yet\n"),
            },
            "/config_dump" if scope == Scope::Public => answer(
                StatusCode::NOT_FOUND,
                "text/plain",
                "/config_dump is on the node-local debug listener (--debug-addr): nodusctl proxy-config\n",
            ),
            "/config_dump" => match store.load() {
                Some(state) => {
                    // What the proxy left out of its config, and why, beside the config itself.
                    let unplaced: Vec<String> = state.unplaced.iter().map(ToString::to_string).collect();
                    let dump = serde_json::json!({ "version": state.version, "unplaced": unplaced, "snapshot": &*state.snapshot });
                    answer(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&dump).unwrap_or_default())
                }
                None => answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"error\":\"no config received yet\"}",
                ),
            },
            _ if scope == Scope::Public => {
                answer(StatusCode::NOT_FOUND, "text/plain", "try /metrics, /ready or /live\n")
            }
            _ => answer(StatusCode::NOT_FOUND, "text/plain", "try /metrics, /ready, /live or /config_dump\n"),
        }
    }
}
