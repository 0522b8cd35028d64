//! The cache service and its request path, one file per step:
//! [`decide`] → lookup ([`learn`] follows markers) → [`answer`] from the store, or wait your
//! turn ([`flight`]) and call the inner service → [`capture`] its response ([`fill`],
//! [`body`]) → store. [`stale`] serves and revalidates stale entries; [`invalidate`] evicts
//! after writes. [`shared`] is the state all of them read, and the one place outcomes are
//! reported.
//!
//! A hit that the store answers from this process's memory (an in-process store, a tiered
//! store's L1) is served in `CacheService`'s `call` itself: no future is boxed, no timer set.
//! Every other request runs [`serve_cacheable`] as one boxed future.
//!
//! The shared state is made by the layer and read here (and by the gRPC front and the handle,
//! which hand work to this folder); no other folder sees it. May import every other folder:
//! `protocol` (the HTTP rules), `entry` (the stored form), `store` (through the guarded store),
//! `telemetry`, `rules`, `grpc` (message digests and status checks), `outcome`, `background`.

pub(crate) mod answer;
pub(crate) mod body;
pub(crate) mod capture;
pub(crate) mod decide;
pub(crate) mod fill;
pub(crate) mod flight;
pub(crate) mod future;
pub(crate) mod invalidate;
pub(crate) mod learn;
pub(crate) mod shared;
pub(crate) mod stale;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use self::answer::{examine, serve_fresh, serve_stale, Miss, Usable};
use self::body::CacheBody;
use self::capture::capture_if_storable;
use self::decide::{decide, Decision, Plan};
use self::flight::{take_turn, Turn};
use self::future::ResponseFuture;
use self::invalidate::{mutate, Invalidation};
use self::learn::{follow_groups_marker, follow_vary_marker, is_marker};
use self::shared::Shared;
use self::stale::{call_within, refresh_in_background, revalidated, StaleEntry};
use crate::entry::Entry;
use crate::handle::CacheHandle;
use crate::outcome::{Forwarded, Outcome};
use crate::protocol::conditional::add_validators;
use crate::store::TagVersion;
use crate::telemetry::UNMATCHED;

/// Caches the responses of the inner service `S` according to its layer's rules.
///
/// Made by [`CacheLayer`](crate::CacheLayer). Clones share the store, rules and counters.
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The layer's state, shared by its clones.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Drops the cache and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        let (mut parts, body) = request.into_parts();
        let has_body = !body.is_end_stream() && body.size_hint().exact() != Some(0);
        match decide(&shared, &parts, has_body, started) {
            Decision::Bypass { route, reason } => {
                hand_over(&shared, &mut parts);
                let future = self.take_inner().call(Request::from_parts(parts, body));
                ResponseFuture::bypass(future, shared, reason, route, started)
            }
            Decision::Mutation { route, evicts, uri, authority } => {
                let span = request_span(route.as_deref().unwrap_or(UNMATCHED), None);
                hand_over(&shared, &mut parts);
                let request = Request::from_parts(parts, body);
                let invalidation = Invalidation { route, started, evicts, uri, authority };
                let inner = self.take_inner();
                ResponseFuture::boxed(mutate(shared, inner, request, invalidation).instrument(span))
            }
            Decision::Lookup(plan) => {
                let span = request_span(&plan.rule.pattern, Some(&plan.key));
                // The fast lane: a fresh entry in this process's memory is served right here,
                // with no future to box and no timer, and the inner service is left alone
                // unless the hit refreshes the entry.
                let now = shared.now_ms();
                let early = match look_up_in_process(&shared, &plan, now) {
                    Some(Ok((Usable::Fresh(entry), versions))) => {
                        let _entered = span.enter();
                        let request = Request::from_parts(parts, body);
                        let inner = || self.take_inner();
                        let hit = serve_hit(shared, inner, request, plan, entry, versions, now);
                        return ResponseFuture::ready(hit);
                    }
                    early => early,
                };
                hand_over(&shared, &mut parts);
                let request = Request::from_parts(parts, body);
                let inner = self.take_inner();
                ResponseFuture::boxed(
                    serve_cacheable(shared, inner, request, plan, early).instrument(span),
                )
            }
        }
    }
}

/// Hands the inner service the cache's handle, in the request's extensions, so that a handler
/// can evict without a handle of its own (an axum handler takes it as an extractor, feature
/// `axum`). Hits never reach the inner service, so they skip it.
fn hand_over(shared: &Arc<Shared>, request: &mut http::request::Parts) {
    request.extensions.insert(CacheHandle::new(Arc::clone(shared)));
}

impl<S: Clone> CacheService<S> {
    /// The inner service for one call: the instance that was polled ready, with a clone taking
    /// its place (tower#547).
    fn take_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// The span a cacheable request or a write runs in: its route pattern and the end of its entry
/// key's digest, never anything of the request itself; `outcome` is recorded when known.
fn request_span(route: &str, key: Option<&str>) -> tracing::Span {
    let key = key.map(|key| &key[key.len().saturating_sub(16)..]);
    tracing::debug_span!("cache", route, key, outcome = tracing::field::Empty)
}

/// What a lookup found, examined: an entry the request may use with its tags' current
/// versions, or why it missed.
type Examined = Result<(Usable, Vec<TagVersion>), Miss>;

/// Lookup: the entry and its tags' current versions, in one round trip, following the markers
/// that say the key is another (learned `Vary`, cache groups). `None` when the store failed.
/// The versions are read before the inner service runs, which is what makes a later eviction
/// win over a miss.
async fn look_up(
    shared: &Shared,
    plan: &mut Plan,
    request: &HeaderMap,
    now: u64,
) -> Option<Examined> {
    let found = shared.store.lookup(&plan.key, &plan.tag_keys).await?;
    let found = follow_vary_marker(shared, plan, request, found).await?;
    let found = follow_groups_marker(shared, plan, found).await?;
    Some(examine(shared, plan, found, now))
}

/// The same lookup, when the store can answer it from this process's memory at once (see
/// [`Store::lookup_in_process`](crate::Store::lookup_in_process)) and finds no marker.
fn look_up_in_process(shared: &Shared, plan: &Plan, now: u64) -> Option<Examined> {
    let found = shared.store.lookup_in_process(&plan.key, &plan.tag_keys)?;
    if found.entry.as_deref().is_some_and(is_marker) {
        return None;
    }
    Some(examine(shared, plan, found, now))
}

/// Serves a fresh entry (a hit). When the hit expires it early (see
/// [`Shared::refreshes_early`]), `request` also refreshes it in the background, with the inner
/// service that `inner` gives.
fn serve_hit<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: impl FnOnce() -> S,
    request: Request<ReqBody>,
    plan: Plan,
    entry: Entry,
    versions: Vec<TagVersion>,
    now: u64,
) -> Response<CacheBody<ResBody>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    // A `HEAD`'s response stores nothing, and nor does a range's, so they refresh nothing.
    let refresh = !plan.head && plan.range.is_none() && shared.refreshes_early(&entry, now);
    let stored_at = entry.stored_at_ms;
    let hit = serve_fresh(&shared, &plan, entry, now, None);
    if refresh {
        refresh_in_background(shared, inner(), request, plan, versions, stored_at);
    }
    hit
}

/// A cacheable read: lookup (unless `early` did it) → serve the hit, or call inner and capture
/// its response.
async fn serve_cacheable<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    mut request: Request<ReqBody>,
    mut plan: Plan,
    early: Option<Examined>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    let now = shared.now_ms();
    let examined = match early {
        Some(examined) => Some(examined),
        None => look_up(&shared, &mut plan, request.headers(), now).await,
    };
    // A range is served from a fresh entry only; otherwise the inner service answers it, and
    // its answer (a part, most likely) is not stored.
    if plan.range.is_some() && !matches!(examined, Some(Ok((Usable::Fresh(_), _)))) {
        let fwd = match &examined {
            Some(Err(miss)) => miss.fwd,
            Some(Ok(_)) => Forwarded::Stale,
            None => Forwarded::Error,
        };
        let response = inner.call(request).await?.map(CacheBody::passthrough);
        return Ok(shared.mark(response, Outcome::Miss { fwd, stored: None }, &plan, None));
    }
    let mut stale = None;
    let (versions, fwd) = match examined {
        // The store failed: serve from the inner service and store nothing.
        None => (None, Forwarded::Error),
        Some(Ok((Usable::Fresh(entry), versions))) => {
            return Ok(serve_hit(shared, || inner, request, plan, entry, versions, now));
        }
        Some(Ok((Usable::Stale { entry, staleness, stored }, versions))) => {
            if staleness < entry.stale_while_revalidate {
                // Serve it now; this request refreshes it in the background, unless it is a
                // `HEAD`, whose response would store nothing.
                let stored_at = entry.stored_at_ms;
                let stale = serve_stale(&shared, &plan, entry, staleness, "stale-while-revalidate");
                if !plan.head {
                    refresh_in_background(shared, inner, request, plan, versions, stored_at);
                }
                return Ok(stale);
            }
            // Ask the inner service whether it changed, when the entry can tell it what it
            // has (the stored validators, not those of this client's copy); the client's own
            // conditions, if any, go through untouched.
            let revalidating = staleness < entry.revalidate_for
                && plan.conditions.is_none()
                && !plan.head
                && add_validators(request.headers_mut(), &stored.entry.headers);
            stale = Some(StaleEntry { entry, staleness, revalidating, stored });
            (Some(versions), Forwarded::Stale)
        }
        Some(Err(Miss { versions: Some(versions), fwd })) => (Some(versions), fwd),
        // HEAD responses are never stored, so they need no versions.
        Some(Err(Miss { versions: None, fwd })) if plan.head => (None, fwd),
        // First use of a tag (or its version was lost): give it one, provisional until the
        // entry is stored.
        Some(Err(Miss { versions: None, fwd })) => {
            plan.provisional_versions = true;
            (shared.store.ensure_tag_versions(&plan.tag_keys).await, fwd)
        }
    };
    // Stampede protection: one request per key fills the entry; the others wait for it.
    let mut flight = None;
    if let (Some(_), false, Some(timeout)) =
        (&versions, plan.head, shared.settings.miss_lock_timeout)
    {
        match take_turn(&shared, &plan, timeout, fwd).await {
            Turn::Hit(hit) => return Ok(hit),
            Turn::Call(leader) => flight = leader,
        }
    }
    // The values of the headers a response may turn out to vary on.
    let request_headers = request.headers().clone();
    let response = match stale {
        None => inner.call(request).await?,
        Some(stale) => {
            let fallback = stale.staleness < stale.entry.stale_if_error;
            let result = match fallback {
                true => call_within(&shared, &mut inner, request).await,
                false => Some(inner.call(request).await),
            };
            match result {
                Some(Ok(response))
                    if stale.revalidating && response.status() == StatusCode::NOT_MODIFIED =>
                {
                    let versions = versions.unwrap_or_default();
                    return Ok(revalidated(
                        &shared,
                        &plan,
                        stale,
                        response.headers(),
                        versions,
                        flight,
                    ));
                }
                Some(Ok(response)) if !(fallback && response.status().is_server_error()) => {
                    response
                }
                Some(Err(error)) if !fallback => return Err(error),
                // An error, a 5xx or no answer in time: the stale entry is better than that.
                _ => {
                    let (entry, staleness) = (stale.entry, stale.staleness);
                    return Ok(serve_stale(&shared, &plan, entry, staleness, "stale-if-error"));
                }
            }
        }
    };
    let (response, stored) = match versions {
        Some(versions) => {
            capture_if_storable(&shared, &plan, &request_headers, versions, response, flight)
        }
        None => (response.map(CacheBody::passthrough), None),
    };
    Ok(shared.mark(response, Outcome::Miss { fwd, stored }, &plan, None))
}
