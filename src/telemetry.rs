//! What the layer reports about its work, through the [`metrics`] facade and [`tracing`].
//!
//! No exporter is forced on the application: it installs the `metrics` recorder it likes
//! (Prometheus, StatsD, OpenTelemetry, ...) before the layer serves its first request, and
//! every layer reports to it. Without a recorder the calls cost next to nothing.
//!
//! | Metric | Type | Labels | What |
//! |---|---|---|---|
//! | `tower_redis_cache_requests_total` | counter | `route`, `outcome` | requests, by what the cache did: `hit`, `miss`, `stale`, `revalidated`, `collapsed` (a miss that found the entry another request filled), `bypass` |
//! | `tower_redis_cache_request_duration_seconds` | histogram | `route`, `outcome` | from the call to the response head (the body of a hit is in memory by then; a miss's streams after) |
//! | `tower_redis_cache_bypasses_total` | counter | `route`, `reason` | why the cache stayed out of the way: `no_rule`, `bypass_rule`, `mutation`, `credentials`, `unidentified_user`, `ambiguous_path`, `bypass_header`, `eviction_pending`, `unread_message` (a gRPC call whose message the layer did not read), `request_body` (a `GET` or `HEAD` with a body) |
//! | `tower_redis_cache_served_bytes_total` | counter | `route` | body bytes answered from the store |
//! | `tower_redis_cache_stored_bytes_total` | counter | `route` | bytes of entries written to the store, as stored (compressed where they are) |
//! | `tower_redis_cache_evictions_total` | counter | | tags evicted |
//! | `tower_redis_cache_store_duration_seconds` | histogram | `operation` | store calls that were made, whatever their result |
//! | `tower_redis_cache_store_errors_total` | counter | `operation`, `kind` | store calls that failed: `kind` is `error`, `timeout` or `skipped` (the circuit breaker was open) |
//! | `tower_redis_cache_breaker_transitions_total` | counter | `state` | the circuit breaker going `open` or `closed` |
//! | `tower_redis_cache_breaker_open` | gauge | | 1 while the circuit breaker is open, else 0 |
//!
//! Traces: every cacheable request and every write runs in a `cache` span (level `DEBUG`) with
//! the fields `route` (the pattern), `outcome` and `key` (the end of the entry key's digest,
//! which identifies the entry without saying anything about the request or its user); each
//! store call runs in a child `cache_store` span with its `operation`. Store errors are `WARN`
//! events, at most one a second, with the number left out since the last one.
//!
//! `route` is the pattern of the rule that matched (`/users/{id}`), never the path, so the
//! number of series is bounded by the routes configured; requests no route matches have
//! `route="unmatched"`. `operation` is one of the [`Store`](crate::Store) methods.
//!
//! Each series is registered with the recorder when it first happens (so series that never
//! happen, such as hits on a bypass pattern, are never exported), and then kept: install the
//! recorder before the layer serves, even if after it is built.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::breaker::Change;
use crate::policy::BypassReason;
use crate::status::Outcome;

/// The `route` label of requests no route matches.
pub(crate) const UNMATCHED: &str = "unmatched";

/// The outcomes of [`Outcome`], as labels, in the order of [`outcome_index`].
const OUTCOMES: [&str; 6] = ["hit", "miss", "stale", "revalidated", "collapsed", "bypass"];

/// The store operations, as labels.
pub(crate) const OPERATIONS: [&str; 7] = [
    "lookup",
    "ensure_tag_versions",
    "put",
    "evict_tags",
    "acquire_lease",
    "release_lease",
    "acquire_lease_then_lookup",
];

/// The outcome as a label (`hit`, `miss`, ...).
pub(crate) fn outcome_label(outcome: &Outcome) -> &'static str {
    OUTCOMES[outcome_index(outcome)]
}

fn outcome_index(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Hit { .. } => 0,
        Outcome::Miss { .. } => 1,
        Outcome::Stale { .. } => 2,
        Outcome::Revalidated { .. } => 3,
        Outcome::Collapsed { .. } => 4,
        Outcome::Bypass => 5,
    }
}

/// How a store call ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreCall {
    Answered,
    Failed,
    TimedOut,
    /// Not made: the circuit breaker was open.
    Skipped,
}

/// A layer's metrics handles, registered on first use, and its latency figures for
/// [`Stats`](crate::Stats).
pub(crate) struct Telemetry {
    patterns: Vec<Arc<str>>,
    handles: OnceLock<Handles>,
    latency: Latencies,
    /// The second (since the layer started) a store error was last logged, for rate limiting.
    error_logged_at: AtomicU64,
    suppressed_errors: AtomicU64,
    started: Instant,
}

struct Handles {
    routes: HashMap<Arc<str>, RouteHandles>,
    unmatched: RouteHandles,
    store: HashMap<&'static str, StoreHandles>,
    evictions: Counter,
    breaker_opened: Counter,
    breaker_closed: Counter,
    breaker_open: Gauge,
}

/// One route's handles, each registered on its first use, so that series that never happen
/// (a hit on a bypass pattern) are never exported.
struct RouteHandles {
    route: String,
    requests: [OnceLock<Counter>; OUTCOMES.len()],
    durations: [OnceLock<Histogram>; OUTCOMES.len()],
    bypasses: [OnceLock<Counter>; BypassReason::ALL.len()],
    served_bytes: OnceLock<Counter>,
    stored_bytes: OnceLock<Counter>,
}

/// One store operation's handles, registered on first use like [`RouteHandles`]'.
struct StoreHandles {
    operation: &'static str,
    duration: OnceLock<Histogram>,
    /// By [`StoreCall`] that is not `Answered`: failed, timed out, skipped.
    errors: [OnceLock<Counter>; 3],
}

impl RouteHandles {
    fn new(route: &str) -> Self {
        Self {
            route: route.to_owned(),
            requests: Default::default(),
            durations: Default::default(),
            bypasses: Default::default(),
            served_bytes: OnceLock::new(),
            stored_bytes: OnceLock::new(),
        }
    }

    fn requests(&self, outcome: usize) -> &Counter {
        self.requests[outcome].get_or_init(|| {
            counter!("tower_redis_cache_requests_total", "route" => self.route.clone(), "outcome" => OUTCOMES[outcome])
        })
    }

    fn duration(&self, outcome: usize) -> &Histogram {
        self.durations[outcome].get_or_init(|| {
            histogram!("tower_redis_cache_request_duration_seconds", "route" => self.route.clone(), "outcome" => OUTCOMES[outcome])
        })
    }

    fn bypasses(&self, reason: usize) -> &Counter {
        self.bypasses[reason].get_or_init(|| {
            let reason = BypassReason::ALL[reason].as_str();
            counter!("tower_redis_cache_bypasses_total", "route" => self.route.clone(), "reason" => reason)
        })
    }

    fn served_bytes(&self) -> &Counter {
        self.served_bytes.get_or_init(
            || counter!("tower_redis_cache_served_bytes_total", "route" => self.route.clone()),
        )
    }

    fn stored_bytes(&self) -> &Counter {
        self.stored_bytes.get_or_init(
            || counter!("tower_redis_cache_stored_bytes_total", "route" => self.route.clone()),
        )
    }
}

impl StoreHandles {
    fn new(operation: &'static str) -> Self {
        Self { operation, duration: OnceLock::new(), errors: Default::default() }
    }

    fn duration(&self) -> &Histogram {
        self.duration.get_or_init(|| {
            histogram!("tower_redis_cache_store_duration_seconds", "operation" => self.operation)
        })
    }

    fn errors(&self, kind: usize) -> &Counter {
        const KINDS: [&str; 3] = ["error", "timeout", "skipped"];
        self.errors[kind].get_or_init(|| {
            counter!("tower_redis_cache_store_errors_total", "operation" => self.operation, "kind" => KINDS[kind])
        })
    }
}

impl Handles {
    fn register(patterns: &[Arc<str>]) -> Self {
        let routes = patterns
            .iter()
            .map(|pattern| (Arc::clone(pattern), RouteHandles::new(pattern)))
            .collect();
        let transitions = |state: &'static str| counter!("tower_redis_cache_breaker_transitions_total", "state" => state);
        Self {
            routes,
            unmatched: RouteHandles::new(UNMATCHED),
            store: OPERATIONS.iter().map(|&op| (op, StoreHandles::new(op))).collect(),
            evictions: counter!("tower_redis_cache_evictions_total"),
            breaker_opened: transitions("open"),
            breaker_closed: transitions("closed"),
            breaker_open: gauge!("tower_redis_cache_breaker_open"),
        }
    }

    fn route(&self, route: Option<&str>) -> &RouteHandles {
        route.and_then(|route| self.routes.get(route)).unwrap_or(&self.unmatched)
    }
}

impl Telemetry {
    /// Telemetry for a layer whose routes (and bypass patterns) are `patterns`.
    pub(crate) fn new(patterns: Vec<Arc<str>>) -> Self {
        Self {
            patterns,
            handles: OnceLock::new(),
            latency: Latencies::default(),
            error_logged_at: AtomicU64::new(u64::MAX),
            suppressed_errors: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| Handles::register(&self.patterns))
    }

    /// A request has its response head: what the cache did, how long it took since `started`,
    /// and the body bytes it served from the store, if any.
    pub(crate) fn answered(
        &self,
        route: Option<&str>,
        outcome: &Outcome,
        started: Instant,
        served_bytes: Option<usize>,
    ) {
        let elapsed = started.elapsed();
        let handles = self.handles().route(route);
        let index = outcome_index(outcome);
        handles.requests(index).increment(1);
        handles.duration(index).record(elapsed.as_secs_f64());
        if let Some(bytes) = served_bytes {
            handles.served_bytes().increment(bytes as u64);
        }
        self.latency.record(outcome, elapsed, self.started.elapsed().as_secs());
    }

    /// The cache stayed out of a request's way, for `reason`.
    pub(crate) fn bypassed(&self, route: Option<&str>, reason: BypassReason) {
        let index = BypassReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.handles().route(route).bypasses(index).increment(1);
    }

    /// An entry of `bytes` (as stored) was written for `route`.
    pub(crate) fn stored(&self, route: &str, bytes: usize) {
        self.handles().route(Some(route)).stored_bytes().increment(bytes as u64);
    }

    /// `tags` tags were evicted.
    pub(crate) fn evicted(&self, tags: usize) {
        self.handles().evictions.increment(tags as u64);
    }

    /// A store call `operation` ended as `call`, after `elapsed` when it was made.
    pub(crate) fn store_call(&self, operation: &'static str, call: StoreCall, elapsed: Duration) {
        let Some(handles) = self.handles().store.get(operation) else { return };
        match call {
            StoreCall::Skipped => {
                handles.errors(2).increment(1);
                return;
            }
            StoreCall::Answered => {}
            StoreCall::Failed => handles.errors(0).increment(1),
            StoreCall::TimedOut => handles.errors(1).increment(1),
        }
        handles.duration().record(elapsed.as_secs_f64());
    }

    /// The circuit breaker changed state.
    pub(crate) fn breaker(&self, change: Change) {
        let handles = self.handles();
        match change {
            Change::Opened => {
                handles.breaker_opened.increment(1);
                handles.breaker_open.set(1.0);
            }
            Change::Closed => {
                handles.breaker_closed.increment(1);
                handles.breaker_open.set(0.0);
            }
            Change::None => {}
        }
    }

    /// Whether a store error may be logged now: at most one a second, so that a store outage
    /// does not flood the logs (the metrics count every one). Returns how many were not logged
    /// since the last one that was.
    pub(crate) fn may_log_store_error(&self) -> Option<u64> {
        let second = self.started.elapsed().as_secs();
        let last = self.error_logged_at.load(Ordering::Relaxed);
        if last == second
            || self
                .error_logged_at
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed_errors.swap(0, Ordering::Relaxed))
    }

    /// Latency percentiles of hits and of misses, since the layer started and over the last
    /// minute.
    pub(crate) fn latency(&self) -> (LatencySummaries, LatencySummaries) {
        let second = self.started.elapsed().as_secs();
        let both = |histogram: &LatencyHistogram| {
            let (total, recent) = histogram.summaries(second);
            LatencySummaries { total, recent }
        };
        (both(&self.latency.hits), both(&self.latency.misses))
    }
}

/// Hit and miss latencies, in microseconds, for [`Stats`](crate::Stats).
#[derive(Default)]
struct Latencies {
    hits: LatencyHistogram,
    misses: LatencyHistogram,
}

impl Latencies {
    fn record(&self, outcome: &Outcome, elapsed: Duration, second: u64) {
        match outcome {
            Outcome::Hit { .. } => self.hits.record(elapsed, second),
            Outcome::Miss { .. } => self.misses.record(elapsed, second),
            _ => {}
        }
    }
}

/// How many seconds "recent" latencies cover, in slots of how many seconds.
const RECENT_SECONDS: u64 = 60;
const SLOT_SECONDS: u64 = 10;

/// Durations from 1 µs to an hour, at 2 significant digits: since the start, and over the last
/// minute in six slots of ten seconds, the oldest dropped as time moves on.
#[derive(Default)]
struct LatencyHistogram(Mutex<LatencyState>);

struct LatencyState {
    total: hdrhistogram::Histogram<u64>,
    /// `(slot, histogram)`, oldest first; a slot is `second / SLOT_SECONDS`.
    recent: VecDeque<(u64, hdrhistogram::Histogram<u64>)>,
}

fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
        .expect("valid bounds and precision")
}

impl Default for LatencyState {
    fn default() -> Self {
        Self { total: new_histogram(), recent: VecDeque::new() }
    }
}

impl LatencyState {
    /// Drops the slots older than the last minute, as of `slot`.
    fn expire(&mut self, slot: u64) {
        let oldest = slot.saturating_sub(RECENT_SECONDS / SLOT_SECONDS - 1);
        while self.recent.front().is_some_and(|(s, _)| *s < oldest) {
            self.recent.pop_front();
        }
    }
}

impl LatencyHistogram {
    /// Records `elapsed`, `second` seconds after the layer started.
    fn record(&self, elapsed: Duration, second: u64) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
        let slot = second / SLOT_SECONDS;
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.total.saturating_record(micros);
        state.expire(slot);
        if state.recent.back().is_none_or(|(s, _)| *s != slot) {
            state.recent.push_back((slot, new_histogram()));
        }
        if let Some((_, histogram)) = state.recent.back_mut() {
            histogram.saturating_record(micros);
        }
    }

    /// Since the start, and over the last minute as of `second`.
    fn summaries(&self, second: u64) -> (LatencySummary, LatencySummary) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.expire(second / SLOT_SECONDS);
        let mut recent = new_histogram();
        for (_, histogram) in &state.recent {
            // Same bounds and precision: adding cannot fail.
            let _ = recent.add(histogram);
        }
        (summary(&state.total), summary(&recent))
    }
}

fn summary(histogram: &hdrhistogram::Histogram<u64>) -> LatencySummary {
    let at = |quantile: f64| Duration::from_micros(histogram.value_at_quantile(quantile));
    LatencySummary {
        count: histogram.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: Duration::from_micros(histogram.max()),
    }
}

/// The latencies of one kind of request: since the layer started, and over the last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LatencySummaries {
    pub(crate) total: LatencySummary,
    pub(crate) recent: LatencySummary,
}

/// Percentiles of a latency, from the layer's call to the response head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// How many requests were measured.
    pub count: u64,
    /// The median.
    pub p50: Duration,
    /// The 95th percentile.
    pub p95: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_latencies_cover_the_last_minute_only() {
        let histogram = LatencyHistogram::default();
        histogram.record(Duration::from_millis(500), 0);
        histogram.record(Duration::from_millis(1), 30);
        histogram.record(Duration::from_millis(2), 65);
        let (total, recent) = histogram.summaries(65);
        assert_eq!((total.count, recent.count), (3, 2));
        assert!(recent.max < Duration::from_millis(3), "{recent:?}");
        assert!(total.max >= Duration::from_millis(499), "{total:?}");
        let (_, later) = histogram.summaries(200);
        assert_eq!(later.count, 0, "nothing in the last minute");
    }
}
