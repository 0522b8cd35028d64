//! The layer's metrics, through the `metrics` facade, read back with `metrics-util`'s
//! debugging recorder, and the latency figures of `CacheHandle::stats`.
//!
//! Each test installs its recorder for its own thread (`set_default_local_recorder`) and runs
//! on a current-thread runtime, so that tests running side by side do not see each other's
//! metrics.

use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::CompositeKey;
use tower::ServiceExt;
use tower_redis_cache::store::{Lookup, TagVersion};
use tower_redis_cache::{CacheLayer, MemoryStore, Rule, Store, StoreError};

const USER: &str = r#"{"id":1,"name":"Ada"}"#;

fn app(store: impl Store) -> (Router, tower_redis_cache::CacheHandle) {
    let cache = CacheLayer::builder(store)
        .route("/users/{id}", Rule::get().tag("user:{id}"))
        .route("/users/{id}", Rule::put().evicts(["user:{id}"]))
        .route("/demo.Users/GetUser", Rule::grpc())
        .bypass("/auth/{*rest}")
        .build()
        .unwrap();
    let handle = cache.handle();
    let router = Router::new()
        .route("/users/{id}", get(|| async { USER }).put(|| async { StatusCode::NO_CONTENT }))
        .route("/demo.Users/GetUser", axum::routing::post(|| async { "a gRPC answer" }))
        .route("/auth/me", get(|| async { "me" }))
        .route("/other", get(|| async { "other" }))
        .layer(cache);
    (router, handle)
}

async fn send(router: &Router, method: Method, path: &str, auth: Option<&str>) -> (String, Bytes) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    // The entry is written in the background, on this thread.
    tokio::time::sleep(Duration::from_millis(20)).await;
    (x_cache, body)
}

/// What the recorder holds: taking it resets the counters and histograms, so each test takes
/// it once.
type Snapshot =
    Vec<(CompositeKey, Option<metrics::Unit>, Option<metrics::SharedString>, DebugValue)>;

/// The value of the metric `name` whose labels are exactly `labels`.
fn value<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let key = key.key();
        let mut found: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let mut wanted = labels.to_vec();
        found.sort();
        wanted.sort();
        (key.name() == name && found == wanted).then_some(value)
    })
}

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshot, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn samples(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> usize {
    match value(snapshot, name, labels) {
        Some(DebugValue::Histogram(samples)) => samples.len(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[tokio::test]
async fn requests_are_counted_by_route_pattern_outcome_and_bypass_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (router, handle) = app(MemoryStore::default());

    assert_eq!(send(&router, Method::GET, "/users/1", None).await.0, "MISS");
    let (x_cache, body) = send(&router, Method::GET, "/users/1", None).await;
    assert_eq!((x_cache.as_str(), &body[..]), ("HIT", USER.as_bytes()));
    assert_eq!(send(&router, Method::GET, "/users/2", None).await.0, "MISS");
    assert_eq!(send(&router, Method::GET, "/auth/me", None).await.0, "BYPASS");
    assert_eq!(send(&router, Method::GET, "/other", None).await.0, "BYPASS");
    assert_eq!(send(&router, Method::GET, "/users/1", Some("Bearer a")).await.0, "BYPASS");
    assert_eq!(send(&router, Method::PUT, "/users/1", None).await.0, "BYPASS");
    assert_eq!(send(&router, Method::GET, "/users/1", None).await.0, "MISS");
    // A gRPC method's rule under the plain layer, which cannot read the message.
    assert_eq!(send(&router, Method::POST, "/demo.Users/GetUser", None).await.0, "BYPASS");

    let snapshot = snapshotter.snapshot().into_vec();
    let route = ("route", "/users/{id}");
    let requests = |outcome| {
        counter(&snapshot, "tower_redis_cache_requests_total", &[route, ("outcome", outcome)])
    };
    assert_eq!((requests("miss"), requests("hit"), requests("bypass")), (3, 1, 2));
    let bypasses = |route, reason| {
        counter(
            &snapshot,
            "tower_redis_cache_bypasses_total",
            &[("route", route), ("reason", reason)],
        )
    };
    // The path, never the raw one, labels the series: `/users/1` and `/users/2` share theirs.
    assert_eq!(bypasses("/users/{id}", "credentials"), 1);
    assert_eq!(bypasses("/users/{id}", "mutation"), 1);
    assert_eq!(bypasses("/auth/{*rest}", "bypass_rule"), 1);
    assert_eq!(bypasses("unmatched", "no_rule"), 1);
    assert_eq!(bypasses("/demo.Users/GetUser", "unread_message"), 1);
    // Series that never happened are not exported at all.
    let pending = [route, ("reason", "eviction_pending")];
    assert!(value(&snapshot, "tower_redis_cache_bypasses_total", &pending).is_none());
    let hit_on_bypass = [("route", "/auth/{*rest}"), ("outcome", "hit")];
    assert!(value(&snapshot, "tower_redis_cache_requests_total", &hit_on_bypass).is_none());
    let hit_duration = [route, ("outcome", "hit")];
    assert_eq!(samples(&snapshot, "tower_redis_cache_request_duration_seconds", &hit_duration), 1);
    assert_eq!(
        counter(&snapshot, "tower_redis_cache_served_bytes_total", &[route]),
        USER.len() as u64
    );
    assert!(counter(&snapshot, "tower_redis_cache_stored_bytes_total", &[route]) > 0);
    // The PUT evicted `user:1` and the URI tag of its path.
    assert_eq!(counter(&snapshot, "tower_redis_cache_evictions_total", &[]), 2);
    let lookup = [("operation", "lookup")];
    assert!(samples(&snapshot, "tower_redis_cache_store_duration_seconds", &lookup) >= 4);
    let errors = [("operation", "lookup"), ("kind", "error")];
    assert!(value(&snapshot, "tower_redis_cache_store_errors_total", &errors).is_none());

    let stats = handle.stats();
    assert_eq!((stats.hit_latency.count, stats.miss_latency.count), (1, 3));
    assert_eq!((stats.recent_hit_latency.count, stats.recent_miss_latency.count), (1, 3));
    assert!(stats.hit_latency.p50 <= stats.hit_latency.max);
    assert!(
        stats.miss_latency.p95 <= stats.miss_latency.max && stats.miss_latency.max > Duration::ZERO
    );
}

/// A store that is down: every call fails as unreachable.
struct DownStore;

#[async_trait]
impl Store for DownStore {
    async fn lookup(&self, _: &str, _: &[String]) -> Result<Lookup, StoreError> {
        Err(StoreError::msg("connection refused").unavailable())
    }
    async fn ensure_tag_versions(&self, _: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        Err(StoreError::msg("connection refused").unavailable())
    }
    async fn put(&self, _: &str, _: Bytes, _: Duration) -> Result<(), StoreError> {
        Err(StoreError::msg("connection refused").unavailable())
    }
    async fn evict_tags(&self, _: &[String]) -> Result<(), StoreError> {
        Err(StoreError::msg("connection refused").unavailable())
    }
}

#[tokio::test]
async fn store_failures_and_the_circuit_breaker_are_reported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (router, handle) = app(DownStore);

    for _ in 0..8 {
        let (x_cache, body) = send(&router, Method::GET, "/users/1", None).await;
        assert_eq!((x_cache.as_str(), &body[..]), ("MISS", USER.as_bytes()));
    }
    let snapshot = snapshotter.snapshot().into_vec();
    let errors = |kind| {
        counter(
            &snapshot,
            "tower_redis_cache_store_errors_total",
            &[("operation", "lookup"), ("kind", kind)],
        )
    };
    // Five failures in a row open the breaker (the default); the next lookups are skipped.
    assert_eq!((errors("error"), errors("skipped")), (5, 3));
    let opened = [("state", "open")];
    assert_eq!(counter(&snapshot, "tower_redis_cache_breaker_transitions_total", &opened), 1);
    let open = value(&snapshot, "tower_redis_cache_breaker_open", &[]);
    assert!(matches!(open, Some(DebugValue::Gauge(v)) if v.into_inner() == 1.0), "{open:?}");
    let stats = handle.stats();
    assert_eq!((stats.store_errors, stats.store_skipped, stats.breaker_opened), (5, 3, 1));
}
