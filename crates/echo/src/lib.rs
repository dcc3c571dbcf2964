//! The Nodus echo workload: one port answering HTTP/1.1, HTTP/2 with prior knowledge (h2c) and
//! gRPC, each time describing what arrived and who answered.
//!
//! HTTP requests get an [`EchoReport`] as JSON, in the spirit of the Gateway API conformance echo
//! server; gRPC calls to `nodus.echo.v1.Echo` get the same facts in the response message. Tests
//! and the demo read them to tell which backend answered and what the mesh changed on the way.
//!
//! Request headers steer the answer, so tests can make a backend fail or hang on demand:
//! - `x-echo-status: 503`: answer with that status.
//! - `x-echo-delay-ms: 2000`: wait that long before answering.
//! - `x-echo-set-header: name:value, other:value`: add response headers.
//! - `x-echo-fail-pod: NAME`: answer 503 if this pod is NAME (one failing replica).
//!
//! `Upgrade: nodus-echo` switches the connection to a raw byte echo (WebSocket-like).
//!
//! `GET /.nodus-echo/seen` lists the last requests this pod received (mirror tests use it).
//!
//! `nodus-echo-advanced` answers in the text format of the Gateway API conformance suite's
//! echo server instead ([`text`]), and carries its `client` command.

mod client;
mod grpc;
mod http_echo;
mod server;
mod state;
pub mod text;

pub use client::{h2c_get, http1_get, ClientError, HttpAnswer};
pub use http_echo::{EchoReport, DELAY_HEADER, FAIL_POD_HEADER, SEEN_PATH, SET_HEADER_HEADER, STATUS_HEADER};
pub use server::{serve, serve_as, UPGRADE_PROTOCOL};
pub use state::{AnswerFormat, EchoIdentity};

/// Generated gRPC types of `proto/echo.proto` (package `nodus.echo.v1`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("nodus.echo.v1");
}
