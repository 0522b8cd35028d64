//! The layer's hit, miss and bypass paths against the bare inner service, side by side in one
//! run, each request driven through `ready().call()` with its body collected.
//!
//! ```sh
//! cargo bench --bench paths
//! ```
//!
//! The inner service answers a fixed 2 KB JSON body at once, so what is measured is the layer's
//! own work. Everything runs on one current-thread Tokio runtime:
//!
//! - `bare`: the inner service alone.
//! - `hit`: `GET /users` answered from a `MemoryStore`. The body (2 KB, at least the default
//!   `compress_above` of 1024 bytes) is stored zstd-compressed, so a client without
//!   `Accept-Encoding: zstd` gets it decompressed on every hit; `hit_accepts_zstd` is the same hit
//!   for a client that takes the stored bytes, `hit_uncompressed` a layer built
//!   `.without_compression()`.
//! - `miss`: `GET /users?n=<unique>`, every request a miss whose response is captured and written
//!   to the store; `miss_no_lock` is the same without the miss lock (`.without_miss_lock()`),
//!   which saves a store lease and a second lookup. Each iteration also yields to the runtime
//!   once, so that the background write (compression, encoding, store) runs, and is counted,
//!   within the iteration.
//! - `bypass`: `GET /health`, a path without a rule: the layer's floor cost.
//! - `hit_prometheus`: `hit` with a Prometheus recorder (`metrics-exporter-prometheus`) taking
//!   the layer's metrics, against `hit` with none: what the metrics cost.

#[path = "support/service.rs"]
mod service;
mod support;

use service::{inner, request};

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_redis_cache::{CacheLayer, MemoryStore, Rule};

/// One request through `service`, its body collected; returns the body and the `X-Cache` value.
async fn send<S, B>(service: &mut S, request: Request<Empty<Bytes>>) -> (Bytes, Option<String>)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let x_cache =
        response.headers().get("x-cache").map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = response.into_body().collect().await.expect("a complete body").to_bytes();
    (body, x_cache)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// `iters` requests made by `make` through `service`, timed; `yield_each` yields to the runtime
/// after each one, so that what it spawned runs within the iteration.
async fn timed<S, B>(
    mut service: S,
    iters: u64,
    make: impl Fn(u64) -> Request<Empty<Bytes>>,
    yield_each: bool,
) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let request = make(i);
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let body = response.into_body().collect().await.expect("a complete body").to_bytes();
        black_box(body);
        if yield_each {
            tokio::task::yield_now().await;
        }
    }
    start.elapsed()
}

fn paths(c: &mut Criterion) {
    let rt = runtime();
    let body = support::json_body();
    assert!((1900..2300).contains(&body.len()), "body is {} bytes", body.len());
    let layer = |compress: bool, miss_lock: bool| {
        let mut builder = CacheLayer::builder(MemoryStore::default()).route("/users", Rule::get());
        if !compress {
            builder = builder.without_compression();
        }
        if !miss_lock {
            builder = builder.without_miss_lock();
        }
        builder.build().expect("a valid layer")
    };
    let bare = inner(body.clone());
    let (cached_layer, uncompressed_layer, no_lock_layer) =
        (layer(true, true), layer(false, true), layer(true, false));
    let cached = cached_layer.layer(inner(body.clone()));
    let uncompressed = uncompressed_layer.layer(inner(body.clone()));
    let no_lock = no_lock_layer.layer(inner(body.clone()));
    let metered_layer = layer(true, true);
    let metered = metered_layer.layer(inner(body.clone()));
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();

    // Warm the entries, and check that every path does what its name says.
    rt.block_on(async {
        let (got, _) = send(&mut bare.clone(), request("/users", false)).await;
        assert_eq!(got, body);
        for service in [&cached, &uncompressed] {
            let (got, x_cache) = send(&mut service.clone(), request("/users", false)).await;
            assert_eq!((got, x_cache.as_deref()), (body.clone(), Some("MISS")));
            // The entry is written in the background.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (got, x_cache) = send(&mut service.clone(), request("/users", false)).await;
            assert_eq!((got, x_cache.as_deref()), (body.clone(), Some("HIT")));
        }
        let (got, x_cache) = send(&mut cached.clone(), request("/users", true)).await;
        assert_eq!(x_cache.as_deref(), Some("HIT"));
        assert!(got.len() < body.len(), "a zstd client gets the stored, compressed bytes");
        for service in [&cached, &no_lock] {
            let (got, x_cache) = send(&mut service.clone(), request("/users?n=check", false)).await;
            assert_eq!((got, x_cache.as_deref()), (body.clone(), Some("MISS")));
        }
        let (got, x_cache) = send(&mut cached.clone(), request("/health", false)).await;
        assert_eq!((got, x_cache.as_deref()), (body.clone(), Some("BYPASS")));
        // The layer registers its metrics with the recorder of its first request; this one is
        // for this thread only, so the other benchmarks report to none.
        let _local = metrics::set_default_local_recorder(&prometheus);
        send(&mut metered.clone(), request("/users", false)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, x_cache) = send(&mut metered.clone(), request("/users", false)).await;
        assert_eq!(x_cache.as_deref(), Some("HIT"));
    });

    let mut group = c.benchmark_group("paths");
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed(bare.clone(), iters, |_| request("/users", false), false))
    });
    group.bench_function("hit", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed(cached.clone(), iters, |_| request("/users", false), false))
    });
    group.bench_function("hit_prometheus", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed(metered.clone(), iters, |_| request("/users", false), false))
    });
    group.bench_function("hit_accepts_zstd", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed(cached.clone(), iters, |_| request("/users", true), false))
    });
    group.bench_function("hit_uncompressed", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            timed(uncompressed.clone(), iters, |_| request("/users", false), false)
        })
    });
    // Unique across the samples of both miss benchmarks, so that no request ever hits.
    let counter = std::sync::atomic::AtomicU64::new(0);
    let unique = |_: u64| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        request(&format!("/users?n={n}"), false)
    };
    group.bench_function("miss", |b| {
        b.to_async(&rt).iter_custom(|iters| timed(cached.clone(), iters, unique, true))
    });
    group.bench_function("miss_no_lock", |b| {
        b.to_async(&rt).iter_custom(|iters| timed(no_lock.clone(), iters, unique, true))
    });
    group.bench_function("bypass", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed(cached.clone(), iters, |_| request("/health", false), false))
    });
    group.finish();
    let rendered = prometheus.handle().render();
    let hits = rendered.lines().find(|line| {
        line.starts_with("tower_redis_cache_requests_total")
            && line.contains(r#"route="/users""#)
            && line.contains(r#"outcome="hit""#)
    });
    eprintln!("prometheus: {}", hits.unwrap_or("no hit counter"));

    // What each layer did over the whole run: misses stored, no store errors.
    for (name, layer) in [
        ("default", cached_layer),
        ("uncompressed", uncompressed_layer),
        ("no lock", no_lock_layer),
    ] {
        let s = layer.handle().stats();
        eprintln!(
            "{name}: {} hits, {} misses, {} stored, {} bypasses, {} store errors, {} skipped",
            s.hits, s.misses, s.stores, s.bypasses, s.store_errors, s.store_skipped
        );
    }
}

criterion_group!(benches, paths);
criterion_main!(benches);
