//! The cache service and its request path:
//! lookup → decide → serve or call inner → capture → store.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AGE, CONTENT_LENGTH, CONTENT_LOCATION, LOCATION};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use crate::body::CacheBody;
use crate::capture::{store_entry, Capture, PendingEntry};
use crate::conditional::{add_validators, not_modified_headers};
use crate::entry::{now_ms, Entry};
use crate::flight::{self, FlightGuard, Flights, Role};
use crate::future::ResponseFuture;
use crate::key::uri_tag;
use crate::policy::{decide, storable, stored_headers, Decision, Plan};
use crate::state::Shared;
use crate::stats::Counters;
use crate::status::{Forwarded, Outcome};
use crate::store::{Lookup, TagVersion};

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
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Keep the instance that was polled ready; the clone takes its place (tower#547).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let (parts, body) = request.into_parts();
        match decide(&shared, &parts) {
            Decision::Bypass => {
                Counters::add(&shared.counters.bypasses, 1);
                ResponseFuture::bypass(inner.call(Request::from_parts(parts, body)), shared)
            }
            Decision::Mutation { evicts, uri, authority } => {
                Counters::add(&shared.counters.bypasses, 1);
                let request = Request::from_parts(parts, body);
                let invalidation = Invalidation { evicts, uri, authority };
                ResponseFuture::boxed(mutate(shared, inner, request, invalidation))
            }
            Decision::Lookup(plan) => ResponseFuture::boxed(serve_cacheable(
                shared,
                inner,
                Request::from_parts(parts, body),
                plan,
            )),
        }
    }
}

/// What a write invalidates, as decided before the inner service runs.
struct Invalidation {
    /// The mutation rule's tags, evicted when the write succeeds (2xx).
    evicts: Vec<String>,
    /// The target path's URI tag, when reads of it are cached.
    uri: Option<String>,
    /// The request's authority, to tell same-host `Location` headers.
    authority: String,
}

/// A write: call the inner service, then evict what it invalidated before the client hears
/// back, so that no read the client starts afterwards sees an entry from before its write.
async fn mutate<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Request<ReqBody>,
    invalidation: Invalidation,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let response = inner.call(request).await?;
    let status = response.status();
    let mut tags = Vec::new();
    if status.is_success() {
        tags.extend(invalidation.evicts);
    }
    // RFC 9111 section 4.4: a non-error response invalidates the target URI and the same-host
    // URIs in Location and Content-Location.
    if shared.settings.invalidate_unsafe && (status.is_success() || status.is_redirection()) {
        tags.extend(invalidation.uri);
        for name in [LOCATION, CONTENT_LOCATION] {
            let target = response
                .headers()
                .get(name)
                .and_then(|v| same_host_path(v, &invalidation.authority));
            if let Some(path) = target.filter(|path| shared.routes.caches_reads(path)) {
                tags.push(uri_tag(&path));
            }
        }
    }
    // A failure is logged, counted and retried in the background; the write stands.
    let _ = shared.evict(&tags).await;
    Ok(mark(&shared, response.map(CacheBody::passthrough), Outcome::Bypass, None))
}

/// The path of a `Location`-style header value, if it names a path on `authority` (a
/// path-absolute reference, or an absolute URI with that authority).
fn same_host_path(value: &HeaderValue, authority: &str) -> Option<String> {
    let uri: http::Uri = value.to_str().ok()?.parse().ok()?;
    match uri.authority() {
        Some(host) if !host.as_str().eq_ignore_ascii_case(authority) => None,
        _ => uri.path().starts_with('/').then(|| uri.path().to_owned()),
    }
}

/// A cacheable read: lookup → serve the hit, or call inner and capture its response.
async fn serve_cacheable<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    mut request: Request<ReqBody>,
    plan: Plan,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    // The entry and its tags' current versions, in one round trip. The versions are read
    // before the inner service runs, which is what makes a later eviction win over this miss.
    let now = now_ms();
    let mut stale = None;
    let (versions, fwd) = match shared.lookup(&plan.key, &plan.tag_keys).await {
        // The store failed: serve from the inner service and store nothing.
        None => (None, Forwarded::Error),
        Some(found) => match examine(&plan, found, now) {
            Ok((Usable::Fresh(entry), _)) => return Ok(serve_fresh(&shared, &plan, entry, now)),
            Ok((Usable::Stale { entry, staleness }, versions)) => {
                if staleness < entry.stale_while_revalidate {
                    // Serve it now; this request refreshes it in the background.
                    let stale =
                        serve_stale(&shared, &plan, entry, staleness, "stale-while-revalidate");
                    refresh_in_background(shared, inner, request, plan, versions);
                    return Ok(stale);
                }
                // Ask the inner service whether it changed, when the entry can tell it what it
                // has; the client's own conditions, if any, go through untouched.
                let revalidating = staleness < entry.revalidate_for
                    && plan.conditions.is_none()
                    && !plan.head
                    && add_validators(request.headers_mut(), &entry.headers);
                stale = Some(StaleEntry { entry, staleness, revalidating });
                (Some(versions), Forwarded::Stale)
            }
            Err(Miss { versions: Some(versions), fwd }) => (Some(versions), fwd),
            // HEAD responses are never stored, so they need no versions.
            Err(Miss { versions: None, fwd }) if plan.head => (None, fwd),
            // First use of a tag (or its version was lost): give it one.
            Err(Miss { versions: None, fwd }) => {
                (shared.ensure_tag_versions(&plan.tag_keys).await, fwd)
            }
        },
    };
    // Stampede protection: one request per key fills the entry; the others wait for it.
    let mut flight = None;
    if let (Some(_), false, Some(timeout)) =
        (&versions, plan.head, shared.settings.miss_lock_timeout)
    {
        match take_turn(&shared, &plan, timeout).await {
            Turn::Hit(hit) => return Ok(hit),
            Turn::Call(leader) => flight = leader,
        }
    }
    Counters::add(&shared.counters.misses, 1);
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
                        stale.entry,
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
        Some(versions) => capture_if_storable(&shared, &plan, versions, response, flight),
        None => (response.map(CacheBody::passthrough), None),
    };
    Ok(mark(&shared, response, Outcome::Miss { fwd, stored }, Some(&plan.key)))
}

/// A stale entry kept through the inner call: what a `304` refreshes, and the answer if the
/// call fails within its `stale-if-error` window.
struct StaleEntry {
    entry: Entry,
    staleness: Duration,
    /// The request was made conditional with the entry's validators.
    revalidating: bool,
}

/// The inner service said `304 Not Modified` to a revalidation: the stale entry is good again.
/// Its headers are updated from the `304` (RFC 9111 section 4.3.4), its freshness computed
/// anew, and it is stored again without its body having crossed the wire.
fn revalidated<B>(
    shared: &Arc<Shared>,
    plan: &Plan,
    stale: Entry,
    not_modified: &HeaderMap,
    versions: Vec<TagVersion>,
    flight: Option<FlightGuard>,
) -> Response<CacheBody<B>> {
    let mut headers = stale.headers;
    for name in not_modified.keys() {
        if *name == CONTENT_LENGTH || Some(name) == shared.settings.status.x_cache.as_ref() {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = stale.status;
    parts.headers = headers;
    let now = now_ms();
    let freshness =
        storable(&parts, plan, SystemTime::now()).map(|f| f.jittered(shared.settings.ttl_jitter));
    let entry = Entry {
        status: stale.status,
        headers: parts.headers,
        stored_at_ms: now.saturating_sub(freshness.map_or(0, |f| f.age.as_millis() as u64)),
        ttl: freshness.map_or(Duration::ZERO, |f| f.lifetime),
        stale_while_revalidate: freshness.map_or(Duration::ZERO, |f| f.stale_while_revalidate),
        stale_if_error: freshness.map_or(Duration::ZERO, |f| f.stale_if_error),
        revalidate_for: freshness.map_or(Duration::ZERO, |f| f.revalidate_for),
        tags: plan.tags.iter().cloned().zip(versions).collect(),
        ..stale
    };
    let ttl = freshness.ok().map(|f| f.remaining());
    if let Ok(freshness) = freshness {
        store_entry(
            Arc::clone(shared),
            plan.key.clone(),
            entry.clone(),
            freshness.keep_for(),
            flight,
        );
    }
    respond_from_entry(shared, plan, entry, now, Outcome::Revalidated { ttl })
}

/// Calls the inner service, giving up after the layer's `stale_if_error_timeout` if it has one.
async fn call_within<S, ReqBody, ResBody>(
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

/// Refreshes a stale entry in the background with the request that found it, unless another
/// request (in this process, or in another instance holding the store lease) already is.
fn refresh_in_background<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Request<ReqBody>,
    plan: Plan,
    versions: Vec<TagVersion>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let Role::Leader(mut flight) = Flights::join(&shared, &plan.key) else { return };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let lease = format!("{}:lease", plan.key);
        let lease_time = shared.settings.miss_lock_timeout.unwrap_or(Duration::from_secs(5));
        match shared.acquire_lease(&lease, lease_time).await {
            Some(false) => return, // another instance refreshes it
            Some(true) => flight.hold_lease(lease),
            None => {}
        }
        // A refresh that ran between our lookup and our lease has done the work already.
        if let Some(found) = shared.lookup(&plan.key, &plan.tag_keys).await {
            if let Ok((Usable::Fresh(_), _)) = examine(&plan, found, now_ms()) {
                return;
            }
        }
        let Ok(response) = inner.call(request).await else { return };
        let (response, _) = capture_if_storable(&shared, &plan, versions, response, Some(flight));
        // Reading the body to its end is what stores it.
        let _ = response.into_body().collect().await;
    });
}

/// What a missing request does once it has waited its turn.
#[allow(clippy::large_enum_variant)] // returned once and matched at once, never stored
enum Turn<B> {
    /// Another request filled the entry meanwhile.
    Hit(Response<CacheBody<B>>),
    /// Call the inner service; as the leader of the key's flight when there is a guard.
    Call(Option<FlightGuard>),
}

/// Joins the key's flight in this process; its leader also takes the store lease, or waits for
/// the instance that holds it. Every wait ends within `timeout`.
async fn take_turn<B>(shared: &Arc<Shared>, plan: &Plan, timeout: Duration) -> Turn<B> {
    match Flights::join(shared, &plan.key) {
        Role::Follower(done) => {
            if flight::wait(done, timeout).await {
                if let Some(hit) = lookup_hit(shared, plan).await {
                    return Turn::Hit(hit);
                }
            }
            Turn::Call(None)
        }
        Role::Leader(mut leader) => {
            let lease = format!("{}:lease", plan.key);
            match shared.acquire_lease(&lease, timeout).await {
                Some(true) => leader.hold_lease(lease),
                Some(false) => match wait_for_other_instance(shared, plan, &lease, timeout).await {
                    Waited::Hit(hit) => return Turn::Hit(hit),
                    Waited::Lease => leader.hold_lease(lease),
                    Waited::TimedOut => {}
                },
                // The store failed: go on without a lease.
                None => {}
            }
            Turn::Call(Some(leader))
        }
    }
}

/// Looks the request up again, serving only a fresh entry.
async fn lookup_hit<B>(shared: &Shared, plan: &Plan) -> Option<Response<CacheBody<B>>> {
    let found = shared.lookup(&plan.key, &plan.tag_keys).await?;
    let now = now_ms();
    match examine(plan, found, now) {
        Ok((Usable::Fresh(entry), _)) => Some(serve_fresh(shared, plan, entry, now)),
        _ => None,
    }
}

/// How waiting for another instance's entry ended.
#[allow(clippy::large_enum_variant)] // returned once and matched at once, never stored
enum Waited<B> {
    Hit(Response<CacheBody<B>>),
    /// The lease came free with no entry (its holder stored nothing, or died): ours now.
    Lease,
    TimedOut,
}

/// Polls the store until another instance's entry appears, its lease comes free, or `timeout`
/// passes.
async fn wait_for_other_instance<B>(
    shared: &Shared,
    plan: &Plan,
    lease: &str,
    timeout: Duration,
) -> Waited<B> {
    const POLL_EVERY: Duration = Duration::from_millis(20);
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL_EVERY).await;
        if let Some(hit) = lookup_hit(shared, plan).await {
            return Waited::Hit(hit);
        }
        if shared.acquire_lease(lease, timeout).await == Some(true) {
            return Waited::Lease;
        }
    }
    Waited::TimedOut
}

/// Why a lookup is not a hit, and what a miss needs to store its response.
struct Miss {
    /// The tags' current versions, to record in the entry; `None` when some tag has none yet.
    versions: Option<Vec<TagVersion>>,
    fwd: Forwarded,
}

/// An entry this request may use.
enum Usable {
    Fresh(Entry),
    /// Past its freshness, but within its `stale-while-revalidate` or `stale-if-error` window.
    Stale {
        entry: Entry,
        staleness: Duration,
    },
}

/// Reads a lookup: an entry the request may use, with the tags' current versions, or a miss.
fn examine(plan: &Plan, found: Lookup, now: u64) -> Result<(Usable, Vec<TagVersion>), Miss> {
    let fwd = if found.entry.is_some() { Forwarded::Miss } else { Forwarded::UriMiss };
    let versions: Option<Vec<TagVersion>> = found.versions.into_iter().collect();
    let Some(versions) = versions else {
        return Err(Miss { versions: None, fwd });
    };
    let entry =
        found.entry.and_then(Entry::decode).filter(|e| tags_match(e, &plan.tags, &versions));
    let Some(entry) = entry else {
        return Err(Miss { versions: Some(versions), fwd });
    };
    if plan.refresh {
        return Err(Miss { versions: Some(versions), fwd: Forwarded::Request });
    }
    match entry.staleness(now) {
        None => Ok((Usable::Fresh(entry), versions)),
        Some(staleness)
            if staleness
                < entry
                    .stale_while_revalidate
                    .max(entry.stale_if_error)
                    .max(entry.revalidate_for) =>
        {
            Ok((Usable::Stale { entry, staleness }, versions))
        }
        Some(_) => Err(Miss { versions: Some(versions), fwd }),
    }
}

/// The response for a stored entry: the entry itself, or `304 Not Modified` when the request's
/// conditions allow.
fn respond_from_entry<B>(
    shared: &Shared,
    plan: &Plan,
    entry: Entry,
    now: u64,
    outcome: Outcome,
) -> Response<CacheBody<B>> {
    let age = HeaderValue::from(entry.age_secs(now));
    if plan.conditions.as_ref().is_some_and(|c| c.not_modified(&entry.headers)) {
        let mut response = Response::new(CacheBody::cached(Bytes::new(), None));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = not_modified_headers(&entry.headers);
        response.headers_mut().insert(AGE, age);
        return mark(shared, response, outcome, Some(&plan.key));
    }
    let length = HeaderValue::from(entry.body.len());
    let body = if plan.head {
        CacheBody::cached(Bytes::new(), None)
    } else {
        CacheBody::cached(entry.body, entry.trailers)
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
    response.headers_mut().insert(CONTENT_LENGTH, length);
    response.headers_mut().insert(AGE, age);
    mark(shared, response, outcome, Some(&plan.key))
}

/// Serves a fresh entry, counted as a hit.
fn serve_fresh<B>(shared: &Shared, plan: &Plan, entry: Entry, now: u64) -> Response<CacheBody<B>> {
    Counters::add(&shared.counters.hits, 1);
    let outcome = Outcome::Hit { ttl: entry.remaining(now) };
    respond_from_entry(shared, plan, entry, now, outcome)
}

/// Serves a stale entry, counted as such; `why` names the RFC 5861 directive that allows it.
fn serve_stale<B>(
    shared: &Shared,
    plan: &Plan,
    entry: Entry,
    staleness: Duration,
    why: &'static str,
) -> Response<CacheBody<B>> {
    Counters::add(&shared.counters.stale, 1);
    respond_from_entry(shared, plan, entry, now_ms(), Outcome::Stale { staleness, why })
}

/// An entry is valid only if it was computed under the tags' current versions: any eviction
/// since then changed a version.
fn tags_match(entry: &Entry, tags: &[String], versions: &[TagVersion]) -> bool {
    entry.tags.len() == tags.len()
        && entry
            .tags
            .iter()
            .zip(tags.iter().zip(versions))
            .all(|((t, v), (tag, version))| t == tag && v == version)
}

/// Wraps the body in a capture when the response may be stored; says for how long it will be.
fn capture_if_storable<B: Body<Data = Bytes>>(
    shared: &Arc<Shared>,
    plan: &Plan,
    versions: Vec<TagVersion>,
    response: Response<B>,
    flight: Option<FlightGuard>,
) -> (Response<CacheBody<B>>, Option<Duration>) {
    let (parts, body) = response.into_parts();
    let settings = &shared.settings;
    let freshness = storable(&parts, plan, SystemTime::now()).and_then(|freshness| {
        // A known length over the limit: do not even start a copy.
        let too_long = body.size_hint().lower() > settings.max_body_bytes as u64;
        if too_long {
            Err("body over max_body_bytes")
        } else {
            Ok(freshness.jittered(settings.ttl_jitter))
        }
    });
    let freshness = match freshness {
        Ok(freshness) => freshness,
        Err(reason) => {
            tracing::debug!(route = &*plan.rule.pattern, reason, "response not stored");
            return (Response::from_parts(parts, CacheBody::passthrough(body)), None);
        }
    };
    let pending = PendingEntry {
        shared: Arc::clone(shared),
        headers: stored_headers(&parts.headers, settings.status.x_cache.as_ref()),
        status: parts.status,
        freshness,
        flight,
        tags: plan.tags.iter().cloned().zip(versions).collect(),
        key: plan.key.clone(),
    };
    let capture = Capture::new(pending, settings.max_body_bytes, body.size_hint().lower());
    (Response::from_parts(parts, CacheBody::capturing(body, capture)), Some(freshness.remaining()))
}

/// Adds the status headers (`X-Cache`, `Cache-Status`) for `outcome`.
fn mark<B>(
    shared: &Shared,
    mut response: Response<B>,
    outcome: Outcome,
    key: Option<&str>,
) -> Response<B> {
    shared.settings.status.apply(response.headers_mut(), outcome, key);
    response
}
