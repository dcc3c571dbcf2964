//! The controller binary as the tests run it, and calls made the way a node proxy makes them.

use nodus_wire::proto::{subscribe_request, Hello, SubscribeRequest};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// A running controller; killed on drop.
pub struct Controller {
    child: Child,
    /// Its gRPC endpoint, `http://address`.
    pub endpoint: String,
}

impl Controller {
    /// Runs `command` (the controller binary and its arguments) and waits for its ready line.
    pub fn start(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        // `nodus-controller ready grpc=<address> metrics=<address>`
        let address =
            ready.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).expect("the ready line").to_owned();
        Self { child, endpoint: format!("http://{address}") }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `message` as a call carrying `token`, if any.
pub fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// A config stream's requests: a Hello for `node`, then nothing, and it stays open (never
/// ends) as a subscribing proxy's does.
pub fn hello(node: &str) -> impl tokio_stream::Stream<Item = SubscribeRequest> + Send + 'static {
    let message = SubscribeRequest {
        message: Some(subscribe_request::Message::Hello(Hello { node: node.into(), ..Default::default() })),
    };
    tokio_stream::StreamExt::chain(tokio_stream::iter(vec![message]), tokio_stream::pending())
}
