//! The metrics handles of a layer, registered with the `metrics` recorder on first use.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::outcome::{BypassReason, Outcome};
use crate::store::breaker::Change;
use crate::store::guarded::{StoreCall, OPERATIONS};

use super::UNMATCHED;

/// The labels of the store errors counter's `kind`, by [`StoreCall`] that is not `Answered`.
const ERROR_KINDS: [&str; 3] = ["error", "timeout", "skipped"];

/// A layer's metrics handles, registered when first used, so that series are registered with
/// the recorder the application installed before the layer served (see [`super`]).
pub(super) struct Metrics {
    patterns: Vec<Arc<str>>,
    handles: OnceLock<Handles>,
}

impl Metrics {
    pub(super) fn new(patterns: Vec<Arc<str>>) -> Self {
        Self { patterns, handles: OnceLock::new() }
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| Handles::register(&self.patterns))
    }

    /// A request on `route` had its response head after `elapsed`; `served_bytes` came from
    /// the store.
    pub(super) fn answered(
        &self,
        route: Option<&str>,
        outcome: &Outcome,
        elapsed: Duration,
        served_bytes: Option<usize>,
    ) {
        let handles = self.handles().route(route);
        handles.requests(outcome.index()).increment(1);
        handles.duration(outcome.index()).record(elapsed.as_secs_f64());
        if let Some(bytes) = served_bytes {
            handles.served_bytes().increment(bytes as u64);
        }
        if let Outcome::Bypass(reason) = outcome {
            handles.bypasses(reason.index()).increment(1);
        }
    }

    /// An entry of `bytes` (as stored) was written for `route`.
    pub(super) fn stored(&self, route: &str, bytes: usize) {
        self.handles().route(Some(route)).stored_bytes().increment(bytes as u64);
    }

    /// `tags` tags were evicted.
    pub(super) fn evicted(&self, tags: usize) {
        self.handles().evictions.increment(tags as u64);
    }

    /// A store call `operation` ended as `call`, after `elapsed` when it was made.
    pub(super) fn store_call(&self, operation: &'static str, call: StoreCall, elapsed: Duration) {
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
    pub(super) fn breaker(&self, change: Change) {
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
    requests: [OnceLock<Counter>; Outcome::LABELS.len()],
    durations: [OnceLock<Histogram>; Outcome::LABELS.len()],
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
            counter!("tower_redis_cache_requests_total", "route" => self.route.clone(), "outcome" => Outcome::LABELS[outcome])
        })
    }

    fn duration(&self, outcome: usize) -> &Histogram {
        self.durations[outcome].get_or_init(|| {
            histogram!("tower_redis_cache_request_duration_seconds", "route" => self.route.clone(), "outcome" => Outcome::LABELS[outcome])
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
        self.errors[kind].get_or_init(|| {
            counter!("tower_redis_cache_store_errors_total", "operation" => self.operation, "kind" => ERROR_KINDS[kind])
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
