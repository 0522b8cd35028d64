//! The service suite (`tests/suite/service.rs`) over the in-process store.

use std::sync::Arc;

/// A fresh, empty store for one test.
async fn test_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::default())
}

include!("suite/service.rs");

/// The gRPC calls of `tests/suite/grpc.rs`, over the same store.
mod grpc {
    use super::*;

    include!("suite/grpc.rs");
}

/// A miss whose inner body is ready when the response head is: the head goes out with the start
/// of the body already there, so that a server writes them together. Written apart, on a
/// socket without `TCP_NODELAY`, the body waits for the client's delayed ACK (40 ms on Linux).
#[tokio::test]
async fn a_miss_hands_over_the_body_the_inner_service_had_ready_with_the_head() {
    use std::task::{Context, Poll, Waker};
    use tower::ServiceExt;

    let layer = CacheLayer::builder(MemoryStore::default()).route("/news", Rule::get()).build();
    let inner = tower::service_fn(|_: Req| async { Ok::<_, Infallible>(ok("the news")) });
    // Called in this task, which does not yield until the response is back: the task that
    // reads the body for the store has not run yet.
    let service = tower::Layer::layer(&layer.unwrap(), inner);
    let response = service.oneshot(get("/news")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    let mut body = std::pin::pin!(response.into_body());
    let first = http_body::Body::poll_frame(body.as_mut(), &mut Context::from_waker(Waker::noop()));
    match first {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(frame.into_data().unwrap(), "the news"),
        _ => panic!("the body the inner service had ready is not ready with the head"),
    }
}
