//! Counters of what the layer did.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::LatencySummary;
use crate::outcome::Counted;

/// A snapshot of a layer's counters, from [`CacheHandle::stats`](crate::CacheHandle::stats).
///
/// Every request that passes the layer counts once, as a hit, a miss, a stale answer or a
/// bypass, when its response head is ready: `hits + misses + stale + bypasses` is the number of
/// requests answered. The latencies count the same hits and misses. A request whose inner
/// service fails with an error rather than a response, or whose caller drops it before its
/// response head, is not counted: it was not answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests answered from the store with a fresh entry, including misses that waited for
    /// another request to fill the entry and were answered with it (`collapsed`).
    pub hits: u64,
    /// Cacheable requests answered by the inner service, including stale entries it
    /// revalidated with a `304`.
    pub misses: u64,
    /// Requests answered with a stale entry (`stale-while-revalidate`, `stale-if-error`).
    /// The background refresh a `stale-while-revalidate` answer starts is not a request.
    pub stale: u64,
    /// Requests the cache stayed out of: no rule, a bypass rule, a credentialed request to a
    /// route that is not per-user or shared, a write (whatever it evicted).
    pub bypasses: u64,
    /// Entries written to the store (the markers that record learned `Vary` headers and cache
    /// groups are not entries).
    pub stores: u64,
    /// Tags evicted (each tag of each successful eviction counts once).
    pub evictions: u64,
    /// Store operations that failed or timed out.
    pub store_errors: u64,
    /// Store operations not made because the circuit breaker was open.
    pub store_skipped: u64,
    /// How many times the circuit breaker opened.
    pub breaker_opened: u64,
    /// How long hits took, from the layer's call to the response head.
    pub hit_latency: LatencySummary,
    /// How long misses took, from the layer's call to the response head (the inner service's
    /// time included).
    pub miss_latency: LatencySummary,
    /// [`hit_latency`](Self::hit_latency) over the last minute only.
    pub recent_hit_latency: LatencySummary,
    /// [`miss_latency`](Self::miss_latency) over the last minute only.
    pub recent_miss_latency: LatencySummary,
}

impl Stats {
    /// Hits over hits and misses, or `0.0` before the first cacheable request.
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) bypasses: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) store_skipped: AtomicU64,
    pub(crate) breaker_opened: AtomicU64,
}

impl Counters {
    /// Counts one request answered.
    pub(crate) fn count(&self, counted: Counted) {
        let counter = match counted {
            Counted::Hit => &self.hits,
            Counted::Miss => &self.misses,
            Counted::Stale => &self.stale,
            Counted::Bypass => &self.bypasses,
        };
        Self::add(counter, 1);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            stale: self.stale.load(Relaxed),
            bypasses: self.bypasses.load(Relaxed),
            stores: self.stores.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            store_errors: self.store_errors.load(Relaxed),
            store_skipped: self.store_skipped.load(Relaxed),
            breaker_opened: self.breaker_opened.load(Relaxed),
            hit_latency: LatencySummary::default(),
            miss_latency: LatencySummary::default(),
            recent_hit_latency: LatencySummary::default(),
            recent_miss_latency: LatencySummary::default(),
        }
    }
}
