//! Draining: how a proxy that hands its listeners to a successor (or gets SIGTERM) finishes what
//! it has without failing a request.
//!
//! Once draining, the accept loops stop (the listening sockets live on in the successor), HTTP/2
//! connections get GOAWAY and finish their streams, HTTP/1.1 connections answer their next
//! request with `Connection: close` (closing an idle keep-alive connection outright would race a
//! client sending on it), and opaque TCP relays run to their end. The process exits when no
//! connection is left, or when the grace period is over.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The drain signal and the count of connections still open.
#[derive(Clone, Debug)]
pub struct Drain {
    signal: Arc<watch::Sender<bool>>,
    open: Arc<AtomicUsize>,
}

impl Default for Drain {
    fn default() -> Self {
        Self { signal: Arc::new(watch::channel(false).0), open: Arc::default() }
    }
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    /// Starts draining (idempotent).
    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Completes when draining starts.
    pub async fn signaled(&self) {
        let mut receiver = self.signal.subscribe();
        let _ = receiver.wait_for(|draining| *draining).await;
    }

    /// Counts a connection as open for as long as the returned value lives.
    pub fn track(&self) -> Tracked {
        self.open.fetch_add(1, Ordering::AcqRel);
        Tracked(self.open.clone())
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open or `grace` has passed; returns those still open.
    pub async fn drained(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open_connections()
    }

    /// Runs a connection to its end; when draining starts first, `shutdown` asks it to finish
    /// gracefully (hyper's `graceful_shutdown`) and it is run to its end after that.
    pub async fn serve<C, O>(&self, connection: C, shutdown: impl FnOnce(Pin<&mut C>)) -> O
    where
        C: Future<Output = O>,
    {
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            output = connection.as_mut() => return output,
            () = self.signaled() => shutdown(connection.as_mut()),
        }
        connection.await
    }
}

/// Marks an HTTP/1.1 answer `Connection: close` once draining: the client will not send
/// another request on this connection, and hyper closes it after the answer. (HTTP/2 answers
/// are unaffected: HTTP/2 drains with GOAWAY, and the header is forbidden there.)
pub fn close_when_draining<B>(drain: &Drain, mut response: http::Response<B>) -> http::Response<B> {
    if drain.is_draining() && response.version() != http::Version::HTTP_2 {
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn drained_waits_for_tracked_connections_up_to_the_grace_period() {
        let drain = Drain::default();
        assert!(!drain.is_draining());
        let connection = drain.track();
        drain.start();
        assert!(drain.is_draining());
        assert_eq!(drain.drained(Duration::from_millis(50)).await, 1, "still open after the grace period");
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drained(Duration::from_secs(5)).await }
        });
        drop(connection);
        assert_eq!(waiter.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn serve_asks_the_connection_to_finish_when_draining_starts() {
        let drain = Drain::default();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let mut finish = Some(finish);
        let connection = async move { finished.await.is_ok() };
        let serving = tokio::spawn({
            let drain = drain.clone();
            async move {
                drain
                    .serve(connection, |_| {
                        // hyper's graceful_shutdown would start closing; here the test's
                        // connection finishes at once.
                        if let Some(finish) = finish.take() {
                            let _ = finish.send(());
                        }
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!serving.is_finished());
        drain.start();
        assert!(serving.await.unwrap(), "finished through the graceful path");
    }
}
