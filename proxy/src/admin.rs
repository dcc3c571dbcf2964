//! The admin port: `/metrics` (OpenMetrics when asked for, else Prometheus text 0.0.4), `/ready`, `/live`, `/config_dump` (the snapshot in
//! force, as JSON). It never serves keys or secrets.

use crate::metrics::Metrics;
use crate::state::ConfigStore;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

async fn handle(
    request: Request<Incoming>,
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match request.uri().path() {
        "/metrics" => {
            // Prometheus asks for OpenMetrics; curl and promtool get the classic text format.
            let wants_openmetrics = request
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            if wants_openmetrics {
                answer(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
            } else {
                let text = crate::metrics::openmetrics_to_prometheus_text(&metrics.encode());
                answer(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
            }
        }
        "/live" => answer(StatusCode::OK, "text/plain", "live\n"),
        "/ready" => match store.load() {
            Some(state) => answer(StatusCode::OK, "text/plain", format!("ready: config version {}\n", state.version)),
            None => answer(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: no config received yet\n"),
        },
        "/config_dump" => match store.load() {
            Some(state) => {
                let dump = serde_json::json!({ "version": state.version, "snapshot": &*state.snapshot });
                answer(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&dump).unwrap_or_default())
            }
            None => {
                answer(StatusCode::SERVICE_UNAVAILABLE, "application/json", "{\"error\":\"no config received yet\"}")
            }
        },
        _ => answer(StatusCode::NOT_FOUND, "text/plain", "try /metrics, /ready, /live or /config_dump\n"),
    })
}

/// Serves the admin endpoints until the listener fails.
pub async fn serve(
    listener: TcpListener,
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    drain: crate::drain::Drain,
) -> std::io::Result<()> {
    loop {
        // Once draining, the successor accepts on this (shared) socket.
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = drain.signaled() => return Ok(()),
        };
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(request, store.clone(), metrics.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
