//! The copy of a response taken while it streams to the client, and its trip to the store.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::ETAG;
use http::{HeaderMap, StatusCode};
use http_body::Frame;

use crate::conditional::strong_etag;
use crate::entry::{now_ms, Entry};
use crate::flight::FlightGuard;
use crate::freshness::Freshness;
use crate::state::Shared;
use crate::store::TagVersion;

/// What will be stored once the body is complete: everything but the body and trailers.
pub(crate) struct PendingEntry {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: String,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) freshness: Freshness,
    /// The miss lock this request leads, released once the entry is in the store.
    pub(crate) flight: Option<FlightGuard>,
    pub(crate) tags: Vec<(String, TagVersion)>,
}

/// A bounded copy of a body in flight. Dropping it (client gone, body error, over the limit)
/// stores nothing.
pub(crate) struct Capture {
    buf: BytesMut,
    limit: usize,
    trailers: Option<HeaderMap>,
    pending: PendingEntry,
}

impl Capture {
    pub(crate) fn new(pending: PendingEntry, limit: usize, expected_len: u64) -> Self {
        let capacity = usize::try_from(expected_len).unwrap_or(limit).min(limit);
        Self { buf: BytesMut::with_capacity(capacity), limit, trailers: None, pending }
    }

    /// Copies a frame; `false` once the copy would exceed the limit.
    pub(crate) fn record(&mut self, frame: &Frame<Bytes>) -> bool {
        if let Some(data) = frame.data_ref() {
            if self.buf.len() + data.len() > self.limit {
                return false;
            }
            self.buf.extend_from_slice(data);
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
        true
    }

    /// The body is complete: write the entry in the background, so that the client's last
    /// frame is not held back by the store.
    pub(crate) fn finish(self) {
        let PendingEntry { shared, key, status, mut headers, freshness, tags, flight } =
            self.pending;
        let body = self.buf.freeze();
        // A validator for conditional requests on hits, when the inner service gave none.
        if !headers.contains_key(ETAG) {
            headers.insert(ETAG, strong_etag(&body));
        }
        let trailers = self.trailers;
        // Dated from when the response was generated, so that its Age counts what it had already.
        let stored_at_ms = now_ms().saturating_sub(freshness.age.as_millis() as u64);
        let ttl = freshness.lifetime;
        let entry = Entry {
            status,
            headers,
            trailers,
            stored_at_ms,
            ttl,
            stale_while_revalidate: freshness.stale_while_revalidate,
            stale_if_error: freshness.stale_if_error,
            revalidate_for: freshness.revalidate_for,
            tags,
            body,
        };
        store_entry(shared, key, entry, freshness.keep_for(), flight);
    }
}

/// Writes `entry` in the background, so that the client's response is not held back by the
/// store, then ends the miss lock `flight` (the waiting requests now find the entry).
pub(crate) fn store_entry(
    shared: Arc<Shared>,
    key: String,
    entry: Entry,
    keep_for: Duration,
    flight: Option<FlightGuard>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::debug!("no Tokio runtime to write the entry on; not stored");
        return;
    };
    runtime.spawn(async move {
        shared.put(&key, entry.encode(), keep_for).await;
        drop(flight);
    });
}
