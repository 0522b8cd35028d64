//! The state every clone of a layer's services shares: store, rules, settings, counters.
//!
//! Every store call goes through here, under the store timeout; a failure is logged, counted
//! and turned into "no answer", so the request path carries on without the cache.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::breaker::{Breaker, BreakerSettings, Change, Health};
use crate::clock::{unix_ms, Clock};
use crate::decoded::DecodedEntries;
use crate::flight::Flights;
use crate::key::tag_key;
use crate::policy::{BypassReason, Plan};
use crate::rules::RouteTable;
use crate::stats::Counters;
use crate::status::{Outcome, StatusHeaders};
use crate::store::{Lookup, Store, StoreError, TagVersion};
use crate::telemetry::{outcome_label, StoreCall, Telemetry};

/// Layer-wide settings, fixed at build time.
pub(crate) struct Settings {
    pub(crate) key_prefix: String,
    pub(crate) store_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    /// The most bytes all copies of bodies in flight may hold together.
    pub(crate) max_capture_bytes: usize,
    /// Up to how many percent each entry's freshness is shortened at random.
    pub(crate) ttl_jitter: u8,
    /// How long requests that miss on a key another request is filling wait for it; `None`
    /// turns the miss lock off.
    pub(crate) miss_lock_timeout: Option<Duration>,
    /// How long to wait for the inner service when a stale entry could answer if it fails.
    pub(crate) stale_if_error_timeout: Option<Duration>,
    /// Whether `Surrogate-Key` response headers count as cache groups.
    pub(crate) surrogate_keys: bool,
    /// Where the time of day comes from (see [`crate::clock`]).
    pub(crate) clock: Arc<dyn Clock>,
    /// Bodies at least this long are stored zstd-compressed; `None` stores them as they are.
    pub(crate) compress_above: Option<usize>,
    /// Whether a request's `Cache-Control: no-cache` (or `max-age=0`) skips the stored entry.
    pub(crate) honor_request_no_cache: bool,
    /// Whether unsafe requests invalidate the entries of their target URI (RFC 9111 4.4).
    pub(crate) invalidate_unsafe: bool,
    /// The method-override headers the application honours: a safe request carrying one
    /// invalidates like the unsafe method it names.
    pub(crate) method_override_headers: Vec<http::HeaderName>,
    pub(crate) status: StatusHeaders,
    /// The most bytes of decoded entries kept for hits (see [`crate::decoded`]).
    pub(crate) decoded_cache_bytes: u64,
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) routes: RouteTable,
    pub(crate) settings: Settings,
    pub(crate) counters: Counters,
    pub(crate) flights: Flights,
    breaker: Breaker,
    /// The bytes all copies of bodies in flight hold (see [`crate::capture`]).
    capture_bytes: AtomicUsize,
    /// Request headers learned from responses' `Vary`, by base key (see [`crate::vary`]).
    pub(crate) learned_vary: Learned<Arc<Vec<http::HeaderName>>>,
    /// Cache groups learned from responses, by entry key (see [`crate::groups`]).
    pub(crate) learned_groups: Learned<Arc<Vec<String>>>,
    failed_evictions: FailedEvictions,
    /// Entries decoded before, for hits on the same stored bytes (see [`crate::decoded`]).
    pub(crate) decoded: DecodedEntries,
    pub(crate) telemetry: Telemetry,
}

/// What responses taught the layer, by key. Most applications never teach it anything, so
/// until something is learned, reading skips hashing the key.
pub(crate) struct Learned<V> {
    cache: moka::sync::Cache<String, V>,
    any: AtomicBool,
}

impl<V: Clone + Send + Sync + 'static> Learned<V> {
    fn new(capacity: u64) -> Self {
        Self { cache: moka::sync::Cache::new(capacity), any: AtomicBool::new(false) }
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        match self.any.load(Ordering::Relaxed) {
            true => self.cache.get(key),
            false => None,
        }
    }

    pub(crate) fn insert(&self, key: String, value: V) {
        self.any.store(true, Ordering::Relaxed);
        self.cache.insert(key, value);
    }
}

/// Tags whose eviction failed (store down or slow) and is being retried. Until it succeeds,
/// requests for entries carrying them bypass the cache: an entry stored before the write may
/// still be in the store, and serving it would be a stale read after the write.
#[derive(Default)]
struct FailedEvictions {
    any: AtomicBool,
    state: Mutex<FailedState>,
}

#[derive(Default)]
struct FailedState {
    tags: HashSet<String>,
    retrying: bool,
}

/// How many base keys' learned `Vary` headers a process remembers; forgetting costs one more
/// round trip to read the marker again.
const LEARNED_VARY: u64 = 100_000;

/// How many entries' learned cache groups a process remembers; forgetting costs a response
/// that is not stored, to learn them again.
const LEARNED_GROUPS: u64 = 100_000;

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        routes: RouteTable,
        settings: Settings,
        breaker: Option<BreakerSettings>,
    ) -> Self {
        Self {
            telemetry: Telemetry::new(routes.patterns()),
            breaker: Breaker::new(breaker),
            capture_bytes: AtomicUsize::new(0),
            store,
            routes,
            counters: Counters::default(),
            flights: Flights::default(),
            learned_vary: Learned::new(LEARNED_VARY),
            learned_groups: Learned::new(LEARNED_GROUPS),
            failed_evictions: FailedEvictions::default(),
            decoded: DecodedEntries::new(settings.decoded_cache_bytes),
            settings,
        }
    }

    /// The time of day by the layer's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.settings.clock.now()
    }

    /// The same, in milliseconds since the Unix epoch, as entries record it.
    pub(crate) fn now_ms(&self) -> u64 {
        unix_ms(self.now())
    }

    /// Adds the status headers (`X-Cache`, `Cache-Status`) for `outcome` to the response to a
    /// cacheable request, and reports it; `served_bytes` are the body bytes it serves from the
    /// store.
    pub(crate) fn mark<B>(
        &self,
        mut response: http::Response<B>,
        outcome: Outcome,
        plan: &Plan,
        served_bytes: Option<usize>,
    ) -> http::Response<B> {
        self.settings.status.apply(response.headers_mut(), outcome, Some(&plan.key));
        self.telemetry.answered(Some(&plan.rule.pattern), &outcome, plan.started, served_bytes);
        tracing::Span::current().record("outcome", outcome_label(&outcome));
        response
    }

    /// The same for a request the cache stayed out of, on `route`, called at `started`.
    pub(crate) fn mark_bypass<B>(
        &self,
        mut response: http::Response<B>,
        route: Option<&str>,
        started: Instant,
    ) -> http::Response<B> {
        self.settings.status.apply(response.headers_mut(), Outcome::Bypass, None);
        self.telemetry.answered(route, &Outcome::Bypass, started, None);
        tracing::Span::current().record("outcome", outcome_label(&Outcome::Bypass));
        response
    }

    /// Counts `bytes` more against `max_capture_bytes`; `false` (and nothing counted) when
    /// they do not fit.
    pub(crate) fn reserve_capture(&self, bytes: usize) -> bool {
        let max = self.settings.max_capture_bytes;
        self.capture_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= max)
            })
            .is_ok()
    }

    pub(crate) fn release_capture(&self, bytes: usize) {
        self.capture_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub(crate) fn tag_keys(&self, tags: &[String]) -> Vec<String> {
        tags.iter().map(|tag| tag_key(&self.settings.key_prefix, tag)).collect()
    }

    /// Runs one store operation under the store timeout, unless the circuit breaker is open.
    /// `None` means it was not made, failed or timed out, which has been logged and counted.
    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        let Some(admission) = self.breaker.admit() else {
            Counters::add(&self.counters.store_skipped, 1);
            self.telemetry.store_call(operation, StoreCall::Skipped, Duration::ZERO);
            return None;
        };
        let started = Instant::now();
        let span = tracing::debug_span!("cache_store", operation);
        let timed = tokio::time::timeout(self.settings.store_timeout, call);
        let (result, health, call) = match tracing::Instrument::instrument(timed, span).await {
            Ok(Ok(value)) => (Ok(value), Health::Answered, StoreCall::Answered),
            Ok(Err(error)) if error.is_unavailable() => {
                (Err(error.to_string()), Health::Unavailable, StoreCall::Failed)
            }
            Ok(Err(error)) => (Err(error.to_string()), Health::Answered, StoreCall::Failed),
            Err(_) => (
                Err(format!("timed out after {:?}", self.settings.store_timeout)),
                Health::Unavailable,
                StoreCall::TimedOut,
            ),
        };
        self.telemetry.store_call(operation, call, started.elapsed());
        let change = admission.finish(health);
        self.telemetry.breaker(change);
        match change {
            Change::Opened => {
                Counters::add(&self.counters.breaker_opened, 1);
                tracing::error!(
                    "cache store failing: circuit breaker open, requests skip the cache"
                );
            }
            Change::Closed => tracing::info!("cache store answering again: circuit breaker closed"),
            Change::None => {}
        }
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                Counters::add(&self.counters.store_errors, 1);
                // At most one a second: an outage must not flood the logs (metrics count all).
                if let Some(suppressed) = self.telemetry.may_log_store_error() {
                    tracing::warn!(operation, %error, suppressed, "cache store operation failed; carrying on without the cache");
                }
                None
            }
        }
    }

    pub(crate) async fn lookup(&self, key: &str, tag_keys: &[String]) -> Option<Lookup> {
        self.run("lookup", self.store.lookup(key, tag_keys)).await
    }

    pub(crate) async fn ensure_tag_versions(&self, tag_keys: &[String]) -> Option<Vec<TagVersion>> {
        let versions =
            self.run("ensure_tag_versions", self.store.ensure_tag_versions(tag_keys)).await?;
        (versions.len() == tag_keys.len()).then_some(versions)
    }

    /// Gives the versions of `tag_keys` the store's full lifetime (see
    /// [`Store::keep_tag_versions`]).
    pub(crate) async fn keep_tag_versions(&self, tag_keys: &[String]) {
        self.run("keep_tag_versions", self.store.keep_tag_versions(tag_keys)).await;
    }

    /// Stores `value` under `key`; `true` when the store took it.
    pub(crate) async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> bool {
        let stored = self.run("put", self.store.put(key, value, ttl)).await.is_some();
        if stored {
            Counters::add(&self.counters.stores, 1);
        }
        stored
    }

    /// Takes the store lease `key` (`None` when the store failed).
    pub(crate) async fn acquire_lease(&self, key: &str, ttl: Duration) -> Option<bool> {
        self.run("acquire_lease", self.store.acquire_lease(key, ttl)).await
    }

    /// Takes the store lease `lease`, then looks the entry up (`None` when the store failed).
    pub(crate) async fn acquire_lease_then_lookup(
        &self,
        lease: &str,
        ttl: Duration,
        key: &str,
        tag_keys: &[String],
    ) -> Option<(bool, Lookup)> {
        let call = self.store.acquire_lease_then_lookup(lease, ttl, key, tag_keys);
        self.run("acquire_lease_then_lookup", call).await
    }

    pub(crate) async fn release_lease(&self, key: &str) {
        self.run("release_lease", self.store.release_lease(key)).await;
    }

    /// Counts `n` evicted tags, in `Stats` and in the metrics.
    fn count_evictions(&self, n: usize) {
        Counters::add(&self.counters.evictions, n as u64);
        self.telemetry.evicted(n);
    }

    /// Counts a request the cache stayed out of, in `Stats` and in the metrics.
    pub(crate) fn count_bypass(&self, route: Option<&str>, reason: BypassReason) {
        Counters::add(&self.counters.bypasses, 1);
        self.telemetry.bypassed(route, reason);
    }

    /// Evicts `tags`. On failure the tags are remembered, bypassed and retried in the
    /// background until the store takes the eviction.
    pub(crate) async fn evict(self: &Arc<Self>, tags: &[String]) -> Result<(), StoreError> {
        if tags.is_empty() {
            return Ok(());
        }
        if self.run("evict_tags", self.store.evict_tags(&self.tag_keys(tags))).await.is_some() {
            self.count_evictions(tags.len());
            return Ok(());
        }
        self.remember_failed_evictions(tags);
        Err(StoreError::msg("eviction failed; it is retried in the background"))
    }

    /// Whether any of `tags` has an eviction that has not reached the store yet.
    pub(crate) fn eviction_pending(&self, tags: &[String]) -> bool {
        if !self.failed_evictions.any.load(Ordering::Acquire) {
            return false;
        }
        let state = self.failed_evictions.state.lock().unwrap_or_else(|e| e.into_inner());
        tags.iter().any(|tag| state.tags.contains(tag))
    }

    fn remember_failed_evictions(self: &Arc<Self>, tags: &[String]) {
        let mut state = self.failed_evictions.state.lock().unwrap_or_else(|e| e.into_inner());
        state.tags.extend(tags.iter().cloned());
        self.failed_evictions.any.store(true, Ordering::Release);
        if state.retrying {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.retrying = true;
        runtime.spawn(Arc::clone(self).retry_failed_evictions());
    }

    async fn retry_failed_evictions(self: Arc<Self>) {
        let mut delay = RETRY_MIN;
        loop {
            tokio::time::sleep(delay).await;
            let tags: Vec<String> = {
                let state = self.failed_evictions.state.lock().unwrap_or_else(|e| e.into_inner());
                state.tags.iter().cloned().collect()
            };
            if self.run("evict_tags", self.store.evict_tags(&self.tag_keys(&tags))).await.is_some()
            {
                self.count_evictions(tags.len());
                let mut state =
                    self.failed_evictions.state.lock().unwrap_or_else(|e| e.into_inner());
                for tag in &tags {
                    state.tags.remove(tag);
                }
                if state.tags.is_empty() {
                    state.retrying = false;
                    self.failed_evictions.any.store(false, Ordering::Release);
                    tracing::info!("pending cache evictions reached the store");
                    return;
                }
                delay = RETRY_MIN;
            } else {
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
