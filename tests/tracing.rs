//! The `tracing` spans of the layer, read back from a `fmt` subscriber.
//!
//! In a test binary of its own: `tracing` caches whether a callsite is enabled, and tests
//! running side by side without a subscriber would race this one's.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Method, Request};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_redis_cache::{CacheLayer, MemoryStore, Rule};

const USER: &str = r#"{"id":1,"name":"Ada"}"#;

async fn send(router: &Router, method: Method, path: &str, auth: &str) -> String {
    let request = Request::builder().method(method).uri(path).header("authorization", auth);
    let response = router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    // The entry is stored once the body has been read, in the background, on this thread.
    response.into_body().collect().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    x_cache
}

/// What a `tracing` subscriber wrote, shared with the test.
#[derive(Clone, Default)]
struct Written(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Written {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_request_has_a_span_with_its_route_outcome_and_key_digest_only() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let written = Written::default();
    let writer = written.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let cache = CacheLayer::builder(MemoryStore::default())
        .route("/users/{id}", Rule::get().per_user())
        .build()
        .unwrap();
    let router = Router::new().route("/users/{id}", get(|| async { USER })).layer(cache);

    assert_eq!(send(&router, Method::GET, "/users/42", "Bearer s3cret").await, "MISS");
    assert_eq!(send(&router, Method::GET, "/users/42", "Bearer s3cret").await, "HIT");

    let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
    let closed: Vec<&str> =
        text.lines().filter(|l| l.contains("tower_redis_cache::service: close")).collect();
    assert_eq!(closed.len(), 2, "{text}");
    assert!(
        closed[0].contains(r#"route="/users/{id}""#) && closed[0].contains(r#"outcome="miss""#)
    );
    assert!(closed[1].contains(r#"outcome="hit""#), "{}", closed[1]);
    assert!(closed.iter().all(|line| line.contains(" key=")), "{text}");
    // Store calls are child spans (the hit's lookup, answered in process at once, makes none).
    let child = r#"cache{route="/users/{id}" key="#;
    assert!(
        text.contains(child) && text.contains("cache_store{operation=\"ensure_tag_versions\"}"),
        "{text}"
    );
    // Nothing of the request itself: not its path, not its credentials.
    assert!(!text.contains("/users/42") && !text.contains("s3cret"), "{text}");
}
