//! Latency histograms of hits and misses, for [`Stats`](crate::Stats).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use histogram::{AtomicHistogram, Histogram};

use crate::outcome::Counted;

/// Hit and miss latencies, in microseconds, for [`Stats`](crate::Stats).
#[derive(Default)]
pub(super) struct Latencies {
    hits: LatencyHistogram,
    misses: LatencyHistogram,
}

impl Latencies {
    /// Records a request counted as `counted` that took `elapsed`, `second` seconds after the
    /// layer started; only hits and misses are kept.
    pub(super) fn record(&self, counted: Counted, elapsed: Duration, second: u64) {
        match counted {
            Counted::Hit => self.hits.record(elapsed, second),
            Counted::Miss => self.misses.record(elapsed, second),
            Counted::Stale | Counted::Bypass => {}
        }
    }

    /// Latency percentiles of hits and of misses, since the layer started and over the last
    /// minute, as of `second`.
    pub(super) fn summaries(&self, second: u64) -> (LatencySummaries, LatencySummaries) {
        let both = |histogram: &LatencyHistogram| {
            let (total, recent) = histogram.summaries(second);
            LatencySummaries { total, recent }
        };
        (both(&self.hits), both(&self.misses))
    }
}

/// How many seconds "recent" latencies cover, in slots of how many seconds.
const RECENT_SECONDS: u64 = 60;
const SLOT_SECONDS: u64 = 10;
/// The recent slots kept: those of the last minute, and the one that drops out next, which is
/// cleared when its time comes round again.
const SLOTS: usize = (RECENT_SECONDS / SLOT_SECONDS) as usize + 1;

/// Buckets of 1/64 of a power of two (under 1.6% error), up to 2^32 µs (over an hour).
const GROUPING_POWER: u8 = 6;
const MAX_VALUE_POWER: u8 = 32;

fn new_histogram() -> AtomicHistogram {
    AtomicHistogram::new(GROUPING_POWER, MAX_VALUE_POWER).expect("valid histogram parameters")
}

/// Durations in microseconds, since the start and over the last minute in six slots of ten
/// seconds. Recording never locks: every hit and miss records here, on every core.
struct LatencyHistogram {
    total: AtomicHistogram,
    recent: [RecentSlot; SLOTS],
}

/// The latencies of one slot of ten seconds; `slot` says which (`second / SLOT_SECONDS`).
struct RecentSlot {
    slot: AtomicU64,
    histogram: AtomicHistogram,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        let recent = || RecentSlot { slot: AtomicU64::new(u64::MAX), histogram: new_histogram() };
        Self { total: new_histogram(), recent: std::array::from_fn(|_| recent()) }
    }
}

impl LatencyHistogram {
    /// Records `elapsed`, `second` seconds after the layer started.
    fn record(&self, elapsed: Duration, second: u64) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_MICROS);
        let _ = self.total.increment(micros);
        let slot = second / SLOT_SECONDS;
        let recent = &self.recent[(slot % SLOTS as u64) as usize];
        let held = recent.slot.load(Ordering::Acquire);
        // The slot held a minute ago: the first request to see it takes it and clears it. A
        // request recording meanwhile on another core may be cleared with it, which costs the
        // recent figures a sample, never a lock.
        if held != slot
            && recent.slot.compare_exchange(held, slot, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            recent.histogram.drain();
        }
        let _ = recent.histogram.increment(micros);
    }

    /// Since the start, and over the last minute as of `second`.
    fn summaries(&self, second: u64) -> (LatencySummary, LatencySummary) {
        let current = second / SLOT_SECONDS;
        let oldest = current.saturating_sub(RECENT_SECONDS / SLOT_SECONDS - 1);
        let mut recent = new_histogram().load();
        for slot in &self.recent {
            if (oldest..=current).contains(&slot.slot.load(Ordering::Acquire)) {
                // Same parameters: adding cannot fail.
                let _ = recent.wrapping_add(&slot.histogram.load()).map(|sum| recent = sum);
            }
        }
        (summary(&self.total.load()), summary(&recent))
    }
}

/// The longest duration recorded as it is; longer ones count as this.
const MAX_MICROS: u64 = (1 << MAX_VALUE_POWER) - 1;

fn summary(histogram: &Histogram) -> LatencySummary {
    let mut buckets = [None, None, None, None];
    if histogram.quantile_buckets_into(&[0.5, 0.95, 0.99, 1.0], &mut buckets).is_err() {
        return LatencySummary::default();
    }
    // The upper end of each bucket: a percentile is never reported lower than it was.
    let at = |i: usize| Duration::from_micros(buckets[i].as_ref().map_or(0, |b| b.end()));
    LatencySummary {
        count: histogram.as_slice().iter().sum(),
        p50: at(0),
        p95: at(1),
        p99: at(2),
        max: at(3),
    }
}

/// The latencies of one kind of request: since the layer started, and over the last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct LatencySummaries {
    pub(super) total: LatencySummary,
    pub(super) recent: LatencySummary,
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

    #[test]
    fn a_slot_is_cleared_when_its_time_comes_round_again() {
        let histogram = LatencyHistogram::default();
        histogram.record(Duration::from_millis(500), 0);
        // Seventy seconds on, the slot of second 0 is reused.
        histogram.record(Duration::from_millis(1), 70);
        let (total, recent) = histogram.summaries(70);
        assert_eq!((total.count, recent.count), (2, 1));
        assert!(recent.max < Duration::from_millis(2), "{recent:?}");
        assert!(recent.p50 >= Duration::from_millis(1), "{recent:?}");
    }
}
