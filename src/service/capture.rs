//! The copy of a response taken while it streams to the client, and its trip to the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::ETAG;
use http::Response;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame};

use super::body::CacheBody;
use super::decide::Plan;
use super::flight::FlightGuard;
use super::learn::{learn_groups, learn_vary};
use super::shared::Shared;
use crate::background;
use crate::entry::compression::compress;
use crate::entry::key::{index_key, is_uri_tag};
use crate::entry::Entry;
use crate::grpc;
use crate::protocol::conditional::strong_etag;
use crate::protocol::freshness::Freshness;
use crate::protocol::storable::{storable, stored_headers};
use crate::protocol::{groups, vary};
use crate::store::TagVersion;

/// What will be stored once the body is complete: everything but the body and trailers.
struct PendingEntry {
    shared: Arc<Shared>,
    /// The rule's pattern, for the metrics.
    route: Arc<str>,
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    freshness: Freshness,
    /// The miss lock this request leads, released once the entry is in the store.
    flight: Option<FlightGuard>,
    tags: Vec<(String, TagVersion)>,
    /// The store keys of tag versions made for this miss, to keep once the entry is stored.
    provisional: Vec<String>,
    /// A gRPC call's response, stored only if it turns out to be one successful message.
    grpc: bool,
    /// When the layer was called with the request, for how long making the response took.
    started: Instant,
}

/// A bounded copy of a body in flight. Dropping it (body error, over a limit, or the client gone
/// from a body captured in line) stores nothing.
pub(crate) struct Capture {
    buf: BytesMut,
    limit: usize,
    /// The bytes of the layer's `max_capture_bytes` this copy holds.
    reservation: Reservation,
    trailers: Option<HeaderMap>,
    pending: PendingEntry,
}

impl Capture {
    /// A capture, if the layer's budget for copies in flight has room for `expected_len`.
    fn new(pending: PendingEntry, limit: usize, expected_len: u64) -> Option<Self> {
        let capacity = usize::try_from(expected_len).unwrap_or(limit).min(limit);
        let reservation = Reservation::new(&pending.shared, capacity)?;
        let buf = BytesMut::with_capacity(capacity);
        Some(Self { buf, limit, reservation, trailers: None, pending })
    }

    /// Copies a frame; `false` once the copy would exceed the body limit or the layer's budget.
    pub(crate) fn record(&mut self, frame: &Frame<Bytes>) -> bool {
        if let Some(data) = frame.data_ref() {
            let len = self.buf.len() + data.len();
            if len > self.limit || !self.reservation.grow_to(len) {
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
        let PendingEntry {
            shared,
            route,
            key,
            status,
            mut headers,
            freshness,
            tags,
            provisional,
            flight,
            grpc,
            started,
        } = self.pending;
        let body = self.buf.freeze();
        let trailers = self.trailers;
        if grpc && !grpc::completed_ok(&headers, &body, trailers.as_ref()) {
            tracing::debug!(
                route = &*route,
                "gRPC response not stored: not one message and status 0"
            );
            return;
        }
        // A validator for conditional requests on hits, when the inner service gave none.
        if !headers.contains_key(ETAG) {
            headers.insert(ETAG, strong_etag(&body));
        }
        // Dated from when the response was generated, so that its Age counts what it had already.
        let stored_at_ms = shared.now_ms().saturating_sub(freshness.age.as_millis() as u64);
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
            computed_in: started.elapsed(),
            tags,
            identity_len: None,
            body,
        };
        let keep_for = freshness.keep_for();
        let after = AfterStore { provisional, flight, reservation: Some(self.reservation) };
        store_entry(shared, route, key, entry, keep_for, after);
    }
}

/// Bytes counted against the layer's `max_capture_bytes` until dropped.
pub(crate) struct Reservation {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Reservation {
    fn new(shared: &Arc<Shared>, bytes: usize) -> Option<Self> {
        shared.reserve_capture(bytes).then(|| Self { shared: Arc::clone(shared), bytes })
    }

    /// Holds `bytes` in all, if the budget has room.
    fn grow_to(&mut self, bytes: usize) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        if !self.shared.reserve_capture(more) {
            return false;
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.release_capture(self.bytes);
    }
}

/// What is settled once an entry is written (or failed to be).
pub(crate) struct AfterStore {
    /// The store keys of tag versions made for the miss, kept once the entry is in the store
    /// (see [`Store::keep_tag_versions`](crate::Store::keep_tag_versions)).
    pub(crate) provisional: Vec<String>,
    /// The miss lock the request leads: ending it lets the waiting requests find the entry.
    pub(crate) flight: Option<FlightGuard>,
    /// The bytes of `max_capture_bytes` the body was counted under.
    pub(crate) reservation: Option<Reservation>,
}

/// Writes `entry` in the background, so that the client's response is not held back by the
/// store, then keeps the provisional tag versions it carries, ends the miss lock and gives back
/// the reservation its body was counted under.
pub(crate) fn store_entry(
    shared: Arc<Shared>,
    route: Arc<str>,
    key: String,
    entry: Entry,
    keep_for: Duration,
    after: AfterStore,
) {
    let write = async move {
        let mut entry = entry;
        if let Some(threshold) = shared.settings.compress_above {
            compress(&mut entry, threshold);
        }
        // Indexed under its path, for `CacheHandle::inspect`.
        let index = entry.tags.iter().find(|(tag, _)| is_uri_tag(tag));
        let index = index.map(|(uri_tag, _)| index_key(&shared.settings.key_prefix, uri_tag));
        let value = entry.encode();
        let bytes = value.len();
        if shared.store.put(&key, value, keep_for).await {
            shared.telemetry.stored(&route, bytes);
            if let Some(index) = index {
                shared.store.add_to_index(&index, &key, keep_for).await;
            }
            if !after.provisional.is_empty() {
                shared.store.keep_tag_versions(&after.provisional).await;
            }
        }
        drop((after.flight, after.reservation));
    };
    if !background::spawn(write) {
        tracing::debug!("no Tokio runtime to write the entry on; not stored");
    }
}

/// Captures the body when the response may be stored, reading it in a task of its own so that
/// the store does not wait for the client (see [`fill`](crate::service::fill)); says for how long the
/// entry will be fresh.
pub(crate) fn capture_if_storable<B>(
    shared: &Arc<Shared>,
    plan: &Plan,
    request: &HeaderMap,
    versions: Vec<TagVersion>,
    response: Response<B>,
    flight: Option<FlightGuard>,
) -> (Response<CacheBody<B>>, Option<Duration>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    capture_with(shared, plan, request, versions, response, flight, CacheBody::filling)
}

/// As [`capture_if_storable`], for a caller that reads the whole body itself at once (a
/// background refresh, a benchmark): the copy is taken as the body is polled, with no task.
pub(crate) fn capture_in_line<B: Body<Data = Bytes>>(
    shared: &Arc<Shared>,
    plan: &Plan,
    request: &HeaderMap,
    versions: Vec<TagVersion>,
    response: Response<B>,
    flight: Option<FlightGuard>,
) -> (Response<CacheBody<B>>, Option<Duration>) {
    capture_with(shared, plan, request, versions, response, flight, CacheBody::capturing)
}

/// Wraps the body with `read` and a capture when the response may be stored, else passes it
/// through; says for how long the entry will be fresh.
fn capture_with<B: Body<Data = Bytes>>(
    shared: &Arc<Shared>,
    plan: &Plan,
    request: &HeaderMap,
    versions: Vec<TagVersion>,
    response: Response<B>,
    flight: Option<FlightGuard>,
    read: fn(B, Capture) -> CacheBody<B>,
) -> (Response<CacheBody<B>>, Option<Duration>) {
    let (parts, body) = response.into_parts();
    let settings = &shared.settings;
    let checked = match plan.head {
        true => Err("HEAD responses have no body to store"),
        false => storable(&parts, &plan.rule, plan.entry_for(), shared.now()),
    };
    let checked = checked.and_then(|freshness| {
        // A known length over the limit: do not even start a copy.
        if body.size_hint().lower() > settings.max_body_bytes as u64 {
            return Err("body over max_body_bytes");
        }
        let extra = vary::beyond(&parts.headers, &plan.vary).ok_or("unreadable Vary")?;
        Ok((freshness.jittered(settings.ttl_jitter), extra))
    });
    let checked = checked.and_then(|(freshness, extra)| {
        let groups = groups::of_response(&parts.headers, settings.surrogate_keys);
        let new: Vec<String> = groups.into_iter().filter(|g| !plan.tags.contains(g)).collect();
        if new.is_empty() {
            return Ok((freshness, extra));
        }
        // Their versions were not read before the response was computed: learn them, and
        // store from the next request on.
        learn_groups(shared, plan, new, freshness.keep_for());
        Err("new cache groups")
    });
    let (freshness, key) = match checked {
        Ok((freshness, extra)) if extra.is_empty() => (freshness, plan.key.clone()),
        // The response varies on headers the key did not cover yet: learn them.
        Ok((freshness, extra)) => {
            let vary = learn_vary(shared, plan, &extra, freshness.keep_for());
            (freshness, plan.key_parts.key(&settings.key_prefix, request, &vary))
        }
        Err(reason) => {
            tracing::debug!(route = &*plan.rule.pattern, reason, "response not stored");
            return (Response::from_parts(parts, CacheBody::passthrough(body)), None);
        }
    };
    // Dropping the flight lets the waiting misses go (see `release_miss_lock_on_head`).
    let flight = flight.filter(|_| !settings.release_miss_lock_on_head);
    let pending = PendingEntry {
        shared: Arc::clone(shared),
        route: Arc::clone(&plan.rule.pattern),
        headers: stored_headers(&parts.headers, settings.status.x_cache.as_ref()),
        status: parts.status,
        freshness,
        flight,
        tags: plan.tags.iter().cloned().zip(versions).collect(),
        provisional: match plan.provisional_versions {
            true => plan.tag_keys.to_vec(),
            false => Vec::new(),
        },
        key,
        grpc: plan.rule.grpc,
        started: plan.started,
    };
    let Some(capture) = Capture::new(pending, settings.max_body_bytes, body.size_hint().lower())
    else {
        tracing::debug!(route = &*plan.rule.pattern, "max_capture_bytes reached; not stored");
        return (Response::from_parts(parts, CacheBody::passthrough(body)), None);
    };
    (Response::from_parts(parts, read(body, capture)), Some(freshness.remaining()))
}
