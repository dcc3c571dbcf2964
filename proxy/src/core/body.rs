//! Body types of the proxy, as enums rather than boxed trait objects so that the common cases
//! (stream through, empty, small buffered) cost no allocation.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Errors of bodies crossing the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body failed (bad chunked framing, cut short, reset): the client's
/// fault, answered 400, never counted against the endpoint it was being sent to.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

impl ClientBodyError {
    /// Whether `error` or one of its causes is a client body failure.
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if error.is::<ClientBodyError>() {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

fn client_body_error(error: hyper::Error) -> BoxError {
    Box::new(ClientBodyError(error))
}

/// A request or response body the proxy forwards.
#[derive(Debug, Default)]
pub enum ProxyBody {
    /// No body.
    #[default]
    Empty,
    /// A body held in memory (a local answer, or a buffered request that may be sent again).
    Buffered(BufferedBody),
    /// Streamed from the peer as it arrives.
    Incoming(Incoming),
    /// What was read while trying to buffer, then the rest of the stream.
    Prefixed {
        /// Frames already read.
        head: VecDeque<Frame<Bytes>>,
        /// The rest.
        rest: Incoming,
    },
    /// One attempt's reading of a body that may be sent again (see [`ReplayBody`]).
    Replay(ReplayBody),
}

impl ProxyBody {
    /// A body of `bytes`.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self::Buffered(BufferedBody::new(vec![Frame::data(bytes.into())]))
    }
}

/// A complete body in memory.
#[derive(Debug, Default)]
pub struct BufferedBody {
    frames: VecDeque<Frame<Bytes>>,
}

impl BufferedBody {
    fn new(frames: Vec<Frame<Bytes>>) -> Self {
        Self { frames: frames.into() }
    }

    /// Total data bytes.
    pub fn len(&self) -> usize {
        data_len(&self.frames)
    }

    /// Whether there are no data bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Data bytes in `frames` (trailers count for nothing).
fn data_len<'a>(frames: impl IntoIterator<Item = &'a Frame<Bytes>>) -> usize {
    frames.into_iter().filter_map(|f| f.data_ref().map(Bytes::len)).sum()
}

/// The size of `ahead` more bytes followed by a body hinting `rest`.
fn hint_after(ahead: usize, rest: SizeHint) -> SizeHint {
    let ahead = ahead as u64;
    let mut hint = SizeHint::new();
    hint.set_lower(rest.lower() + ahead);
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper + ahead);
    }
    hint
}

fn clone_frame(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match (frame.data_ref(), frame.trailers_ref()) {
        (Some(data), _) => Frame::data(data.clone()),
        (None, Some(trailers)) => Frame::trailers(trailers.clone()),
        (None, None) => Frame::data(Bytes::new()),
    }
}

/// A replayable copy of a buffered body.
#[derive(Debug, Default)]
pub struct ProxyBodySnapshot(VecDeque<Frame<Bytes>>);

impl ProxyBodySnapshot {
    /// A new body with the same frames.
    pub fn body(&self) -> ProxyBody {
        ProxyBody::Buffered(BufferedBody { frames: self.0.iter().map(clone_frame).collect() })
    }
}

/// Largest request body kept to be sent again: buffered for a retry
/// (the retry layer), or kept by a [`ReplayBody`] while it streams; larger bodies get one
/// attempt.
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// A streamed body that keeps what it has read, up to a limit, so that its request can be sent
/// again when the endpoint refused it unprocessed (an HTTP/2 stream above a GOAWAY's last stream
/// id, or reset with REFUSED_STREAM). Unlike [`buffer_up_to`] nothing waits: frames go on as
/// they arrive, and keeping a data frame costs a reference count (`Bytes`), not a copy.
///
/// Every attempt reads through its own handle: first what earlier attempts read, then the rest
/// of the original body. An attempt that died may still be read by its connection's task for a
/// moment; what it reads is kept for the next one, so no frame is lost between them.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<ReplayState>>,
    /// Frames of the body this handle has yielded.
    position: usize,
}

#[derive(Debug)]
struct ReplayState {
    rest: ProxyBody,
    /// Every frame read from `rest`, in order, until more than `limit` data bytes were read.
    kept: Vec<Frame<Bytes>>,
    kept_bytes: usize,
    /// Frames read from `rest` so far.
    read: usize,
    limit: usize,
    /// More than `limit` was read, or no attempt will follow: `kept` was let go and the body
    /// cannot be sent again.
    given_up: bool,
}

impl ReplayBody {
    /// The first attempt's handle on `body`, keeping up to `limit` data bytes.
    pub fn new(body: ProxyBody, limit: usize) -> Self {
        let state = ReplayState { rest: body, kept: Vec::new(), kept_bytes: 0, read: 0, limit, given_up: false };
        Self { shared: Arc::new(Mutex::new(state)), position: 0 }
    }

    /// A handle reading the body from its start, for another attempt; `None` once more than the
    /// limit was read.
    pub fn again(&self) -> Option<Self> {
        let state = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        (!state.given_up).then(|| Self { shared: self.shared.clone(), position: 0 })
    }

    /// No attempt will follow (the endpoint answered): what was kept is let go, and the rest of
    /// the body streams through without being kept (a long request stream holds no copy).
    pub fn give_up(&self) {
        let mut state = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        state.given_up = true;
        state.kept = Vec::new();
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut state = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if self.position < state.read {
            let Some(frame) = state.kept.get(self.position) else {
                return Poll::Ready(Some(Err("request body too large to send again".into())));
            };
            let frame = clone_frame(frame);
            self.position += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        let polled = Pin::new(&mut state.rest).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            state.read += 1;
            self.position += 1;
            if !state.given_up {
                state.kept_bytes += frame.data_ref().map_or(0, Bytes::len);
                if state.kept_bytes > state.limit {
                    state.given_up = true;
                    state.kept = Vec::new();
                } else {
                    let kept = clone_frame(frame);
                    state.kept.push(kept);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        self.position == state.read && state.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        hint_after(data_len(state.kept.iter().skip(self.position)), state.rest.size_hint())
    }
}

/// Reads `body` into memory if it has at most `limit` data bytes. Returns a replayable snapshot,
/// or, when the body is larger, a body that replays what was read and streams the rest.
pub async fn buffer_up_to(body: ProxyBody, limit: usize) -> Result<Result<ProxyBodySnapshot, ProxyBody>, BoxError> {
    use http_body_util::BodyExt;
    let mut incoming = match body {
        ProxyBody::Empty => return Ok(Ok(ProxyBodySnapshot::default())),
        ProxyBody::Buffered(buffered) => return Ok(Ok(ProxyBodySnapshot(buffered.frames))),
        streamed @ (ProxyBody::Prefixed { .. } | ProxyBody::Replay(_)) => return Ok(Err(streamed)),
        ProxyBody::Incoming(incoming) => incoming,
    };
    if incoming.is_end_stream() {
        return Ok(Ok(ProxyBodySnapshot::default()));
    }
    if incoming.size_hint().lower() > limit as u64 {
        return Ok(Err(ProxyBody::Incoming(incoming)));
    }
    let mut frames = VecDeque::new();
    let mut size = 0usize;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(client_body_error)?;
        size += frame.data_ref().map_or(0, Bytes::len);
        frames.push_back(frame);
        if size > limit {
            return Ok(Err(ProxyBody::Prefixed { head: frames, rest: incoming }));
        }
    }
    Ok(Ok(ProxyBodySnapshot(frames)))
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Buffered(buffered) => Poll::Ready(buffered.frames.pop_front().map(Ok)),
            ProxyBody::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(client_body_error),
            ProxyBody::Prefixed { head, rest } => match head.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(rest).poll_frame(cx).map_err(client_body_error),
            },
            ProxyBody::Replay(replay) => replay.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Buffered(buffered) => buffered.frames.is_empty(),
            ProxyBody::Incoming(incoming) => incoming.is_end_stream(),
            ProxyBody::Prefixed { head, rest } => head.is_empty() && rest.is_end_stream(),
            ProxyBody::Replay(replay) => replay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Buffered(buffered) => SizeHint::with_exact(buffered.len() as u64),
            ProxyBody::Incoming(incoming) => incoming.size_hint(),
            ProxyBody::Prefixed { head, rest } => hint_after(data_len(head), rest.size_hint()),
            ProxyBody::Replay(replay) => replay.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    fn body(chunks: &[&'static str], with_trailers: bool) -> ProxyBody {
        let mut frames: Vec<Frame<Bytes>> =
            chunks.iter().map(|c| Frame::data(Bytes::from_static(c.as_bytes()))).collect();
        if with_trailers {
            frames.push(Frame::trailers(trailers()));
        }
        ProxyBody::Buffered(BufferedBody::new(frames))
    }

    async fn read_all(body: ReplayBody) -> (Vec<u8>, Option<http::HeaderMap>) {
        let collected = ProxyBody::Replay(body).collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_second_attempt_reads_the_whole_body_again_with_its_trailers() {
        let first = ReplayBody::new(body(&["abc", "def"], true), 64);
        let second = first.again().unwrap();
        assert_eq!(read_all(first).await, (b"abcdef".to_vec(), Some(trailers())));
        assert_eq!(read_all(second).await, (b"abcdef".to_vec(), Some(trailers())));
    }

    fn trailers() -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        map.insert("grpc-timeout", http::HeaderValue::from_static("1S"));
        map
    }

    #[tokio::test]
    async fn an_attempt_started_midway_replays_what_the_first_read_then_goes_on() {
        let mut first = ReplayBody::new(body(&["one", "two", "three"], false), 64);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Some(Ok(frame))) = first.poll_frame(&mut cx) else { panic!("a frame") };
        assert_eq!(frame.into_data().unwrap(), "one");
        let second = first.again().unwrap();
        // The dying first attempt reads one more frame; the second must still see it.
        let Poll::Ready(Some(Ok(frame))) = first.poll_frame(&mut cx) else { panic!("a frame") };
        assert_eq!(frame.into_data().unwrap(), "two");
        assert!(!second.is_end_stream());
        assert_eq!(second.size_hint().lower(), 6 + 5, "what was kept plus what is left");
        assert_eq!(read_all(second).await.0, b"onetwothree");
    }

    #[tokio::test]
    async fn past_the_limit_the_body_streams_on_but_cannot_be_sent_again() {
        let first = ReplayBody::new(body(&["0123456789", "0123456789"], false), 15);
        let spare = first.again().unwrap();
        assert_eq!(read_all(first).await.0.len(), 20, "the first attempt gets all of it");
        assert!(spare.again().is_none(), "nothing kept to send again");
        let error = ProxyBody::Replay(spare).collect().await.unwrap_err();
        assert!(error.to_string().contains("too large"), "{error}");
    }

    #[tokio::test]
    async fn once_given_up_nothing_more_is_kept() {
        let mut first = ReplayBody::new(body(&["one", "two"], false), 64);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(first.poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));
        first.give_up();
        assert!(first.again().is_none());
        assert!(first.shared.lock().unwrap().kept.is_empty(), "what was kept is let go");
        assert_eq!(read_all(first).await.0, b"two", "the rest still streams");
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let first = ReplayBody::new(ProxyBody::Empty, 64);
        assert!(first.is_end_stream());
        assert!(first.again().unwrap().is_end_stream());
    }
}
