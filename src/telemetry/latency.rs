//! Latency histograms of hits and misses, for [`Stats`](crate::Stats).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

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
}
