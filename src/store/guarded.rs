//! [`GuardedStore`]: any [`Store`] behind the guards the request path relies on.
//!
//! - **A timeout** on every call, so that a slow store adds at most `timeout` to a request.
//! - **The circuit breaker** ([`breaker`](super::breaker)): while the store is failing, calls
//!   are not made at all.
//! - **Failures become "no answer".** A call that fails, times out or is not made returns
//!   `None`; it is logged (at most once a second) and reported, and the request carries on
//!   without the cache.
//! - **Evictions are never lost.** A failed eviction is retried in the background until the
//!   store takes it, and until then [`eviction_pending`](GuardedStore::eviction_pending) says
//!   so for its tags, so that the request path bypasses the entries that carry them.
//!
//! What happens is reported through [`StoreEvents`], so that this module knows nothing of how
//! it is counted.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::breaker::{Admission, Breaker, BreakerSettings, Change, Health};
use super::{Lookup, Store, StoreError, TagVersion};
use crate::background;

/// The store operations, as [`StoreEvents`] names them.
pub(crate) const OPERATIONS: [&str; 9] = [
    "lookup",
    "ensure_tag_versions",
    "keep_tag_versions",
    "put",
    "evict_tags",
    "acquire_lease",
    "release_lease",
    "acquire_lease_then_lookup",
    "add_to_index",
];

/// How a store call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreCall {
    Answered,
    Failed,
    TimedOut,
    /// Not made: the circuit breaker was open.
    Skipped,
}

/// Where a [`GuardedStore`] reports what happened.
pub(crate) trait StoreEvents: Send + Sync + 'static {
    /// A call to `operation` ended as `call`, after `elapsed` (zero when it was not made).
    fn store_call(&self, operation: &'static str, call: StoreCall, elapsed: Duration);
    /// The circuit breaker opened or closed.
    fn breaker(&self, change: Change);
    /// The store took the eviction of `tags` tags.
    fn evicted(&self, tags: usize);
}

/// A [`Store`] behind a timeout, a circuit breaker and eviction retries.
pub(crate) struct GuardedStore {
    store: Arc<dyn Store>,
    timeout: Duration,
    breaker: Breaker,
    events: Arc<dyn StoreEvents>,
    failed_evictions: FailedEvictions,
    error_log: ErrorLog,
    /// Who this layer is when it holds a lease: drawn at random, so that releasing a lease that
    /// expired and went to another instance leaves it theirs.
    lease_holder: u64,
    /// How long a failed eviction waits for its retries before it reports failure.
    eviction_hold: Duration,
}

/// Tag keys whose eviction failed (store down or slow) and is being retried. Until it
/// succeeds, requests for entries carrying them bypass the cache: an entry stored before the
/// write may still be in the store, and serving it would be a stale read after the write.
#[derive(Default)]
struct FailedEvictions {
    any: AtomicBool,
    state: Mutex<FailedState>,
}

#[derive(Default)]
struct FailedState {
    tag_keys: HashSet<String>,
    retrying: bool,
}

const RETRY_MIN: Duration = Duration::from_millis(50);
/// How often a held eviction looks whether its retries landed.
const HOLD_POLL: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl GuardedStore {
    /// `store`, each call bounded by `timeout`, behind a breaker (`None`: every call is made).
    pub(crate) fn new(
        store: Arc<dyn Store>,
        timeout: Duration,
        breaker: Option<BreakerSettings>,
        events: Arc<dyn StoreEvents>,
    ) -> Self {
        Self {
            store,
            timeout,
            breaker: Breaker::new(breaker),
            events,
            failed_evictions: FailedEvictions::default(),
            error_log: ErrorLog::new(),
            lease_holder: fastrand::u64(..),
            eviction_hold: Duration::ZERO,
        }
    }

    /// Makes a failed eviction wait up to `hold` for its background retries to land before it
    /// reports failure (see `CacheLayerBuilder::eviction_hold`).
    pub(crate) fn with_eviction_hold(mut self, hold: Duration) -> Self {
        self.eviction_hold = hold;
        self
    }

    /// Runs one store operation under the timeout, unless the circuit breaker is open. `None`
    /// means it was not made, failed or timed out, which has been logged and reported.
    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        let Some(admission) = self.breaker.admit() else {
            self.events.store_call(operation, StoreCall::Skipped, Duration::ZERO);
            return None;
        };
        self.run_admitted(admission, operation, call).await
    }

    /// An eviction, made under the timeout even while the circuit breaker is open: skipping
    /// it would leave the entries it makes stale to other instances that still reach the
    /// store, and evictions are few.
    async fn run_eviction(&self, tag_keys: &[String]) -> Option<()> {
        let call = self.store.evict_tags(tag_keys);
        self.run_admitted(self.breaker.admit_always(), "evict_tags", call).await
    }

    async fn run_admitted<T>(
        &self,
        admission: Admission<'_>,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        let started = Instant::now();
        let span = tracing::debug_span!("cache_store", operation);
        let timed = tokio::time::timeout(self.timeout, call);
        let (result, health, call) = match tracing::Instrument::instrument(timed, span).await {
            Ok(Ok(value)) => (Ok(value), Health::Answered, StoreCall::Answered),
            Ok(Err(error)) if error.is_unavailable() => {
                (Err(error.to_string()), Health::Unavailable, StoreCall::Failed)
            }
            Ok(Err(error)) => (Err(error.to_string()), Health::Answered, StoreCall::Failed),
            Err(_) => (
                Err(format!("timed out after {:?}", self.timeout)),
                Health::Unavailable,
                StoreCall::TimedOut,
            ),
        };
        self.events.store_call(operation, call, started.elapsed());
        let change = admission.finish(health);
        match change {
            Change::Opened => tracing::error!(
                "cache store failing: circuit breaker open, requests skip the cache"
            ),
            Change::Closed => tracing::info!("cache store answering again: circuit breaker closed"),
            Change::None => {}
        }
        if change != Change::None {
            self.events.breaker(change);
        }
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                // At most one a second: an outage must not flood the logs (metrics count all).
                if let Some(suppressed) = self.error_log.may_log() {
                    tracing::warn!(operation, %error, suppressed, "cache store operation failed; carrying on without the cache");
                }
                None
            }
        }
    }

    /// See [`Store::lookup`].
    pub(crate) async fn lookup(&self, key: &str, tag_keys: &[String]) -> Option<Lookup> {
        self.run("lookup", self.store.lookup(key, tag_keys)).await
    }

    /// See [`Store::lookup_in_process`]: no timeout, since it makes no I/O, and nothing while
    /// the breaker is open (a tiered store's L1 may have missed invalidations meanwhile).
    pub(crate) fn lookup_in_process(&self, key: &str, tag_keys: &[String]) -> Option<Lookup> {
        if !self.breaker.is_closed() {
            return None;
        }
        let started = Instant::now();
        let found = self.store.lookup_in_process(key, tag_keys)?;
        self.events.store_call("lookup", StoreCall::Answered, started.elapsed());
        Some(found)
    }

    /// See [`Store::ensure_tag_versions`]; `None` also when the store answered for too few.
    pub(crate) async fn ensure_tag_versions(&self, tag_keys: &[String]) -> Option<Vec<TagVersion>> {
        let versions =
            self.run("ensure_tag_versions", self.store.ensure_tag_versions(tag_keys)).await?;
        (versions.len() == tag_keys.len()).then_some(versions)
    }

    /// See [`Store::keep_tag_versions`].
    pub(crate) async fn keep_tag_versions(&self, tag_keys: &[String]) {
        self.run("keep_tag_versions", self.store.keep_tag_versions(tag_keys)).await;
    }

    /// Stores `value` under `key`; `true` when the store took it.
    pub(crate) async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> bool {
        self.run("put", self.store.put(key, value, ttl)).await.is_some()
    }

    /// Takes the lease `key` (`None` when the store failed).
    pub(crate) async fn acquire_lease(&self, key: &str, ttl: Duration) -> Option<bool> {
        let call = self.store.acquire_lease(key, self.lease_holder, ttl);
        self.run("acquire_lease", call).await
    }

    /// Takes the lease `lease`, then looks the entry up (`None` when the store failed).
    pub(crate) async fn acquire_lease_then_lookup(
        &self,
        lease: &str,
        ttl: Duration,
        key: &str,
        tag_keys: &[String],
    ) -> Option<(bool, Lookup)> {
        let call =
            self.store.acquire_lease_then_lookup(lease, self.lease_holder, ttl, key, tag_keys);
        self.run("acquire_lease_then_lookup", call).await
    }

    /// Records `key` as one of the entries of the URL `index` names.
    pub(crate) async fn add_to_index(&self, index: &str, key: &str, ttl: Duration) {
        self.run("add_to_index", self.store.add_to_index(index, key, ttl)).await;
    }

    /// The store itself, for the handle's inspection, which wants its errors.
    pub(crate) fn unguarded(&self) -> &dyn Store {
        &*self.store
    }

    /// Gives the lease `key` back.
    pub(crate) async fn release_lease(&self, key: &str) {
        self.run("release_lease", self.store.release_lease(key, self.lease_holder)).await;
    }

    /// Evicts the tags `tag_keys`. On failure they are remembered, reported pending and retried
    /// in the background until the store takes the eviction; this waits up to the eviction
    /// hold for that before it reports the failure.
    pub(crate) async fn evict(self: &Arc<Self>, tag_keys: &[String]) -> Result<(), StoreError> {
        if tag_keys.is_empty() {
            return Ok(());
        }
        if self.run_eviction(tag_keys).await.is_some() {
            self.events.evicted(tag_keys.len());
            return Ok(());
        }
        self.remember_failed_evictions(tag_keys);
        // Another instance that still reaches the store would serve the evicted entries to
        // whoever reads after this write's response: hold the response while the retries may
        // still land (a store restarting, this process reconnecting late).
        let held_until = tokio::time::Instant::now() + self.eviction_hold;
        while tokio::time::Instant::now() < held_until {
            tokio::time::sleep(HOLD_POLL.min(self.eviction_hold)).await;
            if !self.eviction_pending(tag_keys) {
                return Ok(());
            }
        }
        Err(StoreError::msg("eviction failed; it is retried in the background"))
    }

    /// Whether any of `tag_keys` has an eviction that has not reached the store yet.
    pub(crate) fn eviction_pending(&self, tag_keys: &[String]) -> bool {
        if !self.failed_evictions.any.load(Ordering::Acquire) {
            return false;
        }
        let state = self.failed_evictions.lock();
        tag_keys.iter().any(|key| state.tag_keys.contains(key))
    }

    fn remember_failed_evictions(self: &Arc<Self>, tag_keys: &[String]) {
        let mut state = self.failed_evictions.lock();
        state.tag_keys.extend(tag_keys.iter().cloned());
        self.failed_evictions.any.store(true, Ordering::Release);
        if !state.retrying {
            state.retrying = background::spawn(Arc::clone(self).retry_failed_evictions());
        }
    }

    async fn retry_failed_evictions(self: Arc<Self>) {
        let mut delay = RETRY_MIN;
        loop {
            tokio::time::sleep(delay).await;
            let tag_keys: Vec<String> =
                self.failed_evictions.lock().tag_keys.iter().cloned().collect();
            if self.run_eviction(&tag_keys).await.is_none() {
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
            self.events.evicted(tag_keys.len());
            let mut state = self.failed_evictions.lock();
            for key in &tag_keys {
                state.tag_keys.remove(key);
            }
            if state.tag_keys.is_empty() {
                state.retrying = false;
                self.failed_evictions.any.store(false, Ordering::Release);
                tracing::info!("pending cache evictions reached the store");
                return;
            }
            delay = RETRY_MIN;
        }
    }
}

impl FailedEvictions {
    fn lock(&self) -> std::sync::MutexGuard<'_, FailedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Rate-limits store error logs to one a second, counting the ones left out.
struct ErrorLog {
    started: Instant,
    /// The second (since `started`) an error was last logged.
    logged_at: AtomicU64,
    suppressed: AtomicU64,
}

impl ErrorLog {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            logged_at: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether an error may be logged now; if so, how many were left out since the last one.
    fn may_log(&self) -> Option<u64> {
        let second = self.started.elapsed().as_secs();
        let last = self.logged_at.load(Ordering::Relaxed);
        if last == second
            || self
                .logged_at
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;

    use super::*;

    /// How the fake store answers.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        Answers,
        /// Unreachable: the error a store gives when it is down.
        Fails,
        /// Never answers.
        Stalls,
        /// Answers with an error of its own (a full Redis refusing writes).
        Refuses,
    }

    struct FakeStore {
        mode: Mutex<Mode>,
        calls: AtomicUsize,
        evicted: Mutex<Vec<String>>,
        /// The most tag versions it answers `ensure_tag_versions` with.
        versions: AtomicUsize,
    }

    impl FakeStore {
        fn new(mode: Mode) -> Arc<Self> {
            Arc::new(Self {
                mode: Mutex::new(mode),
                calls: AtomicUsize::new(0),
                evicted: Mutex::new(Vec::new()),
                versions: AtomicUsize::new(usize::MAX),
            })
        }

        fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        async fn answer<T>(&self, value: T) -> Result<T, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mode = *self.mode.lock().unwrap();
            match mode {
                Mode::Answers => Ok(value),
                Mode::Fails => Err(StoreError::msg("connection refused").unavailable()),
                Mode::Stalls => std::future::pending().await,
                Mode::Refuses => Err(StoreError::msg("OOM command not allowed")),
            }
        }
    }

    #[async_trait]
    impl Store for FakeStore {
        async fn lookup(&self, _: &str, tags: &[String]) -> Result<Lookup, StoreError> {
            self.answer(Lookup { entry: None, versions: vec![None; tags.len()] }).await
        }

        async fn ensure_tag_versions(
            &self,
            tags: &[String],
        ) -> Result<Vec<TagVersion>, StoreError> {
            let n = tags.len().min(self.versions.load(Ordering::SeqCst));
            self.answer((0..n).map(|_| super::super::fresh_version()).collect()).await
        }

        async fn put(&self, _: &str, _: Bytes, _: Duration) -> Result<(), StoreError> {
            self.answer(()).await
        }

        async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
            self.answer(()).await?;
            self.evicted.lock().unwrap().extend(tags.iter().cloned());
            Ok(())
        }
    }

    /// What the guarded store reported, in order.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Event>>);

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Call(&'static str, StoreCall),
        Breaker(Change),
        Evicted(usize),
    }

    impl StoreEvents for Recorded {
        fn store_call(&self, operation: &'static str, call: StoreCall, _: Duration) {
            self.0.lock().unwrap().push(Event::Call(operation, call));
        }

        fn breaker(&self, change: Change) {
            self.0.lock().unwrap().push(Event::Breaker(change));
        }

        fn evicted(&self, tags: usize) {
            self.0.lock().unwrap().push(Event::Evicted(tags));
        }
    }

    impl Recorded {
        fn take(&self) -> Vec<Event> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    const TIMEOUT: Duration = Duration::from_millis(100);
    const OPEN_FOR: Duration = Duration::from_secs(2);

    fn guarded(store: &Arc<FakeStore>, breaker: bool) -> (Arc<GuardedStore>, Arc<Recorded>) {
        let events = Arc::new(Recorded::default());
        let breaker = breaker.then_some(BreakerSettings { failures: 3, open_for: OPEN_FOR });
        let store: Arc<dyn Store> = Arc::clone(store) as Arc<dyn Store>;
        let events_dyn: Arc<dyn StoreEvents> = Arc::clone(&events) as Arc<dyn StoreEvents>;
        (Arc::new(GuardedStore::new(store, TIMEOUT, breaker, events_dyn)), events)
    }

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_is_no_answer_until_the_breaker_opens_then_is_not_called() {
        let store = FakeStore::new(Mode::Fails);
        let (guarded, events) = guarded(&store, true);
        for _ in 0..3 {
            assert!(guarded.lookup("k", &[]).await.is_none());
        }
        let failed = Event::Call("lookup", StoreCall::Failed);
        let opened = Event::Breaker(Change::Opened);
        assert_eq!(events.take(), [failed.clone(), failed.clone(), failed, opened]);

        // Open: nothing reaches the store, and each call says it was skipped.
        assert!(!guarded.put("k", Bytes::new(), TIMEOUT).await);
        assert_eq!(store.calls(), 3);
        assert_eq!(events.take(), [Event::Call("put", StoreCall::Skipped)]);

        // After `open_for`, one call probes; the store is back, so the breaker closes.
        store.set(Mode::Answers);
        tokio::time::advance(OPEN_FOR).await;
        assert!(guarded.lookup("k", &[]).await.is_some());
        let answered = Event::Call("lookup", StoreCall::Answered);
        assert_eq!(events.take(), [answered, Event::Breaker(Change::Closed)]);
        assert!(guarded.lookup("k", &[]).await.is_some());
        assert_eq!(store.calls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalling_store_times_out_and_counts_as_unavailable() {
        let store = FakeStore::new(Mode::Stalls);
        let (guarded, events) = guarded(&store, true);
        let started = tokio::time::Instant::now();
        assert!(guarded.lookup("k", &[]).await.is_none());
        assert_eq!(started.elapsed(), TIMEOUT, "given up at the timeout, not before or after");
        assert_eq!(events.take(), [Event::Call("lookup", StoreCall::TimedOut)]);
        for _ in 0..2 {
            assert!(!guarded.put("k", Bytes::new(), TIMEOUT).await);
        }
        let events = events.take();
        assert_eq!(events.last(), Some(&Event::Breaker(Change::Opened)), "{events:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_store_is_no_answer_but_never_opens_the_breaker() {
        let store = FakeStore::new(Mode::Refuses);
        let (guarded, events) = guarded(&store, true);
        for _ in 0..10 {
            assert!(!guarded.put("k", Bytes::new(), TIMEOUT).await);
        }
        assert_eq!(store.calls(), 10, "every call is made");
        assert_eq!(events.take(), vec![Event::Call("put", StoreCall::Failed); 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_breaker_every_call_is_made() {
        let store = FakeStore::new(Mode::Fails);
        let (guarded, events) = guarded(&store, false);
        for _ in 0..10 {
            assert!(guarded.lookup("k", &[]).await.is_none());
        }
        assert_eq!(store.calls(), 10);
        assert!(!events.take().iter().any(|e| matches!(e, Event::Breaker(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_tag_versions_are_no_answer() {
        let store = FakeStore::new(Mode::Answers);
        store.versions.store(1, Ordering::SeqCst);
        let (guarded, _) = guarded(&store, true);
        assert_eq!(guarded.ensure_tag_versions(&tags(&["t:a"])).await.map(|v| v.len()), Some(1));
        assert!(guarded.ensure_tag_versions(&tags(&["t:a", "t:b"])).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_eviction_is_pending_and_retried_until_the_store_takes_it() {
        let store = FakeStore::new(Mode::Fails);
        let (guarded, events) = guarded(&store, false);
        assert!(guarded.evict(&tags(&["t:a"])).await.is_err());
        assert!(guarded.evict(&tags(&["t:b"])).await.is_err());
        assert!(guarded.eviction_pending(&tags(&["t:x", "t:a"])));
        assert!(!guarded.eviction_pending(&tags(&["t:x"])));
        events.take();

        // Still failing: retried with a growing delay, still pending.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(guarded.eviction_pending(&tags(&["t:b"])));
        assert!(store.evicted.lock().unwrap().is_empty());
        let retries = events.take();
        assert!(retries.len() >= 3, "{retries:?}");
        assert!(retries.iter().all(|e| *e == Event::Call("evict_tags", StoreCall::Failed)));

        // Back: the retry takes both tags at once, and nothing is pending any more.
        store.set(Mode::Answers);
        tokio::time::sleep(RETRY_MAX).await;
        assert!(!guarded.eviction_pending(&tags(&["t:a", "t:b"])));
        let mut evicted = store.evicted.lock().unwrap().clone();
        evicted.sort();
        assert_eq!(evicted, ["t:a", "t:b"]);
        assert_eq!(events.take().last(), Some(&Event::Evicted(2)));

        // The retry task has ended: a new failure starts another one.
        store.set(Mode::Fails);
        assert!(guarded.evict(&tags(&["t:c"])).await.is_err());
        store.set(Mode::Answers);
        tokio::time::sleep(RETRY_MAX).await;
        assert!(!guarded.eviction_pending(&tags(&["t:c"])));
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_eviction_is_reported_and_an_empty_one_is_not_made() {
        let store = FakeStore::new(Mode::Answers);
        let (guarded, events) = guarded(&store, true);
        guarded.evict(&[]).await.unwrap();
        assert_eq!(store.calls(), 0);
        guarded.evict(&tags(&["t:a", "t:b"])).await.unwrap();
        let answered = Event::Call("evict_tags", StoreCall::Answered);
        assert_eq!(events.take(), [answered, Event::Evicted(2)]);
    }
}
