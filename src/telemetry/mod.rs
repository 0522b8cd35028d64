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
//! store call runs in a child `cache_store` span with its `operation` (but lookups an
//! in-process store answers at once, which call nothing: see
//! [`Store::lookup_in_process`](crate::Store::lookup_in_process)). Store errors are `WARN`
//! events, at most one a second, with the number left out since the last one.
//!
//! `route` is the pattern of the rule that matched (`/users/{id}`), never the path, so the
//! number of series is bounded by the routes configured; requests no route matches have
//! `route="unmatched"`. `operation` is one of the [`Store`](crate::Store) methods.
//!
//! Every response's outcome is reported once, when its head is ready, and the request series,
//! the bypass reasons and [`Stats`] are all derived from that one report, so they agree:
//! `hit` and `collapsed` are [`Stats::hits`], `miss` and `revalidated` are [`Stats::misses`].
//!
//! Each series is registered with the recorder when it first happens (so series that never
//! happen, such as hits on a bypass pattern, are never exported), and then kept: install the
//! recorder before the layer serves, even if after it is built.

// One report per response (`Telemetry::answered`), from which `stats.rs` (the counters of
// `Stats`), `latency.rs` (hit and miss histograms) and `recorder.rs` (the `metrics` series)
// are all derived. Imports `outcome` and the store's event types; never the request path.
mod latency;
mod recorder;
mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::outcome::Outcome;
use crate::store::breaker::Change;
use crate::store::guarded::{StoreCall, StoreEvents};

pub use self::latency::LatencySummary;
pub use self::stats::Stats;

use self::latency::Latencies;
use self::recorder::Metrics;
use self::stats::Counters;

/// The `route` label of requests no route matches.
pub(crate) const UNMATCHED: &str = "unmatched";

/// Everything a layer counts: the counters and latencies of [`Stats`], and the metrics. Each
/// event is reported here once, and every figure is derived from that one report.
pub(crate) struct Telemetry {
    counters: Counters,
    latency: Latencies,
    metrics: Metrics,
    started: Instant,
}

impl Telemetry {
    /// Telemetry for a layer whose routes (and bypass patterns) are `patterns`.
    pub(crate) fn new(patterns: Vec<Arc<str>>) -> Self {
        Self {
            counters: Counters::default(),
            latency: Latencies::default(),
            metrics: Metrics::new(patterns),
            started: Instant::now(),
        }
    }

    /// A request on `route` has its response head after `elapsed`: what the cache did, and
    /// the body bytes it served from the store, if any.
    pub(crate) fn answered(
        &self,
        route: Option<&str>,
        outcome: &Outcome,
        elapsed: Duration,
        served_bytes: Option<usize>,
    ) {
        let counted = outcome.counted();
        self.counters.count(counted);
        self.latency.record(counted, elapsed, self.started.elapsed().as_secs());
        self.metrics.answered(route, outcome, elapsed, served_bytes);
    }

    /// An entry of `bytes` (as stored) was written for `route`.
    pub(crate) fn stored(&self, route: &str, bytes: usize) {
        Counters::add(&self.counters.stores, 1);
        self.metrics.stored(route, bytes);
    }

    /// The counters so far, with the latency percentiles of hits and misses.
    pub(crate) fn stats(&self) -> Stats {
        let (hits, misses) = self.latency.summaries(self.started.elapsed().as_secs());
        Stats {
            hit_latency: hits.total,
            miss_latency: misses.total,
            recent_hit_latency: hits.recent,
            recent_miss_latency: misses.recent,
            ..self.counters.snapshot()
        }
    }
}

impl StoreEvents for Telemetry {
    fn store_call(&self, operation: &'static str, call: StoreCall, elapsed: Duration) {
        match call {
            StoreCall::Answered => {}
            StoreCall::Failed | StoreCall::TimedOut => {
                Counters::add(&self.counters.store_errors, 1)
            }
            StoreCall::Skipped => Counters::add(&self.counters.store_skipped, 1),
        }
        self.metrics.store_call(operation, call, elapsed);
    }

    fn breaker(&self, change: Change) {
        if change == Change::Opened {
            Counters::add(&self.counters.breaker_opened, 1);
        }
        self.metrics.breaker(change);
    }

    fn evicted(&self, tags: usize) {
        Counters::add(&self.counters.evictions, tags as u64);
        self.metrics.evicted(tags);
    }
}
