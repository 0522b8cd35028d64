//! The response body the layer returns.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::capture::Capture;
use super::fill::{self, Filling};
use crate::background;

pin_project! {
    /// The body of a response that passed through a [`CacheService`](crate::CacheService):
    /// served from the store, passed through untouched, or streamed to the client while a copy
    /// is captured for the store (by a task of its own, so that the store never waits for the
    /// client to read: see the crate's docs).
    ///
    /// Its error type is the inner body's, unchanged.
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Passthrough { #[pin] inner: B },
        Capturing { #[pin] inner: B, capture: Option<Capture> },
        Filling { fill: Filling<B> },
    }
}

impl<B> CacheBody<B> {
    /// A body answered from a stored entry.
    pub(crate) fn cached(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self { kind: Kind::Cached { data, trailers } }
    }

    /// The inner service's body, untouched.
    pub(crate) fn passthrough(inner: B) -> Self {
        Self { kind: Kind::Passthrough { inner } }
    }
}

impl<B: Body<Data = Bytes>> CacheBody<B> {
    /// The inner service's body, forwarded frame by frame while `capture` keeps a copy. The
    /// copy is handed to the store only if the body ends normally.
    pub(crate) fn capturing(inner: B, capture: Capture) -> Self {
        // hyper never polls a body that is already at its end, so finish such a body now.
        if inner.is_end_stream() {
            capture.finish();
            return Self::passthrough(inner);
        }
        Self { kind: Kind::Capturing { inner, capture: Some(capture) } }
    }
}

impl<B> CacheBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    /// The inner service's body, read by a task at the inner service's pace while `capture`
    /// keeps a copy, and forwarded to the client as it reads. Captured in line, as
    /// [`capturing`](Self::capturing), when there is no Tokio runtime to run the task on.
    pub(crate) fn filling(inner: B, capture: Capture) -> Self {
        if inner.is_end_stream() || !background::available() {
            return Self::capturing(inner, capture);
        }
        Self { kind: Kind::Filling { fill: fill::spawn(inner, capture) } }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Cached { data, .. } => f
                .debug_struct("CacheBody::Cached")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Passthrough { inner } => {
                f.debug_tuple("CacheBody::Passthrough").field(inner).finish()
            }
            Kind::Capturing { inner, .. } => {
                f.debug_tuple("CacheBody::Capturing").field(inner).finish()
            }
            Kind::Filling { fill } => f.debug_tuple("CacheBody::Filling").field(fill).finish(),
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Cached { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Passthrough { inner } => inner.poll_frame(cx),
            KindProj::Capturing { mut inner, capture } => {
                let frame = ready!(inner.as_mut().poll_frame(cx));
                let ended = match &frame {
                    Some(Ok(frame)) => {
                        if capture.as_mut().is_some_and(|c| !c.record(frame)) {
                            *capture = None; // over the size limit: stream the rest uncaptured
                        }
                        inner.is_end_stream()
                    }
                    // An error means the copy is incomplete: drop it.
                    Some(Err(_)) => {
                        *capture = None;
                        false
                    }
                    None => true,
                };
                if ended {
                    if let Some(complete) = capture.take() {
                        complete.finish();
                    }
                }
                Poll::Ready(frame)
            }
            KindProj::Filling { fill } => fill.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Passthrough { inner } | Kind::Capturing { inner, .. } => inner.is_end_stream(),
            Kind::Filling { fill } => fill.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Passthrough { inner } | Kind::Capturing { inner, .. } => inner.size_hint(),
            Kind::Filling { fill } => fill.size_hint(),
        }
    }
}
