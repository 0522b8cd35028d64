//! The circuit breaker in front of the store.
//!
//! A store that is down or slow would otherwise add the store timeout to every request. After
//! `failures` store calls in a row time out or find the store unavailable, the breaker opens:
//! for `open_for`, the layer makes no store calls and serves every request from the inner
//! service, as it does when a call fails. Then one call goes through as a probe: if it
//! succeeds, the breaker closes; if not, it stays open for another `open_for`.
//!
//! Errors the store answers with (a write refused because Redis is full, a read-only replica)
//! do not count: the store is there and fast, and its reads still serve hits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    pub(crate) failures: u32,
    pub(crate) open_for: Duration,
}

#[derive(Debug)]
enum State {
    Closed {
        failures_in_a_row: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is out; every other call is refused until it ends.
    Probing,
}

/// The breaker; `None` settings make it let every call through.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: Option<BreakerSettings>,
    state: Mutex<State>,
    /// Whether `state` is anything but closed, readable without the lock (see
    /// [`Breaker::is_closed`]).
    tripped: AtomicBool,
}

/// A store call the breaker let through. Report how it went with [`finish`](Self::finish);
/// dropped unfinished (its request went away), a probe lets the next call probe instead.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    breaker: &'a Breaker,
    /// The call decides whether the breaker closes.
    probe: bool,
    finished: bool,
}

/// How a store call went, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// It answered (with a value or with an error of its own).
    Answered,
    /// It timed out or could not be reached.
    Unavailable,
}

/// What a report changed, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub(crate) fn new(settings: Option<BreakerSettings>) -> Self {
        let state = Mutex::new(State::Closed { failures_in_a_row: 0 });
        Self { settings, state, tripped: AtomicBool::new(false) }
    }

    /// Whether the breaker is closed, read without taking its lock: answers that cost no store
    /// call (a tiered store's L1) are given only while it is.
    pub(crate) fn is_closed(&self) -> bool {
        !self.tripped.load(Ordering::Acquire)
    }

    /// Lets a store call through, or `None` while the breaker is open.
    pub(crate) fn admit(&self) -> Option<Admission<'_>> {
        let admission = |probe| Some(Admission { breaker: self, probe, finished: false });
        if self.settings.is_none() {
            return admission(false);
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => admission(false),
            State::Open { until } if Instant::now() >= until => {
                self.enter(&mut state, State::Probing);
                admission(true)
            }
            State::Open { .. } | State::Probing => None,
        }
    }

    /// Lets a store call through whatever the breaker's state: for evictions, which a sick
    /// store may still take and which the layer must not skip. While the breaker is open, its
    /// outcome changes nothing.
    pub(crate) fn admit_always(&self) -> Admission<'_> {
        self.admit().unwrap_or(Admission { breaker: self, probe: false, finished: false })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the locked `state` to `new`.
    fn enter(&self, state: &mut MutexGuard<'_, State>, new: State) {
        self.tripped.store(!matches!(new, State::Closed { .. }), Ordering::Release);
        **state = new;
    }
}

impl Admission<'_> {
    /// Reports how the call went.
    pub(crate) fn finish(mut self, health: Health) -> Change {
        self.finished = true;
        let Some(settings) = self.breaker.settings else { return Change::None };
        let mut state = self.breaker.lock();
        let open = State::Open { until: Instant::now() + settings.open_for };
        match (self.probe, health, &mut *state) {
            (true, Health::Answered, _) => {
                self.breaker.enter(&mut state, State::Closed { failures_in_a_row: 0 });
                Change::Closed
            }
            (true, Health::Unavailable, _) => {
                self.breaker.enter(&mut state, open);
                Change::None
            }
            (false, Health::Answered, State::Closed { failures_in_a_row }) => {
                *failures_in_a_row = 0;
                Change::None
            }
            (false, Health::Unavailable, State::Closed { failures_in_a_row }) => {
                *failures_in_a_row += 1;
                if *failures_in_a_row < settings.failures {
                    return Change::None;
                }
                self.breaker.enter(&mut state, open);
                Change::Opened
            }
            // A call let through before the breaker opened, ending after: the probe decides.
            _ => Change::None,
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe && !self.finished {
            let mut state = self.breaker.lock();
            self.breaker.enter(&mut state, State::Open { until: Instant::now() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(Some(BreakerSettings { failures: 3, open_for: Duration::from_secs(2) }))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_probes_once_after_a_while() {
        let breaker = breaker();
        let call = |health| breaker.admit().expect("let through").finish(health);
        for _ in 0..2 {
            assert_eq!(call(Health::Unavailable), Change::None);
        }
        call(Health::Answered); // the count starts again
        for _ in 0..2 {
            assert_eq!(call(Health::Unavailable), Change::None);
        }
        assert!(breaker.is_closed());
        assert_eq!(call(Health::Unavailable), Change::Opened);
        assert!(breaker.admit().is_none());
        assert!(!breaker.is_closed());

        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = breaker.admit().unwrap();
        assert!(probe.probe);
        assert!(breaker.admit().is_none(), "one probe at a time");
        assert!(!breaker.is_closed(), "probing is not closed");
        assert_eq!(probe.finish(Health::Unavailable), Change::None);
        assert!(breaker.admit().is_none(), "open again");

        tokio::time::advance(Duration::from_secs(2)).await;
        drop(breaker.admit().unwrap()); // its request went away
        let probe = breaker.admit().expect("an abandoned probe is replaced at once");
        assert!(probe.probe);
        assert_eq!(probe.finish(Health::Answered), Change::Closed);
        assert!(breaker.is_closed());
        assert!(!breaker.admit().unwrap().probe);
    }

    #[test]
    fn without_settings_every_call_goes_through() {
        let breaker = Breaker::new(None);
        for _ in 0..100 {
            assert_eq!(breaker.admit().unwrap().finish(Health::Unavailable), Change::None);
        }
        assert!(breaker.admit().is_some());
    }
}
