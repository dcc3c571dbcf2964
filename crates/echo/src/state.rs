//! What an echo server is and remembers, shared by its HTTP and gRPC sides (which the accept
//! loop in `server.rs` dispatches between; neither knows the loop).

/// Who this echo server says it is in its answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoIdentity {
    /// Pod name.
    pub pod: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// The Service it stands behind, if any.
    pub service: String,
    /// The version it reports in the text format (`ServiceVersion`).
    pub version: String,
}

/// How HTTP requests are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AnswerFormat {
    /// An [`crate::EchoReport`] as JSON.
    #[default]
    Json,
    /// `Field=value` lines, as the conformance suite's echo server answers ([`crate::text`]).
    Text,
}

/// What the server remembers across requests.
#[derive(Debug, Default)]
pub(crate) struct EchoState {
    pub(crate) identity: EchoIdentity,
    pub(crate) format: AnswerFormat,
    /// The port this server listens on (the text format reports it).
    pub(crate) port: u16,
    /// Recent request lines (`METHOD path`), newest last, for tests that check what arrived.
    pub(crate) seen: std::sync::Mutex<std::collections::VecDeque<String>>,
}

/// How many recent requests `/.nodus-echo/seen` lists.
pub(crate) const SEEN_CAPACITY: usize = 1000;
