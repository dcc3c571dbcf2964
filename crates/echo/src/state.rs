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
}

/// What the server remembers across requests.
#[derive(Debug, Default)]
pub(crate) struct EchoState {
    pub(crate) identity: EchoIdentity,
    /// Recent request lines (`METHOD path`), newest last, for tests that check what arrived.
    pub(crate) seen: std::sync::Mutex<std::collections::VecDeque<String>>,
}

/// How many recent requests `/.nodus-echo/seen` lists.
pub(crate) const SEEN_CAPACITY: usize = 1000;
