//! gRPC's framing, as far as the cache needs it: reading a call's one request message, and
//! telling a complete, successful unary response from the rest.
//!
//! A gRPC stream is a run of length-prefixed messages: a compressed flag byte, the message's
//! length (four bytes, big-endian), then the message. The call's result is its `grpc-status`,
//! in the trailers, or in the headers of a response that has no body ("trailers-only").

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::RequestBody;

/// The digest of a unary call's request message. [`GrpcCacheService`](super::GrpcCacheService)
/// puts it in the request's extensions, where the cache finds it; nothing else can make one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageDigest(pub(crate) [u8; 32]);

/// The compressed flag and the length that precede every message.
const PREFIX_LEN: usize = 5;

/// How long a request stream may stay open after its first message before the call is taken
/// for a streaming one and handed on. A unary client ends its stream with its message.
const END_OF_STREAM_WAIT: Duration = Duration::from_secs(1);

/// Reads the request stream of a call: when it is exactly one message of at most `limit` bytes
/// (prefix included), the digest of that message. Either way, a body that replays what was
/// read, followed by whatever the stream still holds.
pub(crate) async fn read_message<B>(
    mut body: B,
    limit: usize,
) -> (RequestBody<B>, Option<MessageDigest>)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut read = BytesMut::new();
    // The length of the first message with its prefix, once the prefix is in.
    let mut message_len = None;
    loop {
        let frame = if message_len == Some(read.len()) {
            // One whole message: a unary call's stream ends here.
            if body.is_end_stream() {
                break;
            }
            match tokio::time::timeout(END_OF_STREAM_WAIT, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    tracing::debug!("request stream still open after its first message");
                    return (RequestBody::resumed(replay(read, None), Some(body)), None);
                }
            }
        } else {
            body.frame().await
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return (RequestBody::failed(replay(read, None), error), None),
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            // Request trailers: no unary call's.
            Err(frame) => {
                return (RequestBody::resumed(replay(read, Some(frame)), Some(body)), None)
            }
        };
        read.extend_from_slice(&data);
        if message_len.is_none() && read.len() >= PREFIX_LEN {
            let len = u32::from_be_bytes([read[1], read[2], read[3], read[4]]);
            message_len = Some(PREFIX_LEN.saturating_add(len as usize));
        }
        let second_message = message_len.is_some_and(|len| read.len() > len);
        let over_limit = read.len() > limit || message_len.is_some_and(|len| len > limit);
        if second_message || over_limit {
            // A stream, or more than the cache reads: hand the call on as it is.
            return (RequestBody::resumed(replay(read, None), Some(body)), None);
        }
    }
    // The stream ended: with exactly one message, or cut short (the server will say so).
    let digest =
        (message_len == Some(read.len())).then(|| MessageDigest(*blake3::hash(&read).as_bytes()));
    (RequestBody::resumed(replay(read, None), None), digest)
}

/// The frames to replay: the bytes read, then `last`.
fn replay(read: BytesMut, last: Option<Frame<Bytes>>) -> VecDeque<Frame<Bytes>> {
    let data = (!read.is_empty()).then(|| Frame::data(read.freeze()));
    data.into_iter().chain(last).collect()
}

/// What a response's headers say about the call, before its body: `false` when they carry a
/// `grpc-status` other than `0` (a trailers-only error).
pub(crate) fn status_ok_so_far(headers: &HeaderMap) -> bool {
    headers.get(GRPC_STATUS).is_none_or(|status| status == "0")
}

/// Whether a whole response is one unary call's success: one message, then `grpc-status: 0`
/// in the trailers, or in the headers when there are no trailers.
pub(crate) fn completed_ok(headers: &HeaderMap, body: &[u8], trailers: Option<&HeaderMap>) -> bool {
    let status = trailers.and_then(|t| t.get(GRPC_STATUS)).or_else(|| headers.get(GRPC_STATUS));
    status.is_some_and(|status| status == "0") && is_one_message(body)
}

const GRPC_STATUS: &str = "grpc-status";

/// Whether `body` is exactly one length-prefixed message.
fn is_one_message(body: &[u8]) -> bool {
    match body {
        [_, a, b, c, d, message @ ..] => {
            u32::from_be_bytes([*a, *b, *c, *d]) as usize == message.len()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(payload);
        framed
    }

    /// A body that yields `chunks` one frame each.
    fn chunked(chunks: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames: Vec<_> = chunks.into_iter().map(|c| Ok(Frame::data(Bytes::from(c)))).collect();
        StreamBody::new(tokio_stream::iter(frames))
    }

    async fn replayed<B: Body<Data = Bytes> + Unpin>(body: RequestBody<B>) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn one_message_in_any_number_of_frames_has_a_digest_and_is_replayed_whole() {
        let framed = message(b"hello, cache");
        let (whole, digest) = read_message(chunked(vec![framed.clone()]), 1024).await;
        let digest = digest.expect("one message");
        assert_eq!(replayed(whole).await, framed);
        let pieces = vec![framed[..2].to_vec(), framed[2..7].to_vec(), framed[7..].to_vec()];
        let (split, again) = read_message(chunked(pieces), 1024).await;
        assert_eq!(again.expect("one message").0, digest.0, "framing by frames does not count");
        assert_eq!(replayed(split).await, framed);
        let (_, other) = read_message(chunked(vec![message(b"hello, cachf")]), 1024).await;
        assert_ne!(other.unwrap().0, digest.0);
        // The empty message is a message too.
        assert!(read_message(chunked(vec![message(b"")]), 1024).await.1.is_some());
    }

    #[tokio::test]
    async fn streams_that_are_not_one_whole_message_have_no_digest_and_are_replayed_whole() {
        let two = [message(b"one"), message(b"two")].concat();
        let cut_short = message(b"hello")[..7].to_vec();
        let long = message(&[7; 100]);
        for (stream, limit) in [
            (vec![two.clone()], 1024),
            (vec![message(b"one"), message(b"two")], 1024),
            (vec![cut_short.clone()], 1024),
            (vec![b"\0\0".to_vec()], 1024),
            (vec![], 1024),
            (vec![long.clone()], 104),
            (vec![long[..50].to_vec(), long[50..].to_vec()], 60),
        ] {
            let whole = stream.concat();
            let (body, digest) = read_message(chunked(stream), limit).await;
            assert!(digest.is_none(), "{whole:?} under {limit}");
            assert_eq!(replayed(body).await, whole);
        }
        assert!(read_message(chunked(vec![long]), 105).await.1.is_some(), "exactly at the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_left_open_after_its_first_message_is_handed_on_after_a_second() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let framed = message(b"first");
        sender.send(Ok(Frame::data(Bytes::from(framed.clone())))).await.unwrap();
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let started = tokio::time::Instant::now();
        let (body, digest) = read_message(body, 1024).await;
        assert!(digest.is_none());
        assert_eq!(started.elapsed(), END_OF_STREAM_WAIT);
        // The rest of the stream still comes through.
        sender.send(Ok(Frame::data(Bytes::from(message(b"second"))))).await.unwrap();
        drop(sender);
        assert_eq!(replayed(body).await, [framed, message(b"second")].concat());
    }

    /// Request streams: any bytes, one message, one message and more, one message cut short.
    fn stream() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let bytes = || proptest::collection::vec(any::<u8>(), 0..30);
        prop_oneof![
            bytes(),
            bytes().prop_map(|payload| message(&payload)),
            (bytes(), bytes()).prop_map(|(payload, more)| [message(&payload), more].concat()),
            (bytes(), 0usize..34).prop_map(|(payload, cut)| {
                let framed = message(&payload);
                framed[..cut.min(framed.len())].to_vec()
            }),
        ]
    }

    proptest::proptest! {
        /// Whatever a client sends, in whatever frames: the server gets the same bytes, and a
        /// digest exists exactly when they are one whole message within the limit.
        #[test]
        fn any_stream_is_replayed_whole_and_digested_only_when_it_is_one_message(
            stream in stream(),
            cuts in proptest::collection::vec(0usize..40, 0..4),
            limit in 0usize..48,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < stream.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let chunks = [0].iter().chain(&cuts).zip(cuts.iter().chain([&stream.len()]))
                .map(|(&from, &to)| stream[from..to].to_vec())
                .collect();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let (body, digest) = runtime.block_on(read_message(chunked(chunks), limit));
            proptest::prop_assert_eq!(runtime.block_on(replayed(body)), stream.clone());
            let one_message = stream.len() <= limit && is_one_message(&stream);
            proptest::prop_assert_eq!(digest.is_some(), one_message);
        }
    }

    #[test]
    fn only_one_message_with_status_zero_is_a_success() {
        let ok: HeaderMap = [(http::HeaderName::from_static(GRPC_STATUS), "0".parse().unwrap())]
            .into_iter()
            .collect();
        let failed: HeaderMap =
            [(http::HeaderName::from_static(GRPC_STATUS), "5".parse().unwrap())]
                .into_iter()
                .collect();
        let none = HeaderMap::new();
        let one = message(b"user");
        assert!(completed_ok(&none, &one, Some(&ok)));
        assert!(completed_ok(&ok, &one, None), "status in the headers");
        assert!(!completed_ok(&none, &one, Some(&failed)));
        assert!(!completed_ok(&ok, &one, Some(&failed)), "the trailers have the last word");
        assert!(!completed_ok(&none, &one, None), "no status at all");
        assert!(!completed_ok(&none, &[one.clone(), one.clone()].concat(), Some(&ok)), "a stream");
        assert!(!completed_ok(&none, &one[..6], Some(&ok)), "cut short");
        assert!(!completed_ok(&ok, b"", None), "trailers-only, with no message");
        assert!(status_ok_so_far(&none) && status_ok_so_far(&ok) && !status_ok_so_far(&failed));
    }
}
