//! Every request is reported once, as one outcome, and the three views of what the layer did
//! agree: the counters of `CacheHandle::stats` (`hits`, `misses`, `stale`, `bypasses`), its
//! latency summaries (`hit_latency`, `miss_latency`), and the metrics
//! (`tower_redis_cache_requests_total`, `tower_redis_cache_request_duration_seconds` and
//! `tower_redis_cache_bypasses_total`).
//!
//! How each outcome counts:
//!
//! | Outcome | `Stats` | latency | `requests_total{outcome}` |
//! |---|---|---|---|
//! | a fresh entry served | `hits` | `hit_latency` | `hit` |
//! | a miss that waited for another request to fill the entry, then served it | `hits` | `hit_latency` | `collapsed` |
//! | a miss | `misses` | `miss_latency` | `miss` |
//! | a stored entry revalidated with the inner service, which answered `304` | `misses` | `miss_latency` | `revalidated` |
//! | a stale entry served (`stale-while-revalidate`, `stale-if-error`) | `stale` | none | `stale` |
//! | the cache stayed out of the way | `bypasses` (and `bypasses_total{reason}`) | none | `bypass` |
//!
//! Each request has one sample in `request_duration_seconds`, under its outcome. The
//! background refresh of a `stale-while-revalidate` entry is not a request: it counts nowhere.
//!
//! Each outcome is checked on its own, as the change it makes to every figure (exactly the
//! expected ones move, by the expected amounts), and `a_mix_of_every_outcome_adds_up` sends
//! them all and checks the totals.
//!
//! Like `tests/metrics.rs`, each test installs its recorder for its own thread and runs on a
//! current-thread runtime, so tests running side by side do not see each other's metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::{Notify, Semaphore};
use tower::util::MapRequestLayer;
use tower::ServiceExt;
use tower_redis_cache::clock::ManualClock;
use tower_redis_cache::store::{Lookup, TagVersion};
use tower_redis_cache::{CacheHandle, CacheLayer, MemoryStore, Rule, Stats, Store, StoreError};

/// How long the `/swr` and `/sie` entries are fresh.
const TTL: Duration = Duration::from_secs(60);
/// Just past [`TTL`], within their stale windows.
const PAST_TTL: Duration = Duration::from_secs(61);
/// The ETag of `/reval`'s response.
const REVAL_ETAG: &str = "\"r1\"";

const REQUESTS: &str = "tower_redis_cache_requests_total";
const DURATIONS: &str = "tower_redis_cache_request_duration_seconds";
const BYPASSES: &str = "tower_redis_cache_bypasses_total";

/// Every `outcome` label, and every bypass `reason` label, the layer reports.
const OUTCOMES: [&str; 6] = ["hit", "miss", "stale", "revalidated", "collapsed", "bypass"];
const REASONS: [&str; 10] = [
    "no_rule",
    "bypass_rule",
    "mutation",
    "credentials",
    "unidentified_user",
    "ambiguous_path",
    "bypass_header",
    "eviction_pending",
    "unread_message",
    "request_body",
];

// ---------------------------------------------------------------------------------------------
// The counts: the three views, as numbers
// ---------------------------------------------------------------------------------------------

/// What moved, in the three views: `Stats` counters and latency sample counts, and the
/// metrics by `(route, outcome)` or `(route, reason)`. Zeros are left out of the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Counts {
    hits: u64,
    misses: u64,
    stale: u64,
    bypasses: u64,
    hit_latency: u64,
    miss_latency: u64,
    /// `requests_total`, by `(route, outcome)`.
    requests: BTreeMap<(String, String), u64>,
    /// `request_duration_seconds` sample counts, by `(route, outcome)`.
    durations: BTreeMap<(String, String), u64>,
    /// `bypasses_total`, by `(route, reason)`.
    reasons: BTreeMap<(String, String), u64>,
}

/// No change at all, to add the expected outcomes to.
fn nothing() -> Counts {
    Counts::default()
}

impl Counts {
    /// One request answered `outcome` on `route`: one `requests_total` and one duration sample.
    fn request(mut self, route: &str, outcome: &str) -> Self {
        let series = (route.to_owned(), outcome.to_owned());
        *self.requests.entry(series.clone()).or_default() += 1;
        *self.durations.entry(series).or_default() += 1;
        self
    }

    /// A fresh entry served.
    fn hit(mut self, route: &str) -> Self {
        self.hits += 1;
        self.hit_latency += 1;
        self.request(route, "hit")
    }

    /// A miss that waited for another request to fill the entry, and served it: a hit.
    fn collapsed(mut self, route: &str) -> Self {
        self.hits += 1;
        self.hit_latency += 1;
        self.request(route, "collapsed")
    }

    /// A miss.
    fn miss(mut self, route: &str) -> Self {
        self.misses += 1;
        self.miss_latency += 1;
        self.request(route, "miss")
    }

    /// A stored entry revalidated with the inner service (`304`): a miss.
    fn revalidated(mut self, route: &str) -> Self {
        self.misses += 1;
        self.miss_latency += 1;
        self.request(route, "revalidated")
    }

    /// A stale entry served: neither a hit nor a miss.
    fn stale(mut self, route: &str) -> Self {
        self.stale += 1;
        self.request(route, "stale")
    }

    /// The cache stayed out of the way, for `reason`.
    fn bypass(mut self, route: &str, reason: &str) -> Self {
        self.bypasses += 1;
        *self.reasons.entry((route.to_owned(), reason.to_owned())).or_default() += 1;
        self.request(route, "bypass")
    }

    /// Every figure, by a name that says where it comes from.
    fn figures(&self) -> BTreeMap<String, u64> {
        let mut figures = BTreeMap::new();
        figures.insert("Stats.hits".to_owned(), self.hits);
        figures.insert("Stats.misses".to_owned(), self.misses);
        figures.insert("Stats.stale".to_owned(), self.stale);
        figures.insert("Stats.bypasses".to_owned(), self.bypasses);
        figures.insert("Stats.hit_latency.count".to_owned(), self.hit_latency);
        figures.insert("Stats.miss_latency.count".to_owned(), self.miss_latency);
        for ((route, outcome), n) in &self.requests {
            figures.insert(format!("{REQUESTS}{{route={route:?},outcome={outcome:?}}}"), *n);
        }
        for ((route, outcome), n) in &self.durations {
            let name = format!("{DURATIONS}{{route={route:?},outcome={outcome:?}}} samples");
            figures.insert(name, *n);
        }
        for ((route, reason), n) in &self.reasons {
            figures.insert(format!("{BYPASSES}{{route={route:?},reason={reason:?}}}"), *n);
        }
        figures
    }

    /// Adds what `other` counted.
    fn add(&mut self, other: &Counts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.stale += other.stale;
        self.bypasses += other.bypasses;
        self.hit_latency += other.hit_latency;
        self.miss_latency += other.miss_latency;
        for (mine, theirs) in [
            (&mut self.requests, &other.requests),
            (&mut self.durations, &other.durations),
            (&mut self.reasons, &other.reasons),
        ] {
            for (series, n) in theirs {
                *mine.entry(series.clone()).or_default() += n;
            }
        }
    }

    /// `requests_total` summed over routes, for `outcome`.
    fn requests_for(&self, outcome: &str) -> u64 {
        self.requests.iter().filter(|((_, o), _)| o == outcome).map(|(_, n)| n).sum()
    }
}

/// The figures that differ between what was seen and what was expected, one line each.
fn differences(seen: &Counts, expected: &Counts) -> Vec<String> {
    let (seen, expected) = (seen.figures(), expected.figures());
    let mut names: Vec<&String> = seen.keys().chain(expected.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (s, e) = (seen.get(name).copied(), expected.get(name).copied());
            (s.unwrap_or(0) != e.unwrap_or(0))
                .then(|| format!("{name}: seen {}, expected {}", s.unwrap_or(0), e.unwrap_or(0)))
        })
        .collect()
}

/// Checks that exactly the `expected` figures moved, by the expected amounts.
fn assert_moved(seen: &Counts, expected: &Counts, what: &str) {
    let differences = differences(seen, expected);
    assert!(differences.is_empty(), "{what}:\n  {}", differences.join("\n  "));
}

/// How the totals of `counts` disagree with each other and with the `sent` requests, one line
/// per broken rule; empty when they all agree.
fn disagreements(counts: &Counts, sent: u64) -> Vec<String> {
    let mut broken = Vec::new();
    let mut check = |rule: &str, left: u64, right: u64| {
        if left != right {
            broken.push(format!("{rule}: {left} != {right}"));
        }
    };
    let c = counts;
    let requests = |outcome| c.requests_for(outcome);
    let reasons: u64 = c.reasons.values().sum();
    check(
        "Stats: hits + misses + stale + bypasses == requests sent",
        c.hits + c.misses + c.stale + c.bypasses,
        sent,
    );
    check("Stats: hit_latency.count == hits", c.hit_latency, c.hits);
    check("Stats: miss_latency.count == misses", c.miss_latency, c.misses);
    check("sum of requests_total == requests sent", c.requests.values().sum(), sent);
    check(
        "sum of request_duration_seconds samples == requests sent",
        c.durations.values().sum(),
        sent,
    );
    check(
        "requests_total{hit} + requests_total{collapsed} == Stats.hits",
        requests("hit") + requests("collapsed"),
        c.hits,
    );
    check(
        "requests_total{miss} + requests_total{revalidated} == Stats.misses",
        requests("miss") + requests("revalidated"),
        c.misses,
    );
    check("requests_total{stale} == Stats.stale", requests("stale"), c.stale);
    check("requests_total{bypass} == Stats.bypasses", requests("bypass"), c.bypasses);
    check("sum of bypasses_total == Stats.bypasses", reasons, c.bypasses);
    for series in c.requests.keys().chain(c.durations.keys()) {
        let (route, outcome) = series;
        check(
            &format!("{DURATIONS} samples == {REQUESTS} for route={route:?},outcome={outcome:?}"),
            c.durations.get(series).copied().unwrap_or(0),
            c.requests.get(series).copied().unwrap_or(0),
        );
    }
    broken
}

// ---------------------------------------------------------------------------------------------
// The store, the application and the layer
// ---------------------------------------------------------------------------------------------

/// The in-process store, whose evictions can be made to fail (answered with an error, which
/// does not open the circuit breaker).
#[derive(Clone, Default)]
struct FlakyStore {
    inner: Arc<MemoryStore>,
    fail_evictions: Arc<AtomicBool>,
}

#[async_trait]
impl Store for FlakyStore {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        self.inner.lookup(key, tags).await
    }
    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        self.inner.ensure_tag_versions(tags).await
    }
    async fn keep_tag_versions(&self, tags: &[String]) -> Result<(), StoreError> {
        self.inner.keep_tag_versions(tags).await
    }
    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put(key, value, ttl).await
    }
    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        if self.fail_evictions.load(Ordering::SeqCst) {
            return Err(StoreError::msg("evictions refused"));
        }
        self.inner.evict_tags(tags).await
    }
    async fn acquire_lease(
        &self,
        key: &str,
        holder: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        self.inner.release_lease(key, holder).await
    }
    async fn acquire_lease_then_lookup(
        &self,
        lease: &str,
        holder: u64,
        ttl: Duration,
        key: &str,
        tags: &[String],
    ) -> Result<(bool, Lookup), StoreError> {
        self.inner.acquire_lease_then_lookup(lease, holder, ttl, key, tags).await
    }
}

/// What a request gave the client.
#[derive(Debug)]
struct Answer {
    x_cache: String,
    cache_status: String,
    body: Bytes,
}

/// Sends `request` and reads the whole body (reading it to its end is what stores a miss).
async fn exchange(router: Router, request: Request<Body>) -> Answer {
    let response = router.oneshot(request).await.unwrap();
    let (x_cache, cache_status) = {
        let header = |name: &str| {
            response.headers().get(name).map_or(String::new(), |v| v.to_str().unwrap().to_owned())
        };
        (header("x-cache"), header("cache-status"))
    };
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer { x_cache, cache_status, body }
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// The layer over an application with one route per outcome, its recorder, and the handles
/// the tests move it with.
struct Fixture {
    router: Router,
    handle: CacheHandle,
    clock: ManualClock,
    fail_evictions: Arc<AtomicBool>,
    /// `/slow` waits for a permit here before it answers...
    gate: Arc<Semaphore>,
    /// ... and says here that it was called.
    entered: Arc<Notify>,
    /// The requests the application saw: `METHOD path`, and ` if-none-match` when
    /// conditional.
    inner_calls: Arc<Mutex<Vec<String>>>,
    snapshotter: Snapshotter,
    _recorder: metrics::LocalRecorderGuard<'static>,
    /// The `Stats` at the last [`Fixture::delta`].
    last_stats: Stats,
    /// Everything every [`Fixture::delta`] saw.
    total: Counts,
    /// How many requests the test sent through the layer.
    sent: u64,
}

impl Fixture {
    fn new() -> Self {
        // Leaked so that the guard, which borrows it, can live in the fixture.
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        let snapshotter = recorder.snapshotter();
        let guard = metrics::set_default_local_recorder(recorder);

        let store = FlakyStore::default();
        let fail_evictions = Arc::clone(&store.fail_evictions);
        let clock =
            ManualClock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let cache = CacheLayer::builder(store)
            // A timed-out store call fails open, which would turn a hit into a miss.
            .store_timeout(Duration::from_secs(2))
            .clock(clock.clone())
            .route("/fresh/{id}", Rule::get().tag("item:{id}"))
            .route("/fresh/{id}", Rule::put().evicts(["item:{id}"]))
            .route("/slow", Rule::get().tag("slow"))
            .route("/reval", Rule::get())
            .route("/swr", Rule::get().ttl(TTL).stale_while_revalidate(Duration::from_secs(30)))
            .route("/sie", Rule::get().ttl(TTL).stale_if_error(Duration::from_secs(30)))
            .route("/me", Rule::get().per_user())
            .route("/demo.Users/GetUser", Rule::grpc())
            .bypass("/auth/{*rest}")
            .build()
            .unwrap();
        let handle = cache.handle();

        let gate = Arc::new(Semaphore::new(0));
        let entered = Arc::new(Notify::new());
        let swr_calls = Arc::new(AtomicUsize::new(0));
        let inner_calls = Arc::new(Mutex::new(Vec::new()));
        let record = {
            let inner_calls = Arc::clone(&inner_calls);
            move |request: Request<Body>| {
                let conditional = if request.headers().contains_key(IF_NONE_MATCH) {
                    " if-none-match"
                } else {
                    ""
                };
                let call = format!("{} {}{conditional}", request.method(), request.uri().path());
                inner_calls.lock().unwrap().push(call);
                request
            }
        };
        let slow = {
            let (gate, entered) = (Arc::clone(&gate), Arc::clone(&entered));
            move || async move {
                entered.notify_one();
                drop(gate.acquire().await.unwrap());
                "slow"
            }
        };
        let swr = move || {
            let n = swr_calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { format!("swr {n}") }
        };
        let reval = |headers: HeaderMap| async move {
            if headers.get(IF_NONE_MATCH).is_some_and(|v| v == REVAL_ETAG) {
                (StatusCode::NOT_MODIFIED, [(ETAG, REVAL_ETAG)]).into_response()
            } else {
                ([(CACHE_CONTROL, "no-cache"), (ETAG, REVAL_ETAG)], "reval").into_response()
            }
        };
        let sie = |headers: HeaderMap| async move {
            if headers.contains_key("x-fail") {
                (StatusCode::SERVICE_UNAVAILABLE, "down")
            } else {
                (StatusCode::OK, "sie")
            }
        };
        let router = Router::new()
            .route(
                "/fresh/{id}",
                get(|| async { "fresh" }).put(|| async { StatusCode::NO_CONTENT }),
            )
            .route("/slow", get(slow))
            .route("/reval", get(reval))
            .route("/swr", get(swr))
            .route("/sie", get(sie))
            .route("/me", get(|| async { "me" }))
            .route("/auth/{*rest}", get(|| async { "auth" }))
            .route("/demo.Users/GetUser", post(|| async { "a gRPC answer" }))
            .route("/nowhere", get(|| async { "nowhere" }).post(|| async { StatusCode::CREATED }))
            .layer(MapRequestLayer::new(record))
            .layer(cache);

        Self {
            router,
            handle,
            clock,
            fail_evictions,
            gate,
            entered,
            inner_calls,
            snapshotter,
            _recorder: guard,
            last_stats: Stats::default(),
            total: Counts::default(),
            sent: 0,
        }
    }

    /// Sends `request`, reads its body, and gives the background work (the store write, a
    /// refresh) time to land, as `tests/metrics.rs` does.
    async fn send(&mut self, request: Request<Body>) -> Answer {
        self.sent += 1;
        let answer = exchange(self.router.clone(), request).await;
        settle().await;
        answer
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send(get_req(path)).await
    }

    /// Starts `request` in its own task, read to its end there, as a separate client would.
    fn spawn(&mut self, request: Request<Body>) -> tokio::task::JoinHandle<Answer> {
        self.sent += 1;
        tokio::spawn(exchange(self.router.clone(), request))
    }

    /// Sends two `GET /slow` that overlap: the first reaches the application and is held there
    /// until the second waits on the miss lock. Returns the two answers, first one first.
    async fn collapse(&mut self) -> (Answer, Answer) {
        let first = self.spawn(get_req("/slow"));
        self.entered.notified().await;
        let second = self.spawn(get_req("/slow"));
        // Time for the second to miss and join the first one's flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.gate.add_permits(1);
        let answers = (first.await.unwrap(), second.await.unwrap());
        settle().await;
        answers
    }

    /// The requests the application saw since the last call.
    fn inner_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner_calls.lock().unwrap())
    }

    /// Waits (a second at most) until the application has seen `call`; the calls it saw are
    /// left for [`inner_calls`](Self::inner_calls).
    async fn wait_for_inner_call(&self, call: &str) {
        for _ in 0..100 {
            if self.inner_calls.lock().unwrap().iter().any(|c| c == call) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the application never saw {call}");
    }

    /// What moved in the three views since the last call (or since the fixture was made).
    fn delta(&mut self) -> Counts {
        let stats = self.handle.stats();
        let last = std::mem::replace(&mut self.last_stats, stats);
        let mut counts = Counts {
            hits: stats.hits - last.hits,
            misses: stats.misses - last.misses,
            stale: stats.stale - last.stale,
            bypasses: stats.bypasses - last.bypasses,
            hit_latency: stats.hit_latency.count - last.hit_latency.count,
            miss_latency: stats.miss_latency.count - last.miss_latency.count,
            ..Counts::default()
        };
        // Taking a snapshot resets the recorder's counters and histograms: it holds what
        // happened since the last one.
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let label = |name: &str| {
                key.labels()
                    .find(|l| l.key() == name)
                    .map_or(String::new(), |l| l.value().to_owned())
            };
            let (map, second, n) = match (key.name(), value) {
                (REQUESTS, DebugValue::Counter(n)) => (&mut counts.requests, "outcome", n),
                (DURATIONS, DebugValue::Histogram(samples)) => {
                    (&mut counts.durations, "outcome", samples.len() as u64)
                }
                (BYPASSES, DebugValue::Counter(n)) => (&mut counts.reasons, "reason", n),
                _ => continue,
            };
            if n > 0 {
                *map.entry((label("route"), label(second))).or_default() += n;
            }
        }
        self.total.add(&counts);
        counts
    }

    /// What moved in the three views since the fixture was made.
    fn total(&mut self) -> Counts {
        self.delta();
        self.total.clone()
    }
}

/// Gives the work a response leaves behind (the store write, a refresh) time to land.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// A request the cache must stay out of, the route it is reported under, and why.
struct BypassCase {
    what: &'static str,
    request: Request<Body>,
    route: &'static str,
    reason: &'static str,
}

/// One request for every bypass reason but `eviction_pending` (which needs a failed eviction
/// first: [`eviction_pending`]), two for the reasons that come about in two ways.
fn bypass_cases() -> Vec<BypassCase> {
    let request = |method: Method, path: &str, headers: &[(&str, &str)], body: &'static [u8]| {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::from(body)).unwrap()
    };
    let case = |what, request, route, reason| BypassCase { what, request, route, reason };
    // An empty gRPC message: no compression flag, length 0.
    let grpc_frame: &[u8] = &[0, 0, 0, 0, 0];
    vec![
        case("GET without a rule", get_req("/nowhere"), "unmatched", "no_rule"),
        case("GET on a bypass pattern", get_req("/auth/me"), "/auth/{*rest}", "bypass_rule"),
        case(
            "PUT with a mutation rule",
            request(Method::PUT, "/fresh/3", &[], b""),
            "/fresh/{id}",
            "mutation",
        ),
        case(
            "POST without a rule",
            request(Method::POST, "/nowhere", &[], b""),
            "unmatched",
            "mutation",
        ),
        case(
            "GET with Authorization on a default-scope route",
            request(Method::GET, "/fresh/1", &[(AUTHORIZATION.as_str(), "Bearer a")], b""),
            "/fresh/{id}",
            "credentials",
        ),
        case("GET of a per-user route without a user", get_req("/me"), "/me", "unidentified_user"),
        case(
            "GET of a path with an encoded slash",
            get_req("/fresh/a%2Fb"),
            "/fresh/{id}",
            "ambiguous_path",
        ),
        case(
            "GET of a path with matrix parameters",
            get_req("/fresh/a;b"),
            "/fresh/{id}",
            "ambiguous_path",
        ),
        case(
            "GET with X-Original-URL",
            request(Method::GET, "/fresh/1", &[("x-original-url", "/admin")], b""),
            "/fresh/{id}",
            "bypass_header",
        ),
        case(
            "GET with a body",
            request(Method::GET, "/fresh/1", &[], b"q=1"),
            "/fresh/{id}",
            "request_body",
        ),
        case(
            "gRPC call through the plain layer",
            request(
                Method::POST,
                "/demo.Users/GetUser",
                &[(CONTENT_TYPE.as_str(), "application/grpc")],
                grpc_frame,
            ),
            "/demo.Users/GetUser",
            "unread_message",
        ),
    ]
}

/// Makes `GET /fresh/2` an `eviction_pending` bypass: evicting its tag fails. Returns what
/// moved, and turns evictions back on.
async fn eviction_pending(fx: &mut Fixture) -> (Answer, Counts) {
    fx.fail_evictions.store(true, Ordering::SeqCst);
    let evicted = fx.handle.evict_tags(["item:2"]).await;
    assert!(evicted.is_err(), "the store refused the eviction");
    fx.delta();
    let answer = fx.get("/fresh/2").await;
    let moved = fx.delta();
    // The eviction is retried in the background until it lands: no request, counted nowhere.
    fx.fail_evictions.store(false, Ordering::SeqCst);
    (answer, moved)
}

// ---------------------------------------------------------------------------------------------
// Each outcome on its own
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_miss_counts_as_a_miss() {
    let mut fx = Fixture::new();
    let miss = fx.get("/fresh/1").await;
    assert_eq!((miss.x_cache.as_str(), &miss.body[..]), ("MISS", &b"fresh"[..]));
    assert_eq!(fx.inner_calls(), ["GET /fresh/1"]);
    assert_moved(&fx.delta(), &nothing().miss("/fresh/{id}"), "a miss");
}

#[tokio::test]
async fn a_hit_counts_as_a_hit() {
    let mut fx = Fixture::new();
    fx.get("/fresh/1").await;
    fx.inner_calls();
    fx.delta();

    let hit = fx.get("/fresh/1").await;
    assert_eq!((hit.x_cache.as_str(), &hit.body[..]), ("HIT", &b"fresh"[..]));
    assert!(fx.inner_calls().is_empty(), "a hit does not reach the application");
    assert_moved(&fx.delta(), &nothing().hit("/fresh/{id}"), "a hit");
}

#[tokio::test]
async fn a_collapsed_miss_counts_as_a_hit() {
    let mut fx = Fixture::new();
    let (first, second) = fx.collapse().await;
    assert_eq!((first.x_cache.as_str(), &first.body[..]), ("MISS", &b"slow"[..]));
    assert_eq!((second.x_cache.as_str(), &second.body[..]), ("HIT", &b"slow"[..]));
    assert!(second.cache_status.contains("collapsed"), "{}", second.cache_status);
    assert_eq!(fx.inner_calls(), ["GET /slow"], "one call for both");
    // The first request is the miss the second one waited for.
    let expected = nothing().miss("/slow").collapsed("/slow");
    assert_moved(&fx.delta(), &expected, "a miss and the miss collapsed onto it");
}

#[tokio::test]
async fn a_revalidation_the_application_answers_304_counts_as_a_miss() {
    let mut fx = Fixture::new();
    let stored = fx.get("/reval").await;
    assert!(stored.cache_status.contains("stored"), "{}", stored.cache_status);
    fx.inner_calls();
    fx.delta();

    // `no-cache`: the entry is never used without asking the application.
    let revalidated = fx.get("/reval").await;
    assert_eq!(
        (revalidated.x_cache.as_str(), &revalidated.body[..]),
        ("REVALIDATED", &b"reval"[..])
    );
    assert_eq!(fx.inner_calls(), ["GET /reval if-none-match"]);
    assert_moved(&fx.delta(), &nothing().revalidated("/reval"), "a revalidation");
}

#[tokio::test]
async fn stale_while_revalidate_counts_as_stale_and_its_refresh_as_nothing() {
    let mut fx = Fixture::new();
    fx.get("/swr").await;
    fx.clock.advance(PAST_TTL);
    fx.inner_calls();
    fx.delta();

    let stale = fx.get("/swr").await;
    assert_eq!((stale.x_cache.as_str(), &stale.body[..]), ("STALE", &b"swr 1"[..]));
    assert!(
        stale.cache_status.ends_with("detail=stale-while-revalidate"),
        "{}",
        stale.cache_status
    );
    // The refresh ran (and stored its entry) before the figures are read.
    fx.wait_for_inner_call("GET /swr").await;
    settle().await;
    assert_eq!(fx.inner_calls(), ["GET /swr"], "one background refresh");
    assert_moved(&fx.delta(), &nothing().stale("/swr"), "a stale-while-revalidate answer");

    let refreshed = fx.get("/swr").await;
    assert_eq!((refreshed.x_cache.as_str(), &refreshed.body[..]), ("HIT", &b"swr 2"[..]));
    assert_moved(&fx.delta(), &nothing().hit("/swr"), "a hit on the refreshed entry");
}

#[tokio::test]
async fn stale_if_error_counts_as_stale_only() {
    let mut fx = Fixture::new();
    fx.get("/sie").await;
    fx.clock.advance(PAST_TTL);
    fx.inner_calls();
    fx.delta();

    let failing = Request::get("/sie").header("x-fail", "1").body(Body::empty()).unwrap();
    let stale = fx.send(failing).await;
    assert_eq!((stale.x_cache.as_str(), &stale.body[..]), ("STALE", &b"sie"[..]));
    assert!(stale.cache_status.ends_with("detail=stale-if-error"), "{}", stale.cache_status);
    assert_eq!(fx.inner_calls(), ["GET /sie"], "the application was asked, and failed");
    assert_moved(&fx.delta(), &nothing().stale("/sie"), "a stale-if-error answer");
}

#[tokio::test]
async fn every_bypass_reason_counts_once() {
    let mut fx = Fixture::new();
    fx.delta();
    let mut failures = Vec::new();
    for case in bypass_cases() {
        let answer = fx.send(case.request).await;
        let calls = fx.inner_calls();
        let moved = fx.delta();
        if answer.x_cache != "BYPASS" {
            failures.push(format!("{}: x-cache {:?}", case.what, answer.x_cache));
        }
        if calls.len() != 1 {
            failures.push(format!("{}: the application saw {calls:?}", case.what));
        }
        let expected = nothing().bypass(case.route, case.reason);
        failures.extend(
            differences(&moved, &expected).into_iter().map(|d| format!("{}: {d}", case.what)),
        );
    }
    assert!(failures.is_empty(), "\n  {}", failures.join("\n  "));
}

#[tokio::test]
async fn a_pending_eviction_counts_as_a_bypass() {
    let mut fx = Fixture::new();
    fx.get("/fresh/2").await;
    fx.delta();
    let (answer, moved) = eviction_pending(&mut fx).await;
    assert_eq!(answer.x_cache, "BYPASS");
    assert_moved(
        &moved,
        &nothing().bypass("/fresh/{id}", "eviction_pending"),
        "a pending eviction",
    );
}

// ---------------------------------------------------------------------------------------------
// All of them together
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_mix_of_every_outcome_adds_up() {
    let mut fx = Fixture::new();
    let mut expected = nothing();
    let mut x_caches = Vec::new();
    let mut seen =
        |what: &str, answer: Answer| x_caches.push(format!("{what}: {}", answer.x_cache));

    // Misses, and hits on what they stored.
    seen("miss", fx.get("/fresh/1").await);
    seen("hit", fx.get("/fresh/1").await);
    seen("hit", fx.get("/fresh/1").await);
    expected = expected.miss("/fresh/{id}").hit("/fresh/{id}").hit("/fresh/{id}");
    // A miss, and another collapsed onto it.
    let (first, second) = fx.collapse().await;
    seen("miss", first);
    seen("collapsed", second);
    expected = expected.miss("/slow").collapsed("/slow");
    // A `no-cache` entry, revalidated twice.
    seen("miss", fx.get("/reval").await);
    seen("revalidated", fx.get("/reval").await);
    seen("revalidated", fx.get("/reval").await);
    expected = expected.miss("/reval").revalidated("/reval").revalidated("/reval");
    // Entries to serve stale later.
    seen("miss", fx.get("/swr").await);
    seen("miss", fx.get("/sie").await);
    expected = expected.miss("/swr").miss("/sie");
    // Every bypass reason.
    for case in bypass_cases() {
        seen(case.what, fx.send(case.request).await);
        expected = expected.bypass(case.route, case.reason);
    }
    seen("miss", fx.get("/fresh/2").await);
    expected = expected.miss("/fresh/{id}");
    let (pending, _) = eviction_pending(&mut fx).await;
    seen("eviction pending", pending);
    expected = expected.bypass("/fresh/{id}", "eviction_pending");
    // Stale answers, and a hit on the refreshed entry.
    fx.clock.advance(PAST_TTL);
    seen("stale-while-revalidate", fx.get("/swr").await);
    fx.wait_for_inner_call("GET /swr").await;
    settle().await;
    let failing = Request::get("/sie").header("x-fail", "1").body(Body::empty()).unwrap();
    seen("stale-if-error", fx.send(failing).await);
    seen("hit after the refresh", fx.get("/swr").await);
    expected = expected.stale("/swr").stale("/sie").hit("/swr");

    // Whatever each request turned out to be, the three views agree with each other and with
    // the number of requests.
    let sent = fx.sent;
    let counts = fx.total();
    let mut problems = disagreements(&counts, sent);

    // And each request was what it was sent to be, every outcome and reason among them.
    for outcome in OUTCOMES {
        if counts.requests_for(outcome) == 0 {
            problems.push(format!("no {REQUESTS}{{outcome={outcome:?}}} in the mix"));
        }
    }
    for reason in REASONS {
        if !counts.reasons.keys().any(|(_, r)| r == reason) {
            problems.push(format!("no {BYPASSES}{{reason={reason:?}}} in the mix"));
        }
    }
    problems.extend(differences(&counts, &expected));
    assert!(
        problems.is_empty(),
        "{sent} requests sent:\n  {}\nanswers (x-cache):\n  {}",
        problems.join("\n  "),
        x_caches.join("\n  ")
    );
}
