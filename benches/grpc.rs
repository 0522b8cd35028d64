//! A unary gRPC call through `CacheLayer::grpc` against the bare inner service, side by side in
//! one run, each call driven through `ready().call()` with its body and trailers collected.
//!
//! ```sh
//! cargo bench --bench grpc
//! ```
//!
//! The inner service answers at once with one message (about 2 KB, the JSON of the `paths`
//! benchmark as its payload) and `grpc-status: 0` in the trailers, so what is measured is the
//! layer's own work, on one current-thread Tokio runtime:
//!
//! - `bare`: the inner service alone.
//! - `hit`: a call answered from a `MemoryStore`: the request message read and digested, the
//!   key derived, the entry served with its trailers.
//! - `miss`: a different message each time: read, looked up, captured and written.
//! - `unread`: a method without a rule, whose body the layer hands on unread: its floor cost.

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_redis_cache::{CacheLayer, MemoryStore, Rule};

type Message = Result<Frame<Bytes>, Infallible>;

/// `payload` as one length-prefixed gRPC message.
fn framed(payload: &[u8]) -> Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    framed.into()
}

/// The inner service: `message`, then `grpc-status: 0`, answered at once.
fn inner<B: Send + 'static>(
    message: Bytes,
) -> impl Service<
    Request<B>,
    Response = Response<StreamBody<tokio_stream::Iter<std::vec::IntoIter<Message>>>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_request: Request<B>| {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = vec![Ok(Frame::data(message.clone())), Ok(Frame::trailers(trailers))];
        let mut response = Response::new(StreamBody::new(tokio_stream::iter(frames)));
        let content_type = HeaderValue::from_static("application/grpc");
        response.headers_mut().insert(http::header::CONTENT_TYPE, content_type);
        async move { Ok::<_, Infallible>(response) }
    })
}

fn call(method: &str, id: u64) -> Request<Full<Bytes>> {
    Request::post(format!("http://api.example.com{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(framed(format!("id={id}").as_bytes())))
        .expect("a valid request")
}

/// `iters` calls made by `make` through `service`, timed; `yield_each` yields to the runtime
/// after each one, so that what it spawned runs within the iteration.
async fn timed<S, B>(
    mut service: S,
    iters: u64,
    make: impl Fn(u64) -> Request<Full<Bytes>>,
    yield_each: bool,
) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let response = service.ready().await.unwrap().call(make(i)).await.unwrap();
        let collected = response.into_body().collect().await.expect("a complete body");
        assert!(collected.trailers().is_some(), "a gRPC answer ends with trailers");
        black_box(collected.to_bytes());
        if yield_each {
            tokio::task::yield_now().await;
        }
    }
    start.elapsed()
}

fn grpc(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let message = framed(&support::json_body());
    let layer = CacheLayer::builder(MemoryStore::default())
        .route("/demo.Users/GetUser", Rule::grpc())
        .build()
        .expect("a valid layer");
    let bare = inner(message.clone());
    let cached = layer.grpc().layer(inner(message.clone()));
    check(&rt, &cached, &message);

    let mut group = c.benchmark_group("grpc");
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            timed(bare.clone(), iters, |_| call("/demo.Users/GetUser", 1), false)
        })
    });
    group.bench_function("hit", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            timed(cached.clone(), iters, |_| call("/demo.Users/GetUser", 1), false)
        })
    });
    // Unique across the samples, so that no call ever hits.
    let counter = std::sync::atomic::AtomicU64::new(2);
    let unique = |_: u64| {
        call("/demo.Users/GetUser", counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    };
    group.bench_function("miss", |b| {
        b.to_async(&rt).iter_custom(|iters| timed(cached.clone(), iters, unique, true))
    });
    group.bench_function("unread", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            timed(cached.clone(), iters, |_| call("/demo.Users/ListUsers", 1), false)
        })
    });
    group.finish();
    let s = layer.handle().stats();
    eprintln!(
        "{} hits, {} misses, {} stored, {} bypasses, {} store errors",
        s.hits, s.misses, s.stores, s.bypasses, s.store_errors
    );
}

/// Checks that each benchmark's call does what its name says.
fn check<S, B>(rt: &Runtime, service: &S, message: &Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        for (method, expected) in [
            ("/demo.Users/GetUser", "MISS"),
            ("/demo.Users/GetUser", "HIT"),
            ("/demo.Users/ListUsers", "BYPASS"),
        ] {
            let mut service = service.clone();
            let response = service.ready().await.unwrap().call(call(method, 1)).await.unwrap();
            let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
            let collected = response.into_body().collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            assert_eq!((collected.to_bytes(), x_cache.as_str()), (message.clone(), expected));
            // The entry is written in the background.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

criterion_group!(benches, grpc);
criterion_main!(benches);
