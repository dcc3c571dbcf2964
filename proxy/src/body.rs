//! Body types of the proxy, as enums rather than boxed trait objects so that the common cases
//! (stream through, empty, small buffered) cost no allocation.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Errors of bodies crossing the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
        self.frames.iter().filter_map(|f| f.data_ref().map(Bytes::len)).sum()
    }

    /// Whether there are no data bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// Reads `body` into memory if it has at most `limit` data bytes. Returns a replayable snapshot,
/// or, when the body is larger, a body that replays what was read and streams the rest.
pub async fn buffer_up_to(body: ProxyBody, limit: usize) -> Result<Result<ProxyBodySnapshot, ProxyBody>, BoxError> {
    use http_body_util::BodyExt;
    let mut incoming = match body {
        ProxyBody::Empty => return Ok(Ok(ProxyBodySnapshot::default())),
        ProxyBody::Buffered(buffered) => return Ok(Ok(ProxyBodySnapshot(buffered.frames))),
        prefixed @ ProxyBody::Prefixed { .. } => return Ok(Err(prefixed)),
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
        let frame = frame?;
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
            ProxyBody::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            ProxyBody::Prefixed { head, rest } => match head.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(rest).poll_frame(cx).map_err(Into::into),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Buffered(buffered) => buffered.frames.is_empty(),
            ProxyBody::Incoming(incoming) => incoming.is_end_stream(),
            ProxyBody::Prefixed { head, rest } => head.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Buffered(buffered) => SizeHint::with_exact(buffered.len() as u64),
            ProxyBody::Incoming(incoming) => incoming.size_hint(),
            ProxyBody::Prefixed { head, rest } => {
                let head_len: u64 = head.iter().filter_map(|f| f.data_ref().map(|d| d.len() as u64)).sum();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.size_hint().lower() + head_len);
                if let Some(upper) = rest.size_hint().upper() {
                    hint.set_upper(upper + head_len);
                }
                hint
            }
        }
    }
}
