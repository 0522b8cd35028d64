//! Two instances share a store; the writer cannot reach it for a moment (a store restart it
//! reconnects to later than the other instance did). Its eviction fails. Held, the write's
//! response waits until a retry lands, so a read through the other instance after the response
//! is fresh; not held, that read is served the entry the write made stale.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_redis_cache::store::{Lookup, TagVersion};
use tower_redis_cache::{CacheLayer, MemoryStore, Rule, Store, StoreError};

/// The shared store, seen by an instance that cannot evict until `reachable_at`.
struct LateToReconnect {
    shared: MemoryStore,
    reachable_at: Arc<Mutex<Instant>>,
}

#[async_trait]
impl Store for LateToReconnect {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        self.shared.lookup(key, tags).await
    }
    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        self.shared.ensure_tag_versions(tags).await
    }
    async fn keep_tag_versions(&self, tags: &[String]) -> Result<(), StoreError> {
        self.shared.keep_tag_versions(tags).await
    }
    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.shared.put(key, value, ttl).await
    }
    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        if Instant::now() < *self.reachable_at.lock().unwrap() {
            return Err(StoreError::msg("not connected yet"));
        }
        self.shared.evict_tags(tags).await
    }
}

/// Whether a read through the other instance, right after the write's response, was stale.
async fn read_after_write(hold: Duration) -> bool {
    let shared = MemoryStore::default();
    let reachable_at = Arc::new(Mutex::new(Instant::now()));
    let version = Arc::new(AtomicU32::new(0));
    let app = |store: Arc<dyn Store>| {
        let (read, write) = (Arc::clone(&version), Arc::clone(&version));
        let layer = CacheLayer::builder(store)
            .eviction_hold(hold)
            .route("/items/{id}", Rule::get().tag("item:{id}"))
            .route("/items/{id}", Rule::put().evicts(["item:{id}"]))
            .build()
            .unwrap();
        let cache = layer.handle();
        let router = Router::new()
            .route(
                "/items/{id}",
                get(move || async move { format!("v{}", read.load(Ordering::SeqCst)) }).put(
                    move || async move {
                        write.fetch_add(1, Ordering::SeqCst);
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .layer(layer);
        (router, cache)
    };
    let writer_store =
        LateToReconnect { shared: shared.clone(), reachable_at: Arc::clone(&reachable_at) };
    let (writer, _) = app(Arc::new(writer_store));
    let (reader, reader_cache) = app(Arc::new(shared));
    let send = |app: &Router, method: &str| {
        let request = Request::builder().method(method).uri("/items/1").body(Body::empty());
        let app = app.clone();
        async move {
            let response = app.oneshot(request.unwrap()).await.unwrap();
            let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (x_cache, String::from_utf8_lossy(&body).into_owned())
        }
    };

    send(&reader, "GET").await;
    while reader_cache.stats().stores == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(send(&reader, "GET").await, ("HIT".to_owned(), "v0".to_owned()));

    *reachable_at.lock().unwrap() = Instant::now() + Duration::from_millis(300);
    let started = Instant::now();
    send(&writer, "PUT").await;
    let held = started.elapsed();
    let (_, body) = send(&reader, "GET").await;
    if !hold.is_zero() {
        assert!(held >= Duration::from_millis(300), "the response waited for the retry: {held:?}");
    }
    body == "v0"
}

#[tokio::test]
async fn a_held_write_lets_no_other_instance_serve_what_it_made_stale() {
    assert!(read_after_write(Duration::ZERO).await, "not held: the other instance serves v0");
    assert!(!read_after_write(Duration::from_secs(1)).await, "held: the read after it is fresh");
}
