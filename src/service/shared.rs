//! [`Shared`]: what every clone of a layer's services shares (store, rules, settings,
//! telemetry), and [`Settings`], the options fixed at build time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::Response;

use super::decide::Plan;
use super::flight::Flights;
use super::learn::Learned;
use crate::clock::{unix_ms, Clock};
use crate::entry::decoded::DecodedEntries;
use crate::entry::key::tag_key;
use crate::entry::Entry;
use crate::outcome::{BypassReason, CacheOutcome, Outcome};
use crate::protocol::cache_status::StatusHeaders;
use crate::rules::RouteTable;
use crate::store::breaker::BreakerSettings;
use crate::store::guarded::GuardedStore;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

/// Layer-wide settings, fixed at build time. The builder holds them and sets each one.
pub(crate) struct Settings {
    pub(crate) key_prefix: String,
    /// The longest a store call may take.
    pub(crate) store_timeout: Duration,
    /// How long a write's response waits for a failed eviction's retries.
    pub(crate) eviction_hold: Duration,
    /// The circuit breaker in front of the store; `None` calls the store whatever happens.
    pub(crate) breaker: Option<BreakerSettings>,
    pub(crate) max_body_bytes: usize,
    /// The most bytes all copies of bodies in flight may hold together.
    pub(crate) max_capture_bytes: usize,
    /// Up to how many percent each entry's freshness is shortened at random.
    pub(crate) ttl_jitter: u8,
    /// How long requests that miss on a key another request is filling wait for it; `None`
    /// turns the miss lock off.
    pub(crate) miss_lock_timeout: Option<Duration>,
    /// Waiting misses are let go once the leader's response head is known, not its entry
    /// stored.
    pub(crate) release_miss_lock_on_head: bool,
    /// How long to wait for the inner service when a stale entry could answer if it fails.
    pub(crate) stale_if_error_timeout: Option<Duration>,
    /// XFetch's `beta` for refreshing fresh entries ahead of expiry; `None` turns it off.
    pub(crate) refresh_ahead: Option<f64>,
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
    /// Whether responses carry their [`CacheOutcome`] in their extensions.
    pub(crate) outcome_extension: bool,
    /// The cookies that are credentials; `None`: every cookie is.
    pub(crate) credential_cookies: Option<Vec<String>>,
    pub(crate) status: StatusHeaders,
    /// The most bytes of decoded entries kept for hits (see [`crate::entry::decoded`]).
    pub(crate) decoded_cache_bytes: u64,
}

/// The state every clone of a layer's services shares.
pub(crate) struct Shared {
    /// The store, behind its timeout, circuit breaker and eviction retries.
    pub(crate) store: Arc<GuardedStore>,
    pub(crate) routes: RouteTable,
    pub(crate) settings: Settings,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) flights: Flights,
    /// The bytes all copies of bodies in flight hold (see [`super::capture`]).
    capture_bytes: AtomicUsize,
    /// What responses taught this process (see [`super::learn`]).
    pub(crate) learned: Learned,
    /// Entries decoded before, for hits on the same stored bytes (see
    /// [`crate::entry::decoded`]).
    pub(crate) decoded: DecodedEntries,
}

impl Shared {
    pub(crate) fn new(store: Arc<dyn Store>, routes: RouteTable, settings: Settings) -> Self {
        let telemetry = Arc::new(Telemetry::new(routes.patterns()));
        let events = Arc::clone(&telemetry);
        let store = GuardedStore::new(store, settings.store_timeout, settings.breaker, events)
            .with_eviction_hold(settings.eviction_hold);
        Self {
            store: Arc::new(store),
            telemetry,
            capture_bytes: AtomicUsize::new(0),
            routes,
            flights: Flights::default(),
            learned: Learned::default(),
            decoded: DecodedEntries::new(settings.decoded_cache_bytes),
            settings,
        }
    }

    /// Whether this hit on the fresh `entry` should refresh it ahead of its expiry (see
    /// [`Entry::refreshes_early`]).
    pub(crate) fn refreshes_early(&self, entry: &Entry, now_ms: u64) -> bool {
        self.settings.refresh_ahead.is_some_and(|beta| {
            // `1 - [0, 1)` is in `(0, 1]`, where the logarithm is finite.
            entry.refreshes_early(now_ms, beta, 1.0 - fastrand::f64())
        })
    }

    /// The time of day by the layer's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.settings.clock.now()
    }

    /// The same, in milliseconds since the Unix epoch, as entries record it.
    pub(crate) fn now_ms(&self) -> u64 {
        unix_ms(self.now())
    }

    /// Reports the outcome of a cacheable request, whose response serves `served_bytes` of
    /// body from the store (see [`report`](Self::report)).
    pub(crate) fn mark<B>(
        &self,
        response: Response<B>,
        outcome: Outcome,
        plan: &Plan,
        served_bytes: Option<usize>,
    ) -> Response<B> {
        let route = Some(&*plan.rule.pattern);
        self.report(response, outcome, route, Some(&plan.key), plan.started, served_bytes)
    }

    /// Reports a request the cache stayed out of, for `reason`, on `route`, called at `started`.
    pub(crate) fn mark_bypass<B>(
        &self,
        response: Response<B>,
        reason: BypassReason,
        route: Option<&str>,
        started: Instant,
    ) -> Response<B> {
        self.report(response, Outcome::Bypass(reason), route, None, started, None)
    }

    /// The one place every response's outcome is reported, when its head is ready: the status
    /// headers (`X-Cache`, `Cache-Status`) go on it, and [`Telemetry`] derives the counters,
    /// the latencies and the metrics from the same report.
    fn report<B>(
        &self,
        mut response: Response<B>,
        outcome: Outcome,
        route: Option<&str>,
        key: Option<&str>,
        started: Instant,
        served_bytes: Option<usize>,
    ) -> Response<B> {
        self.settings.status.apply(response.headers_mut(), outcome, key);
        if self.settings.outcome_extension {
            response.extensions_mut().insert(CacheOutcome::from(&outcome));
        }
        self.telemetry.answered(route, &outcome, started.elapsed(), served_bytes);
        tracing::Span::current().record("outcome", outcome.label());
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

    /// The store keys of `tags`.
    pub(crate) fn tag_keys(&self, tags: &[String]) -> Vec<String> {
        tags.iter().map(|tag| tag_key(&self.settings.key_prefix, tag)).collect()
    }

    /// Evicts `tags`. On failure they are retried in the background, and bypassed until then
    /// (see [`GuardedStore::evict`]).
    pub(crate) async fn evict(&self, tags: &[String]) -> Result<(), StoreError> {
        self.store.evict(&self.tag_keys(tags)).await
    }
}
