//! The fill: a miss's response body read by a task of its own, at the inner service's pace, so
//! that storing the entry never waits for the client to read.
//!
//! A captured body used to be copied only as the client polled it, so a client that stopped
//! reading (an HTTP/2 stream whose flow-control window never opens) held back the store, the
//! requests waiting on the miss lock (each for the whole `miss_lock_timeout`) and the bytes of
//! `max_capture_bytes` its copy had reserved. Now:
//!
//! - **The task reads the inner body** frame by frame into the capture and passes each frame to
//!   the client's [`CacheBody`](crate::CacheBody) through a channel. A frame the body has ready
//!   when the fill starts is taken at once, so that the response head and the start of its body
//!   go out together, as they would without the layer. When the inner body ends,
//!   the entry is stored, the miss lock ends and the reservation is given back, whatever the
//!   client has read by then. Frames of no bytes are not passed on: they carry nothing.
//! - **Past `max_body_bytes`** (or when `max_capture_bytes` has no room left for the copy), the
//!   capture is dropped and the task stops reading ahead: it hands the inner body itself to the
//!   client's side, which reads the rest at the client's own pace, as a response that is not
//!   captured is read. So a client that does not read makes the task hold at most
//!   `max_body_bytes` (plus the frame that went over) of unread frames, never the whole body.
//! - **Memory.** The unread frames are the inner body's own `Bytes`, handed over without a copy;
//!   the capture's copy, counted in `max_capture_bytes`, lives only until the entry is written.
//!   Once it is, all a client that never reads holds is those frames, at most `max_body_bytes`:
//!   what a hit of the same entry served to the same client holds (its whole body, shared with
//!   the stored entry's bytes).
//! - **A client that disconnects** mid-body does not stop the fill: the task reads the body to
//!   its end (at most `max_body_bytes`, after which there is no one to hand the rest to, so it
//!   is dropped) and stores it, since the requests waiting on the miss lock want it. An inner
//!   body that never ends keeps its task, as it kept the client's connection before.
//! - **A body error** drops the capture, so nothing is stored, and the error reaches the client
//!   after the frames before it.
//! - **Trailers** go through the capture (gRPC stores its `grpc-status` with them) and to the
//!   client like any frame.
//! - **With no Tokio runtime** there is nothing to spawn on: the body is captured in line, as
//!   the client polls it.
//!
//! Only captured responses are read this way; hits and responses that are not stored are
//! served as they were, with no task and no allocation.

use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::capture::Capture;
use crate::background;

/// What the task sends to the client's side.
enum Message<B: Body> {
    /// A frame of the body, or its error; `last` when the inner body said it had ended.
    Frame { frame: Result<Frame<Bytes>, B::Error>, last: bool },
    /// The rest of the body, not captured, for the client's side to read itself.
    Rest(Pin<Box<B>>),
}

/// What the client's side takes next from the task.
pub(crate) enum Next<B: Body> {
    Frame {
        frame: Result<Frame<Bytes>, B::Error>,
        last: bool,
    },
    Rest(Pin<Box<B>>),
    /// The task is done and sent everything.
    End,
}

/// The receiving end of the task's channel, seen through [`Frames`] so that
/// [`CacheBody`](crate::CacheBody) can hold it without bounding its own type parameter by
/// [`Body`] (the channel's messages name `B::Error`).
trait Frames<B>: Send + Sync {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next<B>>
    where
        B: Body;
}

impl<B: Body + Send> Frames<B> for mpsc::UnboundedReceiver<Message<B>>
where
    B::Error: Send,
{
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next<B>> {
        Poll::Ready(match ready!(self.poll_recv(cx)) {
            Some(Message::Frame { frame, last }) => Next::Frame { frame, last },
            Some(Message::Rest(rest)) => Next::Rest(rest),
            None => Next::End,
        })
    }
}

/// The client's side of a fill: the frames the task read, then, if the capture stopped before
/// the end, the rest of the inner body.
pub(crate) struct Filling<B> {
    frames: Box<dyn Frames<B>>,
    rest: Option<Pin<Box<B>>>,
    /// The inner body's size hint less the bytes passed on, so that `Content-Length` survives.
    hint: SizeHint,
    ended: bool,
}

/// Starts reading `body` into `capture` in the background; the returned side passes its
/// frames on. Call it only where [`background::available`].
pub(crate) fn spawn<B>(body: B, capture: Capture) -> Filling<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    let hint = body.size_hint();
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut body = Box::pin(body);
    // A frame the inner body has already is taken now, before the response head goes out, so
    // that the head and the start of the body leave in one write, as they do without the
    // layer. A head written alone makes the body wait for the client's ACK on a socket without
    // `TCP_NODELAY` (Nagle's algorithm), and clients delay their ACKs: 40 ms per miss on Linux.
    // The task polls the body again with its own waker.
    let state = match body.as_mut().poll_frame(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(read) => take(read, body, capture, &sender),
        Poll::Pending => Some((body, capture)),
    };
    if let Some((body, capture)) = state {
        // In the request's span, so that what the capture logs is told apart.
        background::spawn(fill(body, capture, sender).in_current_span());
    }
    Filling { frames: Box::new(receiver), rest: None, hint, ended: false }
}

/// Reads `body` to its end into `capture`, passing each frame on; a client gone away does not
/// stop it, so send failures are ignored.
async fn fill<B>(
    mut body: Pin<Box<B>>,
    mut capture: Capture,
    frames: mpsc::UnboundedSender<Message<B>>,
) where
    B: Body<Data = Bytes>,
{
    loop {
        let read = body.frame().await;
        (body, capture) = match take(read, body, capture, &frames) {
            Some(reading) => reading,
            None => return,
        };
    }
}

/// Takes one read of the inner body into `capture` and passes it on: the body and the capture
/// back to read on, or `None` once the body ended, failed or went over a limit.
fn take<B>(
    read: Option<Result<Frame<Bytes>, B::Error>>,
    body: Pin<Box<B>>,
    mut capture: Capture,
    frames: &mpsc::UnboundedSender<Message<B>>,
) -> Option<(Pin<Box<B>>, Capture)>
where
    B: Body<Data = Bytes>,
{
    let Some(frame) = read else {
        capture.finish();
        return None;
    };
    let frame = match frame {
        Ok(frame) => frame,
        Err(error) => {
            drop(capture); // an incomplete copy: nothing is stored
            let _ = frames.send(Message::Frame { frame: Err(error), last: true });
            return None;
        }
    };
    if !capture.record(&frame) {
        // Over a limit: stop reading ahead and let the client's pace set the rest's.
        drop(capture);
        let _ = frames.send(Message::Frame { frame: Ok(frame), last: false });
        let _ = frames.send(Message::Rest(body));
        return None;
    }
    // As the in-line capture does: the entry goes to the store before the last frame goes to
    // the client, and a body that says it ended is not polled again.
    if body.is_end_stream() {
        capture.finish();
        pass_on(frames, frame, true);
        return None;
    }
    pass_on(frames, frame, false);
    Some((body, capture))
}

/// Sends `frame` to the client's side, unless it is data of no bytes, which carries nothing.
fn pass_on<B: Body>(frames: &mpsc::UnboundedSender<Message<B>>, frame: Frame<Bytes>, last: bool) {
    if frame.data_ref().is_none_or(|data| !data.is_empty()) {
        let _ = frames.send(Message::Frame { frame: Ok(frame), last });
    }
}

impl<B> Filling<B> {
    /// Whether the client has had the whole body.
    pub(crate) fn is_end_stream(&self) -> bool
    where
        B: Body,
    {
        match &self.rest {
            Some(rest) => rest.is_end_stream(),
            None => self.ended,
        }
    }

    /// What is left of the body's length.
    pub(crate) fn size_hint(&self) -> SizeHint
    where
        B: Body,
    {
        match &self.rest {
            Some(rest) => rest.size_hint(),
            None => self.hint,
        }
    }

    /// The next frame: from the task, then from the rest of the body once handed over.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
    where
        B: Body<Data = Bytes>,
    {
        if let Some(rest) = &mut self.rest {
            return rest.as_mut().poll_frame(cx);
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(self.frames.poll_next(cx)) {
            Next::Frame { frame, last } => {
                if let Ok(data) = frame.as_ref().map(Frame::data_ref) {
                    self.hint = less(self.hint, data.map_or(0, Bytes::len) as u64);
                }
                self.ended = last;
                Poll::Ready(Some(frame))
            }
            Next::Rest(rest) => self.rest.insert(rest).as_mut().poll_frame(cx),
            Next::End => {
                self.ended = true;
                Poll::Ready(None)
            }
        }
    }
}

/// `hint` once `len` bytes of the body are gone.
fn less(hint: SizeHint, len: u64) -> SizeHint {
    let mut left = SizeHint::new();
    // The upper bound first: it must never fall below the lower one.
    if let Some(upper) = hint.upper() {
        left.set_upper(upper.saturating_sub(len));
    }
    left.set_lower(hint.lower().saturating_sub(len));
    left
}

impl<B> std::fmt::Debug for Filling<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filling")
            .field("handed_over", &self.rest.is_some())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
