//! Redis under memory pressure: `maxmemory` well below the working set, with each eviction
//! policy that lets Redis drop keys on its own (`allkeys-lru`, `allkeys-lfu`, `volatile-ttl`).
//! Redis then drops entries and tag versions alike. A dropped entry is a miss; a dropped tag
//! version makes every entry that recorded it a miss (a new version is never an old one). So
//! no read may ever return what a write replaced, and the hit ratio says what pressure costs.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use support::redis::RedisServer;
use tower::ServiceExt;
use tower_redis_cache::{CacheLayer, RedisStore, Rule};

/// Items, each with the number of times it was written.
type Db = Arc<Mutex<HashMap<u32, u32>>>;

/// About 2 KB per item: 2,000 items are some 4 MB of entries, against 3 MB of `maxmemory` of
/// which an empty Redis takes about 1.
const ITEMS: u32 = 2_000;
const HOT: u32 = 200;
const OPERATIONS: usize = 6_000;
const PADDING: usize = 2_000;

fn body_of(id: u32, version: u32) -> String {
    format!("item {id} v{version} {}", "x".repeat(PADDING))
}

async fn read(State(db): State<Db>, Path(id): Path<u32>) -> String {
    let version = db.lock().unwrap().get(&id).copied().unwrap_or(0);
    body_of(id, version)
}

async fn write(State(db): State<Db>, Path(id): Path<u32>) -> StatusCode {
    *db.lock().unwrap().entry(id).or_insert(0) += 1;
    StatusCode::NO_CONTENT
}

/// How the run went for one policy.
struct Run {
    reads: usize,
    hits: usize,
    stale: usize,
    evicted_by_redis: u64,
}

fn info_field(server: &RedisServer, section: &str, field: &str) -> u64 {
    let info = server.command(&["INFO", section]).expect("INFO");
    let line = info.lines().find_map(|line| line.strip_prefix(&format!("{field}:")));
    line.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("{field} in {info}"))
}

async fn run(policy: &str) -> Run {
    let server = RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", policy]);
    let store = RedisStore::from_url(server.url()).await.expect("connect");
    // Stored as they are: compressed, the bodies would fit.
    let layer = CacheLayer::builder(store)
        .without_compression()
        .route("/items/{id}", Rule::get().ttl(std::time::Duration::from_secs(300)).tag("item:{id}"))
        .route("/items/{id}", Rule::put().evicts(["item:{id}"]))
        .build()
        .unwrap();
    let db = Db::default();
    let app = Router::new()
        .route("/items/{id}", get(read).put(write))
        .with_state(Arc::clone(&db))
        .layer(layer.clone());
    let cache = layer.handle();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut run = Run { reads: 0, hits: 0, stale: 0, evicted_by_redis: 0 };
    for _ in 0..OPERATIONS {
        // Four operations in five on the hot tenth of the items.
        let id = if rng.u8(..5) < 4 { rng.u32(..HOT) } else { rng.u32(..ITEMS) };
        let uri = format!("/items/{id}");
        if rng.u8(..10) == 0 {
            let request = Request::builder().method(Method::PUT).uri(&uri).body(Body::empty());
            let response = app.clone().oneshot(request.unwrap()).await.unwrap();
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
            continue;
        }
        let stores = cache.stats().stores;
        let response =
            app.clone().oneshot(Request::get(&uri).body(Body::empty()).unwrap()).await.unwrap();
        let hit = response.headers()["x-cache"] == "HIT";
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let version = db.lock().unwrap().get(&id).copied().unwrap_or(0);
        run.reads += 1;
        run.hits += usize::from(hit);
        if body != body_of(id, version).as_bytes() {
            run.stale += 1;
        }
        // One request at a time: let a miss's entry reach Redis before the next operation.
        for _ in 0..200 {
            if hit || cache.stats().stores > stores || cache.stats().store_skipped > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    run.evicted_by_redis = info_field(&server, "stats", "evicted_keys");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dropping_entries_and_tag_versions_never_brings_back_a_stale_read() {
    let mut report = Vec::new();
    for policy in ["allkeys-lru", "allkeys-lfu", "volatile-ttl"] {
        let run = tokio::time::timeout(std::time::Duration::from_secs(120), run(policy))
            .await
            .unwrap_or_else(|_| panic!("{policy}: the run did not end within 2 minutes"));
        let ratio = run.hits as f64 / run.reads as f64;
        report.push(format!(
            "{policy}: {} reads, hit ratio {ratio:.2}, {} keys evicted by Redis, {} stale",
            run.reads, run.evicted_by_redis, run.stale
        ));
        assert_eq!(run.stale, 0, "{policy}: a read returned what a write had replaced");
        assert!(run.evicted_by_redis > 0, "{policy}: Redis was never short of memory");
        assert!(run.hits > 0, "{policy}: the cache still serves hits under pressure");
    }
    println!("{}", report.join("\n"));
}
