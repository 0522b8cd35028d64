//! The time of day the layer judges freshness by.
//!
//! Entries record when they were stored, in wall-clock time so that every instance sharing a
//! store agrees on their age. The layer reads that time from a [`Clock`]: the system's by
//! default, or a [`ManualClock`] that a test moves forward by hand, so that "sixty seconds
//! later" takes no time at all.
//!
//! ```
//! use std::time::Duration;
//! use tower_redis_cache::clock::ManualClock;
//! use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
//!
//! let clock = ManualClock::new();
//! let layer = CacheLayer::builder(MemoryStore::new(1 << 20))
//!     .route("/news", Rule::get().ttl(Duration::from_secs(60)))
//!     .clock(clock.clone())
//!     .build()?;
//! // ... a request stores /news ...
//! clock.advance(Duration::from_secs(61));
//! // ... the next request finds it stale ...
//! # drop(layer);
//! # Ok::<(), tower_redis_cache::BuildError>(())
//! ```
//!
//! The clock only decides how the layer reads entries (fresh, stale, past every window). The
//! store still forgets entries on its own, real-time schedule, which never comes before the
//! layer would have stopped using them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the time of day. Set one with
/// [`CacheLayerBuilder::clock`](crate::CacheLayerBuilder::clock).
pub trait Clock: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> SystemTime;
}

/// The system's clock, [`SystemTime::now`]: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until [`advance`](Self::advance)d, for tests of expiry, staleness
/// and `Age`. Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: SystemTime,
    advanced_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock stopped at the system's time now.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock stopped at `start`.
    pub fn starting_at(start: SystemTime) -> Self {
        Self { start, advanced_ms: Arc::new(AtomicU64::new(0)) }
    }

    /// Moves the clock (and every clone of it) forward by `by`, to the millisecond.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.advanced_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.start + Duration::from_millis(self.advanced_ms.load(Ordering::SeqCst))
    }
}

/// `time` in milliseconds since the Unix epoch, as entries record it.
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = ManualClock::starting_at(start);
        let clone = clock.clone();
        assert_eq!(clock.now(), start);
        clone.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now(), start + Duration::from_millis(1_500));
        assert_eq!(unix_ms(clock.now()), 1_001_500);
    }
}
