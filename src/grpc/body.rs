//! The request body a [`GrpcCacheService`](super::GrpcCacheService) hands on: what it read of
//! the call's stream, replayed, then the rest of the stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A gRPC call's request body after the cache read some or all of it: the frames it read
    /// come first, then whatever the stream still holds.
    pub struct RequestBody<B: Body> {
        // The frames the cache read before handing the call on.
        read: VecDeque<Frame<Bytes>>,
        // The error that stopped the cache's reading, reported after `read`.
        error: Option<B::Error>,
        // The rest of the stream; `None` once the cache read it to its end.
        rest: Option<B>,
    }
}

impl<B: Body> RequestBody<B> {
    /// A body the cache did not read.
    pub(crate) fn unread(body: B) -> Self {
        Self { read: VecDeque::new(), error: None, rest: Some(body) }
    }

    /// `read`, then `rest` (if the stream did not end yet).
    pub(crate) fn resumed(read: VecDeque<Frame<Bytes>>, rest: Option<B>) -> Self {
        Self { read, error: None, rest }
    }

    /// `read`, then the `error` reading the stream ended with.
    pub(crate) fn failed(read: VecDeque<Frame<Bytes>>, error: B::Error) -> Self {
        Self { read, error: Some(error), rest: None }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 =
            self.read.iter().filter_map(Frame::data_ref).map(|data| data.len() as u64).sum();
        let mut hint = match &self.rest {
            Some(rest) => rest.size_hint(),
            None => SizeHint::with_exact(0),
        };
        // The upper bound first: `set_lower` panics on a lower bound above the upper one.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint.set_lower(hint.lower().saturating_add(read));
        hint
    }
}

impl<B: Body> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("read_frames", &self.read.len())
            .field("failed", &self.error.is_some())
            .field("ended", &self.rest.is_none())
            .finish()
    }
}
