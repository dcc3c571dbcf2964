//! The body of an answer to a client: made by the proxy or streamed from an endpoint, observed
//! by metrics until its end.

use crate::core::body::{BoxError, ProxyBody};
use crate::core::closing::LastAnswer;
use crate::core::metrics::ResponseObserver;
use crate::transport::pool::UpstreamBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(Debug)]
enum Source {
    Local(ProxyBody),
    Upstream(UpstreamBody),
}

/// An answer's body.
#[derive(Debug)]
pub struct ResponseBody {
    source: Source,
    observer: Option<ResponseObserver>,
    /// Marked when the body's end is reached, for a connection's last answer.
    last: Option<LastAnswer>,
}

impl ResponseBody {
    /// A body the proxy made.
    pub fn local(body: ProxyBody) -> Self {
        Self { source: Source::Local(body), observer: None, last: None }
    }

    /// A body streamed from an endpoint.
    pub fn upstream(body: UpstreamBody) -> Self {
        Self { source: Source::Upstream(body), observer: None, last: None }
    }

    /// This is the connection's last answer: `last` is marked as its final bytes are produced
    /// (at once if it has none), so that they leave with the connection's close
    /// ([`crate::core::closing`]).
    pub fn ends_connection(&mut self, last: LastAnswer) {
        if self.is_end_stream() {
            last.mark();
        } else {
            self.last = Some(last);
        }
    }

    /// Observes the body until its end (records metrics then).
    pub fn observe(&mut self, mut observer: ResponseObserver) {
        if self.is_end_stream() {
            observer.finish(None);
        } else {
            self.observer = Some(observer);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Local(body) => Pin::new(body).poll_frame(cx),
            Source::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        let ended = match &this.source {
            Source::Local(body) => body.is_end_stream(),
            Source::Upstream(body) => body.is_end_stream(),
        };
        if let Some(last) = &this.last {
            if matches!(&polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
                || (ended && matches!(&polled, Poll::Ready(Some(Ok(_)))))
            {
                last.mark();
            }
        }
        if let Some(observer) = this.observer.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => observer.finish(frame.trailers_ref()),
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => observer.finish(None),
                Poll::Ready(Some(Ok(_))) if ended => observer.finish(None),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Local(body) => body.is_end_stream(),
            Source::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Local(body) => body.size_hint(),
            Source::Upstream(body) => body.size_hint(),
        }
    }
}
