//! Stale entries (RFC 5861, RFC 9111 section 4.3): served while refreshed in the background,
//! served instead of errors, revalidated with the inner service's validators.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use super::answer::{examine, respond_from_entry, Usable};
use super::body::CacheBody;
use super::capture::{capture_in_line, store_entry, AfterStore};
use super::decide::Plan;
use super::flight::{FlightGuard, Flights, Role};
use super::shared::Shared;
use crate::background;
use crate::entry::compression::for_client;
use crate::entry::decoded::Decoded;
use crate::entry::key::lease_key;
use crate::entry::Entry;
use crate::handle::CacheHandle;
use crate::outcome::Outcome;
use crate::protocol::storable::storable;
use crate::store::TagVersion;

/// A stale entry kept through the inner call: what a `304` refreshes, and the answer if the
/// call fails within its `stale-if-error` window.
pub(crate) struct StaleEntry {
    /// This client's copy of the entry (see [`Decoded::for_client`]).
    pub(crate) entry: Entry,
    pub(crate) staleness: Duration,
    /// The request was made conditional with the entry's validators.
    pub(crate) revalidating: bool,
    /// The entry as stored, which a revalidation stores again.
    pub(crate) stored: Arc<Decoded>,
}

/// The inner service said `304 Not Modified` to a revalidation: the stale entry is good again.
/// Its headers are updated from the `304` (RFC 9111 section 4.3.4), its freshness computed
/// anew, and it is stored again without its body having crossed the wire.
///
/// What is stored again is the stored form (its body compressed or not as it was, its own
/// validators); the client gets its copy of the result, as a hit would.
pub(crate) fn revalidated<B>(
    shared: &Arc<Shared>,
    plan: &Plan,
    stale: StaleEntry,
    not_modified: &HeaderMap,
    versions: Vec<TagVersion>,
    flight: Option<FlightGuard>,
) -> Response<CacheBody<B>> {
    let stored = stale.stored.entry.clone();
    let mut headers = stored.headers;
    // What describes the stored body's bytes stays the stored body's: a `304` has no body,
    // and one that names an encoding or a range speaks of bytes the cache does not have.
    let kept = [CONTENT_LENGTH, CONTENT_ENCODING, CONTENT_RANGE];
    for name in not_modified.keys() {
        if kept.contains(name) || Some(name) == shared.settings.status.x_cache.as_ref() {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = stored.status;
    parts.headers = headers;
    let now = shared.now_ms();
    let freshness = storable(&parts, &plan.rule, plan.entry_for(), shared.now())
        .map(|f| f.jittered(shared.settings.ttl_jitter));
    let entry = Entry {
        status: stored.status,
        headers: parts.headers,
        stored_at_ms: now.saturating_sub(freshness.map_or(0, |f| f.age.as_millis() as u64)),
        ttl: freshness.map_or(Duration::ZERO, |f| f.lifetime),
        stale_while_revalidate: freshness.map_or(Duration::ZERO, |f| f.stale_while_revalidate),
        stale_if_error: freshness.map_or(Duration::ZERO, |f| f.stale_if_error),
        revalidate_for: freshness.map_or(Duration::ZERO, |f| f.revalidate_for),
        tags: plan.tags.iter().cloned().zip(versions).collect(),
        ..stored
    };
    let ttl = freshness.ok().map(|f| f.remaining());
    if let Ok(freshness) = freshness {
        store_entry(
            Arc::clone(shared),
            Arc::clone(&plan.rule.pattern),
            plan.key.clone(),
            entry.clone(),
            freshness.keep_for(),
            AfterStore { provisional: Vec::new(), flight, reservation: None },
        );
    }
    // This client's copy, made as a hit makes it; the stale copy if the body no longer
    // decompresses.
    let served = for_client(entry, plan.accepts_zstd, shared.settings.max_body_bytes);
    respond_from_entry(
        shared,
        plan,
        served.unwrap_or(stale.entry),
        now,
        Outcome::Revalidated { ttl },
    )
}

/// Calls the inner service, giving up after the layer's `stale_if_error_timeout` if it has one.
pub(crate) async fn call_within<S, ReqBody, ResBody>(
    shared: &Shared,
    inner: &mut S,
    request: Request<ReqBody>,
) -> Option<Result<Response<ResBody>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    match shared.settings.stale_if_error_timeout {
        Some(timeout) => tokio::time::timeout(timeout, inner.call(request)).await.ok(),
        None => Some(inner.call(request).await),
    }
}

/// Refreshes an entry (stale, or fresh and refreshed ahead of its expiry) in the background with
/// the request that found it, unless another request (in this process, or in another instance
/// holding the store lease) already is. `found_stored_at` is when the entry it found was stored.
pub(crate) fn refresh_in_background<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    mut request: Request<ReqBody>,
    plan: Plan,
    versions: Vec<TagVersion>,
    found_stored_at: u64,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let Role::Leader(mut flight) = Flights::join(&shared, &plan.key) else { return };
    // A hit's request did not get the handle on its way in (see `hand_over`).
    request.extensions_mut().insert(CacheHandle::new(Arc::clone(&shared)));
    background::spawn(async move {
        let lease = lease_key(&plan.key);
        let lease_time = shared.settings.miss_lock_timeout.unwrap_or(Duration::from_secs(5));
        // The lease, and a look at the entry once it is held, in one round trip.
        let taken = shared
            .store
            .acquire_lease_then_lookup(&lease, lease_time, &plan.key, &plan.tag_keys)
            .await;
        match taken {
            Some((false, _)) => return, // another instance refreshes it
            Some((true, found)) => {
                flight.hold_lease(lease);
                // A refresh that ran between our lookup and our lease has done the work already:
                // the entry is fresh, and another than the one this request found.
                let now = shared.now_ms();
                if let Ok((Usable::Fresh(entry), _)) = examine(&shared, &plan, found, now) {
                    if entry.stored_at_ms != found_stored_at {
                        return;
                    }
                }
            }
            // The store failed: refresh without a lease.
            None => {}
        }
        let request_headers = request.headers().clone();
        let Ok(response) = inner.call(request).await else { return };
        let (response, _) =
            capture_in_line(&shared, &plan, &request_headers, versions, response, Some(flight));
        // Reading the body to its end is what stores it.
        let _ = response.into_body().collect().await;
    });
}
